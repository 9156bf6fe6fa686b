# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create .venv and install from pyproject.toml; `make test` also installs the
# system packages the suite drives for real (Debian's chromium for the dashboard page).
# `make` alone (re)compiles the hot path in place (setup.py; pure Python where there is no C compiler).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
COMPILED := $(VENV)/.compiled
# What the compiled modules are built from (a superset of setup.py's COMPILED_MODULES and their .pxd).
HOT := setup.py decorator/build.py $(wildcard decorator/proxy/*.py decorator/proxy/*.pxd \
       decorator/telemetry/aggregate.py decorator/telemetry/aggregate.pxd \
       decorator/telemetry/metrics.py decorator/telemetry/metrics.pxd \
       decorator/rules/compile.py decorator/rules/compile.pxd)

.PHONY: build demo test system-deps lint bench schema clean fuzz faults

build: $(COMPILED)

$(STAMP): pyproject.toml setup.py
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

# Incremental: setup.py recompiles only the modules whose source hash changed since their last build.
$(COMPILED): $(STAMP) $(HOT)
	$(BIN)/python setup.py -q build_ext --inplace
	touch $(COMPILED)

# Chromium from Debian (never a browser download at test time). Runs apt only when missing.
system-deps:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing chromium (Debian package)"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

# The suite on the compiled build, then the proxy and rules tests again on the .py sources.
test: $(COMPILED) system-deps
	$(BIN)/python -m pytest -q
	DECORATOR_PURE_PYTHON=1 $(BIN)/python -m pytest -q tests/proxy tests/rules rules

demo: $(COMPILED)
	$(BIN)/python examples/demo/demo.py

lint: $(STAMP)
	$(BIN)/ruff check setup.py decorator tests rules bench examples fuzz

# Hostile inputs (docs/reliability.md): FUZZ_INPUTS per target (requests, responses, rules), one
# closing line each, exit 1 on any failure. FUZZ_SEED=N repeats a run. `make test` runs a slice.
FUZZ_INPUTS ?= 1000000
fuzz: $(COMPILED)
	FUZZ_INPUTS=$(FUZZ_INPUTS) $(BIN)/python -W ignore -m fuzz requests responses rules

# The fault campaign with its long durations (a minute of silent dashboard/webhook...); `make test`
# runs the same scenarios with short ones.
faults: $(COMPILED)
	FAULT_SCALE=full $(BIN)/python -m pytest -q tests/faults

schema: $(STAMP)
	$(BIN)/decorator schema > schema.json

bench: $(COMPILED)
	bash bench/run.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info build dist decorator/_build_manifest.json
	find decorator -name '*.so' -delete -o -name '*.c' -delete
