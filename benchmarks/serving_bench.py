"""Serving benchmark: in-process vs ``tfsctl serve`` (with and without batching), in one run on this machine.

Measures, and prints as tables plus the ratios the README quotes:
  (a) the sample DeepLab model called in process (the SavedModel signature itself) at batch sizes 1..32, and the
      best images/s among them;
  (b) the same model through ``tfsctl serve`` over gRPC (asking only for ``segmentation_map``, as
      ``tfsctl predict`` does), without and with server-side batching, at concurrency 1, 4, 16, 32 (closed loop,
      the ``tfsctl bench`` load generator). Both servers run throughout; each round measures both at every level
      back to back, the order turning each round (``--rounds``, default 3);
  (c) the added p50 latency at concurrency 1 for a 4-float toy model: server (gRPC and REST) minus in-process call.
Goals (issue 14): batched throughput at concurrency 16 >= 0.9 x the in-process rate at the best batch size a server
at c=16 can form (at most 16), that anchor measured before the rounds and again after each; batching >= 0.9 x no
batching at concurrency 1 and >= 1 x at 4 and above. Each ratio is the median over rounds of the ratio within a
round. Added p50 <= 1.5 ms (issue 4).

The server runs as a separate process (as users run it), so the load generator does not share its interpreter.
Everything targets 127.0.0.1 only and every phase is bounded in time.

    python benchmarks/serving_bench.py [--rounds 3] [--measure-seconds 5] [--image samples/images/shapes_256.png]
                                       [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
LEVELS = (1, 4, 16, 32)
BATCH_SIZES = (1, 2, 4, 8, 16, 32)
COMPARED_LEVEL = 16  # the concurrency whose throughput is compared with the in-process anchor
BATCHING_CONFIG = """
max_batch_size {{ value: {max_batch_size} }}
batch_timeout_micros {{ value: {timeout_us} }}
num_batch_threads {{ value: {threads} }}
max_enqueued_batches {{ value: 100 }}
"""


class ServerProcess:
    """``tfsctl serve`` in a child process on 127.0.0.1, ready when /v1/health/ready answers 200. ``base_path``
    None: the model comes from ``extra`` (``--model_config_file``); ``env``: the child's environment."""

    def __init__(self, base_path: Path | None, model: str, extra: list[str], log: Path,
                 env: dict[str, str] | None = None) -> None:
        from tfsctl.testing import free_port

        self.grpc_port, self.rest_port = free_port(), free_port()
        cmd = [
            sys.executable, "-m", "tfsctl", "serve", "--host", "127.0.0.1",
            "--port", str(self.grpc_port), "--rest-api-port", str(self.rest_port),
            *(["--model-name", model, "--model-base-path", str(base_path)] if base_path is not None else []), *extra,
        ]
        self.log = log.open("w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout: float = 240.0) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.rest_port}/v1/health/ready"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.log.name}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"server not ready after {timeout:.0f} s; see {self.log.name}")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            self.log.close()


def time_calls(fn, seconds: float, min_calls: int = 5) -> list[float]:
    """Call ``fn`` repeatedly for about ``seconds``; per-call wall times in seconds."""
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < min_calls:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


class InProcessDeepLab:
    """The predict_images signature called directly: the anchor the served figures are divided by."""

    def __init__(self, export_dir: Path, image: np.ndarray) -> None:
        import tensorflow as tf

        self.fn = tf.saved_model.load(str(export_dir)).signatures["predict_images"]
        h, w = image.shape[:2]
        self.feeds = {}
        for n in BATCH_SIZES:
            self.feeds[n] = {
                "images": tf.constant(np.repeat(image[None], n, axis=0)),
                "height": tf.constant(np.full([n], h, np.int32)),
                "width": tf.constant(np.full([n], w, np.int32)),
            }
            self.fn(**self.feeds[n])  # trace / warm

    def rate(self, n: int, seconds: float) -> tuple[float, float]:
        """Images/s and p50 ms at batch ``n`` over about ``seconds``."""
        feed = self.feeds[n]
        times = time_calls(lambda: self.fn(**feed), seconds, min_calls=3)
        return n * len(times) / sum(times), 1e3 * statistics.median(times)

    def sweep(self, seconds: float, rounds: int = 3) -> list[dict]:
        """Per batch size, the median of ``rounds`` rounds interleaved over batch sizes (so a noisy neighbour
        does not favour one size)."""
        rates: dict[int, list[float]] = {n: [] for n in BATCH_SIZES}
        p50s: dict[int, list[float]] = {n: [] for n in BATCH_SIZES}
        for _ in range(rounds):
            for n in BATCH_SIZES:
                rate, p50 = self.rate(n, seconds / rounds)
                rates[n].append(rate)
                p50s[n].append(p50)
        rows = []
        for n in BATCH_SIZES:
            rows.append({"batch": n, "images_per_s": statistics.median(rates[n]),
                         "p50_ms": statistics.median(p50s[n])})
            print(f"  in-process batch {n:>2}: {rows[-1]['images_per_s']:7.1f} img/s  "
                  f"p50 {rows[-1]['p50_ms']:7.1f} ms")
        return rows


