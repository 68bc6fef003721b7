"""ModelServer end to end on 127.0.0.1: hot swap under load, graceful stop, SIGTERM of `tfsctl serve`, TLS, flags."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import re  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc  # noqa: E402

from tfsctl.errors import ConfigError  # noqa: E402
from tfsctl.serving.server import ModelServer, ServerOptions  # noqa: E402
from tfsctl.serving.tensors import from_numpy, to_numpy  # noqa: E402
from tfsctl.serving.testing import served  # noqa: E402
from tfsctl.testing import free_port, wait_until, write_monitoring_config, write_toy_model  # noqa: E402

X = np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32)
REPO = Path(__file__).resolve().parents[1]


def _request(name: str = "toy", x: np.ndarray = X) -> predict_pb2.PredictRequest:
    req = predict_pb2.PredictRequest()
    req.model_spec.name = name
    req.inputs["x"].CopyFrom(from_numpy(x))
    return req


def _stub(port: int, credentials: grpc.ChannelCredentials | None = None, **channel_options):
    target = f"127.0.0.1:{port}"
    options = list(channel_options.items())
    channel = grpc.secure_channel(target, credentials, options) if credentials else grpc.insecure_channel(target)
    return channel, prediction_service_pb2_grpc.PredictionServiceStub(channel)


def _start(tmp_path: Path, **kwargs) -> ModelServer:
    opts = {"port": 0, "rest_api_port": 0, "host": "127.0.0.1", "model_name": "toy",
            "model_base_path": str(tmp_path / "toy"), "file_system_poll_wait_seconds": 0.1}
    opts.update(kwargs)
    server = ModelServer(ServerOptions(**opts))
    server.start()
    return server


def _serve(tmp_path: Path, ready_timeout: float | None = None, **kwargs):  # noqa: ANN202 - a context manager
    """:func:`served` with this file's defaults (model toy under ``tmp_path``, fast polling), stopped with grace 2."""
    return served(ready_timeout=ready_timeout, grace=2, **{
        "model_name": "toy", "model_base_path": str(tmp_path / "toy"), "file_system_poll_wait_seconds": 0.1,
        **kwargs})



def _poll_source_once(server: ModelServer) -> None:
    """One synchronous poll of every base path (the ServerCore's Source)."""
    source = server.server_core.source
    source.poll_once()


