"""REST JSON codec: the orjson codec (tfsctl/serving/json_codec.py) against the previous stdlib one, in one run.

The reply is DeepLab-sized: ``probabilities`` float32 [1, 256, 256, 21] plus ``segmentation_map`` int64
[1, 256, 256] (row format, as a DeepLab client asks for it); the request is a 256x256 RGB image as JSON numbers.
"Old" is what rest_api.py did before: ``json.dumps`` over ``ndarray.tolist()`` (Python floats, so float32 values
come out with double digits), and ``json.loads`` + ``np.asarray`` for requests. The garbage collector is frozen
after start-up as in ``tfsctl serve``; otherwise every parse of a big body pays for a scan of TensorFlow's objects.

Then a ResNet50 request as TF Serving's ``resnet_client.py`` writes it (``json.dumps`` of a float32 [1, 224, 224, 3]
image's ``tolist()``: float64 text, 3.1 MB), row (``instances``) and columnar (``inputs``), parsed and decoded into
the float32 input: the general path (orjson into nested lists, then numpy), what ``tfsctl serve`` does
(``parse_predict_json``: json_dense, simdjson for float text), and two floors: ``orjson.loads`` of the body alone
(Python objects, no array) and pysimdjson's parse of the array's own text straight into float64 (no shape check).
Last, an encoded image as ``{"b64": ...}``: tfsctl's parse and decode against the standard library's decode alone.

    PYTHONPATH=$PWD python benchmarks/rest_codec_bench.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import orjson
import simdjson

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tfsctl.serving import json_codec, json_dense  # noqa: E402


def _old_encode(outputs: dict[str, np.ndarray]) -> bytes:
    values = {k: v.tolist() for k, v in outputs.items()}
    batch = len(next(iter(values.values())))
    return json.dumps({"predictions": [{k: values[k][i] for k in values} for i in range(batch)]}).encode()


def _old_decode(body: bytes) -> np.ndarray:
    return np.asarray(json.loads(body)["instances"]).astype(np.uint8)


class _Spec:
    dtype = np.dtype(np.uint8)
    dtype_enum = 4  # DT_UINT8


class _FloatSpec:
    dtype = np.dtype(np.float32)
    dtype_enum = 1  # DT_FLOAT


def _new_decode(body: bytes, parse: Callable[[bytes], dict] = json_codec.parse_json) -> np.ndarray:
    doc = parse(body)
    return json_codec.decode_predict(doc, {"images": _Spec()})[0]["images"]


def _resnet_decode(body: bytes, parse: Callable[[bytes], dict]) -> np.ndarray:
    doc = parse(body)
    return json_codec.decode_predict(doc, {"input_1": _FloatSpec()}, json_codec.signature_name(doc))[0]["input_1"]


def _resnet(repeats: int) -> None:
    """The ResNet50 request body, row and columnar: general path, tfsctl serve's path, and the two floors."""
    x = np.random.default_rng(1).random((1, 224, 224, 3), dtype=np.float32)
    bodies = {"row": json.dumps({"instances": x.tolist(), "signature_name": "serving_default"}).encode(),
              "columnar": json.dumps({"inputs": {"input_1": x.tolist()}}).encode()}
    print(f"\nResNet50 request: float32 [1, 224, 224, 3] as json.dumps writes it ({len(bodies['row']) / 1e6:.2f} MB), "
          f"parsed and decoded to float32; min / median of {repeats} (ms)")
    print(f"{'':44} {'row':>15} {'columnar':>15}")
    parser = simdjson.Parser()
    array_text = {k: b[b.index(b"["):b.rindex(b"]") + 1] for k, b in bodies.items()}
    rows: list[tuple[str, Callable[[str], object]]] = [
        ("general path (orjson, nested lists, numpy)", lambda k: _resnet_decode(bodies[k], json_codec.parse_json)),
        ("tfsctl serve (json_dense: simdjson)", lambda k: _resnet_decode(bodies[k], json_codec.parse_predict_json)),
        ("floor: orjson.loads(body), no array", lambda k: orjson.loads(bodies[k])),
        ("floor: simdjson array text -> float64", lambda k: np.frombuffer(
            parser.parse(array_text[k]).as_buffer(of_type="d"), np.float64)),
    ]
    for k, body in bodies.items():
        general, dense = (_resnet_decode(body, p) for p in (json_codec.parse_json, json_codec.parse_predict_json))
        assert general.tobytes() == dense.tobytes() == x.tobytes(), k
    for name, fn in rows:
        cells = []
        for k in bodies:
            runs = _runs(lambda f=fn, body=k: f(body), repeats)
            cells.append(f"{min(runs):6.1f} / {statistics.median(runs):6.1f}")
        print(f"{name:44} {cells[0]:>15} {cells[1]:>15}")
    _dense_steps(bodies["row"], repeats)


