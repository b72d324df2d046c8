# Two set-up commands (README): `make demo` runs the demo, `make test` runs the tests.
# Both create .venv and install what they need on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Exact versions of everything installed, pip and the build backend included (scripts/lock.sh).
LOCK := PIP_CONSTRAINT=$(CURDIR)/requirements.lock

.PHONY: deps peers sysdeps demo test test-under-load lint unit bench lock clean

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(LOCK) $(BIN)/pip install -q --upgrade pip setuptools
	$(LOCK) $(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# After changing a dependency in pyproject.toml: resolve afresh and rewrite requirements.lock.
lock:
	PYTHON=$(PYTHON) bash scripts/lock.sh

# libziti 1.18.3 (the current OpenZiti C SDK) in its own venv, when its kit is on this machine.
peers: $(STAMP)
	PYTHON=$(PYTHON) bash scripts/peers.sh

deps: $(STAMP) peers

# Debian packages used by the demo and the privileged tests (installed when root with apt-get).
sysdeps:
	bash scripts/system-deps.sh

# demo.sh installs the system packages first (scripts/system-deps.sh), then runs `make deps`.
demo:
	bash scripts/demo.sh

lint: deps
	$(BIN)/ruff check tunneler tests bench
	$(BIN)/mypy

# tests/privileged and tests/unit + tests/integration as two concurrent pytest runs
test: sysdeps lint
	bash scripts/test.sh

# the whole suite 3 times in a row while two CPU-bound processes keep both cores busy
test-under-load: sysdeps deps
	bash scripts/test-under-load.sh 3

unit: deps
	$(BIN)/python -m pytest tests/unit

# The figures of docs/benchmarks.md; intercept.py and scenario.py need root (namespaces, TUN).
bench: deps
	$(BIN)/python bench/overlay.py
	$(BIN)/python bench/intercept.py
	$(BIN)/python bench/scenario.py
	$(BIN)/python bench/memory.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
