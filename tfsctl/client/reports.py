"""Bench reports: JSON, CSV and a PNG plot of the levels measured, each written atomically."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path

from tfsctl.client.files import write_atomic
from tfsctl.client.stats import LevelResult

CSV_FIELDS = (
    "concurrency", "requests", "errors", "duration_s", "throughput", "p50_ms", "p90_ms", "p99_ms", "mean_ms",
    "min_ms", "max_ms", "stable", "warmup_requests", "late_requests",
)


def _finite(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


def report_document(results: Sequence[LevelResult], meta: dict | None = None) -> dict:
    """``{"meta": {...}, "levels": [LevelResult...]}``, JSON-ready: NaN (no successful request) becomes None."""

    def clean(obj):
        if isinstance(obj, dict):
            return {k: clean(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [clean(v) for v in obj]
        return _finite(obj)

    return {"meta": meta or {}, "levels": [clean(r.to_dict()) for r in results]}


def write_json(path: str | Path, results: Sequence[LevelResult], meta: dict | None = None) -> Path:
    """:func:`report_document` as an indented JSON file (``--json-out``)."""
    doc = report_document(results, meta)
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