def in_process_toy(export_dir: Path, seconds: float) -> float:
    """p50 (ms) of the toy model's serving_default called directly with one [1, 4] row."""
    import tensorflow as tf

    fn = tf.saved_model.load(str(export_dir)).signatures["serving_default"]
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    fn(x=tf.constant(x))
    # Convert from numpy each call, as the server must: that is part of calling the model in process.
    return 1e3 * statistics.median(time_calls(lambda: fn(x=tf.constant(x)), seconds, min_calls=200))


def sweep(server: ServerProcess, model: str, inputs: dict, levels, warmup_s: float, measure_s: float,
          protocol: str = "grpc", signature: str = "", output_filter: tuple[str, ...] = ()) -> list:
    from tfsctl.client.bench import run_sweep

    port = server.grpc_port if protocol == "grpc" else server.rest_port
    results = run_sweep(
        f"127.0.0.1:{port}", list(levels), warmup_s, measure_s, inputs=inputs, model=model,
        protocol=protocol, signature=signature, timeout=60.0, output_filter=output_filter,
    )
    for r in results:
        print(f"  {protocol} c={r.concurrency:>2}: {r.throughput:7.1f} req/s  p50 {r.p50_ms:7.2f} ms  "
              f"p99 {r.p99_ms:7.2f} ms  errors {r.errors}")
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image", default=str(ROOT / "samples/images/shapes_256.png"))
    ap.add_argument("--checkpoint", default=str(ROOT / "samples/deeplab/checkpoint"))
    ap.add_argument("--warmup-seconds", type=float, default=2.0)
    ap.add_argument("--measure-seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3, help="rounds of both servers at every level, interleaved")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results"))
    ap.add_argument("--max-batch-size", type=int, default=0, help="0: the best in-process batch size up to 16")
    ap.add_argument("--batch-timeout-micros", type=int, default=5000)
    ap.add_argument("--num-batch-threads", type=int, default=2)
    ap.add_argument("--skip", default="", help="comma list of phases to skip: no_batching,toy")
    args = ap.parse_args(argv)

    from PIL import Image

    from tfsctl.client.bench import LevelResult, write_plot
    from tfsctl.export import export_model
    from tfsctl.testing import write_toy_model

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    image = np.asarray(Image.open(args.image).convert("RGB"))
    h, w = image.shape[:2]
    deeplab_inputs = {"images": image[None], "height": np.array([h], np.int32), "width": np.array([w], np.int32)}
    report: dict = {"image": Path(args.image).name, "image_size": [h, w], "cpus": os.cpu_count()}

    with tempfile.TemporaryDirectory(prefix="tfsctl-bench-") as tmp:
        tmp_path = Path(tmp)
        print(f"exporting {args.checkpoint} (warmup {h}x{w}) ...")
        deeplab_base = tmp_path / "deeplab"
        exported = export_model(args.checkpoint, deeplab_base, warmup_sizes=[(h, w)])
        toy_base = tmp_path / "toy"
        toy_dir = write_toy_model(toy_base, 1)

        print("(a) DeepLab in process")
        anchor = InProcessDeepLab(exported.path, image)
        report["in_process"] = anchor.sweep(args.measure_seconds)
        # The anchor for concurrency 16: the best batch a server at c=16 can form (a batch of 32 needs 32 clients).
        best = max((r for r in report["in_process"] if r["batch"] <= COMPARED_LEVEL),
                   key=lambda r: r["images_per_s"])
        anchor_rates = [best["images_per_s"]]
        batching = {
            "max_batch_size": args.max_batch_size or best["batch"],
            "timeout_us": args.batch_timeout_micros,
            "threads": args.num_batch_threads,
        }
        report["batching_parameters"] = batching
        batching_file = tmp_path / "batching.config"
        batching_file.write_text(BATCHING_CONFIG.format(**batching))
        skip = set(filter(None, args.skip.split(",")))

        # Both servers run from the start, idle while the other is measured, and each round measures both at
        # every level back to back (the order turning each round): the machine's speed drifts between rounds far
        # more than within seconds, so every ratio is the median over rounds of a ratio within one round.
        names = [n for n in ("no_batching", "batching") if n not in skip]
        extras = {"no_batching": [], "batching": ["--enable-batching", "--batching-parameters-file",
                                                  str(batching_file)]}
        servers = {}
        rounds: dict[str, dict[int, list[LevelResult]]] = {n: {c: [] for c in LEVELS} for n in names}
        c16_ratios: dict[str, list[float]] = {n: [] for n in names}
        try:
            for name in names:
                servers[name] = ServerProcess(deeplab_base, "deeplab", extras[name], out / f"server_{name}.log")
            for server in servers.values():
                server.wait_ready()
            for rnd in range(args.rounds):
                print(f"(b) DeepLab through tfsctl serve, round {rnd + 1}/{args.rounds}")
                for c in LEVELS:
                    for name in names[rnd % len(names):] + names[:rnd % len(names)]:
                        print(f"  {name.replace('_', ' '):<12}", end="")
                        (res,) = sweep(servers[name], "deeplab", deeplab_inputs, [c], args.warmup_seconds,
                                       args.measure_seconds, signature="predict_images",
                                       output_filter=("segmentation_map",))
                        rounds[name][c].append(res)
                rate, _ = anchor.rate(best["batch"], args.measure_seconds)  # again, close in time to the round
                anchor_rates.append(rate)
                print(f"  in-process batch {best['batch']} again: {rate:.1f} img/s")
                for name in names:
                    c16_ratios[name].append(rounds[name][COMPARED_LEVEL][-1].throughput / rate)
        finally:
            for name, server in servers.items():
                print(f"  {name} server exit code {server.stop()}")
        runs: dict[str, list[LevelResult]] = {}
        for name in names:  # per level, the round with the median throughput (tables and plots)
            runs[name] = [sorted(rs, key=lambda r: r.throughput)[len(rs) // 2] for rs in rounds[name].values()]
            report[name] = [r.to_dict() for r in runs[name]]
            report[f"{name}_rounds"] = {c: [r.throughput for r in rs] for c, rs in rounds[name].items()}
            write_plot(out / f"deeplab_{name}.png", runs[name], title=f"DeepLab via tfsctl serve, {name}")

        if "toy" not in skip:
            print("(c) toy 4-float model: added latency at concurrency 1")
            toy_p50 = in_process_toy(toy_dir, args.measure_seconds)
            server = ServerProcess(toy_base, "toy", [], out / "server_toy.log")
            try:
                server.wait_ready()
                x = {"x": np.arange(4, dtype=np.float32).reshape(1, 4)}
                grpc_p50 = sweep(server, "toy", x, [1], args.warmup_seconds, args.measure_seconds)[0].p50_ms
                rest_p50 = sweep(server, "toy", x, [1], args.warmup_seconds, args.measure_seconds,
                                 protocol="rest")[0].p50_ms
            finally:
                server.stop()
            report["toy"] = {"in_process_p50_ms": toy_p50, "grpc_p50_ms": grpc_p50, "rest_p50_ms": rest_p50,
                             "grpc_added_p50_ms": grpc_p50 - toy_p50, "rest_added_p50_ms": rest_p50 - toy_p50}

    # The anchor: the median of its measurements before the runs and after each round (the machine drifts).
    best = {**best, "images_per_s": statistics.median(anchor_rates), "measurements": anchor_rates}
    report["in_process_best"] = best
    c16 = {name: next(r for r in runs[name] if r.concurrency == COMPARED_LEVEL).throughput for name in runs}
    # Served c=16 over the anchor measured right after it, and batching over none, each per round, then the median.
    report["ratios"] = {f"{name}_c16_over_in_process_best": statistics.median(v) for name, v in c16_ratios.items()}
    if len(runs) == 2:
        paired = {c: [b.throughput / n.throughput for b, n in zip(rounds["batching"][c], rounds["no_batching"][c],
                                                                   strict=True)] for c in LEVELS}
        report["batching_vs_none_rounds"] = paired
        report["ratios"].update({f"batching_vs_none_c{c}": statistics.median(v) for c, v in paired.items()})
    (out / "serving_bench.json").write_text(json.dumps(report, indent=2) + "\n")

    print("\n=== summary ===")
    print(f"in process, best batch up to {COMPARED_LEVEL}: {best['batch']}, {best['images_per_s']:.1f} img/s "
          f"(median of {', '.join(f'{r:.1f}' for r in anchor_rates)})")
    print(f"batching parameters: {batching}")
    for name, v in c16.items():
        ratio = report["ratios"][f"{name}_c16_over_in_process_best"]
        goal = "  (goal >= 0.9)" if name == "batching" else ""
        print(f"serve {name.replace('_', ' ')}, c=16: {v:.1f} req/s (median round); {ratio:.2f} x in process "
              f"(median of per-round ratios){goal}")
    for c, v in report.get("batching_vs_none_rounds", {}).items():
        goal = 0.9 if c == 1 else 1.0
        print(f"batching vs no batching, c={c:<2}: {report['ratios'][f'batching_vs_none_c{c}']:.2f} x "
              f"(goal >= {goal}; rounds: {', '.join(f'{x:.2f}' for x in v)})")
    if "toy" in report:
        t = report["toy"]
        print(f"toy model p50: in process {t['in_process_p50_ms']:.3f} ms, gRPC {t['grpc_p50_ms']:.3f} ms "
              f"(+{t['grpc_added_p50_ms']:.3f} ms, goal <= 1.5), REST {t['rest_p50_ms']:.3f} ms "
              f"(+{t['rest_added_p50_ms']:.3f} ms)")
    print(f"wrote {out / 'serving_bench.json'} and plots")
    return 0


if __name__ == "__main__":
    sys.exit(main())
