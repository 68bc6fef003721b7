"""``tfsctl serve --workers 2`` over real processes on 127.0.0.1: one port, consistent answers, clean stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.config import model_server_config_pb2

from tfsctl.serving.tensors import from_numpy, to_numpy
from tfsctl.testing import free_port, wait_until, write_monitoring_config, write_toy_model

X = np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32)
FRESH_CONNECTIONS = 24  # SO_REUSEPORT spreads connections by their source port: both workers answer some


def _config(base: Path, *, with_second: bool) -> model_server_config_pb2.ModelServerConfig:
    config = model_server_config_pb2.ModelServerConfig()
    toy = config.model_config_list.config.add(name="toy", base_path=str(base / "toy"), model_platform="tensorflow")
    assert toy.name == "toy"
    if with_second:
        second = config.model_config_list.config.add(name="second", base_path=str(base / "second"),
                                                     model_platform="tensorflow")
        second.version_labels["stable"] = 1
    return config


def _children(pid: int) -> list[int]:
    """Worker processes of the supervisor ``pid`` (not multiprocessing's resource tracker)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    found = []
    for child in (path.read_text().split() if path.exists() else []):
        try:
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(int(child))
        except OSError:
            continue
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]



def _fresh(port: int, call):
    """``call(channel)`` on a new connection (a new source port, so the kernel may pick the other worker)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        return call(channel)


def _try(call):
    """``call()``, or None while the workers have not bound the port yet."""
    try:
        return call()
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.UNAVAILABLE:
            return None
        raise


def _health(channel) -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status


def _status(channel, name: str) -> list[tuple[int, int]]:
    req = get_model_status_pb2.GetModelStatusRequest()
    req.model_spec.name = name
    reply = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(req, timeout=10)
    return [(v.version, v.state) for v in reply.model_version_status]


def _predict(channel, name: str, label: str = "") -> np.ndarray:
    req = predict_pb2.PredictRequest()
    req.model_spec.name = name
    if label:
        req.model_spec.version_label = label
    req.inputs["x"].CopyFrom(from_numpy(X))
    return to_numpy(prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(req, timeout=30).outputs["y"])


METRICS_PATH = "/workers/metrics"  # the cluster's monitoring config moves the page here


def _metric(rest_port: int, needle: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{rest_port}{METRICS_PATH}", timeout=10) as r:
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(needle))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    base = tmp_path_factory.mktemp("workers")
    write_toy_model(base / "toy", 1, scale=2.0)
    write_toy_model(base / "second", 1, scale=5.0)
    config_file = base / "models.config"
    from google.protobuf import text_format

    config_file.write_text(text_format.MessageToString(_config(base, with_second=False)))
    grpc_port, rest_port = free_port(), free_port()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    log = open(base / "serve.log", "w+")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "tfsctl", "serve", "--workers", "2", "--worker_cpu_affinity",
         "--host", "127.0.0.1", "--port", str(grpc_port),
         "--rest-api-port", str(rest_port), "--model-config-file", str(config_file),
         # the reload below labels a version before it loads: tensorflow_model_server needs this flag for that
         "--allow_version_labels_for_unavailable_models",
         "--monitoring_config_file", str(write_monitoring_config(base, METRICS_PATH))],
        stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_until(lambda: len(_children(proc.pid)) >= 2 or proc.poll() is not None,
                   120, "two worker processes", every=0.1)
        assert proc.poll() is None, (base / "serve.log").read_text()
        yield {"proc": proc, "grpc": grpc_port, "rest": rest_port, "base": base, "log": base / "serve.log"}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        log.close()


def test_workers_share_the_ports_and_answer_consistently_then_stop_on_sigterm(cluster):
    proc, port, rest = cluster["proc"], cluster["grpc"], cluster["rest"]
    workers = _children(proc.pid)
    assert len(workers) == 2, workers
    serving = health_pb2.HealthCheckResponse.SERVING
    # Overall health turns SERVING once every worker has the model (each learns it from the supervisor), and stays.
    wait_until(lambda: {_try(lambda: _fresh(port, _health)) for _ in range(FRESH_CONNECTIONS)} == {serving},
               120, "overall health SERVING on every connection", every=0.1)
    # --worker_cpu_affinity: each worker on one CPU of those allowed, a different one while there are enough.
    allowed = sorted(os.sched_getaffinity(0))
    pinned = [os.sched_getaffinity(pid) for pid in workers]
    assert all(len(cpus) == 1 and cpus <= set(allowed) for cpus in pinned), pinned
    assert len(set().union(*pinned)) == min(2, len(allowed)), pinned

    # A reload received over one connection has been applied by every worker before it is answered.
    request = model_management_pb2.ReloadConfigRequest()
    request.config.CopyFrom(_config(cluster["base"], with_second=True))
    reply = _fresh(port, lambda ch: model_service_pb2_grpc.ModelServiceStub(ch).HandleReloadConfigRequest(
        request, timeout=120))
    assert reply.status.error_code == 0
    available = get_model_status_pb2.ModelVersionStatus.AVAILABLE
    statuses = {tuple(_fresh(port, lambda ch: _status(ch, "second"))) for _ in range(FRESH_CONNECTIONS)}
    assert statuses == {((1, available),)}
    for _ in range(FRESH_CONNECTIONS // 2):  # the label from the reload resolves on every worker
        np.testing.assert_allclose(_fresh(port, lambda ch: _predict(ch, "second", "stable")), X * 5.0)
    # A bad reload is refused with the worker's own typed error, and changes nothing anywhere.
    bad = model_management_pb2.ReloadConfigRequest()
    bad.config.model_config_list.config.add(name="toy", base_path="relative/path", model_platform="tensorflow")
    with pytest.raises(grpc.RpcError) as info:
        _fresh(port, lambda ch: model_service_pb2_grpc.ModelServiceStub(ch).HandleReloadConfigRequest(bad, timeout=60))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "relative" in info.value.details()
    assert {tuple(_fresh(port, lambda ch: _status(ch, "second"))) for _ in range(8)} == {((1, available),)}

    # Metrics: whichever worker serves the page shows the sum over all workers.
    grpc_predicts = ':tensorflow:serving:request_latency_count{model_name="toy",API="Predict",entrypoint="GRPC"}'
    before = _metric(rest, grpc_predicts)
    for _ in range(FRESH_CONNECTIONS):
        np.testing.assert_allclose(_fresh(port, lambda ch: _predict(ch, "toy")), X * 2.0)
    counts = {_metric(rest, grpc_predicts) for _ in range(8)}
    assert counts == {before + FRESH_CONNECTIONS}
    for _ in range(8):  # every worker follows the monitoring config: nothing at TF Serving's default path
        with pytest.raises(urllib.error.HTTPError) as http_info:
            urllib.request.urlopen(f"http://127.0.0.1:{rest}/monitoring/prometheus/metrics", timeout=10)
        assert http_info.value.code == 404

    # A worker that dies is replaced; the new one catches up with the reload, and health waits for it.
    os.kill(workers[0], signal.SIGKILL)
    workers = wait_until(lambda: (lambda now: now if len(now) == 2 and workers[0] not in now else None)(
        _children(proc.pid)), 120, "a replacement worker", every=0.1)
    wait_until(lambda: _try(lambda: _fresh(port, _health)) != serving,
               120, "overall health to drop while a worker restarts", every=0.1)
    wait_until(lambda: {_try(lambda: _fresh(port, _health)) for _ in range(FRESH_CONNECTIONS)} == {serving},
               120, "overall health SERVING again", every=0.1)
    statuses = {tuple(_fresh(port, lambda ch: _status(ch, "second"))) for _ in range(FRESH_CONNECTIONS)}
    assert statuses == {((1, available),)}

    # SIGTERM to the supervisor while a replacement worker is still starting (it takes seconds to import
    # TensorFlow and load): every worker stops, the starting one included, and the supervisor exits 0.
    os.kill(workers[1], signal.SIGKILL)
    workers = wait_until(lambda: (lambda now: now if len(now) == 2 and workers[1] not in now else None)(
        _children(proc.pid)), 120, "a second replacement worker", every=0.1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(90) == 0, cluster["log"].read_text()[-3000:]
    wait_until(lambda: not any(_alive(p) for p in workers), 10, "workers to exit", every=0.1)
    log = cluster["log"].read_text()
    assert "server stopped" in log and log.count("restarting it") == 2, log[-3000:]
    assert "did not stop in time" not in log, log[-3000:]