def _dense_steps(body: bytes, repeats: int) -> None:
    """json_dense's passes over the row body, each timed alone (min / median ms): where its parse goes."""
    text = body[body.index(b"["):body.rindex(b"]") + 1]
    found = json_dense.extract(body)
    assert found is not None
    rest, arrays = found
    (array,) = arrays.values()
    steps = [
        ("find the array: body.translate(run marks)", lambda: body.translate(json_dense._RUN_MARKS)),
        ("copy the array's text out of the body", lambda: body[body.index(b"["):len(body) - 1]),
        ("its brackets and commas: text.translate()", lambda: text.translate(None, json_dense._NUMBER_CHARS
                                                                              + json_dense._WS)),
        ("the shape from them (_shape_of)", lambda: json_dense._shape_of(
            text.translate(None, json_dense._NUMBER_CHARS + json_dense._WS), 4)),
        ("simdjson: array text -> float64", lambda: simdjson.Parser().parse(text).as_buffer(of_type="d")),
        ("orjson: the rest of the body", lambda: orjson.loads(rest)),
        ("float64 -> float32", lambda: array.values.astype(np.float32)),
        ("all of json_dense.extract", lambda: json_dense.extract(body)),
    ]
    print("json_dense on the row body, step by step (min / median ms; the shape line includes its translate):")
    for name, fn in steps:
        runs = _runs(fn, repeats)
        print(f"  {name:44} {min(runs):6.2f} / {statistics.median(runs):6.2f}")


def _dense_decode(body: bytes) -> np.ndarray:
    """What ``tfsctl serve`` does for a predict body: large dense arrays read from the bytes (json_dense.py)."""
    return _new_decode(body, json_codec.parse_predict_json)


def _runs(fn: Callable[[], object], repeats: int) -> list[float]:
    """Each call's time in ms (one unmeasured call first: caches, the parser's buffers)."""
    fn()
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - start) * 1000)
    return runs


def _time(fn: Callable[[], object], repeats: int) -> float:
    return statistics.median(_runs(fn, repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((1, 256, 256, 21)).astype(np.float32)
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    outputs = {"probabilities": probs.astype(np.float32), "segmentation_map": probs.argmax(-1).astype(np.int64)}
    image = rng.integers(0, 256, (1, 256, 256, 3), dtype=np.uint8)
    request = json.dumps({"instances": image.tolist()}).encode()

    gc.freeze()  # as tfsctl serve does once models are loaded (Manager(freeze_gc=True)): TF's objects leave the GC
    old_body, new_body = _old_encode(outputs), json_codec.encode_predict(outputs, row_format=True)
    parsed = np.array(json.loads(new_body)["predictions"][0]["probabilities"], np.float64).astype(np.float32)
    assert np.array_equal(parsed, outputs["probabilities"][0]), "new reply does not round-trip float32 exactly"
    assert np.array_equal(_old_decode(request), _new_decode(request))
    assert np.array_equal(_new_decode(request), _dense_decode(request))

    rows = [
        ("encode reply (row format)", _time(lambda: _old_encode(outputs), args.repeats),
         _time(lambda: json_codec.encode_predict(outputs, row_format=True), args.repeats)),
        ("decode request (256x256x3 uint8)", _time(lambda: _old_decode(request), args.repeats),
         _time(lambda: _new_decode(request), args.repeats)),
        ("decode request: nested lists vs dense", _time(lambda: _new_decode(request), args.repeats),
         _time(lambda: _dense_decode(request), args.repeats)),
    ]
    print(f"reply: {len(old_body) / 1e6:.1f} MB old, {len(new_body) / 1e6:.1f} MB new; "
          f"request: {len(request) / 1e6:.2f} MB; median of {args.repeats}")
    print(f"{'':34} {'old ms':>9} {'new ms':>9} {'speed-up':>9}")
    for name, old, new in rows:
        print(f"{name:34} {old:9.1f} {new:9.1f} {old / new:8.1f}x")
    _resnet(args.repeats)
    _b64(args.repeats)


class _StringSpec:
    dtype = np.dtype(object)
    dtype_enum = 7  # DT_STRING


def _b64(repeats: int) -> None:
    """An encoded image as ``{"b64": ...}`` (2.3 MB of bytes, a 3.1 MB body): tfsctl's parse and decode, and the
    standard library's base64 decode alone (what the decode took before pybase64)."""
    import base64

    image = np.random.default_rng(2).integers(0, 256, 2_300_000, dtype=np.uint8).tobytes()
    text = base64.b64encode(image).decode()
    body = json.dumps({"instances": [{"b64": text}]}).encode()

    def decode() -> bytes:
        doc = json_codec.parse_predict_json(body)
        return json_codec.decode_predict(doc, {"image_bytes": _StringSpec()})[0]["image_bytes"][0]

    assert decode() == image
    print(f"\nAn encoded image as {{\"b64\": ...}} ({len(body) / 1e6:.2f} MB body); min / median of {repeats} (ms)")
    for name, fn in (("tfsctl serve: parse and decode", decode),
                     ("standard library base64 decode alone", lambda: base64.b64decode(text, validate=True))):
        runs = _runs(fn, repeats)
        print(f"  {name:44} {min(runs):6.2f} / {statistics.median(runs):6.2f}")


if __name__ == "__main__":
    main()
