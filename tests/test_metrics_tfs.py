"""TF Serving's own metrics: names, labels, units, buckets and exposition as TF Serving 2.21 writes them, checked on
the page itself and through a real Prometheus server (Debian's ``prometheus``) scraping ``tfsctl serve``."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tfsctl.serving.metrics import LATENCY_BUCKETS_US, Metrics, tf_exponential_buckets
from tfsctl.serving.tensors import from_numpy
from tfsctl.testing import free_port, wait_until, write_monitoring_config, write_toy_model

ROOT = Path(__file__).resolve().parents[1]


def _page(metrics: Metrics) -> list[str]:
    return metrics.render().decode().splitlines()


def test_tf_bucket_bounds_are_tensorflows_exponential_buckets():
    assert tf_exponential_buckets(1, 2, 15)[-1] == 16 * 1024  # util.cc: "[1, 2, 4, ..., 16 * 1024, DBL_MAX]"
    assert len(LATENCY_BUCKETS_US) == 33 and LATENCY_BUCKETS_US[:3] == (10, 18, 32.4)


def test_exposition_is_tf_servings_exporter_format():
    m = Metrics()
    m.observe_request("toy", "Predict", "GRPC", "OK", 18)  # exactly on a bound: TF counts it in the next bucket
    m.observe_request("toy", "Predict", "GRPC", "OK", 1_234_567)
    m.observe_request("toy", "Predict", "GRPC", "NOT_FOUND", None)
    lines = _page(m)
    # a counter: TYPE line, no HELP, no _total, an integer value, TF's label order
    i = lines.index("# TYPE :tensorflow:serving:request_count counter")
    assert lines[i + 1:i + 3] == [':tensorflow:serving:request_count{model_name="toy",status="NOT_FOUND"} 1',
                                  ':tensorflow:serving:request_count{model_name="toy",status="OK"} 2']
    assert not any(line.startswith("# HELP :tensorflow") for line in lines)
    prefix = ':tensorflow:serving:request_latency_bucket{model_name="toy",API="Predict",entrypoint="GRPC",'
    buckets = {line[len(prefix):].split("}")[0]: int(line.rsplit(" ", 1)[1]) for line in lines
               if line.startswith(prefix)}
    assert list(buckets)[:4] == ['le="10"', 'le="18"', 'le="32.4"', 'le="58.32"']
    assert len(buckets) == 34 and list(buckets)[-1] == 'le="+Inf"'
    assert buckets['le="18"'] == 0 and buckets['le="32.4"'] == 1  # value < bound, as TensorFlow's histogram
    assert buckets['le="1.47476e+09"'] == 2
    # the sum in six significant digits (absl's StrCat of a double), the count an integer
    assert ':tensorflow:serving:request_latency_sum{model_name="toy",API="Predict",entrypoint="GRPC"} 1.23458e+06' \
        in lines
    assert ':tensorflow:serving:request_latency_count{model_name="toy",API="Predict",entrypoint="GRPC"} 2' in lines


def test_batching_warmup_load_and_example_metrics_names_and_labels():
    m = Metrics()
    m.observe_batch_input([3, 3])
    m.observe_batch("toy", 8, [0.0005, 0.001], real_size=6, thread_pool_name="batch_threads")
    m.observe_warmup("/m/toy/1", "OK", 5000, 2)
    m.observe_saved_model_load("/m/toy/1", True, 9000, [("restore_graph", 7000), ("init_graph", 100)])
    m.observe_saved_model_load("/m/bad/1", False, 10, [])
    m.observe_examples("toy", 3)
    text = "\n".join(_page(m))
    for line in (
        ":tensorflow:serving:batching_session:wrapped_run_count{} 1",
        ':tensorflow:serving:batching_session:input_batch_size_count{} 2',
        ':tensorflow:serving:batching_session:processed_batch_size_bucket{le="8"} 0',
        ':tensorflow:serving:batching_session:processed_batch_size_bucket{le="16"} 1',
        ':tensorflow:serving:batching_session:padding_size_sum{execution_batch_size="8"} 2',
        ':tensorflow:serving:batching_session:queuing_latency_count{thread_pool_name="batch_threads"} 2',
        ':tensorflow:serving:model_warmup_records_read{model_path="/m/toy/1",status="OK"} 2',
        ':tensorflow:serving:model_warmup_latency_count{model_path="/m/toy/1",status="OK"} 1',
        ':tensorflow:cc:saved_model:load_attempt_count{model_path="/m/toy/1",status="success"} 1',
        ':tensorflow:cc:saved_model:load_attempt_count{model_path="/m/bad/1",status="fail"} 1',
        ':tensorflow:cc:saved_model:load_latency{model_path="/m/toy/1"} 9000',
        ':tensorflow:cc:saved_model:load_latency_by_stage_count{model_path="/m/toy/1",stage="restore_graph"} 1',
        ':tensorflow:serving:request_example_counts_count{model="toy"} 1',
        ':tensorflow:serving:request_example_count_total{model="toy"} 3',
    ):
        assert re.search("^" + re.escape(line) + "$", text, re.M), line
    # tfsctl's own metrics keep their names beside TF Serving's
    assert re.search(r'^tfsctl_batch_size_count\{model_name="toy"\} 1\.0$', text, re.M)


# --- a real server and a real Prometheus -------------------------------------------------------------------------


def _http(url: str, timeout: float = 10.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()



def _value(text: str, sample: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def _prometheus_binary() -> str:
    binary = shutil.which("prometheus")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("the prometheus binary is missing in CI: `make test` installs Debian's prometheus package")
        pytest.skip("Debian's prometheus package is not installed (apt-get install prometheus; CI installs it)")
    return binary


@pytest.fixture
def served(tmp_path):
    """``tfsctl serve`` (a real process) with TF Serving's monitoring config, on OS-chosen loopback ports."""
    write_toy_model(tmp_path / "toy", 1, scale=2.0, warmup=2)
    monitoring = write_monitoring_config(tmp_path, "/monitoring/tf")
    grpc_port, rest_port = free_port(), free_port()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT))
    log = open(tmp_path / "serve.log", "w+")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "tfsctl", "serve", "--host", "127.0.0.1", "--port", str(grpc_port),
         "--rest_api_port", str(rest_port), "--model_name", "toy", "--model_base_path", str(tmp_path / "toy"),
         "--monitoring_config_file", str(monitoring)], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        def up() -> bool:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                return "request_count" in _http(f"http://127.0.0.1:{rest_port}/monitoring/tf", 2)
            except OSError:
                return False

        wait_until(up, 120, "tfsctl serve to answer on its metrics path", every=0.1)
        yield {"grpc": grpc_port, "rest": rest_port, "path": "/monitoring/tf", "log": tmp_path / "serve.log"}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


