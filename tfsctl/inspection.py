"""What a model on disk holds, read from its files without running it: ``tfsctl inspect``.

* SavedModel: the equivalent of ``saved_model_cli show --all`` as data: tag-sets, signatures, method names, inputs
  and outputs with dtype and shape (``-1`` for unknown dims, ``None`` / "unknown_rank" for unknown rank), plus the
  variables (name, dtype, shape, bytes) and asset files with their sizes.
* Model base path (numbered version directories, as TF Serving's ``--model_base_path``, by the one
  version-directory rule ``savedmodel.parse_version_dir``): the versions, which are valid, the latest valid one.
* Checkpoint (TF1 or TF2: a prefix, a ``.index`` file, or a directory with a ``checkpoint`` file): its variables.
* Frozen GraphDef (``.pb``/``.pbtxt``) or meta graph (``.meta``): placeholders as candidate inputs, ops nothing
  consumes as candidate outputs, with dtype and shape: the tensor names ``tfsctl export --input/--output`` takes.
* TensorFlow Lite model (a ``.tflite`` file, or a version directory's ``model.tflite``, alone or beside the
  SavedModel): its signatures as the server's ``--prefer_tflite_model`` serves them by default, as TF Serving
  (:mod:`tfsctl.tflite_model`), where they come from (``signature_defs_metadata`` or generated), and the LiteRT
  signatures that ``--tflite_signature_runners`` would serve by name instead of a generated ``serving_default``.

The module is named ``inspection`` so it does not shadow the standard library's ``inspect``. ``cli.py`` renders
these dataclasses as tables or JSON.
"""

from __future__ import annotations

import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tfsctl.errors import InspectError
from tfsctl.savedmodel import is_saved_model_dir, parse_version_dir, warmup_path
from tfsctl.tflite_model import tflite_file
from tfsctl.tfrecord import LOG_SUFFIX, PARTIAL_SUFFIX, RecordError, log_files, read_log


@dataclass
class TensorInfo:
    """One signature input or output."""

    key: str
    dtype: str
    shape: list[int] | None
    name: str = ""
    encoding: str = "dense"

    @property
    def shape_str(self) -> str:
        """``saved_model_cli`` style: ``(-1, -1, 3)``, ``()`` for a scalar, ``unknown_rank``."""
        if self.shape is None:
            return "unknown_rank"
        if len(self.shape) == 1:
            return f"({self.shape[0]},)"
        return "(" + ", ".join(str(d) for d in self.shape) + ")"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "shape_str": self.shape_str}


@dataclass
class SignatureInfo:
    name: str
    method_name: str
    inputs: list[TensorInfo] = field(default_factory=list)
    outputs: list[TensorInfo] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "method_name": self.method_name,
                "inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs]}


@dataclass
class MetaGraphInfo:
    tags: list[str]
    signatures: list[SignatureInfo] = field(default_factory=list)
    tensorflow_version: str = ""

    def signature(self, name: str) -> SignatureInfo | None:
        return next((s for s in self.signatures if s.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        return {"tags": list(self.tags), "tensorflow_version": self.tensorflow_version,
                "signatures": [s.to_dict() for s in self.signatures]}


@dataclass
class VariableInfo:
    """One checkpoint variable: name, dtype, shape and size in bytes (dtype size x elements)."""

    name: str
    dtype: str
    shape: list[int]
    size: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FileInfo:
    """One asset file (path relative to the SavedModel) and its size."""

    path: str
    size: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TfLiteInfo:
    """One ``.tflite`` model: its signatures as SignatureDefs, as a server preferring it serves them."""

    path: str
    size: int = 0
    signatures: list[SignatureInfo] = field(default_factory=list)
    signature_source: str = ""  # tflite_model.FROM_METADATA | GENERATED (the server's default view)
    # The model's LiteRT signatures, when the server serves them by name only with --tflite_signature_runners
    # (the default view is the generated serving_default); [] otherwise.
    signature_runners: list[str] = field(default_factory=list)
    version: int | None = None
    warmup_records: int | None = None
    kind: str = "tflite"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.path, "version": self.version, "size": self.size,
                "signature_source": self.signature_source,
                "signature_runners": self.signature_runners, "warmup_records": self.warmup_records,
                "signatures": [s.to_dict() for s in self.signatures]}


@dataclass
class SavedModelInfo:
    """One SavedModel directory (``tflite``: the version's model.tflite, when it has one)."""

    path: str
    meta_graphs: list[MetaGraphInfo] = field(default_factory=list)
    version: int | None = None
    warmup_records: int | None = None
    kind: str = "saved_model"
    variables: list[VariableInfo] = field(default_factory=list)
    variables_bytes: int = 0
    assets: list[FileInfo] = field(default_factory=list)
    tflite: TfLiteInfo | None = None

    @property
    def tag_sets(self) -> list[list[str]]:
        return [list(mg.tags) for mg in self.meta_graphs]

    def meta_graph(self, tags: set[str] | frozenset[str] = frozenset({"serve"})) -> MetaGraphInfo | None:
        return next((mg for mg in self.meta_graphs if set(mg.tags) == set(tags)), None)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.path, "version": self.version, "tag_sets": self.tag_sets,
                "warmup_records": self.warmup_records, "meta_graphs": [mg.to_dict() for mg in self.meta_graphs],
                "variables": [v.to_dict() for v in self.variables], "variables_bytes": self.variables_bytes,
                "assets": [a.to_dict() for a in self.assets],
                "tflite": self.tflite.to_dict() if self.tflite is not None else None}


