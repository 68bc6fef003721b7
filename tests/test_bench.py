"""tfsctl bench: short bounded sweeps against real in-test gRPC (official PredictionService) and HTTP servers."""

from __future__ import annotations

import csv
import json
import os
import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc  # noqa: E402

from tfsctl.cli import app  # noqa: E402
from tfsctl.client import bench  # noqa: E402
from tfsctl.errors import ClientError  # noqa: E402
from tfsctl.serving.tensors import from_numpy, to_numpy  # noqa: E402
from tfsctl.testing import free_port, wait_until  # noqa: E402

runner = CliRunner()


class Doubler(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Model 'toy': y = 2 * x for float32 x [N, 4]; also accepts the DeepLab-style image inputs (returns sums)."""

    def __init__(self) -> None:
        self.count = 0
        self.last_x: np.ndarray | None = None
        self.last_filter: list[str] = []
        self.lock = threading.Lock()

    def Predict(self, request, context):  # noqa: N802 - gRPC method name
        name = request.model_spec.name
        if name != "toy":
            context.abort(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({name})")
        response = predict_pb2.PredictResponse()
        response.model_spec.name = "toy"
        response.model_spec.version.value = 1
        if "x" in request.inputs:
            x = to_numpy(request.inputs["x"], "x")
            if x.dtype != np.float32 or x.ndim != 2 or x.shape[1] != 4:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"x must be float32 [N, 4], got {x.dtype} {x.shape}")
            response.outputs["y"].CopyFrom(from_numpy(x * 2))
        elif "images" in request.inputs:
            x = to_numpy(request.inputs["images"], "images")
            response.outputs["total"].CopyFrom(from_numpy(np.array([int(x.sum())], np.int64)))
        else:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "missing input 'x'")
        for name in request.output_filter:
            if name not in response.outputs:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"output_filter: no output '{name}'")
        with self.lock:
            self.count += 1
            self.last_x = x
            self.last_filter = list(request.output_filter)
        return response


@pytest.fixture(scope="module")
def grpc_server():
    servicer = Doubler()
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(servicer, srv)
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    yield f"127.0.0.1:{port}", servicer
    srv.stop(0)


class _RestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the bench's client expects
    bodies: list[dict] = []

    def log_message(self, *args) -> None:  # quiet
        pass

    def _answer(self, status: int, doc: dict) -> None:
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path not in ("/v1/models/toy:predict", "/v1/models/toy/versions/1:predict"):
            self._answer(404, {"error": f"Servable not found for request: {self.path}"})
            return
        _RestHandler.bodies.append(body)
        if "inputs" in body:
            x = np.asarray(body["inputs"]["x"], np.float32)
            self._answer(200, {"outputs": {"y": (x * 2).tolist()}})
        elif "instances" in body:
            x = np.asarray(body["instances"], np.float32)
            self._answer(200, {"predictions": (x * 2).tolist()})
        else:
            self._answer(400, {"error": "need 'inputs' or 'instances'"})


@pytest.fixture(scope="module")
def rest_server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _RestHandler)
    srv.daemon_threads = True
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def check_sane(r: bench.LevelResult) -> None:
    assert r.requests > 0 and r.errors == 0, r
    assert 0 < r.min_ms <= r.p50_ms <= r.p90_ms <= r.p99_ms <= r.max_ms
    assert r.throughput == pytest.approx(r.requests / r.duration_s)
    assert sum(w.requests for w in r.windows) == r.requests


def test_grpc_sweep_measures_real_requests(grpc_server):
    target, servicer = grpc_server
    inputs = bench.synthetic_inputs(["x:2x4:float32"])
    before = servicer.count
    t0 = time.monotonic()
    results = bench.run_sweep(target, [1, 3], 0.2, 0.4, inputs=inputs, model="toy", windows=2, output_filter=["y"])
    elapsed = time.monotonic() - t0
    assert [r.concurrency for r in results] == [1, 3]
    for r in results:
        check_sane(r)
        assert len(r.windows) == 2 and r.duration_s == pytest.approx(0.8)
    served = servicer.count - before
    assert served >= sum(r.requests + r.warmup_requests for r in results)
    np.testing.assert_array_equal(servicer.last_x, inputs["x"])
    assert servicer.last_filter == ["y"]
    assert elapsed < 2 * 1.2 + 5  # stops by itself


def test_grpc_per_thread_channels_and_request_cap(grpc_server):
    target, servicer = grpc_server
    inputs = bench.synthetic_inputs(["x:1x4:float32"])
    (r,) = bench.run_sweep(target, [2], 0.0, 0.5, inputs=inputs, model="toy", grpc_channels="per-thread")
    check_sane(r)
    before = servicer.count
    (capped,) = bench.run_sweep(target, [4], 0.0, 2.0, inputs=inputs, model="toy", max_requests=7)
    assert capped.requests + capped.warmup_requests == 7 == servicer.count - before


def test_errors_are_counted_not_fatal(grpc_server, rest_server):
    target, _ = grpc_server
    inputs = bench.synthetic_inputs(["x:1x4:float32"])
    (r,) = bench.run_sweep(target, [2], 0.0, 0.3, inputs=inputs, model="nosuch")
    assert r.requests == 0 and r.errors > 0 and set(r.error_kinds) == {"NOT_FOUND"}
    (r,) = bench.run_sweep(target, [1], 0.0, 0.2, inputs=inputs, model="toy", output_filter=["nosuch"])
    assert r.requests == 0 and r.errors > 0 and set(r.error_kinds) == {"INVALID_ARGUMENT"}
    (r,) = bench.run_sweep(rest_server, [1], 0.0, 0.3, inputs=inputs, model="nosuch", protocol="rest")
    assert r.requests == 0 and r.errors > 0 and set(r.error_kinds) == {"HTTP 404"}
    closed = free_port()
    (r,) = bench.run_sweep(f"127.0.0.1:{closed}", [1], 0.0, 0.3, inputs=inputs, model="toy", timeout=1.0)
    assert r.requests == 0 and r.errors > 0 and set(r.error_kinds) == {"UNAVAILABLE"}
    assert r.errors <= 0.3 / bench.ERROR_PAUSE_S + 1  # paced, not a hot loop


@pytest.mark.parametrize("fmt", ["inputs", "instances"])
def test_rest_sweep(rest_server, fmt):
    inputs = bench.synthetic_inputs(["x:3x4:float32"])
    _RestHandler.bodies.clear()
    (r,) = bench.run_sweep(rest_server, [2], 0.1, 0.4, inputs=inputs, model="toy", protocol="rest", rest_format=fmt,
                           version=1)
    check_sane(r)
    body = _RestHandler.bodies[-1]
    sent = body["inputs"]["x"] if fmt == "inputs" else body["instances"]
    np.testing.assert_allclose(np.asarray(sent, np.float32), inputs["x"])


def test_cli_bench_writes_json_csv_plot(grpc_server, tmp_path):
    target, servicer = grpc_server
    js, cs, png = tmp_path / "r.json", tmp_path / "r.csv", tmp_path / "r.png"
    res = runner.invoke(app, [
        "bench", "--server", target, "--model", "toy", "--input-shape", "x:2x4:float32", "--concurrency", "1,2",
        "--warmup-seconds", "0.1", "--measure-seconds", "0.3", "--json-out", str(js), "--csv-out", str(cs),
        "--plot-out", str(png), "--output-key", "y",
    ])
    assert res.exit_code == 0, res.output
    assert "req/s" in res.stdout and "p99" in res.stdout
    assert servicer.last_filter == ["y"]
    doc = json.loads(js.read_text())
    assert doc["meta"]["inputs"]["x"] == {"shape": [2, 4], "dtype": "float32"}
    assert doc["meta"]["output_key"] == ["y"]
    assert [lv["concurrency"] for lv in doc["levels"]] == [1, 2]
    for lv in doc["levels"]:
        assert lv["requests"] > 0 and lv["errors"] == 0 and lv["p50_ms"] <= lv["p99_ms"]
    rows = list(csv.DictReader(cs.open()))
    assert [int(r["concurrency"]) for r in rows] == [1, 2]
    assert all(float(r["throughput"]) > 0 and float(r["p50_ms"]) <= float(r["p99_ms"]) for r in rows)
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size == (1000, 400)

    # --json is the same switch as in every command: the JSON document on stdout, nothing else there.
    res = runner.invoke(app, [
        "bench", "--server", target, "--model", "toy", "--input-shape", "x:1x4:float32", "--concurrency", "1",
        "--warmup-seconds", "0", "--measure-seconds", "0.2", "--json",
    ])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert [lv["concurrency"] for lv in doc["levels"]] == [1] and doc["levels"][0]["requests"] > 0


def test_cli_bench_bad_options(grpc_server):
    target, _ = grpc_server
    for args, needle in [
        (["--input-shape", "x:1x4:float32", "--concurrency", "0"], "positive"),
        (["--input-shape", "x:1xq:float32"], "bad --input-shape"),
        (["--input-shape", "x:1x4:complex7"], "unknown dtype"),
        (["--input-shape", "x:1x4", "--input-image", "a.png"], "not both"),
        ([], "UNIMPLEMENTED"),  # no inputs given: shaped after GetModelMetadata, which this in-test server lacks
        (["--batch-size", "0"], "--batch-size"),
        (["--input-shape", "x:1x4", "--protocol", "http"], "grpc or rest"),
    ]:
        res = runner.invoke(app, ["bench", "--server", target, "--model", "toy", *args])
        assert res.exit_code == 1, (args, res.output)
        assert needle in " ".join(res.stderr.split()), (args, res.stderr)


def test_percentiles_and_windows():
    # 100 successes with latencies 1..100 ms completing in window 0, 3 failures, one warm-up, one straggler.
    start = 10.0
    recs = [(start + 0.5 - ms / 1e3, start + 0.5, None) for ms in range(1, 101)]
    recs += [(start + 0.1, start + 0.2, "UNAVAILABLE")] * 3 + [(start - 1, start - 0.5, None), (start, start + 9, None)]
    r = bench.summarise(4, recs, start, 1.0, 2)
    assert (r.requests, r.errors, r.warmup_requests, r.late_requests) == (100, 3, 1, 1)
    assert (r.p50_ms, r.p90_ms, r.p99_ms) == pytest.approx((50, 90, 99))
    assert r.throughput == pytest.approx(50.0) and not r.stable  # window 2 is empty
    assert r.error_kinds == {"UNAVAILABLE": 3}
    assert bench.parse_levels("1:32") == [1, 2, 4, 8, 16, 32]
    assert bench.parse_levels("16,1,4,4") == [1, 4, 16]
    with pytest.raises(ClientError):
        bench.parse_levels("a,b")


def test_run_level_accepts_plain_callables():
    calls = []
    lock = threading.Lock()

    def make():
        def send() -> None:
            with lock:
                calls.append(threading.get_ident())
                n = len(calls)
            time.sleep(0.002)
            if n % 10 == 0:
                raise ValueError("every tenth call fails")

        return send

    r = bench.run_level(make, 3, 0.05, 0.3)
    assert r.requests > 0 and r.errors > 0 and r.error_kinds.keys() == {"ValueError"}
    assert r.p50_ms >= 2.0 and len(set(calls)) == 3
    assert r.requests + r.errors + r.warmup_requests + r.late_requests == len(calls)


def test_against_tfsctl_serve(tmp_path):
    """The whole client side against the real in-process ModelServer: bench (gRPC and REST), status and reload."""
    from tfsctl.serving.testing import served as serve_model
    from tfsctl.testing import write_toy_model

    base = tmp_path / "toy"
    write_toy_model(base, 1, scale=3.0)
    with serve_model(rest=True, ready_timeout=60, grace=1, model_name="toy", model_base_path=str(base)) as server:
        grpc_target, rest_target = f"127.0.0.1:{server.grpc_port}", f"127.0.0.1:{server.rest_port}"
        for protocol, target in (("grpc", grpc_target), ("rest", rest_target)):
            inputs = bench.inputs_from_metadata(target, "toy", protocol=protocol, batch=3)
            assert {k: (v.shape, v.dtype) for k, v in inputs.items()} == {"x": ((3, 4), np.float32)}
            (r,) = bench.run_sweep(target, [2], 0.1, 0.4, inputs=inputs, model="toy", protocol=protocol,
                                   output_filter=["y"])
            check_sane(r)
            with pytest.raises(ClientError, match="no signature 'nosig'"):
                bench.inputs_from_metadata(target, "toy", protocol=protocol, signature="nosig")

        res = runner.invoke(app, ["status", "--server", grpc_target, "--model", "toy"])
        assert res.exit_code == 0 and "AVAILABLE" in res.stdout, res.output

        other = tmp_path / "other"
        write_toy_model(other, 4, scale=1.0)
        cfg = tmp_path / "models.config"
        cfg.write_text(
            "model_config_list {\n"
            f'  config {{ name: "toy" base_path: "{base}" model_platform: "tensorflow" }}\n'
            f'  config {{ name: "other" base_path: "{other}" model_platform: "tensorflow" }}\n'
            "}\n"
        )
        res = runner.invoke(app, ["reload", "--server", grpc_target, "--model-config-file", str(cfg)])
        assert res.exit_code == 0, res.output
        from tfsctl.client.rpc import get_model_status

        def other_states() -> list[tuple[int, str]]:
            try:
                return [(v.version, v.state) for v in get_model_status(grpc_target, "other")]
            except ClientError:
                return []

        wait_until(lambda: other_states() == [(4, "AVAILABLE")], 30, "model other version 4 AVAILABLE", every=0.1,
                   explain=other_states)
