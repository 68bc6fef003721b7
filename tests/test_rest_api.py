"""REST API over a real ModelServer on 127.0.0.1 with real toy SavedModels: every route, bodies, errors, batching."""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tensorflow_serving.apis.get_model_status_pb2 import ModelVersionStatus  # noqa: E402

from tfsctl.core.config import DEFAULT_PROMETHEUS_PATH  # noqa: E402
from tfsctl.serving.rest_api import RestServer  # noqa: E402
from tfsctl.serving.testing import served  # noqa: E402
from tfsctl.testing import http_json, wait_until, write_monitoring_config, write_toy_model  # noqa: E402

X = [[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]



def _save_multi(path: Path) -> None:
    """Model 'multi': s string [None], u uint8 [None], i int32 [None] -> echo_bytes, text, total = u + i."""
    import tensorflow as tf

    class Multi(tf.Module):
        @tf.function(input_signature=[
            tf.TensorSpec([None], tf.string, name="s"),
            tf.TensorSpec([None], tf.uint8, name="u"),
            tf.TensorSpec([None], tf.int32, name="i"),
        ])
        def serve(self, s, u, i):
            return {"echo_bytes": s, "text": s, "total": tf.cast(u, tf.int32) + i}

    module = Multi()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})



def _config(tmp: Path, toy: Path, multi: Path) -> Path:
    text = f"""
model_config_list {{
  config {{
    name: "toy"
    base_path: "{toy}"
    model_platform: "tensorflow"
    model_version_policy {{ specific {{ versions: 1 versions: 2 }} }}
    version_labels {{ key: "stable" value: 1 }}
    version_labels {{ key: "canary" value: 2 }}
  }}
  config {{ name: "multi" base_path: "{multi}" model_platform: "tensorflow" }}
}}
"""
    path = tmp / "models.config"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rest")
    write_toy_model(tmp / "toy", 1, scale=1.0)
    write_toy_model(tmp / "toy", 2, scale=2.0)
    _save_multi(tmp / "multi" / "1")
    with served(rest=True, ready_timeout=120, model_config_file=str(_config(tmp, tmp / "toy", tmp / "multi")),
                monitoring_config_file=str(write_monitoring_config(tmp)),  # the Prometheus page at its default path
                file_system_poll_wait_seconds=0.5,
                allow_version_labels_for_unavailable_models=True) as srv:  # labels at start-up
        # Ready means one AVAILABLE version per model; the status tests need both toy versions loaded.
        available = {ModelVersionStatus.AVAILABLE}
        assert all(srv.manager.wait_for_state("toy", v, available, 60) for v in (1, 2)), "toy v1/v2 not AVAILABLE"
        yield srv


def _predict(port: int, body: Any, target: str = "/v1/models/toy") -> tuple[int, Any]:
    return http_json(port, "POST", f"{target}:predict", body)


# --- good requests ----------------------------------------------------------------------------------------------


def test_status_all_versions_one_version_and_label(server):
    port = server.rest_port
    status, body = http_json(port, "GET", "/v1/models/toy")
    assert status == 200
    versions = {s["version"]: s for s in body["model_version_status"]}
    assert set(versions) == {"1", "2"}
    assert all(s["state"] == "AVAILABLE" and s["status"]["error_code"] == "OK" for s in versions.values())
    status, body = http_json(port, "GET", "/v1/models/toy/versions/1")
    assert status == 200 and [s["version"] for s in body["model_version_status"]] == ["1"]
    status, body = http_json(port, "GET", "/v1/models/toy/labels/canary")  # TF Serving's status ignores labels
    assert status == 200 and [s["version"] for s in body["model_version_status"]] == ["2", "1"]


def test_metadata(server):
    status, body = http_json(server.rest_port, "GET", "/v1/models/toy/versions/1/metadata")
    assert status == 200
    assert body["model_spec"]["name"] == "toy" and body["model_spec"]["version"] == "1"
    assert set(body) == {"model_spec", "metadata"} and set(body["metadata"]) == {"signature_def"}
    assert set(body["metadata"]["signature_def"]) == {"signature_def"}  # TF Serving's keys: no "@type"
    assert body["model_spec"] == {"name": "toy", "signature_name": "", "version": "1"}
    sigs = body["metadata"]["signature_def"]["signature_def"]
    assert sigs["serving_default"]["inputs"]["x"]["tensor_shape"] == {
        "dim": [{"size": "-1", "name": ""}, {"size": "4", "name": ""}], "unknown_rank": False}
    assert sigs["serving_default"]["inputs"]["x"]["dtype"] == "DT_FLOAT"
    assert sigs["classify"]["method_name"] == "tensorflow/serving/classify"
    status, body = http_json(server.rest_port, "GET", "/v1/models/toy/metadata")
    assert status == 200 and body["model_spec"]["version"] == "2"  # latest by default


