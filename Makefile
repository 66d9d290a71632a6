# Every target sets up what it needs: a virtual environment with the project installed.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: run test lint fmt bench clean migrate-legacy

run: $(STAMP)
	mkdir -p data && $(PY) run.py

test: $(STAMP)
	scripts/ensure-chromium && $(PY) -m pytest $(PYTEST_ARGS)

migrate-legacy: $(STAMP)
	$(PY) -m chat_server migrate-legacy

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/mypy chat_server run.py tests bench

fmt: $(STAMP)
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

bench: $(STAMP)
	$(PY) bench/benchmarks.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis artifacts

$(STAMP): setup.cfg pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,dev]'
	touch $(STAMP)
