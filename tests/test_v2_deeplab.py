"""The sample DeepLab over both protocols: v2 (REST binary, REST JSON, gRPC raw) segments the sample image into
exactly the map v1's Predict returns, on the same loaded version."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pathlib import Path  # noqa: E402

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tritonclient.grpc as triton_grpc  # noqa: E402
import tritonclient.http as triton_http  # noqa: E402
from PIL import Image  # noqa: E402
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from tfsctl.cli import app  # noqa: E402
from tfsctl.serving.server import ModelServer, ServerOptions  # noqa: E402
from tfsctl.tensors import from_numpy, to_numpy  # noqa: E402
from tfsctl.testing import free_port  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINT = ROOT / "samples" / "deeplab" / "checkpoint"
IMAGE = ROOT / "samples" / "images" / "shapes_200x300.png"
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("v2deeplab") / "deeplab"
    result = CliRunner().invoke(app, ["export", str(CHECKPOINT), str(base), "--warmup-size", "200x300"])
    assert result.exit_code == 0, result.output
    srv = ModelServer(ServerOptions(host="127.0.0.1", port=0, rest_api_port=free_port(), model_name="deeplab",
                                    model_base_path=str(base)))
    srv.start()
    try:
        assert srv.wait_until_ready(300)
        yield srv
    finally:
        srv.stop(2)


def _image() -> np.ndarray:
    return np.asarray(Image.open(IMAGE).convert("RGB"), np.uint8)[None]


def _v1(server, image: np.ndarray) -> np.ndarray:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "deeplab"
    request.inputs["images"].CopyFrom(from_numpy(image))
    request.inputs["height"].CopyFrom(from_numpy(np.array([image.shape[1]], np.int32)))
    request.inputs["width"].CopyFrom(from_numpy(np.array([image.shape[2]], np.int32)))
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        reply = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=120)
    return to_numpy(reply.outputs["segmentation_map"])


def _v2_inputs(module, image: np.ndarray, binary: bool | None = None) -> list:
    sizes = {"height": np.array([image.shape[1]], np.int32), "width": np.array([image.shape[2]], np.int32)}
    inputs = [module.InferInput("images", list(image.shape), "UINT8")]
    inputs += [module.InferInput(k, [1], "INT32") for k in sizes]
    for i, arr in zip(inputs, [image, *sizes.values()], strict=True):
        if binary is None:
            i.set_data_from_numpy(arr)
        else:
            i.set_data_from_numpy(arr, binary_data=binary)
    return inputs


def test_v2_segmentation_equals_v1(server):
    image = _image()
    expected = _v1(server, image)
    assert expected.shape == image.shape[:3] and len(np.unique(expected)) > 1

    rest = triton_http.InferenceServerClient(f"127.0.0.1:{server.rest_port}", network_timeout=120)
    meta = rest.get_model_metadata("deeplab")
    assert {t["name"]: t["datatype"] for t in meta["inputs"]} == {"images": "UINT8", "height": "INT32",
                                                                  "width": "INT32"}
    for binary in (True, False):
        result = rest.infer("deeplab", _v2_inputs(triton_http, image, binary),
                            outputs=[triton_http.InferRequestedOutput("segmentation_map", binary_data=binary)])
        np.testing.assert_array_equal(result.as_numpy("segmentation_map"), expected)
    rest.close()

    with triton_grpc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}") as g:
        result = g.infer("deeplab", _v2_inputs(triton_grpc, image))
        np.testing.assert_array_equal(result.as_numpy("segmentation_map"), expected)
        assert result.get_response().model_version == "1"
