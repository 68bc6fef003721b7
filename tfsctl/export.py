"""Checkpoint or ``.keras`` file -> versioned SavedModel that TF Serving (and ``tfsctl serve``) can load.

The version is written into a hidden temp dir beside the target (``base/.tmp-N-xxxx``, ignored by a polling
server because the name is not numeric) and renamed into place only once complete, so a server watching the base
path never sees a half-written version. ``--force`` swaps the new directory in atomically (``renameat2``
RENAME_EXCHANGE where available) and then deletes the old one.

Signatures of a DeepLab-shaped model (tag ``serve``):

* ``predict_images`` / ``serving_default``: ``images`` uint8 [N, H, W, 3] plus ``height`` / ``width`` int32 [N], the
  valid (unpadded) size of each image, as the classic DeepLab serving example sends. Each image is segmented on its
  valid area only; outside it ``segmentation_map`` is 0 and ``probabilities`` are 0.
* ``classify`` (method ``tensorflow/serving/classify``): serialized ``tf.Example`` with bytes feature
  ``image/encoded`` (PNG or JPEG) -> ``classes`` (VOC names) and ``scores`` (share of pixels per class).
  Image dimensions are read from the PNG/JPEG header and checked against a pixel limit *before* decoding.

Any other Keras model gets ``serving_default`` over its own inputs and outputs.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import tempfile
import types
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tfsctl.errors import ExportError

PREDICT_SIGNATURE = "predict_images"
CLASSIFY_SIGNATURE = "classify"
DEFAULT_SIGNATURE = "serving_default"
WARMUP_FILENAME = "tf_serving_warmup_requests"
DEFAULT_MAX_IMAGE_PIXELS = 2048 * 2048
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_VERSION_RE = re.compile(r"^\d+$")


@dataclass
class ExportResult:
    """Where the version landed and which signatures it serves."""

    path: Path
    version: int
    signatures: list[str] = field(default_factory=list)
    source: str = ""
    replaced: bool = False
    warmup_sizes: list[tuple[int, int]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "version": self.version, "signatures": list(self.signatures),
                "source": self.source, "replaced": self.replaced,
                "warmup_sizes": [list(s) for s in self.warmup_sizes]}


def numeric_versions(base: Path) -> list[int]:
    """Integer-named subdirectories of a model base path, sorted (what a TF Serving source would consider)."""
    if not base.is_dir():
        return []
    return sorted(int(p.name) for p in base.iterdir() if p.is_dir() and _VERSION_RE.match(p.name))


def resolve_target(out: str | Path) -> tuple[Path, int]:
    """``base`` -> (base, next version, 1 if none); ``base/N`` -> (base, N)."""
    out = Path(out)
    if _VERSION_RE.match(out.name):
        return out.parent, int(out.name)
    if re.fullmatch(r"[-+]\d+", out.name):  # meant as a version, but no server would load it
        raise ExportError(f"version '{out.name}' in {out} is not a non-negative integer")
    if out.exists() and not out.is_dir():
        raise ExportError(f"output {out} exists and is not a directory")
    existing = numeric_versions(out)
    return out, (existing[-1] + 1 if existing else 1)


def export_model(source: str | Path, out: str | Path, *, force: bool = False,
                 warmup_sizes: Iterable[tuple[int, int]] = ((256, 256),),
                 max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> ExportResult:
    """Export ``source`` (checkpoint dir with model.json, or a ``.keras`` file) as ``out``'s next version or ``out/N``.

    ``warmup_sizes`` are (height, width) pairs written as ``predict_images`` warmup requests (DeepLab-shaped models
    only). Raises :class:`ExportError`; on any failure nothing but complete versions remains under the base path.
    """
    sizes = [_check_size(s) for s in warmup_sizes]
    if max_image_pixels < 1:
        raise ExportError(f"max_image_pixels must be positive, got {max_image_pixels}")
    source = Path(source)
    base, version = resolve_target(out)
    target = base / str(version)
    if target.exists() and not force:
        raise ExportError(f"version {version} already exists at {target}; pass --force to replace it")

    model, kind = _load_source(source)  # fail on a bad source before touching the output directory

    created_base = not base.exists()
    try:
        base.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=base))
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700; a server running as another user must read the version
    except OSError as exc:
        raise ExportError(f"cannot create a directory under {base}: {exc}") from None
    try:
        signatures = _write_saved_model(model, kind, tmp, sizes, max_image_pixels, model_name=base.name)
        replaced = _move_into_place(tmp, target, force)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if created_base:
            with contextlib.suppress(OSError):
                base.rmdir()
        if isinstance(exc, ExportError | KeyboardInterrupt | SystemExit):
            raise
        if isinstance(exc, Exception):
            raise ExportError(f"export of {source} to {target} failed: {type(exc).__name__}: {exc}") from exc
        raise
    return ExportResult(path=target, version=version, signatures=signatures, source=str(source),
                        replaced=replaced, warmup_sizes=sizes if kind == "deeplab" else [])


def _check_size(size: Any) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ExportError(f"warmup size must be (height, width), got {size!r}") from None
    if h < 1 or w < 1:
        raise ExportError(f"warmup size must be positive, got {h}x{w}")
    return h, w


# --- source loading ---


def _load_source(source: Path) -> tuple[Any, str]:
    """(keras model, "deeplab" | "generic")."""
    if source.is_dir():
        return _load_checkpoint_dir(source), "deeplab"
    if source.suffix == ".keras":
        if not source.is_file():
            raise ExportError(f"source {source} does not exist")
        if not zipfile.is_zipfile(source):  # keras would call it "File not found"
            raise ExportError(f"cannot load Keras model {source}: not a .keras file (not a zip archive)")
        return _load_keras_file(source)
    if not source.exists():
        raise ExportError(f"source {source} does not exist (expected a checkpoint directory or a .keras file)")
    raise ExportError(f"source {source} is neither a checkpoint directory with model.json nor a .keras file")


def _load_checkpoint_dir(ckpt_dir: Path) -> Any:
    import tensorflow as tf

    from tfsctl.models.deeplab import CONFIG_FILENAME, DeepLabConfig, build_deeplab, checkpoint_for

    config_path = ckpt_dir / CONFIG_FILENAME
    if not config_path.is_file():
        raise ExportError(f"{ckpt_dir} holds no {CONFIG_FILENAME}; a checkpoint directory needs it to rebuild "
                          "the model")
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
    ckpt = checkpoint_for(model)
    _check_checkpoint_matches(ckpt, prefix)
    try:
        status = ckpt.read(str(prefix))
        status.assert_consumed()
    except (AssertionError, ValueError, tf.errors.OpError) as exc:
        raise ExportError(f"checkpoint {prefix} does not match {config_path}: {_first_line(exc)}") from None
    return model


def _check_checkpoint_matches(ckpt: Any, prefix: Path) -> None:
    """Compare the checkpoint's variables with the model's, naming every missing / unexpected / reshaped one.

    The model's own keys come from writing its (fresh) weights to a scratch checkpoint: that is the only way to
    get exactly the keys ``tf.train.Checkpoint`` will look up, without private TF APIs.
    """
    import tensorflow as tf

    try:
        stored = {k: tuple(s) for k, s in tf.train.list_variables(str(prefix)) if not k.startswith("_")}
    except (tf.errors.OpError, ValueError) as exc:
        raise ExportError(f"cannot read checkpoint {prefix}: {_first_line(exc)}") from None
    with tempfile.TemporaryDirectory(prefix="tfsctl-ckpt-") as scratch:
        written = ckpt.write(os.path.join(scratch, "ckpt"))
        expected = {k: tuple(s) for k, s in tf.train.list_variables(written) if not k.startswith("_")}
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
    if problems:
        raise ExportError(f"checkpoint {prefix} does not match model.json: " + "; ".join(problems))


def _short(key: str) -> str:
    return key.replace("/.ATTRIBUTES/VARIABLE_VALUE", "")


def _names(keys: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(_short(k) for k in keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _load_keras_file(path: Path) -> tuple[Any, str]:
    import keras

    import tfsctl.models.deeplab  # noqa: F401 - registers the custom layers a DeepLab .keras file refers to

    try:
        model = keras.saving.load_model(str(path), compile=False)
    except Exception as exc:  # noqa: BLE001 - keras raises many types for a bad file
        raise ExportError(f"cannot load Keras model {path}: {_first_line(exc)}") from None
    try:
        inputs, outputs = list(model.inputs), list(model.outputs)
    except (AttributeError, ValueError):
        raise ExportError(f"{path}: the model has no defined inputs/outputs (build or call it before saving)") \
            from None
    if not inputs or not outputs:
        raise ExportError(f"{path}: the model has no defined inputs/outputs")
    return model, ("deeplab" if _is_deeplab_shaped(model) else "generic")


def _is_deeplab_shaped(model: Any) -> bool:
    """One [N, H, W, 3] float input and one [N, H', W', C] output: a dense-prediction image model."""
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        return False
    ins, outs = tuple(model.inputs[0].shape), tuple(model.outputs[0].shape)
    if len(ins) != 4 or len(outs) != 4 or ins[3] != 3 or not outs[3]:
        return False
    return "float" in str(model.inputs[0].dtype)


# --- SavedModel writing ---


def _write_saved_model(model: Any, kind: str, export_dir: Path, sizes: list[tuple[int, int]], max_pixels: int,
                       *, model_name: str) -> list[str]:
    import tensorflow as tf

    from tfsctl.savedmodel import CLASSIFY_METHOD, set_method_names

    if kind == "deeplab":
        module = _DeepLabModule(model, max_pixels)
        predict = module.fns.predict_images.get_concrete_function()
        signatures = {PREDICT_SIGNATURE: predict, DEFAULT_SIGNATURE: predict,
                      CLASSIFY_SIGNATURE: module.fns.classify.get_concrete_function()}
        tf.saved_model.save(module, str(export_dir), signatures=signatures)
        set_method_names(export_dir, {CLASSIFY_SIGNATURE: CLASSIFY_METHOD})
        _write_warmup(export_dir, sizes, model_name)
    else:
        module = _generic_module(model)
        signatures = {DEFAULT_SIGNATURE: module.fns.serve.get_concrete_function()}
        tf.saved_model.save(module, str(export_dir), signatures=signatures)
    return sorted(signatures)


def _deeplab_module_class() -> type:
    import tensorflow as tf

    from tfsctl.voc import VOC_CLASSES

    class DeepLabModule(tf.Module):
        """Serving wrapper: uint8 images in, class map out; classify over encoded images in tf.Examples."""

        def __init__(self, model: Any, max_pixels: int) -> None:
            super().__init__(name="deeplab_serving")
            # Track only the variables, not the Keras model: saving the Keras object graph triples export time
            # and nothing in serving needs it. The model itself stays reachable through a plain closure.
            self.model_variables = [_tf_variable(v) for v in model.weights]
            # One traced graph of the model, called from every signature (three inline traces triple export time).
            # The tf.functions live in a plain namespace, not as tracked attributes: tf.saved_model.save would
            # otherwise re-trace every attribute function, doubling export time for nothing a server uses.
            self.fns = types.SimpleNamespace(call_model=tf.function(
                lambda x: model(x, training=False), input_signature=[
                    tf.TensorSpec([None, None, None, 3], tf.float32)], autograph=False))
            self.num_classes = int(model.outputs[0].shape[-1])
            in_shape = tuple(model.inputs[0].shape)
            self.fixed_size = (in_shape[1], in_shape[2]) if in_shape[1] and in_shape[2] else None
            self.max_pixels = max_pixels
            names = list(VOC_CLASSES) if self.num_classes == len(VOC_CLASSES) else \
                [f"class_{i}" for i in range(self.num_classes)]
            self.class_names = tf.constant(names)
            self.fns.predict_images = tf.function(self._predict_images, autograph=False, input_signature=[
                tf.TensorSpec([None, None, None, 3], tf.uint8, name="images"),
                tf.TensorSpec([None], tf.int32, name="height"),
                tf.TensorSpec([None], tf.int32, name="width"),
            ])
            self.fns.classify = tf.function(self._classify, autograph=False, input_signature=[
                tf.TensorSpec([None], tf.string, name="inputs")])

        def _logits(self, images: tf.Tensor) -> tf.Tensor:
            """float logits [N, h, w, C] at the size of ``images`` (uint8 [N, h, w, 3])."""
            x = tf.cast(images, tf.float32)
            if self.fixed_size is None:
                return tf.cast(self.fns.call_model(x), tf.float32)
            size = tf.shape(x)[1:3]
            x = tf.image.resize(x, self.fixed_size, method="bilinear")
            return tf.image.resize(tf.cast(self.fns.call_model(x), tf.float32), size, method="bilinear")

        def _predict_images(self, images: tf.Tensor, height: tf.Tensor, width: tf.Tensor) -> dict[str, tf.Tensor]:
            shape = tf.shape(images)
            n, h, w = shape[0], shape[1], shape[2]
            checks = [
                tf.debugging.assert_equal(tf.size(height), n, message="predict_images: input height must hold "
                                          "one value per image (length N of input images)"),
                tf.debugging.assert_equal(tf.size(width), n, message="predict_images: input width must hold "
                                          "one value per image (length N of input images)"),
                tf.debugging.assert_greater(tf.minimum(h, w), 0, message="predict_images: input images is "
                                            "empty (zero height or width)"),
                # Activations and `probabilities` grow with H*W: bound them before the model runs.
                tf.debugging.assert_less_equal(
                    tf.cast(h, tf.int64) * tf.cast(w, tf.int64), tf.constant(self.max_pixels, tf.int64),
                    message=f"predict_images: input images is larger than the limit of {self.max_pixels} "
                            "pixels per image (tfsctl export --max-image-pixels)"),
            ]
            with tf.control_dependencies(checks):
                checks = [
                    tf.debugging.assert_greater_equal(height, 1, message="predict_images: input height "
                                                      "must be >= 1"),
                    tf.debugging.assert_less_equal(height, h, message="predict_images: input height must be "
                                                   "<= the height of input images"),
                    tf.debugging.assert_greater_equal(width, 1, message="predict_images: input width must "
                                                      "be >= 1"),
                    tf.debugging.assert_less_equal(width, w, message="predict_images: input width must be "
                                                   "<= the width of input images"),
                ]
            with tf.control_dependencies(checks):
                images = tf.identity(images)
            full = tf.reduce_all(tf.equal(height, h)) & tf.reduce_all(tf.equal(width, w))

            def whole_batch() -> tf.Tensor:
                return tf.nn.softmax(self._logits(images))

            def per_image() -> tf.Tensor:
                # Segment each image on its valid area only (padding must not leak into image pooling).
                def one(args: tuple[tf.Tensor, tf.Tensor, tf.Tensor]) -> tf.Tensor:
                    img, hh, ww = args
                    probs = tf.nn.softmax(self._logits(img[None, :hh, :ww]))[0]
                    return tf.pad(probs, [[0, h - hh], [0, w - ww], [0, 0]])

                return tf.map_fn(one, (images, height, width),
                                 fn_output_signature=tf.TensorSpec([None, None, self.num_classes], tf.float32))

            probs = tf.cond(full, whole_batch, per_image)
            valid = (tf.range(h)[None, :, None] < height[:, None, None]) & \
                    (tf.range(w)[None, None, :] < width[:, None, None])
            probs = probs * tf.cast(valid, tf.float32)[..., None]
            seg = tf.where(valid, tf.argmax(probs, axis=-1), tf.zeros([], tf.int64))
            return {"segmentation_map": seg, "probabilities": probs}

        def _image_dims(self, data: tf.Tensor) -> tf.Tensor:
            """[height, width] int64 from the PNG IHDR or JPEG SOF header; InvalidArgument for anything else."""
            is_png = tf.equal(tf.strings.substr(data, 0, 8), _PNG_SIGNATURE)
            is_jpeg = tf.io.is_jpeg(data)
            check = tf.debugging.assert_equal(is_png | is_jpeg, True, message="classify: feature "
                                              "image/encoded is neither a PNG nor a JPEG image")
            with tf.control_dependencies([check]):
                is_png = tf.identity(is_png)

            def png_dims() -> tf.Tensor:
                long_enough = tf.debugging.assert_greater_equal(tf.strings.length(data), 24, message="classify: "
                                                                "feature image/encoded is a truncated PNG")
                with tf.control_dependencies([long_enough]):
                    b = tf.cast(tf.io.decode_raw(tf.strings.substr(data, 16, 8), tf.uint8), tf.int64)
                width = ((b[0] * 256 + b[1]) * 256 + b[2]) * 256 + b[3]
                height = ((b[4] * 256 + b[5]) * 256 + b[6]) * 256 + b[7]
                return tf.stack([height, width])

            def jpeg_dims() -> tf.Tensor:
                return tf.cast(tf.io.extract_jpeg_shape(data)[:2], tf.int64)

            return tf.cond(is_png, png_dims, jpeg_dims)

        def _classify(self, inputs: tf.Tensor) -> dict[str, tf.Tensor]:
            features = tf.io.parse_example(inputs, {"image/encoded": tf.io.FixedLenFeature([], tf.string)})

            def one(data: tf.Tensor) -> tf.Tensor:
                dims = self._image_dims(data)
                pixels = dims[0] * dims[1]
                checks = [
                    tf.debugging.assert_greater(pixels, tf.constant(0, tf.int64), message="classify: feature "
                                                "image/encoded has an empty image"),
                    tf.debugging.assert_less_equal(pixels, tf.constant(self.max_pixels, tf.int64), message=(
                        f"classify: feature image/encoded is larger than the limit of {self.max_pixels} "
                        "pixels")),
                ]
                with tf.control_dependencies(checks):
                    image = tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)
                image.set_shape([None, None, 3])
                pred = tf.argmax(self._logits(image[None]), axis=-1, output_type=tf.int32)
                counts = tf.math.bincount(tf.reshape(pred, [-1]), minlength=self.num_classes,
                                          maxlength=self.num_classes, dtype=tf.float32)
                return counts / tf.cast(tf.size(pred), tf.float32)

            scores = tf.map_fn(one, features["image/encoded"],
                               fn_output_signature=tf.TensorSpec([self.num_classes], tf.float32))
            classes = tf.tile(self.class_names[None], [tf.shape(inputs)[0], 1])
            return {"classes": classes, "scores": scores}

    return DeepLabModule


def _DeepLabModule(model: Any, max_pixels: int) -> Any:  # noqa: N802 - reads as a class at the call site
    return _deeplab_module_class()(model, max_pixels)


def _generic_module(model: Any) -> Any:
    """serving_default over a Keras model's own inputs (named as the model names them) and outputs."""
    import tensorflow as tf

    specs = []
    used: set[str] = set()
    for i, t in enumerate(model.inputs):
        name = _tensor_name(getattr(t, "name", "") or f"input_{i}", used)
        specs.append(tf.TensorSpec(tuple(t.shape), tf.as_dtype(t.dtype), name=name))
    out_names = list(getattr(model, "output_names", None) or [])
    if len(out_names) != len(model.outputs):
        out_names = [f"output_{i}" for i in range(len(model.outputs))]
    out_used: set[str] = set()
    out_names = [_tensor_name(n, out_used) for n in out_names]

    module = tf.Module(name="keras_serving")
    module.model_variables = [_tf_variable(v) for v in model.weights]

    def serve(*args: tf.Tensor) -> dict[str, tf.Tensor]:
        result = model(list(args) if len(args) > 1 else args[0], training=False)
        if isinstance(result, dict):
            return {_tensor_name(k, set()): v for k, v in result.items()}
        results = result if isinstance(result, list | tuple) else [result]
        return dict(zip(out_names, results, strict=True))

    module.fns = types.SimpleNamespace(serve=tf.function(serve, input_signature=specs, autograph=False))
    return module


