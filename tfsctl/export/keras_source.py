"""Keras and TF2 sources -> SavedModel with ``tf.saved_model.save``: the bundled DeepLab checkpoint directory, a
``.keras``/``.h5`` file, and a ``tf.train.Checkpoint`` restored into the object a ``--model-factory`` builds.

A DeepLab-shaped model (one float [N, H, W, 3] input, one [N, H, W, C] output) gets the image signatures of
:mod:`tfsctl.models.deeplab_serving`; any other model gets ``serving_default`` over its own call signature.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect as pyinspect
import re
import sys
import types
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tfsctl.errors import ExportError
from tfsctl.export.graph import first_line

_CKPT_INTERNAL = ("_CHECKPOINTABLE_OBJECT_GRAPH", "save_counter")


# --- loading ---


def load_deeplab_dir(ckpt_dir: Path, scratch: Path) -> Any:
    """model.json + checkpoint -> the restored DeepLab Keras model."""
    import tensorflow as tf

    from tfsctl.models.deeplab import CONFIG_FILENAME, DeepLabConfig, build_deeplab, checkpoint_for

    config_path = ckpt_dir / CONFIG_FILENAME
    try:
        config = DeepLabConfig.load(config_path)
    except (ValueError, TypeError) as exc:
        raise ExportError(f"{config_path} is not a valid DeepLab config: {exc}") from None
    prefix = ckpt_dir / config.checkpoint_prefix
    if not Path(f"{prefix}.index").is_file():
        latest = tf.train.latest_checkpoint(str(ckpt_dir))
        if latest is None:
            raise ExportError(f"{ckpt_dir} holds no checkpoint {config.checkpoint_prefix}.index")
        prefix = Path(latest)
    try:
        model = build_deeplab(config)
    except Exception as exc:  # noqa: BLE001 - any build failure is a config problem to report
        raise ExportError(f"{config_path}: cannot build the model: {exc}") from None
    restore_checked(checkpoint_for(model), prefix, scratch, "model.json")
    return model


def restore_checked(ckpt: Any, prefix: Path, scratch: Path, against: str, under: str = "") -> None:
    """Restore ``ckpt`` from ``prefix`` after naming every missing / unexpected / reshaped variable.

    The model's own keys come from writing its (fresh) weights to a scratch checkpoint (inside the export's staging
    directory, not TMPDIR): the only way to get exactly the keys ``tf.train.Checkpoint`` will look up.
    """
    import tensorflow as tf

    problems = checkpoint_mismatch(ckpt, prefix, scratch, under)
    if problems:
        raise ExportError(f"checkpoint {prefix} does not match {against}: {problems}")
    try:
        ckpt.read(str(prefix)).assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as exc:
        raise ExportError(f"checkpoint {prefix} does not match {against}: {first_line(exc)}") from None


def checkpoint_mismatch(ckpt: Any, prefix: Path, scratch: Path, under: str = "") -> str:
    """'' when the checkpoint holds exactly the variables of ``ckpt``'s objects, else a one-line description.

    ``under`` (``model/``) compares only the keys below that attribute: the rest (an optimizer's slots, a step
    counter saved beside the model) is training state a server does not need.
    """
    import shutil

    import tensorflow as tf

    try:
        stored = {k: tuple(s) for k, s in tf.train.list_variables(str(prefix))
                  if not k.startswith(_CKPT_INTERNAL) and k.startswith(under)}
    except (tf.errors.OpError, ValueError) as exc:
        raise ExportError(f"cannot read checkpoint {prefix}: {first_line(exc)}") from None
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        written = ckpt.write(str(scratch / "ckpt"))
        expected = {k: tuple(s) for k, s in tf.train.list_variables(written) if not k.startswith(_CKPT_INTERNAL)}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    reshaped = sorted(k for k in set(expected) & set(stored) if expected[k] != stored[k])
    problems = []
    if missing:
        problems.append(f"{len(missing)} variable(s) missing from the checkpoint: {_names(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} checkpoint variable(s) unmatched by the model: {_names(unexpected)}")
    if reshaped:
        problems.append(f"{len(reshaped)} variable(s) with another shape: "
                        + ", ".join(f"{_short(k)} model {list(expected[k])} vs checkpoint {list(stored[k])}"
                                    for k in reshaped[:8])
                        + (f", ... ({len(reshaped) - 8} more)" if len(reshaped) > 8 else ""))
    return "; ".join(problems)


def _short(key: str) -> str:
    return key.replace("/.ATTRIBUTES/VARIABLE_VALUE", "")


def _names(keys: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(_short(k) for k in keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_keras_file(path: Path) -> Any:
    """A ``.keras`` (zip) or legacy ``.h5``/``.hdf5`` Keras model, uncompiled."""
    import keras

    import tfsctl.models.deeplab  # noqa: F401 - registers the custom layers a DeepLab .keras file refers to

    if path.suffix == ".keras" and not zipfile.is_zipfile(path):  # keras would call it "File not found"
        raise ExportError(f"cannot load Keras model {path}: not a .keras file (not a zip archive)")
    if path.suffix in (".h5", ".hdf5"):
        with path.open("rb") as f:
            if f.read(8) != b"\x89HDF\r\n\x1a\n":
                raise ExportError(f"cannot load Keras model {path}: not an HDF5 file")
    try:
        model = keras.saving.load_model(str(path), compile=False)
    except Exception as exc:  # noqa: BLE001 - keras raises many types for a bad file
        raise ExportError(f"cannot load Keras model {path}: {first_line(exc)}") from None
    return model


def load_factory(spec: str, search_path: Path | None) -> Any:
    """Call ``module:callable`` (``module`` importable from ``search_path`` or sys.path) and return its object."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ExportError(f"--model-factory {spec!r} is not module:callable")
    if search_path is not None and not search_path.is_dir():
        raise ExportError(f"--model-factory-path {search_path} is not a directory")
    added = str(search_path.resolve()) if search_path is not None else None
    if added:
        sys.path.insert(0, added)
    try:
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # noqa: BLE001 - the user's module may raise anything
            hint = "" if search_path else " (--model-factory-path DIR says where it lives)"
            raise ExportError(f"--model-factory: cannot import module {module_name!r}: {first_line(exc)}{hint}") \
                from None
        obj: Any = module
        for part in attr.split("."):
            if not hasattr(obj, part):
                raise ExportError(f"--model-factory: module {module_name!r} has no attribute {attr!r}")
            obj = getattr(obj, part)
        if not callable(obj):
            raise ExportError(f"--model-factory: {spec} is not callable")
        try:
            return obj()
        except Exception as exc:  # noqa: BLE001
            raise ExportError(f"--model-factory: {spec}() failed: {type(exc).__name__}: {first_line(exc)}") \
                from None
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(added)


