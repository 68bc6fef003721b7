"""Smoke run of benchmarks/real_models.py on a tiny Keras CNN: the real-model benchmark's whole path (Keras file,
``tfsctl export``, ``tfsctl serve`` over gRPC and REST, batching, the memory burst) runs and reports sane figures.
The ResNet50 figures themselves come from ``make bench-real``, never from the test suite."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "real_models.py"


def test_real_models_benchmark_runs_end_to_end_on_a_tiny_model(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("real_models", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--quick", "--models", "tiny", "--levels", "4", "--seconds", "1", "--calls", "3",
                     "--large-batch", "4", "--settle-seconds", "10", "--skip", "mmap",
                     "--out", str(tmp_path)]) == 0
    (report,) = json.loads((tmp_path / "real_models.json").read_text())["models"]
    lat = report["latency"]
    assert set(lat["ratios"]) == {"grpc", "rest_row", "rest_columnar"}
    assert all(r > 0 for r in lat["ratios"].values()), lat
    assert lat["body_bytes"]["rest_row"] > lat["body_bytes"]["grpc"]  # float64 text against float32 bytes
    assert report["stages_ms"]["step"] > 0 and report["stages_ms"]["rest_row_parse_decode"] > 0
    (level,) = report["batching"]["levels"]
    assert level["concurrency"] == 4 and level["requests"] > 0 and level["errors"] == 0, level
    assert level["batches"] > 0 and 1 <= level["mean_batch_size"] <= 8, level  # read from the server's metrics
    mem = report["memory"]
    # Over-max_batch_size requests are refused, large ones served; both servers keep serving (exit 0 on SIGTERM).
    assert mem["rejected"]["codes"] == ["INVALID_ARGUMENT"], mem
    assert mem["large_again"]["codes"] == ["OK"], mem
    assert mem["rejected"]["settled_within_100_mib"], mem
    assert report["server_exit"] == [0, 0]
