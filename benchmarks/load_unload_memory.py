"""Resident memory across repeated load/unload of model versions (issue 5: "50 cycles keep RSS bounded").

Each cycle goes through the real path: a new toy version is exported into the base path, the Source sees it,
the Manager (built by a ServerCore) loads it (availability-preserving), serves a request from it, unloads the
previous version, and the old directory is deleted. RSS is sampled after the first cycle (the one-off cost of
TensorFlow's runtime and the first graph) and then every ``--every`` cycles, so steady growth per cycle shows as
a slope.

    .venv/bin/python benchmarks/load_unload_memory.py --cycles 50
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
import time
import weakref
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from tfsctl.core.config import single_model_config  # noqa: E402
from tfsctl.core.loader import rss_bytes  # noqa: E402
from tfsctl.core.manager import AVAILABLE, END  # noqa: E402
from tfsctl.core.server_core import ServerCore, ServerCoreOptions  # noqa: E402
from tfsctl.testing import write_toy_model  # noqa: E402

MB = 1024 * 1024


def _scale(version: int) -> float:
    """Three alternating scales: each answer proves which version served it, and only three models get saved."""
    return float(version % 3 + 1)


def _wait(m: ServerCore, version: int, state: int, timeout: float = 60.0) -> None:
    if not m.manager.wait_for_state("toy", version, {state}, timeout):
        raise RuntimeError(f"version {version} did not reach state {state}: {m.version_states('toy')}")


def run(cycles: int, every: int = 10, workdir: Path | None = None) -> dict:
    """Run ``cycles`` load/unload cycles; returns RSS samples in bytes and the growth after warm-up."""
    root = Path(workdir or tempfile.mkdtemp(prefix="tfsctl-mem-"))
    base = root / "toy"
    x = np.ones((8, 4), np.float32)
    write_toy_model(base, 1, scale=_scale(1))
    gc.collect()
    rss_start = rss_bytes()  # TensorFlow imported, nothing loaded yet
    m = ServerCore(ServerCoreOptions(file_system_poll_wait_seconds=0.02, load_retry_interval_seconds=0.05))
    m.apply_config(single_model_config("toy", base))
    m.start()
    samples: list[tuple[int, int]] = []
    unloaded: list[weakref.ref] = []  # every unloaded version's Servable: each must be garbage once collected
    started = time.monotonic()
    try:
        _wait(m, 1, AVAILABLE)
        for cycle in range(1, cycles + 1):
            new = cycle + 1
            with m.handle("toy") as old:
                unloaded.append(weakref.ref(old))
            del old
            write_toy_model(base, new, scale=_scale(new))
            _wait(m, new, AVAILABLE)
            _wait(m, new - 1, END)
            shutil.rmtree(base / str(new - 1))
            with m.handle("toy") as s:
                y = s.run("", {"x": x})["y"]
                assert s.version == new and float(y[0, 0]) == _scale(new)
            if cycle == 1 or cycle % every == 0 or cycle == cycles:
                gc.collect()
                samples.append((cycle, rss_bytes()))
    finally:
        m.stop(timeout=30)
        if workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    gc.collect()
    first, last = samples[0][1], samples[-1][1]
    return {
        "unloaded_servables_alive": sum(ref() is not None for ref in unloaded),
        "cycles": cycles,
        "seconds": round(time.monotonic() - started, 1),
        "rss_before_first_load_mb": round(rss_start / MB, 1),
        "rss_after_first_cycle_mb": round(first / MB, 1),
        "rss_after_last_cycle_mb": round(last / MB, 1),
        "growth_mb": round((last - first) / MB, 1),
        "growth_per_cycle_kb": round((last - first) / 1024 / max(1, cycles - 1), 1),
        "samples_mb": {c: round(r / MB, 1) for c, r in samples},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=50)
    ap.add_argument("--every", type=int, default=10, help="sample RSS every N cycles")
    ap.add_argument("--json", action="store_true", help="print the result as JSON only")
    args = ap.parse_args(argv)
    result = run(args.cycles, args.every)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['cycles']} load/unload cycles in {result['seconds']} s")
        print(f"RSS before the first load: {result['rss_before_first_load_mb']} MiB")
        print(f"RSS after cycle 1: {result['rss_after_first_cycle_mb']} MiB")
        print(f"RSS after cycle {result['cycles']}: {result['rss_after_last_cycle_mb']} MiB")
        print(f"growth: {result['growth_mb']} MiB ({result['growth_per_cycle_kb']} KiB per cycle)")
        print(f"unloaded versions still in memory: {result['unloaded_servables_alive']}")
        print("samples (cycle: MiB):", ", ".join(f"{c}: {r}" for c, r in result["samples_mb"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