def restore_tf2(obj: Any, prefix: Path, scratch: Path, factory: str) -> None:
    """Restore a ``tf.train.Checkpoint`` into ``obj``: as the checkpoint's root, or under the attribute all its keys
    share (``model/...`` from ``tf.train.Checkpoint(model=model)``). Names what does not match."""
    import tensorflow as tf

    if not getattr(obj, "variables", None) and not getattr(obj, "weights", None):
        raise ExportError(f"the object from --model-factory {factory} has no variables: build it inside the "
                          "factory (call it once on an example input) so the checkpoint can be restored into it")
    try:
        keys = [k for k, _ in tf.train.list_variables(str(prefix)) if not k.startswith(_CKPT_INTERNAL)]
    except (tf.errors.OpError, ValueError) as exc:
        raise ExportError(f"cannot read checkpoint {prefix}: {first_line(exc)}") from None
    candidates = [(tf.train.Checkpoint(**{head: obj}), f"{head}/")
                  for head in sorted({k.split("/", 1)[0] for k in keys if "/" in k})]
    candidates.append((tf.train.Checkpoint(root=obj), ""))
    if hasattr(obj, "layers"):  # the layout tfsctl's own DeepLab checkpoints use
        candidates.append((tf.train.Checkpoint(**{layer.name: layer for layer in obj.layers if layer.weights}), ""))
    problems = []
    for ckpt, under in candidates:
        problem = checkpoint_mismatch(ckpt, prefix, scratch, under)
        if not problem:
            restore_checked(ckpt, prefix, scratch, f"the model from {factory}", under)
            return
        problems.append(problem)
    raise ExportError(f"checkpoint {prefix} does not match the model from {factory}: "
                      f"{min(problems, key=len)}")


# --- writing ---


def _tf_variable(v: Any) -> Any:
    """The tf.Variable behind a Keras 3 variable (the object SavedModel must reach to save its value)."""
    return getattr(v, "value", v)


