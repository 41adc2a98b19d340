# The two commands of the README: `make demo` and `make test`. Each builds its own virtual
# environment from pyproject.toml (re-installed when pyproject.toml changes).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-fast lint typecheck unit image bench benchmarks soak clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,collector,ultralytics,lightning,transformers,tensorboard]'
	touch $@

demo: $(VENV)/.installed
	$(PY) -m collector --log-level WARNING demo

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check producer collector tests
	$(VENV)/bin/ruff format --check producer collector tests

typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy

unit: $(VENV)/.installed
	$(PY) -m pytest

test: lint typecheck unit

# The quick loop while editing (under 2 minutes): lint, types, and the unit tests plus the
# integration tests not marked slow. `make test` runs everything (tests/unit, tests/integration, tests/e2e).
test-fast: lint typecheck
	$(PY) -m pytest -q tests/unit tests/integration -m "not slow"

# The collector image (docker/collector.Dockerfile) with podman, without a Docker engine or a
# registry (installs podman when missing, as root); see docker/build-image.sh.
image:
	bash docker/build-image.sh clearml-relay-collector:latest

bench: $(VENV)/.installed
	$(PY) tests/benchmarks/bench_transport.py
	$(PY) tests/benchmarks/bench_hooks.py

# BENCHMARKS.md and benchmarks.png: against Ultralytics' ClearML, W&B and MLflow callbacks (~30 min).
benchmarks: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) tests/benchmarks/compare.py

# 100 producers for 10 minutes with random collector kills (not part of `make test`).
soak: $(VENV)/.installed
	$(PY) tests/benchmarks/soak.py --report soak-report.md

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
