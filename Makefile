# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 8500
REST_PORT ?= 8501
DEMO_DIR ?= build/demo
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: install test test-deps lint cxx demo bench bench-observability bench-quick bench-serving bench-real bench-real-quick bench-h2load bench-kserve-env kserve-client-env clean train

$(BIN)/tfsctl: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(BIN)/tfsctl

lint: install
	$(BIN)/ruff check tfsctl tests benchmarks samples
	$(BIN)/mypy  # tfsctl/core and tfsctl/serving ([tool.mypy] in pyproject.toml)

# tests/test_op_libraries.py compiles a custom op with g++ (TensorFlow's headers come with its pip package).
cxx:
	@command -v g++ >/dev/null || { apt-get update -qq && apt-get install -y -qq g++; }

# KServe's v2 clients for tests/test_v2_kserve.py, in a venv of their own (kserve pins protobuf 6, the project's
# venv has 7); no TensorFlow there, only the client.
KSERVE_CLIENT_VENV ?= build/kserve-client-venv

$(KSERVE_CLIENT_VENV)/.installed:
	$(PY) -m venv $(KSERVE_CLIENT_VENV)
	$(KSERVE_CLIENT_VENV)/bin/pip install -q 'kserve==0.21.0'
	touch $@

kserve-client-env: $(KSERVE_CLIENT_VENV)/.installed

# Debian's prometheus package: tests/test_metrics_tfs.py scrapes `tfsctl serve` with a real Prometheus. Installed
# when missing and running as root (CI, a fresh machine); elsewhere the test is skipped, with its reason, unless CI is set.
test-deps:
	@command -v prometheus >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; \
	  else echo "note: prometheus is not installed (apt-get install prometheus); its test is skipped outside CI"; fi; }

test: install lint test-deps bench-h2load cxx kserve-client-env
	$(BIN)/pytest -q

demo: install
	bash samples/demo.sh $(DEMO_DIR) $(PORT) $(REST_PORT)

train: install
	$(BIN)/python samples/deeplab/train.py --out samples/deeplab/checkpoint

# Serving overhead vs a bare gRPC server, workers, batching, REST (h2load when installed: apt-get install nghttp2-client);
# then what request logging, the access log and tracing cost against none (docs/OBSERVABILITY.md).
bench: install bench-h2load
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

# h2load (Debian's nghttp2-client), the benchmarks' load generator outside Python: installed when missing and running
# as root; elsewhere the benchmarks say they fall back to their Python client.
bench-h2load:
	@command -v h2load >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nghttp2-client; \
	  else echo "note: h2load is not installed (apt-get install nghttp2-client); the benchmarks use their Python client"; fi; }

# Real models (issue 20): ResNet50 (keras.applications, weights=None) and DeepLab 513x513, exported and served as a
# user would, against the same SavedModel's step in process, and against KServe 0.21 on the same SavedModel when
# `make bench-kserve-env` has been run (docs/PERFORMANCE.md).
bench-real: install bench-h2load
	$(BIN)/python benchmarks/real_models.py

bench-real-quick: install bench-h2load
	$(BIN)/python benchmarks/real_models.py --quick

clean:
	rm -rf build $(VENV) .pytest_cache .ruff_cache
