"""Serving overhead against its floor, in one run with every anchor started by this script (issue 14).

Measures on 127.0.0.1, each server in a process of its own:
  - the floor: a bare Python gRPC server answering the same PredictRequest with a precomputed PredictResponse,
    twice: grpcio's thread-pool server, and a ``grpc.aio`` server (tfsctl's kind; the faster floor here); and
    that asyncio server running the toy model's session step for each request with nothing else around it;
  - the toy model's signature called in process (single thread);
  - ``tfsctl serve`` with 1 and 2 workers (``--workers``; 2 with ``--worker_cpu_affinity``) on the toy model over
    gRPC at concurrency 8..128, and at c=32 1 worker confined to one CPU with the load generator on the other
    (the "one core" end of the scaling from one core to two), beside the same scaling for the thread-pool floor
    (one process on one CPU, then one per CPU sharing the port) and for pure CPU work (hashing, one process per
    CPU): what the machine and the load generator allow any server;
  - REST: the toy model, and DeepLab 256x256 (the sample checkpoint, exported here), plus KServe's Python model
    server (a custom ``kserve.Model`` on the same SavedModel signature, v1 protocol) on the same models and requests
    when a KServe interpreter is found (reported as skipped otherwise; see below);
  - batching (``--enable_batching``) at concurrency 1, 4, 16 against no batching;
  - server CPU per request (utime+stime from /proc/PID/stat) and context switches per request
    (voluntary/nonvoluntary from /proc/PID/task/*/status), summed over the server's processes;
  - the resident memory of each server process (the cost of an extra worker).
It prints the figures and the ratios against the goals, and writes benchmarks/results/overhead.json and .png.

Load generator: h2load (Debian: ``apt-get install -y nghttp2-client``), driving gRPC with a length-prefixed
serialized request and ``content-type: application/grpc``, and REST over HTTP/1.1. Without h2load a Python
multi-process closed-loop client is used; the report says which. h2load counts HTTP 200 as success, so every
gRPC target is first checked with a real call.

    python benchmarks/overhead_bench.py [--quick] [--only rest|batching] [--rounds N] [--kserve-python PATH]
                                        [--out benchmarks/results]
    python benchmarks/overhead_bench.py --only batching --rounds 5   # batching vs none only (about 2 minutes)

The KServe anchor (``benchmarks/kserve_anchor.py``, shared with ``real_models.py``) runs in an interpreter of its own,
because kserve pins a protobuf older than the project's: ``make bench-kserve-env`` creates ``benchmarks/.kserve-venv``
(gitignored), which this script uses by default when it exists; ``--kserve-python PATH`` names another interpreter.
Without either, the current interpreter is used when it can import kserve. ``--only rest`` runs just the REST section
(toy at c=32 and DeepLab, tfsctl against KServe) and writes overhead_rest.json instead of overhead.json.

Default run: about 5 minutes (6 with the KServe anchor); ``--quick``: about 1-2 minutes (shorter windows, fewer
levels); ``--only rest``: about 2 minutes. The machine's other load shows in absolute figures. Each round measures
every target at a level back to back (the order turning from round to round), and each ratio is the median over
rounds of the two runs' ratio within a round: the machine's speed drifts between rounds, far less within seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import kserve_anchor  # noqa: E402 - benchmarks/kserve_anchor.py, the KServe anchor

CLK_TCK = os.sysconf("SC_CLK_TCK")
PREDICT_PATH = "/tensorflow.serving.PredictionService/Predict"
TOY_X = [[1.0, 2.0, 3.0, 4.0]]
BATCHING = """max_batch_size { value: 64 }
batch_timeout_micros { value: 1000 }
max_enqueued_batches { value: 1000 }
num_batch_threads { value: %d }
"""
GOALS = {
    "toy_grpc_vs_bare": 0.6,
    "cpu_per_request_vs_bare": 2.0,
    "two_workers_vs_one_c32": 1.8,
    "deeplab_rest_vs_kserve": 3.0,
    "toy_rest_vs_kserve": 1.5,
    "batching_c1_vs_none": 0.9,
    "batching_c4_vs_none": 1.0,
    "batching_c16_vs_none": 1.0,
}


@dataclass
class Run:
    """One load level against one target."""

    target: str
    protocol: str
    concurrency: int
    requests: int
    errors: int
    seconds: float
    throughput: float
    mean_ms: float
    cpu_us_per_request: float | None = None
    ctx_per_request: float | None = None
    generator: str = ""
    machine_busy: float | None = None  # share of all the machine's CPUs busy during the run (any process)
    round: int = 0  # the round it was measured in: ratios pair runs of the same round


@dataclass
class Report:
    machine: dict
    generator: str
    quick: bool
    only: str = "all"
    kserve: dict = field(default_factory=dict)  # the KServe anchor's interpreter and versions, when it ran
    runs: list[Run] = field(default_factory=list)  # the median round of each (target, protocol, concurrency)
    rounds: list[Run] = field(default_factory=list)  # every measurement
    in_process: dict = field(default_factory=dict)
    cpu_scaling: list[dict] = field(default_factory=list)  # per round: pure CPU work on one CPU and on all
    memory_mb: dict = field(default_factory=dict)
    ratios: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# --- servers --------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _toy_reply() -> bytes:
    """The floors' precomputed answer: the PredictResponse tfsctl sends for the toy request, serialized once."""
    import numpy as np
    from tensorflow_serving.apis import predict_pb2

    from tfsctl.serving.tensors import from_numpy

    reply = predict_pb2.PredictResponse()
    reply.model_spec.name = "toy"
    reply.model_spec.version.value = 1
    reply.model_spec.signature_name = "serving_default"
    reply.outputs["y"].CopyFrom(from_numpy(np.array(TOY_X, np.float32) * 2))
    return reply.SerializeToString()