def test_predict_row_and_columnar_formats(server):
    port = server.rest_port
    x = np.array(X, np.float32)
    status, body = _predict(port, {"instances": X})
    assert status == 200, body
    np.testing.assert_allclose(body["predictions"], x * 2)  # latest version (2) has scale 2
    status, body = _predict(port, {"instances": [{"x": row} for row in X], "signature_name": "serving_default"})
    assert status == 200 and np.allclose(body["predictions"], x * 2)
    status, body = _predict(port, {"inputs": {"x": X}}, "/v1/models/toy/versions/1")
    assert status == 200 and np.allclose(body["outputs"], x)
    status, body = _predict(port, {"inputs": X}, "/v1/models/toy/labels/stable")
    assert status == 200 and np.allclose(body["outputs"], x)
    # Paths match case-insensitively and names are percent-decoded, as TF Serving's (?i) RE2 patterns and curl.
    status, body = _predict(port, {"inputs": X}, "/V1/Models/t%6Fy/Labels/st%61ble")
    assert status == 200 and np.allclose(body["outputs"], x), body
    # TF Serving reads the signature's inputs from an "inputs" object and ignores other keys.
    status, body = _predict(port, {"inputs": {"x": X, "z": [1]}}, "/v1/models/toy/labels/stable")
    assert status == 200 and np.allclose(body["outputs"], x)
    status, body = _predict(port, {"instances": [[1, 2, 3, 4]]}, "/v1/models/toy/labels/canary")  # ints -> float
    assert status == 200 and body["predictions"] == [[2.0, 4.0, 6.0, 8.0]]


def test_predict_b64_in_and_out_and_named_outputs(server):
    raw = b"\xff\x00bin"
    status, body = _predict(server.rest_port, {"instances": [
        {"s": {"b64": base64.b64encode(raw).decode()}, "u": 200, "i": -5},
        {"s": "hi", "u": 1, "i": 2},
    ]}, "/v1/models/multi")
    assert status == 200, body
    first, second = body["predictions"]
    assert base64.b64decode(first["echo_bytes"]["b64"]) == raw  # *_bytes outputs are always b64
    assert base64.b64decode(first["text"]["b64"]) == raw  # not UTF-8 -> b64
    assert first["total"] == 195
    assert second == {"echo_bytes": {"b64": base64.b64encode(b"hi").decode()}, "text": "hi", "total": 3}
    status, body = _predict(server.rest_port, {"inputs": {"s": ["a", "b"], "u": [1, 2], "i": [10, 20]}},
                            "/v1/models/multi")
    assert status == 200 and body["outputs"]["total"] == [11, 22] and body["outputs"]["text"] == ["a", "b"]


def test_classify_and_regress(server):
    port = server.rest_port
    status, body = http_json(port, "POST", "/v1/models/toy:classify",
                             {"signature_name": "classify",
                              "examples": [{"x": [1.0, 2.0, 3.0, 4.0]}, {"x": [0.5, 1.0, 0.0, 0.0]}]})
    assert status == 200, body
    assert body["results"] == [[["class0", 2.0], ["class1", 4.0]], [["class0", 1.0], ["class1", 2.0]]]
    status, body = http_json(port, "POST", "/v1/models/toy/versions/1:regress",
                             {"signature_name": "regress", "examples": [{"x": [1.0, 2.0, 3.0, 4.5]}]})
    assert status == 200 and body["results"] == [10.5]
    # Context features are shared by every example.
    status, body = http_json(port, "POST", "/v1/models/toy/versions/1:regress",
                             {"signature_name": "regress", "context": {"x": [1.0, 1.0, 1.0, 1.0]},
                              "examples": [{}, {}]})
    assert status == 200 and body["results"] == [4.0, 4.0]


def _count(text: str, status: str, model: str = "toy") -> float:
    """TF Serving's request_count on the page (REST counts every request of its handler, as http_server.cc)."""
    m = re.search(rf'^:tensorflow:serving:request_count\{{model_name="{re.escape(model)}",status="{status}"\}} (\S+)$',
                  text, re.M)
    return float(m.group(1)) if m else 0.0


