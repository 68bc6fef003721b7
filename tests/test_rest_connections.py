"""The REST server against hostile and slow clients, hot swaps and its flags, on 127.0.0.1 with real models.

A ``fifo`` model (``tf.io.read_file`` of a path the request names) blocks inside the model call until the test
writes to that named pipe: requests are held in flight deterministically, without sleeps or busy loops.
"""

from __future__ import annotations

import errno
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tensorflow_serving.apis import model_pb2  # noqa: E402
from tensorflow_serving.apis.get_model_status_pb2 import ModelVersionStatus  # noqa: E402

from tfsctl.serving.rest_api import RestServer  # noqa: E402
from tfsctl.serving.testing import served as serve_model  # noqa: E402
from tfsctl.testing import http_call, wait_until, write_toy_model  # noqa: E402

X = [[1.0, 2.0, 3.0, 4.0]]
AVAILABLE = {ModelVersionStatus.AVAILABLE}
END = {ModelVersionStatus.END}


def _write_fifo_model(path: Path) -> None:
    import tensorflow as tf

    class Fifo(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([], tf.string, name="path")])
        def read(self, path):
            return {"data": tf.io.read_file(path)}

    m = Fifo()
    tf.saved_model.save(m, str(path), signatures={"serving_default": m.read})



def release(fifo: Path, data: bytes = b"done", timeout: float = 30.0) -> None:
    """Open the pipe for writing once the model is blocked opening it for reading (ENXIO until then)."""
    def opened() -> tuple[int] | None:
        try:
            return (os.open(fifo, os.O_WRONLY | os.O_NONBLOCK),)
        except OSError as e:
            if e.errno != errno.ENXIO:
                raise
            return None

    (fd,) = wait_until(opened, timeout, f"the model to open {fifo} for reading", every=0.01)
    try:  # read_file sizes a pipe at 0 bytes: it may return (and close) before the write; opening released it
        os.write(fd, data)
    except BrokenPipeError:
        pass
    os.close(fd)



@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("conn")
    write_toy_model(tmp / "toy", 1, scale=1.0)
    _write_fifo_model(tmp / "fifo" / "1")
    config = tmp / "models.config"
    config.write_text(f'model_config_list {{\n config {{ name: "toy" base_path: "{tmp / "toy"}" '
                      f'model_platform: "tensorflow" }}\n config {{ name: "fifo" base_path: "{tmp / "fifo"}" '
                      f'model_platform: "tensorflow" }}\n}}\n')
    with serve_model(model_config_file=str(config), file_system_poll_wait_seconds=0.05) as srv:
        srv.base = tmp / "toy"
        srv.tmp = tmp
        yield srv


@pytest.fixture
def rest(served):
    """Start a RestServer over the module's core with the options a test gives; stopped afterwards."""
    started: list[RestServer] = []

    def make(**kwargs) -> RestServer:
        server = RestServer(served.core, served.metrics, "127.0.0.1", 0, **kwargs)
        server.start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


def _closed_by_server(sock: socket.socket, timeout: float = 10.0) -> bool:
    sock.settimeout(timeout)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


# --- hostile clients --------------------------------------------------------------------------------------------------


def test_idle_and_slow_header_connections_are_closed(rest):
    server = rest(header_timeout=0.5, keepalive_timeout=60)
    idle = socket.create_connection(("127.0.0.1", server.port))
    slow = socket.create_connection(("127.0.0.1", server.port))
    slow.sendall(b"GET /v1/health/live HTTP/1.1\r\nHost: x\r\n")
    start = time.monotonic()
    closed = {"slow": False}

    def trickle() -> None:  # a slowloris client: one header line every 100 ms, never the blank line
        try:
            for i in range(200):
                slow.sendall(f"X-Slow-{i}: y\r\n".encode())
                time.sleep(0.1)
        except OSError:
            closed["slow"] = True

    t = threading.Thread(target=trickle)
    t.start()
    assert _closed_by_server(idle)
    t.join(30)
    assert closed["slow"] and time.monotonic() - start < 10
    assert server.http.header_timeouts >= 2
    idle.close()
    slow.close()
    assert http_call(server.port, "GET", "/v1/health/live")[0] == 200  # still serving


def test_keepalive_connection_is_closed_when_idle(rest):
    server = rest(header_timeout=60, keepalive_timeout=0.5)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("GET", "/v1/health/live")
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("Connection", "keep-alive").lower() == "keep-alive"
    resp.read()
    assert _closed_by_server(conn.sock)
    conn.close()


def test_a_stalled_body_gets_408(rest):
    server = rest(body_timeout=0.5)
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"POST /v1/models/toy:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"instan")
        s.settimeout(10)
        assert s.recv(65536).startswith(b"HTTP/1.1 408")


