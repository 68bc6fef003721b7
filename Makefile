# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 8500
REST_PORT ?= 8501
DEMO_DIR ?= build/demo
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: install test test-deps lint demo bench bench-observability bench-quick bench-serving bench-kserve-env clean train

$(BIN)/tfsctl: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(BIN)/tfsctl

lint: install
	$(BIN)/ruff check tfsctl tests benchmarks samples

# Debian's prometheus package: tests/test_metrics_tfs.py scrapes `tfsctl serve` with a real Prometheus. Installed
# when missing and running as root (CI, a fresh machine); elsewhere the test is skipped, with its reason, unless CI is set.
test-deps:
	@command -v prometheus >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; \
	  else echo "note: prometheus is not installed (apt-get install prometheus); its test is skipped outside CI"; fi; }

test: install lint test-deps
	$(BIN)/pytest -q

demo: install
	bash samples/demo.sh $(DEMO_DIR) $(PORT) $(REST_PORT)

train: install
	$(BIN)/python samples/deeplab/train.py --out samples/deeplab/checkpoint

# Serving overhead vs a bare gRPC server, workers, batching, REST (h2load when installed: apt-get install nghttp2-client);
# then what request logging, the access log and tracing cost against none (docs/OBSERVABILITY.md).
bench: install
	$(BIN)/python benchmarks/overhead_bench.py
	$(BIN)/python benchmarks/observability_bench.py

bench-observability: install
	$(BIN)/python benchmarks/observability_bench.py

bench-quick: install
	$(BIN)/python benchmarks/overhead_bench.py --quick

# KServe 0.21's Python model server, the anchor of the REST goals, in a venv of its own (kserve pins protobuf 6,
# the project's venv has 7): TensorFlow from PyPI, the project's version. overhead_bench.py finds it by itself.
KSERVE_VENV ?= benchmarks/.kserve-venv

$(KSERVE_VENV)/.installed:
	$(PY) -m venv $(KSERVE_VENV)
	$(KSERVE_VENV)/bin/pip install -q --upgrade pip
	$(KSERVE_VENV)/bin/pip install -q 'kserve==0.21.0' 'tensorflow==2.21.*'
	touch $@

bench-kserve-env: $(KSERVE_VENV)/.installed

# DeepLab in process vs served, with and without batching (issue 4's figures).
bench-serving: install
	$(BIN)/python benchmarks/serving_bench.py

clean:
	rm -rf build $(VENV) .pytest_cache .ruff_cache
