"""``tfsctl bench``: a closed-loop load generator in the spirit of perf_analyzer, over gRPC or REST.

For each concurrency level N, N worker threads each run a closed loop (send, wait for the answer, send again) for a
warm-up period and then ``windows`` measurement windows of ``measure_s`` seconds. A request counts in the window in
which it completes; throughput is successful requests per second over the measured time and latency percentiles are
nearest-rank over the successful requests. Failed requests are counted by kind (gRPC code, HTTP status, exception),
never fatal; after a failure a worker pauses briefly so a dead server is not hammered in a hot loop.

Requests are built once per level and reused: gRPC sends the pre-serialised PredictRequest bytes and checks the first
answer decodes as a PredictResponse; REST POSTs a pre-encoded JSON body ("inputs" columnar or "instances" rows) on a
keep-alive connection per worker and checks the first answer's JSON. Every level is bounded by time (and optionally by
a request count) and stops by itself.

:func:`run_sweep` is the entry point shared with ``benchmarks/``; :func:`run_level` takes any sender factory, so an
in-process callable can be measured by the very same loop.
"""

from __future__ import annotations

import base64
import csv
import http.client
import io
import json
import math
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import grpc
import numpy as np

from tfsctl.client.files import write_atomic
from tfsctl.client.rpc import CHANNEL_OPTIONS, fill_model_spec, parse_target
from tfsctl.errors import ClientError

PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"
ERROR_PAUSE_S = 0.01
STABLE_TOLERANCE = 0.10  # windows within +-10% of their mean throughput count as stable (perf_analyzer's default)


# --- results ---


@dataclass
class WindowResult:
    """One measurement window: successful requests, errors, throughput and p50/p99 latency."""

    requests: int
    errors: int
    throughput: float
    p50_ms: float
    p99_ms: float


@dataclass
class LevelResult:
    """Everything measured at one concurrency level (latencies in ms, throughput in successful requests/s)."""

    concurrency: int
    requests: int
    errors: int
    duration_s: float
    throughput: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    stable: bool
    error_kinds: dict[str, int] = field(default_factory=dict)
    windows: list[WindowResult] = field(default_factory=list)
    warmup_requests: int = 0
    late_requests: int = 0  # completed after the last window (a window shorter than the latency shows up here)

    def to_dict(self) -> dict:
        return asdict(self)


CSV_FIELDS = (
    "concurrency", "requests", "errors", "duration_s", "throughput", "p50_ms", "p90_ms", "p99_ms", "mean_ms",
    "min_ms", "max_ms", "stable", "warmup_requests", "late_requests",
)


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values (NaN when empty)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100.0 * len(sorted_values)))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


# --- inputs ---

_DTYPES = {
    "float32": np.float32, "float": np.float32, "fp32": np.float32, "float64": np.float64, "double": np.float64,
    "float16": np.float16, "half": np.float16, "int8": np.int8, "int16": np.int16, "int32": np.int32,
    "int": np.int32, "int64": np.int64, "uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32,
    "uint64": np.uint64, "bool": np.bool_, "string": object, "bytes": object,
}


def parse_input_shape(spec: str) -> tuple[str, tuple[int, ...], np.dtype]:
    """``NAME:D1xD2x...:DTYPE`` (e.g. ``x:1x4:float32``) -> (name, shape, dtype)."""
    m = re.fullmatch(r"([^:]+):(\d+(?:[xX,]\d+)*)(?::(\w+))?", spec.strip())
    if not m:
        raise ClientError(f"bad --input-shape {spec!r}: expected NAME:D1xD2...:DTYPE, e.g. x:1x4:float32")
    name, dims, dtype_name = m.group(1), m.group(2), (m.group(3) or "float32").lower()
    if dtype_name not in _DTYPES:
        raise ClientError(f"bad --input-shape {spec!r}: unknown dtype {dtype_name!r} (one of {', '.join(_DTYPES)})")
    shape = tuple(int(d) for d in re.split(r"[xX,]", dims))
    if any(d <= 0 for d in shape):
        raise ClientError(f"bad --input-shape {spec!r}: every dimension must be positive")
    if math.prod(shape) > 64 * 1024 * 1024:
        raise ClientError(f"bad --input-shape {spec!r}: {math.prod(shape):,} elements is too large for a request")
    return name, shape, np.dtype(_DTYPES[dtype_name])


