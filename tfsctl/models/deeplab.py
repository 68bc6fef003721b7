"""A small DeepLab v3 (Chen et al. 2017, "Rethinking Atrous Convolution") sized for CPU training.

Architecture, as in the paper but narrow:

* backbone: a strided conv stem down to ``output_stride`` (each stage conv-BN-ReLU, stride 2), then residual
  blocks whose 3x3 convs are dilated (atrous) instead of strided, so resolution stays at 1/``output_stride``;
* ASPP: a 1x1 branch, three 3x3 atrous branches (``atrous_rates``, default 6/12/18) and an image-pooling branch
  (global average pool, 1x1 conv, bilinear upsample), concatenated and projected by a 1x1 conv;
* a 3x3 conv head (as torchvision's DeepLabHead), a 1x1 classifier and bilinear upsampling of the logits back to
  the input size.

The model takes raw float32 pixels 0..255 (normalised inside) of any height and width and returns logits
``[N, H, W, num_classes]``. Weights are plain Keras variables written with ``tf.train.Checkpoint`` (see
:func:`checkpoint_for`); ``model.json`` (``DeepLabConfig``) is everything needed to rebuild the graph.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

CONFIG_FILENAME = "model.json"
CHECKPOINT_PREFIX = "ckpt"
ARCHITECTURE = "deeplab_v3"


@dataclass
class DeepLabConfig:
    """Architecture and training hyper-parameters of a DeepLab v3 model, stored as ``model.json``.

    ``class_ids`` lists the PASCAL VOC ids the data set actually draws (background included); the classifier
    always has ``num_classes`` outputs so the label space is the full VOC one.
    """

    architecture: str = ARCHITECTURE
    num_classes: int = 21
    class_ids: list[int] = field(default_factory=lambda: list(range(21)))
    stem_widths: list[int] = field(default_factory=lambda: [16, 32, 64])
    block_width: int = 64
    num_blocks: int = 2
    block_dilation: int = 2
    output_stride: int = 8
    atrous_rates: list[int] = field(default_factory=lambda: [6, 12, 18])
    aspp_width: int = 64
    dropout: float = 0.1
    crop_size: list[int] = field(default_factory=lambda: [128, 128])
    checkpoint_prefix: str = CHECKPOINT_PREFIX
    training: dict[str, Any] = field(default_factory=dict)
    dataset: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.architecture != ARCHITECTURE:
            raise ValueError(f"architecture {self.architecture!r} is not {ARCHITECTURE!r}")
        if 2 ** len(self.stem_widths) != self.output_stride:
            raise ValueError(f"{len(self.stem_widths)} stride-2 stem stages give output stride "
                             f"{2 ** len(self.stem_widths)}, not {self.output_stride}")
        if len(self.atrous_rates) != 3:
            raise ValueError(f"ASPP needs three atrous rates, got {self.atrous_rates}")
        if not 1 <= self.num_classes:
            raise ValueError(f"num_classes must be positive, got {self.num_classes}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeepLabConfig:
        """Build from a dict, rejecting unknown keys so a typo in model.json is an error, not a silent default."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model.json keys: {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def load(cls, path: str | Path) -> DeepLabConfig:
        """Read ``model.json`` (``path`` may be the file or the checkpoint directory holding it)."""
        p = Path(path)
        if p.is_dir():
            p = p / CONFIG_FILENAME
        data = json.loads(p.read_text())
        if not isinstance(data, dict):
            raise ValueError(f"{p}: expected a JSON object")
        return cls.from_dict(data)

    def save(self, path: str | Path) -> Path:
        """Write ``model.json`` (``path`` may be a directory); returns the file written."""
        p = Path(path)
        if p.is_dir():
            p = p / CONFIG_FILENAME
        p.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return p


@keras.saving.register_keras_serializable(package="tfsctl")
class ResizeLike(keras.layers.Layer):
    """Bilinear resize of ``x`` to the spatial size of ``ref`` (dynamic shapes; used for image pooling/logits)."""

    def call(self, x: Any, ref: Any) -> Any:
        size = tf.shape(ref)[1:3]
        return tf.cast(tf.image.resize(x, size, method="bilinear"), x.dtype)

    def compute_output_shape(self, x_shape: Any, ref_shape: Any) -> tuple:
        return (x_shape[0], ref_shape[1], ref_shape[2], x_shape[3])


def _conv_bn_relu(x: Any, filters: int, kernel: int, name: str, *, strides: int = 1, dilation: int = 1,
                  relu: bool = True) -> Any:
    x = keras.layers.Conv2D(filters, kernel, strides=strides, dilation_rate=dilation, padding="same",
                            use_bias=False, name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x) if relu else x


def build_deeplab(config: DeepLabConfig) -> keras.Model:
    """Build the Keras functional model described by ``config`` (input raw pixels, output logits)."""
    images = keras.Input(shape=(None, None, 3), dtype="float32", name="images")
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="normalize")(images)

    # Backbone: strided stem to the output stride, then atrous residual blocks at constant resolution.
    for i, width in enumerate(config.stem_widths):
        x = _conv_bn_relu(x, width, 3, f"stem{i + 1}", strides=2)
    if config.stem_widths[-1] != config.block_width:
        x = _conv_bn_relu(x, config.block_width, 1, "stem_proj")
    for b in range(config.num_blocks):
        d = config.block_dilation * (b + 1)
        y = _conv_bn_relu(x, config.block_width, 3, f"block{b + 1}a", dilation=d)
        y = _conv_bn_relu(y, config.block_width, 3, f"block{b + 1}b", dilation=d, relu=False)
        x = keras.layers.ReLU(name=f"block{b + 1}_out")(keras.layers.Add(name=f"block{b + 1}_add")([x, y]))
    features = x

    # ASPP: 1x1, three 3x3 atrous branches, image pooling.
    w = config.aspp_width
    branches = [_conv_bn_relu(features, w, 1, "aspp0")]
    for i, rate in enumerate(config.atrous_rates):
        branches.append(_conv_bn_relu(features, w, 3, f"aspp{i + 1}", dilation=rate))
    pooled = keras.layers.GlobalAveragePooling2D(keepdims=True, name="aspp_pool")(features)
    pooled = _conv_bn_relu(pooled, w, 1, "aspp_pool")
    branches.append(ResizeLike(name="aspp_pool_upsample")(pooled, features))
    x = keras.layers.Concatenate(name="aspp_concat")(branches)
    x = _conv_bn_relu(x, w, 1, "aspp_proj")
    if config.dropout:
        x = keras.layers.Dropout(config.dropout, name="aspp_dropout")(x)
    x = _conv_bn_relu(x, w, 3, "head")
    x = keras.layers.Conv2D(config.num_classes, 1, name="logits")(x)
    logits = ResizeLike(name="upsample_logits")(x, images)
    return keras.Model(images, logits, name="deeplab_v3")


def checkpoint_for(model: keras.Model) -> tf.train.Checkpoint:
    """The checkpoint layout shared by training and export: one root per weighted layer, keyed by layer name.

    Keras 3 would otherwise key variables by operation index (``model/_operations/12/...``), so a changed
    architecture restores garbage into the wrong layers; named keys (``aspp1_conv/_kernel/...``) make a mismatch
    visible and let export name the layers concerned.
    """
    return tf.train.Checkpoint(**{layer.name: layer for layer in model.layers if layer.weights})
