"""Reads a TensorFlow Lite model's signatures as TF Serving's TfLiteSession does, for the server and ``inspect``.

TF Serving (``tflite_session.cc``) gives a ``.tflite`` model SignatureDefs in this order of preference:

1. SignatureDefs stored in the model's ``signature_defs_metadata`` (a flexbuffer map of key -> serialized
   ``SignatureDef``, written by TFLite's ``signature_def_util``); their tensor names point at the primary
   subgraph's tensors, also under the legacy name without ``:0``.
2. Otherwise one generated ``serving_default`` (predict) over the primary subgraph's inputs and outputs, keyed by
   tensor name without its ``:N`` suffix (TensorInfoMap is a std::map: of names that then clash, the last by name
   wins), with the tensors' allocated shapes.

TF Serving 2.21 never uses LiteRT's signature runners: a model whose flatbuffer has its own signatures (what
``TFLiteConverter.from_saved_model`` writes today) but no ``signature_defs_metadata`` gets rule 2, a generated
``serving_default`` over the primary subgraph (the converter's first, not necessarily ``serving_default``'s), keyed
``serving_default_x`` rather than the SavedModel's ``x``; its other signatures cannot be reached. That is tfsctl's
default too. ``signature_runners=True``
(the tfsctl-only ``--tflite_signature_runners``) adds a step between 1 and 2: such a model gets one predict
SignatureDef per LiteRT signature, keyed and named as the SavedModel's were, with dynamic dimensions as -1, run
through its signature runner. :func:`with_primary_signature_metadata` (``export --to-tflite``) stores a
one-signature model's LiteRT signature as ``signature_defs_metadata``, so rule 1 serves it by its own keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2

from tfsctl.model_layout import DEFAULT_SIGNATURE, PREDICT_METHOD, TFLITE_FILE, tflite_file
from tfsctl.tensors import DTYPE_BY_NP

SIGNATURE_DEFS_METADATA = "signature_defs_metadata"  # TFLite's signature_def_util key
MAX_TFLITE_BYTES = 2**31 - 1  # a flatbuffer cannot be larger (32-bit offsets)

# Where a signature's SignatureDefs came from (see the module docstring).
FROM_METADATA = "signature_defs_metadata"
FROM_SIGNATURE_RUNNER = "LiteRT signatures"
GENERATED = "generated serving_default"


class TfLiteModelError(ValueError):
    """The file is not a TensorFlow Lite model this runtime can run, or its signatures point nowhere."""


@dataclass(frozen=True)
class LiteSignature:
    """One signature of a ``.tflite`` model: its SignatureDef and how to run it on an interpreter.

    ``runner`` is the LiteRT signature key to run it with (``source == FROM_SIGNATURE_RUNNER``), else None and
    ``inputs``/``outputs`` map each signature key to a tensor index of the primary subgraph.
    """

    key: str
    signature_def: meta_graph_pb2.SignatureDef
    source: str
    runner: str | None
    inputs: dict[str, Any]
    outputs: dict[str, Any]


def new_interpreter(content: bytes, num_threads: int = 1) -> Any:
    """A LiteRT interpreter over ``content`` with its tensors allocated (TF's ``tf.lite`` when LiteRT is absent);
    TfLiteModelError naming the reason when the model cannot run here (e.g. an unresolved custom op)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # pragma: no cover - ai-edge-litert is a dependency; tf.lite while TensorFlow has it
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter  # noqa: N806
    try:
        interpreter = Interpreter(model_content=content, num_threads=num_threads)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        raise TfLiteModelError(" ".join(str(e).split())[:500]) from None
    return interpreter


def read_model(path: str | Path) -> bytes:
    """The bytes of a ``.tflite`` file, or of ``model.tflite`` in a version directory; TfLiteModelError (the caller
    names the file) if missing or not a TFLite flatbuffer (file identifier ``TFL3``)."""
    p = Path(path)
    if p.is_dir():
        p = tflite_file(p)
    if not p.is_file():
        raise TfLiteModelError(f"no such file (a TFLite version holds {TFLITE_FILE})")
    if p.stat().st_size > MAX_TFLITE_BYTES:
        raise TfLiteModelError("larger than a TFLite flatbuffer can be")
    content = p.read_bytes()
    if len(content) < 8 or content[4:8] != b"TFL3":
        raise TfLiteModelError("not a TensorFlow Lite model (no TFL3 identifier)")
    return content


def dtype_enum(dtype: Any) -> int:
    """The DataType enum of a tensor's numpy type as LiteRT reports it (bytes = DT_STRING)."""
    dt = np.dtype(dtype)
    if dt.kind in "OSU":
        return types_pb2.DT_STRING
    enum = DTYPE_BY_NP.get(dt)
    if enum is None:
        raise TfLiteModelError(f"tensor type {dt} has no TensorFlow DataType")
    return enum


def _tensor_info(detail: dict, shape: Any) -> meta_graph_pb2.TensorInfo:
    info = meta_graph_pb2.TensorInfo(name=detail["name"], dtype=dtype_enum(detail["dtype"]))
    for size in shape:
        info.tensor_shape.dim.add(size=int(size))
    return info


def legacy_name(tensor_name: str) -> str:
    """``x:0`` -> ``x``: early converters dropped TF's output index from tensor names (TfToTfLiteLegacyTensorName)."""
    return tensor_name.split(":", 1)[0]


def _metadata_signature_defs(content: bytes) -> dict[str, meta_graph_pb2.SignatureDef]:
    """The SignatureDefs in the model's ``signature_defs_metadata``, or {} when it has none."""
    import flatbuffers.flexbuffers as flexbuffers
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:  # pragma: no cover
        from tensorflow.lite.python import schema_py_generated as schema

    try:
        model = schema.Model.GetRootAsModel(content, 0)
        entries = [model.Metadata(i) for i in range(model.MetadataLength())]
        entry = next((m for m in entries if m.Name() == SIGNATURE_DEFS_METADATA.encode()), None)
        if entry is None:
            return {}
        data = model.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
        mapping = flexbuffers.GetRoot(data).AsMap
        out = {}
        for key, value in zip(mapping.Keys, mapping.Values, strict=True):
            raw = value.AsStringBytes if value.IsString else bytes(value.AsBlob)
            sig = meta_graph_pb2.SignatureDef()
            sig.ParseFromString(raw)
            out[key.AsKey] = sig
        return out
    except Exception as e:  # noqa: BLE001 - any malformed flatbuffer/flexbuffer/proto
        raise TfLiteModelError(f"Invalid SignatureDefs found in TfLite model: {type(e).__name__}: {e}") from None


def _fix_name(index_by_name: dict[str, int], name: str, what: str) -> int:
    """FixTfLiteTensorName: the tensor ``name`` (or its legacy name) names, by index."""
    for candidate in (name, legacy_name(name)):
        if candidate in index_by_name:
            return index_by_name[candidate]
    raise TfLiteModelError(f"{what} references an unknown tensor: Unknown tensor '{name}'.")


def read_signatures(content: bytes, interpreter: Any, signature_runners: bool = False) -> dict[str, LiteSignature]:
    """The model's signatures (module docstring), keyed by signature name; ``signature_runners``: LiteRT signatures
    win over the generated ``serving_default`` (``--tflite_signature_runners``)."""
    inputs = {d["name"]: d for d in interpreter.get_input_details()}
    outputs = {d["name"]: d for d in interpreter.get_output_details()}
    in_index = {name: d["index"] for name, d in inputs.items()}
    out_index = {name: d["index"] for name, d in outputs.items()}
    result: dict[str, LiteSignature] = {}
    stored = _metadata_signature_defs(content)
    if stored:
        for key, sig in stored.items():
            ins = {k: _fix_name(in_index, info.name, f"Signature input {k}") for k, info in sig.inputs.items()}
            outs = {k: _fix_name(out_index, info.name, f"Signature output {k}") for k, info in sig.outputs.items()}
            for info in sig.inputs.values():  # the name the tensor has, as FixTfLiteTensorName rewrites it
                info.name = info.name if info.name in in_index else legacy_name(info.name)
            for info in sig.outputs.values():
                info.name = info.name if info.name in out_index else legacy_name(info.name)
            result[key] = LiteSignature(key, sig, FROM_METADATA, None, ins, outs)
        return result
    runners = interpreter.get_signature_list() if signature_runners else {}
    if runners:
        for key in runners:
            runner = interpreter.get_signature_runner(key)
            sig = meta_graph_pb2.SignatureDef(method_name=PREDICT_METHOD)
            for name, d in runner.get_input_details().items():
                sig.inputs[name].CopyFrom(_tensor_info(d, d["shape_signature"]))
            for name, d in runner.get_output_details().items():
                sig.outputs[name].CopyFrom(_tensor_info(d, d["shape_signature"]))
            result[key] = LiteSignature(key, sig, FROM_SIGNATURE_RUNNER, key, {k: k for k in sig.inputs},
                                        {k: k for k in sig.outputs})
        return result
    sig = meta_graph_pb2.SignatureDef(method_name=PREDICT_METHOD)
    ins, outs = {}, {}
    for name, d in sorted(inputs.items()):  # TensorInfoMap is a std::map: on a legacy-name clash the last name wins
        sig.inputs[legacy_name(name)].CopyFrom(_tensor_info(d, d["shape"]))
        ins[legacy_name(name)] = d["index"]
    for name, d in sorted(outputs.items()):
        sig.outputs[legacy_name(name)].CopyFrom(_tensor_info(d, d["shape"]))
        outs[legacy_name(name)] = d["index"]
    result[DEFAULT_SIGNATURE] = LiteSignature(DEFAULT_SIGNATURE, sig, GENERATED, None, ins, outs)
    return result


def litert_signatures(interpreter: Any) -> list[str]:
    """The names of the model's own (LiteRT) signatures, which only ``--tflite_signature_runners`` serves."""
    return sorted(interpreter.get_signature_list())


def with_primary_signature_metadata(content: bytes, interpreter: Any) -> bytes | None:
    """``content`` plus a ``signature_defs_metadata`` holding its one LiteRT signature as a SignatureDef over the
    primary subgraph's tensors (keys as the SavedModel's, dynamic dimensions -1: the ``--tflite_signature_runners``
    view), so that TF Serving's rule 1 serves it as the SavedModel was; None when the model already has such
    metadata or has not exactly one LiteRT signature on the primary subgraph (TF Serving runs only that subgraph,
    so a second signature cannot be described). TfLiteModelError when the flatbuffer cannot be rewritten."""
    import flatbuffers.flexbuffers as flexbuffers
    try:
        from ai_edge_litert import schema_py_generated as schema
        from ai_edge_litert.tools import flatbuffer_utils
    except ImportError:  # pragma: no cover
        from tensorflow.lite.python import schema_py_generated as schema
        from tensorflow.lite.tools import flatbuffer_utils

    if _metadata_signature_defs(content):
        return None
    signatures = read_signatures(content, interpreter, signature_runners=True)
    if len(signatures) != 1:
        return None
    (lite,) = signatures.values()
    runner = interpreter.get_signature_runner(lite.runner)
    primary = {d["index"] for d in interpreter.get_input_details()}
    if {d["index"] for d in runner.get_input_details().values()} != primary:
        return None  # the signature is not the primary subgraph's
    builder = flexbuffers.Builder()
    with builder.Map():
        builder.Key(lite.key)
        builder._WriteBlob(lite.signature_def.SerializeToString(), append_zero=True,  # noqa: SLF001 - the layout
                           type_=flexbuffers.Type.STRING)  # signature_def_util writes: a string holding the proto
    try:
        model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(bytes(builder.Finish()), dtype=np.uint8)
        model.buffers.append(buffer)
        entry = schema.MetadataT()
        entry.name = SIGNATURE_DEFS_METADATA
        entry.buffer = len(model.buffers) - 1
        model.metadata = (model.metadata or []) + [entry]
        return bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    except (ValueError, IndexError, AttributeError, TypeError) as e:
        raise TfLiteModelError(f"cannot write signature_defs_metadata: {type(e).__name__}: {e}") from None


__all__ = [
    "FROM_METADATA", "FROM_SIGNATURE_RUNNER", "GENERATED", "MAX_TFLITE_BYTES", "SIGNATURE_DEFS_METADATA",
    "TFLITE_FILE", "LiteSignature", "TfLiteModelError", "dtype_enum", "legacy_name", "litert_signatures",
    "new_interpreter", "read_model", "read_signatures", "tflite_file", "with_primary_signature_metadata",
]