def synthetic_inputs(specs: Sequence[str], seed: int = 0) -> dict[str, np.ndarray]:
    """Random tensors for ``--input-shape`` specs: floats in [0, 1), ints in [0, 10), uint8 in [0, 256)."""
    rng = np.random.default_rng(seed)
    inputs: dict[str, np.ndarray] = {}
    for spec in specs:
        name, shape, dtype = parse_input_shape(spec)
        if name in inputs:
            raise ClientError(f"input '{name}' given twice in --input-shape")
        if dtype.kind == "f":
            arr = rng.random(shape).astype(dtype)
        elif dtype == np.uint8:
            arr = rng.integers(0, 256, shape, dtype=np.uint8)
        elif dtype.kind in "iu":
            arr = rng.integers(0, 10, shape).astype(dtype)
        elif dtype.kind == "b":
            arr = rng.random(shape) < 0.5
        else:
            arr = np.array([f"s{i}".encode() for i in range(math.prod(shape))], dtype=object).reshape(shape)
        inputs[name] = arr
    return inputs


def image_inputs(path: str | Path) -> dict[str, np.ndarray]:
    """The DeepLab sample's inputs for one image: ``images`` uint8 [1,H,W,3], ``height``/``width`` int32 [1]."""
    from tfsctl.client.predict import load_image

    img = load_image(path)
    h, w = img.shape[:2]
    return {"images": img[None], "height": np.array([h], np.int32), "width": np.array([w], np.int32)}


def _inputs_from_specs(specs: dict[str, tuple[str, Sequence[int] | None]], batch: int, seed: int = 0) -> dict:
    """Synthetic inputs from ``{name: (DT_* dtype name, dims or None)}``: unknown dims become ``batch`` (first) or 1."""
    wanted = []
    for name, (dtype, dims) in sorted(specs.items()):
        np_name = {"DT_FLOAT": "float32", "DT_DOUBLE": "float64", "DT_HALF": "float16", "DT_STRING": "string"}.get(
            dtype, dtype.removeprefix("DT_").lower()
        )
        if np_name not in _DTYPES:
            raise ClientError(f"input '{name}' has dtype {dtype}, which bench cannot synthesise; use --input-shape")
        shape = [batch] if dims is None else [(batch if i == 0 else 1) if d < 0 else d for i, d in enumerate(dims)]
        if not shape:  # a scalar input: TF Serving accepts a 0-d tensor, but our spec grammar needs a dim
            raise ClientError(f"input '{name}' is a scalar; give it with --input-shape")
        wanted.append(f"{name}:{'x'.join(str(d) for d in shape)}:{np_name}")
    return synthetic_inputs(wanted, seed)


def inputs_from_metadata(
    target: str,
    model: str,
    *,
    protocol: str = "grpc",
    signature: str = "",
    version: int | None = None,
    label: str | None = None,
    batch: int = 1,
    timeout: float = 10.0,
) -> dict[str, np.ndarray]:
    """Random inputs shaped after the signature's metadata (as perf_analyzer does when given no data).

    Unknown dimensions become ``batch`` for the first dimension and 1 elsewhere.
    """
    if batch < 1:
        raise ClientError(f"--batch-size must be >= 1, got {batch}")
    sig = signature or "serving_default"
    if protocol == "grpc":
        from tensorflow_serving.apis import get_model_metadata_pb2, prediction_service_pb2_grpc

        from tfsctl.client.rpc import open_channel, rpc_error

        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        fill_model_spec(request.model_spec, model, version=version, label=label)
        with open_channel(target) as channel:
            try:
                reply = prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata(
                    request, timeout=timeout
                )
            except grpc.RpcError as e:
                raise rpc_error(e, target, f"GetModelMetadata for model '{model}'", timeout) from None
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        reply.metadata["signature_def"].Unpack(sig_map)
        from tfsctl.serving.tensors import dtype_name, shape_of

        sigs = {
            key: {name: (dtype_name(info.dtype), shape_of(info.tensor_shape)) for name, info in sig_def.inputs.items()}
            for key, sig_def in sig_map.signature_def.items()
        }
    elif protocol == "rest":
        host, _, port = target.rpartition(":")
        path = rest_path(model, version, label).removesuffix(":predict") + "/metadata"
        conn = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=timeout)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            data = resp.read()
        except OSError as e:
            raise ClientError(f"cannot reach server at {target}: {e}") from None
        finally:
            conn.close()
        if resp.status != 200:
            text = data[:300].decode("utf-8", "replace")
            raise ClientError(f"GET {path} on {target} answered HTTP {resp.status}: {text}")
        try:
            sigs = {
                key: {
                    name: (
                        info.get("dtype", "DT_FLOAT"),
                        None
                        if info.get("tensor_shape", {}).get("unknown_rank")
                        else [int(d.get("size", -1)) for d in info.get("tensor_shape", {}).get("dim", [])],
                    )
                    for name, info in sig_def.get("inputs", {}).items()
                }
                for key, sig_def in json.loads(data)["metadata"]["signature_def"]["signature_def"].items()
            }
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ClientError(f"GET {path} on {target}: not a model metadata answer") from None
    else:
        raise ClientError(f"--protocol must be 'grpc' or 'rest', got {protocol!r}")
    if sig not in sigs:
        raise ClientError(f"model '{model}' has no signature '{sig}' (has: {', '.join(sorted(sigs))})")
    specs = sigs[sig]
    if not specs:
        raise ClientError(f"signature '{sig}' of model '{model}' has no inputs")
    return _inputs_from_specs(specs, batch)