@dataclass
class VersionInfo:
    version: int
    path: str
    valid: bool
    error: str = ""
    signatures: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BasePathInfo:
    """A model base path: numbered version directories, and the latest valid version described in full."""

    path: str
    versions: list[VersionInfo] = field(default_factory=list)
    latest: SavedModelInfo | TfLiteInfo | None = None  # TfLiteInfo: a version holding only model.tflite
    kind: str = "base_path"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.path, "versions": [v.to_dict() for v in self.versions],
                "latest": self.latest.to_dict() if self.latest else None}


@dataclass
class CheckpointInfo:
    """A TF1 or TF2 checkpoint: its variables (TF2 bookkeeping such as ``_CHECKPOINTABLE_OBJECT_GRAPH`` left out)."""

    path: str
    prefix: str
    variables: list[VariableInfo] = field(default_factory=list)
    has_meta_graph: bool = False
    kind: str = "checkpoint"

    @property
    def total_bytes(self) -> int:
        return sum(v.size for v in self.variables)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.path, "prefix": self.prefix, "has_meta_graph": self.has_meta_graph,
                "total_bytes": self.total_bytes, "variables": [v.to_dict() for v in self.variables]}


@dataclass
class GraphInfo:
    """A frozen GraphDef or a meta graph: candidate inputs (placeholders) and outputs (ops nothing consumes)."""

    path: str
    inputs: list[TensorInfo] = field(default_factory=list)
    outputs: list[TensorInfo] = field(default_factory=list)
    num_nodes: int = 0
    signatures: list[SignatureInfo] = field(default_factory=list)
    variables: list[str] = field(default_factory=list)
    kind: str = "graph"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.path, "num_nodes": self.num_nodes,
                "inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs],
                "signatures": [s.to_dict() for s in self.signatures], "variables": list(self.variables)}


Info = SavedModelInfo | BasePathInfo | CheckpointInfo | GraphInfo | TfLiteInfo


@dataclass
class RequestLogInfo:
    """A request log (a model config's ``logging_config``): what it holds, per model, signature and API."""

    path: str
    files: int
    records: int
    bytes: int
    first: str  # time of the oldest record (UTC), "" when there is none
    last: str
    models: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "request_log", **asdict(self)}


def inspect_request_log(path: str | Path) -> RequestLogInfo:
    """Summarise a request log: per model its versions, signatures and APIs (log types) with counts, and the
    sizes of its requests; the time span and size of the whole log. Raises InspectError."""
    import time

    from tensorflow_serving.apis import prediction_log_pb2

    files = log_files(path)
    models: dict[str, dict[str, Any]] = {}
    records = total = 0
    stamps: list[int] = []
    try:
        for data in read_log(path):
            entry = prediction_log_pb2.PredictionLog.FromString(data)
            kind = entry.WhichOneof("log_type") or "none"
            spec = entry.log_metadata.model_spec
            model = models.setdefault(spec.name, {"records": 0, "versions": {}, "signatures": {}, "apis": {},
                                                  "request_bytes": {"min": None, "max": 0, "total": 0}})
            model["records"] += 1
            for key, value in (("versions", str(spec.version.value) if spec.HasField("version") else "-"),
                               ("signatures", spec.signature_name or "-"), ("apis", kind)):
                model[key][value] = model[key].get(value, 0) + 1
            size = getattr(entry, kind).request.ByteSize() if kind != "none" else 0
            sizes = model["request_bytes"]
            sizes["min"] = size if sizes["min"] is None else min(sizes["min"], size)
            sizes["max"], sizes["total"] = max(sizes["max"], size), sizes["total"] + size
            if entry.log_metadata.timestamp_secs:
                stamps.append(entry.log_metadata.timestamp_secs)
            records += 1
            total += len(data)
    except (OSError, RecordError) as e:
        raise InspectError(str(e)) from None
    except Exception as e:  # noqa: BLE001 - a record that is not a PredictionLog
        raise InspectError(f"{path}: record {records} is not a PredictionLog: {e}") from None

    def iso(t: int) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))

    return RequestLogInfo(str(path), len(files), records, total, iso(min(stamps)) if stamps else "",
                          iso(max(stamps)) if stamps else "", models)


