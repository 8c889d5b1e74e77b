#!/usr/bin/env bash
# The whole test suite: lint, types, then every test (slow and browser ones included).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh test
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/ruff check --no-cache .
.venv/bin/ruff format --check --no-cache .
.venv/bin/mypy shared gateway workers pipeline stack deploy client
.venv/bin/pytest "$@"
