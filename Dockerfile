# One image for every role; docker-compose.yml picks the role with the command (default: the API).
# Production dependencies only: the embedded Temporal, Redis and PostgreSQL of `spinbot dev` are the `dev`
# extra and never enter this image.

# ---- build: the project and its dependencies in a virtualenv ----
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/spinbot
WORKDIR /src
COPY pyproject.toml README.md ./
COPY spinbot spinbot
COPY workflows workflows
COPY core core
COPY activities activities
COPY api api
COPY handoff handoff
COPY config config
COPY migrations migrations
RUN /opt/spinbot/bin/pip install .

# ---- run: the virtualenv alone, as an unprivileged user ----
FROM python:3.11-slim
RUN groupadd --system --gid 10001 spinbot \
    && useradd --system --uid 10001 --gid spinbot --create-home --home-dir /home/spinbot spinbot
COPY --from=build /opt/spinbot /opt/spinbot
ENV PATH=/opt/spinbot/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    SPINBOT_API_HOST=0.0.0.0 \
    SPINBOT_METRICS_HOST=0.0.0.0 \
    SPINBOT_LOG_FORMAT=json
USER 10001:10001
WORKDIR /home/spinbot
EXPOSE 3000
# The API's readiness; docker-compose.yml gives workers, relays and the data plane their own metrics URL.
HEALTHCHECK --interval=15s --timeout=10s --start-period=60s --retries=3 CMD ["spinbot", "health"]
ENTRYPOINT ["spinbot"]
CMD ["api"]
