"""Start-up as tensorflow_model_server's ServerCore::Create, and the serve flags acting on a real server.

The ports open only after the initial models loaded (or failed every retry); the flags reach the gRPC server,
REST server, Manager and loader; real `tfsctl serve` subprocesses take KServe's command line, --version and an
inapplicable flag.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
from pathlib import Path  # noqa: E402

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from tensorflow_serving.apis import (  # noqa: E402
    get_model_status_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from tfsctl.errors import Unknown  # noqa: E402
from tfsctl.serving.server import ModelServer, ServerOptions  # noqa: E402
from tfsctl.serving.tensors import from_numpy, to_numpy  # noqa: E402
from tfsctl.serving.testing import served  # noqa: E402
from tfsctl.testing import free_port, wait_until, write_toy_model  # noqa: E402

X = np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32)
REPO = Path(__file__).resolve().parents[1]
LOADING = get_model_status_pb2.ModelVersionStatus.LOADING
AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE



def _predict(target: str, name: str = "toy") -> predict_pb2.PredictResponse:
    req = predict_pb2.PredictRequest()
    req.model_spec.name = name
    req.inputs["x"].CopyFrom(from_numpy(X))
    with grpc.insecure_channel(target) as channel:
        return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(req, timeout=20)


def _two_models(tmp_path: Path) -> Path:
    """A config with a good model and one whose only version is garbage (retried, so it stays LOADING a while)."""
    write_toy_model(tmp_path / "toy", 1, scale=2.0)
    bad = tmp_path / "bad" / "1"
    bad.mkdir(parents=True)
    (bad / "saved_model.pb").write_bytes(b"\x08garbage\xff")
    cfg = tmp_path / "models.config"
    cfg.write_text("model_config_list {\n" + "".join(
        f'  config {{ name: "{n}" base_path: "{tmp_path / n}" model_platform: "tensorflow" }}\n'
        for n in ("toy", "bad")) + "}\n")
    return cfg


def _loading(server: ModelServer, name: str) -> bool:
    m = server.manager
    return m is not None and name in m.model_names() and any(v.state == LOADING for v in m.version_states(name))


def test_ports_open_only_after_the_initial_models_loaded_and_a_failed_one_stops_the_start(tmp_path):
    """As ServerCore::Create: no port while the initial models load; a model whose every retry failed makes the
    start fail (tensorflow_model_server exits), naming it, and the port never opens."""
    port = free_port()
    server = ModelServer(ServerOptions(
        port=port, rest_api_port=0, host="127.0.0.1", model_config_file=str(_two_models(tmp_path)),
        max_num_load_retries=3, load_retry_interval_micros=300_000, file_system_poll_wait_seconds=0.1))
    errors: list[BaseException] = []

    def start() -> None:
        try:
            server.start()
        except BaseException as e:  # noqa: BLE001 - reported by the test thread
            errors.append(e)

    t = threading.Thread(target=start)
    t.start()
    try:
        wait_until(lambda: _loading(server, "bad") or not t.is_alive(),
                   60, "model 'bad' to start loading", every=0.01)
        assert t.is_alive(), "start() returned before the initial loads finished"
        with pytest.raises(ConnectionRefusedError):  # no port while a model loads
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        t.join(60)
        assert not t.is_alive()
        (error,) = errors
        assert isinstance(error, Unknown) and "1 model(s) did not become available" in str(error), error
        assert "name: bad" in str(error)
        with pytest.raises(ConnectionRefusedError):  # the start failed: the port never opened
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
    finally:
        t.join(60)
        server.stop(2)


def test_load_timeout_bounds_the_wait(tmp_path):
    server = ModelServer(ServerOptions(
        port=0, rest_api_port=0, host="127.0.0.1", model_config_file=str(_two_models(tmp_path)),
        max_num_load_retries=50, load_retry_interval_micros=200_000, num_load_threads=2))
    try:
        started = time.monotonic()
        server.start(load_timeout=0.5)
        assert time.monotonic() - started < 30
        assert _loading(server, "bad"), "start() should have returned while 'bad' still retries"
        assert server.wait_until_ready(0) is False
        assert server.manager.wait_for_state("toy", 1, {AVAILABLE}, 60), "toy never loaded"
        np.testing.assert_allclose(to_numpy(_predict(f"127.0.0.1:{server.grpc_port}").outputs["y"]), X * 2)
    finally:
        server.stop(2)


def test_flags_reach_the_servers_manager_and_loader(tmp_path):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from tfsctl.core.loader import LoadOptions

    write_toy_model(tmp_path / "toy", 1)
    sock = tmp_path / "grpc.sock"
    server = ModelServer(ServerOptions.from_args([
        f"--port={free_port()}", f"--rest_api_port={free_port()}", "--host=127.0.0.1", "--model_name=toy",
        f"--model_base_path={tmp_path / 'toy'}", "--rest_api_timeout_in_ms=60000", "--rest_api_num_threads=3",
        "--rest_api_enable_cors_support", "--enable_signature_method_name_check",
        "--allow_version_labels_for_unavailable_models=true", "--num_unload_threads=2",
        "--load_retry_interval_micros=250000", f"--grpc_socket_path={sock}", "--saved_model_tags=serve",
        "--enable_grpc_healthcheck_service=false", "--grpc_channel_arguments=grpc.max_connection_age_ms=60000",
        "--tensorflow_session_parallelism=2", "--num_request_iterations_for_warmup=3"]))
    server.start()
    try:
        assert (server.rest.http.timeout_ms, server.rest.http.num_threads, server.rest.enable_cors) == (60000, 3, True)
        assert server.core.enable_signature_method_name_check is True
        m = server.manager
        assert server.server_core.options.allow_version_labels_for_unavailable_models and m.num_unload_threads == 2
        assert m.load_retry_interval_seconds == 0.25
        assert m.loader_factory.inner.keywords["options"] == LoadOptions(
            intra_op_parallelism=2, inter_op_parallelism=2, num_request_iterations_for_warmup=3)
        # gRPC on the UNIX socket as well as on TCP
        np.testing.assert_allclose(to_numpy(_predict(f"unix:{sock}").outputs["y"]), X)
        np.testing.assert_allclose(to_numpy(_predict(f"127.0.0.1:{server.grpc_port}").outputs["y"]), X)
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:  # health off: not exported
            with pytest.raises(grpc.RpcError) as info:
                health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        server.stop(2)


def test_port_zero_with_a_socket_path_serves_on_the_socket_only(tmp_path):
    write_toy_model(tmp_path / "toy", 1)
    sock = tmp_path / "only.sock"
    with served(ready_timeout=None, grace=2, model_name="toy", grpc_socket_path=str(sock),
                model_base_path=str(tmp_path / "toy")) as server:
        assert server.grpc_port is None  # TF Serving: --port=0 means no TCP port when a socket is given
        np.testing.assert_allclose(to_numpy(_predict(f"unix:{sock}").outputs["y"]), X)


def test_health_service_on_by_default_with_tf_serving_service_names(tmp_path):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    write_toy_model(tmp_path / "toy", 1)
    with served(ready_timeout=None, grace=2, model_name="toy", model_base_path=str(tmp_path / "toy")) as server:
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for name in ("ModelService", "PredictionService"):
                reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING


# --- real `tfsctl serve` processes --------------------------------------------------------------------------------


def _serve(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "tfsctl", "serve", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)


def _wait_serving(proc: subprocess.Popen, lines: list[str]) -> None:
    def reader() -> None:
        for line in proc.stdout:
            lines.append(line)

    threading.Thread(target=reader, daemon=True).start()
    wait_until(lambda: any("serving gRPC on" in x for x in lines) or proc.poll() is not None,
               60, "the 'serving' line", every=0.01)
    assert proc.poll() is None, "".join(lines)


def _stop(proc: subprocess.Popen, lines: list[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(timeout=60) == 0, "".join(lines)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def test_kserve_command_line_serves_once_the_port_is_open(tmp_path):
    """KServe's TF Serving runtime passes exactly these flags; the first request after the port opens is served."""
    write_toy_model(tmp_path / "models" / "flowers", 1, scale=3.0)
    grpc_port, rest_port = free_port(), free_port()
    proc = _serve(["--model_name=flowers", f"--port={grpc_port}", f"--rest_api_port={rest_port}",
                   f"--model_base_path={tmp_path / 'models' / 'flowers'}", "--rest_api_timeout_in_ms=60000"])
    lines: list[str] = []
    try:
        _wait_serving(proc, lines)
        with urllib.request.urlopen(f"http://127.0.0.1:{rest_port}/v1/models/flowers", timeout=20) as r:
            (status,) = json.loads(r.read())["model_version_status"]
        assert status["state"] == "AVAILABLE"
        np.testing.assert_allclose(to_numpy(_predict(f"127.0.0.1:{grpc_port}", "flowers").outputs["y"]), X * 3)
    finally:
        _stop(proc, lines)


