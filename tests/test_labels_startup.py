"""Version labels around a slow initial load, as TF Serving's ServerCore orders them.

ServerCore::ReloadConfig checks the labels (UpdateModelVersionLabelMap) *before* it adds the models, and
ServerCore::Create is that first ReloadConfig followed by waiting for the initial loads. So, with a specific-version
policy and a load that takes a while:

- a first config that labels the version it is about to load is refused at start-up (FAILED_PRECONDITION "Request
  to assign label to version 123 of model ..., which is not currently available for inference") unless
  ``--allow_version_labels_for_unavailable_models``: tensorflow_model_server 2.21 does not start with it either;
- the way TF Serving's own tests label a version (http_rest_api_handler_test.cc: ServerCore::Create with the
  policy, then ReloadConfig with ``version_labels``) works however slow the load is, because the server only
  returns from start-up (and opens its ports) once the initial loads are done.

The load is made slow by wrapping the real Loader; the server, ports, model and requests are real.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import threading  # noqa: E402

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from tensorflow_serving.apis import (  # noqa: E402
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.config import model_server_config_pb2  # noqa: E402

from tfsctl.core.loader import Loader  # noqa: E402
from tfsctl.errors import FailedPrecondition  # noqa: E402
from tfsctl.serving.server import ModelServer, ServerOptions  # noqa: E402
from tfsctl.serving.tensors import from_numpy, to_numpy  # noqa: E402
from tfsctl.serving.testing import served as serve_model  # noqa: E402
from tfsctl.testing import write_toy_model  # noqa: E402

X = np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32)
LOAD_SECONDS = 1.5  # long enough that anything not waiting for the load sees version 123 still LOADING
AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE


@pytest.fixture
def slow_loads(monkeypatch) -> list[int]:
    """Every Loader.load takes LOAD_SECONDS longer; returns the versions whose load finished."""
    real_load = Loader.load
    finished: list[int] = []

    def slow_load(self):
        threading.Event().wait(LOAD_SECONDS)  # the slowness under test, not a synchronisation
        servable = real_load(self)
        finished.append(self.version)
        return servable

    monkeypatch.setattr(Loader, "load", slow_load)
    return finished


def _config(base, labels: dict[str, int], versions=(123,)) -> model_server_config_pb2.ModelServerConfig:
    config = model_server_config_pb2.ModelServerConfig()
    mc = config.model_config_list.config.add(name="m", base_path=str(base), model_platform="tensorflow")
    mc.model_version_policy.specific.versions.extend(versions)
    for label, version in labels.items():
        mc.version_labels[label] = version
    return config


def _server(tmp_path, labels: dict[str, int], **flags) -> ModelServer:
    base = tmp_path / "m"
    if not base.exists():
        write_toy_model(base, 123, scale=123.0)
        write_toy_model(base, 124, scale=124.0)
    cfg = tmp_path / "models.config"
    cfg.write_text(str(_config(base, labels)))
    return ModelServer(ServerOptions(port=0, rest_api_port=0, host="127.0.0.1", model_config_file=str(cfg),
                                     file_system_poll_wait_seconds=0.1, **flags))


def _predict(channel: grpc.Channel, label: str) -> int:
    req = predict_pb2.PredictRequest()
    req.model_spec.name = "m"
    req.model_spec.version_label = label
    req.inputs["x"].CopyFrom(from_numpy(X))
    resp = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(req, timeout=30)
    served = resp.model_spec.version.value
    np.testing.assert_allclose(to_numpy(resp.outputs["y"]), X * served)
    return served


def _reload(channel: grpc.Channel, config: model_server_config_pb2.ModelServerConfig) -> None:
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    stub.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=config), timeout=60)


def test_labelling_the_version_right_after_a_slow_start_succeeds(tmp_path, slow_loads):
    """http_rest_api_handler_test's set-up: start with the specific policy, then reload with the label at once."""
    server = _server(tmp_path, {})
    server.start()
    try:
        assert slow_loads == [123]  # start-up returned only after the slow load finished
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            _reload(channel, _config(tmp_path / "m", {"Version_Label": 123}))
            assert _predict(channel, "Version_Label") == 123
            req = get_model_status_pb2.GetModelStatusRequest()
            req.model_spec.name = "m"
            req.model_spec.version_label = "Version_Label"
            status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(req, timeout=10)
            assert [(s.version, s.state) for s in status.model_version_status] == [(123, AVAILABLE)]
    finally:
        server.stop(2)


