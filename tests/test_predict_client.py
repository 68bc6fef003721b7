"""tfsctl predict / status / reload / bench --input-image against a real ModelServer on 127.0.0.1.

The server serves, from one model config: the sample DeepLab export (``deeplab``), a model with the official
DeepLab export's tensor names (``official``), a sthalles-style float32 signature with scalar height/width
(``sthalles``), a logits-only model whose single signature is not serving_default (``logits``) and a 32x32
classifier (``classifier``). The test models segment by colour (tests/client_models.py), so every mask is known.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from client_models import (  # noqa: E402
    BICYCLE,
    CAR,
    CLASSIFIER_LABELS,
    PERSON,
    colour_rule,
    model_config,
    scene,
    write_classifier,
    write_logits,
    write_official,
    write_sthalles,
)

from tfsctl.cli import app  # noqa: E402
from tfsctl.client.predict import load_image, predict_image  # noqa: E402
from tfsctl.client.render import PALETTE  # noqa: E402
from tfsctl.client.rpc import get_model_status, parse_target, reload_config  # noqa: E402
from tfsctl.errors import ClientError  # noqa: E402
from tfsctl.testing import free_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_CKPT = ROOT / "samples" / "deeplab" / "checkpoint"
SAMPLE_IMAGE = ROOT / "samples" / "images" / "shapes_256.png"
SAMPLE_LABELS = ROOT / "samples" / "images" / "labels" / "shapes_256.png"
runner = CliRunner()
RUNNING: dict[str, object] = {}  # the module's ModelServer, for tests that add front ends to it


def flat(text: str) -> str:
    """Rich wraps long lines; compare with whitespace collapsed."""
    return " ".join(text.split())


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(target, tmp dir, scene PNG path, scene array) for a ModelServer serving the five models."""
    from tfsctl.export import export_model
    from tfsctl.serving.server import ModelServer, ServerOptions

    tmp = tmp_path_factory.mktemp("predict")
    export_model(SAMPLE_CKPT, tmp / "deeplab" / "1", warmup_sizes=[])
    models = {
        "deeplab": tmp / "deeplab",
        "official": write_official(tmp / "official"),
        "sthalles": write_sthalles(tmp / "sthalles"),
        "logits": write_logits(tmp / "logits"),
        "classifier": write_classifier(tmp / "classifier"),
    }
    config = model_config(models).replace(
        f'name: "official" base_path: "{models["official"]}"',
        f'name: "official" base_path: "{models["official"]}" version_labels {{ key: "stable" value: 1 }}',
    )
    (tmp / "models.config").write_text(config)
    server = ModelServer(ServerOptions(host="127.0.0.1", port=0, rest_api_port=0,
                                       model_config_file=str(tmp / "models.config"),
                                       # labels in the start-up config need it, as in tensorflow_model_server
                                       allow_version_labels_for_unavailable_models=True,
                                       file_system_poll_wait_seconds=0.2))
    server.start()
    RUNNING["server"] = server
    try:
        assert server.wait_until_ready(180), "models did not become AVAILABLE"
        img = scene(120, 160)
        png = tmp / "scene.png"
        Image.fromarray(img).save(png)
        yield f"127.0.0.1:{server.grpc_port}", tmp, png, img
    finally:
        server.stop(2)


# --- every kind of image model ---


def test_sample_model(served):
    target, tmp, _, _ = served
    out = tmp / "sample.png"
    result = predict_image(SAMPLE_IMAGE, server=target, model="deeplab", output=out)
    # serving_default is the sample's predict_images; only the class map is asked for.
    assert result.signature == "serving_default" and result.output_keys == ("segmentation_map",)
    assert result.input_key == "images" and result.kind == "segmentation" and result.version == 1
    truth = np.asarray(Image.open(SAMPLE_LABELS)).astype(np.int64)
    seg = result.segmentation
    assert seg.shape == truth.shape
    present = [c for c in np.unique(truth) if c != 0]
    for c in present:
        inter = np.logical_and(seg == c, truth == c).sum()
        union = np.logical_or(seg == c, truth == c).sum()
        assert inter / union > 0.6, (int(c), inter / union)
    with Image.open(out) as im:  # image | mask | overlay, then the legend
        assert im.width > 3 * 256 and im.height >= 256


