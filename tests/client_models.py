"""Small real SavedModels (TF1 graphs + SavedModelBuilder) shaped like the TF Serving image models users bring.

Each segments by colour with the same rule (:func:`colour_rule`), so a test knows the exact answer:
red -> person (15), green -> bicycle (2), mid grey -> car (7), anything else -> background (0).

- ``official``: the official DeepLab export's names: ``ImageTensor`` uint8 [1,?,?,3] -> ``SemanticPredictions``
  int64 [1,?,?] (signature ``serving_default``).
- ``sthalles``: ``images`` float32 [?,?,?,3] (pixels 0..255), ``height``/``width`` int32 scalars that must match the
  image -> ``segmentation_map`` int32 [?,?,?] and ``probabilities`` float32 [?,?,?,21].
- ``logits``: ``input`` uint8 [?,?,?,3] -> ``logits`` float32 [?,?,?,21] only (argmax on the client), signature
  ``segment`` as the model's only one (no serving_default).
- ``classifier``: ``input_1`` float32 [?,32,32,3] in 0..1 -> ``probabilities`` float32 [?,4]: share of
  background/red/green/grey pixels (Keras-style fixed input size).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

PERSON, BICYCLE, CAR = 15, 2, 7


def colour_rule(img: np.ndarray) -> np.ndarray:
    """The class map every test model computes, in numpy (for expected values)."""
    x = img.astype(np.float32)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    seg = np.zeros(img.shape[:-1], np.int64)
    seg[(r > 150) & (g < 100) & (b < 100)] = PERSON
    seg[(g > 110) & (r < 90) & (b < 90)] = BICYCLE
    seg[(np.abs(r - g) < 25) & (np.abs(g - b) < 25) & (r > 70) & (r < 190)] = CAR
    return seg


def _tf_rule(tf, x):  # noqa: ANN001, ANN202 - x float32 [..., 3] in 0..255
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    person = tf.logical_and(r > 150, tf.logical_and(g < 100, b < 100))
    bike = tf.logical_and(g > 110, tf.logical_and(r < 90, b < 90))
    car = tf.logical_and(tf.logical_and(tf.abs(r - g) < 25, tf.abs(g - b) < 25), tf.logical_and(r > 70, r < 190))
    seg = tf.zeros_like(r, dtype=tf.int64)
    seg = tf.where(person, tf.constant(PERSON, tf.int64), seg)
    seg = tf.where(bike, tf.constant(BICYCLE, tf.int64), seg)
    return tf.where(car, tf.constant(CAR, tf.int64), seg)


def _save(export_dir: Path, build) -> None:  # noqa: ANN001
    import tensorflow as tf

    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        signatures = build(tf, v1)
        with v1.Session(graph=graph) as sess:
            builder = v1.saved_model.Builder(str(export_dir))
            builder.add_meta_graph_and_variables(sess, ["serve"], signature_def_map=signatures)
            builder.save()


def _sig(v1, inputs: dict, outputs: dict):  # noqa: ANN001, ANN202
    info = v1.saved_model.utils.build_tensor_info
    return v1.saved_model.signature_def_utils.build_signature_def(
        inputs={k: info(t) for k, t in inputs.items()}, outputs={k: info(t) for k, t in outputs.items()},
        method_name="tensorflow/serving/predict",
    )


def write_official(base: Path) -> Path:
    def build(tf, v1):  # noqa: ANN001, ANN202
        image = v1.placeholder(tf.uint8, [1, None, None, 3], name="ImageTensor")
        seg = tf.identity(_tf_rule(tf, tf.cast(image, tf.float32)), name="SemanticPredictions")
        return {"serving_default": _sig(v1, {"ImageTensor": image}, {"SemanticPredictions": seg})}

    _save(base / "1", build)
    return base


def write_sthalles(base: Path) -> Path:
    def build(tf, v1):  # noqa: ANN001, ANN202
        images = v1.placeholder(tf.float32, [None, None, None, 3], name="images")
        height = v1.placeholder(tf.int32, [], name="height")
        width = v1.placeholder(tf.int32, [], name="width")
        shape = tf.shape(images)
        checks = [tf.debugging.assert_equal(shape[1], height, message="height does not match images"),
                  tf.debugging.assert_equal(shape[2], width, message="width does not match images")]
        with tf.control_dependencies(checks):
            seg = _tf_rule(tf, images)
        probs = tf.one_hot(seg, 21, dtype=tf.float32)
        return {"serving_default": _sig(v1, {"images": images, "height": height, "width": width},
                                        {"segmentation_map": tf.cast(seg, tf.int32), "probabilities": probs})}

    _save(base / "1", build)
    return base


def write_logits(base: Path) -> Path:
    def build(tf, v1):  # noqa: ANN001, ANN202
        image = v1.placeholder(tf.uint8, [None, None, None, 3], name="input")
        seg = _tf_rule(tf, tf.cast(image, tf.float32))
        logits = tf.one_hot(seg, 21, on_value=4.0, off_value=-1.0, dtype=tf.float32)
        return {"segment": _sig(v1, {"input": image}, {"logits": logits})}

    _save(base / "1", build)
    return base


CLASSIFIER_LABELS = ("nothing", "red thing", "green thing", "grey thing")


def write_classifier(base: Path) -> Path:
    def build(tf, v1):  # noqa: ANN001, ANN202
        image = v1.placeholder(tf.float32, [None, 32, 32, 3], name="input_1")
        seg = _tf_rule(tf, image * 255.0)
        counts = tf.stack([tf.reduce_mean(tf.cast(tf.equal(seg, c), tf.float32), axis=[1, 2])
                           for c in (0, PERSON, BICYCLE, CAR)], axis=1)
        return {"serving_default": _sig(v1, {"input_1": image}, {"probabilities": counts})}

    _save(base / "1", build)
    return base


def scene(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A light, slightly noisy background with a red disc, a green cross and a grey square."""
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 235, np.float32) + rng.normal(0, 6, (h, w, 3))
    yy, xx = np.mgrid[0:h, 0:w]
    disc = (yy - h * 0.5) ** 2 + (xx - w * 0.22) ** 2 < (min(h, w) * 0.18) ** 2
    img[disc] = (205, 40, 45)
    cy, cx, arm, thick = h * 0.5, w * 0.52, min(h, w) * 0.2, min(h, w) * 0.05
    cross = ((np.abs(yy - cy) < thick) & (np.abs(xx - cx) < arm)) | (
        (np.abs(xx - cx) < thick) & (np.abs(yy - cy) < arm))
    img[cross] = (30, 150, 40)
    square = (np.abs(yy - h * 0.5) < min(h, w) * 0.16) & (np.abs(xx - w * 0.8) < min(h, w) * 0.16)
    img[square] = (128, 128, 130)
    return np.clip(img, 0, 255).astype(np.uint8)


def model_config(models: dict[str, Path]) -> str:
    body = "".join(f'  config {{ name: "{n}" base_path: "{p}" model_platform: "tensorflow" }}\n'
                   for n, p in models.items())
    return "model_config_list {\n" + body + "}\n"


def certificate(tmp: Path, name: str, cn: str) -> tuple[Path, Path]:
    """A self-signed certificate (key, cert) valid for localhost and 127.0.0.1, made with the openssl CLI."""
    if shutil.which("openssl") is None:
        import pytest

        pytest.skip("openssl CLI not installed")
    key, cert = tmp / f"{name}.key", tmp / f"{name}.crt"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", f"/CN={cn}", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60, env={**os.environ},
    )
    return key, cert


def ssl_config(tmp: Path, key: Path, cert: Path, client_ca: Path | None = None) -> Path:
    def q(p: Path) -> str:
        return p.read_text().replace("\n", "\\n")

    text = f'server_key: "{q(key)}"\nserver_cert: "{q(cert)}"\n'
    if client_ca is not None:
        text += f'custom_ca: "{q(client_ca)}"\nclient_verify: true\n'
    path = tmp / "ssl.config"
    path.write_text(text)
    return path
