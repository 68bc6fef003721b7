"""TF1 graph sources -> SavedModel with ``tf.compat.v1.saved_model.Builder``, as TF1 projects exported them.

* Saver checkpoint: ``import_meta_graph`` + ``Saver.restore`` in a ``tf.compat.v1.Session``, then
  ``add_meta_graph_and_variables`` with the signatures asked for (or the ones stored in the ``.meta`` file).
* Frozen GraphDef: imported with ``import_graph_def(name="")`` so tensor names stay as written (``ImageTensor:0``);
  without ``--input``/``--output`` its placeholders become the inputs and the ops nothing consumes the outputs.
* Existing SavedModel: the files are copied and the chosen meta graph's signatures replaced or added in
  ``saved_model.pb`` (a TF1 signature is tensor names in the graph, so no re-tracing; TF Serving's session loader,
  and tfsctl's, read signatures from there).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

from tfsctl.errors import ExportError
from tfsctl.export.signatures import SignatureSpec, build_signature_defs
from tfsctl.savedmodel import DEFAULT_SIGNATURE, INIT_OP_SIGNATURE, WARMUP_DIR
from tfsctl.tf_messages import tf_error_line


def first_line(exc: BaseException) -> str:
    """An exception's informative line (see :func:`tfsctl.tf_messages.tf_error_line`)."""
    return tf_error_line(exc)


def export_checkpoint_graph(prefix: Path, export_dir: Path, specs: list[SignatureSpec],
                            tags: list[str]) -> list[str]:
    """A TF1 Saver checkpoint (``prefix.meta`` + variables) -> SavedModel; returns the signature names."""
    import tensorflow as tf

    where = f"checkpoint {prefix}"
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as sess:
        try:
            saver = tf.compat.v1.train.import_meta_graph(f"{prefix}.meta", clear_devices=True)
        except Exception as exc:  # noqa: BLE001 - a bad .meta file raises many types
            raise ExportError(f"cannot import graph {prefix}.meta: {first_line(exc)}") from None
        if saver is None:
            raise ExportError(f"{prefix}.meta holds no variables to restore (no Saver); export it as a frozen graph")
        _check_variables(graph, prefix)
        try:
            saver.restore(sess, str(prefix))
        except (tf.errors.OpError, ValueError) as exc:
            raise ExportError(f"cannot restore {where}: {_restore_reason(exc)}") from None
        if not specs:
            specs = _stored_signatures(prefix)
        if not specs:
            raise ExportError(f"{where}: no signature given and none stored in {prefix.name}.meta: pass --input "
                              "KEY=TENSOR and --output KEY=TENSOR, or --signatures FILE (tfsctl inspect "
                              f"{prefix}.meta lists candidate tensors)")
        defs = build_signature_defs(graph, specs, where)
        _build(sess, export_dir, defs, tags)
    return sorted(defs)


def _check_variables(graph: Any, prefix: Path) -> None:
    """Name the graph's variables the checkpoint lacks, or holds with another shape, before restoring."""
    import tensorflow as tf

    try:
        stored = dict(tf.train.list_variables(str(prefix)))
    except (tf.errors.OpError, ValueError) as exc:
        raise ExportError(f"cannot read checkpoint {prefix}: {first_line(exc)}") from None
    missing, reshaped = [], []
    for var in graph.get_collection(tf.compat.v1.GraphKeys.GLOBAL_VARIABLES):
        name = var.op.name
        if name not in stored:
            missing.append(name)
        elif var.shape.is_fully_defined() and list(var.shape) != list(stored[name]):
            reshaped.append(f"{name} graph {list(var.shape)} vs checkpoint {list(stored[name])}")
    problems = []
    if missing:
        problems.append(f"{len(missing)} variable(s) of the graph not found in checkpoint: "
                        + ", ".join(missing[:8]) + (f", ... ({len(missing) - 8} more)" if len(missing) > 8 else ""))
    if reshaped:
        problems.append(f"{len(reshaped)} variable(s) with another shape: " + ", ".join(reshaped[:8]))
    if problems:
        raise ExportError(f"checkpoint {prefix} does not match {prefix.name}.meta: " + "; ".join(problems))


def _restore_reason(exc: BaseException) -> str:
    """The informative line of a Saver.restore error (TF puts a generic paragraph first)."""
    lines = [line.strip() for line in str(getattr(exc, "message", exc)).splitlines() if line.strip()]
    for line in lines:
        if "not found in checkpoint" in line or "shape" in line.lower():
            return line
    return lines[0] if lines else type(exc).__name__


def _stored_signatures(prefix: Path) -> list[SignatureSpec]:
    from tensorflow.core.protobuf import meta_graph_pb2

    mg = meta_graph_pb2.MetaGraphDef()
    mg.ParseFromString(Path(f"{prefix}.meta").read_bytes())
    return [SignatureSpec(name, sig.method_name, {k: v.name for k, v in sig.inputs.items()},
                          {k: v.name for k, v in sig.outputs.items()})
            for name, sig in mg.signature_def.items() if name != INIT_OP_SIGNATURE]


