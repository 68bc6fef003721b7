"""Signature rules and reply decoding, on SignatureDef / PredictResponse protos built here (no server, no TF)."""

from __future__ import annotations

import numpy as np
import pytest

from tfsctl.client.apis import get_model_metadata_pb2, predict_pb2, types_pb2
from tfsctl.client.outputs import ClassNames, to_class_map, top_k
from tfsctl.client.predict import decode_outputs, fit_size
from tfsctl.client.signature import plan_image_request, resolve_signature
from tfsctl.errors import ClientError


def _sig(inputs: dict, outputs: dict):
    """SignatureDef from ``{key: (DT_*, shape or None)}`` maps."""
    meta = get_model_metadata_pb2.SignatureDefMap()
    sig = meta.signature_def["s"]
    for target, spec in ((sig.inputs, inputs), (sig.outputs, outputs)):
        for key, (dtype, shape) in spec.items():
            info = target[key]
            info.name = f"{key}:0"
            info.dtype = dtype
            if shape is None:
                info.tensor_shape.unknown_rank = True
            else:
                for d in shape:
                    info.tensor_shape.dim.add(size=d)
    return sig


IMG_U8 = (types_pb2.DT_UINT8, [-1, -1, -1, 3])
SEG = {"segmentation_map": (types_pb2.DT_INT64, [-1, -1, -1]), "probabilities": (types_pb2.DT_FLOAT, [-1, -1, -1, 21])}


def test_signature_default_rule():
    assert resolve_signature({"serving_default": 1, "predict_images": 2}) == "serving_default"
    assert resolve_signature({"segment": 1, "__saved_model_init_op": 2}) == "segment"
    assert resolve_signature({"a": 1, "b": 2}, "b") == "b"
    with pytest.raises(ClientError, match="no 'serving_default' signature; choose one with --signature"):
        resolve_signature({"a": 1, "b": 2}, model="m")
    with pytest.raises(ClientError, match=r"no signature 'x' \(has: a, b\)"):
        resolve_signature({"a": 1, "b": 2}, "x")


def test_image_plan_fills_sizes_and_casts():
    plan = plan_image_request(_sig({"images": IMG_U8, "height": (types_pb2.DT_INT32, [-1]),
                                    "width": (types_pb2.DT_INT32, [-1])}, SEG), "s")
    assert plan.outputs == ("segmentation_map",)  # the class map only: probabilities never travel
    img = np.full((5, 7, 3), 200, np.uint8)
    t = plan.inputs(img)
    assert t["images"].shape == (1, 5, 7, 3) and t["images"].dtype == np.uint8
    assert t["height"].tolist() == [5] and t["width"].tolist() == [7] and t["height"].dtype == np.int32

    f = plan_image_request(_sig({"images": (types_pb2.DT_FLOAT, [-1, -1, -1, 3]),
                                 "height": (types_pb2.DT_INT64, []), "width": (types_pb2.DT_INT64, [])}, SEG),
                           "s", scale="0-1")
    t = f.inputs(img)
    assert t["images"].dtype == np.float32 and t["images"].max() == pytest.approx(200 / 255)
    assert t["height"].shape == () and int(t["height"]) == 5 and t["width"].dtype == np.int64
    grey = plan_image_request(_sig({"x": (types_pb2.DT_HALF, [-1, 28, 28, 1])}, {"y": (types_pb2.DT_FLOAT, [-1, 10])}),
                              "s", scale="-1-1")
    assert grey.channels == 1 and grey.fixed_size == (28, 28) and grey.outputs == ("y",)
    assert grey.inputs(np.zeros((28, 28, 1), np.uint8))["x"].min() == -1.0


