"""What ``--prefer_tflite_model`` and its pool flags do to throughput: one model served as a SavedModel and as its
``model.tflite`` (written by ``export --to-tflite``) with 1 and 2 interpreters, and with the pool's own batching.

    PYTHONPATH=. python benchmarks/tflite_pools.py [--seconds 5] [--clients 8] [--rows 8]

The model: eight 512x512 float32 matmuls on [rows, 512] inputs (tens of ms a request). Each configuration is a real
``ModelServer`` on 127.0.0.1, driven over gRPC by ``--clients`` threads for ``--seconds``. Prints one table and writes
benchmarks/results/tflite_pools.json (requests/s, p50/p99 latency in ms, and the ratios to the SavedModel).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def write_model(base: Path) -> Path:
    """The matmul model as a SavedModel, exported by tfsctl with --to-tflite into ``base/1``."""
    import numpy as np
    import tensorflow as tf

    from tfsctl.export import export_model

    class Mlp(tf.Module):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.w = [tf.constant(rng.standard_normal((512, 512)).astype(np.float32) / 23.0) for _ in range(8)]

        @tf.function(input_signature=[tf.TensorSpec([None, 512], tf.float32)])
        def forward(self, x):
            for w in self.w:
                x = tf.matmul(x, w)
            return {"y": x}

    module = Mlp()
    source = base.parent / "source"
    tf.saved_model.save(module, str(source), signatures={"serving_default": module.forward})
    result = export_model(source, base, warmup=False, to_tflite=True)
    return result.path


def drive(port: int, seconds: float, clients: int, rows: int) -> dict:
    import grpc
    import numpy as np
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from tfsctl.tensors import from_numpy

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "m"
    request.inputs["x"].CopyFrom(from_numpy(np.random.default_rng(1).standard_normal((rows, 512)).astype(np.float32)))
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client() -> None:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        stub.Predict(request, timeout=60)  # connect and warm outside the timed window
        mine = []
        while time.monotonic() < stop:
            started = time.perf_counter()
            stub.Predict(request, timeout=60)
            mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)
        channel.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    ordered = sorted(latencies)
    return {"requests": len(ordered), "rps": round(len(ordered) / elapsed, 1),
            "p50_ms": round(statistics.median(ordered) * 1e3, 1),
            "p99_ms": round(ordered[int(len(ordered) * 0.99) - 1] * 1e3, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rows", type=int, default=8)
    args = parser.parse_args()

    from tfsctl.serving.server import ModelServer, ServerOptions

    configs = {
        "SavedModel": {},
        "TFLite, 1 interpreter": {"prefer_tflite_model": True, "num_tflite_pools": 1},
        "TFLite, 2 interpreters": {"prefer_tflite_model": True, "num_tflite_pools": 2},
        "TFLite, 1 interpreter, per_pool=4 (merging)": {"prefer_tflite_model": True, "num_tflite_pools": 1,
                                                          "num_tflite_interpreters_per_pool": 4},
    }
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "m"
        write_model(base)
        for name, flags in configs.items():
            server = ModelServer(ServerOptions(host="127.0.0.1", port=0, model_name="m", model_base_path=str(base),
                                               file_system_poll_wait_seconds=0, **flags))
            server.start()
            try:
                assert server.wait_until_ready(120), name
                results[name] = drive(server.grpc_port, args.seconds, args.clients, args.rows)
            finally:
                server.stop(5)
    base_rps = results["SavedModel"]["rps"]
    print(f"{'configuration':46} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'vs SavedModel':>14}")
    for name, r in results.items():
        r["ratio_rps"] = round(r["rps"] / base_rps, 2) if base_rps else None
        print(f"{name:46} {r['rps']:8.1f} {r['p50_ms']:8.1f} {r['p99_ms']:8.1f} {r['ratio_rps']:13.2f}x")
    out = ROOT / "benchmarks" / "results" / "tflite_pools.json"
    out.write_text(json.dumps({"args": vars(args), "cpus": os.cpu_count(), "results": results}, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