# --- senders: one call = one request; raise on failure ---


class Sender(Protocol):
    """One worker's way of sending a request: ``sender()`` returns on success and raises on failure.

    ``close()`` is optional for :func:`run_level`: a plain function works as a sender too.
    """

    def __call__(self) -> None: ...

    def close(self) -> None: ...


SenderFactory = Callable[[], Sender]


class _GrpcSender:
    def __init__(self, channel: grpc.Channel, payload: bytes, timeout: float, owns_channel: bool) -> None:
        # No (de)serialisers: the request is serialised once and the reply is not decoded on the hot path.
        self._call = channel.unary_unary(PREDICT_METHOD, request_serializer=None, response_deserializer=None)
        self._channel, self._payload, self._timeout, self._owns = channel, payload, timeout, owns_channel
        self._checked = False

    def __call__(self) -> None:
        reply = self._call(self._payload, timeout=self._timeout)
        if not self._checked:
            from tensorflow_serving.apis import predict_pb2

            response = predict_pb2.PredictResponse.FromString(reply)
            if not response.outputs:
                raise RuntimeError("PredictResponse without outputs")
            self._checked = True

    def close(self) -> None:
        if self._owns:
            self._channel.close()


def grpc_sender_factory(
    target: str,
    model: str,
    inputs: dict[str, np.ndarray],
    *,
    signature: str = "",
    version: int | None = None,
    label: str | None = None,
    timeout: float = 10.0,
    channels: str = "shared",
    output_filter: Sequence[str] = (),
) -> tuple[SenderFactory, Callable[[], None]]:
    """Factory of gRPC Predict senders plus a cleanup; ``channels`` is ``shared`` (one channel) or ``per-thread``.

    ``per-thread`` gives each worker its own channel *and* TCP connection (local subchannel pool).
    ``output_filter`` asks for only those outputs (e.g. skip DeepLab's large ``probabilities``).
    """
    from tensorflow_serving.apis import predict_pb2

    from tfsctl.serving.tensors import from_numpy

    if channels not in ("shared", "per-thread"):
        raise ClientError(f"--grpc-channels must be 'shared' or 'per-thread', got {channels!r}")
    request = predict_pb2.PredictRequest()
    fill_model_spec(request.model_spec, model, signature, version, label)
    for name, arr in inputs.items():
        request.inputs[name].CopyFrom(from_numpy(arr))
    request.output_filter.extend(output_filter)
    payload = request.SerializeToString()
    shared = grpc.insecure_channel(target, options=CHANNEL_OPTIONS) if channels == "shared" else None

    def make() -> Sender:
        if shared is not None:
            return _GrpcSender(shared, payload, timeout, owns_channel=False)
        own = grpc.insecure_channel(target, options=[*CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)])
        return _GrpcSender(own, payload, timeout, owns_channel=True)

    def cleanup() -> None:
        if shared is not None:
            shared.close()

    return make, cleanup