def test_enable_batching_true_and_unix_socket_from_the_command_line(tmp_path):
    write_toy_model(tmp_path / "toy", 1)
    sock = tmp_path / "s.sock"
    proc = _serve(["--port=0", "--rest_api_port=0", "--host=127.0.0.1", "--model_name=toy",
                   f"--model_base_path={tmp_path / 'toy'}", "--enable_batching=true", f"--grpc_socket_path={sock}",
                   "--grpc_channel_arguments=grpc.max_connection_age_ms=60000,grpc.so_reuseaddr=1"])
    lines: list[str] = []
    try:
        _wait_serving(proc, lines)
        wait_until(lambda: re.search(r"batching\W+(on|off)", "".join(lines)), 60, "the banner", every=0.01)
        assert re.search(r"batching\W+on", "".join(lines)), "".join(lines)
        np.testing.assert_allclose(to_numpy(_predict(f"unix:{sock}").outputs["y"]), X)
    finally:
        _stop(proc, lines)


def _run(args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, "-m", "tfsctl", "serve", *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=120)


def test_version_prints_two_lines_and_exits_zero():
    import tensorflow as tf

    res = _run(["--version"])
    assert res.returncode == 0, res.stderr
    assert re.fullmatch(r"TensorFlow ModelServer: \S+\nTensorFlow Library: " + re.escape(tf.__version__) + r"\n",
                        res.stdout), res.stdout


