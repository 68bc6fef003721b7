"""``tfsctl export --to-tflite``: a ``model.tflite`` beside the SavedModel, in the version being written.

TF Serving serves ``model.tflite`` from a version directory when started with ``--prefer_tflite_model`` (and the
SavedModel otherwise), so one version directory can hold both. The TFLite model is converted from the SavedModel
just written (TFLite builtin ops only, since the LiteRT interpreter that serves it has no TensorFlow ops), with one
LiteRT signature per predict signature, under the same keys; a signature the converter cannot take (a classify
signature parsing tf.Examples) is left out with a warning. It is written
into the staging directory, so it appears with the version in the export's one rename, or not at all.

A model with one signature also gets it as ``signature_defs_metadata`` (TFLite's ``signature_def_util`` format),
so TF Serving, and tfsctl by default, serve it under the SavedModel's key and input/output names: without it they
would generate a ``serving_default`` keyed by tensor names (``serving_default_x``). A model with several keeps
only its LiteRT signatures, which tfsctl serves by name with ``--tflite_signature_runners``; TF Serving serves its
first subgraph as a generated ``serving_default``, and the export warns so.

Before that rename the file is opened with the LiteRT interpreter and its signatures read as the server reads
them (with ``--tflite_signature_runners`` when the model has several); every warmup record of the version must
name one of them (a server preferring the TFLite model replays the same records), and a model the interpreter
cannot run (an op it lacks) is an ExportError naming the reason.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tfsctl.errors import ExportError
from tfsctl.model_layout import TFLITE_FILE
from tfsctl.savedmodel import DEFAULT_SIGNATURE, INIT_OP_SIGNATURE, PREDICT_METHOD, read_saved_model
from tfsctl.tflite_model import TfLiteModelError, new_interpreter, read_signatures, with_primary_signature_metadata


def predict_signatures(export_dir: Path, tags: Iterable[str]) -> list[str]:
    """The SavedModel's signatures a TFLite model can carry: the predict ones (classify/regress take serialized
    tf.Examples, whose parsing is not a TFLite builtin op)."""
    wanted = set(tags)
    proto = read_saved_model(export_dir)
    mg = next((m for m in proto.meta_graphs if set(m.meta_info_def.tags) == wanted), None)
    if mg is None:
        raise ExportError(f"{export_dir}: no meta graph tagged {','.join(sorted(wanted))} to convert to TFLite")
    keys = [k for k, s in mg.signature_def.items()
            if k != INIT_OP_SIGNATURE and (s.method_name or PREDICT_METHOD) == PREDICT_METHOD]
    return sorted(keys, key=lambda k: (k != DEFAULT_SIGNATURE, k))


def _convert(export_dir: Path, tags: list[str], keys: list[str]) -> bytes:
    """One conversion of ``keys``, TFLite builtins only. The SavedModel converter is built directly, as
    ``from_saved_model`` builds it, but without that method's Keras rule, which would drop a ``serve`` signature
    in favour of ``serving_default``: the TFLite keys stay the SavedModel's."""
    import tensorflow as tf
    from tensorflow.lite.python.lite import TFLiteSavedModelConverterV2

    converter = TFLiteSavedModelConverterV2(str(export_dir), set(tags), keys)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return converter.convert()


def write_tflite(export_dir: Path, tags: Iterable[str], warmup_logs: Iterable[Any] = ()
                 ) -> tuple[list[str], list[str]]:
    """Convert the SavedModel in ``export_dir`` into ``export_dir/model.tflite``: (its signature keys, warnings).

    Signatures the converter cannot take alone (e.g. a classify signature parsing tf.Examples) are left out with a
    warning naming why, so long as one converts; then the rest are converted together.
    """
    from tfsctl.export.graph import first_line

    tag_list = sorted(set(tags))
    keys = predict_signatures(export_dir, tag_list)
    if not keys:
        raise ExportError(f"{export_dir}: --to-tflite needs a predict signature (the SavedModel has only "
                          "classify/regress ones)")
    warnings: list[str] = []
    try:
        content = _convert(export_dir, tag_list, keys)
    except Exception as e:  # noqa: BLE001 - the converter raises many types (ConverterError, ValueError, ...)
        if len(keys) == 1:
            raise ExportError(f"--to-tflite: the TFLite converter failed: {first_line(e)}") from None
        kept, reasons = [], {}
        for key in keys:
            try:
                _convert(export_dir, tag_list, [key])
                kept.append(key)
            except Exception as e2:  # noqa: BLE001
                reasons[key] = first_line(e2)
        if not kept:
            raise ExportError("--to-tflite: the TFLite converter failed for every signature: " + "; ".join(
                f"{k}: {r}" for k, r in reasons.items())) from None
        warnings = [f"--to-tflite: signature {k!r} left out of model.tflite: {r}" for k, r in reasons.items()]
        try:
            content = _convert(export_dir, tag_list, kept)
        except Exception as e3:  # noqa: BLE001
            raise ExportError(f"--to-tflite: the TFLite converter failed: {first_line(e3)}") from None
    try:
        described = with_primary_signature_metadata(content, new_interpreter(content))
        if described is not None:
            content = described
        signatures = read_signatures(content, new_interpreter(content), signature_runners=described is None)
    except TfLiteModelError as e:
        raise ExportError(f"--to-tflite: the converted model cannot be served by LiteRT: {e}") from None
    if described is None:
        warnings.append(f"--to-tflite: model.tflite has {len(signatures)} signatures ({', '.join(sorted(signatures))})"
                        ", served by name with --prefer_tflite_model --tflite_signature_runners; without that flag "
                        "(and by TF Serving) only a serving_default generated over the first one's tensors, keyed "
                        "by tensor name (e.g. serving_default_x), is served")
    for index, log in enumerate(warmup_logs):
        kind = log.WhichOneof("log_type")
        request = getattr(log, kind).request if kind else None
        name = (request.model_spec.signature_name if request is not None and kind != "multi_inference_log"
                else "") or DEFAULT_SIGNATURE
        if kind != "predict_log" or name not in signatures:
            raise ExportError(f"--to-tflite: warmup record {index} ({kind}, signature {name!r}) has no TFLite "
                              f"signature to run on (model.tflite has: {', '.join(sorted(signatures))}); write "
                              "predict warmup records for those signatures, or --no-warmup")
    (export_dir / TFLITE_FILE).write_bytes(content)
    return sorted(signatures), warnings


__all__ = ["predict_signatures", "write_tflite"]
