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

import math
import re
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from tfsctl.client.bench_inputs import (  # noqa: F401 - re-exported: bench's public API in one place
    image_inputs,
    inputs_from_metadata,
    inputs_from_signature,
    parse_input_shape,
    signature_defs,
    synthetic_inputs,
)
from tfsctl.client.reports import CSV_FIELDS, report_document, write_csv, write_json, write_plot  # noqa: F401
from tfsctl.client.rpc import Endpoint, endpoint
from tfsctl.client.senders import (  # noqa: F401
    PREDICT_METHOD,
    RestError,
    Sender,
    SenderFactory,
    error_kind,
    grpc_sender_factory,
    rest_body,
    rest_path,
    rest_sender_factory,
)
from tfsctl.client.stats import STABLE_TOLERANCE, LevelResult, WindowResult, percentile, summarise  # noqa: F401
from tfsctl.errors import ClientError

ERROR_PAUSE_S = 0.01

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


# bench's --protocol: TF Serving's API (v1) over gRPC or REST, or the Open Inference Protocol (v2) over either;
# ``v1`` and ``v2`` alone mean their gRPC form.
PROTOCOLS = {"grpc": "grpc", "rest": "rest", "v1": "grpc", "v1-grpc": "grpc", "v1-rest": "rest",
             "v2": "v2-grpc", "v2-grpc": "v2-grpc", "v2-rest": "v2-rest"}


def wire_protocol(protocol: str) -> str:
    """``grpc``, ``rest``, ``v2-grpc`` or ``v2-rest`` for any accepted ``--protocol`` value."""
    wire = PROTOCOLS.get(protocol)
    if wire is None:
        raise ClientError(f"--protocol must be grpc or rest (TF Serving's API), v2-grpc or v2-rest (the Open "
                          f"Inference Protocol), or v1 / v2 for their gRPC form, got {protocol!r}")
    return wire


def compared_protocol(protocol: str, compare: str) -> str:
    """``--compare``'s protocol: another one on the same port (gRPC with gRPC, REST with REST)."""
    other = wire_protocol(compare)
    if other.endswith("rest") != protocol.endswith("rest"):
        raise ClientError(f"--compare {compare} needs the other port: compare grpc with v2-grpc, rest with v2-rest")
    if other == protocol:
        raise ClientError(f"--compare {compare} is the protocol already swept")
    return other


def compare_levels(results: Sequence[LevelResult], compared: Sequence[LevelResult]) -> list[dict]:
    """Per concurrency level: both throughputs, and the compared protocol's throughput and p50 relative to the
    first's (None where either had no successful request)."""
    def ratio(x: float, y: float) -> float | None:
        value = x / y if y else float("nan")
        return value if math.isfinite(value) else None

    return [{"concurrency": a.concurrency, "rps": a.throughput, "compared_rps": c.throughput,
             "throughput_ratio": ratio(c.throughput, a.throughput), "p50_ratio": ratio(c.p50_ms, a.p50_ms)}
            for a, c in zip(results, compared, strict=True)]


def run_sweep(
    target: str | Endpoint,
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
    replay: Sequence[Any] | None = None,
) -> list[LevelResult]:
    """Measure each concurrency level in turn against a server (``protocol``: TF Serving's API over ``grpc`` or
    ``rest``, or the Open Inference Protocol over ``v2-grpc`` or ``v2-rest``, see :data:`PROTOCOLS`).

    ``output_filter`` applies to gRPC only: TF Serving's REST API has no way to ask for a subset of outputs.
    ``replay`` (records of :func:`tfsctl.client.replay.load_requests`) sends logged requests instead of ``inputs``.
    """
    protocol = wire_protocol(protocol)
    v2 = protocol.startswith("v2-")
    if replay is not None:
        from tfsctl.client.replay import replay_factory

        if v2:
            raise ClientError("--requests-from replays TF Serving API requests: use --protocol grpc or rest")
        make, cleanup = replay_factory(target, list(replay), protocol=protocol, timeout=timeout,
                                       channels=grpc_channels)
    elif protocol in ("grpc", "v2-grpc"):
        make, cleanup = grpc_sender_factory(
            endpoint(target, default_port=8500), model, inputs, signature=signature, version=version, label=label,
            timeout=timeout, channels=grpc_channels, output_filter=output_filter, v2=v2,
        )
    else:
        make, cleanup = rest_sender_factory(
            str(endpoint(target, default_port=8501)), model, inputs, signature=signature, version=version, label=label,
            timeout=timeout, fmt=rest_format, v2=v2,
        )
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
