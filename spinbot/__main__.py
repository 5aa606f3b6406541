from spinbot.cli import app

app()
