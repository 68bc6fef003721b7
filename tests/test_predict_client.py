"""tfsctl predict / status / reload against real in-test gRPC servers that speak the official TF Serving API.

The PredictionService here really segments what it receives: it decodes the ``images`` tensor and labels pixels by
colour (red-dominant -> person, blue-dominant -> cat, green-dominant -> dog, else background), so the client's
request encoding, response decoding and rendering are all checked against data that went over the wire.
"""

from __future__ import annotations

import json
import os
import struct
import threading
import time
import zlib
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tensorflow_serving.apis import (  # noqa: E402
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from tfsctl.cli import app  # noqa: E402
from tfsctl.client.predict import load_image, predict_image  # noqa: E402
from tfsctl.client.render import LEGEND_SWATCH, PALETTE, blend, legend_swatch_box  # noqa: E402
from tfsctl.client.rpc import get_model_status, parse_target, reload_config  # noqa: E402
from tfsctl.errors import ClientError  # noqa: E402
from tfsctl.serving.tensors import from_numpy, to_numpy  # noqa: E402
from tfsctl.testing import free_port  # noqa: E402

PERSON, CAT, DOG = 15, 8, 12
runner = CliRunner()


def flat(text: str) -> str:
    """Rich wraps long lines; compare with whitespace collapsed."""
    return " ".join(text.split())


# --- a real PredictionService that segments by colour ---


class ColourSegmenter(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Model 'deeplab' v7 (signature predict_images / serving_default); model 'slow' answers after ``delay``."""

    def __init__(self) -> None:
        self.received: list[predict_pb2.PredictRequest] = []
        self.last_seg: np.ndarray | None = None
        self.delay = 0.0
        self.lock = threading.Lock()

    def Predict(self, request, context):  # noqa: N802 - gRPC method name
        spec = request.model_spec
        if spec.name not in ("deeplab", "slow"):
            context.abort(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({spec.name})")
        if spec.name == "slow":
            end = time.monotonic() + self.delay
            while time.monotonic() < end and context.is_active():
                time.sleep(0.02)
        signature = spec.signature_name or "serving_default"
        if signature not in ("predict_images", "serving_default"):
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"Serving signature name: \"{signature}\" not found")
        if spec.HasField("version") and spec.version.value != 7:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Specific({spec.name}, "
                          f"{spec.version.value})")
        if spec.version_label and spec.version_label != "stable":
            context.abort(grpc.StatusCode.NOT_FOUND, f"Unknown version label: {spec.version_label}")
        images = to_numpy(request.inputs["images"], "images")
        height = to_numpy(request.inputs["height"], "height")
        width = to_numpy(request.inputs["width"], "width")
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"images must be uint8 [N,H,W,3], got {images.shape}")
        if (int(height[0]), int(width[0])) != images.shape[1:3]:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "height/width do not match images")
        px = images.astype(np.int16)
        r, g, b = px[..., 0], px[..., 1], px[..., 2]
        seg = np.zeros(images.shape[:3], dtype=np.int64)
        seg[(r > 128) & (g < 100) & (b < 100)] = PERSON
        seg[(b > 128) & (r < 100) & (g < 100)] = CAT
        seg[(g > 128) & (r < 100) & (b < 100)] = DOG
        with self.lock:
            self.received.append(request)
            self.last_seg = seg[0].copy()
        response = predict_pb2.PredictResponse()
        response.model_spec.name = spec.name
        response.model_spec.version.value = 7
        response.model_spec.signature_name = signature
        wanted = set(request.output_filter) or {"segmentation_map", "probabilities"}
        if "segmentation_map" in wanted:
            response.outputs["segmentation_map"].CopyFrom(from_numpy(seg))
        if "probabilities" in wanted:
            probs = np.eye(21, dtype=np.float32)[seg]
            response.outputs["probabilities"].CopyFrom(from_numpy(probs))
        return response


class ModelRegistry(model_service_pb2_grpc.ModelServiceServicer):
    """ModelService over a dict of models; reload scans each base_path for numeric version directories."""

    def __init__(self) -> None:
        self.models: dict[str, dict[int, tuple[int, str]]] = {
            "deeplab": {
                1: (get_model_status_pb2.ModelVersionStatus.END, ""),
                2: (get_model_status_pb2.ModelVersionStatus.AVAILABLE, ""),
            }
        }
        self.configs: list = []

    def GetModelStatus(self, request, context):  # noqa: N802
        name = request.model_spec.name
        if name not in self.models:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {name}")
        versions = self.models[name]
        if request.model_spec.HasField("version"):
            v = request.model_spec.version.value
            if v not in versions:
                context.abort(grpc.StatusCode.NOT_FOUND, f"Could not find version {v} of model {name}")
            versions = {v: versions[v]}
        response = get_model_status_pb2.GetModelStatusResponse()
        for v, (state, error) in versions.items():
            s = response.model_version_status.add(version=v, state=state)
            if error:
                s.status.error_code = grpc.StatusCode.NOT_FOUND.value[0]
                s.status.error_message = error
        return response

    def HandleReloadConfigRequest(self, request, context):  # noqa: N802
        self.configs.append(request.config)
        response = model_management_pb2.ReloadConfigResponse()
        new: dict[str, dict[int, tuple[int, str]]] = {}
        for cfg in request.config.model_config_list.config:
            base = Path(cfg.base_path)
            if not base.is_dir():
                response.status.error_code = grpc.StatusCode.NOT_FOUND.value[0]
                response.status.error_message = f"base path {base} of model {cfg.name} does not exist"
                return response
            versions = sorted(int(p.name) for p in base.iterdir() if p.name.isdigit())
            new[cfg.name] = {v: (get_model_status_pb2.ModelVersionStatus.AVAILABLE, "") for v in versions}
        self.models = new
        return response


@pytest.fixture(scope="module")
def server():
    seg, reg = ColourSegmenter(), ModelRegistry()
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(seg, srv)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(reg, srv)
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    yield f"127.0.0.1:{port}", seg, reg
    srv.stop(0)


def stripes(h: int = 48, w: int = 90) -> np.ndarray:
    """Red | blue | grey vertical stripes, with a green square in the grey part."""
    img = np.full((h, w, 3), 150, dtype=np.uint8)
    img[:, : w // 3] = (220, 30, 30)
    img[:, w // 3 : 2 * w // 3] = (20, 30, 230)
    img[h // 4 : h // 2, 2 * w // 3 + 5 : 2 * w // 3 + 20] = (20, 220, 40)
    return img


@pytest.fixture
def png(tmp_path: Path) -> Path:
    p = tmp_path / "stripes.png"
    Image.fromarray(stripes()).save(p)
    return p


# --- predict end to end ---


def test_predict_end_to_end_writes_overlay_with_legend(server, png, tmp_path):
    target, seg, _ = server
    out = tmp_path / "mask.png"
    result = predict_image(png, server=target, output=out, alpha=1.0, label="stable")

    sent = seg.received[-1]
    assert sent.model_spec.name == "deeplab" and sent.model_spec.signature_name == "predict_images"
    assert sent.model_spec.version_label == "stable" and not sent.model_spec.HasField("version")
    assert sent.inputs["images"].tensor_content, "images should travel in tensor_content"
    assert list(sent.output_filter) == ["segmentation_map"]

    h, w = 48, 90
    assert result.image_size == (h, w) and result.version == 7 and result.model == "deeplab"
    server_seg = seg.last_seg
    assert {s.class_id for s in result.shares} == {0, PERSON, CAT, DOG} == set(np.unique(server_seg).tolist())
    assert sum(s.share for s in result.shares) == pytest.approx(1.0)
    for s in result.shares:
        assert s.pixels == int((server_seg == s.class_id).sum())
    assert result.rpc_ms > 0 and result.total_ms >= result.rpc_ms

    rendered = np.asarray(Image.open(out).convert("RGB"))
    assert rendered.shape[0] >= h and rendered.shape[1] > w  # image plus legend panel on the right
    # alpha=1: labelled pixels are exactly the palette colour of the class the server returned; background pixels
    # keep the image as it was.
    labelled = server_seg != 0
    assert labelled.any() and (~labelled).any()
    assert np.array_equal(rendered[:h, :w][labelled], PALETTE[server_seg][labelled])
    original = np.asarray(Image.open(png).convert("RGB"))
    assert np.array_equal(rendered[:h, :w][~labelled], original[~labelled])
    # Legend rows, in share order, carry each class's palette colour.
    for row, s in enumerate(result.shares):
        left, top, right, bottom = legend_swatch_box(row, w)
        swatch = rendered[top:bottom, left:right]
        assert swatch.shape[:2] == (LEGEND_SWATCH, LEGEND_SWATCH)
        assert (swatch == PALETTE[s.class_id]).all(), s.name
    assert not list(tmp_path.glob(".mask.png.*")), "temp file left behind"


def test_predict_blends_with_alpha_and_applies_exif_orientation(server, tmp_path):
    target, seg, _ = server
    img = stripes(40, 64)
    jpg = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.fromarray(img).save(jpg, quality=95, exif=exif)
    out = tmp_path / "blend.png"
    result = predict_image(jpg, server=target, version=7, output=out, alpha=0.4)

    assert seg.received[-1].model_spec.version.value == 7
    assert result.image_size == (64, 40)  # displayed orientation: the 40x64 JPEG stood upright
    shown = load_image(jpg)
    assert shown.shape == (64, 40, 3)
    rendered = np.asarray(Image.open(out).convert("RGB"))[:64, :40].astype(int)
    expected = blend(shown, seg.last_seg.astype(np.uint8), 0.4).astype(int)
    assert np.abs(rendered - expected).max() <= 1
    assert not np.array_equal(rendered, shown.astype(int))  # the mask is actually visible


def test_predict_async_reports_progress_and_latency(server, png, tmp_path):
    target, seg, _ = server
    seg.delay = 0.4
    ticks: list[float] = []
    result = predict_image(png, server=target, model="slow", output=None, use_async=True, on_wait=ticks.append)
    assert ticks and ticks == sorted(ticks)
    assert result.rpc_ms >= 400 and result.output is None
    assert {s.class_id for s in result.shares} == {0, PERSON, CAT, DOG}


def test_predict_timeout_is_a_clear_error(server, png):
    target, seg, _ = server
    seg.delay = 3.0
    with pytest.raises(ClientError, match=r"timed out after 0.3 s \(DEADLINE_EXCEEDED\)") as e:
        predict_image(png, server=target, model="slow", output=None, timeout=0.3)
    assert e.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_cli_predict_prints_table_and_latency(server, png, tmp_path):
    target, _, _ = server
    out = tmp_path / "cli.png"
    res = runner.invoke(app, ["predict", str(png), "--server", target, "--output", str(out), "--async"])
    assert res.exit_code == 0, res.output
    text = flat(res.stdout)
    for name in ("background", "person", "cat", "dog"):
        assert name in text
    assert "round trip" in text and "total" in text and out.is_file()

    res = runner.invoke(app, ["predict", str(png), "--server", target, "--output", str(out), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["version"] == 7 and sum(c["share"] for c in data["classes"]) == pytest.approx(1.0)


# --- clear errors, exit code 1 ---


def _cli_error(args: list[str]) -> str:
    res = runner.invoke(app, args)
    assert res.exit_code == 1, res.output
    return flat(res.stderr)


def test_unreadable_image(server, tmp_path):
    target, _, _ = server
    bad = tmp_path / "notes.jpg"
    bad.write_text("this is not an image\n")
    msg = _cli_error(["predict", str(bad), "--server", target, "--output", str(tmp_path / "o.png")])
    assert "not a recognised image format" in msg and "notes.jpg" in msg
    msg = _cli_error(["predict", str(tmp_path / "missing.png"), "--server", target])
    assert "file not found" in msg
    msg = _cli_error(["predict", str(tmp_path), "--server", target])
    assert "is a directory" in msg
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_image(server, tmp_path, fmt):
    target, _, _ = server
    rng = np.random.default_rng(0)
    full = tmp_path / f"full.{fmt.lower()}"
    Image.fromarray(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)).save(full, format=fmt)
    cut = tmp_path / f"cut.{fmt.lower()}"
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    msg = _cli_error(["predict", str(cut), "--server", target, "--output", str(tmp_path / "o.png")])
    assert "truncated or corrupt" in msg and cut.name in msg
    assert not (tmp_path / "o.png").exists()


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose IHDR claims ``width`` x ``height`` RGB but whose data is a few bytes: a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def test_decompression_bomb(server, tmp_path):
    target, seg, _ = server
    before = len(seg.received)
    huge = tmp_path / "huge.png"
    _png_header_only(huge, 100_000, 100_000)  # 10^10 pixels: PIL's own bomb error
    msg = _cli_error(["predict", str(huge), "--server", target])
    assert "decompression bomb" in msg and "huge.png" in msg
    big = tmp_path / "big.png"
    _png_header_only(big, 8_000, 6_000)  # 48 Mpx: under PIL's error tier, over our 40 Mpx limit
    msg = _cli_error(["predict", str(big), "--server", target])
    assert "8000x6000" in msg and "decompression-bomb guard" in msg
    assert len(seg.received) == before, "nothing must be sent for a refused image"


def test_unreachable_server(png, tmp_path):
    port = free_port()
    msg = _cli_error(["predict", str(png), "--server", f"127.0.0.1:{port}", "--timeout", "5"])
    assert f"cannot reach server at 127.0.0.1:{port} (UNAVAILABLE)" in msg


def test_server_errors_show_code_and_message(server, png):
    target, _, _ = server
    msg = _cli_error(["predict", str(png), "--server", target, "--model", "nosuch"])
    assert "NOT_FOUND" in msg and "nosuch" in msg and target in msg
    msg = _cli_error(["predict", str(png), "--server", target, "--signature", "nosig"])
    assert "FAILED_PRECONDITION" in msg and "nosig" in msg
    msg = _cli_error(["predict", str(png), "--server", target, "--version", "3", "--label", "stable"])
    assert "either --version or --label" in msg
    msg = _cli_error(["predict", str(png), "--server", target, "--alpha", "1.5"])
    assert "--alpha" in msg
    msg = _cli_error(["predict", str(png), "--server", "host:99999"])
    assert "port 99999" in msg
    msg = _cli_error(["predict", str(png), "--server", target, "--output", str(png.parent / "no" / "m.png")])
    assert "does not exist" in msg


def test_parse_target():
    assert parse_target("localhost") == "localhost:8500"
    assert parse_target("grpc://10.0.0.1:9000/") == "10.0.0.1:9000"
    assert parse_target("[::1]:8500") == "[::1]:8500"
    with pytest.raises(ClientError):
        parse_target("a:b:c")


# --- status and reload over ModelService ---


def test_status_table_and_errors(server):
    target, _, reg = server
    reg.models["deeplab"][3] = (get_model_status_pb2.ModelVersionStatus.LOADING, "")
    reg.models["deeplab"][4] = (get_model_status_pb2.ModelVersionStatus.END, "variables/ missing")
    rows = get_model_status(target, "deeplab")
    assert [(r.version, r.state) for r in rows] == [(1, "END"), (2, "AVAILABLE"), (3, "LOADING"), (4, "END")]
    assert rows[3].error_code == "NOT_FOUND" and rows[3].error_message == "variables/ missing"
    assert [r.version for r in get_model_status(target, "deeplab", 2)] == [2]

    res = runner.invoke(app, ["status", "--server", target, "--model", "deeplab"])
    assert res.exit_code == 0, res.output
    text = flat(res.stdout)
    assert "AVAILABLE" in text and "LOADING" in text and "variables/ missing" in text

    msg = _cli_error(["status", "--server", target, "--model", "nosuch"])
    assert "NOT_FOUND" in msg and "nosuch" in msg
    port = free_port()
    msg = _cli_error(["status", "--server", f"127.0.0.1:{port}", "--model", "deeplab"])
    assert f"cannot reach server at 127.0.0.1:{port}" in msg


def test_reload_sends_config_and_shows_result(server, tmp_path):
    target, _, reg = server
    base = tmp_path / "seg"
    (base / "1").mkdir(parents=True)
    (base / "5").mkdir()
    cfg = tmp_path / "models.config"
    cfg.write_text(
        "model_config_list {\n"
        "  config {\n"
        '    name: "seg"\n'
        f'    base_path: "{base}"\n'
        '    model_platform: "tensorflow"\n'
        "  }\n"
        "}\n"
    )
    res = runner.invoke(app, ["reload", "--server", target, "--model-config-file", str(cfg)])
    assert res.exit_code == 0, res.output
    assert "reloaded" in flat(res.stdout) and "seg" in res.stdout
    sent = reg.configs[-1].model_config_list.config
    assert [(c.name, c.base_path) for c in sent] == [("seg", str(base))]
    assert [(r.version, r.state) for r in get_model_status(target, "seg")] == [(1, "AVAILABLE"), (5, "AVAILABLE")]

    missing = tmp_path / "gone.config"
    missing.write_text(cfg.read_text().replace(str(base), str(tmp_path / "gone")))
    result = reload_config(target, missing)
    assert not result.ok and result.error_code == "NOT_FOUND"
    msg = _cli_error(["reload", "--server", target, "--model-config-file", str(missing)])
    assert "reload rejected" in msg and "does not exist" in msg

    bad = tmp_path / "bad.config"
    bad.write_text("model_config_list {\n  config { nme: 'x' }\n}\n")
    msg = _cli_error(["reload", "--server", target, "--model-config-file", str(bad)])
    assert "bad.config:2" in msg
    msg = _cli_error(["reload", "--server", target, "--model-config-file", str(tmp_path / "none.config")])
    assert "not found" in msg