def _bare_group(port: int, cpus: list[int]) -> None:
    """The floor's scaling anchor: one bare server process per CPU in ``cpus``, each confined to its CPU, sharing
    ``port`` (SO_REUSEPORT, as ``tfsctl serve --workers N --worker_cpu_affinity``); SIGTERM stops them all."""
    procs = [subprocess.Popen([sys.executable, __file__, "--bare-server", str(port), "--bare-cpu", str(cpu)])
             for cpu in cpus]
    signal.signal(signal.SIGTERM, lambda *_: [p.terminate() for p in procs])
    for p in procs:
        p.wait()


def _bare_server(port: int, threads: int, cpu: int | None = None) -> None:
    """The floor: parse each PredictRequest, answer a response serialized once (same bytes tfsctl would send).
    ``cpu``: confined to that CPU, sharing the port with the other processes of a ``_bare_group``."""
    from concurrent import futures

    if cpu is not None:
        os.sched_setaffinity(0, {cpu})

    import grpc
    from tensorflow_serving.apis import predict_pb2

    payload = _toy_reply()

    def predict(request: bytes, context: grpc.ServicerContext) -> bytes:
        predict_pb2.PredictRequest.FromString(request)
        return payload

    handler = grpc.method_handlers_generic_handler(
        "tensorflow.serving.PredictionService", {"Predict": grpc.unary_unary_rpc_method_handler(predict)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads),
                         options=[("grpc.so_reuseport", int(cpu is not None))])
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    signal.signal(signal.SIGTERM, lambda *_: server.stop(1))
    server.wait_for_termination()


def step_only_reply(servable, request: bytes) -> bytes:
    """The step-only floor's handler: parse, decode, the session step (``Servable.run``), encode; nothing else (no
    model lookup, drain gate, metrics or request checks). ``predict_path.py`` times this same function."""
    from tensorflow_serving.apis import predict_pb2

    from tfsctl.tensors import as_proto_field, to_numpy

    parsed = predict_pb2.PredictRequest.FromString(request)
    outputs = servable.run("", {"x": to_numpy(parsed.inputs["x"], "x")})
    response = predict_pb2.PredictResponse()
    as_proto_field(outputs["y"], response.outputs["y"])
    return response.SerializeToString()


