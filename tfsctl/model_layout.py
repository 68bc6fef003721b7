"""The names and directory rules TF Serving reads a model by: pure Python, importable without TensorFlow.

One home for the default signature name, the method names, the warmup file's place and the version-directory
rule. :mod:`tfsctl.savedmodel` (which reads the protos, and so imports TensorFlow's) re-exports all of it for the
model side and the server; the client, which must never load TensorFlow, imports it from here.
"""

from __future__ import annotations

from pathlib import Path

SERVE_TAG = "serve"
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
SAVED_MODEL_FILENAMES = ("saved_model.pb", "saved_model.pbtxt")
DEFAULT_SIGNATURE = "serving_default"
INIT_OP_SIGNATURE = "__saved_model_init_op"
WARMUP_DIR = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"
TFLITE_FILE = "model.tflite"  # served instead of the SavedModel with --prefer_tflite_model (TF Serving's name)
_INT64_MAX = 2**63 - 1
_ASCII_SPACE = " \t\n\v\f\r"


def signature_or_default(name: str) -> str:
    """TF Serving's rule: an empty signature name means ``serving_default``."""
    return name or DEFAULT_SIGNATURE


def parse_version_dir(name: str) -> int | None:
    """The version number a directory name stands for, or None: the one rule for server, export and inspect.

    TF Serving parses version directories with ``absl::SimpleAtoi`` into an int64: ASCII digits with an optional
    sign and surrounding ASCII white space, within int64. Negative numbers are not versions here. Anything else
    ("٣", "1e3", "99999999999999999999") is not a version directory and is ignored.
    """
    text = name.strip(_ASCII_SPACE)
    if text[:1] == "+":
        text = text[1:]
    if not text or not text.isascii() or not text.isdigit():
        return None
    value = int(text)
    return value if value <= _INT64_MAX else None


def warmup_path(version_dir: str | Path) -> Path:
    """Where TF Serving looks for a version's warmup records: ``assets.extra/tf_serving_warmup_requests``."""
    return Path(version_dir) / WARMUP_DIR / WARMUP_FILE


def is_saved_model_dir(path: str | Path) -> bool:
    """True when ``path`` holds a saved_model.pb or saved_model.pbtxt."""
    p = Path(path)
    return any((p / name).is_file() for name in SAVED_MODEL_FILENAMES)


def tflite_file(version_dir: str | Path) -> Path:
    """Where TF Serving looks for a version's TensorFlow Lite model: ``model.tflite`` beside ``saved_model.pb``."""
    return Path(version_dir) / TFLITE_FILE


__all__ = [
    "CLASSIFY_METHOD", "DEFAULT_SIGNATURE", "INIT_OP_SIGNATURE", "PREDICT_METHOD", "REGRESS_METHOD",
    "SAVED_MODEL_FILENAMES", "SERVE_TAG", "TFLITE_FILE", "WARMUP_DIR", "WARMUP_FILE", "is_saved_model_dir",
    "parse_version_dir", "signature_or_default", "tflite_file", "warmup_path",
]
