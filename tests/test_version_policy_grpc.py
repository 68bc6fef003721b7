"""Version policies, labels and version directories coming and going, seen over gRPC with the official stubs.

One real ModelServer on 127.0.0.1 polls a base path holding versions of the toy model (version v answers y = v * x)
under two models: ``pinned`` (specific {1, 3}, labels stable=1 / canary=3) and ``recent`` (latest {2}).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import shutil  # noqa: E402
from collections.abc import Callable  # noqa: E402

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

from tfsctl.serving.tensors import from_numpy, to_numpy  # noqa: E402
from tfsctl.serving.testing import served  # noqa: E402
from tfsctl.testing import wait_until, write_toy_model  # noqa: E402

X = np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32)
State = get_model_status_pb2.ModelVersionStatus
AVAILABLE, END = State.AVAILABLE, State.END


@pytest.fixture
def server(tmp_path):
    base = tmp_path / "toy"
    for v in (1, 2, 3):
        write_toy_model(base, v, scale=float(v))
    cfg = tmp_path / "models.config"
    cfg.write_text(
        "model_config_list {\n"
        f'  config {{ name: "pinned" base_path: "{base}" model_platform: "tensorflow"\n'
        "    model_version_policy { specific { versions: 1 versions: 3 } }\n"
        '    version_labels { key: "stable" value: 1 } version_labels { key: "canary" value: 3 } }\n'
        f'  config {{ name: "recent" base_path: "{base}" model_platform: "tensorflow"\n'
        "    model_version_policy { latest { num_versions: 2 } } }\n"
        "}\n"
    )
    with served(ready_timeout=None, grace=2, model_config_file=str(cfg), file_system_poll_wait_seconds=0.1,
                allow_version_labels_for_unavailable_models=True) as srv:  # labels at start-up
        channel = grpc.insecure_channel(f"127.0.0.1:{srv.grpc_port}")
        try:
            yield {
                "base": base,
                "predict": prediction_service_pb2_grpc.PredictionServiceStub(channel),
                "model": model_service_pb2_grpc.ModelServiceStub(channel),
            }
        finally:
            channel.close()


def _states(stubs, name: str) -> dict[int, int]:
    req = get_model_status_pb2.GetModelStatusRequest()
    req.model_spec.name = name
    try:
        resp = stubs["model"].GetModelStatus(req, timeout=10)
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.NOT_FOUND:
            return {}
        raise
    return {s.version: s.state for s in resp.model_version_status}


def _predict(stubs, name: str, version: int | None = None, label: str | None = None) -> int:
    """The version that answered; checks the answer is that version's y = v * x."""
    req = predict_pb2.PredictRequest()
    req.model_spec.name = name
    if version is not None:
        req.model_spec.version.value = version
    if label is not None:
        req.model_spec.version_label = label
    req.inputs["x"].CopyFrom(from_numpy(X))
    resp = stubs["predict"].Predict(req, timeout=10)
    served = resp.model_spec.version.value
    np.testing.assert_allclose(to_numpy(resp.outputs["y"]), X * served)
    return served


