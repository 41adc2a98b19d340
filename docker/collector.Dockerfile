# syntax=docker/dockerfile:1
# The clearml-relay collector as a service image. Build from the repository root:
#   docker build -f docker/collector.Dockerfile -t clearml-relay-collector .
# ClearML keys and server addresses come from the environment at run time (see
# docker/collector.env.example and docker/compose.yaml); nothing secret is built in.

# --- builder: build the wheel, install it with the collector extra into a virtual environment
FROM python:3.11-slim AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY producer ./producer
COPY collector ./collector
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir "$(ls /wheels/clearml_relay-*.whl)[collector]"

# --- final: the virtual environment on a slim Python, run as an unprivileged user
FROM python:3.11-slim
RUN groupadd --system --gid 10001 relay \
 && useradd --system --uid 10001 --gid relay --home-dir /data --no-create-home \
    --shell /usr/sbin/nologin relay \
 && mkdir /data \
 && chown relay:relay /data
COPY --from=builder /opt/venv /opt/venv
# Listen on every interface of the container (the defaults outside a container are loopback);
# the journal, file store, backend state and ClearML's offline sessions all live under /data.
ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CLEARML_RELAY_BIND=tcp://0.0.0.0:5555 \
    CLEARML_RELAY_DATA_DIR=/data \
    CLEARML_RELAY_METRICS_HOST=0.0.0.0 \
    CLEARML_RELAY_METRICS_PORT=9555 \
    CLEARML_CACHE_DIR=/data/clearml-cache \
    CLEARML_RELAY_DRAIN_TIMEOUT=7
VOLUME ["/data"]
# 5555: ZeroMQ, for producers; 9555: HTTP /metrics and /healthz.
EXPOSE 5555 9555
USER 10001:10001
WORKDIR /data
# SIGTERM (docker/podman stop) drains for CLEARML_RELAY_DRAIN_TIMEOUT seconds, 7 in the image
# (10 outside it), then exits 0 with what is left in the journal: under the engines' default stop
# timeout of 10 s, after which they SIGKILL. Raise both together (compose: stop_grace_period,
# Kubernetes: terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["clearml-relay", "healthcheck"]
ENTRYPOINT ["clearml-relay", "collector"]
