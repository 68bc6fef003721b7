"""Which kind of model a SOURCE path holds, decided from its files (``--source-kind`` overrides).

Kinds: ``deeplab`` (a directory with model.json and its checkpoint, the bundled sample's format), ``tf1-checkpoint``
(a Saver checkpoint: a prefix with ``.meta``/``.index``, a directory with a ``checkpoint`` file, or the ``.meta``
file), ``frozen-graph`` (a GraphDef ``.pb``/``.pbtxt``), ``tf2-checkpoint`` (a ``tf.train.Checkpoint``, restored into
the object ``--model-factory`` builds), ``keras`` (``.keras``, ``.h5``, ``.hdf5``) and ``saved-model``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tfsctl.errors import ExportError
from tfsctl.savedmodel import SAVED_MODEL_FILENAMES, is_saved_model_dir

KINDS = ("deeplab", "tf1-checkpoint", "frozen-graph", "tf2-checkpoint", "keras", "saved-model")
KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
CONFIG_FILENAME = "model.json"


@dataclass
class Source:
    """A detected source: its kind, the path given, and the checkpoint prefix for checkpoint kinds."""

    kind: str
    path: Path
    prefix: Path | None = None


def checkpoint_prefix(path: Path) -> Path | None:
    """The checkpoint prefix ``path`` stands for: itself, ``X`` for ``X.meta``/``X.index``, or a dir's latest."""
    if path.is_dir():
        state = path / "checkpoint"
        if state.is_file():
            import tensorflow as tf

            latest = tf.train.latest_checkpoint(str(path))
            if latest is None:
                raise ExportError(f"{state} names no checkpoint whose files exist in {path}")
            return Path(latest)
        indexes = sorted(path.glob("*.index"))
        if len(indexes) == 1:
            return indexes[0].with_suffix("")
        return None
    for suffix in (".meta", ".index"):
        if path.suffix == suffix and path.is_file():
            return path.with_suffix("")
    if Path(f"{path}.index").is_file() or Path(f"{path}.meta").is_file():
        return path
    return None


def detect(path: str | Path, kind: str | None = None, *, has_factory: bool = False) -> Source:
    """Decide the source kind; ExportError naming what is missing when no kind fits."""
    p = Path(path)
    if kind is not None and kind not in KINDS:
        raise ExportError(f"--source-kind must be one of {', '.join(KINDS)}, got {kind!r}")
    exists = p.exists() or Path(f"{p}.index").is_file() or Path(f"{p}.meta").is_file()
    if not exists:
        raise ExportError(f"source {p} does not exist")
    if kind is None:
        kind = _guess(p, has_factory)
    if kind in ("tf1-checkpoint", "tf2-checkpoint", "deeplab"):
        prefix = None if kind == "deeplab" else checkpoint_prefix(p)
        if kind == "deeplab" and not (p / CONFIG_FILENAME).is_file():
            raise ExportError(f"{p} holds no {CONFIG_FILENAME}; a DeepLab checkpoint directory needs it to "
                              "rebuild the model")
        if kind != "deeplab" and prefix is None:
            raise ExportError(f"{p} is not a checkpoint (no 'checkpoint' file, .index or .meta file)")
        if kind == "tf1-checkpoint" and not Path(f"{prefix}.meta").is_file():
            raise ExportError(f"checkpoint {prefix} has no graph ({prefix}.meta is missing); a TF2 checkpoint "
                              "needs --model-factory module:callable")
        if kind == "tf2-checkpoint" and not has_factory:
            raise ExportError(f"checkpoint {prefix} is a TF2 checkpoint: pass --model-factory module:callable "
                              "(a callable returning the built model to restore into)")
        return Source(kind, p, prefix)
    if kind == "saved-model":
        sm = p.parent if p.is_file() else p
        if not is_saved_model_dir(sm):
            raise ExportError(f"{p} is not a SavedModel directory (no saved_model.pb or saved_model.pbtxt)")
        return Source(kind, sm)
    if kind in ("frozen-graph", "keras") and not p.is_file():
        raise ExportError(f"source {p} is not a file (a {kind} source is one file)")
    return Source(kind, p)


def _guess(p: Path, has_factory: bool) -> str:
    if p.is_dir():
        if (p / CONFIG_FILENAME).is_file():
            return "deeplab"
        if is_saved_model_dir(p):
            return "saved-model"
        prefix = checkpoint_prefix(p)
        if prefix is not None:
            return _checkpoint_kind(prefix, has_factory)
        raise ExportError(f"{p} holds no model.json, SavedModel or checkpoint (no 'checkpoint' file and no single "
                          ".index file); --source-kind forces a kind")
    if p.name in SAVED_MODEL_FILENAMES:
        return "saved-model"
    suffix = p.suffix.lower()
    if suffix in KERAS_SUFFIXES:
        return "keras"
    if suffix in (".pb", ".pbtxt"):
        return "frozen-graph"
    prefix = checkpoint_prefix(p)
    if prefix is not None:
        return _checkpoint_kind(prefix, has_factory)
    raise ExportError(f"cannot tell what {p} is (expected a checkpoint, .meta, .pb/.pbtxt, .keras/.h5 or a "
                      "SavedModel directory); --source-kind forces a kind")


def _checkpoint_kind(prefix: Path, has_factory: bool) -> str:
    if has_factory:
        return "tf2-checkpoint"
    if Path(f"{prefix}.meta").is_file():
        return "tf1-checkpoint"
    raise ExportError(f"checkpoint {prefix} has no graph ({prefix.name}.meta): for a TF2 checkpoint pass "
                      "--model-factory module:callable")
