"""Models and a server for the v2 (Open Inference Protocol) tests: every v2 datatype a TF signature can carry.

``types`` (TF2 ``tf.saved_model.save``), ``serving_default`` with one input per kind of tensor users send:
``image`` uint8 [?,?,?,3] -> ``mean`` float32 [?] (per image) and ``inverted`` uint8 (255 - image); ``ids`` int64
[?] -> ``ids2`` int64 (x 2); ``text`` string [?] -> ``text_upper`` string; ``flags`` bool [?] -> ``flags_not``
bool; ``half`` float16 [?] -> ``half2`` float16 (x 2). Signature ``complex``: ``x`` float32 [?] -> ``z``
complex64 (a dtype v2 has no name for). The server serves it with the toy model and a TF1 half_plus_two export.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tfsctl.testing import _atomic_version_dir, write_tf1_half_plus, write_toy_model


def write_types_model(base_path: Path, version: int = 1) -> Path:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    class Types(tf.Module):
        @tf.function(input_signature=[
            tf.TensorSpec([None, None, None, 3], tf.uint8, name="image"),
            tf.TensorSpec([None], tf.int64, name="ids"),
            tf.TensorSpec([None], tf.string, name="text"),
            tf.TensorSpec([None], tf.bool, name="flags"),
            tf.TensorSpec([None], tf.float16, name="half"),
        ])
        def serve(self, image, ids, text, flags, half):  # noqa: ANN001, ANN202
            return {
                "mean": tf.reduce_mean(tf.cast(image, tf.float32), axis=[1, 2, 3]),
                "inverted": 255 - image,
                "ids2": ids * 2,
                "text_upper": tf.strings.upper(text),
                "flags_not": tf.logical_not(flags),
                "half2": half * tf.constant(2.0, tf.float16),
            }

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def complex(self, x):  # noqa: ANN001, ANN202
            return {"z": tf.complex(x, x)}

    module = Types()

    def write(export_dir: Path) -> None:
        tf.saved_model.save(module, str(export_dir), signatures={
            "serving_default": module.serve.get_concrete_function(),
            "complex": module.complex.get_concrete_function()})

    return _atomic_version_dir(base_path, version, write)


def write_models(root: Path) -> Path:
    """toy (y = 2x), types, tf1 (half_plus_two) under ``root``; returns the model config file."""
    write_toy_model(root / "toy", 1, scale=2.0)
    write_types_model(root / "types")
    write_tf1_half_plus(root / "tf1", 1)
    config = root / "models.config"
    entries = "".join(f'config {{ name: "{n}" base_path: "{root / n}" model_platform: "tensorflow" }} '
                      for n in ("toy", "types", "tf1"))
    config.write_text(f"model_config_list {{ {entries}}}")
    return config


def serve(config: Path, **options: object):  # noqa: ANN201 - a context manager yielding a ready ModelServer
    """The v2 test models served with gRPC and REST, ready within 120 s, stopped on exit."""
    from tfsctl.serving.testing import served

    return served(rest=True, ready_timeout=120, grace=2, model_config_file=str(config),
                  file_system_poll_wait_seconds=0.2, **options)


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
