# Quick start: `make demo` runs profileguard on an embedded PostgreSQL; `make test` runs the suite
# (after `make deps` installs what it needs: Chromium, promtool, pg_cron, plpgsql_check, PgBouncer,
# the pinned Supabase CLI).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The local PostgreSQL 15 (CI's second pass, the golden files, the benchmarks).
LOCAL_DSN ?= postgresql://postgres@127.0.0.1:5432/postgres

.PHONY: demo deps test lint bench golden clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/profileguard demo $(ARGS)

deps:
	.ci/install-deps

test: $(STAMP) deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Rewrite tests/golden/ from what install generates now (review the diff before committing).
golden: $(STAMP)
	PROFILEGUARD_UPDATE_GOLDEN=1 $(BIN)/python -m pytest -q tests/test_golden.py
	PROFILEGUARD_UPDATE_GOLDEN=1 PROFILEGUARD_TEST_DSN="$(LOCAL_DSN)" $(BIN)/python -m pytest -q tests/test_golden.py

lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples tools
	$(BIN)/ruff format --check src tests bench examples tools
	$(BIN)/mypy src
	$(BIN)/lint-imports
	$(BIN)/python tools/async_to_sync.py --check
	$(BIN)/python tools/size_check.py

# The signup and login benchmarks run on the embedded server and, when it answers, the local PostgreSQL.
bench: $(STAMP)
	$(BIN)/python bench/signup.py
	$(BIN)/python bench/signup_locks.py
	$(BIN)/python bench/sync.py
	if $(BIN)/python -c "import psycopg, sys; psycopg.connect(sys.argv[1], connect_timeout=3).close()" "$(LOCAL_DSN)" 2>/dev/null; then \
		$(BIN)/python bench/signup.py --database-url "$(LOCAL_DSN)" && \
		$(BIN)/python bench/signup_locks.py --database-url "$(LOCAL_DSN)" && \
		$(BIN)/python bench/sync.py --database-url "$(LOCAL_DSN)"; \
	else echo "no PostgreSQL at $(LOCAL_DSN): signup and login benchmarks ran on the embedded server only"; fi
	$(BIN)/python bench/repair_latency.py
	$(BIN)/python bench/fault_recovery.py
	$(BIN)/python bench/fault_recovery.py --database-url "$(LOCAL_DSN)" || true
	$(BIN)/python bench/backfill.py
	$(BIN)/python bench/health.py
	$(BIN)/python bench/profile_dependency.py
	$(BIN)/python bench/takeover_locks.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
