# Quick start: `make demo` runs profileguard on an embedded PostgreSQL; `make test` runs the suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/profileguard demo $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples
	$(BIN)/mypy src

bench: $(STAMP)
	$(BIN)/python bench/signup.py
	$(BIN)/python bench/repair_latency.py
	$(BIN)/python bench/backfill.py
	$(BIN)/python bench/health.py
	$(BIN)/python bench/profile_dependency.py
	$(BIN)/python bench/takeover_locks.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
