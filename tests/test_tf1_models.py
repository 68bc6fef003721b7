"""Every kind of SavedModel TF Serving serves, over a real gRPC server on 127.0.0.1 with the official stubs.

Models are written by the test (tfsctl.testing): a TF1 half_plus_two / half_plus_three built with tf.compat.v1 +
SavedModelBuilder (ParseExample classify/regress, assets, init op / main_op, a second {serve, gpu} meta graph), a
TF2 tf.saved_model.save half_plus_two and a Keras export. Expected values are those of TF Serving's
tensorflow_model_server_test.py (half_plus_two: x=2 -> 3.0; Predict of [1, 2, 5] -> [2.5, 3.0, 4.5]).
Each server stack is the production one (ServerCore -> RequestCore -> add_services); flags are set directly.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from concurrent import futures  # noqa: E402
from pathlib import Path  # noqa: E402

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from tensorflow.core.example import example_pb2  # noqa: E402
from tensorflow.core.framework import types_pb2  # noqa: E402
from tensorflow_serving.apis import (  # noqa: E402
    classification_pb2,
    get_model_status_pb2,
    inference_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)
from tensorflow_serving.config import model_server_config_pb2  # noqa: E402

from tfsctl.core.loader import Loader, LoadError, LoadOptions  # noqa: E402
from tfsctl.core.server_core import ServerCore, ServerCoreOptions  # noqa: E402
from tfsctl.serving.grpc_api import add_services  # noqa: E402
from tfsctl.serving.request_core import RequestCore  # noqa: E402
from tfsctl.testing import (  # noqa: E402
    half_plus_example,
    write_keras_model,
    write_tf1_half_plus,
    write_tf2_half_plus_two,
)

AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE


class Stack:
    """ServerCore + RequestCore + gRPC server on 127.0.0.1:0, as ModelServer wires them."""

    def __init__(self, models: dict[str, Path], *, options: LoadOptions | None = None, tensor_content: bool = False,
                 method_check: bool = False) -> None:
        opts = options or LoadOptions()
        self.manager = ServerCore(ServerCoreOptions(
            file_system_poll_wait_seconds=0.2, max_num_load_retries=0,
            loader_factory=lambda n, v, p: Loader(n, v, p, options=opts)))
        self.core = RequestCore(self.manager, enable_signature_method_name_check=method_check)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        add_services(self.server, self.core, tensor_content=tensor_content)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        config = model_server_config_pb2.ModelServerConfig()
        for name, base in models.items():
            config.model_config_list.config.add(name=name, base_path=str(base), model_platform="tensorflow")
        self.manager.apply_config(config)
        self.manager.start()
        self.server.start()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.models = list(models)

    def wait(self, timeout: float = 60.0) -> None:
        """Every model has an AVAILABLE version (waited for on the state monitor)."""
        assert self.manager.wait_until_ready(timeout), [self.manager.version_states(n) for n in self.models]

    def close(self) -> None:
        self.channel.close()
        self.server.stop(1)
        self.manager.stop()


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tf1_models")
    write_tf1_half_plus(root / "half_plus_two", 123, plus=2.0, gpu_meta_graph=True)
    write_tf1_half_plus(root / "half_plus_three", 1, plus=3.0, main_op=True, unknown_example_shape=True)
    write_tf2_half_plus_two(root / "tf2", 1)
    write_keras_model(root / "keras", 1)
    return {"half_plus_two": root / "half_plus_two", "half_plus_three": root / "half_plus_three",
            "tf2": root / "tf2", "keras": root / "keras"}


@pytest.fixture(scope="module")
def stack(models):
    s = Stack(models)
    s.wait()
    yield s
    s.close()


def _predict(model: str, values, shape, signature: str = "", output_filter=("y",)) -> predict_pb2.PredictRequest:
    req = predict_pb2.PredictRequest()
    req.model_spec.name = model
    req.model_spec.signature_name = signature
    req.inputs["x"].dtype = types_pb2.DT_FLOAT
    req.inputs["x"].float_val.extend(values)
    for d in shape:
        req.inputs["x"].tensor_shape.dim.add().size = d
    req.output_filter.extend(output_filter)
    return req


def _examples(request, *xs) -> None:
    for x in xs:
        request.input.example_list.examples.append(example_pb2.Example.FromString(half_plus_example(x)))


# --- Predict ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model, expected", [("half_plus_two", 3.0), ("half_plus_three", 4.0), ("tf2", 3.0)])
def test_predict_typed_reply(stack, model, expected):
    """TF Serving's VerifyPredictRequest: x=[2.0] shape [1]; the reply is read from float_val."""
    resp = stack.stub.Predict(_predict(model, [2.0], [1]), timeout=10)
    assert resp.outputs["y"].dtype == types_pb2.DT_FLOAT
    assert list(resp.outputs["y"].float_val) == [expected]
    assert not resp.outputs["y"].tensor_content
    assert resp.model_spec.name == model and resp.model_spec.signature_name == "serving_default"
    assert resp.model_spec.version.value == (123 if model == "half_plus_two" else 1)