def test_a_label_in_the_first_config_is_refused_as_tf_serving_does(tmp_path, slow_loads):
    """ServerCore checks labels before the first loads: the server does not start, nothing was loaded."""
    server = _server(tmp_path, {"Version_Label": 123})
    with pytest.raises(FailedPrecondition, match="Request to assign label to version 123 of model m, which is "
                                                 "not currently available for inference"):
        server.start()
    assert slow_loads == []
    assert server.grpc_port is None


def test_with_the_flag_the_first_configs_label_serves_once_start_up_returns(tmp_path, slow_loads):
    server = _server(tmp_path, {"Version_Label": 123}, allow_version_labels_for_unavailable_models=True)
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            assert _predict(channel, "Version_Label") == 123  # the first request after start-up is served
    finally:
        server.stop(2)


def test_reloads_with_labels_follow_server_core(tmp_path, slow_loads):
    """A reload that adds version 124 and points a label at it in one step is refused (labels are checked
    before the models change, and 124 is not loaded); adding 124 first and labelling it next works."""
    server = _server(tmp_path, {})
    server.start()
    base = tmp_path / "m"
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            _reload(channel, _config(base, {"stable": 123}))
            with pytest.raises(grpc.RpcError) as info:
                _reload(channel, _config(base, {"stable": 123, "canary": 124}, versions=(123, 124)))
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "Request to assign label to version 124 of model m" in info.value.details()
            assert _predict(channel, "stable") == 123  # the refused reload changed nothing
            assert 124 not in slow_loads
            _reload(channel, _config(base, {"stable": 123}, versions=(123, 124)))
            assert server.manager.wait_for_state("m", 124, {AVAILABLE}, 60)
            _reload(channel, _config(base, {"stable": 123, "canary": 124}, versions=(123, 124)))
            assert (_predict(channel, "stable"), _predict(channel, "canary")) == (123, 124)
            with pytest.raises(grpc.RpcError) as info:  # moving a label back to a version not loaded: refused
                _reload(channel, _config(base, {"stable": 123, "canary": 125}, versions=(123, 124)))
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert _predict(channel, "canary") == 124
    finally:
        server.stop(2)


def test_http_rest_api_handler_tests_label_cases_over_rest(tmp_path, slow_loads):
    """http_rest_api_handler_test.cc's set-up (half_plus_two, specific {123}, started, then reloaded with
    Version_Label -> 123) and its label requests, over a real REST port: predict, regress, classify and status."""
    import json

    from tfsctl.testing import http_call, write_tf1_half_plus

    base = tmp_path / "saved_model_half_plus_two_2_versions"
    write_tf1_half_plus(base, 123)
    write_tf1_half_plus(base, 124)
    cfg = tmp_path / "models.config"
    config = _config(base, {})
    config.model_config_list.config[0].name = "saved_model_half_plus_two_2_versions"
    cfg.write_text(str(config))
    with serve_model(rest=True, ready_timeout=None, grace=2, model_config_file=str(cfg)) as server:
        config.model_config_list.config[0].version_labels["Version_Label"] = 123
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            _reload(channel, config)
        path = "/v1/models/saved_model_half_plus_two_2_versions/labels/Version_Label"

        def call(verb: str, body: dict | None = None) -> dict:
            status, headers, reply = http_call(server.rest_port, "GET" if body is None else "POST", path + verb,
                                               None if body is None else json.dumps(body), timeout=30)
            assert status == 200, reply
            assert {k.lower(): v for k, v in headers.items()}["content-type"] == "application/json"
            return json.loads(reply)

        assert call(":predict", {"instances": [1.0, 2.0]}) == {"predictions": [2.5, 3.0]}
        assert call(":regress", {"signature_name": "regress_x_to_y", "examples": [{"x": 80.0}]}) == {"results": [42]}
        assert call(":classify", {"signature_name": "classify_x_to_y", "examples": [{"x": 10.0}]}) == \
            {"results": [[["", 7]]]}
        assert call("") == {"model_version_status": [
            {"version": "123", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
