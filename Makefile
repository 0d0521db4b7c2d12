# liftstream: `make test` and `make demo` set up everything they need on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: test lint typecheck unit demo clean browser-deps

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check --no-cache .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP) browser-deps
	$(BIN)/pytest --doctest-modules estimators state stream workers tests

test: lint typecheck unit

# Headless Chromium + chromedriver (Debian packages) for tests/integration/
# test_dashboard_browser.py; does nothing when both are installed already.
browser-deps:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  if command -v apt-get >/dev/null 2>&1 && $$SUDO apt-get update -qq \
	     && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver; \
	  then echo "browser-deps: installed chromium and chromium-driver"; \
	  else echo "browser-deps: could not install chromium; the browser test will be skipped"; fi; \
	fi

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
