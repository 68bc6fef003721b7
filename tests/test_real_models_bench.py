"""Smoke run of benchmarks/real_models.py on a tiny Keras CNN: the real-model benchmark's whole path (Keras file,
``tfsctl export``, ``tfsctl serve`` over gRPC, REST and v2, KServe's server on the same SavedModel, h2load as the
client, batching, the memory burst, the access log, request log and tracing on and off) runs and reports sane
figures. The ResNet50 figures themselves come from ``make bench-real``, never from the test suite.

KServe's anchor needs its own interpreter (``make bench-kserve-env``) and h2load Debian's nghttp2-client: where one
is missing, its section must say so (and how to get it) instead of failing or printing nothing."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "real_models.py"


def _bench():  # noqa: ANN202 - the benchmark module, loaded from its file
    spec = importlib.util.spec_from_file_location("real_models", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["real_models"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.timeout(480)
def test_real_models_benchmark_runs_end_to_end_on_a_tiny_model(tmp_path: Path) -> None:
    mod = _bench()
    assert mod.main(["--quick", "--models", "tiny", "--levels", "4", "--seconds", "1", "--calls", "3",
                     "--large-batch", "4", "--settle-seconds", "10", "--skip", "mmap", "--obs-concurrency", "2",
                     "--out", str(tmp_path)]) == 0
    top = json.loads((tmp_path / "real_models.json").read_text())
    (report,) = top["models"]
    lat = report["latency"]
    assert set(lat["ratios"]) == {"grpc", "rest_row", "rest_columnar"}
    assert all(r > 0 for r in lat["ratios"].values()), lat
    assert lat["body_bytes"]["rest_row"] > lat["body_bytes"]["grpc"]  # float64 text against float32 bytes
    assert report["stages_ms"]["step"] > 0 and report["stages_ms"]["rest_row_parse_decode"] > 0
    levels = report["batching"]["levels"]  # one per scheduler, each its own server
    assert [lv["scheduler"] for lv in levels] == list(mod.SCHEDULERS), levels
    for level in levels:
        assert level["concurrency"] == 4 and level["requests"] > 0 and level["errors"] == 0, level
        assert level["batches"] > 0 and 1 <= level["mean_batch_size"] <= 8, level  # read from the server's metrics
    mem = report["memory"]
    # Over-max_batch_size requests are refused, large ones served; both servers keep serving (exit 0 on SIGTERM).
    assert mem["rejected"]["codes"] == ["INVALID_ARGUMENT"], mem
    assert mem["large_again"]["codes"] == ["OK"], mem
    assert mem["rejected"]["settled_within_100_mib"], mem
    assert report["server_exit"] == [0] * (1 + len(mod.SCHEDULERS))

    v2 = report["v2"]  # tfsctl's v2 REST (binary) and v2 gRPC against its v1 gRPC, in the same rounds
    assert set(v2["over_v1_grpc"]) == {"v2_rest_binary", "v2_grpc"}
    assert all(r > 0 for r in (*v2["over_v1_grpc"].values(), *v2["ratios"].values())), v2

    ks = report["kserve"]
    if top["kserve"]:  # KServe's interpreter was found: every protocol is served by both and measured
        assert ks["unsupported"] == {}, ks
        assert set(ks["tfsctl_over_kserve"]) == set(mod.KSERVE_PAIRS), ks
        assert all(r > 0 for r in ks["tfsctl_over_kserve"].values()) and ks["rss_mib"] > 50, ks
    else:
        assert "make bench-kserve-env" in ks["skipped"], ks

    ext = report["external"]
    if shutil.which("h2load"):
        assert ext["generator"] == "h2load"
        assert {"tfsctl_rest_row"} <= set(ext["rest_c1"]["ratios"]), ext
        assert ("kserve_rest_row" in ext["rest_c1"]["ratios"]) == bool(top["kserve"]), ext
        assert [lv["scheduler"] for lv in ext["levels"]] == list(mod.SCHEDULERS), ext["levels"]
        for h2_level in ext["levels"]:
            assert h2_level["requests"] > 0 and h2_level["errors"] == 0 and h2_level["p50_ms"] > 0, h2_level
            assert h2_level["batches"] > 0, h2_level  # the server formed batches from h2load's requests
    else:
        assert "nghttp2-client" in ext["skipped"], ext

    obs = report["observability"]
    assert set(obs["ratios"]) == set(mod.OBSERVABILITY)
    assert all(r["throughput_vs_none"] > 0 for k, r in obs["ratios"].items() if k != "none"), obs
    # Each configuration was really on: spans reached the receiver, the access log and request log were written.
    ev = obs["evidence"]
    assert ev["spans_received"] > 0 and ev["access_log_lines"] > 0 and ev["request_log_files"] > 0, ev
    assert set(obs["server_exit"].values()) == {0}, obs


def test_without_h2load_the_external_section_says_so(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture) -> None:
    mod = _bench()
    monkeypatch.setattr(mod, "find_h2load", lambda: None)
    out = mod.external_rounds(None, None, None, None, None, None, None, Path("/nonexistent"))
    assert "apt-get install nghttp2-client" in out["skipped"]
    assert out["skipped"] in capsys.readouterr().out


def test_skip_refuses_an_unknown_section(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        _bench().parse_args(["--skip", "latency,obsrvability"])
    assert "obsrvability" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load not installed (apt-get install nghttp2-client)")
def test_h2load_latencies_are_each_runs_own(tmp_path: Path) -> None:
    """h2load's per-request log gives each run's own latencies, however many runs share the log file."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    body, log = tmp_path / "body.json", tmp_path / "h2load.log"
    body.write_bytes(b'{"instances": [[1, 2, 3, 4]]}')
    h2load = _bench().overhead.h2load
    url = f"http://127.0.0.1:{server.server_address[1]}/v1/models/m:predict"
    try:
        for n in (3, 5):
            res = h2load(url, body, 1, 30.0, ["content-type: application/json"], True, requests=n, log_file=log)
            assert res["requests"] == n and len(res["latencies_ms"]) == n, res
    finally:
        server.shutdown()
