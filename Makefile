# Two commands for a fresh machine:  make demo  |  make test
# Both create ./.venv (Python >= 3.11) with the core, the [train,dask,dicom,dev] extras
# and the built-in plugins, each installed as its own distribution so that they
# reach mura-ens through entry points exactly like a third-party plugin would.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PLUGINS := $(sort $(dir $(wildcard plugins/*/pyproject.toml)))
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-fast lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml $(wildcard plugins/*/pyproject.toml)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[train,dask,dicom,dev]' $(foreach p,$(PLUGINS),-e $(p))
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mura-ens demo --out demo-out

# Two pytest-xdist workers (the 2-core CI machine); whole files per worker (--dist loadfile), so a module's
# trained fixture is built once; each worker's TensorFlow gets its share of the cores (tests/conftest.py). 852 tests:
# 9.2-9.9 min here against ~19 min serially. `pytest -q -p no:xdist`
# runs them serially.
test: $(STAMP) lint
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=15

# The edit loop: every test but the TensorFlow (`tf`) and `slow` ones, no lint. Not a replacement for
# `make test`, which CI runs: everything.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not tf and not slow"

# The gate CI runs before the tests: lint, formatting, types. Any finding fails the run.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) demo-out
