# Two commands for a newcomer: `make demo` and `make test` (as root, or with sudo).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
LAB := $(VENV)/bin/lab
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

.PHONY: setup demo test test-unit test-integration lint bench clean distclean

setup: $(STAMP)
	@./scripts/install-system-deps.sh

$(STAMP): pyproject.toml constraints.txt
	@./scripts/install-system-deps.sh
	@[ -x $(PY) ] || python3 -m venv $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

demo: setup
	@$(SUDO) $(LAB) demo

test: setup lint
	@$(SUDO) $(VENV)/bin/pytest -q

test-unit: setup
	@$(VENV)/bin/pytest -q -m "not root"

test-integration: setup
	@$(SUDO) $(VENV)/bin/pytest -q -m root

lint: setup
	@$(VENV)/bin/ruff check lab services tests benchmarks
	@$(VENV)/bin/ruff format --check -q lab services tests benchmarks

bench: setup
	@$(SUDO) $(PY) benchmarks/bench_up_down.py

clean:
	@[ ! -x $(LAB) ] || $(SUDO) $(LAB) clean

distclean: clean
	rm -rf $(VENV) .pytest_cache build *.egg-info