def test_image_plan_errors_name_the_input():
    with pytest.raises(ClientError, match=r"also needs input 'threshold' DT_FLOAT \[\]"):
        plan_image_request(_sig({"images": IMG_U8, "threshold": (types_pb2.DT_FLOAT, [])}, SEG), "s", model="m")
    with pytest.raises(ClientError, match="no image input"):
        plan_image_request(_sig({"inputs": (types_pb2.DT_STRING, [-1])}, SEG), "s")
    with pytest.raises(ClientError, match="several image-like inputs"):
        plan_image_request(_sig({"a": IMG_U8, "b": IMG_U8}, SEG), "s")
    with pytest.raises(ClientError, match="also needs input 'a'"):  # --input-key picks b; a stays unfilled
        plan_image_request(_sig({"a": IMG_U8, "b": IMG_U8}, SEG), "s", input_key="b")
    with pytest.raises(ClientError, match="has no output 'x'"):
        plan_image_request(_sig({"a": IMG_U8}, SEG), "s", output_keys=("x",))
    with pytest.raises(ClientError, match="--scale must be one of"):
        plan_image_request(_sig({"images": IMG_U8}, SEG), "s", scale="0-2")
    classes = plan_image_request(_sig({"images": IMG_U8}, {"classes": (types_pb2.DT_STRING, [-1, 5]),
                                                          "scores": (types_pb2.DT_FLOAT, [-1, 5])}), "s")
    assert classes.outputs == ("scores", "classes")


def test_replies_decode_from_typed_fields_and_tensor_content():
    """TF Serving answers in typed *_val fields by default; --enable_serialization_as_tensor_content packs them."""
    seg = np.array([[[0, 2], [7, 15]]], np.int64)
    scores = np.array([[0.1, 0.7, 0.2]], np.float32)
    typed = predict_pb2.PredictResponse()
    t = typed.outputs["SemanticPredictions"]
    t.dtype = types_pb2.DT_INT64
    for d in seg.shape:
        t.tensor_shape.dim.add(size=d)
    t.int64_val.extend(seg.ravel().tolist())
    s = typed.outputs["scores"]
    s.dtype = types_pb2.DT_FLOAT
    for d in scores.shape:
        s.tensor_shape.dim.add(size=d)
    s.float_val.extend(scores.ravel().tolist())
    packed = predict_pb2.PredictResponse()
    packed.outputs["SemanticPredictions"].CopyFrom(t)
    packed.outputs["SemanticPredictions"].ClearField("int64_val")
    packed.outputs["SemanticPredictions"].tensor_content = seg.tobytes()
    for response in (typed, packed):
        arrays = decode_outputs(response, ("SemanticPredictions",))
        np.testing.assert_array_equal(to_class_map(arrays["SemanticPredictions"], "k"), seg[0])
    arrays = decode_outputs(typed, ("scores",))
    rows = top_k(arrays, ("scores",), ClassNames(["a", "b", "c"]), 2)
    assert [(r.name, r.class_id) for r in rows] == [("b", 1), ("c", 2)]
    assert rows[0].score == pytest.approx(0.7)
    with pytest.raises(ClientError, match="no output 'nokey'"):
        decode_outputs(typed, ("nokey",))


def test_class_maps_and_sizes():
    logits = np.zeros((1, 2, 3, 4), np.float32)
    logits[0, 1, 2, 3] = 1
    assert to_class_map(logits, "k").tolist() == [[0, 0, 0], [0, 0, 3]]
    assert to_class_map(np.ones((1, 2, 2, 1), np.int32), "k").tolist() == [[1, 1], [1, 1]]
    with pytest.raises(ClientError, match="not in 0..65535"):
        to_class_map(np.full((2, 2), -1), "k")
    assert fit_size(2250, 3000, 1024) == (768, 1024)
    assert fit_size(100, 50, 1024) == (100, 50) and fit_size(4000, 10, 0) == (4000, 10)


def test_protos_without_tf_runtime_then_real_tensorflow():
    """apis first (no TF runtime), then the real `import tensorflow`: one set of message classes, package intact."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys\n"
        "from tfsctl.client import apis\n"
        "assert 'tensorflow.python' not in sys.modules and 'tensorflow' not in sys.modules\n"
        "import tensorflow as tf\n"
        "assert tf.core.framework.tensor_pb2.TensorProto is apis.tensor_pb2.TensorProto\n"
        "assert type(tf.make_tensor_proto([1.0, 2.0])) is apis.tensor_pb2.TensorProto\n"
        "assert int(tf.constant(2) * 3) == 6\n"
        "print('ok')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "TF_CPP_MIN_LOG_LEVEL": "2"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]