def test_health_and_metrics_count_requests(server):
    port = server.rest_port
    assert http_json(port, "GET", "/v1/health/live") == (200, {"status": "live"})
    assert http_json(port, "GET", "/v1/health/ready") == (200, {"status": "ready"})
    status, before = http_json(port, "GET", "/monitoring/prometheus/metrics")
    assert status == 200 and ":tensorflow:serving:request_latency" in before
    for _ in range(2):
        assert _predict(port, {"instances": X})[0] == 200
    assert _predict(port, {"instances": [["a"]]})[0] == 400
    _, after = http_json(port, "GET", "/monitoring/prometheus/metrics")
    assert _count(after, "OK") - _count(before, "OK") == 2
    assert _count(after, "INVALID_ARGUMENT") - _count(before, "INVALID_ARGUMENT") == 1
    # Loads (reported by the manager) and latency histograms are on the same page.
    assert re.search(r'^tfsctl_model_events_total\{event="load",model_name="toy"\} 2\.0$', after, re.M), after
    assert ':tensorflow:serving:request_latency_count{model_name="toy",API="predict",entrypoint="REST"}' in after


def test_unknown_model_names_do_not_grow_the_metric_label_set(server):
    _, before = http_json(server.rest_port, "GET", "/monitoring/prometheus/metrics")
    for i in range(3):
        assert _predict(server.rest_port, {"instances": X}, f"/v1/models/ghost{i}")[0] == 404
        assert http_json(server.rest_port, "GET", f"/v1/models/ghost{i}/metadata")[0] == 404
    _, after = http_json(server.rest_port, "GET", "/monitoring/prometheus/metrics")
    assert "ghost" not in after
    # predict and metadata alike: TF Serving's REST handler counts both
    assert _count(after, "NOT_FOUND", "<unknown>") - _count(before, "NOT_FOUND", "<unknown>") == 6


# --- bad input matrix -------------------------------------------------------------------------------------------