def _bare_aio_server(port: int, model_dir: str | None = None) -> None:
    """The floor on asyncio: a ``grpc.aio`` server (what tfsctl serves with) answering the same precomputed
    response from a coroutine; no thread hand-over and no GIL contention, the fastest Python floor here.

    With ``model_dir``, the floor of a server that runs the model: each request's input decoded, the version's
    session step run (tfsctl's ``Loader`` and ``Servable.run``) and its output encoded, with nothing else (no
    model lookup, drain gate, metrics or request checks). What TensorFlow's step costs inside a server."""
    import asyncio

    import grpc
    from tensorflow_serving.apis import predict_pb2

    payload = _toy_reply()

    async def predict(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        predict_pb2.PredictRequest.FromString(request)
        return payload

    if model_dir is not None:
        from tfsctl.core.loader import Loader

        servable = Loader("toy", 1, model_dir).load()

        async def predict(request: bytes, context: grpc.aio.ServicerContext) -> bytes:  # noqa: F811
            return step_only_reply(servable, request)

    async def serve() -> None:
        handler = grpc.method_handlers_generic_handler(
            "tensorflow.serving.PredictionService", {"Predict": grpc.unary_unary_rpc_method_handler(predict)})
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        server.add_generic_rpc_handlers((handler,))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await server.stop(1)

    asyncio.run(serve())


class Server:
    """A server process on 127.0.0.1; ``pids()`` are its processes (supervisor and workers)."""

    def __init__(self, name: str, cmd: list[str], log: Path, grpc_port: int | None, rest_port: int | None,
                 project_path: bool = True, cpus: set[int] | None = None) -> None:
        """``cpus``: run the server on these CPUs only (and the load generator on the others)."""
        self.name, self.grpc_port, self.rest_port, self.cpus = name, grpc_port, rest_port, cpus
        self.log = log.open("w")
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        if project_path:
            env["PYTHONPATH"] = str(ROOT)
        else:  # another interpreter (the KServe anchor): nothing of the project's venv or tree on its path
            env.pop("PYTHONPATH", None)
            env.pop("VIRTUAL_ENV", None)
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True, preexec_fn=_pinned(cpus))

    def pids(self) -> list[int]:
        out = [self.proc.pid]
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        if children.exists():
            for child in children.read_text().split():
                try:
                    cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
                    if b"spawn_main" in cmdline or b"--bare-server" in cmdline:  # workers; a bare group's servers
                        out.append(int(child))
                except OSError:
                    pass
        return out

    def wait_ready(self, check, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: see {self.log.name}")
            try:
                if check():
                    return
            except Exception:  # noqa: BLE001 - not up yet
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready within {timeout}s: see {self.log.name}")
            time.sleep(0.25)

    def memory_mb(self) -> list[dict]:
        """RSS, PSS (shared pages split between the processes mapping them) and USS (private) of each process."""
        out = []
        for pid in self.pids():
            try:
                text = Path(f"/proc/{pid}/smaps_rollup").read_text()
            except OSError:
                continue
            kb = {k: int(v) for k, v in re.findall(r"^(\w+):\s+(\d+) kB", text, re.M)}
            out.append({"pid": pid, "rss": kb.get("Rss", 0) / 1024, "pss": kb.get("Pss", 0) / 1024,
                        "uss": (kb.get("Private_Clean", 0) + kb.get("Private_Dirty", 0)) / 1024})
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.log.close()


def _pinned(cpus: set[int] | None):
    """A ``preexec_fn`` that confines the child (and every thread it starts) to ``cpus``; None for no confinement."""
    if not cpus:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def _cpu_and_ctx(pids: list[int]) -> tuple[float, int]:
    """(CPU seconds, context switches) summed over ``pids`` and all their threads."""
    cpu, ctx = 0.0, 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / CLK_TCK
            for task in Path(f"/proc/{pid}/task").iterdir():
                text = (task / "status").read_text()
                ctx += sum(int(v) for v in re.findall(r"(?:non)?voluntary_ctxt_switches:\s+(\d+)", text))
        except OSError:
            continue
    return cpu, ctx


def _machine_ticks() -> tuple[int, int]:
    """(busy, idle) CPU ticks of the whole machine so far (/proc/stat): busy = user, nice, system, irq, softirq."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    return fields[0] + fields[1] + fields[2] + fields[5] + fields[6], fields[3] + fields[4]


def _spin(cpu: int, start: float, stop: float) -> int:
    """Hash in a loop on ``cpu`` alone from ``start`` to ``stop`` (wall clock); the number of hashes."""
    import hashlib

    os.sched_setaffinity(0, {cpu})
    digest = b"tfsctl" * 8
    while time.time() < start:
        pass
    n = 0
    while True:
        for _ in range(2000):
            digest = hashlib.sha256(digest).digest()
        n += 2000
        if time.time() >= stop:
            return n


def cpu_scaling(seconds: float) -> dict:
    """The machine's own scaling from one CPU to all: hashes/s of one process on one CPU, then of one process per
    CPU at once (no shared state, no I/O). Perfectly parallel work; on a VM whose vCPUs share a host core, or whose
    host is busy, it falls short of the CPU count, and no server can scale further."""
    import multiprocessing

    cpus = sorted(os.sched_getaffinity(0))
    rates = {}
    with ProcessPoolExecutor(len(cpus), mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_spin, cpus, [0.0] * len(cpus), [0.0] * len(cpus)))  # workers started and importing done
        for label, on in (("one", cpus[-1:]), ("all", cpus)):
            start = time.time() + 0.2
            counts = list(pool.map(_spin, on, [start] * len(on), [start + seconds] * len(on)))
            rates[label] = sum(counts) / seconds
    rates["ratio"] = rates["all"] / rates["one"]
    print(f"  pure CPU work: {rates['one']:.0f} hashes/s on 1 CPU, {rates['all']:.0f} on {len(cpus)} CPUs "
          f"({rates['ratio']:.2f}x)", flush=True)
    return rates


# --- load generators ------------------------------------------------------------------------------------------


def grpc_frame(message: bytes) -> bytes:
    """One gRPC message on the wire: uncompressed flag, 4-byte big-endian length, bytes."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def h2load(url: str, body: Path, concurrency: int, seconds: float, headers: list[str], h1: bool,
           requests: int | None = None, cpus: set[int] | None = None, log_file: Path | None = None) -> dict:
    """One h2load run: for ``seconds`` (timing-based), or for exactly ``requests`` requests (slow models).
    ``log_file``: h2load writes each request's time there, returned sorted as ``latencies_ms`` (HTTP 200 only)."""
    cmd = ["h2load", "-c", str(concurrency), "-m", "1", "-t", "1", "-d", str(body)]
    if log_file is not None:  # h2load appends to it: start each run's log empty
        log_file.unlink(missing_ok=True)
        cmd.append(f"--log-file={log_file}")
    cmd += ["-n", str(requests)] if requests else ["-D", f"{max(1, int(seconds * 1000))}ms"]
    for h in headers:
        cmd += ["-H", h]
    if h1:
        cmd.append("--h1")
    cmd.append(url)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 600, preexec_fn=_pinned(cpus)).stdout
    m = re.search(r"finished in ([\d.]+)(us|ms|s), ([\d.]+) req/s", out)
    done = re.search(r"requests: \d+ total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored",
                     out)
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)", out)
    if not (m and done):
        raise RuntimeError(f"h2load output not understood:\n{out[-2000:]}")
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}  # to milliseconds
    started, succeeded = int(done.group(1)), int(done.group(3))
    out = {"seconds": float(m.group(1)) * scale[m.group(2)] / 1e3, "requests": succeeded,
           "errors": int(done.group(4)) + int(done.group(5)),
           "mean_ms": float(mean.group(1)) * scale[mean.group(2)] if mean else float("nan")}
    if log_file is not None:  # start (us since the epoch), HTTP status, us to the end of the response
        rows = [line.split("\t") for line in log_file.read_text().splitlines() if line.strip()]
        if not succeeded <= len(rows) <= started:
            raise RuntimeError(f"h2load's log {log_file} has {len(rows)} requests, this run {succeeded} to {started}")
        out["latencies_ms"] = sorted(int(r[2]) / 1e3 for r in rows if r[1] == "200")
    return out


