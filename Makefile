# Aster developer entry points. `make up` and `make test` work on a fresh
# machine: they create .venv, install everything and check gen/ first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.stamp-installed
BUF := node_modules/.bin/buf
PYROOT := build/pyroot

.PHONY: up test soak lint gen check-gen buf-deps buf-lint buf-breaking typecheck bench venv clean constraints

up: check-gen
	$(BIN)/aster up

venv: $(INSTALLED)

# constraints.txt pins every dependency to the versions CI last passed with,
# so a new release upstream cannot break a fresh install.
$(INSTALLED): pyproject.toml setup.py constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev,embed]'
	touch $@

# Re-pins constraints.txt to what .venv holds (after a deliberate upgrade).
constraints: venv
	{ sed -n '1,2p' constraints.txt; $(BIN)/python -m pip freeze --exclude-editable --disable-pip-version-check | grep -v '^torch=='; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

$(BUF): package.json
	npm install --no-audit --no-fund --silent
	touch $@

gen: venv $(BUF)
	$(BIN)/aster gen

check-gen: venv $(BUF)
	$(BIN)/aster gen --check

buf-deps: venv
	$(BIN)/python -c 'from pathlib import Path; from aster.server.codegen import stage_buf_dependencies as s; s(Path("build/protodeps"))'

buf-lint: buf-deps $(BUF)
	$(BUF) lint

# Compares the working tree's contract with main's (buf.yaml: FILE rules).
buf-breaking: buf-deps $(BUF)
	$(BIN)/python -m aster.server.breaking

# mypy resolves aster.* through a tree of links that mirrors the import names.
$(PYROOT)/aster:
	mkdir -p $(PYROOT)/aster
	ln -sfn ../../../server $(PYROOT)/aster/server
	ln -sfn ../../../clients/python $(PYROOT)/aster/client
	ln -sfn ../../../gen/python/aster/v1 $(PYROOT)/aster/v1

typecheck: venv $(PYROOT)/aster
	$(BIN)/mypy -p aster.server -p aster.client

lint: venv buf-lint typecheck
	$(BIN)/ruff check server clients/python tests bench
	$(BIN)/ruff format --check server clients/python tests bench

# The whole suite: style and types first (fast), then every test.
test: venv buf-deps $(BUF) lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: venv
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev,bench]'
	$(BIN)/python bench/unary.py
	$(BIN)/python bench/chat_stream.py
	$(BIN)/python bench/run_queue.py

# The fault scenarios of tests/faults at ten times their CI size.
soak: venv buf-deps $(BUF)
	ASTER_FAULT_SCALE=10 $(BIN)/python -m pytest tests/faults -s $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build node_modules .aster
