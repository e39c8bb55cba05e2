# The two commands: `make demo` (embedded default, end to end) and `make test` (the whole suite).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export PYTHONPATH := $(CURDIR)

.PHONY: venv services demo ui test test-fast lint validate verify bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements.txt
	touch $@

services:
	bash scripts/services.sh

demo: venv
	$(PY) scripts/demo.py

ui: venv
	bash scripts/ui.sh

test: venv services
	$(VENV)/bin/pytest -q -ra

test-fast: venv
	$(VENV)/bin/pytest -q tests/unit

lint: venv
	$(VENV)/bin/ruff check .

validate: venv
	$(PY) -m include.retention.cli validate

bench: venv services
	$(PY) scripts/bench_sweep.py

clean:
	rm -rf .demo artifacts

verify: venv
	source .demo/env.sh && $(PY) -m include.retention.cli verify
