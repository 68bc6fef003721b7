"""Real models at the model's own speed (issue 20): a ResNet50 and a DeepLab-class model through ``tfsctl serve``.

Each model is made as a user makes it (ResNet50: ``keras.applications.ResNet50(weights=None)`` saved as
``.keras``; DeepLab: the sample checkpoint at 513x513), exported with the ``tfsctl export`` CLI and served with
``tfsctl serve`` in a child process on 127.0.0.1 (OS-chosen ports). Everything is measured one thing after another
(never two measured things at once), in rounds whose order turns, and every ratio is the median over rounds of the
ratio within a round, against an anchor measured in the same round:

- ``step``: the SavedModel in a TF1 session, as the server loads it (``tfsctl.core.loader.Loader``), batch 1,
  called in this process; the anchor of every latency ratio;
- ``grpc``: Predict over gRPC (float32 ``tensor_content``, pre-serialized), batch 1;
- ``rest_row`` / ``rest_columnar``: ``:predict`` with ``{"instances": ...}`` / ``{"inputs": ...}`` bodies written
  as TF Serving's clients write them (``json.dumps(array.tolist())``: float64 text for a float32 input), batch 1;
- batching: the best in-process images/s over batch sizes 1..``max_batch_size``, then ``--enable_batching`` at 4,
  8 and 16 concurrent gRPC clients (images/s, p50/p99, the batches' mean size), each level's ratio against the best
  batch measured again right after it, with each of two schedulers (``SCHEDULERS``, a server each): TF Serving's
  (tfsctl's default) and ``--batching_wait_for_answered_clients`` (tfsctl's opt-in for closed-loop clients);
- memory: the server's RSS before and at the peak of a burst of large requests (batch 32, accepted) and of
  rejected ones (over ``max_batch_size``), and where it settles (the goal: within 100 MiB of before);
- the mmap tax: the in-process step at batch 8 with glibc's defaults and with ``MALLOC_MMAP_THRESHOLD_=1048576``
  (what tfsctl used to set), each in a child process, alternating;
- ``v2``: tfsctl's Open Inference Protocol, v2 REST with the binary tensor extension and v2 gRPC ModelInfer
  (``v2_bench.py``'s requests), each over v1 gRPC and over the step of the same round;
- ``kserve``: KServe 0.21's Python server (``kserve_anchor.py``, its own interpreter from ``make bench-kserve-env``
  or ``--kserve-python``) on the same SavedModel: v1 REST (the same row body), v2 REST JSON, v2 REST binary and v2
  gRPC, tfsctl's and KServe's latency of each over the step, and tfsctl / KServe; skipped, with the reason, when no
  KServe interpreter is found;
- ``external``: h2load (Debian's nghttp2-client) as the client, a process of its own: the REST row body at
  concurrency 1 (tfsctl and KServe) over the step, and the batching levels over gRPC frames (images/s, p50/p99 from
  h2load's per-request log) over the best in-process batch, with each scheduler; skipped, saying so, without h2load;
- ``observability``: gRPC throughput at ``--obs-concurrency`` clients with nothing on, the access log, the request
  log (sampling 1.0) and tracing (OTLP to a receiver in this process), each its own server
  (``observability_bench.py``'s configurations), as ratios to "none" and to the in-process batch-1 rate.

``--skip`` takes any of those section names (latency, v2, kserve, batching, external, memory, observability, mmap).
Writes ``benchmarks/results/real_models.json`` and prints a table.

    python benchmarks/real_models.py [--quick] [--models resnet50,deeplab] [--rounds N] [--skip SECTIONS]
                                     [--kserve-python PATH] [--workdir DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


def _load_sibling(name: str):  # noqa: ANN202 - a benchmark module loaded from its file (benchmarks is no package)
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


ServerProcess = _load_sibling("serving_bench").ServerProcess  # tfsctl serve in a child process, ready, stopped
overhead = _load_sibling("overhead_bench")  # h2load and its gRPC frame, the KServe anchor's process
kserve_anchor = _load_sibling("kserve_anchor")  # KServe 0.21's Python server on the same SavedModel
v2_bench = _load_sibling("v2_bench")  # v2 (Open Inference Protocol) request builders
observability = _load_sibling("observability_bench")  # the access log, request log and tracing configurations

ROOT = Path(__file__).resolve().parent.parent
PREDICT = "/tensorflow.serving.PredictionService/Predict"
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
MIB = 1 << 20
GOALS = {"grpc": 1.05, "rest_row": 1.3, "rest_columnar": 1.3, "batching": 0.95}
# The batching servers: their names and the flags each adds to --enable_batching.
SCHEDULERS = {"tf_serving": [], "answered": ["--batching_wait_for_answered_clients"]}
SECTIONS = ("latency", "v2", "kserve", "batching", "external", "memory", "observability", "mmap")


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# --- models -------------------------------------------------------------------------------------------------------

class Model:
    """A model as the benchmark uses it: its export, one request's inputs, and how to make a batch of n."""

    def __init__(self, name: str, base: Path, signature: str, inputs: dict, output_filter: tuple[str, ...] = ()):
        self.name, self.base, self.signature = name, base, signature
        self.inputs, self.output_filter = inputs, output_filter

    def batch(self, n: int) -> dict:
        return {k: np.repeat(v, n, axis=0) for k, v in self.inputs.items()}


def _export(source: Path, base: Path, *extra: str) -> None:
    """``tfsctl export SOURCE BASE``, as a user runs it."""
    cmd = [sys.executable, "-m", "tfsctl", "export", str(source), str(base), "--json", *extra]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"tfsctl export failed: {out.stderr[-2000:]}")


def make_keras(kind: str, tmp: Path) -> Model:
    """``resnet50``: keras.applications.ResNet50(weights=None); ``tiny``: a small CNN (the smoke test's)."""
    import keras

    if kind == "resnet50":
        model = keras.applications.ResNet50(weights=None)
        size = 224
    else:
        size = 32
        model = keras.Sequential([keras.Input((size, size, 3)), keras.layers.Conv2D(8, 3, activation="relu"),
                                  keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10)])
    path = tmp / f"{kind}.keras"
    base = tmp / kind
    key = model.inputs[0].name
    if not (base / "1").is_dir():  # --workdir keeps the export of an earlier run
        model.save(path)
        _export(path, base)
    del model
    keras.backend.clear_session()
    rng = np.random.default_rng(0)
    x = rng.random((1, size, size, 3), dtype=np.float32)
    sig = Model(kind, base, "serving_default", {key: x})
    from tfsctl.core.loader import Loader

    servable = Loader(kind, 1, base / "1").load()  # the signature's real input key (export may rename it)
    (sig.inputs,) = [{k: x} for k in servable.signature("").inputs]
    servable.close()
    return sig


