"""The access log (--access_log, --log_format) and request ids: one line per request on either wire, the id taken
from x-request-id or generated, and returned to the client."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tfsctl.serving.tensors import from_numpy
from tfsctl.serving.testing import served
from tfsctl.testing import free_port, wait_until, write_toy_model

ROOT = Path(__file__).resolve().parents[1]


def _request(name: str = "toy", rows: int = 1) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.inputs["x"].CopyFrom(from_numpy(np.ones((rows, 4), np.float32)))
    return request


def _lines(path: Path, n: int, timeout: float = 20.0) -> list[str]:
    def read() -> list[str]:
        return path.read_text().splitlines() if path.exists() else []

    wait_until(lambda: len(read()) >= n, timeout, f"{n} lines in {path.name}", every=0.02)
    return read()


def test_text_access_log_and_request_ids_on_both_wires(tmp_path):
    write_toy_model(tmp_path / "toy", 1, scale=2.0)
    log = tmp_path / "access.log"
    with served(rest=True, ready_timeout=None, grace=2, model_name="toy", model_base_path=str(tmp_path / "toy"),
                access_log=str(log)) as server:
        channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        _, call = stub.Predict.with_call(_request(), metadata=(("x-request-id", "abc-123"),), timeout=20)
        assert ("x-request-id", "abc-123") in call.trailing_metadata()
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(_request("ghost"), timeout=20)
        generated = dict(info.value.trailing_metadata())["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", generated)
        channel.close()
        body = json.dumps({"instances": [[1.0, 2.0, 3.0, 4.0]]}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{server.rest_port}/v1/models/toy:predict", data=body,
                                     headers={"x-request-id": "rest-7"})
        with urllib.request.urlopen(req, timeout=20) as r:
            assert r.headers["x-request-id"] == "rest-7"
        with pytest.raises(urllib.error.HTTPError) as http_info:
            urllib.request.urlopen(f"http://127.0.0.1:{server.rest_port}/v1/models/toy/versions/9", timeout=20)
        assert re.fullmatch(r"[0-9a-f]{32}", http_info.value.headers["x-request-id"])
        lines = _lines(log, 4)
    assert len(lines) == 4, lines
    pattern = (r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (\S+) (\S+) (GRPC|REST) (\S+) (\S+) (\S+) (\S+) (\S+) "
               r"in=(\d+) out=(\d+) queue_ms=\S+ batch=\d+ step_ms=(\S+) total_ms=(\S+)$")
    parsed = [re.match(pattern, line) for line in lines]
    assert all(parsed), lines
    grpc_ok, grpc_bad, rest_ok, rest_bad = (m.groups() for m in parsed)
    assert grpc_ok[:8] == ("abc-123", grpc_ok[1], "GRPC", "Predict", "toy", "1", "serving_default", "OK")
    assert grpc_ok[1].startswith("ipv4:127.0.0.1:") or grpc_ok[1].startswith("ipv6:")
    assert int(grpc_ok[8]) > 0 and int(grpc_ok[9]) > 0 and 0 < float(grpc_ok[10]) <= float(grpc_ok[11])
    assert grpc_bad[0] == generated and grpc_bad[3:8] == ("Predict", "ghost", "-", "-", "NOT_FOUND")
    assert rest_ok[:8] == ("rest-7", "127.0.0.1", "REST", "predict", "toy", "1", "serving_default", "OK")
    assert int(rest_ok[8]) == len(body) and int(rest_ok[9]) > 0
    assert rest_bad[2:5] == ("REST", "status", "toy") and rest_bad[7] == "NOT_FOUND"


def test_json_access_log_with_batching_shows_queue_and_batch(tmp_path):
    write_toy_model(tmp_path / "toy", 1, scale=2.0)
    log = tmp_path / "access.jsonl"
    params = tmp_path / "batching.config"
    params.write_text("max_batch_size { value: 8 }\nbatch_timeout_micros { value: 1000 }\n")
    with served(ready_timeout=None, grace=2, model_name="toy", model_base_path=str(tmp_path / "toy"),
                access_log=str(log), log_format="json", enable_batching=True,
                batching_parameters_file=str(params)) as server:
        channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        stub.Predict(_request(rows=3), timeout=20)
        channel.close()
        lines = _lines(log, 1)
    [doc] = [json.loads(line) for line in lines]
    assert set(doc) == {"time", "request_id", "peer", "wire", "api", "model", "version", "signature", "status",
                        "bytes_in", "bytes_out", "queue_ms", "batch_size", "step_ms", "total_ms"}
    assert (doc["wire"], doc["api"], doc["model"], doc["version"], doc["status"]) == ("GRPC", "Predict", "toy", 1, "OK")
    assert doc["batch_size"] >= 3 and doc["queue_ms"] >= 0 and doc["total_ms"] >= doc["step_ms"] > 0


def test_cli_log_format_json_writes_every_log_line_as_json(tmp_path):
    write_toy_model(tmp_path / "toy", 1, scale=2.0)
    grpc_port = free_port()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT))
    err = open(tmp_path / "stderr", "w+")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "tfsctl", "serve", "--host", "127.0.0.1", "--port", str(grpc_port),
         "--model_name", "toy", "--model_base_path", str(tmp_path / "toy"), "--log_format", "json",
         "--access_log", "-"], stdout=subprocess.DEVNULL, stderr=err, env=env)
    try:
        def serving() -> bool:
            text = (tmp_path / "stderr").read_text()
            assert proc.poll() is None, text
            return "serving gRPC on" in text

        wait_until(serving, 120, "the server to log 'serving gRPC on'", every=0.1,
                   explain=lambda: (tmp_path / "stderr").read_text())
        channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
        prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(_request(), timeout=20)
        channel.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        err.close()
    lines = [line for line in (tmp_path / "stderr").read_text().splitlines() if line.strip()]
    ours = [line for line in lines if not re.match(r"^[IWEF]\d{4} |^WARNING: All log messages", line)]  # TF's C++
    docs = [json.loads(line) for line in ours]  # every line of ours is a JSON object
    assert any(d.get("message", "").startswith("serving gRPC on") and d["level"] == "INFO" for d in docs)
    assert any(d.get("api") == "Predict" and d.get("status") == "OK" for d in docs)  # the access log, on stderr