def _in_flight(rest_port: int) -> float:
    """The server's tfsctl_grpc_requests_in_flight gauge, read from its Prometheus page."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{rest_port}/monitoring/prometheus/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("tfsctl_grpc_requests_in_flight "):
                return float(line.split()[1])
    return -1.0


# --- hot swap ---------------------------------------------------------------------------------------------------------


def test_hot_swap_under_load_has_no_failures(tmp_path):
    base = tmp_path / "toy"
    write_toy_model(base, 1, scale=1.0)
    server = _start(tmp_path)
    try:
        assert server.wait_until_ready(60)
        channel, stub = _stub(server.grpc_port)
        stop = threading.Event()
        failures: list[str] = []
        seen: list[list[int]] = [[] for _ in range(8)]

        def client(i: int) -> None:
            n = 0
            while not stop.is_set() and n < 5000:
                n += 1
                try:
                    resp = stub.Predict(_request(), timeout=20)
                except grpc.RpcError as e:
                    failures.append(f"{e.code()}: {e.details()}")
                    continue
                version = resp.model_spec.version.value
                y = to_numpy(resp.outputs["y"])
                if not np.allclose(y, X * version):
                    failures.append(f"version {version} answered {y.tolist()}")
                seen[i].append(version)

        def newest_seen() -> int:
            return min((s[-1] if s else 0) for s in seen)

        def reached(version: int) -> bool:
            assert not failures, failures[:3]
            return newest_seen() >= version

        with ThreadPoolExecutor(8) as pool:
            futs = [pool.submit(client, i) for i in range(8)]
            try:
                wait_until(lambda: reached(1), 60, "clients all at version 1", every=0.05)
                write_toy_model(base, 2, scale=2.0)
                wait_until(lambda: reached(2), 60, "clients all at version 2", every=0.05)
                write_toy_model(base, 3, scale=3.0)
                wait_until(lambda: reached(3), 60, "clients all at version 3", every=0.05)
                shutil.rmtree(base / "1")
                for _ in range(3):  # the Source sees version 1 gone from disk (synchronously)
                    _poll_source_once(server)
                tail = [len(s) for s in seen]
                wait_until(lambda: all(len(s) >= t + 5 for s, t in zip(seen, tail, strict=True)) or failures,
                           60, "clients to be served on after version 1 left the disk", every=0.01)
            finally:
                stop.set()
            for f in futs:
                f.result()
        channel.close()
        assert not failures, failures[:5]
        for s in seen:
            assert s == sorted(s), "a client went back to an older version"
            assert s[-1] == 3
        assert all(len(s) > t for s, t in zip(seen, tail, strict=True)), "clients kept being served after removal"
        assert sum(len(s) for s in seen) >= 16
    finally:
        server.stop(5)


# --- graceful stop -----------------------------------------------------------------------------------------------


def _slow_batching_file(tmp_path: Path, timeout_micros: int = 1_000_000) -> Path:
    """Batching that holds each request in the queue ~1 s: requests are in flight when stop begins."""
    path = tmp_path / "batching.config"
    path.write_text(f"max_batch_size {{ value: 64 }}\nbatch_timeout_micros {{ value: {timeout_micros} }}\n"
                    "num_batch_threads { value: 1 }\nmax_enqueued_batches { value: 100 }\n")
    return path


def test_stop_finishes_in_flight_requests_then_refuses(tmp_path):
    write_toy_model(tmp_path / "toy", 1, scale=1.0)
    server = _start(tmp_path, enable_batching=True, batching_parameters_file=str(_slow_batching_file(tmp_path)))
    assert server.wait_until_ready(60)
    channel, stub = _stub(server.grpc_port)
    stub.Predict(_request(), timeout=20)  # connection up
    port = server.grpc_port
    futures = [stub.Predict.future(_request(x=X * i), timeout=30) for i in range(6)]
    wait_until(lambda: server.batcher.pending() == 6,
               60, "the six requests in the batch queue", every=0.01)
    assert not any(f.done() for f in futures), "requests should still wait in the batch queue"
    server.stop(10)
    for i, f in enumerate(futures):
        np.testing.assert_allclose(to_numpy(f.result().outputs["y"]), X * i)
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(_request(), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    channel.close()
    server.stop(1)  # idempotent
    with pytest.raises(ConnectionRefusedError):  # nothing listens on the port any more
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_sigterm_during_load_completes_in_flight_and_exits_zero(tmp_path):
    base = tmp_path / "toy"
    write_toy_model(base, 1, scale=1.0)
    batching = _slow_batching_file(tmp_path, timeout_micros=2_000_000)
    rest_port = free_port()
    proc, lines, port_box, t = _serve_subprocess(
        ["--port", "0", f"--rest_api_port={rest_port}", "--host", "127.0.0.1", "--model_name", "toy",
         "--model-base-path", str(base), "--enable-batching", "--batching_parameters_file", str(batching),
         "--monitoring_config_file", str(write_monitoring_config(tmp_path))])  # _in_flight reads the page
    try:
        def reported() -> bool:
            assert proc.poll() is None, "".join(lines)
            return bool(port_box)

        wait_until(reported, 90, "the server to report its port", every=0.1, explain=lambda: "".join(lines))
        channel, stub = _stub(port_box[0])

        def answers() -> bool:  # ready: the model answers
            try:
                stub.Predict(_request(), timeout=20)
                return True
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.UNAVAILABLE, e.details()
                return False

        wait_until(answers, 90, "the model to become available", every=0.1)
        futures = [stub.Predict.future(_request(x=X * i), timeout=30) for i in range(8)]
        wait_until(lambda: _in_flight(rest_port) == 8,
                   60, "the eight requests to reach the server", every=0.01)
        assert not any(f.done() for f in futures), "requests should still wait in the batch queue"
        proc.send_signal(signal.SIGTERM)
        for i, f in enumerate(futures):
            np.testing.assert_allclose(to_numpy(f.result().outputs["y"]), X * i)
        assert proc.wait(timeout=60) == 0, "".join(lines)
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(_request(), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        channel.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        t.join(5)
    out = "".join(lines)
    assert "tfsctl serve" in out and "received SIGTERM" in out, out


# --- TLS ---------------------------------------------------------------------------------------------------------


def _self_signed(tmp_path: Path, name: str, cn: str) -> tuple[bytes, bytes]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not installed")
    key, cert = tmp_path / f"{name}.key", tmp_path / f"{name}.crt"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", f"/CN={cn}", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )
    return key.read_bytes(), cert.read_bytes()


def _ssl_config(tmp_path: Path, key: bytes, cert: bytes, ca: bytes = b"", verify: bool = False) -> Path:
    def q(b: bytes) -> str:
        return b.decode().replace("\n", "\\n")

    text = f'server_key: "{q(key)}"\nserver_cert: "{q(cert)}"\n'
    if ca:
        text += f'custom_ca: "{q(ca)}"\nclient_verify: {"true" if verify else "false"}\n'
    path = tmp_path / "ssl.config"
    path.write_text(text)
    return path


def test_tls_and_mutual_tls(tmp_path):
    write_toy_model(tmp_path / "toy", 1, scale=1.0)
    key, cert = _self_signed(tmp_path, "server", "localhost")
    ckey, ccert = _self_signed(tmp_path, "client", "tfsctl-test-client")
    with _serve(tmp_path, ssl_config_file=str(_ssl_config(tmp_path, key, cert, ca=ccert, verify=True)),
                ready_timeout=60) as server:
        port = server.grpc_port
        good = grpc.ssl_channel_credentials(root_certificates=cert, private_key=ckey, certificate_chain=ccert)
        channel, stub = _stub(port, good)
        np.testing.assert_allclose(to_numpy(stub.Predict(_request(), timeout=20).outputs["y"]), X)
        channel.close()
        for creds in (None, grpc.ssl_channel_credentials(root_certificates=cert)):  # plaintext; TLS without cert
            channel, stub = _stub(port, creds)
            with pytest.raises(grpc.RpcError) as info:
                stub.Predict(_request(), timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            channel.close()


def test_tls_server_only(tmp_path):
    write_toy_model(tmp_path / "toy", 1, scale=1.0)
    key, cert = _self_signed(tmp_path, "server", "localhost")
    with _serve(tmp_path, ssl_config_file=str(_ssl_config(tmp_path, key, cert)), ready_timeout=60) as server:
        channel, stub = _stub(server.grpc_port, grpc.ssl_channel_credentials(root_certificates=cert))
        np.testing.assert_allclose(to_numpy(stub.Predict(_request(), timeout=20).outputs["y"]), X)
        channel.close()
    garbage = b"-----BEGIN CERTIFICATE-----\nnot base64 der\n-----END CERTIFICATE-----\n"
    with pytest.raises(OSError, match="server_cert"):
        _start(tmp_path, ssl_config_file=str(_ssl_config(tmp_path, key, garbage)))


# --- config file polling, flags ------------------------------------------------------------------------------------


def test_model_config_file_is_polled(tmp_path, caplog):
    import logging

    caplog.set_level(logging.ERROR, logger="tfsctl.serving.server")
    a, b = tmp_path / "a", tmp_path / "b"
    write_toy_model(a, 1, scale=1.0)
    write_toy_model(b, 1, scale=4.0)
    cfg = tmp_path / "models.config"

    def write(*names: str) -> None:
        body = "".join(f'config {{ name: "{n}" base_path: "{tmp_path / n}" model_platform: "tensorflow" }}\n'
                       for n in names)
        tmp = cfg.with_suffix(".tmp")
        tmp.write_text(f"model_config_list {{\n{body}}}\n")
        tmp.replace(cfg)

    write("a")
    with _serve(tmp_path, model_base_path="", model_config_file=str(cfg),
                model_config_file_poll_wait_seconds=0.1, ready_timeout=60) as server:
        channel, stub = _stub(server.grpc_port)
        write("a", "b")
        def b_served() -> bool:
            try:
                np.testing.assert_allclose(to_numpy(stub.Predict(_request("b"), timeout=20).outputs["y"]), X * 4)
                return True
            except grpc.RpcError as e:
                assert e.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE), e.details()
                return False

        wait_until(b_served, 60, "model b to serve after the config file changed", every=0.1)
        cfg.write_text("model_config_list { config { name: ")  # broken: logged, the old config stays
        wait_until(lambda: any("not applied" in r.getMessage() for r in caplog.records),
                   60, "the broken config file to be read", every=0.01)
        np.testing.assert_allclose(to_numpy(stub.Predict(_request("a"), timeout=20).outputs["y"]), X)
        channel.close()


def test_bad_options_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="model_base_path"):
        ModelServer(ServerOptions(port=0, rest_api_port=0)).start()
    with pytest.raises(ConfigError, match="rest_api_port"):
        ModelServer(ServerOptions(rest_api_port=70000, model_base_path=str(tmp_path))).start()
    with pytest.raises(ConfigError):
        ModelServer(ServerOptions(port=0, rest_api_port=0, model_config_file=str(tmp_path / "missing.config"))).start()


def test_port_in_use_is_a_clear_error(tmp_path):
    write_toy_model(tmp_path / "toy", 1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(OSError, match=f"cannot bind gRPC port 127.0.0.1:{port}"):
            _start(tmp_path, port=port)


# --- REST beside gRPC ---------------------------------------------------------------------------------------------


def test_rest_and_grpc_share_one_manager_and_monitoring_config(tmp_path):
    import json
    import urllib.error
    import urllib.request

    write_toy_model(tmp_path / "toy", 1, scale=2.0)
    monitoring = write_monitoring_config(tmp_path, "/metrics")
    with _serve(tmp_path, rest_api_port=free_port(), monitoring_config_file=str(monitoring),
                ready_timeout=60) as server:
        rest = f"http://127.0.0.1:{server.rest_port}"
        body = json.dumps({"instances": X.tolist()}).encode()
        predict = urllib.request.Request(f"{rest}/v1/models/toy:predict", data=body)
        with urllib.request.urlopen(predict, timeout=20) as r:
            np.testing.assert_allclose(json.loads(r.read())["predictions"], X * 2)
        channel, stub = _stub(server.grpc_port)
        np.testing.assert_allclose(to_numpy(stub.Predict(_request(), timeout=20).outputs["y"]), X * 2)
        channel.close()
        with urllib.request.urlopen(f"{rest}/metrics", timeout=20) as r:
            text = r.read().decode()
        assert 'API="Predict",entrypoint="GRPC"' in text and 'model_name="toy"' in text
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"{rest}/monitoring/prometheus/metrics", timeout=20)
        assert info.value.code == 404
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{rest}/v1/models/toy", timeout=5)


def _metric_samples(port: int, path: str = "/monitoring/prometheus/metrics") -> dict[tuple[str, tuple], float]:
    """GET the Prometheus page and parse it (proves valid exposition) into {(sample, sorted labels): value}."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=20) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_batching_queue_full_over_grpc_and_metrics_page(tmp_path):
    """gRPC with --enable-batching: a full queue answers UNAVAILABLE at once (TF Serving's batch scheduler), the queued
    request still gets its answer; the metrics page (monitoring config with no path: the default path) shows requests
    by status, batch sizes, queue waits, loads and unloads."""
    write_toy_model(tmp_path / "toy", 1, scale=3.0)
    params = tmp_path / "batching.config"
    params.write_text("max_batch_size { value: 4 }\nbatch_timeout_micros { value: 3000000 }\n"
                      "max_enqueued_batches { value: 1 }\nnum_batch_threads { value: 1 }\n")
    with _serve(tmp_path, rest_api_port=free_port(), enable_batching=True, batching_parameters_file=str(params),
                monitoring_config_file=str(write_monitoring_config(tmp_path)), ready_timeout=60) as server:
        channel, stub = _stub(server.grpc_port)
        waiting = stub.Predict.future(_request(), timeout=30)  # one row sits in the open batch for 3 s
        wait_until(lambda: server.batcher.pending() == 1, 20, "the first request in the batch queue", every=0.01)
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(_request(x=np.ones((4, 4), np.float32)), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "full" in info.value.details()
        np.testing.assert_allclose(to_numpy(waiting.result(30).outputs["y"]), X * 3)
        np.testing.assert_allclose(to_numpy(stub.Predict(_request(), timeout=30).outputs["y"]), X * 3)
        channel.close()
        write_toy_model(tmp_path / "toy", 2, scale=1.0)  # latest-1 policy: loads 2, then unloads 1
        from tensorflow_serving.apis.get_model_status_pb2 import ModelVersionStatus

        assert server.manager.wait_for_state("toy", 2, {ModelVersionStatus.AVAILABLE}, 60), "version 2"
        assert server.manager.wait_for_state("toy", 1, {ModelVersionStatus.END}, 60), "version 1"
        assert {v.version: v.state for v in server.manager.version_states("toy")} == {
            1: ModelVersionStatus.END, 2: ModelVersionStatus.AVAILABLE}

        s = _metric_samples(server.rest_port)  # enabled with no path: TF Serving's default path
        req = (":tensorflow:serving:request_count_total", (("model_name", "toy"),))  # as the parser names it
        assert s[(req[0], (*req[1], ("status", "OK")))] == 2
        assert s[(req[0], (*req[1], ("status", "UNAVAILABLE")))] == 1
        toy = (("model_name", "toy"),)
        assert s[("tfsctl_batch_size_count", toy)] == 2 and s[("tfsctl_batch_size_sum", toy)] == 2
        assert s[("tfsctl_batch_queue_latency_seconds_count", toy)] == 2
        assert s[("tfsctl_batch_queue_latency_seconds_sum", toy)] >= 2.0  # the first row waited ~3 s
        for event, count in (("load", 2), ("unload", 1)):
            labels = (("event", event), ("model_name", "toy"))
            assert s[("tfsctl_model_events_total", labels)] == count
            assert s[("tfsctl_model_event_seconds_count", labels)] == count
        lat = (("API", "Predict"), ("entrypoint", "GRPC"), ("model_name", "toy"))
        assert s[(":tensorflow:serving:request_latency_count", lat)] == 2  # TF Serving: successful requests only
        assert s[(":tensorflow:serving:batching_session:processed_batch_size_count", ())] == 2


def test_corrupt_version_and_vanished_base_path_over_a_real_server(tmp_path, caplog):
    """Garbage saved_model.pb: never AVAILABLE, gRPC and REST status carry the error, version 1 keeps serving,
    retries stop at 1 + max_num_load_retries; then the base path vanishes and version 1 still serves."""
    import json
    import logging
    import urllib.request

    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    caplog.set_level(logging.WARNING, logger="tfsctl.core.manager")
    base = tmp_path / "toy"
    write_toy_model(base, 1, scale=1.0)
    with _serve(tmp_path, rest_api_port=free_port(), max_num_load_retries=2, load_retry_interval_seconds=0.05,
                ready_timeout=60) as server:
        bad = base / "2"
        bad.mkdir()
        (bad / "saved_model.pb").write_bytes(b"\x08garbage\xff\xff")
        channel, stub = _stub(server.grpc_port)
        models = model_service_pb2_grpc.ModelServiceStub(channel)
        req = get_model_status_pb2.GetModelStatusRequest()
        req.model_spec.name = "toy"
        assert server.manager.wait_for_state("toy", 2, {get_model_status_pb2.ModelVersionStatus.END}, 30), (
            server.manager.version_states("toy"))
        by_version = {s.version: s for s in models.GetModelStatus(req, timeout=10).model_version_status}
        assert by_version[1].state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
        assert by_version[2].status.error_code != 0 and "version 2" in by_version[2].status.error_message
        with urllib.request.urlopen(f"http://127.0.0.1:{server.rest_port}/v1/models/toy/versions/2", timeout=20) as r:
            (rest_v2,) = json.loads(r.read())["model_version_status"]
        assert rest_v2["state"] == "END" and "version 2" in rest_v2["status"]["error_message"]
        resp = stub.Predict(_request(), timeout=20)
        assert resp.model_spec.version.value == 1 and np.allclose(to_numpy(resp.outputs["y"]), X)
        failures = lambda: sum("load of model toy version 2 failed" in r.getMessage() for r in caplog.records)  # noqa: E731
        for _ in range(10):  # ten more polls of the unchanged corrupt directory: no further attempts
            _poll_source_once(server)
        states = {v.version: v.state for v in server.manager.version_states("toy")}
        assert states[2] == get_model_status_pb2.ModelVersionStatus.END, states  # a new attempt would be START
        assert failures() == 3  # first try + max_num_load_retries
        assert server.metrics.registry.get_sample_value(
            "tfsctl_model_events_total", {"model_name": "toy", "event": "load_error"}) == 1

        shutil.rmtree(base)  # the whole base path vanishes
        for _ in range(3):
            _poll_source_once(server)
        assert [(v.version, v.state) for v in server.manager.version_states("toy") if v.version == 1] == [
            (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE)]
        resp = stub.Predict(_request(), timeout=20)
        assert resp.model_spec.version.value == 1 and np.allclose(to_numpy(resp.outputs["y"]), X)
        with urllib.request.urlopen(f"http://127.0.0.1:{server.rest_port}/v1/health/ready", timeout=20) as r:
            assert r.status == 200
        channel.close()


@pytest.mark.parametrize("monitoring", ["none", "disabled", "custom path"])
def test_metrics_page_only_under_a_monitoring_config_that_enables_it(tmp_path, monitoring):
    """TF Serving (http_server.cc) registers the Prometheus handler only when prometheus_config.enable is set;
    otherwise its path reaches the REST dispatcher like any unknown route: nothing the flag off would not show."""
    import json
    import urllib.error
    import urllib.request

    write_toy_model(tmp_path / "toy", 1)
    kwargs = {}
    if monitoring != "none":
        config = write_monitoring_config(tmp_path, "/custom/metrics", enable=monitoring == "custom path")
        kwargs["monitoring_config_file"] = str(config)
    server = _start(tmp_path, rest_api_port=free_port(), **kwargs)
    rest = f"http://127.0.0.1:{server.rest_port}"
    try:
        assert server.wait_until_ready(60)
        with urllib.request.urlopen(f"{rest}/v1/health/ready", timeout=20) as r:
            assert r.status == 200
        unknown = "/no/such/route"
        absent = [unknown, "/monitoring/prometheus/metrics"] + (["/custom/metrics"] if monitoring != "custom path"
                                                                  else [])
        for path in absent:
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(f"{rest}{path}", timeout=20)
            assert info.value.code == 404
            assert json.loads(info.value.read()) == {"error": f"Not found: GET {path}"}
        if monitoring == "custom path":
            with urllib.request.urlopen(f"{rest}/custom/metrics", timeout=20) as r:
                assert r.status == 200 and ":tensorflow:serving:request_count" in r.read().decode()
    finally:
        server.stop(2)


def test_health_not_serving_until_a_version_loads(tmp_path):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    (tmp_path / "toy").mkdir()
    with _serve(tmp_path, ready_timeout=None) as server:
        channel, stub = _stub(server.grpc_port)
        health = health_pb2_grpc.HealthStub(channel)
        not_serving, serving = health_pb2.HealthCheckResponse.NOT_SERVING, health_pb2.HealthCheckResponse.SERVING

        def status(service: str) -> int:
            return health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status

        # "toy" is unknown to the health service until the server's health update has looked at the model:
        # waiting for it proves an update ran over the empty base path and computed NOT_SERVING.
        def toy_known() -> bool:
            try:
                status("toy")
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.NOT_FOUND, e.details()
                return False
            return True

        wait_until(toy_known, 60, "the health service to know model toy", every=0.01)
        assert status("") == not_serving and status("toy") == not_serving
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(_request(), timeout=5)
        # TF Serving answers NOT_FOUND for a configured model with no version yet; tfsctl said UNAVAILABLE
        assert info.value.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE)
        assert "toy" in info.value.details()
        write_toy_model(tmp_path / "toy", 1)
        wait_until(lambda: status("") == serving, 60, "health to become SERVING", every=0.05)
        assert status("toy") == serving
        np.testing.assert_allclose(to_numpy(stub.Predict(_request(), timeout=20).outputs["y"]), X)
        channel.close()


