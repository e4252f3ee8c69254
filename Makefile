# Quick start: `make demo` and `make test`. Both create/reuse .venv.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# Prefer Python 3.12 (so the pymsft cross-check can run): on PATH, then pyenv; else python3 (>= 3.11).
PYTHON_BOOT ?= $(shell for c in python3.12 "$$(pyenv root 2>/dev/null)/versions/3.12"*/bin/python3.12 python3; do \
	  if [ -n "$$c" ] && "$$c" -c 'import sys; assert sys.version_info >= (3, 11)' >/dev/null 2>&1; then \
	    command -v "$$c" 2>/dev/null || echo "$$c"; break; fi; done)
OUT ?= out
# pytest workers (pytest-xdist); files stay on one worker so module fixtures are built once
TEST_WORKERS ?= 2

.PHONY: venv demo test test-slow lint format bench model bench-network clean

$(VENV)/.installed: pyproject.toml
	@echo "Using interpreter: $(PYTHON_BOOT)"
	test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,peer]' || $(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) examples/demo.py --out $(OUT)

test: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test-slow: venv
	$(PY) -m pytest -q -m slow -n $(TEST_WORKERS) --dist loadfile

bench: venv
	$(PY) benchmarks/bench_forward.py

# Retrain the shipped network (fitting/models/default.eqx + .json) from its config; the optimiser state
# (default.eqx.state, for --resume) stays out of the package. CPU: ~64 min (2 cores; 18 min simulating the pool, 46 min training) for the shipped config.
MODEL ?= fitting/models/default.eqx
model: venv
	rm -f $(MODEL) $(MODEL).json $(MODEL).state
	$(PY) -m diffscat train configs/train-shipped.toml -o $(MODEL)
	rm -f $(MODEL).state

bench-network: venv
	$(PY) benchmarks/bench_network.py

format: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