def _code(fn: Callable[[], object]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    return info.value.code()


def test_policies_labels_and_versions_coming_and_going(server):
    wait_until(lambda: _states(server, "pinned") == {1: AVAILABLE, 3: AVAILABLE}, 30, "pinned: versions 1 and 3")
    wait_until(lambda: _states(server, "recent") == {2: AVAILABLE, 3: AVAILABLE}, 30, "recent: versions 2 and 3")
    assert _predict(server, "pinned") == 3
    assert _predict(server, "pinned", label="stable") == 1
    assert _predict(server, "pinned", label="canary") == 3
    assert _predict(server, "recent", version=2) == 2
    assert _code(lambda: _predict(server, "pinned", version=2)) == grpc.StatusCode.NOT_FOUND  # not in the policy
    assert _code(lambda: _predict(server, "recent", version=1)) == grpc.StatusCode.NOT_FOUND  # not among latest 2

    # A new version directory appears: latest {2} moves on to it without a restart; specific {1, 3} ignores it.
    write_toy_model(server["base"], 4, scale=4.0)
    wait_until(lambda: _states(server, "recent").get(4) == AVAILABLE, 30, "recent: version 4 AVAILABLE")
    wait_until(lambda: _states(server, "recent").get(2) == END, 30, "recent: version 2 unloaded")
    assert _predict(server, "recent") == 4
    assert _predict(server, "pinned") == 3 and 4 not in _states(server, "pinned")

    # A version directory is removed: it is unloaded; the label pointing at it stops resolving.
    shutil.rmtree(server["base"] / "3")
    wait_until(lambda: _states(server, "pinned").get(3) == END, 30, "pinned: version 3 unloaded")
    assert _predict(server, "pinned") == 1
    assert _code(lambda: _predict(server, "pinned", version=3)) == grpc.StatusCode.NOT_FOUND
    assert _code(lambda: _predict(server, "pinned", label="canary")) == grpc.StatusCode.NOT_FOUND
    assert _predict(server, "pinned", label="stable") == 1
    # latest {2} of {1, 2, 4}: version 2 comes back, 4 stays.
    wait_until(lambda: _states(server, "recent").get(2) == AVAILABLE, 30, "recent: version 2 reloaded")
    assert _states(server, "recent")[4] == AVAILABLE


def test_reload_with_a_model_that_cannot_load_is_unknown_and_serving_goes_on(tmp_path):
    base = tmp_path / "toy"
    write_toy_model(base, 1)
    broken = tmp_path / "broken"
    (broken / "1").mkdir(parents=True)
    (broken / "1" / "saved_model.pb").write_bytes(b"not a SavedModel")
    with served(ready_timeout=60, grace=2, model_name="toy", model_base_path=str(base),
                file_system_poll_wait_seconds=0.1, max_num_load_retries=0) as srv:
        channel = grpc.insecure_channel(f"127.0.0.1:{srv.grpc_port}")
        stubs = {"predict": prediction_service_pb2_grpc.PredictionServiceStub(channel),
                 "model": model_service_pb2_grpc.ModelServiceStub(channel)}
        try:
            config = model_server_config_pb2.ModelServerConfig()
            for name, path in (("toy", base), ("broken", broken)):
                config.model_config_list.config.add(name=name, base_path=str(path), model_platform="tensorflow")
            with pytest.raises(grpc.RpcError) as info:
                stubs["model"].HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=config),
                                                         timeout=30)
            # As TF Serving's ServerCore::WaitUntilModelsAvailable: UNKNOWN, naming the model and the load error.
            assert info.value.code() == grpc.StatusCode.UNKNOWN, info.value.details()
            assert "'broken' did not become available" in info.value.details()
            assert "version 1" in info.value.details()
            assert _states(stubs, "broken") == {1: END}
            assert _predict(stubs, "toy") == 1
        finally:
            channel.close()


def test_reload_assigning_a_label_to_an_unavailable_version_is_failed_precondition(server):
    wait_until(lambda: _states(server, "pinned") == {1: AVAILABLE, 3: AVAILABLE}, 30, "pinned: versions 1 and 3")
    config = model_server_config_pb2.ModelServerConfig()
    mc = config.model_config_list.config.add(name="pinned", base_path=str(server["base"]), model_platform="tensorflow")
    mc.model_version_policy.specific.versions.extend([1, 3])
    mc.version_labels["stable"] = 1
    mc.version_labels["canary"] = 2  # an existing label moved to a version that is not loaded: refused
    reload = model_management_pb2.ReloadConfigRequest(config=config)
    with pytest.raises(grpc.RpcError) as info:
        server["model"].HandleReloadConfigRequest(reload, timeout=30)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "Request to assign label to version 2 of model pinned, which is not currently available for inference" \
        in info.value.details()
    assert _predict(server, "pinned", label="canary") == 3  # nothing changed
    mc.version_labels["canary"] = 1  # to an AVAILABLE version: fine
    server["model"].HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=config), timeout=30)
    assert _predict(server, "pinned", label="canary") == 1
