# Two commands for a newcomer: `make demo` and `make test` (as root, or with sudo).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
LAB := $(VENV)/bin/lab
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

.PHONY: setup demo test test-deps test-unit test-integration test-kind lint bench clean distclean

# Ends with `lab doctor --brief`: the problems it finds (programs with their package, root, kernel) and a verdict.
setup: $(STAMP) $(VENV)/bin/lab-nfqdelay
	@./scripts/install-system-deps.sh
	@$(SUDO) $(LAB) doctor --brief

# The userspace delay path for kernels without sch_netem (lab.faults); rebuilt when its source changes.
$(VENV)/bin/lab-nfqdelay: tools/nfqdelay.c $(STAMP)
	@gcc -O2 -Wall -o $@ $< $$(pkg-config --libs libnetfilter_queue 2>/dev/null || echo -lnetfilter_queue -lnfnetlink)

$(STAMP): pyproject.toml constraints.txt
	@./scripts/install-system-deps.sh
	@[ -x $(PY) ] || python3 -m venv $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

demo: setup
	@$(SUDO) $(LAB) demo --report reports/demo

# pytest (~9 min here), then the quick matrix 3 times, so every cell is an agreement count (~16 min: 3 x 5.5);
# about 26 of CI's 90 minutes.
test: setup test-deps lint
	@$(SUDO) $(VENV)/bin/pytest -q
	@$(SUDO) $(LAB) matrix --all --quick --repeat 3 --report reports/ci

# Only the test suite's extra packages (busybox-static, Debian's docker.io without its default daemon).
test-deps: setup
	@./scripts/install-system-deps.sh --test

test-unit: setup
	@$(VENV)/bin/pytest -q -m "not root"

test-integration: setup test-deps
	@$(SUDO) $(VENV)/bin/pytest -q -m root

# The kind tier alone (needs docker, kind, kubectl and an engine that can pull; see docs/kind.md).
test-kind: setup
	@$(SUDO) $(VENV)/bin/pytest -q -rs tests/integration/test_kind.py

lint: setup
	@$(VENV)/bin/ruff check lab services tests benchmarks
	@$(VENV)/bin/ruff format --check -q lab services tests benchmarks

# Figures for README (not tests): run on a quiet machine.
bench: setup
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(SUDO) $(PY) $$b || exit 1; done

clean:
	@[ ! -x $(LAB) ] || $(SUDO) $(LAB) clean

distclean: clean
	rm -rf $(VENV) .pytest_cache build *.egg-info