def _json_value(arr: np.ndarray):
    """JSON-ready nested lists; bytes become TF Serving's ``{"b64": ...}``."""
    if arr.dtype.kind == "O":
        flat = [{"b64": base64.b64encode(v).decode("ascii")} for v in arr.reshape(-1).tolist()]
        return np.array(flat, dtype=object).reshape(arr.shape).tolist()
    if arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    return arr.tolist()


def rest_body(inputs: dict[str, np.ndarray], signature: str = "", fmt: str = "inputs") -> bytes:
    """TF Serving REST predict body: columnar ``{"inputs": {...}}`` or row ``{"instances": [...]}``."""
    body: dict = {}
    if signature:
        body["signature_name"] = signature
    if fmt == "inputs":
        body["inputs"] = {name: _json_value(arr) for name, arr in inputs.items()}
    elif fmt == "instances":
        sizes = {arr.shape[0] if arr.ndim else None for arr in inputs.values()}
        if len(sizes) != 1 or None in sizes:
            raise ClientError("--rest-format instances needs every input to share its first (batch) dimension")
        (n,) = sizes
        cols = {name: _json_value(arr) for name, arr in inputs.items()}
        if len(cols) == 1:
            body["instances"] = next(iter(cols.values()))
        else:
            body["instances"] = [{name: col[i] for name, col in cols.items()} for i in range(n)]
    else:
        raise ClientError(f"--rest-format must be 'inputs' or 'instances', got {fmt!r}")
    return json.dumps(body, separators=(",", ":")).encode("utf-8")


def rest_path(model: str, version: int | None = None, label: str | None = None) -> str:
    """``/v1/models/NAME[/versions/N|/labels/L]:predict``."""
    path = f"/v1/models/{model}"
    if version is not None:
        path += f"/versions/{version}"
    elif label is not None:
        path += f"/labels/{label}"
    return path + ":predict"


