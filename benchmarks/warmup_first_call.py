"""What export's warmup records buy: the first call of each signature of the sample DeepLab, served by tfsctl,
with and without ``assets.extra/tf_serving_warmup_requests``, against the median of the calls after it.

    PYTHONPATH=. python benchmarks/warmup_first_call.py [--size 256] [--repeats 5]

Prints one table (milliseconds) and writes benchmarks/results/warmup_first_call.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="image height and width")
    parser.add_argument("--repeats", type=int, default=5, help="calls after the first one, per signature")
    args = parser.parse_args()

    import grpc
    import numpy as np
    import tensorflow as tf
    from PIL import Image
    from tensorflow.core.example import example_pb2
    from tensorflow_serving.apis import classification_pb2, predict_pb2, prediction_service_pb2_grpc

    from tfsctl.export import export_model
    from tfsctl.serving.server import ModelServer, ServerOptions

    n = args.size
    image = np.asarray(Image.open(ROOT / "samples/images/shapes_256.png").convert("RGB").resize((n, n)))
    png = io.BytesIO()
    Image.fromarray(image).save(png, format="PNG")

    def call(stub, signature: str) -> float:
        started = time.perf_counter()
        if signature == "classify":
            req = classification_pb2.ClassificationRequest()
            req.model_spec.name, req.model_spec.signature_name = "deeplab", signature
            ex = example_pb2.Example()
            ex.features.feature["image/encoded"].bytes_list.value.append(png.getvalue())
            req.input.example_list.examples.append(ex)
            stub.Classify(req, timeout=120)
        else:
            req = predict_pb2.PredictRequest()
            req.model_spec.name, req.model_spec.signature_name = "deeplab", signature
            req.inputs["images"].CopyFrom(tf.make_tensor_proto(image[None]))
            req.inputs["height"].CopyFrom(tf.make_tensor_proto(np.array([n], np.int32)))
            req.inputs["width"].CopyFrom(tf.make_tensor_proto(np.array([n], np.int32)))
            stub.Predict(req, timeout=120)
        return (time.perf_counter() - started) * 1000

    signatures = ["serving_default", "predict_images", "predict_probabilities", "classify"]
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, sizes in (("no warmup", []), ("warmup", [(n, n)])):
            base = Path(tmp) / label.replace(" ", "_")
            export_model(ROOT / "samples/deeplab/checkpoint", base, warmup_sizes=sizes)
            server = ModelServer(ServerOptions(host="127.0.0.1", port=0, rest_api_port=0, model_name="deeplab",
                                               model_base_path=str(base)))
            server.start()
            channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}",
                                            options=[("grpc.max_receive_message_length", -1)])
            try:
                assert server.wait_until_ready(300)
                stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
                for sig in signatures:
                    first = call(stub, sig)
                    rest = [call(stub, sig) for _ in range(args.repeats)]
                    rows[(label, sig)] = (first, statistics.median(rest))
            finally:
                channel.close()
                server.stop(5)
    print(f"DeepLab sample, {n}x{n} image, first call vs median of the next {args.repeats} (ms)")
    print(f"{'signature':24} {'no warmup: first':>17} {'then':>7} {'warmup: first':>14} {'then':>7}")
    for sig in signatures:
        a, b = rows[("no warmup", sig)], rows[("warmup", sig)]
        print(f"{sig:24} {a[0]:17.1f} {a[1]:7.1f} {b[0]:14.1f} {b[1]:7.1f}")
    out = ROOT / "benchmarks/results/warmup_first_call.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"size": n, "repeats": args.repeats, "results": [
        {"warmup": label == "warmup", "signature": sig, "first_ms": round(v[0], 2), "median_after_ms": round(v[1], 2)}
        for (label, sig), v in rows.items()]}, indent=2))


if __name__ == "__main__":
    main()
