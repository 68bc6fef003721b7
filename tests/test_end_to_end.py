"""The main job end to end, as `make demo` runs it: export the committed sample checkpoint with `tfsctl export`,
serve it with a real ModelServer on 127.0.0.1, segment a sample image with `tfsctl predict`, and check the mask
against the image's ground-truth label map."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from tfsctl.cli import app  # noqa: E402
from tfsctl.client.predict import predict_image  # noqa: E402
from tfsctl.serving.testing import served as serve_model  # noqa: E402
from tfsctl.voc import VOC_CLASSES  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINT = ROOT / "samples" / "deeplab" / "checkpoint"
IMAGE = ROOT / "samples" / "images" / "shapes_256.png"
LABELS = ROOT / "samples" / "images" / "labels" / "shapes_256.png"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The sample exported through the CLI (version 1) and served on an OS-chosen gRPC port."""
    tmp = tmp_path_factory.mktemp("e2e")
    base = tmp / "models" / "deeplab"
    result = CliRunner().invoke(app, ["export", str(CHECKPOINT), str(base), "--warmup-size", "256x256"])
    assert result.exit_code == 0, result.output
    assert (base / "1" / "saved_model.pb").is_file()
    with serve_model(ready_timeout=180, grace=5, model_name="deeplab", model_base_path=str(base),
                     file_system_poll_wait_seconds=0.2) as server:
        yield server, tmp


def test_predict_cli_segments_the_sample_image(served):
    server, tmp = served
    out = tmp / "mask.png"
    result = CliRunner().invoke(
        app,
        ["predict", str(IMAGE), "--server", f"127.0.0.1:{server.grpc_port}", "--model", "deeplab",
         "--signature", "predict_images", "--output", str(out), "--json"],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["model"] == "deeplab" and report["version"] == 1
    truth = np.asarray(Image.open(LABELS))
    present = {int(c) for c in np.unique(truth)}
    reported = {c["class_id"] for c in report["classes"] if c["share"] >= 0.002}
    assert reported == present, f"classes {sorted(reported)} vs ground truth {sorted(present)}"
    assert sum(c["share"] for c in report["classes"]) == pytest.approx(1.0)

    mask = Image.open(out)
    assert mask.width > 256 and mask.height >= 256  # the overlay plus its legend panel


def test_served_segmentation_matches_ground_truth(served):
    server, _ = served
    result = predict_image(IMAGE, server=f"127.0.0.1:{server.grpc_port}", model="deeplab", output=None)
    seg = result.segmentation
    truth = np.asarray(Image.open(LABELS)).astype(np.int64)
    assert seg.shape == truth.shape
    ious = []
    for c in np.unique(truth):
        inter = np.logical_and(seg == c, truth == c).sum()
        union = np.logical_or(seg == c, truth == c).sum()
        ious.append(inter / union)
    assert (seg == truth).mean() >= 0.95
    assert float(np.mean(ious)) >= 0.7, dict(zip([VOC_CLASSES[c] for c in np.unique(truth)], ious, strict=True))
