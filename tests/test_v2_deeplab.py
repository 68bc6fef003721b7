"""The sample DeepLab over both protocols: v2 (REST binary, REST JSON, gRPC raw) segments the sample image into
exactly the map v1's Predict returns, on the same loaded version."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json  # noqa: E402
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
from tfsctl.serving.testing import served  # noqa: E402
from tfsctl.tensors import from_numpy, to_numpy  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINT = ROOT / "samples" / "deeplab" / "checkpoint"
IMAGE = ROOT / "samples" / "images" / "shapes_200x300.png"
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("v2deeplab") / "deeplab"
    result = CliRunner().invoke(app, ["export", str(CHECKPOINT), str(base), "--warmup-size", "200x300"])
    assert result.exit_code == 0, result.output
    with served(rest=True, ready_timeout=300, grace=2, model_name="deeplab", model_base_path=str(base)) as srv:
        yield srv


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


def _cli(*args: str):
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def test_predict_and_status_cli_over_v2(server, tmp_path):
    target = f"127.0.0.1:{server.grpc_port}"
    reports = {}
    for protocol in ("v1", "v2"):
        code, out = _cli("predict", str(IMAGE), "--server", target, "--model", "deeplab", "--protocol", protocol,
                         "--output", str(tmp_path / f"{protocol}.png"), "--json")
        assert code == 0, out
        reports[protocol] = json.loads(out)
    assert reports["v2"]["classes"] == reports["v1"]["classes"] and reports["v2"]["version"] == 1
    assert len(reports["v2"]["classes"]) > 1
    code, out = _cli("status", "--server", target, "--model", "deeplab", "--protocol", "v2", "--json")
    assert code == 0, out
    assert json.loads(out)["versions"] == [{"version": 1, "state": "READY", "error_code": "OK", "error_message": ""}]
    code, out = _cli("predict", str(IMAGE), "--server", target, "--model", "deeplab", "--protocol", "v2",
                     "--signature", "predict_images")
    assert code != 0 and "--signature is a v1 option" in out
    code, out = _cli("status", "--server", target, "--model", "deeplab", "--protocol", "v3")
    assert code != 0 and "--protocol must be v1 or v2" in out


@pytest.mark.parametrize("protocol", ["v2-grpc", "v2-rest"])
def test_bench_cli_over_v2(server, protocol):
    port = server.grpc_port if protocol == "v2-grpc" else server.rest_port
    code, out = _cli("bench", "--server", f"127.0.0.1:{port}", "--model", "deeplab", "--protocol", protocol,
                     "--input-image", str(IMAGE), "-c", "1", "--warmup-seconds", "0.2", "--measure-seconds", "1",
                     "--json")
    assert code == 0, out
    doc = json.loads(out.strip().splitlines()[-1])
    level = doc["levels"][0]
    assert doc["meta"]["protocol"] == protocol and level["errors"] == 0 and level["requests"] > 0, level


def test_bench_compares_v1_and_v2_on_one_model(server):
    code, out = _cli("bench", "--server", f"127.0.0.1:{server.grpc_port}", "--model", "deeplab", "--protocol",
                     "grpc", "--compare", "v2-grpc", "--input-image", str(IMAGE), "-c", "1", "--warmup-seconds",
                     "0.2", "--measure-seconds", "1", "--json")
    assert code == 0, out
    doc = json.loads(out.strip().splitlines()[-1])
    assert doc["meta"]["protocol"] == "grpc" and doc["compare"]["meta"]["protocol"] == "v2-grpc"
    assert doc["levels"][0]["errors"] == 0 and doc["compare"]["levels"][0]["errors"] == 0
    ratio = doc["compare"]["ratios"][0]
    assert ratio["concurrency"] == 1 and ratio["throughput_ratio"] > 0 and ratio["p50_ratio"] > 0
    code, out = _cli("bench", "--server", f"127.0.0.1:{server.grpc_port}", "--model", "deeplab", "--compare",
                     "v2-rest", "--input-shape", "x:1x4:float32")
    assert code != 0 and "compare grpc with v2-grpc" in out


def test_predict_over_v2_pins_the_version_its_metadata_described(server, tmp_path, monkeypatch):
    """A version that becomes available between ModelMetadata and ModelInfer does not get a request planned on the
    metadata of the one before: ``predict --protocol v2`` asks for the version the metadata described."""
    import shutil

    from tfsctl.client import v2
    from tfsctl.client.predict import predict_image
    from tfsctl.client.rpc import get_model_status
    from tfsctl.testing import wait_until

    first = Path(server.options.model_base_path) / "1"
    base = tmp_path / "deeplab"
    shutil.copytree(first, base / "1")
    config = tmp_path / "models.config"
    config.write_text(f'model_config_list {{ config {{ name: "deeplab" base_path: "{base}" '
                      'model_platform: "tensorflow" model_version_policy { all {} } } }')
    with served(model_config_file=str(config), file_system_poll_wait_seconds=1, ready_timeout=300,
                grace=2) as srv:
        target = f"127.0.0.1:{srv.grpc_port}"
        described = v2.model_metadata

        def metadata_then_a_new_version(*args, **kwargs):
            meta = described(*args, **kwargs)
            shutil.copytree(first, tmp_path / "staging")
            (tmp_path / "staging").rename(base / "2")  # whole, as a new version appears
            wait_until(lambda: any(s.version == 2 and s.state == "AVAILABLE"
                                   for s in get_model_status(target, "deeplab")), 300, "version 2 AVAILABLE")
            return meta

        monkeypatch.setattr(v2, "model_metadata", metadata_then_a_new_version)
        result = predict_image(IMAGE, server=target, model="deeplab", protocol="v2", output=None)
    assert result.version == 1