def tensor_key(name: str, used: set[str]) -> str:
    """A valid, unique signature key from a Keras tensor name (``input_layer:0`` -> ``input_layer``)."""
    clean = re.sub(r"[^A-Za-z0-9_.\-]", "_", name.split(":")[0]) or "tensor"
    if not re.match(r"[A-Za-z0-9.]", clean[0]):
        clean = f"t{clean}"
    candidate, i = clean, 1
    while candidate in used:
        candidate, i = f"{clean}_{i}", i + 1
    used.add(candidate)
    return candidate


def call_specs(model: Any, where: str) -> tuple[list[Any], bool]:
    """(input TensorSpecs, pass as list) of a model's own call: functional inputs, or the shapes it was built with."""
    import tensorflow as tf

    used: set[str] = set()
    try:
        inputs = list(model.inputs)
    except (AttributeError, ValueError):
        inputs = []
    if inputs:
        specs = [tf.TensorSpec((None,) + tuple(t.shape)[1:], tf.as_dtype(t.dtype),
                               name=tensor_key(getattr(t, "name", "") or f"input_{i}", used))
                 for i, t in enumerate(inputs)]
        return specs, len(specs) > 1
    shapes = getattr(model, "_build_shapes_dict", None) or {}
    if len(shapes) == 1:
        shape = next(iter(shapes.values()))
        if isinstance(shape, tuple | list) and all(isinstance(d, int | type(None)) for d in shape):
            params = [p for p in pyinspect.signature(model.call).parameters.values()
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
            key = tensor_key(params[0].name if params else "inputs", used)
            dtype = tf.as_dtype(getattr(model, "input_dtype", None) or getattr(model, "compute_dtype", "float32"))
            return [tf.TensorSpec((None,) + tuple(shape)[1:], dtype, name=key)], False
    raise ExportError(f"{where}: cannot tell the model's input signature (not a functional model and not built "
                      "on one input); give the object a tf.function __call__ with an input_signature")


def save_keras(model: Any, export_dir: Path, where: str, signature: str | None) -> list[str]:
    """``serving_default`` (or ``signature``) over the model's own call; returns the signature names."""
    import tensorflow as tf

    from tfsctl.savedmodel import DEFAULT_SIGNATURE

    name = signature or DEFAULT_SIGNATURE
    module = tf.Module(name="keras_serving")
    module.model_variables = [_tf_variable(v) for v in getattr(model, "weights", None) or model.variables]
    call = type(model).__dict__.get("__call__") and model.__call__
    if isinstance(call, tf.types.experimental.PolymorphicFunction) and call.input_signature is not None:
        fn = call.get_concrete_function()
        module.model = model
        tf.saved_model.save(module, str(export_dir), signatures={name: fn})
        return [name]
    specs, as_list = call_specs(model, where)
    out_names = list(getattr(model, "output_names", None) or [])
    try:
        n_out = len(model.outputs)
    except (AttributeError, ValueError):
        n_out = None
    if n_out is None or len(out_names) != n_out:
        out_names = []

    def serve(*args: tf.Tensor) -> dict[str, tf.Tensor]:
        result = model(list(args) if as_list else args[0], training=False)
        if isinstance(result, dict):
            return {tensor_key(k, set()): v for k, v in result.items()}
        results = list(result) if isinstance(result, list | tuple) else [result]
        names = out_names if len(out_names) == len(results) else \
            (["output_0"] if len(results) == 1 else [f"output_{i}" for i in range(len(results))])
        used: set[str] = set()
        return {tensor_key(n, used): r for n, r in zip(names, results, strict=True)}

    module.fns = types.SimpleNamespace(serve=tf.function(serve, input_signature=specs, autograph=False))
    tf.saved_model.save(module, str(export_dir), signatures={name: module.fns.serve.get_concrete_function()})
    return [name]


def save_deeplab(model: Any, export_dir: Path, max_pixels: int) -> list[str]:
    """The DeepLab serving signatures; classify's method name set as TF1's classification_signature_def did."""
    import tensorflow as tf

    from tfsctl.models.deeplab_serving import CLASSIFY_SIGNATURE, serving_signatures
    from tfsctl.savedmodel import CLASSIFY_METHOD, set_method_names

    module, signatures = serving_signatures(model, max_pixels)
    tf.saved_model.save(module, str(export_dir), signatures=signatures)
    set_method_names(export_dir, {CLASSIFY_SIGNATURE: CLASSIFY_METHOD})
    return sorted(signatures)
