# One image for every role; docker-compose.yml picks the role with the command.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY spinbot spinbot
COPY workflows workflows
COPY activities activities
COPY api api
COPY handoff handoff
COPY config config
COPY migrations migrations
RUN pip install --no-cache-dir .
ENV SPINBOT_API_HOST=0.0.0.0
ENTRYPOINT ["spinbot"]
