"""TFLite serving (``--prefer_tflite_model``) on real servers on 127.0.0.1, with ``.tflite`` models the tests convert.

Each model is written by TensorFlow's TFLite converter from a SavedModel the test saves, into ``tmp_path``:

- half_plus (``plus``): ``serving_default`` ``x`` float32 [-1, 1] -> ``y = 0.5 x + plus``, and ``arith``
  (``a``, ``b`` int32 [-1] -> ``sum``, ``product``): LiteRT signatures, as the converter writes them today. By
  default (TF Serving's rule) such a model gets one generated ``serving_default`` keyed ``serving_default_x``; the
  tests that use the signatures by name pass tfsctl's ``--tflite_signature_runners``.
- The same model rewritten as TF Serving's testdata is: signatures stored as ``signature_defs_metadata`` (TFLite's
  signature_def_util format), or no signatures at all (TF Serving generates ``serving_default``).
- heavy: eight 512x512 matmuls, slow enough (tens of ms a request) that concurrent requests overlap.

A version directory can hold a SavedModel computing ``0.5 x + 3`` beside a ``model.tflite`` computing ``0.5 x + 2``,
so every answer says which of the two was served. Expected values follow TF Serving's tensorflow_model_server_test
(half_plus_two: x = 2 -> 3.0).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import contextlib  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import shutil  # noqa: E402
import threading  # noqa: E402
import uuid  # noqa: E402
from concurrent import futures  # noqa: E402
from pathlib import Path  # noqa: E402

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from tensorflow_serving.apis import (  # noqa: E402
    get_model_metadata_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from tfsctl.core.loader import Loader, LoadError, LoadOptions  # noqa: E402
from tfsctl.serving.flags import FlagError  # noqa: E402
from tfsctl.serving.server import ModelServer, ServerOptions  # noqa: E402
from tfsctl.serving.testing import served as serve_model  # noqa: E402
from tfsctl.tensors import from_numpy, to_numpy  # noqa: E402
from tfsctl.testing import http_call, wait_until, write_tf1_half_plus, write_warmup_requests  # noqa: E402

_cache: dict[tuple, bytes] = {}
_lock = threading.Lock()


def _converted(kind: str, plus: float = 2.0) -> bytes:
    """A .tflite model (see the module docstring), converted once per process."""
    key = (kind, plus)
    with _lock:
        if key not in _cache:
            _cache[key] = _convert(kind, plus)
        return _cache[key]


def _convert(kind: str, plus: float) -> bytes:
    import tempfile

    import tensorflow as tf

    class HalfPlus(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32)])
        def half_plus(self, x):
            return {"y": x * 0.5 + plus}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.int32), tf.TensorSpec([None], tf.int32)])
        def arith(self, a, b):
            return {"sum": a + b, "product": a * b}

    class Heavy(tf.Module):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.w = [tf.constant(rng.standard_normal((512, 512)).astype(np.float32) / 23.0) for _ in range(8)]

        @tf.function(input_signature=[tf.TensorSpec([None, 512], tf.float32)])
        def forward(self, x):
            for w in self.w:
                x = tf.matmul(x, w)
            return {"y": x}

    class Strings(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string), tf.TensorSpec([None], tf.float32)])
        def echo(self, s, x):
            return {"s": tf.reshape(s, [-1, 1]), "n": tf.size(s), "y": x * 2.0}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def classify(self, inputs):  # classify-shaped: one string input "inputs", "scores" [N, 2]
            return {"scores": tf.fill(tf.stack([tf.size(inputs), 2]), 0.25)}

    with tempfile.TemporaryDirectory() as tmp:
        if kind == "heavy":
            module = Heavy()
            signatures = {"serving_default": module.forward}
        elif kind == "strings":
            module = Strings()
            signatures = {"serving_default": module.echo, "classify": module.classify}
        else:
            module = HalfPlus()
            signatures = {"serving_default": module.half_plus, "arith": module.arith}
        tf.saved_model.save(module, tmp, signatures=signatures)
        content = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=list(signatures)).convert()
    if kind == "metadata":
        return _as_tf_serving_sigdef_model(content)
    if kind == "unsigned":
        return _without_signatures(content)
    return content


def _without_signatures(content: bytes) -> bytes:
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    default = next(d for d in model.signatureDefs if d.signatureKey == b"serving_default")
    model.subgraphs = [model.subgraphs[default.subgraphIndex]]  # the primary subgraph is serving_default's
    model.signatureDefs = []
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _as_tf_serving_sigdef_model(content: bytes) -> bytes:
    """The serving_default signature as TF Serving's ``saved_model_half_plus_two_tflite_with_sigdef`` stores it:
    no LiteRT signature, a SignatureDef in ``signature_defs_metadata`` naming tensors with ``:0`` as TF does."""
    import flatbuffers.flexbuffers as flexbuffers
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_litert.tools import flatbuffer_utils
    from tensorflow.core.protobuf import meta_graph_pb2

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(_without_signatures(content)))
    graph = model.subgraphs[0]
    graph.tensors[graph.inputs[0]].name = b"tflite_input"  # as in TF Serving's file: a name without ":0"
    unsigned = bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    it = Interpreter(model_content=unsigned)
    sig = meta_graph_pb2.SignatureDef(method_name="tensorflow/serving/predict")
    sig.inputs["x"].name = "tflite_input:0"  # TF's name, which FixTfLiteTensorName maps to the legacy one
    sig.inputs["x"].dtype = 1
    sig.outputs["y"].name = it.get_output_details()[0]["name"]
    sig.outputs["y"].dtype = 1
    builder = flexbuffers.Builder()
    with builder.Map():
        builder.Key("serving_default")
        builder._WriteBlob(sig.SerializeToString(), append_zero=True, type_=flexbuffers.Type.STRING)  # noqa: SLF001
    data = builder.Finish()
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(unsigned))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(bytes(data), dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = "signature_defs_metadata"
    entry.buffer = len(model.buffers) - 1
    model.metadata = (model.metadata or []) + [entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def write_tflite_version(base: Path, version: int, *, kind: str = "half_plus", plus: float = 2.0,
                         saved_model_plus: float | None = None, warmup: list | None = None) -> Path:
    """``base/version`` with model.tflite (and a TF1 half_plus SavedModel when ``saved_model_plus`` is given),
    written in a temp dir and renamed, as an exporter does."""
    base.mkdir(parents=True, exist_ok=True)
    staging = base.parent / f".staging-{uuid.uuid4().hex[:8]}"
    if saved_model_plus is not None:
        tmp = write_tf1_half_plus(staging, version, plus=saved_model_plus)
    else:
        tmp = staging / str(version)
        tmp.mkdir(parents=True)
    (tmp / "model.tflite").write_bytes(_converted(kind, plus))
    if warmup:
        write_warmup_requests(tmp, warmup)
    target = base / str(version)
    tmp.rename(target)
    shutil.rmtree(staging, ignore_errors=True)
    return target


def predict_log(inputs: dict[str, np.ndarray], signature: str = ""):
    from tensorflow_serving.apis import prediction_log_pb2

    log = prediction_log_pb2.PredictionLog()
    log.predict_log.request.model_spec.name = "m"
    log.predict_log.request.model_spec.signature_name = signature
    for k, v in inputs.items():
        log.predict_log.request.inputs[k].CopyFrom(from_numpy(v))
    return log


# --- servers --------------------------------------------------------------------------------------------------------


class Served:
    """A ModelServer (the production wiring) on 127.0.0.1 with gRPC and REST, and clients for both."""

    def __init__(self, server: ModelServer, stack: contextlib.ExitStack) -> None:
        self.server = server
        self.rest_port = server.rest_port
        self.channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
        stack.callback(self.channel.close)
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)

    def predict(self, inputs: dict[str, np.ndarray], signature: str = "", output_filter=(), version=None):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "m"
        request.model_spec.signature_name = signature
        if version is not None:
            request.model_spec.version.value = version
        for k, v in inputs.items():
            request.inputs[k].CopyFrom(from_numpy(v))
        request.output_filter.extend(output_filter)
        response = self.stub.Predict(request, timeout=30)
        return response, {k: to_numpy(v) for k, v in response.outputs.items()}

    def rest(self, path: str, body: dict | None = None) -> tuple[int, dict]:
        status, _, reply = http_call(self.rest_port, "GET" if body is None else "POST", f"/v1/models/m{path}",
                                     None if body is None else json.dumps(body), timeout=30)
        return status, json.loads(reply)

    def servable(self):
        return self.server.manager.peek("m")


@pytest.fixture
def served(request):
    with contextlib.ExitStack() as stack:
        def start(base: Path, **flags) -> Served:
            server = stack.enter_context(serve_model(rest=True, ready_timeout=120, model_name="m",
                                                     model_base_path=str(base), file_system_poll_wait_seconds=0.1,
                                                     **flags))
            return Served(server, stack)

        yield start


# --- Predict, signatures, metadata --------------------------------------------------------------------------------


def test_prefer_tflite_serves_model_tflite_over_grpc_and_rest(tmp_path, served):
    base = tmp_path / "m"
    write_tflite_version(base, 1, plus=2.0, saved_model_plus=3.0)
    s = served(base, prefer_tflite_model=True, num_tflite_pools=2, tflite_signature_runners=True)

    response, out = s.predict({"x": np.array([[2.0]], np.float32)})
    assert out["y"].tolist() == [[3.0]]  # 0.5 * 2 + 2: model.tflite, not the SavedModel's + 3
    assert response.model_spec.name == "m" and response.model_spec.version.value == 1
    assert response.model_spec.signature_name == "serving_default"

    _, out = s.predict({"a": np.array([2, 3], np.int32), "b": np.array([5, 7], np.int32)}, signature="arith",
                       output_filter=["product"])
    assert list(out) == ["product"] and out["product"].tolist() == [10, 21]

    assert s.rest(":predict", {"instances": [[2.0], [5.0]]}) == (200, {"predictions": [[3.0], [4.5]]})
    code, body = s.rest(":predict", {"signature_name": "arith", "inputs": {"a": [1, 2], "b": [3, 4]}})
    assert code == 200 and body == {"outputs": {"sum": [4, 6], "product": [3, 8]}}
    code, body = s.rest("")
    assert code == 200 and body["model_version_status"][0]["state"] == "AVAILABLE"


def test_without_the_flag_the_saved_model_is_served(tmp_path):
    path = write_tflite_version(tmp_path / "m", 1, plus=2.0, saved_model_plus=3.0)
    servable = Loader("m", 1, path, options=LoadOptions(prefer_tflite_model=False)).load()
    try:
        assert servable.run("", {"x": np.array([[2.0]], np.float32)})["y"].tolist() == [[4.0]]
    finally:
        servable.close()
    # TF Serving's fallback: with the flag and no model.tflite, the SavedModel is served.
    only_saved = write_tf1_half_plus(tmp_path / "n", 1, plus=3.0)
    servable = Loader("n", 1, only_saved, options=LoadOptions(prefer_tflite_model=True)).load()
    try:
        assert servable.run("", {"x": np.array([[2.0]], np.float32)})["y"].tolist() == [[4.0]]
    finally:
        servable.close()


def test_metadata_reports_the_tflite_signatures(tmp_path, served):
    base = tmp_path / "m"
    write_tflite_version(base, 1)
    s = served(base, prefer_tflite_model=True, tflite_signature_runners=True)
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "m"
    response = s.stub.GetModelMetadata(request, timeout=30)
    sigs = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(sigs)
    assert sorted(sigs.signature_def) == ["arith", "serving_default"]
    default = sigs.signature_def["serving_default"]
    assert default.method_name == "tensorflow/serving/predict"
    assert list(default.inputs) == ["x"] and list(default.outputs) == ["y"]
    assert default.inputs["x"].dtype == 1 and [d.size for d in default.inputs["x"].tensor_shape.dim] == [-1, 1]
    assert sorted(sigs.signature_def["arith"].outputs) == ["product", "sum"]
    assert sigs.signature_def["arith"].inputs["a"].dtype == 3  # DT_INT32
    code, body = s.rest("/metadata")
    assert code == 200
    assert sorted(body["metadata"]["signature_def"]["signature_def"]) == ["arith", "serving_default"]


def _signature_defs(s: Served) -> dict:
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "m"
    sigs = get_model_metadata_pb2.SignatureDefMap()
    s.stub.GetModelMetadata(request, timeout=30).metadata["signature_def"].Unpack(sigs)
    return dict(sigs.signature_def)


def test_by_default_litert_signatures_get_tf_servings_generated_serving_default(tmp_path, served):
    """TF Serving 2.21 never uses signature runners: a converter-written model (LiteRT signatures, no
    signature_defs_metadata) is served as one generated serving_default over its first subgraph, keyed by tensor
    name without ``:N``, with allocated shapes; a TF Serving client's request works, the SavedModel's keys do not.
    ``--tflite_signature_runners`` serves the LiteRT signatures by name instead."""
    base = tmp_path / "m"
    write_tflite_version(base, 1, kind="heavy")  # one LiteRT signature: serving_default x [-1, 512] -> y
    s = served(base, prefer_tflite_model=True, num_tflite_pools=1)
    sigs = _signature_defs(s)
    assert list(sigs) == ["serving_default"]
    default = sigs["serving_default"]
    assert list(default.inputs) == ["serving_default_x"] and default.inputs["serving_default_x"].name.endswith(":0")
    assert [d.size for d in default.inputs["serving_default_x"].tensor_shape.dim] == [1, 512]  # allocated, not -1
    (out_key,) = default.outputs
    assert ":" not in out_key and out_key != "y"
    x = np.random.default_rng(2).standard_normal((3, 512)).astype(np.float32)
    _, out = s.predict({"serving_default_x": x})  # what a TF Serving client sends for this model
    np.testing.assert_allclose(out[out_key], _reference(x), rtol=1e-4, atol=1e-4)
    with pytest.raises(grpc.RpcError) as info:
        s.predict({"x": x})  # the SavedModel's key: not in TF Serving's SignatureDef
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "serving_default_x" in info.value.details()

    opted = served(base, prefer_tflite_model=True, num_tflite_pools=1, tflite_signature_runners=True)
    assert [d.size for d in _signature_defs(opted)["serving_default"].inputs["x"].tensor_shape.dim] == [-1, 512]
    np.testing.assert_allclose(opted.predict({"x": x})[1]["y"], _reference(x), rtol=1e-4, atol=1e-4)
    with pytest.raises(grpc.RpcError) as info:
        opted.predict({"serving_default_x": x})
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_by_default_a_several_signature_model_is_its_first_subgraph(tmp_path, served):
    """As TfLiteSession: the generated serving_default is the primary subgraph's, whichever signature the
    converter put first (here ``arith``'s, keys ``arith_a``/``arith_b``), and outputs whose names clash without
    ``:N`` keep the last by name (TensorInfoMap is a std::map): ``PartitionedCall:1``, ``sum``."""
    base = tmp_path / "m"
    write_tflite_version(base, 1)
    s = served(base, prefer_tflite_model=True, num_tflite_pools=1)
    sigs = _signature_defs(s)
    assert list(sigs) == ["serving_default"]
    assert sorted(sigs["serving_default"].inputs) == ["arith_a", "arith_b"]
    assert list(sigs["serving_default"].outputs) == ["PartitionedCall"]
    assert sigs["serving_default"].outputs["PartitionedCall"].name == "PartitionedCall:1"
    _, out = s.predict({"arith_a": np.array([2, 3], np.int32), "arith_b": np.array([5, 7], np.int32)})
    assert out["PartitionedCall"].tolist() == [7, 10]  # sum, resized from the allocated [1] to [2]
    code, body = s.rest(":predict", {"inputs": {"arith_a": [1], "arith_b": [2]}})
    assert (code, body) == (200, {"outputs": [3]})
    with pytest.raises(grpc.RpcError) as info:
        s.predict({"a": np.array([1], np.int32), "b": np.array([2], np.int32)}, signature="arith")
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # no such signature, as in TF Serving


def test_tf_serving_signature_rules_for_metadata_and_unsigned_models(tmp_path):
    """TF Serving's TfLiteSession: SignatureDefs from signature_defs_metadata (tensor names fixed to the model's,
    ``:0`` dropped when the model has no such name), else a generated serving_default keyed by tensor name."""
    path = write_tflite_version(tmp_path / "a", 1, kind="metadata")
    servable = Loader("a", 1, path, options=LoadOptions(prefer_tflite_model=True, num_tflite_pools=1)).load()
    try:
        sig = servable.signature_defs["serving_default"]
        assert list(servable.signature_defs) == ["serving_default"]
        assert sig.inputs["x"].name == "tflite_input"  # tflite_input:0 -> the legacy name the model has
        assert servable.run("", {"x": np.array([[2.0], [4.0]], np.float32)})["y"].tolist() == [[3.0], [4.0]]
    finally:
        servable.close()
    path = write_tflite_version(tmp_path / "b", 1, kind="unsigned")
    servable = Loader("b", 1, path, options=LoadOptions(prefer_tflite_model=True, num_tflite_pools=1)).load()
    try:
        sig = servable.signature_defs["serving_default"]
        assert list(sig.inputs) == ["serving_default_x"] and sig.inputs["serving_default_x"].name.endswith(":0")
        assert [d.size for d in sig.inputs["serving_default_x"].tensor_shape.dim] == [1, 1]  # allocated dims
        (out_key,) = sig.outputs
        assert ":" not in out_key
        out = servable.run("", {"serving_default_x": np.array([[2.0], [6.0]], np.float32)})  # resized to [2, 1]
        assert out[out_key].tolist() == [[3.0], [5.0]]
    finally:
        servable.close()


def test_string_tensors_and_classify_on_a_tflite_model(tmp_path, served):
    """Strings go in and out through LiteRT (trailing NUL bytes kept); Classify runs through the shared request
    core on a classify-shaped TFLite signature, as TF Serving runs it through its TfLiteSession."""
    from tensorflow.core.example import example_pb2
    from tensorflow_serving.apis import classification_pb2

    base = tmp_path / "m"
    write_tflite_version(base, 1, kind="strings")
    s = served(base, prefer_tflite_model=True, num_tflite_pools=1, tflite_signature_runners=True)
    _, out = s.predict({"s": np.array([b"ab", b"c\x00"], dtype=object), "x": np.array([1.0, 2.0], np.float32)})
    assert out["s"].tolist() == [[b"ab"], [b"c\x00"]] and out["n"].tolist() == 2 and out["y"].tolist() == [2.0, 4.0]
    code, body = s.rest(":predict", {"inputs": {"s": ["hé", "x"], "x": [3.0, 4.0]}})
    assert code == 200 and body["outputs"]["s"] == [["hé"], ["x"]] and body["outputs"]["n"] == 2
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "m"
    request.model_spec.signature_name = "classify"
    for _ in range(3):
        request.input.example_list.examples.append(example_pb2.Example())
    response = s.stub.Classify(request, timeout=30)
    assert [[c.score for c in row.classes] for row in response.result.classifications] == [[0.25, 0.25]] * 3
    code, body = s.rest(":classify", {"signature_name": "classify", "examples": [{}, {}]})
    assert code == 200 and body["results"] == [[["", 0.25], ["", 0.25]]] * 2  # no classes output: empty labels
    with pytest.raises(grpc.RpcError) as info:  # serving_default is not classify-shaped: TF Serving's message
        request.model_spec.signature_name = ""
        s.stub.Classify(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "Expected one input Tensor" in info.value.details()


# --- bad input, bad models -----------------------------------------------------------------------------------------


def test_bad_inputs_are_invalid_argument_and_the_server_keeps_serving(tmp_path, served):
    base = tmp_path / "m"
    write_tflite_version(base, 1)
    s = served(base, prefer_tflite_model=True, num_tflite_pools=1, tflite_signature_runners=True)
    bad = [
        ({"x": np.array([[2]], np.int32)}, "", "expects DT_FLOAT"),
        ({"z": np.array([[2.0]], np.float32)}, "", "Missing but required: {x}"),
        ({"a": np.array([1, 2], np.int32), "b": np.array([1, 2, 3], np.int32)}, "arith", "cannot take these inputs"),
    ]
    for inputs, signature, words in bad:
        with pytest.raises(grpc.RpcError) as info:
            s.predict(inputs, signature=signature)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
        assert words in info.value.details()
        # the one interpreter is still good after the failure
        assert s.predict({"x": np.array([[2.0]], np.float32)})[1]["y"].tolist() == [[3.0]]
    with pytest.raises(grpc.RpcError) as info:
        s.predict({"x": np.array([[2.0]], np.float32)}, output_filter=["nope"])
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as info:
        s.predict({"x": np.array([[2.0]], np.float32)}, signature="nope")
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # TF Serving's code for an unknown signature
    code, body = s.rest(":predict", {"inputs": {"x": [["a"]]}})
    assert code == 400 and "error" in body
    assert s.rest(":predict", {"instances": [[8.0]]}) == (200, {"predictions": [[6.0]]})


def test_a_model_tflite_that_cannot_load_is_a_clear_load_error(tmp_path):
    path = write_tf1_half_plus(tmp_path / "m", 1, plus=3.0)
    (path / "model.tflite").write_bytes(b"not a flatbuffer at all")
    with pytest.raises(LoadError, match="cannot load model.tflite: .*not a TensorFlow Lite model"):
        Loader("m", 1, path, options=LoadOptions(prefer_tflite_model=True)).load()
    truncated = _converted("half_plus")[:200]
    (path / "model.tflite").write_bytes(truncated)
    with pytest.raises(LoadError, match="cannot load model.tflite"):
        Loader("m", 1, path, options=LoadOptions(prefer_tflite_model=True)).load()


# --- hot swap, warmup -----------------------------------------------------------------------------------------------


def test_a_new_tflite_version_is_hot_swapped_in(tmp_path, served):
    base = tmp_path / "m"
    write_tflite_version(base, 1, plus=2.0)
    s = served(base, prefer_tflite_model=True, num_tflite_pools=1, tflite_signature_runners=True)
    assert s.predict({"x": np.array([[2.0]], np.float32)})[1]["y"].tolist() == [[3.0]]
    write_tflite_version(base, 2, plus=10.0)
    wait_until(lambda: s.predict({"x": np.array([[2.0]], np.float32)})[0].model_spec.version.value == 2, what="v2")
    response, out = s.predict({"x": np.array([[2.0]], np.float32)})
    assert out["y"].tolist() == [[11.0]]
    code, body = s.rest("")
    states = {v["version"]: v["state"] for v in body["model_version_status"]}
    assert states.get("2") == "AVAILABLE"
    wait_until(lambda: {v["version"]: v["state"] for v in s.rest("")[1]["model_version_status"]}.get("1") == "END",
               what="version 1 unloaded")


def test_warmup_records_are_replayed_and_a_bad_one_fails_the_load(tmp_path):
    logs = [predict_log({"x": np.array([[float(i)]], np.float32)}) for i in range(3)]
    logs.append(predict_log({"a": np.array([1], np.int32), "b": np.array([2], np.int32)}, "arith"))
    path = write_tflite_version(tmp_path / "m", 1, warmup=logs)
    runners = LoadOptions(prefer_tflite_model=True, num_tflite_pools=1, tflite_signature_runners=True)
    servable = Loader("m", 1, path, options=runners).load()
    try:
        assert servable.warmup_records == 4
    finally:
        servable.close()
    bad = write_tflite_version(tmp_path / "n", 1, warmup=[predict_log({"x": np.array([[1]], np.int32)})])
    with pytest.raises(LoadError, match="warmup record 0 failed: .*expects DT_FLOAT"):
        Loader("n", 1, bad, options=runners).load()


# --- the pool -------------------------------------------------------------------------------------------------------


def _concurrent_predicts(s: Served, count: int, rows: int = 32) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(1)
    inputs = [rng.standard_normal((rows, 512)).astype(np.float32) for _ in range(count)]
    with futures.ThreadPoolExecutor(count) as pool:
        outs = list(pool.map(lambda x: s.predict({"x": x})[1]["y"], inputs))
    return list(zip(inputs, outs, strict=True))


def _reference(x: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=_converted("heavy"))
    return it.get_signature_runner("serving_default")(x=x)["y"]


def test_num_tflite_pools_interpreters_serve_requests_at_once(tmp_path, served):
    base = tmp_path / "m"
    write_tflite_version(base, 1, kind="heavy")
    s = served(base, prefer_tflite_model=True, tflite_signature_runners=True, num_tflite_pools=3)
    pool = s.servable().pool
    assert pool.size == 3 and pool.batch_rows == 0
    results = _concurrent_predicts(s, 12, rows=64)  # ~10 ms an invocation: requests overlap
    assert pool.busy_peak >= 2, "concurrent requests never ran on two interpreters at once"
    x, y = results[5]
    np.testing.assert_allclose(y, _reference(x), rtol=1e-4, atol=1e-4)

    one = tmp_path / "one"
    write_tflite_version(one, 1, kind="heavy")
    s1 = served(one, prefer_tflite_model=True, num_tflite_pools=1, tflite_signature_runners=True)
    _concurrent_predicts(s1, 6)
    assert s1.servable().pool.size == 1 and s1.servable().pool.busy_peak == 1


def test_interpreters_per_pool_merges_waiting_requests(tmp_path, served):
    base = tmp_path / "m"
    write_tflite_version(base, 1, kind="heavy")
    s = served(base, prefer_tflite_model=True, tflite_signature_runners=True, num_tflite_pools=1,
               num_tflite_interpreters_per_pool=4)
    pool = s.servable().pool
    assert pool.batch_rows == 125  # ceil(500 / 4), TfLiteSession's max_execution_batch_size
    results = _concurrent_predicts(s, 12, rows=16)
    assert pool.batches >= 1, "no request waiting for the interpreter was merged into a batch"
    for x, y in results:  # each request gets its own rows back
        assert y.shape == (16, 512)
        np.testing.assert_allclose(y, _reference(x), rtol=1e-4, atol=1e-4)


def test_enable_batching_merges_tflite_requests_like_saved_model_ones(tmp_path, served):
    base = tmp_path / "m"
    write_tflite_version(base, 1, kind="heavy")
    params = tmp_path / "batching.txt"
    params.write_text("max_batch_size { value: 64 } batch_timeout_micros { value: 20000 } "
                      "num_batch_threads { value: 1 }\n")
    s = served(base, prefer_tflite_model=True, tflite_signature_runners=True, num_tflite_pools=1, enable_batching=True,
               batching_parameters_file=str(params))
    results = _concurrent_predicts(s, 8, rows=4)
    for x, y in results:
        np.testing.assert_allclose(y, _reference(x), rtol=1e-4, atol=1e-4)
    registry = s.server.metrics.registry
    count = registry.get_sample_value("tfsctl_batch_size_count", {"model_name": "m"})
    total = registry.get_sample_value("tfsctl_batch_size_sum", {"model_name": "m"})
    assert count and total / count > 4, (count, total)  # some batch held more than one request's 4 rows
    assert s.servable().pool.batches == 0  # merged by the Batcher, not by the pool (interpreters_per_pool = 1)


# --- flags ----------------------------------------------------------------------------------------------------------


def test_the_tflite_flags_reach_the_loader():
    options = ServerOptions.from_args(["--model_base_path=/m", "--prefer_tflite_model", "--num_tflite_pools=3",
                                       "--num_tflite_interpreters_per_pool=2", "--tflite_signature_runners"])
    options.validate()
    load = options.load_settings().load_options
    assert (load.prefer_tflite_model, load.num_tflite_pools, load.num_tflite_interpreters_per_pool) == (True, 3, 2)
    assert load.tflite_signature_runners is True
    default = ServerOptions.from_args(["--model_base_path=/m"]).load_settings().load_options
    assert default.prefer_tflite_model is False and default.tflite_signature_runners is False  # TF Serving's rule
    alone = ServerOptions.from_args(["--model_base_path=/m", "--tflite_signature_runners"])
    with pytest.raises(FlagError, match="--tflite_signature_runners .* needs --prefer_tflite_model"):
        alone.validate()  # a flag that cannot act is refused by name


def test_the_platform_config_sets_tflite_as_its_legacy_config_does(tmp_path, caplog):
    path = tmp_path / "platform.txt"
    path.write_text('''platform_configs {
  key: "tensorflow"
  value { source_adapter_config {
    [type.googleapis.com/tensorflow.serving.SavedModelBundleSourceAdapterConfig] {
      legacy_config { prefer_tflite_model: true num_tflite_pools: 2 num_tflite_interpreters_per_pool: 3 }
    } } }
}
''')
    options = ServerOptions.from_args(["--model_base_path=/m", f"--platform_config_file={path}"])
    load = options.load_settings().load_options
    assert (load.prefer_tflite_model, load.num_tflite_pools, load.num_tflite_interpreters_per_pool) == (True, 2, 3)
    # a TFLite flag beside the platform config is ignored, as in server.cc, with a warning naming it
    options = ServerOptions.from_args(["--model_base_path=/m", f"--platform_config_file={path}",
                                       "--num_tflite_pools=9"])
    with caplog.at_level(logging.WARNING, logger="tfsctl.serving.server"):
        assert options.load_settings().load_options.num_tflite_pools == 2
    assert "--num_tflite_pools is ignored" in caplog.text
    # tfsctl's own --tflite_signature_runners has no platform config field: it applies beside one
    options = ServerOptions.from_args(["--model_base_path=/m", f"--platform_config_file={path}",
                                       "--tflite_signature_runners"])
    assert options.load_settings().load_options.tflite_signature_runners is True
    path.write_text(path.read_text().replace("prefer_tflite_model: true", "prefer_tflite_model: false"))
    with pytest.raises(FlagError, match="--tflite_signature_runners .* needs --prefer_tflite_model"):
        options.load_settings()


# --- export --to-tflite, inspect -------------------------------------------------------------------------------------


def _cli(*args: str):
    from typer.testing import CliRunner

    from tfsctl.cli import app

    return CliRunner().invoke(app, list(args))


def test_export_to_tflite_writes_model_tflite_into_the_version(tmp_path):
    from tfsctl.testing import write_tf2_half_plus_two

    source = write_tf2_half_plus_two(tmp_path / "src", 1)  # serving_default + classify/regress over tf.Examples
    result = _cli("export", str(source), str(tmp_path / "out"), "--to-tflite", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    version = tmp_path / "out" / "1"
    assert report["path"] == str(version) and report["tflite_signatures"] == ["serving_default"]
    assert any("'classify_x_to_y' left out of model.tflite" in w for w in report["warnings"])
    assert (version / "saved_model.pb").is_file() and (version / "model.tflite").is_file()
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no staging left
    # its one signature is also written as signature_defs_metadata, so TF Serving's rule 1 (and tfsctl's default)
    # serves it under the SavedModel's keys
    servable = Loader("m", 1, version, options=LoadOptions(prefer_tflite_model=True, num_tflite_pools=1)).load()
    try:
        assert servable.warmup_records == report["warmup_records"] == 1  # the export's record replays on TFLite
        assert servable.run("", {"x": np.array([2.0, 4.0], np.float32)})["y"].tolist() == [3.0, 4.0]
        with_runners = Loader("m", 1, version, options=LoadOptions(prefer_tflite_model=True, num_tflite_pools=1,
                                                                    tflite_signature_runners=True)).load()
        try:  # the same SignatureDef as the LiteRT signature's: metadata wins with or without the flag
            assert servable.signature_defs == with_runners.signature_defs
        finally:
            with_runners.close()
    finally:
        servable.close()
    info = json.loads(_cli("inspect", str(version / "model.tflite"), "--json").output)
    assert info["signature_source"] == "signature_defs_metadata" and info["signature_runners"] == []


def test_export_to_tflite_with_several_signatures_says_they_need_the_flag(tmp_path):
    import tensorflow as tf

    class Two(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
        def double(self, x):
            return {"y": x * 2.0}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
        def triple(self, x):
            return {"y": x * 3.0}

    module = Two()
    tf.saved_model.save(module, str(tmp_path / "src"), signatures={"serving_default": module.double,
                                                                  "triple": module.triple})
    result = _cli("export", str(tmp_path / "src"), str(tmp_path / "out"), "--to-tflite", "--no-warmup", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert report["tflite_signatures"] == ["serving_default", "triple"]
    assert any("--tflite_signature_runners" in w and "serving_default_x" in w for w in report["warnings"])
    version = tmp_path / "out" / "1"
    opts = LoadOptions(prefer_tflite_model=True, num_tflite_pools=1, tflite_signature_runners=True)
    servable = Loader("m", 1, version, options=opts).load()
    try:
        assert servable.run("triple", {"x": np.array([2.0], np.float32)})["y"].tolist() == [6.0]
    finally:
        servable.close()
    servable = Loader("m", 1, version, options=LoadOptions(prefer_tflite_model=True, num_tflite_pools=1)).load()
    try:
        assert list(servable.signature_defs) == ["serving_default"]  # TF Serving's generated one
    finally:
        servable.close()


def test_export_to_tflite_that_cannot_convert_writes_nothing(tmp_path):
    import tensorflow as tf

    class Strings(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def parse(self, s):
            return {"n": tf.strings.to_number(s)}  # a TF op LiteRT's builtins lack

    module = Strings()
    tf.saved_model.save(module, str(tmp_path / "src"), signatures={"serving_default": module.parse})
    result = _cli("export", str(tmp_path / "src"), str(tmp_path / "out"), "--to-tflite", "--no-warmup")
    assert result.exit_code != 0
    assert "--to-tflite: the TFLite converter failed" in result.output
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_inspect_reads_a_tflite_file_and_a_version_with_one(tmp_path):
    version = write_tflite_version(tmp_path / "m", 7, saved_model_plus=3.0)
    result = _cli("inspect", str(version / "model.tflite"), "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.output[result.output.index("{"):])
    # the server's default view (TF Serving's), and the LiteRT signatures the opt-in flag would serve
    assert info["kind"] == "tflite" and info["signature_source"] == "generated serving_default"
    assert info["signature_runners"] == ["arith", "serving_default"]
    sigs = {s["name"]: s for s in info["signatures"]}
    assert sorted(sigs) == ["serving_default"]
    x = sigs["serving_default"]["inputs"][0]
    assert (x["key"], x["dtype"], x["shape"]) == ("arith_a", "DT_INT32", [1])  # the first subgraph is arith's
    result = _cli("inspect", str(version), "--json")  # a SavedModel with a model.tflite beside it
    info = json.loads(result.output[result.output.index("{"):])
    assert info["kind"] == "saved_model" and info["tflite"]["version"] == 7
    assert [s["name"] for s in info["tflite"]["signatures"]] == ["serving_default"]
    result = _cli("inspect", str(version / "model.tflite"))
    assert result.exit_code == 0 and "signature 'serving_default'" in result.output
    assert "served by name with --tflite_signature_runners): arith, serving_default" in " ".join(result.output.split())
    (tmp_path / "bad.tflite").write_bytes(b"nope")
    result = _cli("inspect", str(tmp_path / "bad.tflite"))
    assert result.exit_code == 1 and "not a TensorFlow Lite model" in result.output


def test_inspect_a_base_path_with_tflite_only_versions(tmp_path):
    write_tflite_version(tmp_path / "m", 1, saved_model_plus=3.0)
    write_tflite_version(tmp_path / "m", 2)  # model.tflite only
    result = _cli("inspect", str(tmp_path / "m"), "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.output[result.output.index("{"):])
    assert [(v["version"], v["valid"]) for v in info["versions"]] == [(1, True), (2, True)]
    assert info["latest"]["kind"] == "tflite" and info["latest"]["version"] == 2
    result = _cli("inspect", str(tmp_path / "m"), "--signature", "serving_default")
    assert result.exit_code == 0 and "TFLite model" in result.output and "signature 'serving_default'" in result.output