def test_official_deeplab_tensor_names(served):
    target, tmp, png, img = served
    out, labels = tmp / "official.png", tmp / "labels.png"
    result = predict_image(png, server=target, model="official", output=out, save_labels=labels)
    assert result.input_key == "ImageTensor" and result.output_keys == ("SemanticPredictions",)
    expected = colour_rule(img)
    assert {PERSON, BICYCLE, CAR} <= set(np.unique(expected).tolist())
    np.testing.assert_array_equal(result.segmentation, expected)
    for s in result.shares:
        assert s.pixels == int((expected == s.class_id).sum())
    with Image.open(labels) as im:  # raw class map: palette PNG, values = ids, VOC palette
        assert im.mode == "P" and im.size == (160, 120)
        np.testing.assert_array_equal(np.asarray(im), expected)
        assert im.getpalette()[: 3 * 16] == PALETTE[:16].reshape(-1).tolist()
    pic = np.asarray(Image.open(out).convert("RGB"))
    gap = max(4, 160 // 100)
    np.testing.assert_array_equal(pic[:120, :160], img)  # panel 1: the image itself
    np.testing.assert_array_equal(pic[:120, 160 + gap: 320 + gap], PALETTE[expected])  # panel 2: the colour mask


def test_sthalles_float_images_with_scalar_height_width(served):
    target, _, png, img = served
    result = predict_image(png, server=target, model="sthalles", output=None)
    # The graph asserts height/width scalars equal the image's size; float pixels go as 0..255.
    assert result.output_keys == ("segmentation_map",)  # the class map, not the float probabilities
    np.testing.assert_array_equal(result.segmentation, colour_rule(img))
    scaled = predict_image(png, server=target, model="sthalles", output=None, scale="0-1")
    assert {s.class_id for s in scaled.shares} == {0}  # pixels in 0..1 match no colour: the scale was applied
    probs = predict_image(png, server=target, model="sthalles", output=None, output_key="probabilities")
    np.testing.assert_array_equal(probs.segmentation, colour_rule(img))  # argmax of [N,H,W,21]


def test_logits_model_with_a_single_non_default_signature(served):
    target, _, png, img = served
    result = predict_image(png, server=target, model="logits", output=None)
    assert result.signature == "segment" and result.output_keys == ("logits",)
    np.testing.assert_array_equal(result.segmentation, colour_rule(img))


def test_classifier_top_k_with_labels_file(served):
    target, tmp, png, img = served
    names = tmp / "labels.txt"
    names.write_text("\n".join(CLASSIFIER_LABELS) + "\n")
    res = runner.invoke(app, ["predict", str(png), "-s", target, "-m", "classifier", "--scale", "0-1",
                              "--labels", str(names), "--top-k", "3", "-o", str(tmp / "cls.png"), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["kind"] == "classification" and doc["sent_size"] == [32, 32] and doc["image_size"] == [120, 160]
    # The classifier scores the share of each colour class in the 32x32 image it was sent.
    small = np.asarray(Image.fromarray(img).resize((32, 32), Image.Resampling.BILINEAR))
    seg = colour_rule(small)
    shares = [float((seg == c).mean()) for c in (0, PERSON, BICYCLE, CAR)]
    order = sorted(range(4), key=lambda i: -shares[i])[:3]
    assert [t["name"] for t in doc["top"]] == [CLASSIFIER_LABELS[i] for i in order]
    assert doc["top"][0]["score"] == pytest.approx(shares[order[0]], abs=1e-6)
    with Image.open(tmp / "cls.png") as im:
        assert im.width > 160

    res = runner.invoke(app, ["predict", str(png), "-s", target, "-m", "classifier", "--scale", "0-1", "-o",
                              str(tmp / "cls.png")])
    assert res.exit_code == 0, res.output
    assert "class 0" in flat(res.stdout) and "score" in res.stdout


def test_large_photo_is_scaled_down_and_the_mask_back_up(served):
    target, tmp, _, _ = served
    big = scene(2250, 3000, seed=3)
    jpg = tmp / "photo.jpg"
    Image.fromarray(big).save(jpg, quality=92)
    decoded = load_image(jpg)
    result = predict_image(jpg, server=target, model="official", output=tmp / "photo.png")
    assert result.image_size == (2250, 3000) and result.sent_size == (385, 513)
    assert result.segmentation.shape == (2250, 3000)
    expected = colour_rule(decoded)
    for c in (PERSON, BICYCLE, CAR):
        inter = np.logical_and(result.segmentation == c, expected == c).sum()
        union = np.logical_or(result.segmentation == c, expected == c).sum()
        assert inter / union > 0.9, (c, inter / union)
    # Full size against the sample, whose signatures refuse more than 2048x2048 pixels: one clear line.
    with pytest.raises(ClientError) as e:
        predict_image(jpg, server=target, model="deeplab", output=None, max_side=0)
    assert "server refused the 3000x2250 image" in e.value.message and "--max-side" in e.value.message
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    ok = predict_image(jpg, server=target, model="deeplab", output=None, max_side=512)
    assert ok.sent_size == (384, 512) and ok.segmentation.shape == (2250, 3000)


# --- targets ---


def test_dns_and_ipv4_list_targets(served):
    target, _, png, img = served
    port = target.rsplit(":", 1)[1]
    dead = free_port()  # round_robin skips a backend that is down
    for server in (f"dns:///localhost:{port}", f"ipv4:127.0.0.1:{dead},127.0.0.1:{port}"):
        result = predict_image(png, server=server, model="official", output=None)
        np.testing.assert_array_equal(result.segmentation, colour_rule(img))
        assert [r.state for r in get_model_status(server, "official")] == ["AVAILABLE"]
    assert parse_target("localhost") == "localhost:8500"
    assert parse_target("grpc://10.0.0.1:9000/") == "10.0.0.1:9000"
    assert parse_target("[::1]:8500") == "[::1]:8500"
    assert parse_target("dns:///svc.ns:9000") == "dns:///svc.ns:9000"
    assert parse_target("unix:/run/tfs.sock") == "unix:/run/tfs.sock"
    for bad in ("a:b:c", "ipv4:1.2.3:80", "dns:///", "host:99999", "host:\u00b2"):
        with pytest.raises(ClientError, match="invalid server address"):
            parse_target(bad)


@pytest.mark.parametrize("tensor_content", [False, True])
def test_unix_socket_target_and_both_reply_encodings(served, tmp_path, tensor_content):
    """A `unix:` target, and replies in typed *_val fields (TF Serving's default) or in tensor_content."""
    from concurrent import futures

    from tfsctl.serving.grpc_api import add_services

    _, _, png, img = served
    model_server = RUNNING["server"]
    sock = tmp_path / "tfs.sock"
    front = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    add_services(front, model_server.core, None, tensor_content=tensor_content)
    assert front.add_insecure_port(f"unix:{sock}")
    front.start()
    try:
        for model in ("official", "sthalles"):
            result = predict_image(png, server=f"unix:{sock}", model=model, output=None)
            np.testing.assert_array_equal(result.segmentation, colour_rule(img))
    finally:
        front.stop(0)


# --- CLI over the real server ---


def test_cli_predict_table_json_and_overlay_only(served):
    target, tmp, png, _ = served
    out = tmp / "cli.png"
    res = runner.invoke(app, ["predict", str(png), "-s", target, "-m", "official", "-o", str(out), "--async"])
    assert res.exit_code == 0, res.output
    text = flat(res.stdout)
    for name in ("background", "person", "bicycle", "car", "round trip", "wrote"):
        assert name in text
    res = runner.invoke(app, ["predict", str(png), "-s", target, "-m", "official", "-o", str(out), "--json",
                              "--overlay-only", "--label", "stable"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["version"] == 1 and sum(c["share"] for c in doc["classes"]) == pytest.approx(1.0)
    with Image.open(out) as im:
        assert 160 < im.width < 2 * 160  # one panel plus the legend


def test_status_with_label_and_json(served):
    target, _, _, _ = served
    res = runner.invoke(app, ["status", "-s", target, "-m", "official", "--label", "stable", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["versions"] == [
        {"version": 1, "state": "AVAILABLE", "error_code": "OK", "error_message": ""}]
    res = runner.invoke(app, ["status", "-s", target, "-m", "official", "--label", "nosuch"])
    assert res.exit_code == 1 and "nosuch" in flat(res.stderr)
    res = runner.invoke(app, ["status", "-s", target, "-m", "official"])
    assert res.exit_code == 0 and "AVAILABLE" in res.stdout


def test_bench_input_image_follows_the_model_signature(served):
    target, tmp, png, _ = served
    res = runner.invoke(app, ["bench", "-s", target, "-m", "sthalles", "--input-image", str(png), "-c", "1",
                              "--warmup-seconds", "0", "--measure-seconds", "0.3", "--output-key",
                              "segmentation_map", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["meta"]["inputs"] == {"images": {"shape": [1, 120, 160, 3], "dtype": "float32"},
                                     "height": {"shape": [], "dtype": "int32"},
                                     "width": {"shape": [], "dtype": "int32"}}
    assert doc["levels"][0]["requests"] > 0 and doc["levels"][0]["errors"] == 0


def test_client_commands_never_load_the_tf_runtime(served):
    """A real `tfsctl predict` / `status` process: the TF runtime (tensorflow.python) is never imported."""
    target, tmp, png, _ = served
    hook = ("import atexit, sys; atexit.register(lambda: print('TF_RUNTIME', 'tensorflow.python' in sys.modules, "
            "file=sys.stderr)); sys.argv[0] = 'tfsctl'; from tfsctl.cli import main; main()")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    for args in (["predict", str(png), "-s", target, "-m", "official", "-o", str(tmp / "sub.png")],
                 ["status", "-s", target, "-m", "official"]):
        res = subprocess.run([sys.executable, "-c", hook, *args], capture_output=True, text=True, env=env,
                             timeout=120)
        assert res.returncode == 0, res.stderr
        assert "TF_RUNTIME False" in res.stderr, res.stderr


# --- clear errors ---


def _cli_error(args: list[str]) -> str:
    res = runner.invoke(app, args)
    assert res.exit_code == 1, res.output
    return flat(res.stderr)


def test_server_errors_show_code_and_message(served):
    target, tmp, png, _ = served
    msg = _cli_error(["predict", str(png), "-s", target, "-m", "nosuch"])
    assert "NOT_FOUND" in msg and "nosuch" in msg and target in msg
    msg = _cli_error(["predict", str(png), "-s", target, "-m", "official", "--signature", "nosig"])
    assert "no signature 'nosig'" in msg and "serving_default" in msg
    msg = _cli_error(["predict", str(png), "-s", target, "-m", "official", "--output-key", "nokey"])
    assert "no output 'nokey'" in msg and "SemanticPredictions" in msg
    msg = _cli_error(["predict", str(png), "-s", target, "-m", "official", "--input-key", "nokey"])
    assert "no input 'nokey'" in msg and "ImageTensor" in msg
    msg = _cli_error(["predict", str(png), "-s", target, "-m", "deeplab", "--signature", "classify"])
    assert "no image input" in msg and "'inputs' DT_STRING" in msg
    msg = _cli_error(["predict", str(png), "-s", target, "-m", "official", "--version", "3", "--label", "stable"])
    assert "either --version or --label" in msg
    msg = _cli_error(["predict", str(png), "-s", target, "-m", "official", "--alpha", "1.5"])
    assert "--alpha" in msg
    msg = _cli_error(["predict", str(png), "-s", target, "-m", "official", "-o", str(tmp / "no" / "m.png")])
    assert "does not exist" in msg
    msg = _cli_error(["predict", str(png), "-s", target, "-m", "classifier", "--scale", "0-1", "--save-labels",
                      str(tmp / "x.png")])
    assert "--save-labels needs a segmentation" in msg
    msg = _cli_error(["predict", str(png), "-s", target, "-m", "official", "--labels", str(tmp / "none.txt")])
    assert "--labels" in msg and "not found" in msg


def test_unreadable_image(tmp_path):
    target = f"127.0.0.1:{free_port()}"
    bad = tmp_path / "notes.jpg"
    bad.write_text("this is not an image\n")
    msg = _cli_error(["predict", str(bad), "-s", target, "-m", "m", "-o", str(tmp_path / "o.png")])
    assert "not a recognised image format" in msg and "notes.jpg" in msg
    msg = _cli_error(["predict", str(tmp_path / "missing.png"), "-s", target, "-m", "m"])
    assert "file not found" in msg
    msg = _cli_error(["predict", str(tmp_path), "-s", target, "-m", "m"])
    assert "is a directory" in msg
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_image(tmp_path, fmt):
    rng = np.random.default_rng(0)
    full = tmp_path / f"full.{fmt.lower()}"
    Image.fromarray(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)).save(full, format=fmt)
    cut = tmp_path / f"cut.{fmt.lower()}"
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    msg = _cli_error(["predict", str(cut), "-s", f"127.0.0.1:{free_port()}", "-m", "m"])
    assert "truncated or corrupt" in msg and cut.name in msg


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose IHDR claims ``width`` x ``height`` RGB but whose data is a few bytes: a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def test_decompression_bomb(tmp_path):
    target = f"127.0.0.1:{free_port()}"
    huge = tmp_path / "huge.png"
    _png_header_only(huge, 100_000, 100_000)  # 10^10 pixels: PIL's own bomb error
    msg = _cli_error(["predict", str(huge), "-s", target, "-m", "m"])
    assert "decompression bomb" in msg and "huge.png" in msg
    big = tmp_path / "big.png"
    _png_header_only(big, 8_000, 6_000)  # 48 Mpx: under PIL's error tier, over our 40 Mpx limit
    msg = _cli_error(["predict", str(big), "-s", target, "-m", "m"])
    assert "8000x6000" in msg and "decompression-bomb guard" in msg


def test_unreachable_server(served):
    _, _, png, _ = served
    port = free_port()
    msg = _cli_error(["predict", str(png), "-s", f"127.0.0.1:{port}", "-m", "m", "--timeout", "5"])
    assert f"cannot reach server at 127.0.0.1:{port} (UNAVAILABLE)" in msg


# --- reload over ModelService ---


def test_reload_sends_config_and_shows_result(served):
    target, tmp, _, _ = served
    cfg = tmp / "models.config"
    res = runner.invoke(app, ["reload", "-s", target, "--model-config-file", str(cfg), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["ok"] and doc["available"]["official"] == [1] and len(doc["models"]) == 5
    bad = tmp / "bad.config"
    bad.write_text("model_config_list {\n  config { nme: 'x' }\n}\n")
    msg = _cli_error(["reload", "-s", target, "--model-config-file", str(bad)])
    assert "bad.config:2" in msg
    msg = _cli_error(["reload", "-s", target, "--model-config-file", str(tmp / "none.config")])
    assert "not found" in msg
    result = reload_config(target, cfg)
    assert result.ok and result.error_code == "OK"
