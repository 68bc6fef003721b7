"""DeepLab v3 architecture, its model.json config, the synthetic data set and the committed sample checkpoint."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from PIL import Image  # noqa: E402

from tfsctl.models.deeplab import DeepLabConfig, build_deeplab, checkpoint_for  # noqa: E402
from tfsctl.models.shapes import CLASS_IDS, confusion_matrix, make_dataset, mean_iou  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_CKPT = ROOT / "samples" / "deeplab" / "checkpoint"
SAMPLE_IMAGES = ROOT / "samples" / "images"


def tiny_config() -> DeepLabConfig:
    return DeepLabConfig(stem_widths=[8, 16], output_stride=4, block_width=16, num_blocks=1, aspp_width=16)


def test_config_roundtrip_and_validation(tmp_path: Path) -> None:
    cfg = tiny_config()
    cfg.metrics = {"eval_mean_iou": 0.5}
    written = cfg.save(tmp_path)
    assert written == tmp_path / "model.json"
    assert DeepLabConfig.load(tmp_path) == cfg
    data = json.loads(written.read_text())
    data["atrous_ratez"] = [1, 2, 3]
    with pytest.raises(ValueError, match="atrous_ratez"):
        DeepLabConfig.from_dict(data)
    with pytest.raises(ValueError, match="output stride"):
        DeepLabConfig(stem_widths=[8, 16], output_stride=8)
    with pytest.raises(ValueError, match="three atrous rates"):
        DeepLabConfig(atrous_rates=[6, 12])


def test_architecture_is_deeplab_v3_and_takes_any_size() -> None:
    model = build_deeplab(tiny_config())
    layers = {layer.name: layer for layer in model.layers}
    # ASPP: 1x1 branch, three 3x3 atrous branches at 6/12/18, image pooling, 1x1 projection.
    assert layers["aspp0_conv"].kernel_size == (1, 1)
    assert [layers[f"aspp{i}_conv"].dilation_rate for i in (1, 2, 3)] == [(6, 6), (12, 12), (18, 18)]
    assert all(layers[f"aspp{i}_conv"].kernel_size == (3, 3) for i in (1, 2, 3))
    assert "aspp_pool" in layers and "aspp_pool_upsample" in layers
    assert layers["aspp_proj_conv"].kernel_size == (1, 1)
    assert layers["block1a_conv"].dilation_rate == (2, 2)  # atrous backbone block
    for shape in [(1, 37, 53, 3), (2, 64, 48, 3), (1, 5, 9, 3)]:
        out = model(np.random.default_rng(0).uniform(0, 255, shape).astype(np.float32))
        assert tuple(out.shape) == shape[:3] + (21,)


def test_checkpoint_layout_is_keyed_by_layer_name(tmp_path: Path) -> None:
    import tensorflow as tf

    model = build_deeplab(tiny_config())
    prefix = checkpoint_for(model).write(str(tmp_path / "ckpt"))
    keys = [k for k, _ in tf.train.list_variables(prefix)]
    assert any(k.startswith("aspp1_conv/") for k in keys)
    restored = build_deeplab(tiny_config())
    checkpoint_for(restored).read(prefix).assert_consumed()
    x = np.full((1, 16, 16, 3), 100, np.float32)
    np.testing.assert_allclose(model(x), restored(x), atol=1e-5)


def test_synthetic_dataset_is_deterministic_and_uses_voc_ids() -> None:
    a_img, a_lab = make_dataset(7, 3, 32, 40)
    b_img, b_lab = make_dataset(7, 3, 32, 40)
    assert a_img.shape == (3, 32, 40, 3) and a_lab.shape == (3, 32, 40)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_lab, b_lab)
    assert set(np.unique(a_lab)) <= set(CLASS_IDS)
    c_img, _ = make_dataset(8, 3, 32, 40)
    assert not np.array_equal(a_img, c_img)


def test_mean_iou() -> None:
    labels = np.array([[0, 0, 1, 1]])
    conf = confusion_matrix(labels, np.array([[0, 1, 1, 1]]))
    miou, per = mean_iou(conf, [0, 1, 2])
    assert per == {0: 0.5, 1: 2 / 3}  # class 2 absent from both: skipped
    assert miou == pytest.approx((0.5 + 2 / 3) / 2)


def test_exported_sample_measures_up_on_held_out_images(tmp_path: Path) -> None:
    """mIoU measured here, on held-out images the sample never trained on, through the exported SavedModel's
    predict_images signature (the number in model.json is only what training recorded)."""
    import tensorflow as tf

    from tfsctl.export import export_model

    cfg = DeepLabConfig.load(SAMPLE_CKPT)
    data = cfg.dataset
    assert data["eval_seed"] != data["train_seed"]
    height, width = data["image_size"]
    # the first 32 images of the held-out set (model.json's eval seed), drawn as training drew them
    images, labels = make_dataset(data["eval_seed"], 32, height, width)
    result = export_model(SAMPLE_CKPT, tmp_path / "deeplab", warmup_sizes=[])
    predict = tf.saved_model.load(str(result.path)).signatures["predict_images"]
    conf = np.zeros((21, 21), np.int64)
    for start in range(0, len(images), 8):
        batch = images[start:start + 8]
        n = len(batch)
        seg = predict(images=tf.constant(batch), height=tf.fill([n], height), width=tf.fill([n], width))
        conf += confusion_matrix(labels[start:start + n], seg["segmentation_map"].numpy())
    miou, per_class = mean_iou(conf, cfg.class_ids)
    assert miou >= 0.75, f"held-out mIoU {miou:.3f} ({per_class})"
    assert abs(miou - cfg.metrics["eval_mean_iou"]) < 0.1, "far from the mIoU training recorded in model.json"
    # and a committed sample image, at another size than training's, through the same signature
    image = np.asarray(Image.open(SAMPLE_IMAGES / "shapes_256.png").convert("RGB"))
    label = np.asarray(Image.open(SAMPLE_IMAGES / "labels" / "shapes_256.png"))
    seg = predict(images=tf.constant(image[None]), height=tf.constant([256]), width=tf.constant([256]))
    miou, _ = mean_iou(confusion_matrix(label, seg["segmentation_map"].numpy()[0]), cfg.class_ids)
    assert miou >= 0.75, f"sample image mIoU {miou:.3f}"


def test_sample_checkpoint_restores_and_segments_sample_images() -> None:
    cfg = DeepLabConfig.load(SAMPLE_CKPT)
    size = sum(p.stat().st_size for p in SAMPLE_CKPT.glob("ckpt*"))
    assert 0 < size < 5 * 2**20
    model = build_deeplab(cfg)
    checkpoint_for(model).read(str(SAMPLE_CKPT / cfg.checkpoint_prefix)).assert_consumed()
    images = sorted(p for p in SAMPLE_IMAGES.iterdir() if p.suffix in (".png", ".jpg"))
    assert {p.suffix for p in images} == {".png", ".jpg"}
    conf = np.zeros((21, 21), np.int64)
    for path in images:
        img = np.asarray(Image.open(path).convert("RGB"))
        label = np.asarray(Image.open(SAMPLE_IMAGES / "labels" / f"{path.stem}.png"))
        pred = np.argmax(model(img[None].astype(np.float32)), axis=-1)[0]
        conf += confusion_matrix(label, pred)
    miou, _ = mean_iou(conf, cfg.class_ids)
    assert miou >= 0.75, f"sample images mIoU {miou:.3f}"