def test_a_slow_body_that_keeps_coming_is_read_past_the_body_timeout(rest):
    """``body_timeout`` bounds the time without progress, not the whole upload: a body whose pieces come every
    0.2 s for longer than 0.5 s in all is read and answered."""
    server = rest(body_timeout=0.5)
    body = json.dumps({"instances": X}).encode()
    pieces = [body[i:i + 4] for i in range(0, len(body), 4)][:8]
    pieces.append(body[4 * len(pieces):])
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"POST /v1/models/toy:predict HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body))
        started = time.monotonic()
        for piece in pieces:
            s.sendall(piece)
            time.sleep(0.2)  # pacing the upload, not waiting for the server
        assert time.monotonic() - started > 1.5
        s.settimeout(10)
        assert s.recv(65536).startswith(b"HTTP/1.1 200")


def test_large_bodies_in_flight_are_bounded_and_small_ones_pass(rest):
    """One large body holds the in-flight body budget while it uploads: a second large one waits for room and gets
    503 when none comes; small bodies pass meanwhile; once the first is done, a large body is served again."""
    server = rest(max_inflight_body_bytes=500_000, body_timeout=4.0, timeout_ms=500)
    large = json.dumps({"instances": X * 20_000}).encode()
    assert 256 * 1024 < len(large) <= 500_000
    stalled = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    stalled.sendall(b"POST /v1/models/toy:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n" % len(large) + large[:1000])  # the rest never comes
    wait_until(lambda: server.http.inflight_body_bytes == len(large), 30, "the large body counted in flight",
               every=0.01)
    status, _, reply = http_call(server.port, "POST", "/v1/models/toy:predict", large)
    assert status == 503 and b"busy with other large request bodies" in reply, reply
    status, _, reply = http_call(server.port, "POST", "/v1/models/toy:predict", json.dumps({"instances": X}))
    assert status == 200, reply
    stalled.settimeout(10)
    assert stalled.recv(65536).startswith(b"HTTP/1.1 408")  # the stalled body times out; its room is given back
    stalled.close()
    wait_until(lambda: server.http.inflight_body_bytes == 0, 30, "the body budget to be released", every=0.01)
    status, _, reply = http_call(server.port, "POST", "/v1/models/toy:predict", large)
    assert status == 200 and len(json.loads(reply)["predictions"]) == 20_000


def test_connections_beyond_the_cap_get_503_at_once(rest):
    server = rest(max_connections=3, header_timeout=60)
    held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(3)]
    wait_until(lambda: server.http.open_connections == 3, 30, "3 open connections", every=0.01)
    with socket.create_connection(("127.0.0.1", server.port)) as extra:
        extra.settimeout(10)
        reply = extra.recv(65536)
        assert reply.startswith(b"HTTP/1.1 503") and b"Too many open connections" in reply
        assert _closed_by_server(extra)
    assert server.http.refused_connections == 1
    held.pop().close()
    wait_until(lambda: server.http.open_connections == 2, 30, "2 open connections", every=0.01)
    status, _, body = http_call(server.port, "POST", "/v1/models/toy:predict", json.dumps({"instances": X}))
    assert status == 200 and json.loads(body) == {"predictions": X}
    for s in held:
        s.close()


_EMFILE_SERVER = textwrap.dedent("""
    import json, logging, os, resource, sys
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
    from tfsctl.serving.rest_api import RestServer
    from tfsctl.testing import wait_until
    rest = RestServer(None, None, "127.0.0.1", 0, metrics_path=None, header_timeout=120, max_connections=10000)
    rest.start()
    spare = 16
    resource.setrlimit(resource.RLIMIT_NOFILE,
                       (len(os.listdir("/proc/self/fd")) + spare, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    print(rest.port, spare, flush=True)
    try:
        wait_until(lambda: rest.http.accept_failures >= 2, 60, "accept() to fail twice", every=0.05)
        print("starved", rest.http.accept_failures, flush=True)
    except AssertionError as e:
        print("not starved:", e, flush=True)
    sys.stdin.readline()
    print(json.dumps({"failures": rest.http.accept_failures, "open": rest.http.open_connections}), flush=True)
    rest.stop()
""")


def test_running_out_of_file_descriptors_is_logged_once(tmp_path):
    script = tmp_path / "emfile_server.py"
    script.write_text(_EMFILE_SERVER)
    proc = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    socks: list[socket.socket] = []
    try:
        port, spare = (int(v) for v in proc.stdout.readline().split())
        socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(spare + 30)]
        starved = proc.stdout.readline()
        assert starved.startswith("starved"), starved  # accept() failed at least twice (1 s apart)
        for s in socks:
            s.close()
        socks = []
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/v1/health/live")  # served again once descriptors are free
        assert conn.getresponse().status == 200
        conn.close()
        out, err = proc.communicate("done\n", timeout=60)
    finally:
        for s in socks:
            s.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stats = json.loads(out.strip().splitlines()[-1])
    assert stats["failures"] >= 2
    assert err.count("cannot accept connections") == 1, err
    assert "Traceback" not in err, err


