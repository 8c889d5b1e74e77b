# syntax=docker/dockerfile:1
# Celery workers (predict, evaluate, train) and the S3-event listener: the ML stack.
# From the repository root:
#   docker build -f deploy/docker/worker.Dockerfile --target worker -t agnews-worker .
#   docker build -f deploy/docker/worker.Dockerfile --target worker-cuda -t agnews-worker-cuda .
# `worker` has the CPU build of torch; `worker-cuda` the CUDA build, for the train queue on GPUs.
# The container runs a worker for the queue WORKER_QUEUE names (python -m workers.listener for
# the listener); its health is a `celery inspect ping` of that worker. A predict worker answers
# it once its first model is loaded (at most AGNEWS_PREDICT_FIRST_LOAD_WAIT_S, 120 s): inside
# the start period.
# Base images by tag and by digest (of the multi-platform index): a tag is moved by each rebuild.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-base-ubuntu24.04@sha256:133c78a0575303be34164d0b90137a042172bdf60696af01a3c424ab402d86e2

FROM ${PYTHON_IMAGE} AS venv
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src
# Every package but torch pinned with the hashes of its files (requirements/worker.txt, written
# by `make lock`), without resolving: the lock holds every dependency, torch aside.
COPY requirements/worker.txt requirements/torch-cpu.txt requirements/
RUN pip install --require-hashes --no-deps -r requirements/worker.txt

# torch comes from the PyTorch index, so that pip never pulls the build of another platform. The
# CPU build is the one file requirements/torch-cpu.txt pins by hash. Each gets a layer of its own,
# rebuilt only when a lock changes.
FROM venv AS deps-cpu
RUN pip install --require-hashes --no-deps --index-url https://download.pytorch.org/whl/cpu \
        -r requirements/torch-cpu.txt \
    && pip check

# The CUDA build is pinned by version only: its wheel and the CUDA libraries it requires (which
# torch pins by version) come from the PyTorch index, whose hashes no lock here records yet.
FROM venv AS deps-cuda
ARG TORCH_CUDA_INDEX_URL=https://download.pytorch.org/whl/cu128
RUN pip install --index-url "${TORCH_CUDA_INDEX_URL}" torch==2.13.0 && pip check

FROM deps-cpu AS build-cpu
COPY shared shared
COPY gateway gateway
COPY workers workers
COPY pipeline pipeline
COPY stack stack
COPY pyproject.toml README.md ./
RUN pip install --no-deps --no-build-isolation .

FROM deps-cuda AS build-cuda
COPY shared shared
COPY gateway gateway
COPY workers workers
COPY pipeline pipeline
COPY stack stack
COPY pyproject.toml README.md ./
RUN pip install --no-deps --no-build-isolation .

# The CUDA image: NVIDIA's base sets what the NVIDIA container toolkit needs (and refuses a driver
# older than its CUDA), torch's wheels bring the CUDA libraries. Python is the same CPython as the
# other images, copied from the python image with the shared libraries its modules link.
FROM ${CUDA_IMAGE} AS worker-cuda
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install --yes --no-install-recommends ca-certificates libbz2-1.0 libexpat1 \
        libffi8 libgomp1 liblzma5 libncursesw6 libreadline8t64 libsqlite3-0 libssl3t64 \
        libuuid1 tzdata zlib1g \
    && rm -rf /var/lib/apt/lists/*
COPY --from=venv /usr/local/bin /usr/local/bin
COPY --from=venv /usr/local/lib /usr/local/lib
RUN ldconfig
# TOKENIZERS_PARALLELISM is no secret (DL3064 takes any name with TOKEN in it for one).
# hadolint ignore=DL3064
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH \
    AGNEWS_DATA_DIR=/var/lib/agnews \
    AGNEWS_HF_OFFLINE=false \
    TOKENIZERS_PARALLELISM=false \
    WORKER_QUEUE=train \
    WORKER_CONCURRENCY=1
RUN groupadd --system --gid 10001 agnews \
    && useradd --system --uid 10001 --gid agnews --home-dir /var/lib/agnews --create-home agnews
COPY --from=build-cuda /opt/venv /opt/venv
# Fail the build, not the first task, if the copied interpreter misses a library.
RUN python -c "import bz2, ctypes, lzma, sqlite3, ssl, torch, transformers"
# The working directory (first on `python -m`'s import path) is root's: workers write only
# under their data directory.
WORKDIR /app
USER 10001:10001
HEALTHCHECK --interval=60s --timeout=20s --start-period=180s --retries=3 \
    CMD ["sh", "-c", "celery -A workers.app inspect ping --timeout 15 -d \"$WORKER_QUEUE@$HOSTNAME\" > /dev/null"]
CMD ["sh", "-c", "exec python -m workers \"$WORKER_QUEUE\" --concurrency \"$WORKER_CONCURRENCY\""]

# The CPU image (the default target).
FROM ${PYTHON_IMAGE} AS worker
# TOKENIZERS_PARALLELISM is no secret (DL3064 takes any name with TOKEN in it for one).
# hadolint ignore=DL3064
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH \
    AGNEWS_DATA_DIR=/var/lib/agnews \
    AGNEWS_HF_OFFLINE=false \
    TOKENIZERS_PARALLELISM=false \
    WORKER_QUEUE=predict \
    WORKER_CONCURRENCY=1
RUN groupadd --system --gid 10001 agnews \
    && useradd --system --uid 10001 --gid agnews --home-dir /var/lib/agnews --create-home agnews
COPY --from=build-cpu /opt/venv /opt/venv
# The working directory (first on `python -m`'s import path) is root's: workers write only
# under their data directory.
WORKDIR /app
USER 10001:10001
HEALTHCHECK --interval=60s --timeout=20s --start-period=120s --retries=3 \
    CMD ["sh", "-c", "celery -A workers.app inspect ping --timeout 15 -d \"$WORKER_QUEUE@$HOSTNAME\" > /dev/null"]
CMD ["sh", "-c", "exec python -m workers \"$WORKER_QUEUE\" --concurrency \"$WORKER_CONCURRENCY\""]
