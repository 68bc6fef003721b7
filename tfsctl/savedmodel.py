"""Reading and patching SavedModel protos on disk, without loading the graph.

TF2's ``tf.saved_model.save`` writes every signature with the Predict method name; TF Serving's Classify and
Regress APIs check ``method_name``, so exporters call :func:`set_method_names` on the written directory (before the
atomic rename) to mark classify/regress signatures the way TF1's ``classification_signature_def`` did.
"""

from __future__ import annotations

from pathlib import Path

from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

# The pure names and rules live in model_layout (importable without TensorFlow); re-exported for the model side.
from tfsctl.model_layout import (  # noqa: F401
    CLASSIFY_METHOD,
    DEFAULT_SIGNATURE,
    INIT_OP_SIGNATURE,
    PREDICT_METHOD,
    REGRESS_METHOD,
    SAVED_MODEL_FILENAMES,
    SERVE_TAG,
    WARMUP_DIR,
    WARMUP_FILE,
    is_saved_model_dir,
    parse_version_dir,
    signature_or_default,
    warmup_path,
)


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
