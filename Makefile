# Quick start: `make run` (the whole system on a local data root) and `make test` (the suite).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA_ROOT ?= $(CURDIR)/var/data
PYTEST_ARGS ?=

.PHONY: run test lint typecheck bench install redis-server chromium clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# redis-server from Debian when the machine has none (tests start their own on a free port).
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "installing redis-server from Debian"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq redis-server >/dev/null; }

# chromium from Debian when the machine has none (the status page is tested in it, headless).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing chromium from Debian"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    chromium >/dev/null; }

# `make run WORKERS=2 FLOWER_PORT=5556`; up prints where to drop task files and where Flower is.
run: install redis-server
	TASKD_HTTP_PORT=$${TASKD_HTTP_PORT:-$(or $(HTTP_PORT),8080)} \
	TASKD_EXEC_DIR=$${TASKD_EXEC_DIR:-$(CURDIR)/examples/programs} \
	  $(BIN)/taskd up --data-root $(DATA_ROOT) --sample \
	  --workers $(or $(WORKERS),1) --flower-port $(or $(FLOWER_PORT),5555)

test: install redis-server chromium
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .

typecheck: install
	$(BIN)/mypy

bench: install redis-server
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache *.egg-info