# --- flags ------------------------------------------------------------------------------------------------------------


def test_timeout_ms_answers_504_and_the_server_keeps_serving(rest, served, tmp_path):
    server = rest(timeout_ms=300, num_threads=4)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    result: dict = {}
    t = threading.Thread(target=lambda: result.update(r=http_call(
        server.port, "POST", "/v1/models/fifo:predict", json.dumps({"inputs": {"path": str(fifo)}}))))
    t.start()
    t.join(30)
    status, _, body = result["r"]
    assert status == 504 and "Deadline Exceeded" in json.loads(body)["error"]
    release(fifo)  # the model call was still blocked; let it finish
    status, _, body = http_call(server.port, "POST", "/v1/models/toy:predict", json.dumps({"instances": X}))
    assert status == 200
    # Without a timeout the same call waits for the model.
    patient = rest(timeout_ms=0)
    fifo = tmp_path / "pipe2"
    os.mkfifo(fifo)
    t = threading.Thread(target=lambda: result.update(r=http_call(
        patient.port, "POST", "/v1/models/fifo:predict", json.dumps({"inputs": {"path": str(fifo)}}))))
    t.start()
    release(fifo)
    t.join(30)
    status, _, body = result["r"]  # the model's own answer (TF cannot seek a pipe: 400), not the REST timeout
    assert status != 504 and "pipe2" in json.loads(body).get("error", "pipe2"), result["r"]


def test_num_threads_sizes_the_worker_pool(rest):
    assert rest(num_threads=3).http._executor._max_workers == 3
    assert rest(num_threads=0, max_workers=5).http._executor._max_workers == 5


def test_cors_headers_and_preflight(rest):
    cors = {"Access-Control-Allow-Origin": "*", "Access-Control-Allow-Methods": "POST, GET",
            "Access-Control-Allow-Headers": "Content-Type"}
    on, off = rest(enable_cors=True), rest()
    instances = json.dumps({"instances": X})
    for path, method, body in (("/v1/models/toy", "GET", None), ("/v1/models/toy:predict", "POST", instances),
                               ("/v1/models/nope:predict", "POST", instances)):
        _, headers, _ = http_call(on.port, method, path, body)
        assert {k: headers.get(k) for k in cors} == cors
        _, headers, _ = http_call(off.port, method, path, body)
        assert not any(k in headers for k in cors)
    status, headers, body = http_call(on.port, "OPTIONS", "/v1/models/toy:predict",
                                      headers={"Origin": "https://example.com"})
    assert status == 200 and body == b"" and {k: headers.get(k) for k in cors} == cors
    status, headers, body = http_call(on.port, "OPTIONS", "/v1/models/toy:predict")
    assert status == 400 and body == b""  # "Origin header is missing in CORS preflight"
    assert http_call(off.port, "OPTIONS", "/v1/models/toy", headers={"Origin": "http://a"})[0] == 200


# --- one handle per request during hot swaps --------------------------------------------------------------------------


def test_hold_keeps_the_version_through_a_swap(served):
    spec = model_pb2.ModelSpec(name="toy")
    base = served.base
    with served.core.hold(spec) as held:
        version = held.servable.version
        write_toy_model(base, version + 1, scale=float(version + 1))
        shutil.rmtree(base / str(version))
        assert served.manager.wait_for_state("toy", version + 1, AVAILABLE, 60)
        # The manager retires the old version at once, but cannot finish while this request holds it.
        assert served.manager.wait_for_state("toy", version, {ModelVersionStatus.UNLOADING, *END}, 60)
        assert {s.version: s.state for s in served.manager.version_states("toy")}[version] \
            == ModelVersionStatus.UNLOADING
        inputs = {"x": np.array(X, np.float32)}
        resolved, outputs = held.predict(inputs)  # the old version is still loaded: its handle is held
        assert resolved.version.value == version and np.allclose(outputs["y"], np.array(X) * version)
    assert served.manager.wait_for_state("toy", version, END, 60)


def test_hot_swaps_under_rest_load_fail_no_request(rest, served):
    server = rest()
    base = served.base
    stop = threading.Event()
    failures: list = []
    counts = {"ok": 0}
    lock = threading.Lock()

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        while not stop.is_set():
            conn.request("POST", "/v1/models/toy:predict", body=json.dumps({"instances": X}))
            resp = conn.getresponse()
            body = resp.read()
            with lock:
                if resp.status == 200:
                    counts["ok"] += 1
                else:
                    failures.append((resp.status, body))
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for _ in range(6):
            current = max(int(p.name) for p in base.iterdir() if p.name.isdigit())
            write_toy_model(base, current + 1, scale=float(current + 1))
            assert served.manager.wait_for_state("toy", current + 1, AVAILABLE, 60)
            shutil.rmtree(base / str(current))
            assert served.manager.wait_for_state("toy", current, END, 60)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not failures, failures[:3]
    assert counts["ok"] > 0
