"""The entry points: the CLI, the embedded dev stack and process start-up, wiring the roles into processes."""
