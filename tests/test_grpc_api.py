"""TF Serving's gRPC API over a real in-process ModelServer on 127.0.0.1, called with the official stubs.

One server for the module: model ``toy`` with versions 1 (y = x) and 2 (y = 2x), labels stable=1 / canary=2.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pathlib import Path  # noqa: E402

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc  # noqa: E402
from tensorflow.core.example import example_pb2  # noqa: E402
from tensorflow.core.framework import tensor_pb2, types_pb2  # noqa: E402
from tensorflow_serving.apis import (  # noqa: E402
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)
from tensorflow_serving.config import model_server_config_pb2  # noqa: E402

from tfsctl.serving.server import DEFAULT_GRPC_MAX_MESSAGE_BYTES  # noqa: E402
from tfsctl.serving.tensors import from_numpy, make_shape, to_numpy  # noqa: E402
from tfsctl.serving.testing import served as serve_model  # noqa: E402
from tfsctl.testing import toy_example, wait_until, write_toy_model  # noqa: E402

MAX_BYTES = 2 * 1024 * 1024
AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE
X = np.array([[1.0, 2.0, 3.0, 4.0], [-1.0, 0.5, 0.0, 8.0]], dtype=np.float32)


def _model_config(name: str, base: Path, labels: dict[str, int] | None = None, policy_all: bool = True):
    config = model_server_config_pb2.ModelServerConfig()
    mc = config.model_config_list.config.add(name=name, base_path=str(base), model_platform="tensorflow")
    if policy_all:
        mc.model_version_policy.all.SetInParent()
    for k, v in (labels or {}).items():
        mc.version_labels[k] = v
    return config


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("grpc_api")
    base = root / "toy"
    write_toy_model(base, 1, scale=1.0)
    write_toy_model(base, 2, scale=2.0)
    cfg = root / "models.config"
    cfg.write_text(
        f'model_config_list {{ config {{ name: "toy" base_path: "{base}" model_platform: "tensorflow"\n'
        '  model_version_policy { all {} }\n'
        '  version_labels { key: "stable" value: 1 } version_labels { key: "canary" value: 2 } } }\n'
    )
    with serve_model(ready_timeout=60, grace=2, model_config_file=str(cfg), file_system_poll_wait_seconds=0.2,
                     grpc_max_message_bytes=MAX_BYTES,
                     allow_version_labels_for_unavailable_models=True) as server:  # labels at start-up, as TF Serving
        wait_until(lambda: sorted(s.version for s in server.manager.version_states("toy") if s.state == AVAILABLE)
                   == [1, 2], 60, "toy versions 1 and 2 AVAILABLE", every=0.05,
                   explain=lambda: server.manager.version_states("toy"))
        channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
        yield {
            "server": server, "root": root, "base": base, "channel": channel,
            "predict": prediction_service_pb2_grpc.PredictionServiceStub(channel),
            "model": model_service_pb2_grpc.ModelServiceStub(channel),
        }
        channel.close()


def _predict_request(x=X, name="toy", version=None, label=None, signature="", key="x"):
    req = predict_pb2.PredictRequest()
    req.model_spec.name = name
    if version is not None:
        req.model_spec.version.value = version
    if label is not None:
        req.model_spec.version_label = label
    if signature:
        req.model_spec.signature_name = signature
    if x is not None:
        req.inputs[key].CopyFrom(from_numpy(x))
    return req


def _examples(*rows):
    return [example_pb2.Example.FromString(toy_example(r)) for r in rows]


def _good_predict(served) -> None:
    resp = served["predict"].Predict(_predict_request(), timeout=10)
    np.testing.assert_allclose(to_numpy(resp.outputs["y"]), X * 2.0)


# --- Predict ---------------------------------------------------------------------------------------------------------


def test_predict_typed_reply_resolves_latest_version(served):
    resp = served["predict"].Predict(_predict_request(), timeout=10)
    assert resp.model_spec.name == "toy"
    assert resp.model_spec.version.value == 2
    assert resp.model_spec.signature_name == "serving_default"
    # TF Serving's default reply: typed fields (AsProtoField), as clients reading .float_val expect
    assert not resp.outputs["y"].tensor_content
    assert resp.outputs["y"].dtype == types_pb2.DT_FLOAT
    assert [d.size for d in resp.outputs["y"].tensor_shape.dim] == [2, 4]
    np.testing.assert_allclose(resp.outputs["y"].float_val, (X * 2.0).ravel())


def test_shape_left_to_the_graph(served):
    """x of shape [4] into a signature declaring x:[-1, 4] runs, as Session::Run in TF Serving does."""
    resp = served["predict"].Predict(_predict_request(x=X[0]), timeout=10)
    assert [d.size for d in resp.outputs["y"].tensor_shape.dim] == [4]
    np.testing.assert_allclose(resp.outputs["y"].float_val, X[0] * 2.0)


def test_predict_with_float_val(served):
    req = _predict_request(x=None)
    t = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=make_shape((2, 4)))
    t.float_val.extend(X.reshape(-1).tolist())
    req.inputs["x"].CopyFrom(t)
    resp = served["predict"].Predict(req, timeout=10)
    np.testing.assert_allclose(to_numpy(resp.outputs["y"]), X * 2.0)


def test_predict_version_and_label(served):
    for kwargs, version in (({"version": 1}, 1), ({"version": 2}, 2), ({"label": "stable"}, 1),
                            ({"label": "canary"}, 2)):
        resp = served["predict"].Predict(_predict_request(**kwargs), timeout=10)
        assert resp.model_spec.version.value == version, kwargs
        np.testing.assert_allclose(to_numpy(resp.outputs["y"]), X * float(version))


def test_predict_output_filter_on_multi_output_signature(served):
    serialized = np.array([toy_example(r) for r in X], dtype=object)
    req = _predict_request(x=serialized, signature="classify", key="inputs", version=1)
    full = served["predict"].Predict(req, timeout=10)
    assert set(full.outputs) == {"classes", "scores"}
    req.output_filter.append("scores")
    only = served["predict"].Predict(req, timeout=10)
    assert set(only.outputs) == {"scores"}
    assert only.model_spec.signature_name == "classify"
    np.testing.assert_allclose(to_numpy(only.outputs["scores"]), X[:, :2])


# --- Classify / Regress / MultiInference --------------------------------------------------------------------------


def test_classify(served):
    req = classification_pb2.ClassificationRequest()
    req.model_spec.name = "toy"
    req.model_spec.signature_name = "classify"
    req.input.example_list.examples.extend(_examples(*X))
    resp = served["predict"].Classify(req, timeout=10)
    assert resp.model_spec.version.value == 2 and resp.model_spec.signature_name == "classify"
    assert len(resp.result.classifications) == 2
    for row, x in zip(resp.result.classifications, X, strict=True):
        assert [c.label for c in row.classes] == ["class0", "class1"]
        np.testing.assert_allclose([c.score for c in row.classes], x[:2] * 2.0)


def test_classify_with_context_merges_features(served):
    req = classification_pb2.ClassificationRequest()
    req.model_spec.name = "toy"
    req.model_spec.version.value = 1
    req.model_spec.signature_name = "classify"
    ctx = req.input.example_list_with_context.context
    ctx.features.feature["x"].float_list.value.extend([9.0, 9.0, 9.0, 9.0])
    ctx.features.feature["unused"].int64_list.value.append(7)
    ex = req.input.example_list_with_context.examples.add()  # no features: takes x from the context
    ex.features.feature["other"].int64_list.value.append(1)
    req.input.example_list_with_context.examples.extend(_examples([1, 2, 3, 4]))  # its own x wins
    resp = served["predict"].Classify(req, timeout=10)
    scores = [[c.score for c in row.classes] for row in resp.result.classifications]
    np.testing.assert_allclose(scores, [[9.0, 9.0], [1.0, 2.0]])


def test_regress(served):
    req = regression_pb2.RegressionRequest()
    req.model_spec.name = "toy"
    req.model_spec.version_label = "stable"
    req.model_spec.signature_name = "regress"
    req.input.example_list.examples.extend(_examples(*X))
    resp = served["predict"].Regress(req, timeout=10)
    assert resp.model_spec.version.value == 1
    np.testing.assert_allclose([r.value for r in resp.result.regressions], X.sum(axis=1), rtol=1e-6)


def test_multi_inference(served):
    req = inference_pb2.MultiInferenceRequest()
    for sig, method in (("classify", "tensorflow/serving/classify"), ("regress", "tensorflow/serving/regress")):
        task = req.tasks.add(method_name=method)
        task.model_spec.name = "toy"
        task.model_spec.signature_name = sig
    req.input.example_list.examples.extend(_examples(*X))
    resp = served["predict"].MultiInference(req, timeout=10)
    assert len(resp.results) == 2
    cls, reg = resp.results
    assert cls.model_spec.signature_name == "classify" and cls.model_spec.version.value == 2
    np.testing.assert_allclose([[c.score for c in r.classes] for r in cls.classification_result.classifications],
                               X[:, :2] * 2.0)
    assert reg.model_spec.signature_name == "regress"
    np.testing.assert_allclose([r.value for r in reg.regression_result.regressions], X.sum(axis=1) * 2.0, rtol=1e-6)


# --- Metadata / status / reload ---------------------------------------------------------------------------------


def test_get_model_metadata(served):
    req = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    req.model_spec.name = "toy"
    req.model_spec.version.value = 1
    resp = served["predict"].GetModelMetadata(req, timeout=10)
    assert resp.model_spec.name == "toy" and resp.model_spec.version.value == 1
    assert resp.model_spec.signature_name == ""  # as TF Serving: metadata is per model version, not per signature
    assert resp.metadata["signature_def"].type_url == "type.googleapis.com/tensorflow.serving.SignatureDefMap"
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    assert resp.metadata["signature_def"].Unpack(sig_map)
    assert {"serving_default", "classify", "regress"} <= set(sig_map.signature_def)
    default = sig_map.signature_def["serving_default"]
    assert set(default.inputs) == {"x"} and set(default.outputs) == {"y"}
    assert sig_map.signature_def["classify"].method_name == "tensorflow/serving/classify"


def test_get_model_status(served):
    req = get_model_status_pb2.GetModelStatusRequest()
    req.model_spec.name = "toy"
    resp = served["model"].GetModelStatus(req, timeout=10)
    assert [(s.version, s.state) for s in resp.model_version_status] == [(2, AVAILABLE), (1, AVAILABLE)]
    assert all(s.status.error_code == 0 for s in resp.model_version_status)
    req.model_spec.version_label = "stable"  # get_model_status_impl ignores a label: every version, as above
    resp = served["model"].GetModelStatus(req, timeout=10)
    assert [s.version for s in resp.model_version_status] == [2, 1]


def test_reload_config_adds_and_removes_a_model(served):
    other = served["root"] / "other"
    write_toy_model(other, 7, scale=5.0)
    toy = _model_config("toy", served["base"], {"stable": 1, "canary": 2})
    both = model_server_config_pb2.ModelServerConfig()
    both.CopyFrom(toy)
    both.model_config_list.config.add(name="other", base_path=str(other), model_platform="tensorflow")

    resp = served["model"].HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=both), timeout=60)
    assert resp.status.error_code == 0
    out = served["predict"].Predict(_predict_request(name="other"), timeout=10)
    assert out.model_spec.version.value == 7
    np.testing.assert_allclose(to_numpy(out.outputs["y"]), X * 5.0)

    resp = served["model"].HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=toy), timeout=60)
    assert resp.status.error_code == 0
    def other_code() -> grpc.StatusCode:
        try:
            served["predict"].Predict(_predict_request(name="other"), timeout=10)
        except grpc.RpcError as e:
            return e.code()
        return grpc.StatusCode.OK

    wait_until(lambda: other_code() == grpc.StatusCode.NOT_FOUND, 20, "model other to be gone (NOT_FOUND)",
               every=0.05, explain=other_code)
    _good_predict(served)


# --- errors ---------------------------------------------------------------------------------------------------------


def _with_filter(req, *names):
    req.output_filter.extend(names)
    return req


def _with_extra(req):
    req.inputs["z"].CopyFrom(from_numpy(X))
    return req


def _bad_content(req):
    req.inputs["x"].tensor_content = req.inputs["x"].tensor_content[:-4]
    return req


def _classify_on(sig: str):
    req = classification_pb2.ClassificationRequest()
    req.model_spec.name = "toy"
    req.model_spec.signature_name = sig
    req.input.example_list.examples.extend(_examples(*X))
    return req


def _metadata(field: str):
    req = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=[field])
    req.model_spec.name = "toy"
    return req


def _multi_two_models():
    req = inference_pb2.MultiInferenceRequest()
    for name in ("toy", "toy2"):
        t = req.tasks.add(method_name="tensorflow/serving/regress")
        t.model_spec.name = name
        t.model_spec.signature_name = "regress"
    req.input.example_list.examples.extend(_examples(X[0]))
    return req


def _huge_shape(dims, content: bytes = b""):
    req = _predict_request(x=None)
    t = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=make_shape(tuple(dims)))
    if content:
        t.tensor_content = content
    else:
        t.float_val.append(1.0)  # padded to the shape by TF's rules: must not be allocated
    req.inputs["x"].CopyFrom(t)
    return req


def _raw_x(proto):
    req = _predict_request(x=None)
    req.inputs["x"].CopyFrom(proto)
    return req


def _multi(*tasks):
    req = inference_pb2.MultiInferenceRequest()
    for sig, method in tasks:
        t = req.tasks.add(method_name=method)
        t.model_spec.name = "toy"
        t.model_spec.signature_name = sig
    req.input.example_list.examples.extend(_examples(X[0]))
    return req


def _regress_on(sig: str):
    req = regression_pb2.RegressionRequest()
    req.model_spec.name = "toy"
    req.model_spec.signature_name = sig
    req.input.example_list.examples.extend(_examples(X[0]))
    return req


REGRESS = "tensorflow/serving/regress"
ERROR_CASES = {
    "unknown model": ("Predict", lambda: _predict_request(name="nope"), grpc.StatusCode.NOT_FOUND, ["nope"]),
    "unknown version": ("Predict", lambda: _predict_request(version=99), grpc.StatusCode.NOT_FOUND, ["toy", "99"]),
    # As TF Serving ("Unrecognized servable version label"): INVALID_ARGUMENT, not NOT_FOUND.
    "unknown label": ("Predict", lambda: _predict_request(label="beta"), grpc.StatusCode.INVALID_ARGUMENT,
                      ["toy", "beta"]),
    "unknown signature": ("Predict", lambda: _predict_request(signature="nosig"),
                          grpc.StatusCode.FAILED_PRECONDITION, ["toy", "nosig"]),
    "missing input": ("Predict", lambda: _predict_request(x=None), grpc.StatusCode.INVALID_ARGUMENT,
                      ["toy", "serving_default", "Missing but required: {x}"]),
    "extra input": ("Predict", lambda: _with_extra(_predict_request()), grpc.StatusCode.INVALID_ARGUMENT,
                    ["toy", "serving_default", "Sent extra: {z}"]),
    "wrong dtype": ("Predict", lambda: _predict_request(x=X.astype(np.int32)), grpc.StatusCode.INVALID_ARGUMENT,
                    ["toy", "serving_default", "'x'", "DT_FLOAT"]),
    "truncated tensor_content": ("Predict", lambda: _bad_content(_predict_request()),
                                 grpc.StatusCode.INVALID_ARGUMENT,
                                 ["toy", "tensor parsing error: x", "tensor_content"]),
    "no model name": ("Predict", lambda: _predict_request(name=""), grpc.StatusCode.INVALID_ARGUMENT, ["name"]),
    "unknown output_filter": ("Predict", lambda: _with_filter(_predict_request(), "nope"),
                              grpc.StatusCode.INVALID_ARGUMENT, ["toy", "nope"]),
    # TF Serving (method-name check off): a predict signature whose input is not 'inputs' does not fit Classify
    "classify on a predict signature": ("Classify", lambda: _classify_on("serving_default"),
                                        grpc.StatusCode.INVALID_ARGUMENT,
                                        ["toy", "serving_default", "No classification inputs found"]),
    "classify unknown signature": ("Classify", lambda: _classify_on("nosig"),
                                   grpc.StatusCode.INVALID_ARGUMENT,
                                   ["toy", "No signature was found with the name: nosig"]),
    "classify empty input": ("Classify", lambda: classification_pb2.ClassificationRequest(
        model_spec={"name": "toy", "signature_name": "classify"}), grpc.StatusCode.INVALID_ARGUMENT, ["empty"]),
    "metadata field": ("GetModelMetadata", lambda: _metadata("graph"), grpc.StatusCode.INVALID_ARGUMENT,
                       ["toy", "graph"]),
    "regress on a classify signature": ("Regress", lambda: _regress_on("classify"),
                                        grpc.StatusCode.INVALID_ARGUMENT,
                                        ["toy", "classify", "Expected one output Tensor."]),
    "metadata without fields": ("GetModelMetadata", lambda: get_model_metadata_pb2.GetModelMetadataRequest(
        model_spec={"name": "toy"}), grpc.StatusCode.INVALID_ARGUMENT, ["toy", "signature_def"]),
    "multi inference duplicate signature": ("MultiInference", lambda: _multi(
        ("regress", REGRESS), ("regress", REGRESS)), grpc.StatusCode.INVALID_ARGUMENT,
        ["Duplicate evaluation of signature: regress"]),
    "multi inference unknown method": ("MultiInference", lambda: _multi(("regress", "tensorflow/serving/predict")),
                                       grpc.StatusCode.UNIMPLEMENTED, ["toy", "tensorflow/serving/predict"]),
    "multi inference no tasks": ("MultiInference", inference_pb2.MultiInferenceRequest,
                                 grpc.StatusCode.INVALID_ARGUMENT, ["tasks"]),
    "multi inference two models": ("MultiInference", _multi_two_models, grpc.StatusCode.INVALID_ARGUMENT,
                                   ["same model"]),
    "huge shape via float_val": ("Predict", lambda: _huge_shape([100_000, 100_000, 4]),
                                 grpc.StatusCode.INVALID_ARGUMENT, ["toy", "'x'", "bytes"]),
    "overflowing shape": ("Predict", lambda: _huge_shape([2**40, 2**40, 4], b"\0" * 16),
                          grpc.StatusCode.INVALID_ARGUMENT, ["toy", "'x'"]),
    "negative dimension": ("Predict", lambda: _huge_shape([-1, 4]), grpc.StatusCode.INVALID_ARGUMENT,
                           ["toy", "tensor parsing error: x"]),
    "odd scomplex_val": ("Predict", lambda: _raw_x(tensor_pb2.TensorProto(
        dtype=types_pb2.DT_COMPLEX64, tensor_shape=make_shape((1,)), scomplex_val=[1.0, 2.0, 3.0])),
        grpc.StatusCode.INVALID_ARGUMENT, ["toy", "pairs"]),
    "rank over 64": ("Predict", lambda: _raw_x(tensor_pb2.TensorProto(
        dtype=types_pb2.DT_FLOAT, tensor_shape=make_shape((1,) * 65), float_val=[1.0])),
        grpc.StatusCode.INVALID_ARGUMENT, ["toy", "rank 65"]),
    "message too large": ("Predict", lambda: _predict_request(x=np.zeros((MAX_BYTES // 16 + 1, 4), np.float32)),
                          grpc.StatusCode.RESOURCE_EXHAUSTED, []),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_error_codes_and_next_request_succeeds(served, case):
    method, build, code, words = ERROR_CASES[case]
    with pytest.raises(grpc.RpcError) as info:
        getattr(served["predict"], method)(build(), timeout=10)
    assert info.value.code() == code, info.value.details()
    for word in words:
        assert word in info.value.details(), (word, info.value.details())
    _good_predict(served)


def test_model_status_errors(served):
    req = get_model_status_pb2.GetModelStatusRequest()
    req.model_spec.name = "nope"
    with pytest.raises(grpc.RpcError) as info:
        served["model"].GetModelStatus(req, timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND and "nope" in info.value.details()
    req.model_spec.name = "toy"
    req.model_spec.version.value = 42
    with pytest.raises(grpc.RpcError) as info:
        served["model"].GetModelStatus(req, timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND and "42" in info.value.details()


def test_reload_with_bad_config_is_rejected_and_serving_continues(served):
    bad = model_server_config_pb2.ModelServerConfig()
    bad.model_config_list.config.add(name="", base_path="/nonexistent")
    with pytest.raises(grpc.RpcError) as info:
        served["model"].HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=bad), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    _good_predict(served)


def test_default_max_message_fits_a_1080p_float_image():
    assert DEFAULT_GRPC_MAX_MESSAGE_BYTES > 1920 * 1080 * 3 * 4 + 1024


def test_metrics_count_grpc_calls(served):
    metrics = served["server"].metrics
    ok = {"model_name": "toy", "status": "OK"}
    before = metrics.registry.get_sample_value(":tensorflow:serving:request_count_total", ok) or 0.0
    _good_predict(served)
    assert metrics.registry.get_sample_value(":tensorflow:serving:request_count_total", ok) == before + 1
    nf = {"model_name": "<unknown>", "status": "NOT_FOUND"}
    before = metrics.registry.get_sample_value(":tensorflow:serving:request_count_total", nf) or 0.0
    for name in ("ghost1", "ghost2"):
        with pytest.raises(grpc.RpcError):
            served["predict"].Predict(_predict_request(name=name), timeout=10)
    assert metrics.registry.get_sample_value(":tensorflow:serving:request_count_total", nf) == before + 2
    ghost = {**nf, "model_name": "ghost1"}
    assert metrics.registry.get_sample_value(":tensorflow:serving:request_count_total", ghost) is None
    bad = {"model_name": "toy", "status": "INVALID_ARGUMENT"}
    before = metrics.registry.get_sample_value(":tensorflow:serving:request_count_total", bad) or 0.0
    with pytest.raises(grpc.RpcError):
        served["predict"].Predict(_predict_request(x=None), timeout=10)
    assert metrics.registry.get_sample_value(":tensorflow:serving:request_count_total", bad) == before + 1


# --- health and reflection ----------------------------------------------------------------------------------------


def test_health_overall_and_per_model(served):
    stub = health_pb2_grpc.HealthStub(served["channel"])
    serving = health_pb2.HealthCheckResponse.SERVING
    wait_until(lambda: stub.Check(health_pb2.HealthCheckRequest(service="toy"), timeout=5).status == serving,
               10, "per-model health SERVING", every=0.05)
    assert stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status == serving
    with pytest.raises(grpc.RpcError) as info:
        stub.Check(health_pb2.HealthCheckRequest(service="never-configured"), timeout=5)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_tf_serving_services(served):
    stub = reflection_pb2_grpc.ServerReflectionStub(served["channel"])
    reqs = [reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="tensorflow.serving.PredictionService")]
    responses = list(stub.ServerReflectionInfo(iter(reqs), timeout=10))
    names = {s.name for s in responses[0].list_services_response.service}
    assert {"tensorflow.serving.PredictionService", "tensorflow.serving.ModelService",
            "grpc.health.v1.Health"} <= names
    assert responses[1].file_descriptor_response.file_descriptor_proto, "descriptor for PredictionService"


def test_model_status_of_a_configured_model_without_versions_is_not_found(served):
    toy = _model_config("toy", served["base"], {"stable": 1, "canary": 2})
    with_ghost = model_server_config_pb2.ModelServerConfig()
    with_ghost.CopyFrom(toy)
    missing = served["root"] / "no-such-dir"
    with_ghost.model_config_list.config.add(name="ghost", base_path=str(missing), model_platform="tensorflow")
    served["model"].HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=with_ghost), timeout=3)
    try:
        req = get_model_status_pb2.GetModelStatusRequest()
        req.model_spec.name = "ghost"
        with pytest.raises(grpc.RpcError) as info:  # as TF Serving: no versions known -> NOT_FOUND, not an empty list
            served["model"].GetModelStatus(req, timeout=10)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert "ghost" in info.value.details() and str(missing) in info.value.details()
        assert "does not exist" in info.value.details()
    finally:
        resp = served["model"].HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=toy),
                                                         timeout=30)
        assert resp.status.error_code == 0
    _good_predict(served)


def test_reload_moving_a_label_to_an_unavailable_version_is_failed_precondition(served):
    moved = _model_config("toy", served["base"], {"stable": 1, "canary": 3})  # there is no version 3
    with pytest.raises(grpc.RpcError) as info:
        served["model"].HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=moved), timeout=30)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION, info.value.details()  # as TF Serving
    assert "canary" in info.value.details() and "3" in info.value.details()
    resp = served["predict"].Predict(_predict_request(label="canary"), timeout=10)  # nothing changed
    assert resp.model_spec.version.value == 2


def test_100k_unexpected_keys_get_a_capped_message(served):
    """Issue 11: an error listing names lists a few and a count, so it fits gRPC's metadata limit."""
    req = _predict_request()
    for i in range(100_000):
        req.inputs[f"e{i:05d}"].dtype = types_pb2.DT_FLOAT  # ~16 bytes each: the message fits in 2 MB
    with pytest.raises(grpc.RpcError) as info:
        served["predict"].Predict(req, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = info.value.details()
    assert len(details) < 2000
    assert "Sent extra: {e00000,e00001,e00002,e00003,e00004 and 99995 more}" in details
    _good_predict(served)


def test_tensor_content_inputs_and_typed_inputs_agree(served):
    typed = _predict_request(x=None)
    typed.inputs["x"].CopyFrom(from_numpy(X, typed=True))
    a = served["predict"].Predict(typed, timeout=10)
    b = served["predict"].Predict(_predict_request(), timeout=10)
    assert a.outputs["y"] == b.outputs["y"]
    np.testing.assert_allclose(a.outputs["y"].float_val, (X * 2).ravel())
