"""Read a model's SignatureDef (from GetModelMetadata) and decide how an image goes in and what comes out.

The same rules serve every TF Serving image model, not only tfsctl's export:

- **signature**: ``--signature`` if given; else ``serving_default`` when the model has it; else the model's only
  signature (an export without ``serving_default`` that has exactly one); otherwise the user must choose.
- **image input**: ``--input-key``, else the one 4-D numeric input whose last dimension is 3, 1 or unknown.
  Its dtype decides the cast (uint8 as is; floats 0..255 unless ``--scale``); fixed H/W dims resize the image.
- **height/width inputs** (``height``/``width``, ``image_height``/``image_width``) are filled with the size sent,
  as scalars or ``[N]`` after their declared rank. Any other input is an error that names it.
- **outputs**: ``--output-key``, else an integer map ([N,H,W], [H,W], [N,H,W,1]), else float [N,H,W,C] scores
  (argmax), else a classification (``classes``/``scores`` or a float [N,C] tensor). Only these outputs are asked
  for (``output_filter``), so a large ``probabilities`` output never travels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tfsctl.errors import ClientError
from tfsctl.model_layout import DEFAULT_SIGNATURE  # pure Python: tfsctl.savedmodel would load TensorFlow's protos

HEIGHT_NAMES = ("height", "image_height", "img_height")
WIDTH_NAMES = ("width", "image_width", "img_width")
SCORE_NAMES = ("scores", "probabilities", "probs", "logits", "predictions")
CLASS_NAMES = ("classes", "class_ids", "labels")
SCALES = ("0-255", "0-1", "-1-1")


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a signature: key, ``DT_*`` dtype name, numpy dtype (None for strings), shape."""

    key: str
    dtype_name: str
    np_dtype: np.dtype | None
    shape: tuple[int, ...] | None  # -1 = unknown dim; None = unknown rank

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    @property
    def kind(self) -> str:
        """``i`` (integer), ``f`` (float), ``b`` (bool), ``S`` (string) or ``?``."""
        if self.np_dtype is None:
            return "S" if self.dtype_name == "DT_STRING" else "?"
        return "i" if self.np_dtype.kind in "iu" else self.np_dtype.kind

    def describe(self) -> str:
        shape = "?" if self.shape is None else "[" + ",".join("?" if d < 0 else str(d) for d in self.shape) + "]"
        return f"'{self.key}' {self.dtype_name} {shape}"


def tensor_specs(infos: Any) -> dict[str, TensorSpec]:
    """``{key: TensorSpec}`` from a SignatureDef's ``inputs`` or ``outputs`` map of TensorInfo."""
    from tfsctl.client.apis import dtype_name, shape_of

    out = {}
    for key, info in infos.items():
        name = dtype_name(info.dtype)
        np_dtype = _NP_BY_NAME.get(name)
        out[key] = TensorSpec(key, name, None if np_dtype is None else np.dtype(np_dtype), shape_of(info.tensor_shape))
    return out


_NP_BY_NAME = {
    "DT_FLOAT": np.float32, "DT_DOUBLE": np.float64, "DT_HALF": np.float16, "DT_BFLOAT16": None,
    "DT_UINT8": np.uint8, "DT_INT8": np.int8, "DT_UINT16": np.uint16, "DT_INT16": np.int16, "DT_INT32": np.int32,
    "DT_INT64": np.int64, "DT_UINT32": np.uint32, "DT_UINT64": np.uint64, "DT_BOOL": np.bool_,
}


def resolve_signature(signatures: dict[str, Any], requested: str = "", model: str = "") -> str:
    """The signature to call: ``requested``, else ``serving_default``, else the only one the model has."""
    public = sorted(k for k in signatures if not k.startswith("__"))
    what = f"model '{model}'" if model else "the model"
    if requested:
        if requested not in signatures:
            raise ClientError(f"{what} has no signature '{requested}' (has: {', '.join(public) or 'none'})")
        return requested
    if DEFAULT_SIGNATURE in signatures:
        return DEFAULT_SIGNATURE
    if len(public) == 1:
        return public[0]
    raise ClientError(
        f"{what} has no '{DEFAULT_SIGNATURE}' signature; choose one with --signature (has: {', '.join(public)})"
    )