def make_deeplab(tmp: Path, size: int = 513) -> Model:
    """The sample DeepLab checkpoint exported at ``size`` x ``size`` (warmup at that size)."""
    base = tmp / "deeplab"
    if not (base / "1").is_dir():
        _export(ROOT / "samples/deeplab/checkpoint", base, "--warmup-size", f"{size}x{size}")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (1, size, size, 3), dtype=np.uint8)
    inputs = {"images": image, "height": np.array([size], np.int32), "width": np.array([size], np.int32)}
    return Model("deeplab", base, "predict_images", inputs)  # its only output: segmentation_map


# --- the server and clients ----------------------------------------------------------------------------------------

class Server(ServerProcess):
    """``tfsctl serve`` for one of the benchmark's models (serving_bench's child process on 127.0.0.1), with its
    resident memory."""

    def __init__(self, model: Model, extra: list[str], log: Path, env: dict[str, str] | None = None,
                 config_file: bool = False) -> None:
        """``config_file``: ``extra`` names the model (``--model_config_file``), not the base path flags."""
        super().__init__(None if config_file else model.base, model.name, extra, log, env)
        self.model = model

    def rss(self) -> int:
        from tfsctl.core.memory import rss_bytes

        return rss_bytes(self.proc.pid)


def grpc_body(model: Model, inputs: dict) -> bytes:
    from tensorflow_serving.apis import predict_pb2

    from tfsctl.serving.tensors import from_numpy

    req = predict_pb2.PredictRequest()
    req.model_spec.name = model.name
    req.model_spec.signature_name = model.signature
    for k, v in inputs.items():
        req.inputs[k].CopyFrom(from_numpy(v))
    req.output_filter.extend(model.output_filter)
    return req.SerializeToString()


def rest_bodies(model: Model) -> dict[str, bytes]:
    """Row and columnar bodies as TF Serving's clients write them: ``json.dumps`` of ``tolist()``."""
    inputs = model.inputs
    if len(inputs) == 1:
        (x,) = inputs.values()
        row = {"instances": x.tolist()}
    else:
        row = {"instances": [{k: v[0].tolist() for k, v in inputs.items()}]}
    col = {"inputs": {k: v.tolist() for k, v in inputs.items()}}
    bodies = {"rest_row": {**row, "signature_name": model.signature},
              "rest_columnar": {**col, "signature_name": model.signature}}
    return {k: json.dumps(v).encode() for k, v in bodies.items()}


