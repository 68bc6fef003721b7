"""Statistics of a bench level: per-window and per-level results, nearest-rank percentiles, stability.

A request counts in the window in which it completes; throughput is successful requests per second over the measured
time; latency percentiles are nearest-rank over the successful requests; a level is *stable* when every window's
throughput is within ``STABLE_TOLERANCE`` of their mean (perf_analyzer's rule).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

STABLE_TOLERANCE = 0.10  # windows within +-10% of their mean throughput count as stable (perf_analyzer's default)

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


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values (NaN when empty)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100.0 * len(sorted_values)))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


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
