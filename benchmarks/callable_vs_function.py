"""Per-call cost of the request core's pieces, measured in one run on this machine.

1. Running a half_plus_two-alike (TF2 ``tf.saved_model.save`` export, ``x`` float [1] -> ``y``):
   - the session callable tfsctl serves with (``Loader`` -> ``Servable.run``, the SavedModelBundle path), and its
     bare ``_make_callable_from_options`` callable, through TF's inter-op pool and in the caller's thread;
   - the TF2 signature call (``tf.saved_model.load(...).signatures[...]`` with ``convert_to_tensor``), what tfsctl
     used before.
2. Encoding a reply tensor: typed ``*_val`` fields (TF Serving's default, ``AsProtoField``) against
   ``tensor_content`` (``--enable_serialization_as_tensor_content``), for the toy output and DeepLab-sized outputs.

Usage: ``python benchmarks/callable_vs_function.py [--calls 5000]``. Prints microseconds per call and ratios.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


def per_call_us(fn: Callable[[], object], calls: int, repeats: int = 3) -> float:
    """Best of ``repeats`` runs of ``calls`` calls, in microseconds per call (after a warm-up)."""
    for _ in range(min(200, calls)):
        fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return best * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    args = parser.parse_args()

    import tensorflow as tf
    from tensorflow.core.protobuf import config_pb2

    from tfsctl.core.loader import Loader
    from tfsctl.tensors import as_proto_content, as_proto_field
    from tfsctl.testing import write_tf2_half_plus_two

    with tempfile.TemporaryDirectory() as tmp:
        path = write_tf2_half_plus_two(Path(tmp) / "hp2", 1)
        servable = Loader("hp2", 1, path).load()
        x = np.array([2.0], np.float32)
        assert servable.run("", {"x": x})["y"].tolist() == [3.0]
        spec = servable.signature("")
        opts = config_pb2.CallableOptions(feed=[spec.inputs["x"].tensor_name], fetch=[spec.outputs["y"].tensor_name])
        bare = servable.session._make_callable_from_options(opts)
        caller = config_pb2.CallableOptions()
        caller.CopyFrom(opts)
        caller.run_options.inter_op_thread_pool = -1  # the step in the caller's thread (what Servable.run adopts)
        inline = servable.session._make_callable_from_options(caller)
        loaded = tf.saved_model.load(str(path))
        fn = loaded.signatures["serving_default"]
        assert fn(x=tf.convert_to_tensor(x))["y"].numpy().tolist() == [3.0]

        run_us = per_call_us(lambda: servable.run("", {"x": x}), args.calls)
        bare_us = per_call_us(lambda: bare(x), args.calls)
        inline_us = per_call_us(lambda: inline(x), args.calls)
        tf2_us = per_call_us(lambda: fn(x=tf.convert_to_tensor(x))["y"].numpy(), args.calls)
        servable.close()

    print(f"half_plus_two, one call ({args.calls} calls, best of 3):")
    print(f"  session callable (bare, pool)     {bare_us:8.1f} us")
    print(f"  session callable (caller thread)  {inline_us:8.1f} us")
    print(f"  Servable.run (checks + callable)  {run_us:8.1f} us")
    print(f"  TF2 signature call                {tf2_us:8.1f} us")
    print(f"  TF2 call / Servable.run           {tf2_us / run_us:8.2f} x")

    outputs = {
        "toy y float32 [1,4]": np.arange(4, dtype=np.float32).reshape(1, 4),
        "deeplab segmentation_map int64 [1,256,256]": np.random.default_rng(0).integers(
            0, 21, (1, 256, 256)).astype(np.int64),
        "deeplab probabilities float32 [1,256,256,21]": np.random.default_rng(0).random(
            (1, 256, 256, 21), dtype=np.float32),
    }
    print("reply encoding (per tensor; serialized size):")
    for name, arr in outputs.items():
        calls = max(3, min(args.calls, int(2e8 // max(arr.nbytes, 1) // 100)))
        typed_us = per_call_us(lambda a=arr: as_proto_field(a).SerializeToString(), calls)
        content_us = per_call_us(lambda a=arr: as_proto_content(a).SerializeToString(), calls)
        typed_size = len(as_proto_field(arr).SerializeToString())
        content_size = len(as_proto_content(arr).SerializeToString())
        print(f"  {name:46s} typed {typed_us:10.1f} us {typed_size / 1e6:7.2f} MB | tensor_content "
              f"{content_us:8.1f} us {content_size / 1e6:7.2f} MB | typed/content {typed_us / content_us:6.1f} x")


if __name__ == "__main__":
    main()
