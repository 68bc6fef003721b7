"""v2 (Open Inference Protocol) against v1 (TF Serving's API) on the sample DeepLab, in one run on this machine.

One ``tfsctl serve`` process (as users run it) serves the exported sample; the client sends the same 256x256 image
as, per round and in turn:

- v1 gRPC Predict (``tensor_content``), the reference;
- v2 REST with the binary tensor data extension (JSON header + raw bytes in, the map back as binary);
- v2 gRPC ModelInfer with ``raw_input_contents`` (what Triton's clients send);
- v1 REST ``:predict`` and v2 REST JSON, both with the image as JSON numbers.

Each request is encoded once before timing (so the figures are the server and the transport, not the client's
encoder), sent over one kept-alive connection at concurrency 1, and every reply is decoded and checked against v1's
segmentation map once. Printed: the median latency of each protocol, and the ratios the issue sets goals for
(v2 binary REST / v1 gRPC <= 1.1, v2 gRPC / v1 gRPC <= 1.05, v2 JSON / v1 JSON REST), each the median over rounds
of the ratio within a round. Only 127.0.0.1 is used; every phase is bounded in time.

    python benchmarks/v2_bench.py [--rounds 5] [--seconds 3] [--image samples/images/shapes_256.png] [--out FILE]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
GOALS = {"v2_rest_binary/v1_grpc": 1.1, "v2_grpc/v1_grpc": 1.05}


def _post(conn: http.client.HTTPConnection, path: str, body: bytes, headers: dict) -> tuple[dict, bytes]:
    conn.request("POST", path, body=body, headers=headers)
    r = conn.getresponse()
    data = r.read()
    if r.status != 200:
        raise RuntimeError(f"{path}: HTTP {r.status}: {data[:300]!r}")
    return dict(r.getheaders()), data


def v2_grpc_request(model: str, inputs: dict[str, np.ndarray], outputs: list[str]):  # noqa: ANN201 - a proto
    """A ModelInferRequest with the inputs as ``raw_input_contents`` (what Triton's clients send)."""
    from tfsctl.core.v2_protos import service_pb2
    from tfsctl.core.v2_tensors import datatype_of, to_raw

    request = service_pb2.ModelInferRequest(model_name=model)
    for key, arr in inputs.items():
        request.inputs.add(name=key, datatype=datatype_of(arr.dtype, key), shape=list(arr.shape))
        request.raw_input_contents.append(to_raw(arr))
    for key in outputs:
        request.outputs.add(name=key)
    return request


def v2_binary_body(inputs: dict[str, np.ndarray], outputs: list[str]) -> tuple[bytes, dict[str, str]]:
    """(body, headers) of a v2 REST request with the binary tensor data extension: a JSON header, then each input's
    raw bytes; the outputs asked back as binary."""
    from tfsctl.core.v2_tensors import datatype_of, to_raw

    raws = {k: to_raw(a) for k, a in inputs.items()}
    head = json.dumps({
        "inputs": [{"name": k, "shape": list(a.shape), "datatype": datatype_of(a.dtype, k),
                    "parameters": {"binary_data_size": len(raws[k])}} for k, a in inputs.items()],
        "outputs": [{"name": k, "parameters": {"binary_data": True}} for k in outputs]}).encode()
    headers = {"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"}
    return head + b"".join(raws.values()), headers


def v2_json_body(inputs: dict[str, np.ndarray], outputs: list[str]) -> bytes:
    """A v2 REST JSON request: each input's values as JSON numbers (``tolist()``), the outputs asked as JSON."""
    from tfsctl.core.v2_tensors import datatype_of

    return json.dumps({
        "inputs": [{"name": k, "shape": list(a.shape), "datatype": datatype_of(a.dtype, k), "data": a.tolist()}
                   for k, a in inputs.items()],
        "outputs": [{"name": k} for k in outputs]}).encode()


def build_calls(grpc_port: int, rest_port: int, image: np.ndarray):
    """{name: (call, decode)}: ``call()`` sends one prepared request; ``decode(reply)`` gives the segmentation map."""
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from tfsctl.core.v2_protos import service_pb2_grpc
    from tfsctl.core.v2_tensors import from_raw
    from tfsctl.tensors import as_proto_content, to_numpy

    h, w = image.shape[1:3]
    sizes = {"height": np.array([h], np.int32), "width": np.array([w], np.int32)}
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}", options=[("grpc.max_receive_message_length", -1)])
    v1_stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    v2_stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    conn = http.client.HTTPConnection("127.0.0.1", rest_port, timeout=120)

    v1_request = predict_pb2.PredictRequest()
    v1_request.model_spec.name = "deeplab"
    v1_request.output_filter.append("segmentation_map")
    for key, arr in {"images": image, **sizes}.items():
        as_proto_content(arr, v1_request.inputs[key])

    inputs = {"images": image, **sizes}
    v2_request = v2_grpc_request("deeplab", inputs, ["segmentation_map"])
    binary_body, binary_headers = v2_binary_body(inputs, ["segmentation_map"])
    v2_json_body_ = v2_json_body(inputs, ["segmentation_map"])
    v1_json_body = json.dumps({"signature_name": "predict_images", "inputs": {
        "images": image.tolist(), "height": sizes["height"].tolist(), "width": sizes["width"].tolist()}}).encode()
    json_headers = {"Content-Type": "application/json"}

    def v2_binary_decode(reply: tuple[dict, bytes]) -> np.ndarray:
        headers, body = reply
        n = int(headers["Inference-Header-Content-Length"])
        out = json.loads(body[:n])["outputs"][0]
        return from_raw(out["datatype"], out["shape"], body[n:])

    def v2_json_decode(reply: tuple[dict, bytes]) -> np.ndarray:
        out = json.loads(reply[1])["outputs"][0]
        return np.array(out["data"]).reshape(out["shape"])

    def v1_json_decode(reply: tuple[dict, bytes]) -> np.ndarray:
        return np.array(json.loads(reply[1])["outputs"])  # columnar request, columnar reply

    def v2_grpc_decode(reply) -> np.ndarray:  # noqa: ANN001
        out = reply.outputs[0]
        return from_raw(out.datatype, list(out.shape), reply.raw_output_contents[0])

    return {
        "v1_grpc": (lambda: v1_stub.Predict(v1_request, timeout=120),
                    lambda r: to_numpy(r.outputs["segmentation_map"])),
        "v2_rest_binary": (lambda: _post(conn, "/v2/models/deeplab/infer", binary_body, binary_headers),
                           v2_binary_decode),
        "v2_grpc": (lambda: v2_stub.ModelInfer(v2_request, timeout=120), v2_grpc_decode),
        "v1_rest_json": (lambda: _post(conn, "/v1/models/deeplab:predict", v1_json_body, json_headers),
                         v1_json_decode),
        "v2_rest_json": (lambda: _post(conn, "/v2/models/deeplab/infer", v2_json_body_, json_headers),
                         v2_json_decode),
    }, channel, conn