def inspect_path(path: str | Path, *, tag_set: set[str] | None = None, signature: str | None = None) -> Info:
    """Describe a SavedModel, a model base path, a checkpoint, or a frozen/meta graph; raises InspectError.

    ``tag_set`` keeps only the meta graph with exactly those tags; ``signature`` only that signature (both an
    InspectError when nothing matches, naming what exists).
    """
    from tfsctl.savedmodel import SAVED_MODEL_FILENAMES, is_saved_model_dir

    p = Path(path)
    info: Info
    if p.is_file() and p.name in SAVED_MODEL_FILENAMES:
        info = inspect_saved_model(p.parent)
    elif p.is_dir() and is_saved_model_dir(p):
        info = inspect_saved_model(p)
        if tflite_file(p).is_file():
            info.tflite = inspect_tflite(p)
    elif p.is_file() and p.suffix == ".tflite" or p.is_dir() and tflite_file(p).is_file():
        info = inspect_tflite(p)
    elif (p.is_file() and p.name.endswith((LOG_SUFFIX, LOG_SUFFIX + PARTIAL_SUFFIX))) or \
            (not p.exists() and log_files(p)) or (p.is_dir() and not _version_dirs(p) and log_files(p)):
        info = inspect_request_log(p)
    elif p.is_file() and p.suffix in (".pb", ".pbtxt"):
        info = inspect_graph(p)
    elif p.is_file() and p.suffix == ".meta":
        info = inspect_meta_graph(p)
    elif _checkpoint_prefix(p) is not None:
        info = inspect_checkpoint(p)
    elif not p.exists():
        raise InspectError(f"{p} does not exist")
    elif p.is_file():
        raise InspectError(f"{p} is a file, not a SavedModel, model base path, checkpoint or graph (.pb, .pbtxt, "
                           ".meta)")
    else:
        version_dirs = _version_dirs(p)
        if not version_dirs:
            raise InspectError(f"{p} is not a SavedModel (no saved_model.pb or saved_model.pbtxt), a model base "
                               "path (no version directories) nor a checkpoint")
        info = inspect_base_path(p, version_dirs)
    return filter_info(info, tag_set, signature)


def _version_dirs(base: Path) -> list[tuple[int, Path]]:
    found = [(parse_version_dir(d.name), d) for d in base.iterdir() if d.is_dir()]
    return sorted(((v, d) for v, d in found if v is not None), key=lambda vd: vd[0])


def filter_info(info: Info, tag_set: set[str] | None, signature: str | None) -> Info:
    """Keep the meta graph tagged ``tag_set`` and the signature ``signature`` (InspectError if absent)."""
    target = info.latest if isinstance(info, BasePathInfo) else info
    if isinstance(target, SavedModelInfo) and target.tflite is not None and signature is not None:
        target.tflite.signatures = [s for s in target.tflite.signatures if s.name == signature]
    if isinstance(target, GraphInfo | TfLiteInfo) and signature is not None:
        kept = [s for s in target.signatures if s.name == signature]
        if not kept:
            raise InspectError(f"{target.path}: no signature {signature!r} (signatures: "
                               f"{', '.join(s.name for s in target.signatures) or 'none'})")
        target.signatures = kept
    if not isinstance(target, SavedModelInfo):
        if tag_set is not None and not isinstance(target, GraphInfo | CheckpointInfo):
            raise InspectError(f"{info.path}: --tag-set applies to SavedModels")
        return info
    if tag_set is not None:
        kept_mg = [mg for mg in target.meta_graphs if set(mg.tags) == set(tag_set)]
        if not kept_mg:
            raise InspectError(f"{target.path}: no meta graph tagged {','.join(sorted(tag_set))} (tag-sets: "
                               + "; ".join(",".join(t) for t in target.tag_sets) + ")")
        target.meta_graphs = kept_mg
    if signature is not None:
        found = False
        for mg in target.meta_graphs:
            mg.signatures = [s for s in mg.signatures if s.name == signature]
            found = found or bool(mg.signatures)
        if not found:
            raise InspectError(f"{target.path}: no signature {signature!r}")
    return info


