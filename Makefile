# `make bench` and `make test` each set up a fresh virtual environment (once),
# build the extension and run. Nothing but Python 3.11 and gcc is assumed.
# The extension is built without build isolation, against the venv's own torch (setup.py).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
BENCH_ARGS ?= --quick
TEST_ARGS ?=

.PHONY: setup build test test-triton bench gpu clean

$(VENV)/.deps: requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements-dev.txt
	touch $@

$(VENV)/.built: $(VENV)/.deps setup.py pyproject.toml $(wildcard csrc/*.cpp csrc/*.h)
	MAX_JOBS=2 $(PIP) install -q --no-build-isolation --no-deps -e .
	touch $@

setup: $(VENV)/.built

build: $(VENV)/.built

# The Triton module runs in its own process: TRITON_INTERPRET must be set before
# anything imports triton, and it makes the Triton kernels run on CPU tensors.
test: $(VENV)/.built
	$(PY) -m pytest -q tests --ignore=tests/test_triton.py $(TEST_ARGS)
	TRITON_INTERPRET=1 $(PY) -m pytest -q tests/test_triton.py $(TEST_ARGS)

bench: $(VENV)/.built
	$(VENV)/bin/fastconv bench $(BENCH_ARGS)

clean:
	rm -rf build *.egg-info fastconv/_C*.so $(VENV)
