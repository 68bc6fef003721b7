"""What a SavedModel (any SavedModel, not only ours) serves, read from its proto without loading the graph.

The equivalent of ``saved_model_cli show --all`` as data: tag-sets, signatures, method names, inputs and outputs
with dtype and shape (``-1`` for unknown dims, ``None`` / "unknown_rank" for unknown rank). Given a model base path
(numbered version directories, as TF Serving's ``--model_base_path``) it lists the versions, says which ones are
valid SavedModels, and describes the latest valid one. ``cli.py`` renders these dataclasses as tables or JSON.
"""

from __future__ import annotations

import re
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tfsctl.errors import InspectError

_VERSION_RE = re.compile(r"^\d+$")
WARMUP_RELPATH = Path("assets.extra") / "tf_serving_warmup_requests"


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
class SavedModelInfo:
    """One SavedModel directory."""

    path: str
    meta_graphs: list[MetaGraphInfo] = field(default_factory=list)
    version: int | None = None
    warmup_records: int | None = None
    kind: str = "saved_model"

    @property
    def tag_sets(self) -> list[list[str]]:
        return [list(mg.tags) for mg in self.meta_graphs]

    def meta_graph(self, tags: set[str] | frozenset[str] = frozenset({"serve"})) -> MetaGraphInfo | None:
        return next((mg for mg in self.meta_graphs if set(mg.tags) == set(tags)), None)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.path, "version": self.version, "tag_sets": self.tag_sets,
                "warmup_records": self.warmup_records, "meta_graphs": [mg.to_dict() for mg in self.meta_graphs]}


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
    latest: SavedModelInfo | None = None
    kind: str = "base_path"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.path, "versions": [v.to_dict() for v in self.versions],
                "latest": self.latest.to_dict() if self.latest else None}


def inspect_path(path: str | Path) -> SavedModelInfo | BasePathInfo:
    """Describe a SavedModel directory (or its saved_model.pb) or a model base path; raises InspectError."""
    from tfsctl.savedmodel import SAVED_MODEL_FILENAMES, is_saved_model_dir

    p = Path(path)
    if not p.exists():
        raise InspectError(f"{p} does not exist")
    if p.is_file():
        if p.name in SAVED_MODEL_FILENAMES:
            return inspect_saved_model(p.parent)
        raise InspectError(f"{p} is a file, not a SavedModel directory or a model base path")
    if is_saved_model_dir(p):
        return inspect_saved_model(p)
    version_dirs = sorted((d for d in p.iterdir() if d.is_dir() and _VERSION_RE.match(d.name)),
                          key=lambda d: int(d.name))
    if not version_dirs:
        raise InspectError(f"{p} is not a SavedModel (no saved_model.pb or saved_model.pbtxt) nor a model base "
                           "path (no numeric version directories)")
    return inspect_base_path(p, version_dirs)


def inspect_base_path(base: Path, version_dirs: list[Path] | None = None) -> BasePathInfo:
    """List the numeric versions under ``base``; describe the highest valid one."""
    if version_dirs is None:
        version_dirs = sorted((d for d in base.iterdir() if d.is_dir() and _VERSION_RE.match(d.name)),
                              key=lambda d: int(d.name))
    info = BasePathInfo(path=str(base))
    for d in version_dirs:
        try:
            sm = inspect_saved_model(d)
        except InspectError as exc:
            info.versions.append(VersionInfo(version=int(d.name), path=str(d), valid=False, error=str(exc)))
            continue
        serve = sm.meta_graph() or (sm.meta_graphs[0] if sm.meta_graphs else None)
        info.versions.append(VersionInfo(version=int(d.name), path=str(d), valid=True,
                                         signatures=[s.name for s in serve.signatures
                                                     if not s.name.startswith("__")] if serve else []))
        info.latest = sm  # ascending order: the last valid one wins
    return info


def inspect_saved_model(export_dir: Path) -> SavedModelInfo:
    """Read one SavedModel's proto; InspectError when missing or unparsable."""
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
    info = SavedModelInfo(path=str(export_dir),
                          version=int(export_dir.name) if _VERSION_RE.match(export_dir.name) else None,
                          warmup_records=_count_records(export_dir / WARMUP_RELPATH))
    for mg in proto.meta_graphs:
        mgi = MetaGraphInfo(tags=list(mg.meta_info_def.tags), tensorflow_version=mg.meta_info_def.tensorflow_version)
        for name in sorted(mg.signature_def):
            sig = mg.signature_def[name]
            mgi.signatures.append(SignatureInfo(
                name=name, method_name=sig.method_name,
                inputs=[_tensor_info(k, sig.inputs[k]) for k in sorted(sig.inputs)],
                outputs=[_tensor_info(k, sig.outputs[k]) for k in sorted(sig.outputs)]))
        info.meta_graphs.append(mgi)
    return info


def _tensor_info(key: str, ti: Any) -> TensorInfo:
    from tfsctl.serving.tensors import dtype_name

    encoding = ti.WhichOneof("encoding") or "dense"
    name = ti.name
    if encoding == "coo_sparse":
        name = ti.coo_sparse.values_tensor_name
    elif encoding == "name":
        encoding = "dense"
    shape = None if ti.tensor_shape.unknown_rank else [int(d.size) for d in ti.tensor_shape.dim]
    return TensorInfo(key=key, dtype=dtype_name(ti.dtype), shape=shape, name=name, encoding=encoding)


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