def inspect_base_path(base: Path, version_dirs: list[tuple[int, Path]] | None = None) -> BasePathInfo:
    """List the versions under ``base`` (TF Serving's version-directory rule); describe the highest valid one."""
    if version_dirs is None:
        version_dirs = _version_dirs(base)
    info = BasePathInfo(path=str(base))
    for version, d in version_dirs:
        try:
            if not is_saved_model_dir(d) and tflite_file(d).is_file():  # served with --prefer_tflite_model
                lite = inspect_tflite(d)
                info.versions.append(VersionInfo(version=version, path=str(d), valid=True,
                                                 signatures=[s.name for s in lite.signatures]))
                info.latest = lite
                continue
            sm = inspect_saved_model(d)
        except InspectError as exc:
            info.versions.append(VersionInfo(version=version, path=str(d), valid=False, error=str(exc)))
            continue
        if tflite_file(d).is_file():
            try:
                sm.tflite = inspect_tflite(d)
            except InspectError:
                pass  # the SavedModel is valid; `inspect VERSION` names what is wrong with model.tflite
        serve = sm.meta_graph() or (sm.meta_graphs[0] if sm.meta_graphs else None)
        info.versions.append(VersionInfo(version=version, path=str(d), valid=True,
                                         signatures=[s.name for s in serve.signatures
                                                     if not s.name.startswith("__")] if serve else []))
        info.latest = sm  # ascending order: the last valid one wins
    return info


def inspect_saved_model(export_dir: Path) -> SavedModelInfo:
    """Read one SavedModel's proto, variables and assets; InspectError when missing or unparsable."""
    from google.protobuf.message import DecodeError
    from google.protobuf.text_format import ParseError

    from tfsctl.savedmodel import is_saved_model_dir, read_saved_model

    if not is_saved_model_dir(export_dir):
        raise InspectError(f"{export_dir} is not a SavedModel (no saved_model.pb or saved_model.pbtxt)")
    try:
        proto = read_saved_model(export_dir)
    except (OSError, ValueError, DecodeError, ParseError) as exc:
        raise InspectError(f"{export_dir}: cannot parse the SavedModel proto: {exc}") from None
    if not proto.meta_graphs:
        raise InspectError(f"{export_dir}: the SavedModel holds no meta graph")
    info = SavedModelInfo(path=str(export_dir), version=parse_version_dir(export_dir.name),
                          warmup_records=_count_records(warmup_path(export_dir)))
    for mg in proto.meta_graphs:
        mgi = MetaGraphInfo(tags=list(mg.meta_info_def.tags), tensorflow_version=mg.meta_info_def.tensorflow_version)
        mgi.signatures = _signatures(mg.signature_def)
        info.meta_graphs.append(mgi)
    variables = export_dir / "variables"
    info.variables_bytes = sum(f.stat().st_size for f in variables.glob("variables.*") if f.is_file())
    if Path(f"{variables / 'variables'}.index").is_file():
        try:
            info.variables = _variables(variables / "variables")
        except InspectError:
            info.variables = []
    assets = export_dir / "assets"
    if assets.is_dir():
        info.assets = [FileInfo(str(f.relative_to(export_dir)), f.stat().st_size)
                       for f in sorted(assets.rglob("*")) if f.is_file()]
    return info


