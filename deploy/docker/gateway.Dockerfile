# syntax=docker/dockerfile:1
# The gateway: HTTP API, server-sent events and the front end. Base dependencies only, no torch.
# From the repository root: docker build -f deploy/docker/gateway.Dockerfile -t agnews-gateway .
# The same image runs the queue-backlog exporter (python -m deploy.backlog_exporter) and the
# bucket-creating init job of docker-compose.yml: both need only the base dependencies (the
# exporter: boto3, redis, kombu) and shared/. Neither workers/ nor pipeline/ is in the image.
# Base images by tag and by digest (of the multi-platform index): a tag is moved by each rebuild.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src
# The dependencies get a layer of their own, rebuilt only when the lock changes: every package
# pinned with the hashes of its files (requirements/gateway.txt, written by `make lock`).
COPY requirements/gateway.txt requirements/
RUN pip install --require-hashes -r requirements/gateway.txt
COPY pyproject.toml README.md ./
COPY shared shared
COPY gateway gateway
COPY stack stack
COPY deploy/__init__.py deploy/backlog_exporter.py deploy/
RUN pip install --no-deps --no-build-isolation . && pip check

FROM ${PYTHON_IMAGE} AS gateway
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH \
    AGNEWS_FRONTEND_DIR=/app/frontend \
    AGNEWS_DATA_DIR=/var/lib/agnews \
    AGNEWS_HTTP_HOST=0.0.0.0 \
    AGNEWS_HTTP_PORT=8080
RUN groupadd --system --gid 10001 agnews \
    && useradd --system --uid 10001 --gid agnews --home-dir /var/lib/agnews --create-home agnews
COPY --from=build /opt/venv /opt/venv
COPY frontend /app/frontend
# The working directory (first on `python -m`'s import path) is root's: the gateway writes only
# under its data directory.
WORKDIR /app
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ['AGNEWS_HTTP_PORT']}/healthz\", timeout=4)"]
CMD ["python", "-m", "gateway"]
