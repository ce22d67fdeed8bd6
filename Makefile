# One-command setup. `make demo` and `make test` work on a fresh machine with python3.
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
RAY_VENV := .venv-ray
RAY_VERSION := 2.60.0

.PHONY: demo lab test test-fast bench bench-ray bench-tls bench-scale bench-chart ray-signatures compat-ray clean lab-build

$(VPY):
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip

# Installed state is tracked by a stamp so `make test` re-installs only when pyproject changes.
$(VENV)/.installed: $(VPY) pyproject.toml
	$(VPY) -m pip install --quiet -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(VPY) -m runtime demo --notebook notebooks/01-tour.ipynb

# JupyterLab on notebooks/ with the extension and the lab sidebar installed.
lab: $(VENV)/.installed
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks --ServerApp.ip=127.0.0.1 $(if $(filter 0,$(shell id -u)),--allow-root)

test: $(VENV)/.installed
	$(VPY) -m pytest -q tests

test-fast: $(VENV)/.installed
	$(VPY) -m pytest -q -m "not slow" tests

bench: $(VENV)/.installed
	mkdir -p benchmarks/results
	$(VPY) benchmarks/run.py --backend runtime --out benchmarks/results/runtime.json

# Rebuild the committed JupyterLab frontend (labextension/prebuilt/). Needs Node >= 18; not part of `make test`.
lab-build: $(VENV)/.installed
	cd labextension && PATH="$(CURDIR)/$(VENV)/bin:$$PATH" jlpm install && PATH="$(CURDIR)/$(VENV)/bin:$$PATH" jlpm build
	$(VPY) -m pip install --quiet -e '.[test]'  # an editable install copies prebuilt/ into the venv

$(RAY_VENV)/.installed:
	$(PYTHON) -m venv $(RAY_VENV)
	$(RAY_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(RAY_VENV)/bin/python -m pip install --quiet 'ray[default]==$(RAY_VERSION)' numpy psutil pyarrow 'dask[dataframe]' pandas
	touch $@

bench-ray: $(VENV)/.installed $(RAY_VENV)/.installed
	mkdir -p benchmarks/results
	$(VPY) benchmarks/run.py --backend runtime --out benchmarks/results/runtime.json
	$(RAY_VENV)/bin/python benchmarks/run.py --backend ray --out benchmarks/results/ray.json
	$(VPY) benchmarks/compare.py benchmarks/results/runtime.json benchmarks/results/ray.json

# What mutual TLS costs on the links it guards: the same workloads with TLS off, then on (benchmarks/tls_cost.py).
TLS_WORKLOADS := internode_gbps_100mb,tasks_4_nodes_per_s,client_tasks_per_s
bench-tls: $(VENV)/.installed
	mkdir -p benchmarks/results
	$(VPY) benchmarks/run.py --only $(TLS_WORKLOADS) --out benchmarks/results/tls_off.json
	$(VPY) benchmarks/run.py --tls --only $(TLS_WORKLOADS) --out benchmarks/results/tls_on.json
	$(VPY) benchmarks/tls_cost.py benchmarks/results/tls_off.json benchmarks/results/tls_on.json

# How cost grows with work (benchmarks/scale.py): each point in a fresh driver, ours then Ray's.
# Ray's points stop lower where this machine cannot hold more: 1,000 Ray actors would need
# ~60 GB (one ~60 MB process each), and 1M Ray tasks take ~25 min here.
RAY_SCALE_ARGS ?= --tasks 10000,100000 --actors 50,200
bench-scale: $(VENV)/.installed $(RAY_VENV)/.installed
	mkdir -p benchmarks/results
	$(VPY) benchmarks/scale.py --backend runtime --out benchmarks/results/scale_runtime.json
	RAY_USAGE_STATS_ENABLED=0 $(RAY_VENV)/bin/python benchmarks/scale.py --backend ray $(RAY_SCALE_ARGS) --out benchmarks/results/scale_ray.json
	$(MAKE) bench-chart

# docs/images/scale.png and the table for docs/benchmarks.md, from the last bench-scale results.
bench-chart: $(VENV)/.bench-installed
	$(VPY) benchmarks/scale_chart.py benchmarks/results/scale_runtime.json benchmarks/results/scale_ray.json --png docs/images/scale.png

$(VENV)/.bench-installed: $(VENV)/.installed pyproject.toml
	$(VPY) -m pip install --quiet -e '.[test,bench]'
	touch $@

# Ray's signatures of the public API, for tests/unit/test_ray_signatures.py (docs/ray_compatibility.md).
ray-signatures: $(RAY_VENV)/.installed
	$(RAY_VENV)/bin/python benchmarks/ray_signatures.py tests/data/ray_signatures.json

# Ray's own job clients (JobSubmissionClient, `ray job`) against our dashboard: see benchmarks/compat_ray.py.
compat-ray: $(VENV)/.installed $(RAY_VENV)/.installed
	@export TMPDIR=$$(mktemp -d) PORT=$$($(VPY) -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'); \
	$(VPY) -m runtime start --head --port 0 --num-cpus 2 --client-server-port 0 --dashboard-port $$PORT > /dev/null && \
	RAY_USAGE_STATS_ENABLED=0 $(RAY_VENV)/bin/python benchmarks/compat_ray.py http://127.0.0.1:$$PORT; \
	code=$$?; $(VPY) -m runtime stop > /dev/null; rm -rf $$TMPDIR; exit $$code

clean:
	rm -rf $(VENV) $(RAY_VENV) build dist *.egg-info benchmarks/results
