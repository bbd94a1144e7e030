# Everything runs from a virtual environment in .venv, built from the pinned lock files.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
COMPILE := $(PY) -m piptools compile -q --no-emit-index-url --no-emit-find-links \
	--no-emit-trusted-host --strip-extras --allow-unsafe

.PHONY: install check lint types test run dev lock clean

$(VENV)/.installed: requirements-dev.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements-dev.lock
	$(PY) -m pip install -q --no-deps -e .
	touch $@

## install: create .venv with the pinned runtime and development dependencies
install: $(VENV)/.installed

## check: lint, type-check and test (what CI runs)
check: lint types test

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

types: install
	$(VENV)/bin/mypy

test: install
	$(PY) -m pytest

## run / dev: the worker, against $$LIVEKIT_URL (JSON logs / readable logs)
run: install
	$(PY) -m clara_voice start

dev: install
	$(PY) -m clara_voice dev

## lock: re-pin requirements.lock (runtime) and requirements-dev.lock (runtime + dev)
lock: install
	$(PY) -m pip install -q pip-tools
	$(COMPILE) -o requirements.lock pyproject.toml
	$(COMPILE) --extra dev -o requirements-dev.lock pyproject.toml

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
