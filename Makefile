# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
# The dashboard tests drive Debian's chromium (Playwright never downloads a browser).
CHROMIUM ?= /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test install install-dev lint bench

$(VENV)/.runtime: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.dev: requirements-dev.txt $(VENV)/.runtime
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

install: $(VENV)/.runtime

install-dev: $(VENV)/.dev

run: install
	$(PY) -m backend.ml init-db --if-missing
	$(PY) -m uvicorn backend.app.main:app --host $(HOST) --port $(PORT)

$(CHROMIUM):
	$(SUDO) apt-get install -y --no-install-recommends chromium || \
	  { $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends chromium; }

# Two test processes, one per core, each module whole on one of them (its fixtures are
# built once). One OpenMP thread each: more would spin against the other process.
test: install-dev $(CHROMIUM)
	OMP_NUM_THREADS=1 $(PY) -m pytest -n 2 --dist loadfile

lint: install-dev
	$(PY) -m ruff check backend tests benchmarks
	$(PY) -m mypy backend

bench: install
	$(PY) -m backend.ml bench
