"""tfsctl export: checkpoint / .keras -> versioned SavedModel; signatures run after tf.saved_model.load."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from tfsctl import export as export_mod  # noqa: E402
from tfsctl.cli import app  # noqa: E402
from tfsctl.errors import ExportError  # noqa: E402
from tfsctl.export import export_model  # noqa: E402
from tfsctl.inspection import inspect_path  # noqa: E402
from tfsctl.models.deeplab import DeepLabConfig, build_deeplab, checkpoint_for  # noqa: E402
from tfsctl.models.shapes import make_example  # noqa: E402
from tfsctl.savedmodel import CLASSIFY_METHOD, PREDICT_METHOD  # noqa: E402
from tfsctl.voc import VOC_CLASSES  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def tiny_config(**overrides: object) -> DeepLabConfig:
    base = {"stem_widths": [8, 16], "output_stride": 4, "block_width": 16, "num_blocks": 1, "aspp_width": 16}
    return DeepLabConfig(**{**base, **overrides})


def write_checkpoint(ckpt_dir: Path, config: DeepLabConfig) -> keras.Model:
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    model = build_deeplab(config)
    checkpoint_for(model).write(str(ckpt_dir / config.checkpoint_prefix))
    config.save(ckpt_dir)
    return model


def tf_example(encoded: bytes) -> bytes:
    feature = {"image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded]))}
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def encode(image: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def deeplab_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[keras.Model, Path, object]:
    """A tiny DeepLab checkpoint exported once: (keras model, export dir, loaded SavedModel)."""
    root = tmp_path_factory.mktemp("deeplab")
    model = write_checkpoint(root / "ckpt", tiny_config())
    result = export_model(root / "ckpt", root / "models" / "deeplab", warmup_sizes=[(64, 64), (30, 40)],
                          max_image_pixels=100 * 100)
    assert result.version == 1 and result.path == root / "models" / "deeplab" / "1"
    assert result.signatures == ["classify", "predict_images", "predict_probabilities", "serving_default"]
    return model, result.path, tf.saved_model.load(str(result.path))


@pytest.fixture
def small_keras(tmp_path: Path) -> Path:
    """A non-DeepLab .keras model: two named inputs, one output."""
    a = keras.Input(shape=(4,), name="features")
    b = keras.Input(shape=(2,), name="bias")
    out = keras.layers.Dense(2, name="score")(keras.layers.Concatenate()([a, b]))
    model = keras.Model([a, b], out)
    path = tmp_path / "small.keras"
    model.save(path)
    return path


def _versions(base: Path) -> list[str]:
    return sorted(p.name for p in base.iterdir())


def test_inspect_shows_signatures_methods_and_warmup(deeplab_export: tuple) -> None:
    _, path, _ = deeplab_export
    info = inspect_path(path)
    assert info.tag_sets == [["serve"]]
    assert info.warmup_records == 5  # predict_images at both sizes, then every other signature once
    mg = info.meta_graph()
    assert mg.signature("classify").method_name == CLASSIFY_METHOD
    # the classic DeepLab contract: predict_images (= serving_default) answers segmentation_map only
    expected = {"predict_images": {"segmentation_map": ("DT_INT64", [-1, -1, -1])},
                "serving_default": {"segmentation_map": ("DT_INT64", [-1, -1, -1])},
                "predict_probabilities": {"probabilities": ("DT_FLOAT", [-1, -1, -1, 21])}}
    for name, outs in expected.items():
        sig = mg.signature(name)
        assert sig.method_name == PREDICT_METHOD
        ins = {t.key: (t.dtype, t.shape) for t in sig.inputs}
        assert ins == {"images": ("DT_UINT8", [-1, -1, -1, 3]), "height": ("DT_INT32", [-1]),
                       "width": ("DT_INT32", [-1])}
        assert {t.key: (t.dtype, t.shape) for t in sig.outputs} == outs


def test_warmup_records_are_prediction_logs(deeplab_export: tuple) -> None:
    from tensorflow_serving.apis import prediction_log_pb2

    from tfsctl.serving.tensors import to_numpy

    _, path, loaded = deeplab_export
    sizes, warmed = [], []
    for record in tf.data.TFRecordDataset(str(path / "assets.extra" / "tf_serving_warmup_requests")):
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        if log.WhichOneof("log_type") == "classify_log":
            req = log.classify_log.request
            warmed.append(req.model_spec.signature_name)
            examples = [e.SerializeToString() for e in req.input.example_list.examples]
            assert loaded.signatures["classify"](inputs=tf.constant(examples))["scores"].shape == (1, 21)
            continue
        req = log.predict_log.request
        warmed.append(req.model_spec.signature_name)
        if req.model_spec.signature_name != "predict_images":
            continue
        images = to_numpy(req.inputs["images"])
        assert images.dtype == np.uint8
        assert to_numpy(req.inputs["height"]).tolist() == [images.shape[1]]
        assert to_numpy(req.inputs["width"]).tolist() == [images.shape[2]]
        sizes.append(images.shape[1:3])
        # the recorded request runs as it is against the exported signature (as a server's warmup would)
        inputs = {k: tf.constant(to_numpy(v)) for k, v in req.inputs.items()}
        out = loaded.signatures["predict_images"](**inputs)
        assert out["segmentation_map"].shape == images.shape[:3]
    assert sizes == [(64, 64), (30, 40)]
    assert sorted(set(warmed)) == ["classify", "predict_images", "predict_probabilities", "serving_default"]


def test_predict_images_matches_model_and_masks_padding(deeplab_export: tuple) -> None:
    model, _, loaded = deeplab_export
    rng = np.random.default_rng(0)
    img_a, _ = make_example(rng, 40, 50)
    img_b, _ = make_example(rng, 30, 20)
    batch = np.zeros((2, 40, 50, 3), np.uint8)
    batch[0], batch[1, :30, :20] = img_a, img_b
    batch[1, 30:, :] = 255  # padding content must not matter
    batch[1, :, 20:] = 255
    for name in ("predict_images", "serving_default"):
        out = loaded.signatures[name](images=tf.constant(batch), height=tf.constant([40, 30]),
                                      width=tf.constant([50, 20]))
        assert set(out) == {"segmentation_map"}
        seg = out["segmentation_map"].numpy()
        probs = loaded.signatures["predict_probabilities"](images=tf.constant(batch), height=tf.constant([40, 30]),
                                                           width=tf.constant([50, 20]))["probabilities"].numpy()
        assert seg.dtype == np.int64 and seg.shape == (2, 40, 50) and probs.shape == (2, 40, 50, 21)
        want_a = np.argmax(model(img_a[None].astype(np.float32)), -1)[0]
        want_b = np.argmax(model(img_b[None].astype(np.float32)), -1)[0]
        assert (seg[0] == want_a).mean() > 0.99
        assert (seg[1, :30, :20] == want_b).mean() > 0.99
        assert not seg[1, 30:].any() and not seg[1, :, 20:].any()
        np.testing.assert_allclose(probs[0].sum(-1), 1.0, atol=1e-4)
        assert not probs[1, 30:].any()


@pytest.mark.parametrize(("height", "width", "message"), [
    ([41], [50], "input height must be <= the height of input images"),
    ([0], [50], "input height must be >= 1"),
    ([40], [51], "input width must be <="),
    ([40, 40], [50, 50], "one value per image"),
])
def test_predict_images_validates_sizes(deeplab_export: tuple, height: list, width: list, message: str) -> None:
    _, _, loaded = deeplab_export
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        loaded.signatures["predict_images"](images=tf.zeros([1, 40, 50, 3], tf.uint8), height=tf.constant(height),
                                            width=tf.constant(width))


def test_predict_images_refuses_images_over_the_pixel_limit(deeplab_export: tuple) -> None:
    _, _, loaded = deeplab_export
    fn = loaded.signatures["predict_images"]
    out = fn(images=tf.zeros([1, 100, 100, 3], tf.uint8), height=tf.constant([100]), width=tf.constant([100]))
    assert out["segmentation_map"].shape == (1, 100, 100)  # exactly at the limit of 100 * 100 pixels
    with pytest.raises(tf.errors.InvalidArgumentError, match="larger than the limit of 10000 pixels"):
        fn(images=tf.zeros([1, 100, 101, 3], tf.uint8), height=tf.constant([100]), width=tf.constant([101]))


def test_classify_png_and_jpeg(deeplab_export: tuple) -> None:
    model, _, loaded = deeplab_export
    img, _ = make_example(np.random.default_rng(1), 48, 64)
    out = loaded.signatures["classify"](inputs=tf.constant([tf_example(encode(img, "PNG")),
                                                            tf_example(encode(img, "JPEG"))]))
    classes, scores = out["classes"].numpy(), out["scores"].numpy()
    assert classes.shape == (2, 21) and [c.decode() for c in classes[0]] == list(VOC_CLASSES)
    np.testing.assert_allclose(scores.sum(1), 1.0, atol=1e-5)
    pred = np.argmax(model(img[None].astype(np.float32)), -1)[0]
    want = np.bincount(pred.ravel(), minlength=21) / pred.size
    np.testing.assert_allclose(scores[0], want, atol=0.01)


@pytest.mark.parametrize(("payload", "message"), [
    (encode(np.zeros((101, 100, 3), np.uint8), "PNG"), "larger than the limit"),  # 10100 > 100*100 pixels
    (encode(np.zeros((120, 120, 3), np.uint8), "JPEG"), "larger than the limit"),
    (b"definitely not an image", "neither a PNG nor a JPEG"),
    (encode(np.zeros((8, 8, 3), np.uint8), "GIF"), "neither a PNG nor a JPEG"),
    (encode(np.zeros((8, 8, 3), np.uint8), "PNG")[:20], "truncated PNG"),
    (encode(np.full((8, 8, 3), 9, np.uint8), "PNG")[:40], "Invalid PNG"),  # header fine, data cut: decoder error
])
def test_classify_rejects_big_and_garbage_images(deeplab_export: tuple, payload: bytes, message: str) -> None:
    _, _, loaded = deeplab_export
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        loaded.signatures["classify"](inputs=tf.constant([tf_example(payload)]))


def test_classify_rejects_bad_examples(deeplab_export: tuple) -> None:
    _, _, loaded = deeplab_export
    with pytest.raises(tf.errors.InvalidArgumentError):
        loaded.signatures["classify"](inputs=tf.constant([b"xx"]))
    empty = tf.train.Example().SerializeToString()
    with pytest.raises(tf.errors.InvalidArgumentError, match="image/encoded"):
        loaded.signatures["classify"](inputs=tf.constant([empty]))


def test_versions_auto_increment_and_overwrite_needs_force(small_keras: Path, tmp_path: Path) -> None:
    base = tmp_path / "models" / "small"
    r1 = export_model(small_keras, base)
    r2 = export_model(small_keras, base)
    r7 = export_model(small_keras, base / "7")
    r8 = export_model(small_keras, base)
    assert [r.version for r in (r1, r2, r7, r8)] == [1, 2, 7, 8]
    assert _versions(base) == ["1", "2", "7", "8"]
    assert (base / "1").stat().st_mode & 0o777 == 0o755  # readable by a server running as another user
    with pytest.raises(ExportError, match="version 2 already exists.*--force"):
        export_model(small_keras, base / "2")
    marker = base / "2" / "old-marker"
    marker.write_text("old")
    replaced = export_model(small_keras, base / "2", force=True)
    assert replaced.replaced and replaced.version == 2
    assert not marker.exists() and (base / "2" / "saved_model.pb").is_file()
    assert _versions(base) == ["1", "2", "7", "8"]  # no temp or old dirs left behind


def test_generic_keras_model_gets_serving_default(small_keras: Path, tmp_path: Path) -> None:
    result = export_model(small_keras, tmp_path / "m")
    assert result.signatures == ["serving_default"]
    assert inspect_path(result.path).warmup_records == 1  # every export is warmed: one request per signature
    sig = inspect_path(result.path).meta_graph().signature("serving_default")
    assert {t.key: t.shape for t in sig.inputs} == {"features": [-1, 4], "bias": [-1, 2]}
    assert [t.key for t in sig.outputs] == ["score"]
    model = keras.saving.load_model(small_keras)
    x, b = np.ones((3, 4), np.float32), np.full((3, 2), 0.5, np.float32)
    out = tf.saved_model.load(str(result.path)).signatures["serving_default"](features=x, bias=b)
    np.testing.assert_allclose(out["score"], model([x, b]), atol=1e-5)


def test_deeplab_keras_file_gets_image_signatures(tmp_path: Path) -> None:
    path = tmp_path / "deeplab.keras"
    build_deeplab(tiny_config()).save(path)
    result = export_model(path, tmp_path / "m", warmup_sizes=[])
    assert result.signatures == ["classify", "predict_images", "predict_probabilities", "serving_default"]
    assert not (result.path / "assets.extra").exists()


def test_fixed_size_keras_segmenter_is_resized_to_any_input(tmp_path: Path) -> None:
    inp = keras.Input(shape=(32, 32, 3), name="pixels")
    model = keras.Model(inp, keras.layers.Conv2D(21, 1, name="logits")(inp))
    model.save(tmp_path / "fixed.keras")
    result = export_model(tmp_path / "fixed.keras", tmp_path / "m", warmup_sizes=[(20, 24)])
    assert result.signatures == ["classify", "predict_images", "predict_probabilities", "serving_default"]
    loaded = tf.saved_model.load(str(result.path))
    args = {"images": tf.zeros([1, 40, 50, 3], tf.uint8), "height": tf.constant([40]), "width": tf.constant([50])}
    assert loaded.signatures["predict_images"](**args)["segmentation_map"].shape == (1, 40, 50)
    assert loaded.signatures["predict_probabilities"](**args)["probabilities"].shape == (1, 40, 50, 21)


def test_failure_midway_leaves_only_complete_versions(small_keras: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    base = tmp_path / "m"
    export_model(small_keras, base)
    seen = []
    real_save = tf.saved_model.save

    def save_then_crash(obj: object, export_dir: str, **kwargs: object) -> None:
        real_save(obj, export_dir, **kwargs)  # the SavedModel is fully written into the temp dir ...
        seen.append(sorted(os.listdir(export_dir)))
        raise OSError(28, "No space left on device")  # ... then the disk "fills up"

    monkeypatch.setattr(tf.saved_model, "save", save_then_crash)
    with pytest.raises(ExportError, match="No space left"):
        export_model(small_keras, base)
    assert seen and "saved_model.pb" in seen[0]
    assert _versions(base) == ["1"]
    with pytest.raises(ExportError):
        export_model(small_keras, base / "1", force=True)
    assert _versions(base) == ["1"] and (base / "1" / "saved_model.pb").is_file()
    with pytest.raises(ExportError):  # a failure on a fresh base path leaves no base dir behind
        export_model(small_keras, tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists()


def test_bad_checkpoints(tmp_path: Path, small_keras: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(ExportError, match="does not exist"):
        export_model(tmp_path / "missing", out)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExportError, match="no model.json"):
        export_model(tmp_path / "empty", out)
    ckpt = tmp_path / "ckpt"
    write_checkpoint(ckpt, tiny_config())
    # model.json describing a wider ASPP than the checkpoint holds
    tiny_config(aspp_width=24).save(ckpt)
    with pytest.raises(ExportError, match=r"variable\(s\) with another shape: .*aspp0_conv/_kernel model "
                       r"\[1, 1, 16, 24\] vs checkpoint \[1, 1, 16, 16\]") as info:
        export_model(ckpt, out)
    shown = str(info.value).count(" vs checkpoint ")
    total = int(str(info.value).split(" variable(s) with another shape")[0].rsplit(" ", 1)[1])
    assert shown == min(total, 8) and (total <= 8 or str(info.value).endswith(f"... ({total - 8} more)"))
    # one more residual block than the checkpoint has
    tiny_config(num_blocks=2).save(ckpt)
    with pytest.raises(ExportError, match="missing from the checkpoint: block2a_bn"):
        export_model(ckpt, out)
    # fewer blocks: variables in the checkpoint nobody uses
    write_checkpoint(ckpt, tiny_config(num_blocks=2))
    tiny_config(num_blocks=1).save(ckpt)
    with pytest.raises(ExportError, match="unmatched by the model: block2a_bn"):
        export_model(ckpt, out)
    (ckpt / "model.json").write_text('{"num_classes": 21, "bogus": 1}')
    with pytest.raises(ExportError, match="bogus"):
        export_model(ckpt, out)
    tiny_config().save(ckpt)
    for f in ckpt.glob("ckpt.*"):
        f.unlink()
    with pytest.raises(ExportError, match="no checkpoint ckpt.index"):
        export_model(ckpt, out)
    with pytest.raises(ExportError, match="cannot tell what .*model.json is"):
        export_model(ckpt / "model.json", out)
    (tmp_path / "broken.keras").write_bytes(b"not a zip")
    with pytest.raises(ExportError, match="cannot load Keras model"):
        export_model(tmp_path / "broken.keras", out)
    with pytest.raises(ExportError, match="not a zip archive"):  # keras itself says "File not found"
        export_model(tmp_path / "broken.keras", out)
    assert not out.exists()
    with pytest.raises(ExportError, match="version '-1' .* is not a non-negative integer"):
        export_model(small_keras, out / "-1")
    assert not out.exists()


def test_cli_export_and_inspect_json(small_keras: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    base = tmp_path / "m"
    res = runner.invoke(app, ["export", str(small_keras), str(base), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["version"] == 1 and data["signatures"] == ["serving_default"]
    res = runner.invoke(app, ["inspect", str(base), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["kind"] == "base_path" and info["versions"][0]["valid"] is True
    assert info["latest"]["meta_graphs"][0]["tags"] == ["serve"]
    res = runner.invoke(app, ["export", str(small_keras), str(base / "1")])
    assert res.exit_code == 1
    output = " ".join(res.output.split())  # rich wraps long lines
    assert "version 1 already exists" in output and "--force" in output and "Traceback" not in output
    res = runner.invoke(app, ["export", str(tmp_path / "nope"), str(base)])
    assert res.exit_code == 1 and "does not exist" in " ".join(res.output.split())
    res = runner.invoke(app, ["export", str(small_keras), str(base), "--warmup-size", "12by3"])
    assert res.exit_code != 0


def test_internal_target_resolution(tmp_path: Path) -> None:
    assert export_mod.resolve_target(tmp_path / "new") == (tmp_path / "new", 1)
    (tmp_path / "b" / "3").mkdir(parents=True)
    (tmp_path / "b" / ".tmp-4-x").mkdir()
    (tmp_path / "b" / "notes").mkdir()
    assert export_mod.resolve_target(tmp_path / "b") == (tmp_path / "b", 4)
    assert export_mod.resolve_target(tmp_path / "b" / "12") == (tmp_path / "b", 12)