def inspect_tflite(path: Path) -> TfLiteInfo:
    """Read a ``.tflite`` file (or a version directory's ``model.tflite``) with the LiteRT interpreter, as the
    server does; InspectError when it is not a TFLite model LiteRT can run."""
    from tfsctl.tflite_model import (
        GENERATED,
        TfLiteModelError,
        litert_signatures,
        new_interpreter,
        read_model,
        read_signatures,
    )

    p = Path(path)
    file = tflite_file(p) if p.is_dir() else p
    try:
        content = read_model(file)
        interpreter = new_interpreter(content)
        signatures = read_signatures(content, interpreter)
        runners = litert_signatures(interpreter)
    except TfLiteModelError as exc:
        raise InspectError(f"{file}: {exc}") from None
    if any(s.source != GENERATED for s in signatures.values()):
        runners = []  # signature_defs_metadata wins with or without --tflite_signature_runners
    version_dir = p if p.is_dir() else None
    sources = sorted({s.source for s in signatures.values()})
    return TfLiteInfo(path=str(file), size=file.stat().st_size,
                      signatures=_signatures({k: s.signature_def for k, s in signatures.items()}),
                      signature_source=", ".join(sources), signature_runners=runners,
                      version=parse_version_dir(version_dir.name) if version_dir is not None else None,
                      warmup_records=_count_records(warmup_path(version_dir)) if version_dir is not None else None)


def _signatures(signature_defs: Any) -> list[SignatureInfo]:
    result = []
    for name in sorted(signature_defs):
        sig = signature_defs[name]
        result.append(SignatureInfo(
            name=name, method_name=sig.method_name,
            inputs=[_tensor_info(k, sig.inputs[k]) for k in sorted(sig.inputs)],
            outputs=[_tensor_info(k, sig.outputs[k]) for k in sorted(sig.outputs)]))
    return result


def _checkpoint_prefix(p: Path) -> Path | None:
    """The checkpoint prefix a path stands for (prefix, ``X.index``, or a dir with a ``checkpoint`` file)."""
    if p.is_dir():
        if (p / "checkpoint").is_file():
            import tensorflow as tf

            latest = tf.train.latest_checkpoint(str(p))
            if latest is None:
                raise InspectError(f"{p / 'checkpoint'} names no checkpoint whose files exist")
            return Path(latest)
        return None
    if p.suffix == ".index" and p.is_file():
        return p.with_suffix("")
    if Path(f"{p}.index").is_file():
        return p
    return None


def _variables(prefix: Path) -> list[VariableInfo]:
    import numpy as np
    import tensorflow as tf
    from tensorflow.core.framework import types_pb2

    try:
        reader = tf.train.load_checkpoint(str(prefix))
        shapes = reader.get_variable_to_shape_map()
        dtypes = reader.get_variable_to_dtype_map()
    except (tf.errors.OpError, ValueError) as exc:
        raise InspectError(f"cannot read checkpoint {prefix}: {str(exc).strip().splitlines()[0]}") from None
    result = []
    for name in sorted(shapes):
        if name.startswith(("_CHECKPOINTABLE_OBJECT_GRAPH",)):
            continue
        dtype = dtypes[name]
        count = int(np.prod(shapes[name])) if shapes[name] else 1
        size = count * dtype.size if dtype.name not in ("string", "resource", "variant") else 0
        result.append(VariableInfo(name=name, dtype=types_pb2.DataType.Name(dtype.as_datatype_enum),
                                   shape=list(shapes[name]),
                                   size=size))
    return result


def inspect_checkpoint(path: Path) -> CheckpointInfo:
    """A checkpoint's variables with dtype, shape and size (``tf.train.load_checkpoint``)."""
    prefix = _checkpoint_prefix(path)
    if prefix is None:
        raise InspectError(f"{path} is not a checkpoint (no .index file)")
    return CheckpointInfo(path=str(path), prefix=str(prefix), variables=_variables(prefix),
                          has_meta_graph=Path(f"{prefix}.meta").is_file())


_NOT_OUTPUTS = {"NoOp", "Assert", "Const", "SaveV2", "RestoreV2", "Save", "Restore", "MergeV2Checkpoints",
                "VarHandleOp", "VariableV2", "Variable", "AssignVariableOp", "Assign", "Print", "PrintV2"}


