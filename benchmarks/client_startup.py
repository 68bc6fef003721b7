"""Wall time of ``tfsctl predict`` on the sample against a warm local server, without and with the TF runtime.

One run: exports the sample DeepLab checkpoint into a temp dir, starts ``tfsctl serve`` on free ports (a separate
process), waits until it is ready and warm, then times fresh ``tfsctl predict`` processes end to end (process start,
imports, metadata, predict, rendering the PNG, exit):

- ``predict``: the command as users run it (the client never imports the TensorFlow runtime);
- ``predict + TF runtime``: the same command in a process that imports ``tensorflow`` first, which is what every
  ``tfsctl predict`` paid before the client loaded the TF Serving protos without it.

Prints medians, the ratio, and whether the 0.8 s goal is met; ``--json FILE`` writes the figures.

    python benchmarks/client_startup.py [--runs 7] [--image samples/images/shapes_256.png] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOAL_S = 0.8
WITH_TF = "import sys, tensorflow; from tfsctl.cli import main; sys.argv[0] = 'tfsctl'; main()"
PLAIN = "import sys; from tfsctl.cli import main; sys.argv[0] = 'tfsctl'; main()"


def _env() -> dict[str, str]:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT)}


CPU: list[float] = []  # CPU seconds (user + system) of each timed process, in order


def _time(code: str, args: list[str]) -> float:
    """Wall seconds of one fresh process; its CPU seconds go to CPU (less sensitive to a busy machine)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=_env(),
                         timeout=120)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    if res.returncode != 0:
        raise SystemExit(f"predict failed ({res.returncode}): {res.stderr.strip()}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--image", default=str(ROOT / "samples/images/shapes_256.png"))
    ap.add_argument("--json", dest="json_out", default=None, help="write the figures to this file")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from tfsctl.testing import free_port

    with tempfile.TemporaryDirectory(prefix="tfsctl-startup-") as tmp:
        base = Path(tmp) / "deeplab"
        subprocess.run([sys.executable, "-m", "tfsctl", "export", str(ROOT / "samples/deeplab/checkpoint"),
                        str(base), "--warmup-size", "256x256"], check=True, capture_output=True, env=_env())
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "tfsctl", "serve", "--port", str(port), "--rest-api-port", "0", "--host",
             "127.0.0.1", "--model-name", "deeplab", "--model-base-path", str(base)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(),
        )
        try:
            cmd = ["predict", args.image, "--server", f"127.0.0.1:{port}", "--model", "deeplab",
                   "--output", str(Path(tmp) / "mask.png"), "--json"]
            deadline = time.monotonic() + 180
            while True:  # ready = a predict succeeds (also warms the server's first-call paths)
                res = subprocess.run([sys.executable, "-c", PLAIN, *cmd], capture_output=True, env=_env())
                if res.returncode == 0:
                    break
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit(f"server did not become ready: {res.stderr.decode()[-500:]}")
                time.sleep(0.5)
            plain = [_time(PLAIN, cmd) for _ in range(args.runs)]
            plain_cpu = list(CPU)
            with_tf = [_time(WITH_TF, cmd) for _ in range(max(3, args.runs // 2))]
            tf_cpu = CPU[len(plain_cpu):]
            res = subprocess.run([sys.executable, "-c", PLAIN, *cmd], capture_output=True, text=True, env=_env())
            report = json.loads(res.stdout)
        finally:
            server.terminate()
            server.wait(30)
    p, t = statistics.median(plain), statistics.median(with_tf)
    figures = {
        "runs": args.runs,
        "predict_wall_s_median": round(p, 3),
        "predict_wall_s_min": round(min(plain), 3),
        "predict_with_tf_runtime_wall_s_median": round(t, 3),
        "predict_cpu_s_median": round(statistics.median(plain_cpu), 3),
        "predict_with_tf_runtime_cpu_s_median": round(statistics.median(tf_cpu), 3),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "saved_s": round(t - p, 3),
        "ratio": round(t / p, 2),
        "rpc_ms": round(report["rpc_ms"], 1),
        "in_process_total_ms": round(report["total_ms"], 1),
        "goal_s": GOAL_S,
        "goal_met": p <= GOAL_S,
    }
    print(f"tfsctl predict (sample, 256x256, warm local server), median of {args.runs} fresh processes:")
    print(f"  predict:                 {p:.3f} s wall (min {min(plain):.3f} s; request round trip "
          f"{report['rpc_ms']:.1f} ms, in-process total {report['total_ms']:.1f} ms)")
    print(f"  predict + TF runtime:    {t:.3f} s wall")
    print(f"  CPU time per process:    {figures['predict_cpu_s_median']:.3f} s without, "
          f"{figures['predict_with_tf_runtime_cpu_s_median']:.3f} s with the TF runtime "
          f"(load average {figures['load_average_1min']} on {os.cpu_count()} cores)")
    print(f"  saved {t - p:.3f} s ({t / p:.2f}x); goal <= {GOAL_S} s: {'met' if p <= GOAL_S else 'NOT met'}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(figures, indent=2) + "\n")
        print(f"wrote {args.json_out}")


if __name__ == "__main__":
    main()