def test_shape_3_into_minus1_by_1_runs(stack):
    """x of shape [3] into a signature declaring x:[-1, 1] runs (Session::Run does not check feed shapes)."""
    resp = stack.stub.Predict(_predict("half_plus_two", [1.0, 2.0, 5.0], [3]), timeout=10)
    assert [d.size for d in resp.outputs["y"].tensor_shape.dim] == [3]
    assert list(resp.outputs["y"].float_val) == [2.5, 3.0, 4.5]


def test_keras_export(stack):
    req = _predict("keras", [1.0], [1, 1], output_filter=())
    resp = stack.stub.Predict(req, timeout=10)
    (key,) = resp.outputs
    assert list(resp.outputs[key].float_val) == [2.0]


def test_predict_unknown_output_filter(stack):
    with pytest.raises(grpc.RpcError) as info:
        stack.stub.Predict(_predict("half_plus_two", [2.0], [1], output_filter=("nope",)), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "output tensor alias not found in signature: nope" in info.value.details()


def test_runtime_error_keeps_tf_code(stack):
    """A classify signature fed something that is no tf.Example: ParseExample's INVALID_ARGUMENT, non-UTF-8 too."""
    for payload in (b"not an example", b"\xff\xfe\x80 not utf-8"):
        req = predict_pb2.PredictRequest()
        req.model_spec.name = "half_plus_two"
        req.model_spec.signature_name = "classify_x_to_y"
        req.inputs["inputs"].dtype = types_pb2.DT_STRING
        req.inputs["inputs"].string_val.append(payload)
        req.inputs["inputs"].tensor_shape.dim.add().size = 1
        with pytest.raises(grpc.RpcError) as info:
            stack.stub.Predict(req, timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    resp = stack.stub.Predict(_predict("half_plus_two", [2.0], [1]), timeout=10)
    assert list(resp.outputs["y"].float_val) == [3.0]


# --- Classify / Regress / MultiInference (tensorflow_model_server_test.py's cases) ------------------------------------


@pytest.mark.parametrize("model", ["half_plus_two", "tf2", "half_plus_three"])
def test_classify_regress_multi_inference(stack, model):
    """TF1 ParseExample signatures, and TF2 ones whose method name is predict (method-name check off)."""
    creq = classification_pb2.ClassificationRequest()
    creq.model_spec.name = model
    creq.model_spec.signature_name = "classify_x_to_y"
    _examples(creq, 2.0)
    cres = stack.stub.Classify(creq, timeout=10)
    plus = 3.0 if model == "half_plus_three" else 2.0
    assert [[c.score for c in r.classes] for r in cres.result.classifications] == [[1.0 + plus]]
    assert cres.model_spec.signature_name == "classify_x_to_y"

    rreq = regression_pb2.RegressionRequest()
    rreq.model_spec.name = model
    rreq.model_spec.signature_name = "regress_x_to_y"
    _examples(rreq, 2.0, 4.0)
    rres = stack.stub.Regress(rreq, timeout=10)
    assert [r.value for r in rres.result.regressions] == [1.0 + plus, 2.0 + plus]

    mreq = inference_pb2.MultiInferenceRequest()
    for sig, method in (("regress_x_to_y", "tensorflow/serving/regress"),
                        ("classify_x_to_y", "tensorflow/serving/classify")):
        task = mreq.tasks.add(method_name=method)
        task.model_spec.name = model
        task.model_spec.signature_name = sig
    _examples(mreq, 2.0)
    mres = stack.stub.MultiInference(mreq, timeout=10)
    assert mres.results[0].regression_result.regressions[0].value == 1.0 + plus
    assert mres.results[1].classification_result.classifications[0].classes[0].score == 1.0 + plus
    assert [r.model_spec.signature_name for r in mres.results] == ["regress_x_to_y", "classify_x_to_y"]


def test_regress_on_float_input_signature(stack):
    """regress_x2_to_y3 takes a float tensor, not examples: TF Serving feeds it the example strings and the
    session refuses them (INVALID_ARGUMENT)."""
    req = regression_pb2.RegressionRequest()
    req.model_spec.name = "half_plus_two"
    req.model_spec.signature_name = "regress_x2_to_y3"
    _examples(req, 2.0)
    with pytest.raises(grpc.RpcError) as info:
        stack.stub.Regress(req, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_classify_on_predict_signature_does_not_fit(stack):
    req = classification_pb2.ClassificationRequest()
    req.model_spec.name = "half_plus_two"
    _examples(req, 2.0)
    with pytest.raises(grpc.RpcError) as info:
        stack.stub.Classify(req, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "No classification inputs found in SignatureDef" in info.value.details()


def test_non_utf8_example_is_invalid_argument(stack):
    req = classification_pb2.ClassificationRequest()
    req.model_spec.name = "half_plus_two"
    req.model_spec.signature_name = "classify_x_to_y"
    ex = req.input.example_list.examples.add()
    ex.features.feature["x"].bytes_list.value.append(b"\xff\xfe")  # wrong feature type, non-UTF-8 bytes
    with pytest.raises(grpc.RpcError) as info:
        stack.stub.Classify(req, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()


# --- flags ---------------------------------------------------------------------------------------------------


def test_tensor_content_flag_and_method_check(models):
    """--enable_serialization_as_tensor_content and --enable_signature_method_name_check on one stack."""
    s = Stack({"tf2": models["tf2"], "half_plus_two": models["half_plus_two"]}, tensor_content=True,
              method_check=True)
    try:
        s.wait()
        resp = s.stub.Predict(_predict("half_plus_two", [1.0, 2.0], [2]), timeout=10)
        assert not resp.outputs["y"].float_val
        np.testing.assert_array_equal(np.frombuffer(resp.outputs["y"].tensor_content, np.float32), [2.5, 3.0])
        # TF2 signatures carry the predict method name: with the check on, Classify refuses them as TF Serving does
        req = classification_pb2.ClassificationRequest()
        req.model_spec.name = "tf2"
        req.model_spec.signature_name = "classify_x_to_y"
        _examples(req, 2.0)
        with pytest.raises(grpc.RpcError) as info:
            s.stub.Classify(req, timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert ("Expected classification signature method_name to be tensorflow/serving/classify. "
                "Was: tensorflow/serving/predict") in info.value.details()
        # a real classify signature still works
        req.model_spec.name = "half_plus_two"
        assert s.stub.Classify(req, timeout=10).result.classifications[0].classes[0].score == 3.0
    finally:
        s.close()


def test_saved_model_tags_pick_the_meta_graph(models):
    s = Stack({"half_plus_two": models["half_plus_two"]},
              options=LoadOptions(saved_model_tags=frozenset({"serve", "gpu"})))
    try:
        s.wait()
        resp = s.stub.Predict(_predict("half_plus_two", [2.0], [1]), timeout=10)
        assert list(resp.outputs["y"].float_val) == [4.0]  # the {serve, gpu} graph's y2 = 0.5 x + 3
    finally:
        s.close()


def test_unknown_tags_are_a_clear_load_error(models):
    with pytest.raises(LoadError, match=r"tags \['tpu'\] could not be found.*\[\['serve'\], \['gpu', 'serve'\]\]"):
        Loader("m", 123, models["half_plus_two"] / "123",
               options=LoadOptions(saved_model_tags=frozenset({"tpu"}))).load()


def test_session_config_applies(models):
    """LoadOptions builds the session's ConfigProto: file config, then the parallelism overrides."""
    from tensorflow.core.protobuf import config_pb2

    base = config_pb2.ConfigProto(intra_op_parallelism_threads=7, allow_soft_placement=True)
    opts = LoadOptions(session_config=base.SerializeToString(), inter_op_parallelism=2,
                       per_process_gpu_memory_fraction=0.25)
    cfg = opts.config_proto()
    assert cfg.allow_soft_placement and cfg.inter_op_parallelism_threads == 2
    assert cfg.intra_op_parallelism_threads == 0  # overridden together, as TF Serving's server.cc does
    assert cfg.gpu_options.per_process_gpu_memory_fraction == pytest.approx(0.25)
    assert LoadOptions(session_config=base.SerializeToString()).config_proto().intra_op_parallelism_threads == 7
    servable = Loader("m", 1, models["half_plus_three"] / "1", options=opts).load()
    try:
        assert servable.run("", {"x": np.array([[2.0]], np.float32)})["y"].tolist() == [[4.0]]
    finally:
        servable.close()
    with pytest.raises(LoadError, match="invalid session config"):
        Loader("m", 1, models["half_plus_three"] / "1", options=LoadOptions(session_config=b"\xff\xff")).load()
