# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create .venv and install from pyproject.toml; `make test` also installs the
# system packages the suite drives for real (Debian's chromium for the dashboard page).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test system-deps lint bench schema clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

# Chromium from Debian (never a browser download at test time). Runs apt only when missing.
system-deps:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing chromium (Debian package)"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

test: $(STAMP) system-deps
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/python examples/demo/demo.py

lint: $(STAMP)
	$(BIN)/ruff check decorator tests rules bench examples

schema: $(STAMP)
	$(BIN)/decorator schema > schema.json

bench: $(STAMP)
	bash bench/run.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