def _predict(stub, name: str = "toy") -> None:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.inputs["x"].CopyFrom(from_numpy(np.ones((1, 4), np.float32)))
    stub.Predict(request, timeout=20)


def test_page_of_a_served_model_has_tf_servings_metrics(served):
    channel = grpc.insecure_channel(f"127.0.0.1:{served['grpc']}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    for _ in range(3):
        _predict(stub)
    with pytest.raises(grpc.RpcError):
        _predict(stub, "missing")
    channel.close()
    body = json.dumps({"instances": [[1.0, 2.0, 3.0, 4.0]]}).encode()
    urllib.request.urlopen(urllib.request.Request(
        f"http://127.0.0.1:{served['rest']}/v1/models/toy:predict", data=body), timeout=20).read()
    text = _http(f"http://127.0.0.1:{served['rest']}{served['path']}")
    assert _value(text, ':tensorflow:serving:request_count{model_name="toy",status="OK"}') == 4
    assert _value(text, ':tensorflow:serving:request_count{model_name="<unknown>",status="NOT_FOUND"}') == 1
    assert _value(text, ':tensorflow:serving:request_latency_count{model_name="toy",API="Predict",'
                        'entrypoint="GRPC"}') == 3
    assert _value(text, ':tensorflow:serving:request_latency_count{model_name="toy",API="predict",'
                        'entrypoint="REST"}') == 1
    assert _value(text, ':tensorflow:serving:runtime_latency_count{model_name="toy",API="Predict",'
                        'runtime="TF1"}') == 4 + 2  # the two warmup records count too, as in TF Serving
    version = Path(served["log"]).parent / "toy" / "1"
    assert _value(text, f':tensorflow:cc:saved_model:load_attempt_count{{model_path="{version}",'
                        'status="success"}') == 1
    assert _value(text, f':tensorflow:serving:model_warmup_records_read{{model_path="{version}",status="OK"}}') == 2
    log = Path(served["log"]).read_text()
    warmup = version / "assets.extra" / "tf_serving_warmup_requests"
    assert f"Starting to read warmup data for model at {warmup} with model-warmup-options" in log
    assert re.search(f"Finished reading warmup data for model at {re.escape(str(warmup))}. Number of warmup "
                     r"records read: 2. Elapsed time \(microseconds\): \d+\.", log)


def _query(port: int, promql: str, at: float | None = None) -> list:
    params = {"query": promql}
    if at is not None:
        params["time"] = repr(at)
    doc = json.loads(_http(f"http://127.0.0.1:{port}/api/v1/query?{urllib.parse.urlencode(params)}"))
    assert doc["status"] == "success", doc
    return doc["data"]["result"]


def _quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """Prometheus' histogram_quantile over cumulative (bound, count) pairs, +Inf last."""
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    raise AssertionError("unreachable")


def test_real_prometheus_scrapes_tf_serving_metric_names(served, tmp_path):
    binary = _prometheus_binary()
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 500ms\n  scrape_timeout: 500ms\n"
        "scrape_configs:\n  - job_name: tfsctl\n"
        f"    metrics_path: {served['path']}\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{served['rest']}']\n")
    log = open(tmp_path / "prometheus.log", "w+")  # noqa: SIM115 - closed below
    prom = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    channel = grpc.insecure_channel(f"127.0.0.1:{served['grpc']}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    count = ':tensorflow:serving:request_count{model_name="toy",status="OK"}'
    try:
        def ready() -> bool:
            assert prom.poll() is None, (tmp_path / "prometheus.log").read_text()
            try:
                return bool(_query(port, 'up{job="tfsctl"} == 1'))
            except OSError:
                return False

        def scraped(value: int):
            """The timestamp of Prometheus' latest sample once it holds ``value``."""
            result = _query(port, count)
            return float(result[0]["value"][0]) if result and float(result[0]["value"][1]) == value else None

        def targets() -> str:
            """What Prometheus says of its scrapes, for a failure's message (a loaded machine's slow scrapes)."""
            return _http(f"http://127.0.0.1:{port}/api/v1/targets") + "\n" + (tmp_path / "prometheus.log").read_text()

        wait_until(ready, 60, "Prometheus to scrape tfsctl serve", every=0.1)
        first = 5
        for _ in range(first):
            _predict(stub)
        wait_until(lambda: scraped(first), 90, f"a scrape showing {first} requests", every=0.1, explain=targets)
        more = 12
        for _ in range(more):
            _predict(stub)
        at = wait_until(lambda: scraped(first + more),
                        90, f"a scrape showing {first + more} requests", every=0.1, explain=targets)
        page = _http(f"http://127.0.0.1:{served['rest']}{served['path']}")  # what that scrape saw (no traffic since)

        # rate over [1m]: the raw samples in the window rise by exactly the requests sent; Prometheus' rate lies
        # between that increase over the whole minute and over the span its samples cover (extrapolation).
        raw = _query(port, f"{count}[1m]", at)[0]["values"]
        values = [float(v) for _, v in raw]
        # a scrape may fall inside a burst, but the counter only rises, and the waits above saw both totals
        assert values == sorted(values) and first in values and values[-1] == first + more, raw
        increase = values[-1] - values[0]
        span = float(raw[-1][0]) - float(raw[0][0])
        rate = float(_query(port, f"rate({count}[1m])", at)[0]["value"][1])
        assert increase / 60 - 1e-9 <= rate <= increase / span + 1e-9, (rate, increase, span)
        total = _query(port, 'sum(:tensorflow:serving:request_count{model_name="toy"})', at)
        assert float(total[0]["value"][1]) == first + more

        # histogram_quantile over request_latency's buckets (microseconds, TF's bounds) equals the quantile of the
        # page's own cumulative buckets
        selector = 'model_name="toy",API="Predict",entrypoint="GRPC"'
        buckets = []
        for line in page.splitlines():
            m = re.fullmatch(r':tensorflow:serving:request_latency_bucket\{' + re.escape(selector)
                             + r',le="([^"]+)"\} (\d+)', line)
            if m:
                buckets.append((float(m.group(1)), float(m.group(2))))
        assert len(buckets) == 34 and buckets[-1][1] == first + more
        got = _query(port, f"histogram_quantile(0.5, :tensorflow:serving:request_latency_bucket{{{selector}}})", at)
        assert float(got[0]["value"][1]) == pytest.approx(_quantile(buckets, 0.5), rel=1e-6)
        over_rate = _query(port, "histogram_quantile(0.9, sum by (le) "
                                 f"(rate(:tensorflow:serving:request_latency_bucket{{{selector}}}[1m])))", at)
        assert 0 < float(over_rate[0]["value"][1]) <= LATENCY_BUCKETS_US[-1]
    finally:
        channel.close()
        prom.terminate()
        try:
            prom.wait(20)
        except subprocess.TimeoutExpired:
            prom.kill()
            prom.wait(10)
        log.close()