class GrpcClient:
    """One channel calling ``method`` (Predict unless told) with pre-serialized requests."""

    def __init__(self, port: int, method: str = PREDICT) -> None:
        import grpc

        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[
            ("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)])
        self.call = self.channel.unary_unary(method)

    def __call__(self, body: bytes, timeout: float = 120.0) -> bytes:
        return self.call(body, timeout=timeout)

    def close(self) -> None:
        self.channel.close()


def v1_path(model: Model) -> str:
    return f"/v1/models/{model.name}:predict"


def v2_path(model: Model) -> str:
    return f"/v2/models/{model.name}/infer"


class _NoDelayConnection(http.client.HTTPConnection):
    """http.client with TCP_NODELAY, as urllib3 sets it for ``requests``, the client of TF Serving's
    ``resnet_client.py`` (on a 3.3 MB body here, the same latency as without it, as ``requests`` and as h2load)."""

    def connect(self) -> None:
        super().connect()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class RestClient:
    """One keep-alive HTTP/1.1 connection posting pre-encoded bodies to ``path`` (JSON unless other headers).

    A connection the server closed while it sat idle (uvicorn, KServe's server, closes them after 5 s; the other
    runs of a round take longer) is opened again and the request sent once more, as HTTP clients' pools do; the
    unmeasured first call of each measurement (``timed``) is the one that pays for it."""

    def __init__(self, port: int, path: str) -> None:
        self.conn = _NoDelayConnection("127.0.0.1", port, timeout=120)
        self.path = path

    def __call__(self, body: bytes, headers: dict[str, str] | None = None) -> bytes:
        headers = headers or {"Content-Type": "application/json"}
        try:
            self.conn.request("POST", self.path, body, headers)
            r = self.conn.getresponse()
        except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
            self.conn.close()
            self.conn.request("POST", self.path, body, headers)
            r = self.conn.getresponse()
        data = r.read()
        if r.status != 200:
            raise RuntimeError(f"REST {r.status}: {data[:300]!r}")
        return data


def timed(fn, calls: int) -> list[float]:
    fn()  # one unmeasured call: connection and caches
    out = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def closed_loop(call_factory, concurrency: int, seconds: float, batch: int) -> dict:
    """``concurrency`` threads, each with its own client, calling back to back for ``seconds``."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    start = threading.Barrier(concurrency + 1)
    stop_at = [0.0]

    def worker() -> None:
        call = call_factory()
        call()  # warm this client
        start.wait()
        mine = []
        while time.perf_counter() < stop_at[0]:
            t0 = time.perf_counter()
            try:
                call()
            except Exception:  # noqa: BLE001 - counted
                errors[0] += 1
                continue
            mine.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    stop_at[0] = time.perf_counter() + 1e9
    start.wait()
    t0 = time.perf_counter()
    stop_at[0] = t0 + seconds
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    latencies.sort()
    n = len(latencies)
    return {"concurrency": concurrency, "requests": n, "errors": errors[0],
            "images_per_s": n * batch / elapsed if elapsed else 0.0,
            "p50_ms": 1e3 * latencies[n // 2] if n else None,
            "p99_ms": 1e3 * latencies[min(n - 1, int(n * 0.99))] if n else None}


# --- the measurements ----------------------------------------------------------------------------------------------

def measure_rounds(runs: dict, rounds: int, calls: int, label: str) -> dict:
    """Each of ``runs`` (name: a call) timed, the median of ``calls`` calls, one after another, the order turning
    each round. The first run is the anchor: each other run's ratio to it within a round, then the median over
    rounds (the machine's speed drifts between rounds far more than within one)."""
    names = list(runs)
    medians: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            medians[name].append(1e3 * statistics.median(timed(runs[name], calls)))
        print(f"  {label} round {r + 1}/{rounds}: " + "  ".join(f"{n} {medians[n][-1]:.1f} ms" for n in names)
              + f"  (load {load_average()})")
    ratios = {n: [v / s for v, s in zip(medians[n], medians[names[0]], strict=True)] for n in names[1:]}
    return {"rounds_ms": medians, "median_ms": {n: statistics.median(v) for n, v in medians.items()},
            "ratios_per_round": ratios, "ratios": {n: statistics.median(v) for n, v in ratios.items()}}


def paired(result: dict, a: str, b: str) -> float:
    """The median over rounds of run ``a``'s latency over run ``b``'s in the same round (from measure_rounds)."""
    ms = result["rounds_ms"]
    return statistics.median(x / y for x, y in zip(ms[a], ms[b], strict=True))


def latency_rounds(model: Model, servable, server: Server, rounds: int, calls: int) -> dict:
    """Batch 1: the in-process step, gRPC, REST row and REST columnar, one after another, the order turning."""
    body = grpc_body(model, model.inputs)
    rest = rest_bodies(model)
    grpc_client, rest_client = GrpcClient(server.grpc_port), RestClient(server.rest_port, v1_path(model))
    feed = model.inputs
    runs = {
        "step": lambda: servable.run(model.signature, feed, model.output_filter),
        "grpc": lambda: grpc_client(body),
        "rest_row": lambda: rest_client(rest["rest_row"]),
        "rest_columnar": lambda: rest_client(rest["rest_columnar"]),
    }
    try:
        out = measure_rounds(runs, rounds, calls, "latency")
    finally:
        grpc_client.close()
    return {**out, "body_bytes": {"grpc": len(body), **{k: len(v) for k, v in rest.items()}}}


def v2_rounds(model: Model, servable, server: Server, outputs: list[str], rounds: int, calls: int) -> dict:
    """Batch 1, tfsctl's v2 (Open Inference Protocol) against its v1 gRPC and the step, one after another: v2 REST
    with the binary tensor extension and v2 gRPC ModelInfer with ``raw_input_contents`` (v2_bench.py's
    requests)."""
    body = grpc_body(model, model.inputs)
    v2_request = v2_bench.v2_grpc_request(model.name, model.inputs, outputs).SerializeToString()
    binary, headers = v2_bench.v2_binary_body(model.inputs, outputs)
    v1, v2 = GrpcClient(server.grpc_port), GrpcClient(server.grpc_port, MODEL_INFER)
    rest = RestClient(server.rest_port, v2_path(model))
    runs = {
        "step": lambda: servable.run(model.signature, model.inputs, model.output_filter),
        "grpc": lambda: v1(body),
        "v2_rest_binary": lambda: rest(binary, headers),
        "v2_grpc": lambda: v2(v2_request),
    }
    try:
        out = measure_rounds(runs, rounds, calls, "v2")
    finally:
        v1.close()
        v2.close()
    out["over_v1_grpc"] = {k: paired(out, k, "grpc") for k in ("v2_rest_binary", "v2_grpc")}
    print("  v2 / v1 gRPC: " + "  ".join(f"{k} {v:.2f}x" for k, v in out["over_v1_grpc"].items()))
    return out


KSERVE_PAIRS = ("rest_row", "v2_rest_json", "v2_rest_binary", "v2_grpc")


def kserve_rounds(model: Model, servable, server: Server, kserve, outputs: list[str], rounds: int,
                  calls: int) -> dict:
    """Batch 1, tfsctl against KServe 0.21's Python server on the same SavedModel, protocol by protocol (v1 REST
    with the row body, v2 REST JSON, v2 REST binary, v2 gRPC), with the step, one after another. A protocol KServe
    answers with an error is left out and named."""
    row = rest_bodies(model)["rest_row"]
    binary, headers = v2_bench.v2_binary_body(model.inputs, outputs)
    v2_json = v2_bench.v2_json_body(model.inputs, outputs)
    v2_request = v2_bench.v2_grpc_request(model.name, model.inputs, outputs).SerializeToString()
    clients = []
    runs = {"step": lambda: servable.run(model.signature, model.inputs, model.output_filter)}
    unsupported = {}
    for who, srv in (("tfsctl", server), ("kserve", kserve)):
        v1, v2 = RestClient(srv.rest_port, v1_path(model)), RestClient(srv.rest_port, v2_path(model))
        grpc_v2 = GrpcClient(srv.grpc_port, MODEL_INFER)
        clients.append(grpc_v2)
        calls_of = {"rest_row": lambda v1=v1: v1(row), "v2_rest_json": lambda v2=v2: v2(v2_json),
                    "v2_rest_binary": lambda v2=v2: v2(binary, headers), "v2_grpc": lambda g=grpc_v2: g(v2_request)}
        for proto, call in calls_of.items():
            try:
                call()  # served at all? (and warm)
            except Exception as e:  # noqa: BLE001 - reported, the protocol left out
                unsupported[f"{who}_{proto}"] = f"{type(e).__name__}: {str(e)[:200]}"
                print(f"  {who} {proto}: not served ({unsupported[f'{who}_{proto}']})")
                continue
            runs[f"{who}_{proto}"] = call
    try:
        out = measure_rounds(runs, rounds, calls, "kserve")
    finally:
        for c in clients:
            c.close()
    out["unsupported"] = unsupported
    out["tfsctl_over_kserve"] = {p: paired(out, f"tfsctl_{p}", f"kserve_{p}") for p in KSERVE_PAIRS
                                 if f"tfsctl_{p}" in runs and f"kserve_{p}" in runs}
    print("  tfsctl / KServe: " + "  ".join(f"{k} {v:.2f}x" for k, v in out["tfsctl_over_kserve"].items()))
    return out


def stages(model: Model, servable, rounds: int, calls: int) -> dict:
    """Where a batch-1 request's server time goes, each stage timed in this process as the server runs it (median
    ms): gRPC (parse the PredictRequest, decode its inputs, the step, encode and serialize the reply) and REST
    (parse and decode the row and columnar bodies, encode the reply). Served latency minus the stages' sum is the
    transport, the hand-offs between threads, and queueing."""
    from tensorflow_serving.apis import predict_pb2

    from tfsctl.core import inference
    from tfsctl.serving import json_codec
    from tfsctl.tensors import as_proto_field

    body = grpc_body(model, model.inputs)
    rest = rest_bodies(model)
    specs = servable.signature(model.signature).inputs
    request = predict_pb2.PredictRequest.FromString(body)
    spec = servable.signature(model.signature)
    inputs = inference.decode_inputs(servable, spec, request.inputs, None)
    outputs = servable.run(model.signature, inputs, model.output_filter)

    def encode_grpc() -> bytes:
        reply = predict_pb2.PredictResponse()
        for k, v in outputs.items():
            as_proto_field(v, reply.outputs[k])
        return reply.SerializeToString()

    parts = {
        "grpc_parse": lambda: predict_pb2.PredictRequest.FromString(body),
        "grpc_decode": lambda: inference.decode_inputs(servable, spec, request.inputs, None),
        "step": lambda: servable.run(model.signature, inputs, model.output_filter),
        "grpc_encode": encode_grpc,
        "rest_row_parse_decode": lambda: json_codec.decode_predict(
            json_codec.parse_predict_json(rest["rest_row"]), specs, model.signature),
        "rest_columnar_parse_decode": lambda: json_codec.decode_predict(
            json_codec.parse_predict_json(rest["rest_columnar"]), specs, model.signature),
        "rest_encode_row": lambda: json_codec.encode_predict(outputs, True),
    }
    if len(model.inputs) == 1:  # the floor: orjson's parse of the row body, then one array of the input's dtype
        import orjson

        (dtype,) = (v.dtype for v in model.inputs.values())
        parts["orjson_row_floor"] = lambda: np.asarray(orjson.loads(rest["rest_row"])["instances"], dtype)
    med: dict[str, list[float]] = {k: [] for k in parts}
    for r in range(rounds):
        for k in (list(parts) if r % 2 == 0 else list(parts)[::-1]):
            med[k].append(1e3 * statistics.median(timed(parts[k], calls)))
    out = {k: statistics.median(v) for k, v in med.items()}
    print("  stages (ms): " + "  ".join(f"{k} {v:.2f}" for k, v in out.items()))
    return out


def in_process_rate(model: Model, servable, n: int, seconds: float) -> float:
    feed = model.batch(n)
    servable.run(model.signature, feed, model.output_filter)
    done, t0 = 0, time.perf_counter()
    while done == 0 or time.perf_counter() - t0 < seconds:
        servable.run(model.signature, feed, model.output_filter)
        done += 1
    return done * n / (time.perf_counter() - t0)


METRICS_PATH = "/monitoring/prometheus/metrics"


def batch_counters(server: Server) -> dict[str, float] | None:
    """The batching server's batch-size and queue-wait histograms (sum, count) from its Prometheus page; None
    when the page or the series are missing."""
    try:
        c = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=10)
        c.request("GET", METRICS_PATH)
        text = c.getresponse().read().decode()
    except OSError:
        return None
    if "tfsctl_batch_size" not in text:
        return None  # no such metric (renamed?): the batch shape is not reported
    keys = ("tfsctl_batch_size_sum", "tfsctl_batch_size_count",
            "tfsctl_batch_queue_latency_seconds_sum", "tfsctl_batch_queue_latency_seconds_count")
    out = dict.fromkeys(keys, 0.0)  # a model's series appear with its first batch
    for line in text.splitlines():
        for key in keys:
            if line.startswith(key + "{") and f'model_name="{server.model.name}"' in line:
                out[key] = float(line.rsplit(" ", 1)[1])
    return out


def batch_shape(before: dict | None, after: dict | None) -> dict:
    """Batches run between two readings of :func:`batch_counters`: how many, their mean size, the mean wait."""
    if not before or not after:
        return {}
    batches = after["tfsctl_batch_size_count"] - before["tfsctl_batch_size_count"]
    waits = (after["tfsctl_batch_queue_latency_seconds_count"]
             - before["tfsctl_batch_queue_latency_seconds_count"])
    if batches <= 0:
        return {"batches": 0}
    return {"batches": int(batches),
            "mean_batch_size": (after["tfsctl_batch_size_sum"] - before["tfsctl_batch_size_sum"]) / batches,
            "mean_queue_ms": 1e3 * (after["tfsctl_batch_queue_latency_seconds_sum"]
                                    - before["tfsctl_batch_queue_latency_seconds_sum"]) / waits if waits else 0.0}


def in_process_sweep(model: Model, servable, max_batch: int, seconds: float, rounds: int) -> tuple[dict, int]:
    """In-process images/s at batch sizes 1..max_batch (median over rounds, the order turning) and the best size."""
    sizes = sorted({1, *[b for b in (2, 4, 8, 16, 32, 64) if b <= max_batch], max_batch})
    rates: dict[int, list[float]] = {n: [] for n in sizes}
    for r in range(rounds):
        for n in (sizes if r % 2 == 0 else sizes[::-1]):
            rates[n].append(in_process_rate(model, servable, n, seconds / 2))
    per_size = {n: statistics.median(v) for n, v in rates.items()}
    print("  in process, images/s by batch size: " + "  ".join(f"{n}: {v:.1f}" for n, v in per_size.items()))
    return per_size, max(per_size, key=per_size.get)


def batching_run(model: Model, servable, servers: dict[str, Server], max_batch: int, levels, seconds: float,
                 rounds: int) -> dict:
    """Best in-process images/s over batch sizes 1..max_batch; each batching server (``SCHEDULERS``) at each level,
    in turn within a round, each measurement's ratio against the best batch measured right after it. Each server
    sees the levels in the same order, so each carries its own history (a batcher's steady state depends on it)."""
    per_size, best = in_process_sweep(model, servable, max_batch, seconds, rounds)
    body = grpc_body(model, model.inputs)
    levels_out = []
    for c in levels:
        runs: dict[str, list] = {name: [] for name in servers}
        ratios: dict[str, list] = {name: [] for name in servers}
        for r in range(rounds):
            names = list(servers)
            for name in names[r % len(names):] + names[:r % len(names)]:
                server = servers[name]
                counters = batch_counters(server)
                res = closed_loop(lambda srv=server: (lambda cl: (lambda: cl(body)))(GrpcClient(srv.grpc_port)), c,
                                  seconds, 1)
                res.update(batch_shape(counters, batch_counters(server)))
                anchor = in_process_rate(model, servable, best, seconds / 2)
                runs[name].append(res)
                ratios[name].append(res["images_per_s"] / anchor)
                print(f"  batching c={c:>2} {name:<10}: {res['images_per_s']:6.1f} images/s  p50 {res['p50_ms']:.0f} "
                      f"ms  p99 {res['p99_ms']:.0f} ms  errors {res['errors']}  / best in process (batch {best}) "
                      f"{anchor:.1f} = {ratios[name][-1]:.2f}x  (load {load_average()})")
                if res.get("batches"):
                    print(f"             {res['batches']} batches, mean size {res['mean_batch_size']:.2f}, mean "
                          f"queue wait {res['mean_queue_ms']:.1f} ms (includes the warm-up calls)")
                    if c == best and res["mean_batch_size"] >= best - 0.5:  # each batch waits for its clients
                        res["way_back_ms"] = 1e3 * best * (1 / res["images_per_s"] - 1 / anchor)
                        print(f"             batch {best} every {1e3 * best / res['images_per_s']:.1f} ms against a "
                              f"{1e3 * best / anchor:.1f} ms step in process: {res['way_back_ms']:.1f} ms between "
                              "a batch's answers and the next batch (the clients' way back)")
        for name in servers:
            mid = sorted(runs[name], key=lambda x: x["images_per_s"])[len(runs[name]) // 2]
            levels_out.append({**mid, "scheduler": name, "ratio": statistics.median(ratios[name]),
                               "ratios_per_round": ratios[name]})
    return {"in_process_images_per_s": per_size, "best_batch": best, "levels": levels_out}


def find_h2load() -> str | None:
    """h2load (Debian: nghttp2-client), the load generator outside this interpreter; None when not installed."""
    return shutil.which("h2load")


def _percentile(sorted_ms: list[float], q: float) -> float | None:
    return sorted_ms[min(len(sorted_ms) - 1, int(len(sorted_ms) * q))] if sorted_ms else None


def external_rounds(model: Model, servable, server: Server, batched: dict[str, Server], kserve, best: int | None,
                    args, work: Path) -> dict:
    """The same measurements with h2load as the client (a process of its own, so the client shares no interpreter
    with the server or the anchor): REST row body at concurrency 1 against the step (tfsctl, and KServe when it
    runs), and the batching levels over gRPC frames against the best in-process batch measured right after each.
    Without h2load: reported as skipped, with how to install it."""
    if find_h2load() is None:
        note = "h2load not found (apt-get install nghttp2-client): the external load generator's rows are skipped"
        print(f"  {note}")
        return {"skipped": note}
    if best is None:
        _, best = in_process_sweep(model, servable, args.max_batch_size, args.seconds, args.rounds)
    row = work / f"{model.name}-rest-row.json"
    row.write_bytes(rest_bodies(model)["rest_row"])
    body = grpc_body(model, model.inputs)
    frame = work / f"{model.name}-grpc.bin"
    frame.write_bytes(overhead.grpc_frame(body))
    for srv in batched.values():  # a real call: h2load counts a gRPC error (HTTP 200 + grpc-status) as done
        GrpcClient(srv.grpc_port)(body)
    log = work / "h2load.log"
    json_h = ["content-type: application/json"]
    grpc_h = ["content-type: application/grpc", "te: trailers"]
    targets = [("tfsctl", server)] + ([("kserve", kserve)] if kserve is not None else [])

    def rest_c1(srv) -> float:  # noqa: ANN001 - a server with a rest_port
        url = f"http://127.0.0.1:{srv.rest_port}{v1_path(model)}"
        overhead.h2load(url, row, 1, 60.0, json_h, True, requests=1)  # warm
        res = overhead.h2load(url, row, 1, 600.0, json_h, True, requests=args.calls, log_file=log)
        if res["errors"] or not res["latencies_ms"]:
            raise RuntimeError(f"h2load to {url}: {res}")
        return statistics.median(res["latencies_ms"])

    names = ["step"] + [f"{who}_rest_row" for who, _ in targets]
    med: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            if name == "step":
                med[name].append(1e3 * statistics.median(
                    timed(lambda: servable.run(model.signature, model.inputs, model.output_filter), args.calls)))
            else:
                med[name].append(rest_c1(dict(targets)[name.split("_", 1)[0]]))
        print(f"  h2load REST row c=1, round {r + 1}/{args.rounds}: "
              + "  ".join(f"{n} {med[n][-1]:.1f} ms" for n in names) + f"  (load {load_average()})")
    rest = {"rounds_ms": med, "median_ms": {n: statistics.median(v) for n, v in med.items()},
            "ratios": {n: statistics.median(x / s for x, s in zip(med[n], med["step"], strict=True))
                       for n in names[1:]}}
    if kserve is not None:
        rest["tfsctl_over_kserve"] = statistics.median(
            a / b for a, b in zip(med["tfsctl_rest_row"], med["kserve_rest_row"], strict=True))
    levels = []
    for c in args.levels:
        runs: dict[str, list] = {name: [] for name in batched}
        ratios: dict[str, list] = {name: [] for name in batched}
        for r in range(args.rounds):
            names = list(batched)
            for name in names[r % len(names):] + names[:r % len(names)]:
                url = f"http://127.0.0.1:{batched[name].grpc_port}{PREDICT}"
                overhead.h2load(url, frame, c, 60.0, grpc_h, False, requests=c)  # warm: one request per connection
                counters = batch_counters(batched[name])
                res = overhead.h2load(url, frame, c, args.seconds, grpc_h, False, log_file=log)
                lat = res.pop("latencies_ms")
                res.update(concurrency=c, images_per_s=res["requests"] / res["seconds"],
                           p50_ms=_percentile(lat, 0.5), p99_ms=_percentile(lat, 0.99),
                           **batch_shape(counters, batch_counters(batched[name])))
                anchor = in_process_rate(model, servable, best, args.seconds / 2)
                runs[name].append(res)
                ratios[name].append(res["images_per_s"] / anchor)
                print(f"  h2load batching c={c:>2} {name:<10}: {res['images_per_s']:6.1f} images/s  p50 "
                      f"{res['p50_ms']:.0f} ms  p99 {res['p99_ms']:.0f} ms  errors {res['errors']}  / best in "
                      f"process (batch {best}) {anchor:.1f} = {ratios[name][-1]:.2f}x")
        for name in batched:
            mid = sorted(runs[name], key=lambda x: x["images_per_s"])[len(runs[name]) // 2]
            levels.append({**mid, "scheduler": name, "ratio": statistics.median(ratios[name]),
                           "ratios_per_round": ratios[name]})
    return {"generator": "h2load", "rest_c1": rest, "best_batch": best, "levels": levels}


OBSERVABILITY = ("none", "access_log", "log_1.0", "tracing")


def observability_rounds(model: Model, servable, args, work: Path, out_dir: Path) -> dict:
    """Throughput at ``--obs-concurrency`` gRPC clients with nothing on, the access log, the request log (sampling
    1.0) and tracing (OTLP to a receiver in this process that parses every export), each a ``tfsctl serve`` of its
    own (observability_bench.py's configurations), one after another in rounds whose order turns, with the
    in-process step's batch-1 rate measured in each round: each configuration's ratio to "none" and to that."""
    sink = observability.OtlpSink()
    home = work / f"observability-{model.name}"
    home.mkdir(parents=True, exist_ok=True)
    servers: dict[str, Server] = {}
    runs: dict[str, list[dict]] = {n: [] for n in OBSERVABILITY}
    anchors: list[float] = []
    body = grpc_body(model, model.inputs)
    c = args.obs_concurrency
    try:
        for name in OBSERVABILITY:
            extra, env = observability.serve_options(home, name, sink, model.name, model.base)
            servers[name] = Server(model, extra, out_dir / f"server_{model.name}_{name}.log", env, config_file=True)
        for srv in servers.values():
            srv.wait_ready()
        for r in range(args.rounds):
            anchors.append(in_process_rate(model, servable, 1, args.seconds / 2))
            order = list(OBSERVABILITY[r % len(OBSERVABILITY):] + OBSERVABILITY[:r % len(OBSERVABILITY)])
            for name in order:
                port = servers[name].grpc_port
                res = closed_loop(lambda port=port: (lambda cl: (lambda: cl(body)))(GrpcClient(port)), c,
                                  args.seconds, 1)
                runs[name].append(res)
            print(f"  observability c={c}, round {r + 1}/{args.rounds}: in process {anchors[-1]:.1f}/s  "
                  + "  ".join(f"{n} {runs[n][-1]['images_per_s']:.1f}/s" for n in OBSERVABILITY)
                  + f"  (load {load_average()})")
    finally:
        exits = {name: srv.stop() for name, srv in servers.items()}
    ratios = {}
    for name in OBSERVABILITY:
        pairs = list(zip(runs[name], runs["none"], anchors, strict=True))
        ratios[name] = {"throughput_vs_in_process": statistics.median(a["images_per_s"] / x for a, _, x in pairs)}
        if name != "none":
            ratios[name]["throughput_vs_none"] = statistics.median(
                a["images_per_s"] / b["images_per_s"] for a, b, _ in pairs)
            ratios[name]["p50_vs_none"] = statistics.median(a["p50_ms"] / b["p50_ms"] for a, b, _ in pairs)
    access = home / "access.log"
    evidence = {"spans_received": sink.spans, "access_log_lines": len(access.read_text().splitlines())
                if access.exists() else 0,
                "request_log_files": sum(1 for _ in (home / "logs").glob("log_1.0-*"))}
    sink.server.shutdown()
    print("  observability / none: " + "  ".join(f"{n} {r['throughput_vs_none']:.2f}x" for n, r in ratios.items()
                                                 if "throughput_vs_none" in r) + f"  ({evidence})")
    return {"concurrency": c, "runs": runs, "in_process_batch1_per_s": anchors, "ratios": ratios,
            "evidence": evidence, "server_exit": exits}


def _send_all(port_bodies: list[tuple[int, bytes]]) -> list[str]:
    """Send each (port, body) at once, one client each; the status code names."""
    results: list[str] = []

    def send(port: int, body: bytes) -> None:
        client = GrpcClient(port)
        try:
            client(body, timeout=300)
            results.append("OK")
        except Exception as e:  # noqa: BLE001 - the code is what counts
            code = e.code() if callable(getattr(e, "code", None)) else None
            results.append(code.name if code is not None else type(e).__name__)
        finally:
            client.close()

    threads = [threading.Thread(target=send, args=pb) for pb in port_bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sorted(results)


def _burst(server: Server, port_bodies: list[tuple[int, bytes]], settle_s: float) -> dict:
    """The server's RSS before a burst, its peak (sampled every 50 ms), and where it settles: the first sample
    within 100 MiB of before, else the last one after ``settle_s``."""
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append(server.rss())
            stop.wait(0.05)

    before = server.rss()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    codes = _send_all(port_bodies)
    burst_s = time.perf_counter() - t0
    deadline = time.monotonic() + settle_s
    settled = samples[-1]
    while time.monotonic() < deadline:
        settled = samples[-1]
        if settled - before <= 100 * MIB:
            break
        time.sleep(0.1)
    settle_time = time.perf_counter() - t0 - burst_s
    stop.set()
    sampler.join()
    return {"before_mib": before / MIB, "peak_mib": max(samples) / MIB, "settled_mib": settled / MIB,
            "settled_within_100_mib": settled - before <= 100 * MIB, "settle_seconds": settle_time,
            "burst_seconds": burst_s, "codes": sorted(set(codes))}


def memory_bursts(model: Model, server: Server, batching_server: Server, max_batch: int, large: int,
                  settle_s: float) -> dict:
    """Memory after bursts, on each server's own RSS:

    - ``rejected``: 8 concurrent requests of ``4 x max_batch_size`` images to the batching server, refused
      (INVALID_ARGUMENT) after they were received and parsed: the goal is RSS back within 100 MiB;
    - ``large`` twice: 4 concurrent accepted requests of ``large`` images to the plain server. The first run's
      settled RSS includes what TensorFlow keeps for a new batch size (oneDNN primitives, per-shape caches);
      the second shows whether repeating it keeps growing (the goal: within 100 MiB of the first's settled RSS).
    """
    oversize = grpc_body(model, model.batch(max_batch * 4))
    big = grpc_body(model, model.batch(large))
    out = {"rejected": _burst(batching_server, [(batching_server.grpc_port, oversize)] * 8, settle_s),
           "large_first": _burst(server, [(server.grpc_port, big)] * 4, settle_s),
           "large_again": _burst(server, [(server.grpc_port, big)] * 4, settle_s),
           "bytes": {"oversize": len(oversize), "large": len(big)}, "large_batch": large}
    for k in ("rejected", "large_first", "large_again"):
        b = out[k]
        print(f"  {k:<12} RSS before {b['before_mib']:.0f} MiB, peak {b['peak_mib']:.0f}, settled "
              f"{b['settled_mib']:.0f} after {b['settle_seconds']:.1f} s (codes {b['codes']})")
    return out


MMAP_CHILD = """
import os, resource, statistics, sys, time
import numpy as np
from tfsctl.core.loader import Loader
s = Loader("m", 1, sys.argv[1]).load()
key = list(s.signature(sys.argv[2]).inputs)[0]
x = np.random.default_rng(0).random((int(sys.argv[3]), *[int(d) for d in sys.argv[4].split("x")]), dtype=np.float32)
for _ in range(2):
    s.run(sys.argv[2], {key: x})
ts = []
r0, c0 = resource.getrusage(resource.RUSAGE_SELF), time.process_time()
for _ in range(int(sys.argv[5])):
    t = time.perf_counter(); s.run(sys.argv[2], {key: x}); ts.append(time.perf_counter() - t)
r1, n = resource.getrusage(resource.RUSAGE_SELF), len(ts)
print(1e3 * statistics.median(ts), 1e3 * (time.process_time() - c0) / n, (r1.ru_minflt - r0.ru_minflt) / n)
"""


def mmap_tax(model: Model, batch: int, rounds: int, calls: int) -> dict:
    """The in-process step at ``batch`` in a child with glibc's defaults and in one with a 1 MiB mmap threshold
    (tfsctl's old mallopt), alternating."""
    (x,) = model.inputs.values()
    shape = "x".join(str(d) for d in x.shape[1:])
    out: dict[str, list[float]] = {"glibc_default": [], "mmap_threshold_1mib": []}
    cpu: dict[str, list[float]] = {k: [] for k in out}
    faults: dict[str, list[float]] = {k: [] for k in out}
    env_base = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    for r in range(rounds):
        names = list(out) if r % 2 == 0 else list(out)[::-1]
        for name in names:
            env = dict(env_base, **({"MALLOC_MMAP_THRESHOLD_": str(MIB)} if name != "glibc_default" else {}))
            res = subprocess.run([sys.executable, "-c", MMAP_CHILD, str(model.base / "1"), model.signature,
                                  str(batch), shape, str(calls)], capture_output=True, text=True, env=env,
                                 timeout=900)
            if res.returncode != 0:
                raise RuntimeError(res.stderr[-2000:])
            wall, cpu_ms, minflt = (float(v) for v in res.stdout.split()[-3:])
            out[name].append(wall)
            cpu[name].append(cpu_ms)
            faults[name].append(minflt)
    med = {k: statistics.median(v) for k, v in out.items()}
    ratio = statistics.median(a / b for a, b in zip(out["mmap_threshold_1mib"], out["glibc_default"], strict=True))
    cpu_med = {k: statistics.median(v) for k, v in cpu.items()}
    fault_med = {k: statistics.median(v) for k, v in faults.items()}
    print(f"  step at batch {batch}: glibc defaults {med['glibc_default']:.0f} ms ({cpu_med['glibc_default']:.0f} ms "
          f"CPU, {fault_med['glibc_default']:.0f} page faults), 1 MiB mmap threshold {med['mmap_threshold_1mib']:.0f}"
          f" ms ({cpu_med['mmap_threshold_1mib']:.0f} ms CPU, {fault_med['mmap_threshold_1mib']:.0f} page faults): "
          f"{ratio:.2f}x")
    return {"batch": batch, "rounds_ms": out, "median_ms": med, "ratio_1mib_over_default": ratio,
            "cpu_ms_per_step": cpu_med, "page_faults_per_step": fault_med}


# --- the run -------------------------------------------------------------------------------------------------------

def run_model(model: Model, args, out_dir: Path, tmp: Path) -> dict:
    from tfsctl.core.loader import Loader

    report: dict = {"model": model.name, "inputs": {k: [list(v.shape), str(v.dtype)] for k, v in
                                                    model.inputs.items()}}
    servable = Loader(model.name, 1, model.base / "1").load()
    batching_file = tmp / f"{model.name}.batching"
    batching = {"max_batch_size": args.max_batch_size, "batch_timeout_micros": args.batch_timeout_micros,
                "num_batch_threads": args.num_batch_threads, "max_enqueued_batches": 100}
    batching_file.write_text("".join(f"{k} {{ value: {v} }}\n" for k, v in batching.items()))
    report["batching_parameters"] = batching
    outputs = list(servable.signature(model.signature).outputs)  # v2 requests ask for each output
    plain = Server(model, [], out_dir / f"server_{model.name}.log")
    monitoring = tmp / "monitoring.config"
    monitoring.write_text(f'prometheus_config {{ enable: true path: "{METRICS_PATH}" }}\n')
    batched = {name: Server(model, ["--enable_batching", "--batching_parameters_file", str(batching_file),
                                    "--monitoring_config_file", str(monitoring), *flags],
                            out_dir / f"server_{model.name}_batching_{name}.log")
               for name, flags in SCHEDULERS.items()}
    kserve = None
    kserve_python = args.kserve[0]
    if kserve_python and {"kserve", "external"} - args.skip:
        g, r = overhead.free_port(), overhead.free_port()
        cmd = kserve_anchor.command(kserve_python, model.name, model.base / "1", r, g, model.signature)
        kserve = overhead.Server(f"kserve-{model.name}", cmd, out_dir / f"server_{model.name}_kserve.log", g, r,
                                 project_path=False)
    try:
        plain.wait_ready()
        for srv in batched.values():
            srv.wait_ready()
        if kserve is not None:
            row = rest_bodies(model)["rest_row"]
            kserve.wait_ready(lambda: RestClient(kserve.rest_port, v1_path(model))(row) is not None)
        if "latency" not in args.skip:
            print(f"{model.name}: latency at batch 1 (load {load_average()})")
            report["latency"] = latency_rounds(model, servable, plain, args.rounds, args.calls)
            report["stages_ms"] = stages(model, servable, args.rounds, args.calls)
        if "v2" not in args.skip:
            print(f"{model.name}: v2 (Open Inference Protocol) at batch 1")
            report["v2"] = v2_rounds(model, servable, plain, outputs, args.rounds, args.calls)
        if "kserve" not in args.skip:
            print(f"{model.name}: tfsctl against KServe 0.21 at batch 1")
            if kserve is None:
                report["kserve"] = {"skipped": args.kserve[2]}
                print(f"  {args.kserve[2]}")
            else:
                report["kserve"] = kserve_rounds(model, servable, plain, kserve, outputs, args.rounds, args.calls)
                report["kserve"]["rss_mib"] = sum(m["rss"] for m in kserve.memory_mb())  # kB / 1024
        if "batching" not in args.skip:
            print(f"{model.name}: batching (max_batch_size {args.max_batch_size})")
            report["batching"] = batching_run(model, servable, batched, args.max_batch_size, args.levels,
                                              args.seconds, args.rounds)
        if "external" not in args.skip:
            print(f"{model.name}: the external load generator")
            best = report.get("batching", {}).get("best_batch")
            report["external"] = external_rounds(model, servable, plain, batched, kserve, best, args, tmp)
        if kserve is not None:
            kserve.stop()
            kserve = None
        if "memory" not in args.skip:
            print(f"{model.name}: memory")
            report["memory"] = memory_bursts(model, plain, batched["tf_serving"], args.max_batch_size, args.large_batch,
                                             args.settle_seconds)
    finally:
        report["server_exit"] = [plain.stop(), *(srv.stop() for srv in batched.values())]
        if kserve is not None:
            kserve.stop()
    try:
        if "observability" not in args.skip:
            print(f"{model.name}: observability on and off (c={args.obs_concurrency})")
            report["observability"] = observability_rounds(model, servable, args, tmp, out_dir)
    finally:
        servable.close()
    if "mmap" not in args.skip and len(model.inputs) == 1:
        print(f"{model.name}: the mmap tax")
        report["mmap_tax"] = mmap_tax(model, args.max_batch_size, max(2, args.rounds), max(3, args.calls // 3))
    return report


def print_table(results: list[dict]) -> None:
    print("\n=== real models (ratios: median over rounds of the ratio within a round) ===")
    print(f"{'model':<10} {'measure':<44} {'figure':>10} {'goal':>8}")
    for r in results:
        m = r["model"]
        lat = r.get("latency")
        if lat:
            print(f"{m:<10} {'in-process step, batch 1 (ms)':<44} {lat['median_ms']['step']:>10.1f}")
            for k, label in (("grpc", "gRPC latency / step"), ("rest_row", "REST row (float64 text) / step"),
                             ("rest_columnar", "REST columnar / step")):
                print(f"{m:<10} {label:<44} {lat['ratios'][k]:>9.2f}x {'<= ' + str(GOALS[k]):>8}")
        st = r.get("stages_ms")
        if st:
            grpc_sum = st["grpc_parse"] + st["grpc_decode"] + st["grpc_encode"]
            print(f"{m:<10} {'gRPC parse + decode + encode (ms)':<44} {grpc_sum:>10.2f}")
            print(f"{m:<10} {'REST row parse+decode (ms; orjson floor)':<44} {st['rest_row_parse_decode']:>10.2f}"
                  f"  ({st.get('orjson_row_floor', float('nan')):.2f})")
        for lv in r.get("batching", {}).get("levels", []):
            label = f"batching c={lv['concurrency']} {lv['scheduler']} / best (p50/p99)"
            shape = f", batch {lv['mean_batch_size']:.1f}" if lv.get("mean_batch_size") else ""
            print(f"{m:<10} {label:<44} {lv['ratio']:>9.2f}x {'>= 0.95':>8}  "
                  f"({lv['images_per_s']:.1f} img/s, {lv['p50_ms']:.0f}/{lv['p99_ms']:.0f}{shape})")
        for k, label in (("rejected", "RSS, rejected burst: before/peak/settled MiB"),
                         ("large_first", "RSS, large burst: before/peak/settled MiB"),
                         ("large_again", "RSS, large burst again: before/peak/settled")):
            mem = r.get("memory", {}).get(k)
            if mem:
                print(f"{m:<10} {label:<44} {mem['before_mib']:.0f} / {mem['peak_mib']:.0f} / "
                      f"{mem['settled_mib']:.0f}{'' if mem['settled_within_100_mib'] else '  (not within 100 MiB)'}")
        v2 = r.get("v2")
        if v2:
            for k, label in (("v2_rest_binary", "v2 REST binary / v1 gRPC"), ("v2_grpc", "v2 gRPC / v1 gRPC")):
                goal = v2_bench.GOALS[f"{k}/v1_grpc"]
                print(f"{m:<10} {label:<44} {v2['over_v1_grpc'][k]:>9.2f}x {'<= ' + str(goal):>8}  "
                      f"({v2['ratios'][k]:.2f}x the step)")
        ks = r.get("kserve")
        if ks and "skipped" in ks:
            print(f"{m:<10} {'KServe 0.21':<44} {'skipped':>10}  ({ks['skipped'][:60]}...)")
        elif ks:
            for p in KSERVE_PAIRS:
                if p in ks["tfsctl_over_kserve"]:
                    label = f"{p} tfsctl/KServe (KServe/step)"
                    print(f"{m:<10} {label:<44} {ks['tfsctl_over_kserve'][p]:>9.2f}x {'':>8}  "
                          f"({ks['ratios'][f'kserve_{p}']:.2f}x)")
            for name, why in ks.get("unsupported", {}).items():
                print(f"{m:<10} {name + ': not served':<44} {'':>10}  ({why[:50]})")
        ext = r.get("external")
        if ext and "skipped" in ext:
            print(f"{m:<10} {'h2load rows':<44} {'skipped':>10}  ({ext['skipped']})")
        elif ext:
            for k, v in ext["rest_c1"]["ratios"].items():
                print(f"{m:<10} {'h2load ' + k.replace('_', ' ') + ' c=1 / step':<44} {v:>9.2f}x "
                      f"{'<= 1.3' if k.startswith('tfsctl') else '':>8}")
            if "tfsctl_over_kserve" in ext["rest_c1"]:
                print(f"{m:<10} {'h2load REST row c=1: tfsctl / KServe':<44} "
                      f"{ext['rest_c1']['tfsctl_over_kserve']:>9.2f}x")
            for lv in ext["levels"]:
                label = f"h2load batching c={lv['concurrency']} {lv['scheduler']} / best"
                print(f"{m:<10} {label:<44} {lv['ratio']:>9.2f}x {'>= 0.95':>8}  "
                      f"({lv['images_per_s']:.1f} img/s, {lv['p50_ms']:.0f}/{lv['p99_ms']:.0f})")
        obs = r.get("observability")
        if obs:
            for name, rt in obs["ratios"].items():
                if "throughput_vs_none" in rt:
                    label = f"{name} on / off, throughput (c={obs['concurrency']})"
                    print(f"{m:<10} {label:<44} {rt['throughput_vs_none']:>9.2f}x {'':>8}  "
                          f"(p50 {rt['p50_vs_none']:.2f}x)")
            none = obs["ratios"]["none"]["throughput_vs_in_process"]
            label = f"served c={obs['concurrency']} / in-process batch 1 (img/s)"
            print(f"{m:<10} {label:<44} {none:>9.2f}x")
        tax = r.get("mmap_tax")
        if tax:
            label = f"step batch {tax['batch']}: 1 MiB mmap threshold / glibc"
            print(f"{m:<10} {label:<44} {tax['ratio_1mib_over_default']:>9.2f}x  (page faults per step "
                  f"{tax['page_faults_per_step']['mmap_threshold_1mib']:.0f} vs "
                  f"{tax['page_faults_per_step']['glibc_default']:.0f})")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, checked (an unknown ``--skip`` section is refused by name), with --quick's settings."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 round, few calls, short windows, levels 4 and 8")
    ap.add_argument("--models", default="resnet50,deeplab", help="comma list: resnet50, deeplab, tiny")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--calls", type=int, default=15, help="calls per latency measurement")
    ap.add_argument("--seconds", type=float, default=8.0, help="window per batching level")
    ap.add_argument("--levels", default="4,8,16")
    ap.add_argument("--max-batch-size", type=int, default=8)
    # Above the clients' way back (answer to next request in: 10-20 ms for ResNet50's 600 kB requests here), so
    # --batching_wait_for_answered_clients can wait for them; a sixth of a batch-8 step.
    ap.add_argument("--batch-timeout-micros", type=int, default=50000)
    ap.add_argument("--num-batch-threads", type=int, default=1)
    ap.add_argument("--large-batch", type=int, default=32, help="batch size of the memory burst's requests")
    ap.add_argument("--settle-seconds", type=float, default=20.0)
    ap.add_argument("--skip", default="", help="comma list: " + ", ".join(SECTIONS))
    ap.add_argument("--obs-concurrency", type=int, default=4, help="gRPC clients of the observability section")
    ap.add_argument("--kserve-python", default=None, metavar="PATH",
                    help="interpreter with kserve 0.21 and TensorFlow for the KServe anchor (default: "
                         "benchmarks/.kserve-venv/bin/python, made by `make bench-kserve-env`)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results"))
    ap.add_argument("--workdir", default=None, help="keep (and reuse) the models' exports here")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.calls, args.seconds = 1, 5, 4.0
        if args.levels == "4,8,16":
            args.levels = "4,8"
    args.levels = [int(c) for c in args.levels.split(",") if c]
    args.skip = set(filter(None, args.skip.split(",")))
    if args.skip - set(SECTIONS):
        ap.error(f"--skip: unknown section(s) {', '.join(sorted(args.skip - set(SECTIONS)))}; "
                 f"the sections: {', '.join(SECTIONS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.kserve = (None, {}, "skipped (--skip kserve,external)")
    if {"kserve", "external"} - args.skip:
        args.kserve = kserve_anchor.find_interpreter(args.kserve_python)
    print(f"KServe anchor: {args.kserve[1] or args.kserve[2]}; h2load: {find_h2load() or 'not installed'}")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "cpus": os.cpu_count(),
                    "load_average_start": load_average(), "quick": args.quick, "kserve": args.kserve[1],
                    "h2load": find_h2load(), "models": []}
    print(f"load average {report['load_average_start']} on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="tfsctl-real-") as tmp_name:
        tmp = Path(args.workdir or tmp_name)
        tmp.mkdir(parents=True, exist_ok=True)
        for name in filter(None, args.models.split(",")):
            print(f"making and exporting {name} ...")
            model = make_deeplab(tmp) if name == "deeplab" else make_keras(name, tmp)
            report["models"].append(run_model(model, args, out_dir, tmp))
    report["load_average_end"] = load_average()
    path = out_dir / "real_models.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report["models"])
    print(f"load average at the end {report['load_average_end']}; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
