# liftstream: `make test` and `make demo` set up everything they need on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: test lint typecheck unit demo clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest --doctest-modules estimators tests

test: lint typecheck unit

demo: $(STAMP)
	$(BIN)/liftstream demo

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

.PHONY: bench bench-quick chaos soak
bench: $(STAMP)
	$(BIN)/python -m bench.run

bench-quick: $(STAMP)
	$(BIN)/python -m bench.run --quick

chaos: $(STAMP)
	$(BIN)/python -m bench.chaos

soak: $(STAMP)
	$(BIN)/python -c "import json; from bench.freshness import run; print(json.dumps(run(2000.0, 600.0), indent=1))"
