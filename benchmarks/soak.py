"""Soak ``tfsctl serve`` on 127.0.0.1: mixed good traffic through version swaps, config reloads and hostile clients.

Starts ``tfsctl serve`` on the toy model (tfsctl.testing) and for ``--seconds`` (default 180) runs, at once:

- good traffic: gRPC Predict and REST predict clients naming no version (so each swap is raced), checked value by
  value (y = x * version);
- version swaps: a new version directory appears, the old one is removed once the new one serves;
- config reloads: HandleReloadConfigRequest adding and removing a second model;
- hostile clients: idle connections, slowloris header senders, a stalled body, bodies declared far over the limit,
  a gRPC message over the limit, garbage bytes.

Prints the server's RSS, threads and open fds over time and a summary. Exits 1 if any good request failed or a
resource kept growing. Not a unit test: bounded in time and to 127.0.0.1.

    PYTHONPATH=$PWD python benchmarks/soak.py --seconds 60
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import grpc  # noqa: E402
from tensorflow_serving.apis import (  # noqa: E402
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.config import model_server_config_pb2  # noqa: E402

from tfsctl.serving.tensors import from_numpy, to_numpy  # noqa: E402
from tfsctl.testing import free_port, write_toy_model  # noqa: E402

HOST = "127.0.0.1"
X = np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)


class Soak:
    def __init__(self, seconds: float, workdir: Path) -> None:
        self.seconds = seconds
        self.dir = workdir
        self.base = workdir / "toy"
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.good = Counter()
        self.failures: list[str] = []
        self.abuse = Counter()
        self.samples: list[tuple[float, float, int, int]] = []
        self.swaps = 0
        self.reloads = 0

    # --- server ---

    def config(self, with_extra: bool) -> model_server_config_pb2.ModelServerConfig:
        cfg = model_server_config_pb2.ModelServerConfig()
        for name in ("toy", "extra") if with_extra else ("toy",):
            c = cfg.model_config_list.config.add(name=name, base_path=str(self.base if name == "toy" else
                                                                         self.dir / "extra"))
            c.model_platform = "tensorflow"
        return cfg

    def start_server(self) -> None:
        write_toy_model(self.base, 1, scale=1.0)
        write_toy_model(self.dir / "extra", 1, scale=5.0)
        cfg_path = self.dir / "models.config"
        from google.protobuf import text_format

        cfg_path.write_text(text_format.MessageToString(self.config(False)))
        self.grpc_port, self.rest_port = free_port(), free_port()
        self.log = open(self.dir / "serve.log", "wb")  # noqa: SIM115 - closed in stop_server
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tfsctl", "serve", f"--port={self.grpc_port}", f"--rest_api_port={self.rest_port}",
             f"--model_config_file={cfg_path}", "--file_system_poll_wait_seconds=0.2", f"--host={HOST}"],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"tfsctl serve exited: {(self.dir / 'serve.log').read_text()[-2000:]}")
            try:
                if self.rest("GET", "/v1/models/toy")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise SystemExit("tfsctl serve did not become ready")

    def stop_server(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()

    def rest(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(HOST, self.rest_port, timeout=30)
        try:
            conn.request(method, path, body=body)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def fail(self, what: str) -> None:
        with self.lock:
            self.failures.append(what)

    # --- good traffic ---

    def grpc_client(self) -> None:
        channel = grpc.insecure_channel(f"{HOST}:{self.grpc_port}")
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "toy"
        request.inputs["x"].CopyFrom(from_numpy(X))
        while not self.stop.is_set():
            try:
                reply = stub.Predict(request, timeout=30)
                version = reply.model_spec.version.value
                if not np.allclose(to_numpy(reply.outputs["y"], "y"), X * version):
                    self.fail(f"gRPC: wrong values from version {version}")
                with self.lock:
                    self.good["grpc"] += 1
            except grpc.RpcError as e:
                self.fail(f"gRPC {e.code().name}: {e.details()}")
        channel.close()

    def rest_client(self) -> None:
        body = json.dumps({"instances": X.tolist()}).encode()
        conn = http.client.HTTPConnection(HOST, self.rest_port, timeout=30)
        while not self.stop.is_set():
            try:
                conn.request("POST", "/v1/models/toy:predict", body=body)
                resp = conn.getresponse()
                reply = resp.read()
                if resp.status != 200:
                    self.fail(f"REST {resp.status}: {reply[:200]!r}")
                    continue
                y = np.array(json.loads(reply)["predictions"], np.float32)
                scale = y[0, 0] / X[0, 0]
                if scale != round(scale) or not np.allclose(y, X * scale):
                    self.fail(f"REST: wrong values {y.tolist()}")
                with self.lock:
                    self.good["rest"] += 1
            except (OSError, http.client.HTTPException) as e:
                self.fail(f"REST connection: {type(e).__name__}: {e}")
                conn.close()
                conn = http.client.HTTPConnection(HOST, self.rest_port, timeout=30)
        conn.close()

    # --- changes ---

    def swapper(self) -> None:
        version = 1
        while not self.stop.wait(4.0):
            write_toy_model(self.base, version + 1, scale=float(version + 1))
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not self.stop.is_set():
                status, body = self.rest("GET", f"/v1/models/toy/versions/{version + 1}")
                if status == 200 and b"AVAILABLE" in body:
                    break
                time.sleep(0.1)
            shutil.rmtree(self.base / str(version))
            version += 1
            self.swaps += 1

    def reloader(self) -> None:
        channel = grpc.insecure_channel(f"{HOST}:{self.grpc_port}")
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        extra = False
        while not self.stop.wait(7.0):
            extra = not extra
            request = model_management_pb2.ReloadConfigRequest(config=self.config(extra))
            try:
                reply = stub.HandleReloadConfigRequest(request, timeout=60)
                if reply.status.error_code != 0:
                    self.fail(f"reload: {reply.status.error_message}")
                self.reloads += 1
            except grpc.RpcError as e:
                self.fail(f"reload {e.code().name}: {e.details()}")
        channel.close()

    # --- hostile clients ---

    def hostile(self) -> None:
        big = grpc.insecure_channel(f"{HOST}:{self.grpc_port}", options=[
            ("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)])
        stub = prediction_service_pb2_grpc.PredictionServiceStub(big)
        idle: list[tuple[float, socket.socket]] = []
        slow: list[socket.socket] = []
        tick = 0
        while not self.stop.wait(1.0):
            tick += 1
            # Idle connections: 50 more every 5 s, dropped by us after 45 s (the server's header timeout is 30 s).
            if tick % 5 == 0:
                for _ in range(50):
                    try:
                        idle.append((time.monotonic(), socket.create_connection((HOST, self.rest_port), timeout=5)))
                    except OSError:
                        self.abuse["idle refused"] += 1
            now = time.monotonic()
            for _opened, s in [p for p in idle if now - p[0] > 45]:
                s.close()
            idle = [p for p in idle if now - p[0] <= 45]
            # Slowloris: 10 connections trickling one header line a second, never finishing.
            while len(slow) < 10:
                try:
                    s = socket.create_connection((HOST, self.rest_port), timeout=5)
                    s.sendall(b"POST /v1/models/toy:predict HTTP/1.1\r\nHost: x\r\n")
                    slow.append(s)
                except OSError:
                    self.abuse["slow refused"] += 1
                    break
            for s in list(slow):
                try:
                    s.sendall(b"X-Slow: 1\r\n")
                except OSError:
                    self.abuse["slow sender cut off"] += 1
                    slow.remove(s)
                    s.close()
            if tick % 3 == 0:  # a body declared far over the limit
                try:
                    with socket.create_connection((HOST, self.rest_port), timeout=10) as s:
                        s.sendall(b"POST /v1/models/toy:predict HTTP/1.1\r\nHost: x\r\n"
                                  b"Content-Length: 10000000000\r\n\r\n{")
                        self.abuse[f"oversize REST -> {s.recv(12)[9:12].decode() or 'closed'}"] += 1
                    with socket.create_connection((HOST, self.rest_port), timeout=10) as s:
                        s.sendall(b"GARBAGE \x00\xff\r\n\r\n")
                        self.abuse[f"garbage -> {s.recv(12)[9:12].decode() or 'closed'}"] += 1
                except OSError as e:
                    self.abuse[f"hostile REST {type(e).__name__}"] += 1
            if tick % 10 == 0:  # a gRPC message over the server's limit (64 MiB)
                request = predict_pb2.PredictRequest()
                request.model_spec.name = "toy"
                request.inputs["x"].CopyFrom(from_numpy(np.zeros((4_500_000, 4), np.float32)))
                try:
                    stub.Predict(request, timeout=60)
                    self.abuse["oversize gRPC accepted?!"] += 1
                except grpc.RpcError as e:
                    self.abuse[f"oversize gRPC -> {e.code().name}"] += 1
        for _, s in idle:
            s.close()
        for s in slow:
            s.close()
        big.close()

    # --- monitor ---

    def sample(self, start: float) -> None:
        pid = self.proc.pid
        status = Path(f"/proc/{pid}/status").read_text()
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        rss = int(fields["VmRSS"].split()[0]) / 1024
        threads = int(fields["Threads"])
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        self.samples.append((time.monotonic() - start, rss, threads, fds))
        with self.lock:
            good, failed = sum(self.good.values()), len(self.failures)
        print(f"{self.samples[-1][0]:7.0f} s  RSS {rss:7.0f} MiB  threads {threads:4d}  fds {fds:5d}  "
              f"good {good:7d}  failed {failed}  swaps {self.swaps}  reloads {self.reloads}", flush=True)

    def run(self) -> int:
        self.start_server()
        workers = [threading.Thread(target=f, daemon=True) for f in
                   (self.grpc_client, self.grpc_client, self.rest_client, self.rest_client, self.swapper,
                    self.reloader, self.hostile)]
        start = time.monotonic()
        every = max(2.0, self.seconds / 30)
        try:
            self.sample(start)
            for w in workers:
                w.start()
            while time.monotonic() - start < self.seconds:
                time.sleep(min(every, max(0.0, self.seconds - (time.monotonic() - start))))
                self.sample(start)
        finally:
            self.stop.set()
            for w in workers:
                w.join(90)
            self.stop_server()
        return self.report()

    def report(self) -> int:
        rss = [s[1] for s in self.samples]
        threads = [s[2] for s in self.samples]
        fds = [s[3] for s in self.samples]
        half = len(self.samples) // 2
        print(f"\ngood requests: {dict(self.good)} in {self.seconds:g} s; failed: {len(self.failures)}")
        for f in self.failures[:10]:
            print(f"  FAILED {f}")
        print(f"version swaps: {self.swaps}; config reloads: {self.reloads}")
        print(f"hostile: {dict(self.abuse)}")
        print(f"RSS MiB min/max {min(rss):.0f}/{max(rss):.0f}; threads min/max {min(threads)}/{max(threads)}; "
              f"fds min/max {min(fds)}/{max(fds)}")
        # Bounded: the second half's peaks stay within a margin of the first half's (no steady growth).
        grew = [name for name, xs, slack in (("RSS", rss, 200.0), ("threads", threads, 20), ("fds", fds, 150))
                if half and max(xs[half:]) > max(xs[:half]) + slack]
        ok = not self.failures and not grew
        print(("PASS" if ok else "FAIL") + (f": kept growing: {', '.join(grew)}" if grew else "")
              + ("" if not self.failures else f": {len(self.failures)} good requests failed"))
        return 0 if ok else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=180.0, help="how long to soak (default 180)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tfsctl-soak-") as tmp:
        code = Soak(args.seconds, Path(tmp)).run()
    sys.exit(code)


if __name__ == "__main__":
    main()