def test_cli_serve_reports_bad_flags():
    from typer.testing import CliRunner

    from tfsctl.cli import app

    result = CliRunner().invoke(app, ["serve", "--port", "0", "--rest_api_port", "0"])
    assert result.exit_code == 1
    assert "no models to serve" in result.output
    result = CliRunner().invoke(app, ["serve", "--rest-api-port", "99999", "--model-base-path", "/tmp"])
    assert result.exit_code == 2 and "--rest_api_port must be in 0..65535" in result.output


def test_default_message_limit_carries_a_1080p_float_image(tmp_path):
    write_toy_model(tmp_path / "toy", 1, scale=1.0)
    with _serve(tmp_path, ready_timeout=60) as server:  # default --grpc-max-message-bytes
        image = np.random.default_rng(0).random((1080 * 1920 * 3 // 4, 4), dtype=np.float32)  # 1080p RGB floats
        big = 64 * 1024 * 1024
        channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}",
                                        [("grpc.max_receive_message_length", big)])
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        y = to_numpy(stub.Predict(_request(x=image), timeout=60).outputs["y"])
        assert y.shape == image.shape and np.array_equal(y, image)
        channel.close()


def _serve_subprocess(args: list[str]) -> tuple[subprocess.Popen, list[str], list[int], threading.Thread]:
    """`tfsctl serve ARGS` in a subprocess; its output lines and (once logged) its gRPC port, read by a thread."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "tfsctl", "serve", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
    lines: list[str] = []
    port_box: list[int] = []

    def reader() -> None:
        for line in proc.stdout:
            lines.append(line)
            m = re.search(r"serving gRPC on \S+ \(port (\d+)\)", line)
            if m:
                port_box.append(int(m.group(1)))

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    return proc, lines, port_box, t


def test_rpcs_around_sigterm_get_ok_or_unavailable_never_cancelled(tmp_path):
    """Issue 11 item 8: many clients keep calling while `tfsctl serve` gets SIGTERM; every answer is OK (served,
    or in flight and finished) or UNAVAILABLE (refused while draining, or nothing listening) - never CANCELLED."""
    write_toy_model(tmp_path / "toy", 1)
    proc, lines, port_box, reader = _serve_subprocess(
        ["--port=0", "--rest_api_port=0", "--host=127.0.0.1", "--model_name=toy",
         f"--model_base_path={tmp_path / 'toy'}"])
    codes: list[grpc.StatusCode] = []
    details: list[str] = []
    t0: list[float] = []
    stop = threading.Event()
    try:
        wait_until(lambda: bool(port_box) or proc.poll() is not None, 60, "the server to report its port", every=0.01)
        assert port_box, "".join(lines)
        channels = [grpc.insecure_channel(f"127.0.0.1:{port_box[0]}") for _ in range(4)]

        def client(i: int) -> None:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channels[i % len(channels)])
            refused_after_exit = 0
            while not stop.is_set() and refused_after_exit < 3:
                try:
                    stub.Predict(_request(), timeout=20)
                    codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as e:
                    codes.append(e.code())
                    if e.code() == grpc.StatusCode.CANCELLED:
                        details.append(f"{time.monotonic() - t0[0]:.3f} {e.details()} {e.debug_error_string()}")
                    if proc.poll() is not None:
                        refused_after_exit += 1

        with ThreadPoolExecutor(12) as pool:
            futs = [pool.submit(client, i) for i in range(12)]
            wait_until(lambda: codes.count(grpc.StatusCode.OK) >= 300, 60, "the clients to be served", every=0.01)
            t0.append(time.monotonic())
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0, "".join(lines)
            for f in futs:
                f.result(timeout=60)
        for ch in channels:
            ch.close()
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        reader.join(5)
    seen = {c: codes.count(c) for c in set(codes)}
    assert set(seen) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, (seen, details[:3], "".join(lines[-8:]))
    assert seen.get(grpc.StatusCode.UNAVAILABLE, 0) > 0 and seen[grpc.StatusCode.OK] >= 300, seen


def test_a_burst_of_sigterms_still_stops_cleanly(tmp_path):
    """A supervisor may re-send SIGTERM many times while a server stops: each repeat is taken as the same request
    (no handler nesting once per signal until RecursionError), and the server exits 0 after a graceful stop."""
    write_toy_model(tmp_path / "toy", 1)
    proc, lines, port_box, reader = _serve_subprocess(
        ["--port=0", "--host=127.0.0.1", "--model_name=toy", f"--model_base_path={tmp_path / 'toy'}"])
    try:
        wait_until(lambda: bool(port_box) or proc.poll() is not None, 60, "the server to report its port", every=0.01)
        assert proc.poll() is None, "".join(lines)
        for _ in range(20000):  # far faster than a handler that logs can return
            try:
                os.kill(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                break
        assert proc.wait(60) == 0, "".join(lines)[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(10)
    out = "".join(lines)
    assert "server stopped" in out and "RecursionError" not in out and "recursion" not in out, out[-3000:]
    assert out.count("received SIGTERM") == 1, out[-3000:]