def graph_candidates(graph_def: Any) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """(placeholders, outputs of ops nothing consumes) of a GraphDef, with dtype and shape where recorded.

    Shapes come from the placeholders' ``shape`` attribute and from ``_output_shapes`` where the graph was written
    with them; an op's dtype from its ``T``/``dtype``/``out_type`` attribute. Save/restore machinery, constants and
    assertions are not candidate outputs.
    """
    from tensorflow.core.framework import types_pb2

    consumed: set[str] = set()
    for node in graph_def.node:
        for inp in node.input:
            name = inp.lstrip("^").split(":")[0]
            consumed.add(name)
    inputs, outputs = [], []
    for node in graph_def.node:
        if node.op in ("Placeholder", "PlaceholderV2"):
            dtype = types_pb2.DataType.Name(node.attr["dtype"].type)
            inputs.append(TensorInfo(key=node.name, dtype=dtype, shape=_shape_attr(node), name=f"{node.name}:0"))
        elif node.name not in consumed and node.op not in _NOT_OUTPUTS and not node.name.startswith(("save/",
                                                                                                       "init")):
            dtype = next((types_pb2.DataType.Name(node.attr[a].type) for a in ("T", "dtype", "out_type", "DstT",
                                                                               "output_type", "Tout")
                          if a in node.attr and node.attr[a].type), "")
            outputs.append(TensorInfo(key=node.name, dtype=dtype or "?", shape=_shape_attr(node),
                                      name=f"{node.name}:0"))
    return inputs, outputs


def _shape_attr(node: Any) -> list[int] | None:
    if "shape" in node.attr:
        shape = node.attr["shape"].shape
    elif "_output_shapes" in node.attr and node.attr["_output_shapes"].list.shape:
        shape = node.attr["_output_shapes"].list.shape[0]
    else:
        return None
    return None if shape.unknown_rank else [int(d.size) for d in shape.dim]


def inspect_graph(path: Path) -> GraphInfo:
    """A frozen GraphDef (``.pb`` binary or ``.pbtxt`` text)."""
    from google.protobuf import text_format
    from google.protobuf.message import DecodeError
    from tensorflow.core.framework import graph_pb2

    graph_def = graph_pb2.GraphDef()
    try:
        data = path.read_bytes()
        if path.suffix == ".pbtxt":
            text_format.Parse(data.decode("utf-8"), graph_def)
        else:
            graph_def.ParseFromString(data)
    except (OSError, DecodeError, text_format.ParseError, UnicodeDecodeError) as exc:
        raise InspectError(f"{path} is not a GraphDef: {str(exc).strip().splitlines()[0] if str(exc) else exc}") \
            from None
    if not graph_def.node:
        raise InspectError(f"{path} is not a GraphDef (no nodes)")
    inputs, outputs = graph_candidates(graph_def)
    return GraphInfo(path=str(path), inputs=inputs, outputs=outputs, num_nodes=len(graph_def.node))


def inspect_meta_graph(path: Path) -> GraphInfo:
    """A ``.meta`` file (TF1 Saver): candidate tensors, stored signatures, trainable/global variable names."""
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import meta_graph_pb2

    mg = meta_graph_pb2.MetaGraphDef()
    try:
        mg.ParseFromString(path.read_bytes())
    except (OSError, DecodeError) as exc:
        raise InspectError(f"{path} is not a MetaGraphDef: {exc}") from None
    if not mg.graph_def.node:
        raise InspectError(f"{path} is not a MetaGraphDef (no graph)")
    inputs, outputs = graph_candidates(mg.graph_def)
    variables = [n.name for n in mg.graph_def.node if n.op in ("VariableV2", "VarHandleOp", "Variable")]
    return GraphInfo(path=str(path), inputs=inputs, outputs=outputs, num_nodes=len(mg.graph_def.node),
                     signatures=_signatures(mg.signature_def), variables=variables, kind="meta_graph")


def _tensor_info(key: str, ti: Any) -> TensorInfo:
    from tensorflow.core.framework import types_pb2

    encoding = ti.WhichOneof("encoding") or "dense"
    name = ti.name
    if encoding == "coo_sparse":
        name = ti.coo_sparse.values_tensor_name
    elif encoding == "name":
        encoding = "dense"
    shape = None if ti.tensor_shape.unknown_rank else [int(d.size) for d in ti.tensor_shape.dim]
    return TensorInfo(key=key, dtype=types_pb2.DataType.Name(ti.dtype), shape=shape, name=name, encoding=encoding)


def _count_records(path: Path) -> int | None:
    """Number of records in a TFRecord file by walking its length headers (None if absent or malformed)."""
    if not path.is_file():
        return None
    count = 0
    size = path.stat().st_size
    with path.open("rb") as f:
        offset = 0
        while offset < size:
            header = f.read(12)
            if len(header) < 12:
                return None
            (length,) = struct.unpack("<Q", header[:8])
            offset += 12 + length + 4
            if offset > size:
                return None
            f.seek(offset)
            count += 1
    return count