BAD = [  # (case, method, path, body, HTTP status, needle): TF Serving's codes and key phrases
    ("unknown model", "POST", "/v1/models/nope:predict", {"instances": X}, 404, "Servable not found"),
    ("unknown version", "POST", "/v1/models/toy/versions/9:predict", {"instances": X}, 404, "9"),
    ("unknown label", "POST", "/v1/models/toy/labels/nolabel:predict", {"instances": X}, 400, "nolabel"),
    ("unknown model status", "GET", "/v1/models/nope", None, 404, "nope"),
    ("unknown signature", "POST", "/v1/models/toy:predict", {"signature_name": "nosig", "instances": X}, 400,
     "nosig"),
    ("signature_name not a string", "POST", "/v1/models/toy:predict", {"signature_name": 100}, 400,
     "'signature_name' key must be a string value."),
    ("missing input", "POST", "/v1/models/multi:predict", {"instances": [{"s": "a", "u": 1}]}, 400,
     "keys must be equal to: i,s,u"),
    ("missing columnar input", "POST", "/v1/models/multi:predict", {"inputs": {"s": ["a"], "u": [1]}}, 400,
     "Missing named input: i in 'inputs' object."),
    ("unknown named instance input", "POST", "/v1/models/toy:predict", {"instances": [{"z": [1.0] * 4}]}, 400,
     "does not have named input: z"),
    ("wrong dtype value", "POST", "/v1/models/toy:predict", {"instances": [["a", "b", "c", "d"]]}, 400,
     "not of expected type: float"),
    ("uint8 out of range", "POST", "/v1/models/multi:predict", {"inputs": {"s": ["a"], "u": [300], "i": [1]}}, 400,
     "300"),
    ("int32 given 1.5", "POST", "/v1/models/multi:predict", {"inputs": {"s": ["a"], "u": [1], "i": [1.5]}}, 400,
     "not of expected type: int32"),
    ("int32 given 2.0 (a JSON double)", "POST", "/v1/models/multi:predict",
     {"inputs": {"s": ["a"], "u": [1], "i": [2.0]}}, 400, "not of expected type: int32"),
    ("number for string", "POST", "/v1/models/multi:predict", {"inputs": {"s": [7], "u": [1], "i": [1]}}, 400,
     "not of expected type: string"),
    # shapes are left to the graph, as in TF Serving: [4] or [1, 3] into x:[-1, 4] run (see test_servable)
    ("ragged instances", "POST", "/v1/models/toy:predict", {"instances": [[1, 2, 3, 4], [1, 2]]}, 400,
     "Expecting tensor size: 4 but got: 2"),
    ("ragged columnar", "POST", "/v1/models/toy:predict", {"inputs": [[1, 2, 3, 4], [1, 2]]}, 400,
     "Encountered list at unexpected size: 2 at level: 1 expected size: 4"),
    ("instances not a list", "POST", "/v1/models/toy:predict", {"instances": {"x": 1}}, 400,
     "Expecting 'instances' to be an list/array"),
    ("empty instances", "POST", "/v1/models/toy:predict", {"instances": []}, 400, "No values in 'instances' array"),
    ("both formats", "POST", "/v1/models/toy:predict", {"instances": X, "inputs": X}, 400,
     "expecting only one of 'inputs' or 'instances' keys"),
    ("no inputs", "POST", "/v1/models/toy:predict", {"signature_name": ""}, 400, "Missing 'inputs' or 'instances' key"),
    ("empty body", "POST", "/v1/models/toy:predict", b"", 400, "JSON Parse error: The document is empty"),
    ("malformed JSON", "POST", "/v1/models/toy:predict", b"instances = [1, 2]", 400,
     "JSON Parse error: Invalid value"),
    ("truncated JSON", "POST", "/v1/models/toy:predict", b'{"instances": [1,', 400, "JSON Parse error"),
    ("JSON nested too deeply", "POST", "/v1/models/toy:predict", b'{"instances": ' + b"[" * 100_000 + b"]" * 100_000
     + b"}", 400, "nested too deeply"),
    ("tensor of rank 70", "POST", "/v1/models/toy:predict", b'{"instances": ' + b"[" * 70 + b"1" + b"]" * 70 + b"}",
     400, "levels deep"),
    ("JSON not an object", "POST", "/v1/models/toy:predict", b"[1, 2]", 400, "Is not object"),
    ("bad b64", "POST", "/v1/models/multi:predict", {"inputs": {"s": [{"b64": "!!notb64"}], "u": [1], "i": [1]}},
     400, "Unable to base64 decode"),
    ("b64 for a float input", "POST", "/v1/models/toy:predict", {"instances": [[{"b64": "AAAA"}] * 4]}, 400,
     "not of expected type: float"),
    ("classify on predict signature", "POST", "/v1/models/toy:classify", {"examples": [{"x": [1.0, 2, 3, 4]}]}, 400,
     "expecting type"),
    ("classify on predict signature, floats", "POST", "/v1/models/toy:classify",
     {"examples": [{"x": [1.0, 2.0, 3.0, 4.0]}]}, 400, "method"),
    ("classify without examples", "POST", "/v1/models/toy:classify", {"signature_name": "classify"}, 400,
     "key 'examples' is expected and was not found"),
    ("classify nested list feature", "POST", "/v1/models/toy:classify",
     {"signature_name": "classify", "examples": [{"x": [[1, 2]]}]}, 400,
     "Feature: x has element with unexpected JSON type: Array"),
    ("unknown /v1 route", "POST", "/v1/nothing", {}, 400, "Malformed request: POST /v1/nothing"),
    ("GET /v1/models", "GET", "/v1/models", None, 400, "Missing model name"),
    ("POST /v1/models", "POST", "/v1/models", {}, 400, "Malformed request"),
    ("bad version in path", "GET", "/v1/models/toy/versions/abc", None, 400, "Malformed request"),
    ("negative version in path", "POST", "/v1/models/toy/versions/-1:predict", {"instances": X}, 400,
     "Malformed request"),
    ("version beyond int64", "POST", "/v1/models/toy/versions/99999999999999999999:predict", {"instances": X}, 400,
     "Failed to convert version: 99999999999999999999 to numeric."),
    ("status of version beyond int64", "GET", "/v1/models/toy/versions/18446744073709551615", None, 400,
     "Failed to convert version"),
    ("GET on predict", "GET", "/v1/models/toy:predict", None, 400, "Malformed request: GET /v1/models/toy:predict"),
    ("PUT on status", "PUT", "/v1/models/toy", None, 400, "Malformed request"),
    ("POST on metadata", "POST", "/v1/models/toy/metadata", {}, 400, "Malformed request"),
    ("verb in capitals", "POST", "/v1/models/toy:PREDICT", {"instances": X}, 400, "Malformed request"),
]