def _tf_variable(v: Any) -> Any:
    """The tf.Variable behind a Keras 3 variable (the object SavedModel must reach to save its value)."""
    return getattr(v, "value", v)


def _tensor_name(name: str, used: set[str]) -> str:
    """A valid, unique signature key from a Keras tensor name (``input_layer:0`` -> ``input_layer``)."""
    clean = re.sub(r"[^A-Za-z0-9_.\-]", "_", name.split(":")[0]) or "tensor"
    if not re.match(r"[A-Za-z0-9.]", clean[0]):
        clean = f"t{clean}"
    candidate, i = clean, 1
    while candidate in used:
        candidate, i = f"{clean}_{i}", i + 1
    used.add(candidate)
    return candidate


def _write_warmup(export_dir: Path, sizes: list[tuple[int, int]], model_name: str) -> None:
    """assets.extra/tf_serving_warmup_requests: one predict_images PredictionLog per (height, width)."""
    if not sizes:
        return
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    from tfsctl.serving.tensors import from_numpy

    extra = export_dir / "assets.extra"
    extra.mkdir(exist_ok=True)
    with tf.io.TFRecordWriter(str(extra / WARMUP_FILENAME)) as writer:
        for h, w in sizes:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = model_name
            request.model_spec.signature_name = PREDICT_SIGNATURE
            request.inputs["images"].CopyFrom(from_numpy(np.zeros((1, h, w, 3), np.uint8)))
            request.inputs["height"].CopyFrom(from_numpy(np.array([h], np.int32)))
            request.inputs["width"].CopyFrom(from_numpy(np.array([w], np.int32)))
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())


# --- atomic placement ---

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with renameat2(RENAME_EXCHANGE); False where the OS/libc cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    rc = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return rc == 0


def _move_into_place(tmp: Path, target: Path, force: bool) -> bool:
    """Rename the finished temp dir to ``target``; returns True when an existing version was replaced."""
    if not target.exists():
        try:
            os.rename(tmp, target)
            return False
        except OSError:
            if not (target.exists() and force):  # lost a race with another writer
                raise ExportError(f"version directory {target} appeared while exporting; not overwriting it") \
                    from None
    if not force:
        raise ExportError(f"version {target.name} already exists at {target}; pass --force to replace it")
    if _exchange(tmp, target):
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old version
        return True
    old = Path(tempfile.mkdtemp(prefix=f".old-{target.name}-", dir=target.parent))
    os.rename(target, old / "v")
    try:
        os.rename(tmp, target)
    except OSError:
        os.rename(old / "v", target)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)
    return True