@dataclass(frozen=True)
class ImagePlan:
    """How to turn one decoded image into a PredictRequest for ``signature``, and which outputs to ask for."""

    signature: str
    image: TensorSpec
    channels: int  # 3 (RGB) or 1 (grey)
    fixed_size: tuple[int, int] | None  # (height, width) the signature requires, if it fixes them
    size_inputs: dict[str, tuple[str, TensorSpec]] = field(default_factory=dict)  # key -> ("height"|"width", spec)
    outputs: tuple[str, ...] = ()
    output_specs: dict[str, TensorSpec] = field(default_factory=dict)
    scale: str = "0-255"

    def inputs(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """The request's tensors for one ``[H, W, C]`` uint8 image already sized for the model."""
        h, w = image.shape[:2]
        dtype = self.image.np_dtype
        assert dtype is not None
        if dtype.kind == "f":
            arr = image.astype(dtype)
            if self.scale == "0-1":
                arr = arr / np.asarray(255.0, dtype)
            elif self.scale == "-1-1":
                arr = arr / np.asarray(127.5, dtype) - np.asarray(1.0, dtype)
        else:
            arr = image.astype(dtype, copy=False)
        tensors = {self.image.key: np.ascontiguousarray(arr[None])}
        for key, (which, spec) in self.size_inputs.items():
            value = h if which == "height" else w
            np_dtype = spec.np_dtype or np.dtype(np.int32)
            tensors[key] = np.asarray(value, np_dtype) if spec.rank == 0 else np.asarray([value], np_dtype)
        return tensors


def _is_image_candidate(spec: TensorSpec) -> bool:
    return (
        spec.rank == 4
        and spec.kind in "if"
        and spec.np_dtype is not None
        and spec.shape is not None
        and spec.shape[-1] in (3, 1, -1)
    )


def plan_image_request(
    sig_def: Any,
    signature: str,
    *,
    model: str = "",
    input_key: str | None = None,
    output_keys: tuple[str, ...] = (),
    scale: str = "0-255",
    any_outputs: bool = False,
) -> ImagePlan:
    """Map a SignatureDef to an :class:`ImagePlan`; any input predict cannot fill is a ClientError naming it.

    ``any_outputs`` skips choosing outputs (bench sends the image to whatever signature it is given).
    """
    if scale not in SCALES:
        raise ClientError(f"--scale must be one of {', '.join(SCALES)}, got {scale!r}")
    inputs = tensor_specs(sig_def.inputs)
    outputs = tensor_specs(sig_def.outputs)
    where = f"signature '{signature}'" + (f" of model '{model}'" if model else "")
    listing = ", ".join(s.describe() for s in inputs.values()) or "none"
    if input_key:
        if input_key not in inputs:
            raise ClientError(f"{where} has no input '{input_key}' (inputs: {listing})")
        image = inputs[input_key]
        if image.kind not in "if" or image.rank not in (4, None):
            raise ClientError(f"input {image.describe()} of {where} is not an image tensor [N,H,W,C] of numbers")
    else:
        candidates = [s for s in inputs.values() if _is_image_candidate(s)]
        if not candidates:
            raise ClientError(
                f"{where} has no image input (a 4-D numeric [N,H,W,3] tensor); inputs: {listing}. "
                "Name one with --input-key"
            )
        if len(candidates) > 1:
            names = ", ".join(c.key for c in candidates)
            raise ClientError(f"{where} has several image-like inputs ({names}); choose one with --input-key")
        image = candidates[0]
    if image.np_dtype is None:
        raise ClientError(f"input {image.describe()} of {where}: dtype {image.dtype_name} cannot carry pixels")
    channels = 1 if image.shape is not None and image.shape[-1] == 1 else 3
    fixed = None
    if image.shape is not None and image.shape[1] > 0 and image.shape[2] > 0:
        fixed = (int(image.shape[1]), int(image.shape[2]))
    size_inputs: dict[str, tuple[str, TensorSpec]] = {}
    for key, spec in inputs.items():
        if key == image.key:
            continue
        low = key.lower()
        which = "height" if low in HEIGHT_NAMES else "width" if low in WIDTH_NAMES else None
        if which is not None and spec.kind == "i" and spec.rank in (0, 1, None):
            size_inputs[key] = (which, spec)
            continue
        raise ClientError(
            f"{where} also needs input {spec.describe()}, which tfsctl predict cannot fill from an image "
            f"(it fills the image input '{image.key}' and height/width inputs)"
        )
    chosen = tuple(output_keys) if any_outputs else choose_outputs(outputs, output_keys, where)
    return ImagePlan(signature, image, channels, fixed, size_inputs, chosen, outputs, scale)


def choose_outputs(outputs: dict[str, TensorSpec], requested: tuple[str, ...], where: str) -> tuple[str, ...]:
    """The outputs to ask for: ``requested`` (checked), else the best segmentation or classification outputs."""
    listing = ", ".join(s.describe() for s in outputs.values()) or "none"
    if requested:
        for key in requested:
            if key not in outputs:
                raise ClientError(f"{where} has no output '{key}' (outputs: {listing})")
        return tuple(requested)
    if not outputs:
        raise ClientError(f"{where} has no outputs")
    if len(outputs) == 1:
        return (next(iter(outputs)),)

    def named(spec: TensorSpec, words: tuple[str, ...]) -> bool:
        return any(w in spec.key.lower() for w in words)

    masks = [s for s in outputs.values() if s.kind == "i" and s.rank in (2, 3) or
             (s.kind == "i" and s.rank == 4 and s.shape is not None and s.shape[-1] == 1)]
    if masks:
        masks.sort(key=lambda s: (not named(s, ("seg", "semantic", "mask")), s.rank != 3, s.key))
        return (masks[0].key,)
    maps = [s for s in outputs.values() if s.kind == "f" and s.rank == 4]
    if maps:
        maps.sort(key=lambda s: (not named(s, ("logit", "prob", "score", "seg")), s.key))
        return (maps[0].key,)
    scores = [s for s in outputs.values() if s.kind == "f" and s.rank in (1, 2)]
    if scores:
        scores.sort(key=lambda s: (not named(s, SCORE_NAMES), s.rank != 2, s.key))
        keys = [scores[0].key]
        classes = [s for s in outputs.values() if s.key != scores[0].key and named(s, CLASS_NAMES)
                   and s.kind in "iS" and s.rank in (1, 2, None)]
        if classes:
            keys.append(sorted(classes, key=lambda s: s.key)[0].key)
        return tuple(keys)
    raise ClientError(
        f"{where}: no output looks like a class map or class scores (outputs: {listing}); name one with --output-key"
    )
