"""Tiny real SavedModels for tests and benchmarks, written the way an exporter would (temp dir, then rename).

The toy model has three signatures so every API has something real to call:

- ``serving_default`` (predict): input ``x`` float32 ``[None, 4]`` -> ``y = x * scale`` float32 ``[None, 4]``.
- ``classify`` (``tensorflow/serving/classify``): input ``inputs`` serialized ``tf.Example`` strings ``[None]`` with a
  float feature ``x`` of length 4 -> ``classes`` string ``[None, 2]`` (``b"class0"``, ``b"class1"``) and ``scores``
  float32 ``[None, 2]`` = ``x[:, :2] * scale``.
- ``regress`` (``tensorflow/serving/regress``): input ``inputs`` -> ``outputs`` float32 ``[None]`` =
  ``sum(x, axis=1) * scale``.

``scale`` is a variable, so each version has a ``variables/`` directory (tests corrupt it on purpose).
Saving a SavedModel takes about a second, so each distinct ``scale`` is saved once per process into a template and
later calls copy that template: tests that write many versions stay fast.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import tempfile
import threading
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from tfsctl.savedmodel import CLASSIFY_METHOD, REGRESS_METHOD

TOY_CLASSES = (b"class0", b"class1")
WARMUP_DIR = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"

_templates: dict[float, Path] = {}
_templates_lock = threading.Lock()
_template_root: Path | None = None


def _template_dir() -> Path:
    global _template_root
    if _template_root is None:
        _template_root = Path(tempfile.mkdtemp(prefix="tfsctl-toy-"))
        atexit.register(shutil.rmtree, _template_root, True)
    return _template_root


def _save_toy(export_dir: Path, scale: float) -> None:
    """Build and save the toy tf.Module into ``export_dir`` (which must not exist)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    from tfsctl.savedmodel import set_method_names

    class Toy(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = tf.Variable(float(scale), dtype=tf.float32, name="scale")

        def _parse(self, serialized: tf.Tensor) -> tf.Tensor:
            feats = tf.io.parse_example(serialized, {"x": tf.io.FixedLenFeature([4], tf.float32)})
            return feats["x"]

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def predict(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"y": x * self.scale}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def classify(self, inputs: tf.Tensor) -> dict[str, tf.Tensor]:
            x = self._parse(inputs)
            n = tf.shape(x)[0]
            classes = tf.tile(tf.constant([list(TOY_CLASSES)]), tf.stack([n, 1]))
            return {"classes": classes, "scores": x[:, :2] * self.scale}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def regress(self, inputs: tf.Tensor) -> dict[str, tf.Tensor]:
            x = self._parse(inputs)
            return {"outputs": tf.reduce_sum(x, axis=1) * self.scale}

    module = Toy()
    tf.saved_model.save(
        module,
        str(export_dir),
        signatures={"serving_default": module.predict, "classify": module.classify, "regress": module.regress},
    )
    set_method_names(export_dir, {"classify": CLASSIFY_METHOD, "regress": REGRESS_METHOD})


def _template(scale: float) -> Path:
    with _templates_lock:
        path = _templates.get(scale)
        if path is None or not path.is_dir():
            path = _template_dir() / f"scale-{uuid.uuid4().hex}"
            _save_toy(path, scale)
            _templates[scale] = path
        return path


def write_toy_model(
    base_path: str | Path, version: int, *, scale: float = 1.0, warmup: int = 0
) -> Path:
    """Write the toy SavedModel as ``base_path/version`` atomically and return that path.

    ``warmup`` > 0 also writes that many predict warmup records into ``assets.extra``. The version directory
    appears in one rename, so a polling Source never sees it half-written. Raises FileExistsError when the
    version already exists.
    """
    base = Path(base_path)
    base.mkdir(parents=True, exist_ok=True)
    target = base / str(int(version))
    if target.exists():
        raise FileExistsError(f"{target} already exists")
    tmp = base / f".tmp-{int(version)}-{uuid.uuid4().hex[:8]}"
    try:
        shutil.copytree(_template(float(scale)), tmp)
        if warmup:
            write_warmup_requests(tmp, [toy_predict_log(np.ones((1, 4), np.float32) * i) for i in range(warmup)])
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def toy_example(x: Sequence[float]) -> bytes:
    """A serialized tf.Example with float feature ``x`` (the toy classify/regress input)."""
    from tensorflow.core.example import example_pb2

    ex = example_pb2.Example()
    ex.features.feature["x"].float_list.value.extend(float(v) for v in x)
    return ex.SerializeToString()


def toy_predict_log(x: np.ndarray, *, model_name: str = "toy", signature_name: str = "serving_default"):
    """A PredictionLog holding one PredictRequest for the toy model (a warmup record)."""
    from tensorflow_serving.apis import prediction_log_pb2

    from tfsctl.serving.tensors import from_numpy

    log = prediction_log_pb2.PredictionLog()
    req = log.predict_log.request
    req.model_spec.name = model_name
    req.model_spec.signature_name = signature_name
    req.inputs["x"].CopyFrom(from_numpy(np.asarray(x, dtype=np.float32)))
    return log


def write_warmup_requests(model_dir: str | Path, logs: Iterable) -> Path:
    """Write PredictionLog records as TF Serving's warmup TFRecord file in ``model_dir/assets.extra``."""
    import tensorflow as tf

    out_dir = Path(model_dir) / WARMUP_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / WARMUP_FILE
    tmp = out_dir / f".{WARMUP_FILE}.tmp"
    with tf.io.TFRecordWriter(str(tmp)) as writer:
        for log in logs:
            writer.write(log.SerializeToString())
    tmp.replace(path)
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS just handed out on ``host`` and released: nothing listens there (an unreachable server for
    client tests), and a server started a moment later can bind it (a REST port, where 0 means "off")."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
