# syntax=docker/dockerfile:1
# The liftstream service image: one image, one process per container, chosen by the command:
#   docker run liftstream:0.1.0 api | worker | learner | alerter | experiments … | simulate …
# No secret is baked in: every setting is a LIFTSTREAM_* environment variable given at run time
# (docs/operations.md). Build from the repository root:  docker build -t liftstream:0.1.0 .
ARG PYTHON_IMAGE=python:3.11-slim

# ---- build: compile anything without a wheel for this platform into a virtualenv -------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/liftstream
ENV PATH=/opt/liftstream/bin:$PATH
WORKDIR /src
# Dependencies change less often than code: pyproject first for the layer cache.
COPY pyproject.toml README.md ./
COPY estimators ./estimators
COPY state ./state
COPY stream ./stream
COPY workers ./workers
RUN pip install .

# ---- runtime: no compilers, non-root ----------------------------------------------------------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="liftstream" \
      org.opencontainers.image.description="Streaming A/B-test analysis: ingest worker, learner, alerter, query API" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 liftstream \
    && useradd --system --uid 10001 --gid liftstream --home-dir /home/liftstream \
       --create-home --shell /usr/sbin/nologin liftstream
COPY --from=build /opt/liftstream /opt/liftstream
COPY deploy/docker/healthcheck.py /usr/local/bin/liftstream-healthcheck
RUN chmod 0755 /usr/local/bin/liftstream-healthcheck
ENV PATH=/opt/liftstream/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LIFTSTREAM_API_HOST=0.0.0.0
USER 10001:10001
WORKDIR /home/liftstream
EXPOSE 8000
# api: GET /healthz on the loopback; worker/learner/alerter: Redis answers PING; one-off
# commands: always healthy (deploy/docker/healthcheck.py reads PID 1's command line).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["liftstream-healthcheck"]
ENTRYPOINT ["liftstream"]
CMD ["api"]
