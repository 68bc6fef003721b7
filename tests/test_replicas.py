"""Three `tfsctl serve` replicas behind one client-side round-robin gRPC channel with a retry policy.

While a closed-loop load runs, one replica gets SIGTERM and a new version appears in the shared base path: no
request may fail, and every live replica must end up serving the new version.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import urllib.request  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

import grpc  # noqa: E402
import numpy as np  # noqa: E402
from tensorflow_serving.apis import (  # noqa: E402
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from tfsctl.serving.tensors import from_numpy, to_numpy  # noqa: E402
from tfsctl.testing import free_port, wait_until, write_monitoring_config, write_toy_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE
X = np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32)
# UNAVAILABLE (a replica shutting down, or its connection gone) is retried on the next replica of the round robin.
# So is CANCELLED: when a gRPC server stops, calls that reached its gRPC core but were not yet picked up by the
# application are cancelled (seen about once per thousand calls racing a stop, with grpcio's own server too).
# Predict is idempotent, so retrying it is safe.
SERVICE_CONFIG = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [{
        "name": [{"service": "tensorflow.serving.PredictionService"}],
        "retryPolicy": {"maxAttempts": 5, "initialBackoff": "0.05s", "maxBackoff": "0.5s",
                        "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE", "CANCELLED"]},
    }],
}


def _status(port: int) -> dict[int, int]:
    """{version: state} of model toy on one replica ({} while it does not answer)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        req = get_model_status_pb2.GetModelStatusRequest()
        req.model_spec.name = "toy"
        try:
            resp = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(req, timeout=2)
        except grpc.RpcError:
            return {}
    return {s.version: s.state for s in resp.model_version_status}


def _rest_ready(rest_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{rest_port}/v1/health/ready", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _predict_count(rest_port: int) -> float:
    """Successful gRPC Predict calls one replica counted (its Prometheus endpoint)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{rest_port}/monitoring/prometheus/metrics", timeout=5) as r:
        text = r.read().decode()
    pattern = r'^:tensorflow:serving:request_latency_count\{[^}]*API="Predict",entrypoint="GRPC"\} (\S+)$'
    return sum(float(v) for v in re.findall(pattern, text, re.M))


def test_replicas_survive_sigterm_and_move_to_a_new_version(tmp_path):
    staging, base = tmp_path / "staging", tmp_path / "toy"
    write_toy_model(staging, 1, scale=1.0)
    write_toy_model(staging, 2, scale=2.0)
    base.mkdir()
    (staging / "1").rename(base / "1")

    chosen: list[int] = []
    while len(chosen) < 6:  # six distinct ports (the OS may hand out a just-released port twice)
        port = free_port()
        if port not in chosen:
            chosen.append(port)
    ports, rest_ports = chosen[:3], chosen[3:]
    logs = [tmp_path / f"replica{i}.log" for i in range(3)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    monitoring = write_monitoring_config(tmp_path)
    replicas = [
        subprocess.Popen(
            [sys.executable, "-m", "tfsctl", "serve", "--host", "127.0.0.1", f"--port={p}", f"--rest_api_port={r}",
             "--model_name=toy", f"--model_base_path={base}", "--file_system_poll_wait_seconds=0.2",
             f"--monitoring_config_file={monitoring}"],  # _predict_count reads each replica's page
            env=env, stdout=subprocess.DEVNULL, stderr=log.open("w"))
        for p, r, log in zip(ports, rest_ports, logs, strict=True)
    ]
    stop = threading.Event()
    results: Counter = Counter()
    errors: list[str] = []
    lock = threading.Lock()
    phase = ["start"]  # which step of the test a failure happened in, for the assertion message
    try:
        pairs = list(zip(ports, rest_ports, strict=True))  # REST binds after gRPC: wait for both
        wait_until(lambda: all(_status(p).get(1) == AVAILABLE and _rest_ready(r) for p, r in pairs),
              60, "3 replicas serving version 1 over gRPC and REST", every=0.1)

        target = "ipv4:" + ",".join(f"127.0.0.1:{p}" for p in ports)
        channel = grpc.insecure_channel(target, options=[
            ("grpc.lb_policy_name", "round_robin"),
            ("grpc.service_config", json.dumps(SERVICE_CONFIG)),
            ("grpc.enable_retries", 1),
        ])
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "toy"
        request.inputs["x"].CopyFrom(from_numpy(X))

        def client() -> None:
            while not stop.is_set():
                try:
                    resp = stub.Predict(request, timeout=10)
                    y = float(to_numpy(resp.outputs["y"], "y")[0, 0])
                    with lock:
                        results[(resp.model_spec.version.value, y)] += 1
                except grpc.RpcError as e:
                    with lock:
                        errors.append(f"{e.code().name}: {e.details()} (during {phase[0]})")

        threads = [threading.Thread(target=client, daemon=True) for _ in range(4)]
        for t in threads:
            t.start()
        wait_until(lambda: sum(results.values()) >= 100 or errors, 20, "load to run", every=0.1)
        counts = [_predict_count(r) for r in rest_ports]
        assert all(c > 0 for c in counts), counts  # round robin: every replica takes requests

        phase[0] = "SIGTERM of replica 0"
        replicas[0].send_signal(signal.SIGTERM)
        (staging / "2").rename(base / "2")  # atomic, as `tfsctl export` writes a version
        assert replicas[0].wait(timeout=30) == 0  # graceful stop: in-flight requests finished
        phase[0] = "the move to version 2"

        def moved(port: int) -> bool:
            states = _status(port)
            return states.get(2) == AVAILABLE and states.get(1) != AVAILABLE

        wait_until(lambda: all(moved(p) for p in ports[1:]), 30, "live replicas to move to version 2", every=0.1)
        phase[0] = "load on version 2"
        seen = sum(results.values())
        wait_until(lambda: sum(results.values()) >= seen + 100 or errors, 20, "load on the new version", every=0.1)
        phase[0] = "the end of the load"
        stop.set()
        for t in threads:
            t.join(15)
        channel.close()
    except BaseException:
        for i, log in enumerate(logs):
            print(f"--- replica {i} (gRPC {ports[i]}, REST {rest_ports[i]}) ---\n" + log.read_text()[-3000:])
        raise
    finally:
        stop.set()
        for r in replicas:
            if r.poll() is None:
                r.send_signal(signal.SIGTERM)
        for r in replicas:
            try:
                r.wait(timeout=20)
            except subprocess.TimeoutExpired:
                r.kill()
                r.wait()

    assert errors == [], f"{len(errors)} failed requests, first: {errors[:3]}"
    assert set(results) <= {(1, 1.0), (2, 2.0)}  # every answer came from a whole version
    assert results[(2, 2.0)] >= 100, results
    assert all(r.returncode == 0 for r in replicas), [r.returncode for r in replicas]