def read_graph_def(path: Path) -> Any:
    """A GraphDef from a binary ``.pb`` or text ``.pbtxt`` file; ExportError when it is neither."""
    from google.protobuf import text_format
    from google.protobuf.message import DecodeError
    from tensorflow.core.framework import graph_pb2

    graph_def = graph_pb2.GraphDef()
    data = path.read_bytes()
    try:
        if path.suffix == ".pbtxt":
            text_format.Parse(data.decode("utf-8"), graph_def)
        else:
            graph_def.ParseFromString(data)
    except (DecodeError, text_format.ParseError, UnicodeDecodeError) as exc:
        raise ExportError(f"{path} is not a GraphDef: {first_line(exc)}") from None
    if not graph_def.node:
        raise ExportError(f"{path} is not a GraphDef (no nodes)")
    return graph_def


def export_frozen_graph(path: Path, export_dir: Path, specs: list[SignatureSpec], tags: list[str]) -> list[str]:
    """A frozen GraphDef -> SavedModel without variables; returns the signature names."""
    import tensorflow as tf

    from tfsctl.inspection import graph_candidates

    graph_def = read_graph_def(path)
    if not specs:
        inputs, outputs = graph_candidates(graph_def)
        if not inputs or not outputs:
            raise ExportError(f"{path}: cannot guess the signature (placeholders: {len(inputs)}, unconsumed ops: "
                              f"{len(outputs)}); pass --input KEY=TENSOR and --output KEY=TENSOR")
        specs = [SignatureSpec(DEFAULT_SIGNATURE, inputs={_key(t.name): t.name for t in inputs},
                               outputs={_key(t.name): t.name for t in outputs})]
    graph = tf.Graph()
    with graph.as_default():
        try:
            tf.compat.v1.import_graph_def(graph_def, name="")
        except (ValueError, tf.errors.OpError) as exc:
            raise ExportError(f"cannot import {path}: {first_line(exc)}") from None
        defs = build_signature_defs(graph, specs, str(path))
        with tf.compat.v1.Session(graph=graph) as sess:
            _build(sess, export_dir, defs, tags)
    return sorted(defs)


def _key(tensor: str) -> str:
    op, _, index = tensor.rpartition(":")
    key = re.sub(r"[^A-Za-z0-9_.\-]", "_", op)
    return key if index == "0" else f"{key}_{index}"


def _build(sess: Any, export_dir: Path, defs: dict[str, Any], tags: list[str]) -> None:
    import tensorflow as tf

    # The staging dir exists (empty); Builder accepts an empty directory.
    builder = tf.compat.v1.saved_model.Builder(str(export_dir))
    init = None
    if sess.graph.get_collection(tf.compat.v1.GraphKeys.TABLE_INITIALIZERS):
        with sess.graph.as_default():
            init = tf.compat.v1.tables_initializer(name="tfsctl_legacy_init_op")
    builder.add_meta_graph_and_variables(sess, tags, signature_def_map=defs, strip_default_attrs=True,
                                         main_op=init)
    builder.save()


def reexport_saved_model(source: Path, export_dir: Path, specs: list[SignatureSpec], tags: list[str],
                         replace: bool) -> list[str]:
    """Copy a SavedModel into ``export_dir`` and add (or, with ``replace``, set) the given signatures."""
    from tensorflow.core.protobuf import saved_model_pb2

    from tfsctl.savedmodel import find_meta_graph, read_saved_model

    try:
        proto = read_saved_model(source)
    except Exception as exc:  # noqa: BLE001 - unreadable or unparsable proto
        raise ExportError(f"cannot read SavedModel {source}: {first_line(exc)}") from None
    mg = find_meta_graph(proto, set(tags))
    if mg is None:
        have = "; ".join(",".join(m.meta_info_def.tags) for m in proto.meta_graphs)
        raise ExportError(f"SavedModel {source} has no meta graph tagged {','.join(tags)} (tag-sets: {have}); "
                          "--tag-set chooses one")
    for entry in source.iterdir():
        if entry.name in ("saved_model.pb", "saved_model.pbtxt") or entry.name == WARMUP_DIR:
            continue  # the proto is rewritten below; warmup records are written afresh
        if entry.is_dir():
            shutil.copytree(entry, export_dir / entry.name, symlinks=False)
        else:
            shutil.copy2(entry, export_dir / entry.name)
    if specs:
        import tensorflow as tf

        graph = tf.Graph()
        with graph.as_default():
            try:
                tf.compat.v1.train.import_meta_graph(mg, clear_devices=True)
            except Exception as exc:  # noqa: BLE001
                raise ExportError(f"cannot import the graph of {source}: {first_line(exc)}") from None
            defs = build_signature_defs(graph, specs, f"SavedModel {source}")
        if replace:
            for name in [n for n in mg.signature_def if n != INIT_OP_SIGNATURE]:
                del mg.signature_def[name]
        for name, sig in defs.items():
            mg.signature_def[name].CopyFrom(sig)
    out = saved_model_pb2.SavedModel()
    out.CopyFrom(proto)
    (export_dir / "saved_model.pb").write_bytes(out.SerializeToString())
    return sorted(n for n in mg.signature_def if n != INIT_OP_SIGNATURE)