@pytest.mark.parametrize(("case", "method", "path", "body", "code", "needle"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_gets_clear_error_and_server_keeps_serving(server, case, method, path, body, code, needle):
    raw = body if isinstance(body, bytes) else None
    status, reply = http_json(server.rest_port, method, path, None if raw is not None else body, raw=raw)
    assert status == code, (case, reply)
    assert set(reply) == {"error"} and needle in reply["error"], (case, reply)
    status, reply = _predict(server.rest_port, {"instances": X})
    assert status == 200 and np.allclose(reply["predictions"], np.array(X) * 2)


def test_gzip_bodies_are_decoded_and_corrupt_ones_are_400(server):
    import gzip

    def post(data: bytes) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=60)
        try:
            conn.request("POST", "/v1/models/toy:predict", body=data,
                         headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read())
        finally:
            conn.close()

    status, reply = post(gzip.compress(json.dumps({"instances": X}).encode()))
    assert status == 200 and np.allclose(reply["predictions"], np.array(X) * 2), reply
    status, reply = post(b"this is not gzip at all")
    assert status == 400 and "cannot read the request body" in reply["error"] and "gzip" in reply["error"], reply
    status, reply = _predict(server.rest_port, {"instances": X})
    assert status == 200 and np.allclose(reply["predictions"], np.array(X) * 2)


def test_memory_stays_bounded_under_bad_requests(server):
    """240 rejected ~100 KB bodies (parsed to ~1 MB of Python objects each) leave resident memory flat."""
    from tfsctl.core.loader import rss_bytes

    bodies = [
        json.dumps({"inputs": {"x": [[1.0, 2.0, 3.0, 4.0]] * 4000 + [[True] * 4]}}).encode(),  # a bool for DT_FLOAT
        b'{"instances": [' + b"1.5," * 25_000,  # truncated JSON
        json.dumps({"instances": [["a"] * 4] * 4000}).encode(),  # strings for DT_FLOAT
        json.dumps({"signature_name": "nosig", "instances": [[1.0] * 4] * 4000}).encode(),
    ]

    def burst(n: int) -> None:
        for i in range(n):
            status, _ = http_json(server.rest_port, "POST", "/v1/models/toy:predict", raw=bodies[i % len(bodies)])
            assert status == 400

    burst(40)  # warm the allocator and the code paths
    before = rss_bytes()
    burst(240)
    growth = rss_bytes() - before
    assert growth < 32 * 1024 * 1024, f"RSS grew by {growth / 1e6:.1f} MB over 240 rejected requests"
    assert _predict(server.rest_port, {"instances": X})[0] == 200


def test_body_over_limit_is_413_and_next_request_succeeds(server):
    rest = RestServer(server.core, server.metrics, "127.0.0.1", 0, max_body_bytes=64 * 1024)
    rest.start()
    try:
        big = {"instances": [[1.0, 2.0, 3.0, 4.0]] * 20_000}  # ~0.5 MB of JSON
        status, reply = http_json(rest.port, "POST", "/v1/models/toy:predict", big)
        assert status == 413 and "limit of 65536 bytes" in reply["error"]
        status, reply = http_json(rest.port, "POST", "/v1/models/toy:predict", {"instances": X})
        assert status == 200 and np.allclose(reply["predictions"], np.array(X) * 2)
        # No metrics_path, no page (TF Serving without a monitoring config): an unknown route like any other.
        assert http_json(rest.port, "GET", DEFAULT_PROMETHEUS_PATH) == (404, {"error": f"Not found: GET "
                                                                                  f"{DEFAULT_PROMETHEUS_PATH}"})
    finally:
        rest.stop()
    busy = RestServer(server.core, server.metrics, "127.0.0.1", server.rest_port)
    with pytest.raises(OSError, match=f"cannot serve REST on 127.0.0.1:{server.rest_port}"):
        busy.start()
    busy.stop()
    moved = RestServer(server.core, server.metrics, "127.0.0.1", 0, metrics_path="/metrics")  # MonitoringConfig
    moved.start()
    try:
        assert http_json(moved.port, "GET", "/metrics")[0] == 200
        assert http_json(moved.port, "GET", "/monitoring/prometheus/metrics")[0] == 404
    finally:
        moved.stop()


def test_gzip_bomb_and_chunked_body_over_limit_are_413(server):
    """The body limit holds for the decoded size: a 1 KB gzip that inflates past it, and a chunked upload."""
    import gzip

    rest = RestServer(server.core, server.metrics, "127.0.0.1", 0, max_body_bytes=64 * 1024)
    rest.start()
    try:
        big = json.dumps({"instances": [[1.0, 2.0, 3.0, 4.0]] * 20_000}).encode()  # ~0.5 MB
        bomb = gzip.compress(big)
        assert len(bomb) < 4096
        for data, headers in ((bomb, {"Content-Encoding": "gzip"}),
                              ((big[i:i + 8192] for i in range(0, len(big), 8192)), {})):
            conn = http.client.HTTPConnection("127.0.0.1", rest.port, timeout=60)
            try:
                conn.request("POST", "/v1/models/toy:predict", body=data,
                             headers={"Content-Type": "application/json", **headers}, encode_chunked=not headers)
                resp = conn.getresponse()
                status, reply = resp.status, json.loads(resp.read())
            finally:
                conn.close()
            assert status == 413 and "limit of 65536 bytes" in reply["error"], reply
            status, reply = http_json(rest.port, "POST", "/v1/models/toy:predict", {"instances": X})
            assert status == 200 and np.allclose(reply["predictions"], np.array(X) * 2)
    finally:
        rest.stop()


def test_readiness_is_503_until_models_load(tmp_path):
    """A model whose base path has no version yet keeps /v1/health/ready at 503; status says why."""
    base = tmp_path / "late"
    base.mkdir()
    with served(rest=True, ready_timeout=None, model_name="late", model_base_path=str(base),
                file_system_poll_wait_seconds=0.1) as srv:
        status, reply = http_json(srv.rest_port, "GET", "/v1/health/ready")
        assert status == 503 and "not ready" in reply["error"]
        assert http_json(srv.rest_port, "GET", "/v1/health/live")[0] == 200
        status, reply = _predict(srv.rest_port, {"instances": X}, "/v1/models/late")
        assert status == 404 and "Servable not found for request: Latest(late)" in reply["error"], reply
        write_toy_model(base, 1)
        assert srv.wait_until_ready(60)
        assert http_json(srv.rest_port, "GET", "/v1/health/ready")[0] == 200
        assert _predict(srv.rest_port, {"instances": X}, "/v1/models/late")[0] == 200


# --- batching through REST --------------------------------------------------------------------------------------


def test_batching_over_rest_merges_refuses_when_full_and_drains_on_stop(tmp_path):
    write_toy_model(tmp_path / "toy", 1, scale=3.0)
    params = tmp_path / "batching.config"
    params.write_text("max_batch_size { value: 4 }\nbatch_timeout_micros { value: 3000000 }\n"
                      "max_enqueued_batches { value: 1 }\nnum_batch_threads { value: 1 }\n")
    with served(rest=True, ready_timeout=60, model_name="toy", model_base_path=str(tmp_path / "toy"),
                enable_batching=True, batching_parameters_file=str(params),
                monitoring_config_file=str(write_monitoring_config(tmp_path))) as srv:
        port = srv.rest_port
        rows = [[[float(i)] * 4] for i in range(4)]
        with ThreadPoolExecutor(4) as pool:  # 4 single-row requests fill one batch of 4
            replies = list(pool.map(lambda r: _predict(port, {"instances": r}), rows))
        for r, (status, body) in zip(rows, replies, strict=True):
            assert status == 200 and np.allclose(body["predictions"], np.array(r) * 3)
        reg = srv.metrics.registry
        assert reg.get_sample_value("tfsctl_batch_size_count", {"model_name": "toy"}) == 1.0
        assert reg.get_sample_value("tfsctl_batch_size_sum", {"model_name": "toy"}) == 4.0

        # One row waits in the queue (limit 4 examples); 4 more rows are refused at once with 503 (UNAVAILABLE).
        waiting: dict = {}
        t = threading.Thread(target=lambda: waiting.update(r=_predict(port, {"instances": [[1.0] * 4]})))
        t.start()
        wait_until(lambda: srv.batcher.pending() == 1, 20, "the row to be queued", every=0.01)
        status, reply = _predict(port, {"instances": X * 2})
        assert status == 503 and "full" in reply["error"]
        srv.stop(10)  # graceful: the queued request still gets its answer
        t.join(30)
        assert waiting["r"][0] == 200 and waiting["r"][1]["predictions"] == [[3.0] * 4]

