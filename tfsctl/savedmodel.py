"""Reading and patching SavedModel protos on disk, without loading the graph.

TF2's ``tf.saved_model.save`` writes every signature with the Predict method name; TF Serving's Classify and
Regress APIs check ``method_name``, so exporters call :func:`set_method_names` on the written directory (before the
atomic rename) to mark classify/regress signatures the way TF1's ``classification_signature_def`` did.
"""

from __future__ import annotations

from pathlib import Path

from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

SERVE_TAG = "serve"
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
SAVED_MODEL_FILENAMES = ("saved_model.pb", "saved_model.pbtxt")
DEFAULT_SIGNATURE = "serving_default"
INIT_OP_SIGNATURE = "__saved_model_init_op"
WARMUP_DIR = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"
_INT64_MAX = 2**63 - 1
_ASCII_SPACE = " \t\n\v\f\r"


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


def read_saved_model(path: str | Path) -> saved_model_pb2.SavedModel:
    """Parse the SavedModel proto of an export directory (binary or text); raises OSError / ValueError."""
    p = Path(path)
    pb = p / "saved_model.pb"
    proto = saved_model_pb2.SavedModel()
    if pb.is_file():
        proto.ParseFromString(pb.read_bytes())
        return proto
    pbtxt = p / "saved_model.pbtxt"
    if pbtxt.is_file():
        from google.protobuf import text_format

        text_format.Parse(pbtxt.read_text(), proto)
        return proto
    raise FileNotFoundError(f"{p} holds no saved_model.pb or saved_model.pbtxt")


def find_meta_graph(
    saved_model: saved_model_pb2.SavedModel, tags: set[str] | frozenset[str] = frozenset({SERVE_TAG})
) -> meta_graph_pb2.MetaGraphDef | None:
    """The meta graph whose tag set equals ``tags``, or None."""
    for mg in saved_model.meta_graphs:
        if set(mg.meta_info_def.tags) == set(tags):
            return mg
    return None


def set_method_names(export_dir: str | Path, methods: dict[str, str], tags: set[str] | None = None) -> None:
    """Rewrite ``method_name`` of the named signatures in ``export_dir/saved_model.pb`` in place."""
    pb = Path(export_dir) / "saved_model.pb"
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString(pb.read_bytes())
    mg = find_meta_graph(proto, tags or {SERVE_TAG})
    if mg is None:
        raise ValueError(f"{export_dir}: no meta graph tagged {sorted(tags or {SERVE_TAG})}")
    for name, method in methods.items():
        if name not in mg.signature_def:
            raise KeyError(f"{export_dir}: no signature {name!r} to mark as {method}")
        mg.signature_def[name].method_name = method
    tmp = pb.with_suffix(".pb.tmp")
    tmp.write_bytes(proto.SerializeToString())
    tmp.replace(pb)