class RestError(Exception):
    """A REST predict answered with a non-200 status."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body[:200].decode('utf-8', 'replace')}")
        self.status = status


class _RestSender:
    def __init__(self, host: str, port: int, path: str, body: bytes, timeout: float) -> None:
        self._host, self._port, self._path, self._body, self._timeout = host, port, path, body, timeout
        self._headers = {"Content-Type": "application/json", "Connection": "keep-alive"}
        self._conn: http.client.HTTPConnection | None = None
        self._checked = False

    def __call__(self) -> None:
        if self._conn is None:
            self._conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
        try:
            self._conn.request("POST", self._path, body=self._body, headers=self._headers)
            resp = self._conn.getresponse()
            data = resp.read()
        except BaseException:
            self.close()  # the connection state is unknown: reconnect on the next request
            raise
        if resp.status != 200:
            if resp.will_close:
                self.close()
            raise RestError(resp.status, data)
        if resp.will_close:
            self.close()
        if not self._checked:
            answer = json.loads(data)
            if "outputs" not in answer and "predictions" not in answer:
                raise RuntimeError("REST answer has neither 'outputs' nor 'predictions'")
            self._checked = True

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def rest_sender_factory(
    target: str,
    model: str,
    inputs: dict[str, np.ndarray],
    *,
    signature: str = "",
    version: int | None = None,
    label: str | None = None,
    timeout: float = 10.0,
    fmt: str = "inputs",
) -> tuple[SenderFactory, Callable[[], None]]:
    """Factory of REST predict senders (one keep-alive HTTP/1.1 connection per worker) plus a no-op cleanup."""
    host, _, port = target.rpartition(":")
    host = host.strip("[]")
    body = rest_body(inputs, signature, fmt)
    path = rest_path(model, version, label)
    return (lambda: _RestSender(host, int(port), path, body, timeout)), (lambda: None)


def error_kind(exc: BaseException) -> str:
    """Short name for a failure: the gRPC code, ``HTTP 429``, or the exception class."""
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        return exc.code().name
    if isinstance(exc, RestError):
        return f"HTTP {exc.status}"
    return type(exc).__name__


# --- the closed loop ---


def run_level(
    make_sender: SenderFactory,
    concurrency: int,
    warmup_s: float,
    measure_s: float,
    *,
    windows: int = 1,
    max_requests: int | None = None,
    join_grace_s: float = 30.0,
) -> LevelResult:
    """Run ``concurrency`` closed-loop workers for ``warmup_s + windows * measure_s`` seconds and summarise.

    ``max_requests`` (if given) caps the requests the whole level sends, warm-up included.
    """
    if concurrency < 1:
        raise ClientError(f"concurrency must be >= 1, got {concurrency}")
    if warmup_s < 0 or measure_s <= 0 or windows < 1:
        raise ClientError("need warm-up >= 0 s, measurement > 0 s and at least one window")
    senders = [make_sender() for _ in range(concurrency)]
    records: list[list[tuple[float, float, str | None]]] = [[] for _ in range(concurrency)]
    budget = [max_requests if max_requests is not None else -1]
    budget_lock = threading.Lock()
    stop = threading.Event()  # set when the caller is interrupted: workers leave after their current request
    go = threading.Event()  # all workers start together, once every thread is running
    clock: dict[str, float] = {}

    def take() -> bool:
        if budget[0] < 0:
            return True
        with budget_lock:
            if budget[0] == 0:
                return False
            budget[0] -= 1
            return True

    def worker(i: int) -> None:
        send, out = senders[i], records[i]
        go.wait()
        end = clock["end"]
        while time.perf_counter() < end and not stop.is_set() and take():
            t0 = time.perf_counter()
            try:
                send()
                kind = None
            except Exception as e:  # noqa: BLE001 - every failure is data, not a crash
                kind = error_kind(e)
            t1 = time.perf_counter()
            out.append((t0, t1, kind))
            if kind is not None:
                time.sleep(ERROR_PAUSE_S)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True, name=f"bench-{i}") for i in range(concurrency)]
    try:
        for t in threads:
            t.start()
        clock["measure_start"] = time.perf_counter() + warmup_s
        clock["end"] = clock["measure_start"] + windows * measure_s
        go.set()
        deadline = clock["end"] + join_grace_s
        for t in threads:
            t.join(max(0.0, deadline - time.perf_counter()))
    finally:
        stop.set()
        clock.setdefault("end", 0.0)  # a failed start must not leave workers waiting forever
        go.set()
        for s in senders:
            close = getattr(s, "close", None)  # plain callables (in-process benchmarks) need no cleanup
            if close is not None:
                try:
                    close()
                except Exception:  # noqa: BLE001
                    pass
    return summarise(concurrency, [r for rs in records for r in rs], clock["measure_start"], measure_s, windows)


def summarise(
    concurrency: int,
    records: Sequence[tuple[float, float, str | None]],
    measure_start: float,
    measure_s: float,
    windows: int,
) -> LevelResult:
    """Bucket ``(start, end, error_kind)`` records into windows by completion time and compute the statistics."""
    per_window: list[list[float]] = [[] for _ in range(windows)]
    errors_per_window = [0] * windows
    kinds: dict[str, int] = {}
    warmup = late = 0
    for t0, t1, kind in records:
        k = math.floor((t1 - measure_start) / measure_s)
        if k < 0:
            warmup += 1
            continue
        if k >= windows:
            late += 1  # completed after the last window (a straggler): not measured
            continue
        if kind is None:
            per_window[k].append((t1 - t0) * 1e3)
        else:
            errors_per_window[k] += 1
            kinds[kind] = kinds.get(kind, 0) + 1
    window_results = []
    for lat, errs in zip(per_window, errors_per_window, strict=True):
        lat.sort()
        window_results.append(
            WindowResult(len(lat), errs, len(lat) / measure_s, percentile(lat, 50), percentile(lat, 99))
        )
    all_lat = sorted(v for w in per_window for v in w)
    duration = windows * measure_s
    rates = [w.throughput for w in window_results]
    mean_rate = sum(rates) / len(rates)
    stable = bool(all_lat) and all(abs(r - mean_rate) <= STABLE_TOLERANCE * mean_rate for r in rates)
    return LevelResult(
        concurrency=concurrency,
        requests=len(all_lat),
        errors=sum(errors_per_window),
        duration_s=duration,
        throughput=len(all_lat) / duration,
        p50_ms=percentile(all_lat, 50),
        p90_ms=percentile(all_lat, 90),
        p99_ms=percentile(all_lat, 99),
        mean_ms=float(np.mean(all_lat)) if all_lat else math.nan,
        min_ms=all_lat[0] if all_lat else math.nan,
        max_ms=all_lat[-1] if all_lat else math.nan,
        stable=stable,
        error_kinds=kinds,
        windows=window_results,
        warmup_requests=warmup,
        late_requests=late,
    )


def parse_levels(text: str | Sequence[int]) -> list[int]:
    """``"1,4,16,32"`` (or ``"1:8"`` for 1,2,4,8 doubling) -> sorted unique positive ints."""
    if not isinstance(text, str):
        levels = [int(v) for v in text]
    else:
        m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", text)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            levels = []
            v = max(lo, 1)
            while v <= hi:
                levels.append(v)
                v *= 2
        else:
            try:
                levels = [int(v) for v in text.split(",") if v.strip()]
            except ValueError:
                raise ClientError(f"bad --concurrency {text!r}: expected e.g. 1,4,16,32 or 1:32") from None
    if not levels or any(v < 1 for v in levels):
        raise ClientError(f"bad --concurrency {text!r}: levels must be positive integers")
    if max(levels) > 1024:
        raise ClientError(f"bad --concurrency {text!r}: at most 1024 workers")
    return sorted(set(levels))


def run_sweep(
    target: str,
    levels: Sequence[int],
    warmup_s: float,
    measure_s: float,
    *,
    inputs: dict[str, np.ndarray],
    model: str,
    protocol: str = "grpc",
    signature: str = "",
    version: int | None = None,
    label: str | None = None,
    windows: int = 1,
    timeout: float = 10.0,
    grpc_channels: str = "shared",
    rest_format: str = "inputs",
    max_requests: int | None = None,
    output_filter: Sequence[str] = (),
    on_level: Callable[[LevelResult], None] | None = None,
) -> list[LevelResult]:
    """Measure each concurrency level in turn against a TF Serving API server (``protocol`` grpc or rest).

    ``output_filter`` applies to gRPC only: TF Serving's REST API has no way to ask for a subset of outputs.
    """
    if protocol == "grpc":
        make, cleanup = grpc_sender_factory(
            parse_target(target, 8500), model, inputs, signature=signature, version=version, label=label,
            timeout=timeout, channels=grpc_channels, output_filter=output_filter,
        )
    elif protocol == "rest":
        make, cleanup = rest_sender_factory(
            parse_target(target, 8501), model, inputs, signature=signature, version=version, label=label,
            timeout=timeout, fmt=rest_format,
        )
    else:
        raise ClientError(f"--protocol must be 'grpc' or 'rest', got {protocol!r}")
    results = []
    try:
        for n in levels:
            result = run_level(make, n, warmup_s, measure_s, windows=windows, max_requests=max_requests)
            results.append(result)
            if on_level is not None:
                on_level(result)
    finally:
        cleanup()
    return results


# --- reports ---


def _finite(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


def write_json(path: str | Path, results: Sequence[LevelResult], meta: dict | None = None) -> Path:
    """``{"meta": {...}, "levels": [LevelResult...]}``; NaN (no successful request) becomes null."""

    def clean(obj):
        if isinstance(obj, dict):
            return {k: clean(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [clean(v) for v in obj]
        return _finite(obj)

    doc = {"meta": meta or {}, "levels": [clean(r.to_dict()) for r in results]}
    return write_atomic(path, (json.dumps(doc, indent=2) + "\n").encode("utf-8"))


def write_csv(path: str | Path, results: Sequence[LevelResult]) -> Path:
    """One row per level with :data:`CSV_FIELDS`."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in results:
        row = {k: _finite(v) for k, v in r.to_dict().items()}
        writer.writerow({k: ("" if row[k] is None else row[k]) for k in CSV_FIELDS})
    return write_atomic(path, buf.getvalue().encode("utf-8"))


def write_plot(path: str | Path, results: Sequence[LevelResult], title: str = "") -> Path:
    """PNG with throughput vs concurrency and p50/p90/p99 latency vs concurrency (matplotlib, Agg canvas)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    levels = [r.concurrency for r in results]
    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(levels, [r.throughput for r in results], "o-", color="tab:blue")
    ax1.set(xlabel="concurrency", ylabel="throughput (req/s)", title="throughput")
    for name, style in (("p50_ms", "o-"), ("p90_ms", "s--"), ("p99_ms", "^-")):
        ax2.plot(levels, [getattr(r, name) for r in results], style, label=name[:3])
    ax2.set(xlabel="concurrency", ylabel="latency (ms)", title="latency")
    ax2.legend()
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels, [str(v) for v in levels])
        ax.grid(True, alpha=0.3)
        ax.set_ylim(bottom=0)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return write_atomic(path, buf.getvalue())
