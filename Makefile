# The two commands: `make demo` (embedded default, end to end) and `make test` (the whole suite).
# Every target works from a shell that never activated the virtualenv: the venv's bin comes first on
# PATH for every recipe (`airflow standalone` starts its components as `airflow ...` found on PATH).
SHELL := /bin/bash
VENV ?= .venv
VENV_BIN := $(abspath $(VENV))/bin
PY := $(VENV_BIN)/python
export PATH := $(VENV_BIN):$(PATH)
export PYTHONPATH := $(CURDIR)
export VENV

.PHONY: venv secrets services system-packages demo ui test test-fast test-slow lint validate verify bench clean

# The stamp is a copy of the requirements it installed: a fresh clone (new file times, same
# content) reuses the venv, a changed requirements.txt or requirements-dev.txt reinstalls.
# requirements-dev.txt = requirements.txt (production, the image) + test and demo tooling.
venv:
	@if [ -x $(PY) ] && cat requirements.txt requirements-dev.txt | cmp -s - $(VENV)/.installed; then :; else \
	  set -e; test -x $(PY) || python3 -m venv $(VENV); \
	  echo "venv: installing requirements-dev.txt into $(VENV) ..."; \
	  $(VENV_BIN)/pip install -q --upgrade pip; \
	  $(VENV_BIN)/pip install -q -r requirements-dev.txt; \
	  cat requirements.txt requirements-dev.txt > $(VENV)/.installed; \
	fi

# .env for docker compose with fresh random secrets; an existing .env is never overwritten.
secrets:
	python3 scripts/make_secrets.py

services:
	bash scripts/services.sh

system-packages:
	bash scripts/system_packages.sh

demo: venv
	$(PY) scripts/demo.py

ui: venv
	bash scripts/ui.sh

# The slow tier (marker `slow`: the README's commands in a fresh clone) runs last, also when the
# rest failed; the target fails if either did.
test: venv services system-packages
	@status=0; \
	$(VENV_BIN)/pytest -q -ra -m "not slow" || status=$$?; \
	$(VENV_BIN)/pytest -q -ra -m slow || status=$$?; \
	exit $$status

test-fast: venv
	$(VENV_BIN)/pytest -q tests/unit

test-slow: venv services
	$(VENV_BIN)/pytest -q -ra -m slow

lint: venv
	$(VENV_BIN)/ruff check .

validate: venv
	$(PY) -m include.retention.cli validate

bench: venv services
	$(PY) scripts/bench_sweep.py $(BENCH_ROWS)  # default 1,000,000; make bench BENCH_ROWS=5000000
	$(PY) scripts/bench_subjects.py $(BENCH_SUBJECTS)  # erasure requests, default 1,000 subjects; BENCH_SUBJECTS=200
	$(PY) scripts/bench_s3.py $(BENCH_OBJECTS)  # default 20,000 objects, 10,000 CRM rows with CVs
	$(PY) scripts/bench_airflow.py  # DAG parse time vs an empty DAG with the same imports
	$(PY) scripts/bench_access.py  # access package memory: one subject with 10,000 and 100,000 rows

clean:
	rm -rf .demo artifacts

verify: venv
	source .demo/env.sh && $(PY) -m include.retention.cli verify