def _py_worker(args: tuple) -> tuple[int, int, float]:
    """Closed loop for ``seconds`` with ``threads`` threads in this process: (ok, errors, summed latency)."""
    import threading

    kind, target, payload, threads, seconds = args
    stop_at = time.monotonic() + seconds
    counts = [0, 0, 0.0]
    lock = threading.Lock()

    def loop() -> None:
        ok = err = 0
        lat = 0.0
        if kind == "grpc":
            import grpc

            channel = grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
            call = channel.unary_unary(PREDICT_PATH)
        while time.monotonic() < stop_at:
            t0 = time.perf_counter()
            try:
                if kind == "grpc":
                    call(payload, timeout=60)
                else:
                    req = urllib.request.Request(target, data=payload, headers={"Content-Type": "application/json"})
                    with urllib.request.urlopen(req, timeout=60) as r:
                        r.read()
                ok += 1
                lat += time.perf_counter() - t0
            except Exception:  # noqa: BLE001 - counted
                err += 1
        with lock:
            counts[0] += ok
            counts[1] += err
            counts[2] += lat

    ts = [threading.Thread(target=loop) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return counts[0], counts[1], counts[2]


def py_load(kind: str, target: str, payload: bytes, concurrency: int, seconds: float) -> dict:
    procs = min(concurrency, os.cpu_count() or 1, 4)
    per = [concurrency // procs + (1 if i < concurrency % procs else 0) for i in range(procs)]
    t0 = time.monotonic()
    with ProcessPoolExecutor(procs) as pool:
        results = list(pool.map(_py_worker, [(kind, target, payload, n, seconds) for n in per]))
    elapsed = time.monotonic() - t0
    ok = sum(r[0] for r in results)
    return {"seconds": max(seconds, 1e-9), "requests": ok, "errors": sum(r[1] for r in results),
            "mean_ms": 1e3 * sum(r[2] for r in results) / max(ok, 1), "wall": elapsed}


class Load:
    """Runs one level with h2load when installed, else the Python client; samples server CPU around it."""

    def __init__(self, work: Path, seconds: float, warmup: float, force_python: bool = False) -> None:
        self.work, self.seconds, self.warmup = work, seconds, warmup
        self.use_h2load = not force_python and shutil.which("h2load") is not None
        self.generator = "h2load" if self.use_h2load else "python multi-process closed loop"
        self._files: dict[bytes, Path] = {}

    def _file(self, data: bytes) -> Path:
        if data not in self._files:
            path = self.work / f"body{len(self._files)}.bin"
            path.write_bytes(data)
            self._files[data] = path
        return self._files[data]

    def run(self, server: Server, protocol: str, payload: bytes, concurrency: int, path: str = "", *,
            label: str = "", requests: int | None = None, seconds: float | None = None) -> Run:
        """One level; ``requests`` = a fixed number of requests (h2load), else ``seconds`` (default window)."""
        if protocol == "grpc":
            url, body, headers, h1 = (f"http://127.0.0.1:{server.grpc_port}{PREDICT_PATH}", grpc_frame(payload),
                                      ["content-type: application/grpc", "te: trailers"], False)
            py_target = f"127.0.0.1:{server.grpc_port}"
        else:
            url, body, headers, h1 = (f"http://127.0.0.1:{server.rest_port}{path}", payload,
                                      ["content-type: application/json"], True)
            py_target = url

        # A server confined to some CPUs gets the load generator off them (the others), so it has them to itself.
        others = set(os.sched_getaffinity(0)) - server.cpus if server.cpus else None

        def once(seconds: float, requests: int | None = None) -> dict:
            if self.use_h2load:
                return h2load(url, self._file(body), concurrency, seconds, headers, h1, requests, others or None)
            return py_load(protocol, py_target, payload, concurrency, seconds)

        if self.warmup > 0:  # a fixed count (slow models) is preceded by one request per connection
            once(self.warmup, concurrency if requests and self.use_h2load else None)
        cpu0, ctx0 = _cpu_and_ctx(server.pids())
        busy0, idle0 = _machine_ticks()
        res = once(seconds or self.seconds, requests)
        cpu1, ctx1 = _cpu_and_ctx(server.pids())
        busy1, idle1 = _machine_ticks()
        n = max(res["requests"], 1)
        run = Run(label or server.name, protocol, concurrency, res["requests"], res["errors"], res["seconds"],
                  res["requests"] / res["seconds"], res["mean_ms"], 1e6 * (cpu1 - cpu0) / n, (ctx1 - ctx0) / n,
                  self.generator, (busy1 - busy0) / max(busy1 - busy0 + idle1 - idle0, 1))
        print(f"  {run.target:<22} {protocol:<4} c={concurrency:<4} {run.throughput:9.1f} req/s  "
              f"mean {run.mean_ms:8.2f} ms  cpu {run.cpu_us_per_request:7.0f} us/req  "
              f"ctx {run.ctx_per_request:5.1f}/req  machine {100 * run.machine_busy:3.0f}% busy  errors {run.errors}",
              flush=True)
        return run


# --- the benchmark --------------------------------------------------------------------------------------------


def _toy_request() -> bytes:
    import numpy as np
    from tensorflow_serving.apis import predict_pb2

    from tfsctl.serving.tensors import from_numpy

    req = predict_pb2.PredictRequest()
    req.model_spec.name = "toy"
    req.inputs["x"].CopyFrom(from_numpy(np.array(TOY_X, np.float32)))
    return req.SerializeToString()


def _grpc_ok(port: int, payload: bytes) -> bool:
    """A real call, checked: h2load would count a gRPC error (HTTP 200 + grpc-status) as a success."""
    import grpc
    from tensorflow_serving.apis import predict_pb2

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        raw = channel.unary_unary(PREDICT_PATH)(payload, timeout=10)
    return "y" in predict_pb2.PredictResponse.FromString(raw).outputs


def _rest_ok(port: int, path: str, body: bytes) -> bool:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return r.status == 200 and b"predictions" in r.read()


def _serve_cmd(base: Path, name: str, grpc_port: int, rest_port: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "tfsctl", "serve", "--host", "127.0.0.1", "--port", str(grpc_port),
            "--rest-api-port", str(rest_port), "--model-name", name, "--model-base-path", str(base), *extra]


def _in_process(toy_dir: Path, seconds: float) -> dict:
    import numpy as np

    from tfsctl.core.loader import Loader

    servable = Loader("toy", 1, toy_dir / "1").load()
    x = {"x": np.array(TOY_X, np.float32)}
    for _ in range(200):
        servable.run("serving_default", x)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        servable.run("serving_default", x)
        n += 1
    elapsed = time.perf_counter() - t0
    return {"calls_per_s": n / elapsed, "us_per_call": 1e6 * elapsed / n}


def _deeplab(work: Path) -> Path | None:
    ckpt = ROOT / "samples" / "deeplab" / "checkpoint"
    if not (ckpt / "model.json").exists():
        return None
    from tfsctl.export import export_model

    export_model(ckpt, work / "deeplab", warmup_sizes=())
    return work / "deeplab"


def _deeplab_body() -> bytes:
    import numpy as np

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    return json.dumps({"instances": [{"images": image.tolist(), "height": 256, "width": 256}]}).encode()


def _ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or den == 0:
        return None
    return num / den


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="about a minute: short windows, fewer levels")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--seconds", type=float, default=None, help="measurement window per level")
    ap.add_argument("--no-deeplab", action="store_true")
    ap.add_argument("--only", choices=("all", "rest", "batching"), default="all",
                    help="rest: only the REST section (toy c=32 and DeepLab, tfsctl vs KServe), written to "
                         "overhead_rest.json; batching: only batching vs no batching at c=1/4/16 (toy model, gRPC), "
                         "written to overhead_batching.json")
    ap.add_argument("--rounds", type=int, default=None, help="rounds per level (default 3, --quick 1)")
    ap.add_argument("--kserve-python", default=None, metavar="PATH",
                    help="interpreter with kserve and TensorFlow for the KServe anchor (default: "
                         "benchmarks/.kserve-venv/bin/python when it exists, made by `make bench-kserve-env`)")
    ap.add_argument("--generator", choices=("auto", "python"), default="auto",
                    help="auto: h2load when installed, else the Python client; python: always the Python client")
    ap.add_argument("--bare-server", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--bare-cpu", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--bare-aio-server", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--bare-model", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--bare-group", type=int, nargs="+", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    threads = max(64, 8 * (os.cpu_count() or 1))  # tfsctl serve's default gRPC pool
    if args.bare_group is not None:
        _bare_group(args.bare_group[0], args.bare_group[1:])
        return 0
    if args.bare_server is not None:
        _bare_server(args.bare_server, threads, args.bare_cpu)
        return 0
    if args.bare_aio_server is not None:
        _bare_aio_server(args.bare_aio_server, args.bare_model)
        return 0

    seconds = args.seconds or (1.5 if args.quick else 2.5)
    warmup = 0.3 if args.quick else 0.5
    levels = (8, 32, 128) if args.quick else (8, 16, 32, 64, 128)
    rounds = args.rounds or (1 if args.quick else 3)
    full = args.only == "all"
    rest_part = args.only in ("all", "rest")
    batching_part = args.only in ("all", "batching")
    work = Path(tempfile.mkdtemp(prefix="tfsctl-overhead-"))
    load = Load(work, seconds, warmup, force_python=args.generator == "python")
    kserve_python, kserve_versions, kserve_note = kserve_anchor.find_interpreter(args.kserve_python)
    have_kserve = kserve_python is not None
    report = Report(machine={"cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0],
                             "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                             "loadavg_at_start": round(os.getloadavg()[0], 2)},
                    generator=load.generator, quick=args.quick, only=args.only, kserve=kserve_versions)
    print(f"load generator: {load.generator}" + ("" if load.use_h2load else
          "  (install h2load: apt-get update && apt-get install -y nghttp2-client)"))
    if have_kserve:
        print("KServe anchor: kserve {kserve} (TensorFlow {tensorflow}, protobuf {protobuf}) in {python_path}"
              .format(**kserve_versions))
    else:
        report.notes.append(kserve_note)
        print(report.notes[-1])

    from tfsctl.testing import write_toy_model

    toy = work / "toy"
    write_toy_model(toy, 1, scale=2.0)
    payload = _toy_request()
    toy_json = json.dumps({"instances": TOY_X}).encode()
    servers: list[Server] = []

    def launch(name: str, cmd: list[str], grpc_port: int | None, rest_port: int | None,
               cpus: set[int] | None = None) -> Server:
        s = Server(name, cmd, work / f"{name}.log", grpc_port, rest_port, cpus=cpus)
        servers.append(s)
        return s

    def launch_kserve(name: str, model: str, model_dir: Path) -> Server:
        r = free_port()
        s = Server(name, kserve_anchor.command(kserve_python, model, model_dir, r), work / f"{name}.log", None, r,
                   project_path=False)
        servers.append(s)
        return s

    def rest_ready(port: int):
        return lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/health/ready", timeout=5).status == 200

    raw: list[Run] = []
    try:
        if full:
            print("in-process signature call (1 thread):", flush=True)
            report.in_process = _in_process(toy, seconds)
            print(f"  {report.in_process['calls_per_s']:.0f} calls/s, {report.in_process['us_per_call']:.0f} us/call")

        # Every toy server runs from the start, idle while another is measured, so the comparisons interleave:
        # each round measures every target at every level, and the report keeps the median of the rounds.
        bare = bare_aio = bare_tf = batching = None
        tfs = {}
        if full:
            port = free_port()
            bare = launch("bare-grpc", [sys.executable, __file__, "--bare-server", str(port)], port, None)
            port = free_port()
            bare_aio = launch("bare-aio", [sys.executable, __file__, "--bare-aio-server", str(port)], port, None)
            port = free_port()
            bare_tf = launch("bare-aio-tf", [sys.executable, __file__, "--bare-aio-server", str(port), "--bare-model",
                                             str(toy / "1")], port, None)
        for workers in (1, 2) if full else (1,):
            g, r = free_port(), free_port()
            pin = ("--worker_cpu_affinity",) if workers > 1 else ()  # one core per worker (docs/PERFORMANCE.md)
            tfs[workers] = launch(f"tfsctl-{workers}w", _serve_cmd(toy, "toy", g, r, "--workers", str(workers), *pin),
                                  g, r)
        allowed = sorted(os.sched_getaffinity(0))
        one_core = None  # 1 worker confined to one CPU: the "one core" end of the scaling figure
        scaling_anchors: list[Server] = []  # the bare server on one CPU and one per CPU: the same scaling, floor
        if full and len(allowed) >= 2:
            g, r = free_port(), free_port()
            one_core = launch("tfsctl-1w-1cpu", _serve_cmd(toy, "toy", g, r), g, r, cpus={allowed[-1]})
            port = free_port()
            scaling_anchors.append(launch("bare-1cpu", [sys.executable, __file__, "--bare-server", str(port)],
                                          port, None, cpus={allowed[-1]}))
            port = free_port()
            scaling_anchors.append(launch(f"bare-{len(allowed)}p", [sys.executable, __file__, "--bare-group",
                                                                      str(port), *map(str, allowed)], port, None))
        if batching_part:
            params = work / "batching.config"
            params.write_text(BATCHING % (os.cpu_count() or 1))
            g, r = free_port(), free_port()
            batching = launch("batching", _serve_cmd(toy, "toy", g, r, "--enable-batching",
                                                     "--batching-parameters-file", str(params)), g, r)
        kserve_toy = launch_kserve("kserve-toy", "toy", toy / "1") if have_kserve and rest_part else None
        for srv in [b for b in (bare, bare_aio, bare_tf) if b is not None] + scaling_anchors:
            srv.wait_ready(lambda srv=srv: _grpc_ok(srv.grpc_port, payload))
        for srv in (*tfs.values(), *([batching] if batching else []), *([one_core] if one_core else [])):
            srv.wait_ready(rest_ready(srv.rest_port))  # every worker ready (--workers: all of them)
            srv.wait_ready(lambda srv=srv: _grpc_ok(srv.grpc_port, payload))
        if kserve_toy is not None:
            kserve_toy.wait_ready(lambda: _rest_ok(kserve_toy.rest_port, "/v1/models/toy:predict", toy_json))

        def measured(rnd: int, run: Run) -> None:
            run.round = rnd
            raw.append(run)

        for rnd in range(rounds):  # the order of the targets turns from round to round: none is always first
            if full:
                print(f"round {rnd + 1}/{rounds}: toy model over gRPC", flush=True)
                for c in levels:
                    scaling = [one_core, *scaling_anchors] if one_core and c == 32 else []
                    for srv in _turn([bare, bare_aio, bare_tf, tfs[1], tfs[2], *scaling], rnd):
                        measured(rnd, load.run(srv, "grpc", payload, c))
                if one_core:
                    report.cpu_scaling.append({"round": rnd, **cpu_scaling(seconds)})
            if batching_part:
                print(f"round {rnd + 1}/{rounds}: batching (timeout 1 ms) vs none, gRPC", flush=True)
                for c in (1, 4, 16):
                    for srv, label in _turn([(tfs[1], "nobatch"), (batching, "")], rnd):
                        measured(rnd, load.run(srv, "grpc", payload, c, label=label))
            if not rest_part:
                continue
            print(f"round {rnd + 1}/{rounds}: toy model over REST", flush=True)
            for srv in _turn([tfs[1], kserve_toy] if kserve_toy is not None else [tfs[1]], rnd):
                measured(rnd, load.run(srv, "rest", toy_json, 32, "/v1/models/toy:predict"))
        if full:
            targets = (("bare-grpc", bare), ("bare-aio", bare_aio), ("tfsctl-1w", tfs[1]), ("tfsctl-2w", tfs[2]))
            for name, srv in targets:
                report.memory_mb[name] = srv.memory_mb()
        for srv in list(servers):
            srv.stop()
            servers.remove(srv)

        deeplab = None if args.no_deeplab or not rest_part else _deeplab(work)
        if deeplab is None:
            report.notes.append("DeepLab skipped (--no-deeplab or no samples/deeplab/checkpoint)")
        else:
            body = _deeplab_body()
            path = "/v1/models/deeplab:predict"
            g, r = free_port(), free_port()
            targets = [launch("tfsctl-deeplab", _serve_cmd(deeplab, "deeplab", g, r), g, r)]
            if have_kserve:
                targets.append(launch_kserve("kserve-deeplab", "deeplab", deeplab / "1"))
            for srv in targets:
                srv.wait_ready(lambda srv=srv: _rest_ok(srv.rest_port, path, body))
            for rnd in range(rounds):  # interleaved like the toy rounds
                print(f"round {rnd + 1}/{rounds}: DeepLab 256x256 over REST (fixed request counts)", flush=True)
                for c in (1, 4):
                    for srv in _turn(targets, rnd):
                        measured(rnd, load.run(srv, "rest", body, c, path, requests=(2 if args.quick else 6) * c,
                                               seconds=30.0))
    finally:
        for s in list(servers):
            s.stop()
        shutil.rmtree(work, ignore_errors=True)

    report.rounds = raw
    report.runs = _median_runs(raw)
    report.machine["loadavg_at_end"] = round(os.getloadavg()[0], 2)
    busy = max(report.machine["loadavg_at_start"], report.machine["loadavg_at_end"])
    if busy > (os.cpu_count() or 1):
        report.notes.append(f"the machine was busy (1-minute load average up to {busy:.1f} on {os.cpu_count()} CPUs): "
                            "absolute figures and the 2-worker scaling are depressed; rerun on an idle machine")
    _ratios(report)
    _print(report)
    args.out.mkdir(parents=True, exist_ok=True)
    name = {"all": "overhead.json", "rest": "overhead_rest.json", "batching": "overhead_batching.json"}[args.only]
    out = args.out / name  # a partial run never overwrites the full report
    out.write_text(json.dumps(asdict(report), indent=2) + "\n")
    if full:
        _plot(report, args.out / "overhead.png")
        print(f"wrote {out} and {args.out / 'overhead.png'}")
    else:
        print(f"wrote {out}")
    return 0


def _turn(items: list, rnd: int) -> list:
    """``items`` rotated by the round number: each target takes each place in the order in turn."""
    k = rnd % len(items)
    return items[k:] + items[:k]


def _by_round(report: Report, targets: tuple[str, ...], protocol: str, c: int, attr: str = "throughput"
              ) -> list[dict[str, float]]:
    """Per round that measured every one of ``targets`` at this protocol and level: {target: its ``attr``}."""
    by_round: dict[int, dict[str, float]] = {}
    for r in report.rounds:
        if r.protocol == protocol and r.concurrency == c and r.target in targets and getattr(r, attr):
            by_round.setdefault(r.round, {})[r.target] = getattr(r, attr)
    return [v for v in by_round.values() if all(t in v for t in targets)]


def _paired(report: Report, a: str, b: str, protocol: str, c: int, attr: str = "throughput") -> float | None:
    """The median over rounds of ``a``'s figure divided by ``b``'s in the same round: the machine's speed drifts
    between rounds (the same server's CPU per request moved 2x), a ratio of runs seconds apart drifts far less."""
    ratios = [v[a] / v[b] for v in _by_round(report, (a, b), protocol, c, attr)]
    return round(statistics.median(ratios), 3) if ratios else None


def _paired_of_ratios(report: Report, num: tuple[str, str], den: tuple[str, str], protocol: str,
                      c: int) -> float | None:
    """The median over rounds of (num[0]/num[1]) / (den[0]/den[1]), each from runs of the same round."""
    ratios = [(v[num[0]] / v[num[1]]) / (v[den[0]] / v[den[1]])
              for v in _by_round(report, (*num, *den), protocol, c)]
    return round(statistics.median(ratios), 3) if ratios else None


def _median_runs(raw: list[Run]) -> list[Run]:
    """Per (target, protocol, concurrency): the round with the median throughput."""
    groups: dict[tuple, list[Run]] = {}
    for r in raw:
        groups.setdefault((r.target, r.protocol, r.concurrency), []).append(r)
    return [sorted(g, key=lambda r: r.throughput)[len(g) // 2] for g in groups.values()]


def _pick(report: Report, target: str, protocol: str, c: int | None = None) -> list[Run]:
    return [r for r in report.runs if r.target == target and r.protocol == protocol
            and (c is None or r.concurrency == c)]


def _ratios(report: Report) -> None:
    rt = report.ratios
    bare = {r.concurrency: r for r in _pick(report, "bare-grpc", "grpc")}
    one = {r.concurrency: r for r in _pick(report, "tfsctl-1w", "grpc")}
    two = {r.concurrency: r for r in _pick(report, "tfsctl-2w", "grpc")}
    rt["toy_grpc_vs_bare"] = {c: _paired(report, "tfsctl-1w", "bare-grpc", "grpc", c) for c in one if c in bare}
    rt["cpu_per_request_vs_bare"] = {c: _paired(report, "tfsctl-1w", "bare-grpc", "grpc", c, "cpu_us_per_request")
                                     for c in one if c in bare}
    # The asyncio floor (grpc.aio, as tfsctl): faster than the thread-pool one here, so the stricter anchor.
    rt["toy_grpc_vs_bare_aio"] = {c: v for c in one if (v := _paired(report, "tfsctl-1w", "bare-aio", "grpc", c))}
    rt["cpu_per_request_vs_bare_aio"] = {
        c: v for c in one if (v := _paired(report, "tfsctl-1w", "bare-aio", "grpc", c, "cpu_us_per_request"))}
    # The asyncio floor that runs the model's step: how much of the gap to the floor is TensorFlow's.
    rt["bare_aio_tf_vs_bare_aio"] = {c: v for c in one if (v := _paired(report, "bare-aio-tf", "bare-aio", "grpc", c))}
    rt["toy_grpc_vs_bare_aio_tf"] = {c: v for c in one if (v := _paired(report, "tfsctl-1w", "bare-aio-tf", "grpc", c))}
    rt["toy_grpc_vs_in_process"] = {c: _ratio(one[c].throughput, report.in_process.get("calls_per_s")) for c in one}
    rt["two_workers_vs_one_c32"] = _paired(report, "tfsctl-2w", "tfsctl-1w", "grpc", 32) if 32 in two else None
    # From one core to two: 1 worker confined to one CPU (the load generator on the other) against 2 workers on
    # both (the load generator sharing them).
    rt["two_cores_vs_one_c32"] = _paired(report, "tfsctl-2w", "tfsctl-1w-1cpu", "grpc", 32)
    # The same figure for the floor (one bare server process per CPU), and for pure CPU work: what this machine
    # and this load generator allow any server; then tfsctl's scaling as a share of the floor's, round by round.
    group = f"bare-{report.machine['cpus']}p"
    rt["bare_two_cores_vs_one_c32"] = _paired(report, group, "bare-1cpu", "grpc", 32)
    rt["machine_cpus_vs_one"] = (round(statistics.median(r["ratio"] for r in report.cpu_scaling), 3)
                                 if report.cpu_scaling else None)
    rt["two_cores_vs_one_c32_vs_bare"] = _paired_of_ratios(report, ("tfsctl-2w", "tfsctl-1w-1cpu"),
                                                           (group, "bare-1cpu"), "grpc", 32)
    # What the machine had left: with the load generator on the same cores, 2 workers can only use what 1 left idle.
    rt["machine_busy_c32"] = {name: round(runs[32].machine_busy, 3) for name, runs in (("1w", one), ("2w", two))
                              if 32 in runs and runs[32].machine_busy is not None}
    for c in (1, 4, 16):
        rt[f"batching_c{c}_vs_none"] = _paired(report, "batching", "nobatch", "grpc", c)
    rt["toy_rest_vs_kserve"] = _paired(report, "tfsctl-1w", "kserve-toy", "rest", 32)
    rt["deeplab_rest_vs_kserve_by_c"] = {c: v for c in (1, 4)
                                         if (v := _paired(report, "tfsctl-deeplab", "kserve-deeplab", "rest", c))}
    rt["deeplab_rest_vs_kserve"] = max(rt["deeplab_rest_vs_kserve_by_c"].values(), default=None)  # the best level
    one_mb, two_mb = report.memory_mb.get("tfsctl-1w"), report.memory_mb.get("tfsctl-2w")
    if one_mb and two_mb:  # 2 workers = supervisor + 2 serving processes; 1 worker = one plain server process
        report.memory_mb["one_worker_pss"] = round(sum(m["pss"] for m in one_mb), 1)
        report.memory_mb["two_workers_pss"] = round(sum(m["pss"] for m in two_mb), 1)
        report.memory_mb["worker_uss"] = round(max(m["uss"] for m in two_mb[1:]), 1) if len(two_mb) > 1 else None
        report.memory_mb["supervisor_pss"] = round(two_mb[0]["pss"], 1)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def _print(report: Report) -> None:
    rt = report.ratios
    print(f"\n== ratios ({report.machine['date']}, {report.machine['cpus']} CPUs, load: {report.generator}) ==")

    def line(name: str, value: float | None, goal: float, lower_is_better: bool = False) -> None:
        if value is None:
            verdict = "skipped"
        else:
            verdict = "meets goal" if (value <= goal if lower_is_better else value >= goal) else "BELOW GOAL"
            if lower_is_better and value > goal:
                verdict = "ABOVE GOAL"
        sign = "<=" if lower_is_better else ">="
        print(f"  {name:<52} {_fmt(value):>8}   goal {sign} {goal:.2f}x   {verdict}")

    full = report.only == "all"
    for key, floor in (("", "bare server (thread pool)"), ("_aio", "bare asyncio server")):
        for c, v in rt.get(f"toy_grpc_vs_bare{key}", {}).items():
            line(f"toy gRPC throughput vs {floor}, c={c}", v, GOALS["toy_grpc_vs_bare"])
        for c, v in rt.get(f"cpu_per_request_vs_bare{key}", {}).items():
            line(f"server CPU per request vs {floor}, c={c}", v, GOALS["cpu_per_request_vs_bare"],
                 lower_is_better=True)
    if full:
        line("2 workers/2 cores vs 1 worker/1 core, c=32", rt["two_cores_vs_one_c32"],
             GOALS["two_workers_vs_one_c32"])
        for label, key in (("  same, bare server (1 process per CPU)", "bare_two_cores_vs_one_c32"),
                           ("  same, pure CPU work (no server, no load)", "machine_cpus_vs_one"),
                           ("  tfsctl's scaling / the bare server's", "two_cores_vs_one_c32_vs_bare"),
                           ("2 workers vs 1, both on every core, c=32", "two_workers_vs_one_c32")):
            print(f"  {label:<52} {_fmt(rt.get(key)):>8}")
        busy = rt.get("machine_busy_c32", {})
        if busy:
            print("    machine busy at c=32 (every process, load generator included): "
                  + ", ".join(f"{k} {100 * v:.0f}%" for k, v in busy.items()))
    if report.only in ("all", "batching"):
        for c in (1, 4, 16):
            line(f"batching vs no batching, c={c}", rt[f"batching_c{c}_vs_none"], GOALS[f"batching_c{c}_vs_none"])
    line("toy REST vs KServe (c=32)", rt["toy_rest_vs_kserve"], GOALS["toy_rest_vs_kserve"])
    line("DeepLab 256x256 REST vs KServe", rt["deeplab_rest_vs_kserve"], GOALS["deeplab_rest_vs_kserve"])
    for c, v in rt["deeplab_rest_vs_kserve_by_c"].items():
        print(f"  {'  DeepLab REST vs KServe, c=' + str(c):<52} {_fmt(v):>8}")
    for c, v in rt.get("bare_aio_tf_vs_bare_aio", {}).items():
        print(f"  {'asyncio floor running the step vs without, c=' + str(c):<52} {_fmt(v):>8}")
    for c, v in rt.get("toy_grpc_vs_bare_aio_tf", {}).items():
        print(f"  {'toy gRPC vs the asyncio floor running the step, c=' + str(c):<52} {_fmt(v):>8}")
    for c, v in rt["toy_grpc_vs_in_process"].items():
        print(f"  {'toy gRPC vs in-process call, c=' + str(c):<52} {_fmt(v):>8}")
    mem = report.memory_mb
    if "two_workers_pss" in mem:
        print(f"  memory (PSS, toy model): 1 worker {mem['one_worker_pss']:.0f} MB; 2 workers "
              f"{mem['two_workers_pss']:.0f} MB (supervisor {mem['supervisor_pss']:.0f} MB); private memory per "
              f"worker (USS) {mem['worker_uss']:.0f} MB")
    for note in report.notes:
        print(f"  note: {note}")


def _plot(report: Report, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.5, 4))
    for target in ("bare-grpc", "bare-aio", "bare-aio-tf", "tfsctl-1w", "tfsctl-2w"):
        runs = sorted(_pick(report, target, "grpc"), key=lambda r: r.concurrency)
        if runs:
            ax.plot([r.concurrency for r in runs], [r.throughput for r in runs], marker="o", label=target)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrency")
    ax.set_ylabel("requests/s")
    ax.set_title(f"toy model over gRPC ({report.machine['cpus']} CPUs, {report.generator})")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
