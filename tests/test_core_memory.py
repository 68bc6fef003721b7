"""Repeated load/unload through Source + Manager frees every unloaded version and keeps resident memory bounded
(short run of the benchmark)."""

from __future__ import annotations

import gc
import importlib.util
import weakref
from pathlib import Path

from tfsctl.core.config import single_model_config
from tfsctl.core.manager import AVAILABLE, END, Manager
from tfsctl.testing import write_toy_model

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "load_unload_memory.py"


def test_load_unload_cycles_free_unloaded_versions_and_keep_rss_bounded(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("load_unload_memory", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    result = mod.run(cycles=6, every=2, workdir=tmp_path)
    assert result["cycles"] == 6 and len(result["samples_mb"]) == 4
    # Each of the 6 versions unloaded in the run is garbage: nothing (manager, loader, monitor) still holds it.
    assert result["unloaded_servables_alive"] == 0, result
    # Generous bound: a leak of a whole graph per cycle (several MiB each) would exceed it; noise stays far below.
    assert result["growth_mb"] < 64, result


def test_an_unloaded_servable_is_collected_and_the_serving_one_is_not(tmp_path: Path) -> None:
    base = tmp_path / "toy"
    write_toy_model(base, 1)
    m = Manager(poll_wait_seconds=0.05, freeze_gc=False)
    m.apply_config(single_model_config("toy", base))
    m.start()
    try:
        assert m.wait_for_state("toy", 1, {AVAILABLE}, 30)
        with m.handle("toy") as s:
            first = weakref.ref(s)
        del s
        write_toy_model(base, 2, scale=2.0)
        assert m.wait_for_state("toy", 1, {END}, 30)
        gc.collect()
        assert first() is None, gc.get_referrers(first())
        with m.handle("toy") as s:
            second = weakref.ref(s)
        del s
        gc.collect()
        assert second() is not None and second().version == 2  # the check can tell a live one
    finally:
        m.stop()


def test_large_blocks_are_mapped_and_given_back_when_freed(monkeypatch) -> None:
    """With the threshold pinned, a freed 16 MB block leaves RSS at once, every time (glibc's dynamic threshold
    would serve the second one from the heap and keep it); an operator's MALLOC_MMAP_THRESHOLD_ is left alone."""
    import sys

    import numpy as np
    import pytest

    from tfsctl.core.memory import map_large_allocations, rss_bytes

    if not sys.platform.startswith("linux"):
        pytest.skip("glibc and /proc only")
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert map_large_allocations() is False
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    assert map_large_allocations() is True
    for _ in range(3):  # a freed mmapped block would raise glibc's dynamic threshold: pinned, it stays mapped
        before = rss_bytes()
        block = np.ones(16 << 20, np.uint8)
        assert rss_bytes() - before > 15 << 20
        del block
        assert rss_bytes() - before < 4 << 20
