"""``tfsctl export``: the checkpoints and graphs users have -> a versioned SavedModel TF Serving can load.

One module per concern: :mod:`.detect` (which kind of source), :mod:`.graph` (TF1 Saver checkpoints, frozen
GraphDefs and SavedModel re-exports through ``tf.compat.v1.saved_model.Builder`` / proto edits),
:mod:`.keras_source` (the DeepLab checkpoint dir, ``.keras``/``.h5`` files and TF2 checkpoints through
``tf.saved_model.save``), :mod:`.signatures` (``--input``/``--output``/``--signatures``), :mod:`.warmup` (one
record per signature, checked in a TF1 session), :mod:`.tflite` (``--to-tflite``: model.tflite beside the SavedModel)
and :mod:`.target` (staging dir, fsync, atomic rename, cleaning
stale staging dirs). Every failure is an :class:`~tfsctl.errors.ExportError` with a one-line message, and nothing
but complete versions is left under the base path.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tfsctl.errors import ExportError
from tfsctl.export.detect import KINDS, detect
from tfsctl.export.signatures import SignatureSpec, specs_from_file, specs_from_flags
from tfsctl.export.target import (
    clean_stale_staging,
    make_staging_dir,
    move_into_place,
    numeric_versions,
    remove_quietly,
    resolve_target,
)
from tfsctl.export.warmup import WarmupPlan, parse_shape
from tfsctl.models.deeplab_serving import DEFAULT_MAX_IMAGE_PIXELS

__all__ = ["DEFAULT_MAX_IMAGE_PIXELS", "KINDS", "ExportResult", "export_model", "numeric_versions",
           "resolve_target"]


@dataclass
class ExportResult:
    """Where the version landed, which signatures it serves, and how it was warmed."""

    path: Path
    version: int
    signatures: list[str] = field(default_factory=list)
    source: str = ""
    replaced: bool = False
    warmup_sizes: list[tuple[int, int]] = field(default_factory=list)
    kind: str = ""
    warmup_records: int = 0
    warnings: list[str] = field(default_factory=list)
    removed_stale: list[str] = field(default_factory=list)
    tflite_signatures: list[str] | None = None  # with --to-tflite: the signatures of the version's model.tflite

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "version": self.version, "signatures": list(self.signatures),
                "source": self.source, "kind": self.kind, "replaced": self.replaced,
                "warmup_sizes": [list(s) for s in self.warmup_sizes], "warmup_records": self.warmup_records,
                "warnings": list(self.warnings), "removed_stale": list(self.removed_stale),
                "tflite_signatures": self.tflite_signatures}


def export_model(source: str | Path, out: str | Path, *, force: bool = False,
                 warmup_sizes: Iterable[tuple[int, int]] = ((256, 256),),
                 max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                 source_kind: str | None = None,
                 inputs: list[str] | None = None, outputs: list[str] | None = None,
                 signature: str | None = None, method: str | None = None,
                 signatures_file: str | Path | None = None,
                 model_factory: str | None = None, model_factory_path: str | Path | None = None,
                 warmup_shapes: list[str] | None = None, warmup_request: str | Path | None = None,
                 warmup: bool = True, tags: Iterable[str] = ("serve",),
                 replace_signatures: bool = False, to_tflite: bool = False,
                 warmup_from: str | Path | None = None) -> ExportResult:
    """Export ``source`` as ``out``'s next version or as ``out/N``.

    ``warmup_sizes`` are (height, width) pairs of ``predict_images`` warmup requests (DeepLab-shaped models; [] =
    no warmup file). ``inputs``/``outputs`` are ``KEY=TENSOR`` strings for graph sources. Raises
    :class:`ExportError`; on any failure nothing but complete versions remains under the base path.
    ``to_tflite`` also writes ``model.tflite`` into the version (:mod:`.tflite`).
    """
    sizes = [_check_size(s) for s in warmup_sizes]
    if max_image_pixels < 1:
        raise ExportError(f"--max-image-pixels must be positive, got {max_image_pixels}")
    tag_list = sorted({t.strip() for t in tags if t.strip()}) or ["serve"]
    specs = specs_from_flags(inputs, outputs, signature, method)
    if signatures_file is not None:
        if specs:
            raise ExportError("give either --signatures FILE or --input/--output, not both")
        specs = specs_from_file(signatures_file)
    plan = _warmup_plan(warmup_shapes, warmup_request, warmup and bool(sizes), warmup_from)
    src = detect(source, source_kind, has_factory=model_factory is not None)
    if model_factory is not None and src.kind != "tf2-checkpoint":
        raise ExportError(f"--model-factory applies to a TF2 checkpoint, but {src.path} is a {src.kind} source")
    if specs and src.kind in ("deeplab", "keras", "tf2-checkpoint"):
        raise ExportError(f"--input/--output/--signatures name graph tensors; a {src.kind} source is exported "
                          "with its model's own call signature (--signature renames it)")
    base, version = resolve_target(out)
    target = base / str(version)
    if target.exists() and not force:
        raise ExportError(f"version {version} already exists at {target}; pass --force to replace it")

    created_base = not base.exists()
    tmp: Path | None = None
    try:
        try:
            base.mkdir(parents=True, exist_ok=True)
            removed = clean_stale_staging(base)
            tmp = make_staging_dir(base, version)
        except OSError as exc:
            raise ExportError(f"cannot create a directory under {base}: {_os_reason(exc)}") from None
        export_dir = tmp / "v"  # Builder wants a fresh directory; the staging dir also holds the scratch checkpoint
        export_dir.mkdir()
        os.chmod(export_dir, 0o755)
        signatures, logs_fixed, warm_sizes = _write(src, export_dir, tmp / "scratch", specs, tag_list, signature,
                                                    sizes if plan.enabled else [], max_image_pixels,
                                                    model_factory, model_factory_path, base.name,
                                                    replace_signatures)
        logs, warnings = [], []
        if plan.enabled:
            from tfsctl.export.warmup import plan_and_check, write_warmup

            logs, warnings = plan_and_check(export_dir, tag_list, base.name, plan, logs_fixed)
            write_warmup(export_dir, logs)
        tflite_signatures = None
        if to_tflite:
            from tfsctl.export.tflite import write_tflite

            tflite_signatures, tflite_warnings = write_tflite(export_dir, tag_list, logs)
            warnings.extend(tflite_warnings)
        replaced = move_into_place(export_dir, target, force)
        remove_quietly(tmp)
    except BaseException as exc:
        if tmp is not None:
            remove_quietly(tmp)
        if created_base:
            with contextlib.suppress(OSError):
                base.rmdir()
        if isinstance(exc, ExportError | KeyboardInterrupt | SystemExit):
            raise
        if isinstance(exc, OSError):
            raise ExportError(f"export of {src.path} to {target} failed: {_os_reason(exc)}; nothing was "
                              "written") from None
        if isinstance(exc, Exception):
            from tfsctl.export.graph import first_line

            raise ExportError(f"export of {src.path} to {target} failed: {type(exc).__name__}: "
                              f"{first_line(exc)}") from None
        raise
    return ExportResult(path=target, version=version, signatures=signatures, source=str(source), kind=src.kind,
                        replaced=replaced, warmup_sizes=warm_sizes, warmup_records=len(logs), warnings=warnings,
                        removed_stale=[str(p) for p in removed], tflite_signatures=tflite_signatures)


def _write(src: Any, export_dir: Path, scratch: Path, specs: list[SignatureSpec], tags: list[str],
           signature: str | None, sizes: list[tuple[int, int]], max_pixels: int, factory: str | None,
           factory_path: str | Path | None, model_name: str,
           replace_signatures: bool) -> tuple[list[str], list[Any] | None, list[tuple[int, int]]]:
    """Write the SavedModel for one source kind: (signatures, fixed warmup logs or None, warmup sizes)."""
    from tfsctl.export import graph, keras_source

    if src.kind == "tf1-checkpoint":
        return graph.export_checkpoint_graph(src.prefix, export_dir, specs, tags), None, []
    if src.kind == "frozen-graph":
        return graph.export_frozen_graph(src.path, export_dir, specs, tags), None, []
    if src.kind == "saved-model":
        return graph.reexport_saved_model(src.path, export_dir, specs, tags, replace_signatures), None, []
    if tags != ["serve"]:
        raise ExportError(f"--tag-set applies to graph and SavedModel sources; a {src.kind} source is saved "
                          "with the serve tag")
    if src.kind == "deeplab":
        model = keras_source.load_deeplab_dir(src.path, scratch)
    elif src.kind == "keras":
        model = keras_source.load_keras_file(src.path)
    else:
        model = keras_source.load_factory(factory or "", Path(factory_path) if factory_path else None)
        keras_source.restore_tf2(model, src.prefix, scratch, factory or "")
    from tfsctl.models.deeplab_serving import is_deeplab_shaped, warmup_logs

    if is_deeplab_shaped(model) and signature is None:
        names = keras_source.save_deeplab(model, export_dir, max_pixels)
        return names, warmup_logs(model_name, sizes), sizes
    return keras_source.save_keras(model, export_dir, str(src.path), signature), None, []


def _warmup_plan(shapes: list[str] | None, request: str | Path | None, enabled: bool,
                 request_log: str | Path | None = None) -> WarmupPlan:
    from tfsctl.export.signatures import parse_pairs

    parsed = {k: parse_shape(v) for k, v in parse_pairs(shapes, "--warmup-shape").items()}
    if (parsed or request is not None or request_log is not None) and not enabled:
        raise ExportError("--warmup-shape/--warmup-request/--warmup-from contradict --no-warmup")
    if sum((bool(parsed), request is not None, request_log is not None)) > 1:
        raise ExportError("give one of --warmup-shape, --warmup-request and --warmup-from")
    return WarmupPlan(shapes=parsed, request_file=Path(request) if request is not None else None, enabled=enabled,
                      request_log=Path(request_log) if request_log is not None else None)


def _check_size(size: Any) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ExportError(f"warmup size must be (height, width), got {size!r}") from None
    if h < 1 or w < 1:
        raise ExportError(f"warmup size must be positive, got {h}x{w}")
    return h, w


def _os_reason(exc: OSError) -> str:
    """'No space left on device (/path)' rather than a traceback."""
    reason = exc.strerror or errno.errorcode.get(exc.errno or 0, "") or str(exc)
    where = exc.filename or ""
    return f"{reason} ({where})" if where else reason
