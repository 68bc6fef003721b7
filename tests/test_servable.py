"""Loader + Servable on real toy SavedModels: validation matrix, typed errors, warmup, corrupt versions."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from tfsctl.core.loader import Loader, LoadError
from tfsctl.core.servable import Servable, examples_from_input
from tfsctl.errors import FailedPrecondition, InvalidArgument
from tfsctl.savedmodel import CLASSIFY_METHOD, PREDICT_METHOD, REGRESS_METHOD
from tfsctl.testing import (
    toy_example,
    toy_predict_log,
    write_matmul_model,
    write_toy_model,
    write_warmup_requests,
)

X = np.arange(8, dtype=np.float32).reshape(2, 4)


@pytest.fixture(scope="module")
def servable(tmp_path_factory: pytest.TempPathFactory) -> Servable:
    base = tmp_path_factory.mktemp("servable") / "toy"
    path = write_toy_model(base, 3, scale=2.0)
    loader = Loader("toy", 3, path)
    s = loader.load()
    yield s
    loader.unload()


def test_loaded_servable_metadata(servable: Servable) -> None:
    assert (servable.name, servable.version) == ("toy", 3)
    assert {"serving_default", "classify", "regress"} <= set(servable.signature_defs)
    assert servable.method_name("") == PREDICT_METHOD
    assert servable.method_name("classify") == CLASSIFY_METHOD
    assert servable.method_name("regress") == REGRESS_METHOD
    assert servable.resources.disk_bytes > 0
    assert servable.resources.load_seconds > 0


def test_predict_runs(servable: Servable) -> None:
    out = servable.run("", {"x": X})
    np.testing.assert_allclose(out["y"], X * 2.0)
    assert out["y"].dtype == np.float32
    assert servable.run("serving_default", {"x": X}, ["y"]).keys() == {"y"}
    empty = servable.run("", {"x": np.zeros((0, 4), np.float32)})
    assert empty["y"].shape == (0, 4)


def test_classify_and_regress_signatures(servable: Servable) -> None:
    ex = np.array([toy_example([1, 2, 3, 4]), toy_example([0.5, 0, 0, 1])], dtype=object)
    out = servable.run("classify", {"inputs": ex})
    np.testing.assert_allclose(out["scores"], [[2, 4], [1, 0]])
    assert out["classes"].tolist() == [[b"class0", b"class1"]] * 2
    only_scores = servable.run("classify", {"inputs": ex}, ["scores"])
    assert only_scores.keys() == {"scores"}
    np.testing.assert_allclose(servable.run("regress", {"inputs": ex})["outputs"], [20, 3])


@pytest.mark.parametrize(
    "inputs, needle",
    [
        ({}, "Missing but required: {x}."),
        ({"x": X, "z": X}, "input size does not match signature: 2!=1 len({x,z}) != len({x}). Sent extra: {z}."),
        ({"y": X}, "Sent extra: {y}. Missing but required: {x}."),
        ({"x": X.astype(np.float64)}, "input 'x' expects DT_FLOAT (float32) but got float64"),
        ({"x": X.astype(np.int32)}, "input 'x' expects DT_FLOAT (float32) but got int32"),
        ({"x": np.array([[b"a"] * 4], dtype=object)}, "input 'x' expects DT_FLOAT"),
        # shapes are the graph's business (test_shapes_are_left_to_the_graph); the key check still applies
        ({"x": np.ones((2, 3), np.float32), "z": X}, "Sent extra: {z}"),
    ],
)
def test_invalid_inputs(servable: Servable, inputs: dict, needle: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        servable.run("serving_default", inputs)
    msg = str(exc.value)
    assert needle in msg
    assert "model 'toy'" in msg and "signature 'serving_default'" in msg


def test_shapes_are_left_to_the_graph(servable: Servable) -> None:
    """TF Serving does not check feed shapes against the signature: [4] and [2, 3] into x:[-1, 4] run."""
    np.testing.assert_allclose(servable.run("", {"x": X[0]})["y"], X[0] * 2.0)
    np.testing.assert_allclose(servable.run("", {"x": np.ones((2, 3), np.float32)})["y"], np.full((2, 3), 2.0))


def test_many_unexpected_keys_give_a_short_message(servable: Servable) -> None:
    inputs = {f"k{i:06d}": X for i in range(100_000)} | {"x": X}
    with pytest.raises(InvalidArgument) as exc:
        servable.run("", inputs)
    assert len(exc.value.message) < 1000
    assert "Sent extra: {k000000,k000001,k000002,k000003,k000004 and 99995 more}" in exc.value.message


def test_string_input_dtype_checked(servable: Servable) -> None:
    with pytest.raises(InvalidArgument, match="input 'inputs' expects DT_STRING but got float32"):
        servable.run("classify", {"inputs": np.ones(2, np.float32)})


def test_unknown_signature(servable: Servable) -> None:
    with pytest.raises(FailedPrecondition,
                       match='Serving signature key "nope" not found.*classify,regress,serving_default'):
        servable.run("nope", {"x": X})
    with pytest.raises(FailedPrecondition):
        servable.method_name("nope")


def test_bad_output_filter(servable: Servable) -> None:
    with pytest.raises(InvalidArgument, match="output tensor alias not found in signature: scores Outputs expected"):
        servable.run("", {"x": X}, ["scores"])
    with pytest.raises(InvalidArgument, match="duplicate output tensor alias: y"):
        servable.run("", {"x": X}, ["y", "y"])


def test_a_filter_naming_every_output_reuses_the_warm_callable(servable: Servable) -> None:
    """A client's output_filter listing all outputs (tfsctl predict asks for segmentation_map, DeepLab's only one)
    runs on the callable warmup built for "all outputs": a new one costs about a second on DeepLab."""
    everything = servable.run("", {"x": X})
    before = dict(servable._runners)
    out = servable.run("", {"x": X}, ["y"])
    np.testing.assert_allclose(out["y"], everything["y"])
    assert servable._runners == before


def test_runtime_invalid_argument(servable: Servable) -> None:
    with pytest.raises(InvalidArgument, match="signature 'classify': .*Could not parse example input"):
        servable.run("classify", {"inputs": np.array([b"not an example"], dtype=object)})


def test_examples_from_input_merges_context() -> None:
    from tensorflow.core.example import example_pb2
    from tensorflow_serving.apis import input_pb2

    inp = input_pb2.Input()
    ctx = inp.example_list_with_context.context
    ctx.features.feature["x"].float_list.value.extend([9, 9, 9, 9])
    ctx.features.feature["k"].int64_list.value.append(1)
    e = inp.example_list_with_context.examples.add()
    e.features.feature["x"].float_list.value.extend([1, 2, 3, 4])
    (raw,) = examples_from_input(inp)
    merged = example_pb2.Example.FromString(raw)
    assert list(merged.features.feature["x"].float_list.value) == [1, 2, 3, 4]
    assert list(merged.features.feature["k"].int64_list.value) == [1]
    with pytest.raises(InvalidArgument, match="Input is empty"):
        examples_from_input(input_pb2.Input())


# --- warmup ---


def test_warmup_runs(tmp_path: Path) -> None:
    from tensorflow_serving.apis import prediction_log_pb2

    path = write_toy_model(tmp_path / "m", 1, warmup=3)
    classify = prediction_log_pb2.PredictionLog()
    classify.classify_log.request.model_spec.signature_name = "classify"
    classify.classify_log.request.input.example_list.examples.add().features.feature["x"].float_list.value.extend(
        [1, 2, 3, 4]
    )
    regress = prediction_log_pb2.PredictionLog()
    regress.regress_log.request.model_spec.signature_name = "regress"
    regress.regress_log.request.input.CopyFrom(classify.classify_log.request.input)
    logs = [toy_predict_log(np.ones((2, 4), np.float32)), classify, regress]
    write_warmup_requests(path, logs)
    loader = Loader("toy", 1, path)
    s = loader.load()
    assert s.warmup_records == 3
    loader.unload()


def test_toy_warmup_option_written(tmp_path: Path) -> None:
    loader = Loader("toy", 1, write_toy_model(tmp_path / "m", 1, warmup=2))
    assert loader.load().warmup_records == 2
    loader.unload()


def test_broken_warmup_file_fails_load(tmp_path: Path) -> None:
    path = write_toy_model(tmp_path / "m", 1, warmup=1)
    (path / "assets.extra" / "tf_serving_warmup_requests").write_bytes(b"\x00garbage that is no TFRecord")
    with pytest.raises(LoadError, match="model 'toy' version 1 .*warmup"):
        Loader("toy", 1, path).load()


def test_failing_warmup_request_fails_load(tmp_path: Path) -> None:
    path = write_toy_model(tmp_path / "m", 1)
    log = toy_predict_log(np.ones((1, 4), np.float32))
    log.predict_log.request.inputs["z"].CopyFrom(log.predict_log.request.inputs["x"])  # an input the model lacks
    write_warmup_requests(path, [toy_predict_log(np.ones((1, 4), np.float32)), log])
    with pytest.raises(LoadError, match="warmup record 1 failed: .*Sent extra: {z}"):
        Loader("toy", 1, path).load()


def test_too_many_warmup_records_fails_load(tmp_path: Path) -> None:
    path = write_toy_model(tmp_path / "m", 1)
    write_warmup_requests(path, [toy_predict_log(np.ones((1, 4), np.float32))] * 4)
    with pytest.raises(LoadError, match="more than the maximum of 3 records"):
        Loader("toy", 1, path, max_warmup_records=3).load()


# --- corrupt versions ---


def test_garbage_saved_model_pb(tmp_path: Path) -> None:
    path = write_toy_model(tmp_path / "m", 1)
    (path / "saved_model.pb").write_bytes(b"this is not a protobuf \xff\xff\xff")
    with pytest.raises(LoadError, match="cannot parse the SavedModel proto"):
        Loader("toy", 1, path).load()


def test_missing_variables(tmp_path: Path) -> None:
    path = write_toy_model(tmp_path / "m", 1)
    shutil.rmtree(path / "variables")
    with pytest.raises(LoadError, match="TensorFlow could not load it"):
        Loader("toy", 1, path).load()


def test_half_copied_and_missing_dirs(tmp_path: Path) -> None:
    (tmp_path / "m" / "1").mkdir(parents=True)
    with pytest.raises(LoadError, match="no saved_model.pb"):
        Loader("toy", 1, tmp_path / "m" / "1").load()
    with pytest.raises(LoadError, match="does not exist"):
        Loader("toy", 2, tmp_path / "m" / "2").load()


def test_unload_closes(tmp_path: Path) -> None:
    loader = Loader("toy", 1, write_toy_model(tmp_path / "m", 1))
    assert loader.estimate_resources().disk_bytes > 0
    s = loader.load()
    loader.unload()
    with pytest.raises(FailedPrecondition, match="unloaded"):
        s.run("", {"x": X})


def test_warmup_options_and_log_kinds(tmp_path: Path) -> None:
    from tensorflow_serving.apis import prediction_log_pb2

    from tfsctl.core.loader import LoadOptions

    path = write_toy_model(tmp_path / "m", 1)
    multi = prediction_log_pb2.PredictionLog()
    req = multi.multi_inference_log.request
    for sig, method in (("classify", CLASSIFY_METHOD), ("regress", REGRESS_METHOD)):
        task = req.tasks.add(method_name=method)
        task.model_spec.name = "toy"
        task.model_spec.signature_name = sig
    req.input.example_list.examples.add().features.feature["x"].float_list.value.extend([1, 2, 3, 4])
    write_warmup_requests(path, [multi])
    assert Loader("toy", 1, path, options=LoadOptions(num_request_iterations_for_warmup=3)).load().warmup_records == 1
    session_run = prediction_log_pb2.PredictionLog()
    session_run.session_run_log.SetInParent()
    write_warmup_requests(path, [multi, session_run])
    with pytest.raises(LoadError, match="warmup record 1: Unsupported log_type for warmup: session_run_log"):
        Loader("toy", 1, path).load()
    # --enable_model_warmup=false: the records are not even read
    s = Loader("toy", 1, path, options=LoadOptions(enable_model_warmup=False)).load()
    assert s.warmup_records == 0
    s.close()


def test_concurrent_runs_with_different_output_filters(servable: Servable) -> None:
    """No lock around the session: many threads, several cached callables, every result right."""
    from concurrent.futures import ThreadPoolExecutor

    ex = np.array([toy_example([1, 2, 3, 4])], dtype=object)

    def call(i: int) -> bool:
        x = np.full((1, 4), float(i), np.float32)
        if i % 3 == 0:
            return servable.run("", {"x": x})["y"].tolist() == (x * 2).tolist()
        filt = ["scores"] if i % 3 == 1 else ["classes", "scores"]
        out = servable.run("classify", {"inputs": ex}, filt)
        return list(out) == filt and out["scores"].tolist() == [[2.0, 4.0]]

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(call, range(300)))


def test_tf_error_codes_are_kept() -> None:
    import grpc

    from tfsctl.core.servable import serving_error

    assert isinstance(serving_error(3, "m"), InvalidArgument)
    assert isinstance(serving_error(9, "m"), FailedPrecondition)
    assert serving_error(11, "m").grpc_code == grpc.StatusCode.OUT_OF_RANGE
    assert serving_error(4, "m").grpc_code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert serving_error(8, "m").grpc_code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_signature_defaults_fill_missing_inputs(servable: Servable) -> None:
    """SignatureDef.defaults (TF's GetInputValues): a missing input with a default is fed its default."""
    from tfsctl.serving.tensors import from_numpy

    sig = type(servable.signature_defs["serving_default"])()
    sig.CopyFrom(servable.signature_defs["serving_default"])
    sig.defaults["x"].CopyFrom(from_numpy(np.full((1, 4), 3.0, np.float32)))
    other = Servable("toy", 9, servable.path, {"serving_default": sig}, session=servable.session)
    assert other.run("", {})["y"].tolist() == [[6.0] * 4]
    assert other.run("", {"x": X})["y"].tolist() == (X * 2).tolist()


def test_method_name_check_on_predict(servable: Servable) -> None:
    """With --enable_signature_method_name_check, Predict refuses other methods with INTERNAL (predict_util.cc)."""
    from tensorflow_serving.apis import predict_pb2

    from tfsctl.core import inference
    from tfsctl.errors import Internal
    from tfsctl.serving.tensors import from_numpy

    sig = type(servable.signature_defs["serving_default"])()
    sig.CopyFrom(servable.signature_defs["serving_default"])
    sig.method_name = "custom/method"
    other = Servable("toy", 9, servable.path, {"serving_default": sig}, session=servable.session)
    req = predict_pb2.PredictRequest()
    req.inputs["x"].CopyFrom(from_numpy(X))
    assert inference.run_predict(other, req)[1]["y"].tolist() == (X * 2).tolist()  # check off: runs
    with pytest.raises(Internal, match="Expected prediction signature method_name to be one of"):
        inference.run_predict(other, req, method_check=True)


def _runner_of(servable: Servable):
    (runner,) = servable._runners.values()
    return runner


def test_short_steps_move_to_the_callers_thread_and_long_ones_stay_pooled(tmp_path: Path) -> None:
    """A toy step (microseconds) runs in the caller's thread after a few calls, with the same results; a step of
    milliseconds keeps TF's inter-op pool; an explicit inter-op setting in the session config turns it off."""
    from tensorflow.core.protobuf import config_pb2

    from tfsctl.core.loader import LoadOptions

    x = np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)
    toy = write_toy_model(tmp_path / "toy", 1, scale=2.0)
    loader = Loader("toy", 1, toy, options=LoadOptions(enable_model_warmup=False))
    small = loader.load()
    try:
        for _ in range(12):
            np.testing.assert_allclose(small.run("", {"x": x})["y"], x * 2.0)
        assert _runner_of(small).inline
        np.testing.assert_allclose(small.run("", {"x": x})["y"], x * 2.0)
    finally:
        loader.unload()

    config = config_pb2.ConfigProto(inter_op_parallelism_threads=2).SerializeToString()
    loader = Loader("toy", 1, toy, options=LoadOptions(enable_model_warmup=False, session_config=config))
    pinned = loader.load()
    try:
        for _ in range(12):
            pinned.run("", {"x": x})
        assert not _runner_of(pinned).inline
    finally:
        loader.unload()

    big = write_matmul_model(tmp_path / "big", 1, 1024, 4)
    loader = Loader("big", 1, big, options=LoadOptions(enable_model_warmup=False))
    slow = loader.load()
    try:
        ones = np.ones((64, 1024), np.float32)
        for _ in range(12):
            np.testing.assert_allclose(slow.run("", {"x": ones})["y"], ones, rtol=1e-4)
        assert not _runner_of(slow).inline
    finally:
        loader.unload()

    # Steps that grow (a batch thousands of times larger) go back to the pool; small ones come back inline.
    both = write_matmul_model(tmp_path / "both", 1, 512, 4)
    loader = Loader("both", 1, both, options=LoadOptions(enable_model_warmup=False))
    servable = loader.load()
    try:
        one, many = np.ones((1, 512), np.float32), np.ones((4096, 512), np.float32)  # 8.6 GFLOP a step
        for _ in range(12):
            servable.run("", {"x": one})
        assert _runner_of(servable).inline
        for _ in range(17):  # a window still holding small steps, then a full window of long ones
            np.testing.assert_allclose(servable.run("", {"x": many})["y"], many, rtol=1e-4)
        assert not _runner_of(servable).inline
        for _ in range(24):
            servable.run("", {"x": one})
        assert _runner_of(servable).inline
    finally:
        loader.unload()
