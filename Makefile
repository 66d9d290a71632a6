# Every target sets up what it needs: a virtual environment with the project installed.
VENV ?= .venv
PY := $(VENV)/bin/python
# Running needs only the runtime dependencies; tests and lint add their extras on top.
RUN_STAMP := $(VENV)/.run-stamp
STAMP := $(VENV)/.installed-stamp

.PHONY: run test lint fmt bench chaos clean migrate-legacy

run: $(RUN_STAMP)
	mkdir -p data && $(PY) run.py

# Two pytest workers (pytest-xdist): on the 2-core machine the suite took 6:51 on one, 4:25 and 4:41 on
# two (2026-12-02); TEST_WORKERS=0 runs it in this process.
TEST_WORKERS ?= 2

test: $(STAMP)
	scripts/ensure-chromium && $(PY) -m pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

migrate-legacy: $(RUN_STAMP)
	$(PY) -m chat_server migrate-legacy

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/mypy chat_server run.py tests bench

fmt: $(STAMP)
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

bench: $(STAMP)
	$(PY) bench/benchmarks.py $(if $(SCENARIO),--only "$(SCENARIO)") $(if $(PAIRS),--pairs $(PAIRS))

# Faults at seeded random times against two server processes; CHAOS_SEED=N repeats a run's
# schedule (make test runs a short one with a fixed seed).
chaos: $(STAMP)
	CHAOS_SECONDS=$${CHAOS_SECONDS:-180} CHAOS_SEED=$${CHAOS_SEED:-random} $(PY) -m pytest tests/test_chaos.py -q -s

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis artifacts

$(RUN_STAMP): setup.cfg pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e .
	touch $(RUN_STAMP)

$(STAMP): $(RUN_STAMP)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test,dev]'
	touch $(STAMP)
