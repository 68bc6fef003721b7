"""What observability costs, in one run: request logging at sampling 1.0 and 0.01, the access log and tracing,
each against the same server with none of them (issue 22).

Every configuration is a ``tfsctl serve`` process of its own on 127.0.0.1 serving the toy model; the load is
``tfsctl bench``'s closed-loop gRPC Predict client in this process (concurrency ``--concurrency``). Traces go to an
OTLP/HTTP receiver in this process that parses each export and counts its spans (so the exporter's real work is
paid). Each round measures every configuration back to back, the order turning from round to round; each ratio is
the median over rounds of the two runs' ratio within a round (the machine's speed drifts between rounds, far less
within seconds); "none_b", a second server with nothing on, shows the noise floor. "none" is also what tracing off
costs: with no OTLP endpoint the server adds nothing per request (``tests/test_tracing.py`` checks that no observer
and no request tagging is installed).

    python benchmarks/observability_bench.py [--rounds 3] [--seconds 3] [--concurrency 8]
                                             [--out benchmarks/results]

About 1.5 minutes with the defaults. Writes benchmarks/results/observability.json.
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
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# "none_b" is a second server with nothing on: its ratio to "none" is the noise floor of this machine and run.
CONFIGS = ("none", "none_b", "log_1.0", "log_0.01", "access_log", "tracing")


class OtlpSink:
    """Accepts OTLP/HTTP trace exports and counts the spans in them."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

        self.spans = 0
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
                sink.spans += sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def _config_file(work: Path, name: str, rate: float | None, model: str, base: Path) -> Path:
    logging_config = "" if rate is None else (
        f'logging_config {{ log_collector_config {{ type: "file" filename_prefix: "{work / "logs" / name}" }} '
        f"sampling_config {{ sampling_rate: {rate} }} }}")
    path = work / f"{name}.config"
    path.write_text(f'model_config_list {{ config {{ name: "{model}" base_path: "{base}" '
                    f'model_platform: "tensorflow" {logging_config} }} }}\n')
    return path


def serve_options(work: Path, name: str, sink: OtlpSink, model: str = "toy", base: Path | None = None
                  ) -> tuple[list[str], dict[str, str]]:
    """The ``tfsctl serve`` flags (besides host and ports) and the environment of configuration ``name`` (one of
    CONFIGS) serving ``model`` from ``base`` (default: the toy model under ``work``); its files go under ``work``.
    ``real_models.py`` serves its models with these same configurations."""
    rate = {"log_1.0": 1.0, "log_0.01": 0.01}.get(name)
    args = ["--model_config_file", str(_config_file(work, name, rate, model, base or work / "toy"))]
    if name == "access_log":
        args += ["--access_log", str(work / "access.log")]
    if name == "tracing":
        args += ["--trace_otlp_endpoint", sink.url]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT), OTEL_BSP_SCHEDULE_DELAY="500")
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    env.pop("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", None)
    return args, env


def _start(work: Path, name: str, sink: OtlpSink) -> tuple[subprocess.Popen, int]:
    from tfsctl.testing import free_port

    port = free_port()
    args, env = serve_options(work, name, sink)
    cmd = [sys.executable, "-m", "tfsctl", "serve", "--host", "127.0.0.1", "--port", str(port), *args]
    log = open(work / f"{name}.log", "w")  # noqa: SIM115 - the process writes it until killed
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), port


def _ready(port: int, deadline: float) -> None:
    import grpc
    import numpy as np
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from tfsctl.tensors import from_numpy

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "toy"
    request.inputs["x"].CopyFrom(from_numpy(np.ones((1, 4), np.float32)))
    while True:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        try:
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=5)
            return
        except grpc.RpcError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
        finally:
            channel.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)

    import numpy as np

    from tfsctl.client import bench
    from tfsctl.testing import write_toy_model

    sink = OtlpSink()
    work = Path(tempfile.mkdtemp(prefix="tfsctl-observability-"))
    write_toy_model(work / "toy", 1, scale=2.0)
    procs: dict[str, tuple[subprocess.Popen, int]] = {}
    runs: dict[str, list[dict]] = {name: [] for name in CONFIGS}
    try:
        for name in CONFIGS:
            procs[name] = _start(work, name, sink)
        deadline = time.monotonic() + 180
        for _, port in procs.values():
            _ready(port, deadline)
        inputs = {"x": np.ones((1, 4), np.float32)}
        for rnd in range(args.rounds):
            order = list(CONFIGS[rnd % len(CONFIGS):] + CONFIGS[:rnd % len(CONFIGS)])
            for name in order:
                (r,) = bench.run_sweep(f"127.0.0.1:{procs[name][1]}", [args.concurrency], 1.0, args.seconds,
                                       inputs=inputs, model="toy")
                runs[name].append({"throughput": r.throughput, "p50_ms": r.p50_ms, "p99_ms": r.p99_ms,
                                   "errors": r.errors})
                print(f"round {rnd + 1} {name:>10}: {r.throughput:8.1f} req/s  p50 {r.p50_ms:.3f} ms  "
                      f"p99 {r.p99_ms:.3f} ms  errors {r.errors}", flush=True)
    finally:
        for proc, _ in procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc, _ in procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    logged = {name: sum(1 for _ in (work / "logs").glob(f"{name}-*.tfrecord")) for name in ("log_1.0", "log_0.01")}
    ratios = {}
    for name in CONFIGS[1:]:
        pairs = list(zip(runs[name], runs["none"], strict=True))
        ratios[name] = {
            "throughput_vs_none": round(statistics.median(a["throughput"] / b["throughput"] for a, b in pairs), 3),
            "p50_vs_none": round(statistics.median(a["p50_ms"] / b["p50_ms"] for a, b in pairs), 3),
        }
    report = {
        "what": "tfsctl serve, toy model, gRPC Predict, closed loop",
        "concurrency": args.concurrency, "seconds": args.seconds, "rounds": args.rounds,
        "cpus": os.cpu_count(), "runs": runs, "ratios": ratios, "spans_received": sink.spans,
        "request_log_files": logged,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "observability.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print("\nmedian over rounds of the paired ratio against 'none' (1.0 = no cost):")
    for name, r in ratios.items():
        print(f"  {name:>10}: throughput x{r['throughput_vs_none']:.3f}, p50 latency x{r['p50_vs_none']:.3f}")
    print(f"spans received by the OTLP sink: {sink.spans}; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
