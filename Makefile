# One-command setup. `make demo` and `make test` work on a fresh machine with python3.
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
RAY_VENV := .venv-ray
RAY_VERSION := 2.60.0

.PHONY: demo test test-fast bench bench-ray clean

$(VPY):
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip

# Installed state is tracked by a stamp so `make test` re-installs only when pyproject changes.
$(VENV)/.installed: $(VPY) pyproject.toml
	$(VPY) -m pip install --quiet -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(VPY) -m runtime demo

test: $(VENV)/.installed
	$(VPY) -m pytest -q tests

test-fast: $(VENV)/.installed
	$(VPY) -m pytest -q -m "not slow" tests

bench: $(VENV)/.installed
	mkdir -p benchmarks/results
	$(VPY) benchmarks/run.py --backend runtime --out benchmarks/results/runtime.json

$(RAY_VENV)/.installed:
	$(PYTHON) -m venv $(RAY_VENV)
	$(RAY_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(RAY_VENV)/bin/python -m pip install --quiet 'ray==$(RAY_VERSION)' numpy psutil pyarrow
	touch $@

bench-ray: $(VENV)/.installed $(RAY_VENV)/.installed
	mkdir -p benchmarks/results
	$(VPY) benchmarks/run.py --backend runtime --out benchmarks/results/runtime.json
	$(RAY_VENV)/bin/python benchmarks/run.py --backend ray --out benchmarks/results/ray.json
	$(VPY) benchmarks/compare.py benchmarks/results/runtime.json benchmarks/results/ray.json

clean:
	rm -rf $(VENV) $(RAY_VENV) build dist *.egg-info benchmarks/results