def median_latency(call, seconds: float, min_calls: int = 5) -> float:
    times = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < min_calls:
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0, help="measuring time per protocol per round")
    parser.add_argument("--image", default=str(ROOT / "samples" / "images" / "shapes_256.png"))
    parser.add_argument("--checkpoint", default=str(ROOT / "samples" / "deeplab" / "checkpoint"))
    parser.add_argument("--out", default="", help="also write the figures as JSON here")
    args = parser.parse_args(argv)

    from PIL import Image
    from serving_bench import ServerProcess

    from tfsctl.export import export_model

    image = np.asarray(Image.open(args.image).convert("RGB"), np.uint8)[None]
    h, w = image.shape[1:3]
    with tempfile.TemporaryDirectory(prefix="tfsctl-v2-bench-") as tmp:
        base = Path(tmp) / "deeplab"
        print(f"exporting {args.checkpoint} (warmup {h}x{w}) ...", flush=True)
        export_model(args.checkpoint, base, warmup_sizes=[(h, w)])
        server = ServerProcess(base, "deeplab", [], Path(tmp) / "server.log")
        channel = conn = None
        try:
            server.wait_ready()
            calls, channel, conn = build_calls(server.grpc_port, server.rest_port, image)
            reference = calls["v1_grpc"][1](calls["v1_grpc"][0]())
            for name, (call, decode) in calls.items():  # each protocol answers the same map (and is warm)
                got = decode(call())
                if not np.array_equal(np.asarray(got).reshape(reference.shape), reference):
                    raise SystemExit(f"{name}: the segmentation map differs from v1 gRPC's")
            rounds: list[dict[str, float]] = []
            names = list(calls)
            for r in range(args.rounds):
                order = names[r % len(names):] + names[:r % len(names)]  # the order turns each round
                rounds.append({n: median_latency(calls[n][0], args.seconds) for n in order})
                print(f"round {r + 1}: " + ", ".join(f"{n} {rounds[-1][n] * 1e3:.2f} ms" for n in names), flush=True)
        finally:
            if channel is not None:
                channel.close()
            if conn is not None:
                conn.close()
            server.stop()

    def ratio(a: str, b: str) -> float:
        return statistics.median(x[a] / x[b] for x in rounds)

    report = {
        "image_size": [h, w], "rounds": args.rounds, "cpus": os.cpu_count(),
        "median_ms": {n: round(statistics.median(x[n] for x in rounds) * 1e3, 3) for n in names},
        "ratios": {"v2_rest_binary/v1_grpc": ratio("v2_rest_binary", "v1_grpc"),
                   "v2_grpc/v1_grpc": ratio("v2_grpc", "v1_grpc"),
                   "v2_rest_json/v1_rest_json": ratio("v2_rest_json", "v1_rest_json")},
    }
    print(f"\nsample DeepLab {h}x{w}, concurrency 1, median latency over {args.rounds} rounds:")
    for n, ms in report["median_ms"].items():
        print(f"  {n:16s} {ms:8.2f} ms")
    print("ratios (median over rounds of the ratio within a round):")
    for key, value in report["ratios"].items():
        goal = GOALS.get(key)
        verdict = "" if goal is None else f"  (goal <= {goal}: {'met' if value <= goal else 'NOT met'})"
        print(f"  {key:26s} {value:6.3f}{verdict}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
