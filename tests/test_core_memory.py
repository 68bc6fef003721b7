"""Repeated load/unload through Source + Manager frees every unloaded version and keeps resident memory bounded
(short run of the benchmark)."""

from __future__ import annotations

import gc
import importlib.util
import weakref
from pathlib import Path

from tfsctl.core.config import single_model_config
from tfsctl.core.manager import AVAILABLE, END
from tfsctl.core.server_core import ServerCore, ServerCoreOptions
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
    m = ServerCore(ServerCoreOptions(file_system_poll_wait_seconds=0.05, freeze_gc=False))
    m.apply_config(single_model_config("toy", base))
    m.start()
    try:
        assert m.manager.wait_for_state("toy", 1, {AVAILABLE}, 30)
        with m.handle("toy") as s:
            first = weakref.ref(s)
        del s
        write_toy_model(base, 2, scale=2.0)
        assert m.manager.wait_for_state("toy", 1, {END}, 30)
        gc.collect()
        assert first() is None, gc.get_referrers(first())
        with m.handle("toy") as s:
            second = weakref.ref(s)
        del s
        gc.collect()
        assert second() is not None and second().version == 2  # the check can tell a live one
    finally:
        m.stop()


def test_freed_large_blocks_of_a_pool_thread_go_back_to_the_os_on_trim() -> None:
    """After glibc's dynamic threshold has risen (a large block was freed once), later large blocks come from the
    allocating thread's arena and stay resident when freed; ``trim_now`` (what the Trimmer runs after large
    requests) gives them back from that thread's arena."""
    import sys
    import threading

    import numpy as np
    import pytest

    from tfsctl.core.memory import rss_bytes, trim_now

    if not sys.platform.startswith("linux"):
        pytest.skip("glibc and /proc only")
    size = 24 << 20
    kept: list[int] = []
    go, done = threading.Event(), threading.Event()

    def request_thread() -> None:  # as a pool thread: a large request's buffers, then the next request's
        np.ones(size, np.uint8)  # mapped, and freed: glibc raises its threshold above this size
        freed_then = rss_bytes()
        big = np.ones(size, np.uint8)  # from this thread's arena now
        guard = np.ones(size, np.uint8)  # after it, so the freed block is not the arena's top  # noqa: F841
        del big
        kept.append(rss_bytes() - freed_then)
        done.set()
        go.wait(30)  # the thread (and its arena) outlives the trim, as a pool thread does

    t = threading.Thread(target=request_thread)
    t.start()
    try:
        assert done.wait(30)
        before = rss_bytes()
        assert kept[0] > size // 2, kept  # glibc kept the freed block resident in the thread's arena: why we trim
        assert trim_now()
        assert before - rss_bytes() > size // 2, (kept, before - rss_bytes())
    finally:
        go.set()
        t.join()


SCRATCH = """
import resource, sys
import numpy as np
from tfsctl.core import memory
if sys.argv[1] == "steady":
    assert memory.steady_thresholds()
def request():  # a REST parse's scratch: several blocks of a few MB, freed together
    blocks = [np.ones(2 << 20, np.uint8) for _ in range(8)]
    del blocks
for _ in range(3):
    request()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    request()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 5)
"""


def test_steady_thresholds_keep_a_requests_freed_scratch_for_the_next() -> None:
    """With glibc's dynamic thresholds (following the largest block freed, 2 MB here), the 16 MB a request frees
    in several blocks is handed back at once and the next request page-faults all of it again (4,000 faults);
    ``steady_thresholds`` (set by ModelServer.start) keeps it for the next. In fresh processes: mallopt is
    process-wide."""
    import os
    import subprocess
    import sys

    import pytest

    if not sys.platform.startswith("linux"):
        pytest.skip("glibc only")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH")) if p)

    def faults(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", SCRATCH, mode], env=env, capture_output=True, text=True,
                             timeout=120, check=True)
        return int(out.stdout.split()[-1])

    pages = 16 * 1024 * 1024 // os.sysconf("SC_PAGE_SIZE")
    assert faults("glibc") > pages // 2  # the cost: why the thresholds are set
    assert faults("steady") < pages // 20
