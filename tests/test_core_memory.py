"""Repeated load/unload through Source + Manager keeps resident memory bounded (short run of the benchmark)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "load_unload_memory.py"


def test_load_unload_cycles_keep_rss_bounded(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("load_unload_memory", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    result = mod.run(cycles=6, every=2, workdir=tmp_path)
    assert result["cycles"] == 6 and len(result["samples_mb"]) == 4
    # Generous bound: a leak of a whole graph per cycle (several MiB each) would exceed it; noise stays far below.
    assert result["growth_mb"] < 64, result