def test_an_inapplicable_flag_is_one_clear_error():
    res = _run(["--model_base_path=/models/m", "--skip_initialize_tpu=true"])
    assert res.returncode == 2 and res.stdout == ""
    (line,) = res.stderr.splitlines()
    assert line.startswith("error: --skip_initialize_tpu=true cannot apply in tfsctl"), res.stderr


def test_sigterm_while_the_initial_models_load_exits_without_opening_ports(tmp_path):
    bad = tmp_path / "bad" / "1"
    bad.mkdir(parents=True)
    (bad / "saved_model.pb").write_bytes(b"\x08garbage\xff")
    proc = _serve(["--port=0", "--host=127.0.0.1", "--model_name=bad", f"--model_base_path={tmp_path / 'bad'}",
                   "--max_num_load_retries=1000", "--load_retry_interval_micros=100000"])
    lines: list[str] = []

    def reader() -> None:
        for line in proc.stdout:
            lines.append(line)

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    try:
        wait_until(lambda: "".join(lines).count("load of model bad version 1 failed") >= 2 or proc.poll() is not None,
                   60, "the load to fail and be retried", every=0.01)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        t.join(5)
    out = "".join(lines)
    assert "received SIGTERM" in out and "server stopped" in out, out
    assert "serving gRPC" not in out, out
