# syntax=docker/dockerfile:1
# A training image that logs through the collector: the compose file's `trainer` service
# (TRAINER_IMAGE=clearml-relay-trainer). Build from the repository root:
#   docker build -f docker/trainer.Dockerfile -t clearml-relay-trainer .
# It holds Ultralytics (PyPI's torch: the CUDA build, about 6 GB; it runs on CPU too) and
# clearml-relay's light producer (pyzmq, msgspec) only: nothing of the collector.
# --build-arg ULTRALYTICS= leaves Ultralytics out (the suite mounts its own instead).
FROM python:3.11-slim
ARG ULTRALYTICS="ultralytics>=8.3"
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# OpenCV (an Ultralytics dependency) loads libGL and GLib. Not pinned: Debian stable's point
# releases replace the versions, and a pin would fail the build then.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY producer ./producer
COPY collector ./collector
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir . ${ULTRALYTICS:+"$ULTRALYTICS"} \
 && rm -rf /src
ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    CLEARML_RELAY_SPOOL_DIR=/spool
RUN useradd --uid 10002 --create-home trainer && mkdir /spool && chown trainer /spool
USER 10002
WORKDIR /home/trainer
