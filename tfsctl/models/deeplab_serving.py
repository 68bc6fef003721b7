"""The serving graph of a DeepLab-shaped Keras model: what ``tfsctl export`` wraps a segmenter in.

Signatures (tag ``serve``), the classic DeepLab serving contract:

* ``predict_images`` = ``serving_default``: ``images`` uint8 [N, H, W, 3] plus ``height`` / ``width`` int32 [N], the
  valid (unpadded) size of each image, as the classic DeepLab serving example sends -> ``segmentation_map`` int64
  [N, H, W] only (0 outside each image's valid area). An unfiltered reply for a 1080p image stays under gRPC's
  default 4 MB receive limit, as the classic export's did.
* ``predict_probabilities``: the same inputs -> ``probabilities`` float32 [N, H, W, C] (0 outside the valid area).
* ``classify`` (method ``tensorflow/serving/classify``): serialized ``tf.Example`` with bytes feature
  ``image/encoded`` (PNG or JPEG) -> ``classes`` (VOC names) and ``scores`` (share of pixels per class).
  Image dimensions are read from the PNG/JPEG header and checked against a pixel limit *before* decoding.
"""

from __future__ import annotations

import io
import types
from typing import Any

from tfsctl.model_layout import DEFAULT_SIGNATURE

PREDICT_SIGNATURE = "predict_images"
PROBABILITIES_SIGNATURE = "predict_probabilities"
CLASSIFY_SIGNATURE = "classify"
DEFAULT_MAX_IMAGE_PIXELS = 2048 * 2048
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def is_deeplab_shaped(model: Any) -> bool:
    """One [N, H, W, 3] float input and one [N, H', W', C] output: a dense-prediction image model."""
    try:
        inputs, outputs = list(model.inputs), list(model.outputs)
    except (AttributeError, ValueError):
        return False
    if len(inputs) != 1 or len(outputs) != 1:
        return False
    ins, outs = tuple(inputs[0].shape), tuple(outputs[0].shape)
    if len(ins) != 4 or len(outs) != 4 or ins[3] != 3 or not outs[3]:
        return False
    return "float" in str(inputs[0].dtype)


def serving_signatures(model: Any, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> tuple[Any, dict[str, Any]]:
    """(module to save, {signature name: concrete function}) for ``tf.saved_model.save``."""
    module = _deeplab_module_class()(model, max_pixels)
    predict = module.fns.predict_images.get_concrete_function()
    return module, {PREDICT_SIGNATURE: predict, DEFAULT_SIGNATURE: predict,
                    PROBABILITIES_SIGNATURE: module.fns.predict_probabilities.get_concrete_function(),
                    CLASSIFY_SIGNATURE: module.fns.classify.get_concrete_function()}


def warmup_logs(model_name: str, sizes: list[tuple[int, int]]) -> list[Any]:
    """PredictionLogs warming every signature: ``predict_images`` once per (height, width), then the others once.

    Each signature traces its own graph in the server, so a signature left cold pays its first-call cost (hundreds of
    milliseconds) on the first client request.
    """
    if not sizes:
        return []
    import numpy as np
    import tensorflow as tf
    from PIL import Image
    from tensorflow.core.example import example_pb2
    from tensorflow_serving.apis import classification_pb2, predict_pb2, prediction_log_pb2

    def predict(signature: str, h: int, w: int) -> Any:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model_name
        request.model_spec.signature_name = signature
        request.inputs["images"].CopyFrom(tf.make_tensor_proto(np.zeros((1, h, w, 3), np.uint8)))
        request.inputs["height"].CopyFrom(tf.make_tensor_proto(np.array([h], np.int32)))
        request.inputs["width"].CopyFrom(tf.make_tensor_proto(np.array([w], np.int32)))
        return prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))

    logs = [predict(PREDICT_SIGNATURE, h, w) for h, w in sizes]
    h, w = sizes[0]
    logs += [predict(DEFAULT_SIGNATURE, h, w), predict(PROBABILITIES_SIGNATURE, h, w)]
    png = io.BytesIO()
    Image.new("RGB", (w, h)).save(png, format="PNG")
    example = example_pb2.Example()
    example.features.feature["image/encoded"].bytes_list.value.append(png.getvalue())
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = CLASSIFY_SIGNATURE
    request.input.example_list.examples.append(example)
    logs.append(prediction_log_pb2.PredictionLog(
        classify_log=prediction_log_pb2.ClassifyLog(request=request)))
    return logs


def _tf_variable(v: Any) -> Any:
    """The tf.Variable behind a Keras 3 variable (the object SavedModel must reach to save its value)."""
    return getattr(v, "value", v)


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
            # One traced graph of the model, called from every signature (inline traces multiply export time).
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
            image_specs = [
                tf.TensorSpec([None, None, None, 3], tf.uint8, name="images"),
                tf.TensorSpec([None], tf.int32, name="height"),
                tf.TensorSpec([None], tf.int32, name="width"),
            ]
            self.fns.predict_images = tf.function(
                lambda images, height, width: {"segmentation_map": self._segment(images, height, width)[0]},
                autograph=False, input_signature=image_specs)
            self.fns.predict_probabilities = tf.function(
                lambda images, height, width: {"probabilities": self._segment(images, height, width)[1]},
                autograph=False, input_signature=image_specs)
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

        def _segment(self, images: tf.Tensor, height: tf.Tensor, width: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            """(segmentation_map int64 [N, H, W], probabilities float32 [N, H, W, C]), both 0 outside each image."""
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
            return seg, probs

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
