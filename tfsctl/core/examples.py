"""``tensorflow.serving.Input`` -> the DT_STRING tensor of serialized tf.Examples that Classify/Regress feed.

As TF Serving's ``InputToSerializedExampleTensor``: ``example_list`` gives each example's bytes;
``example_list_with_context`` prepends the context's bytes to each example's (protobuf parsing of the
concatenation merges the two, example features winning). The decoded size is bounded before any example is
serialized, so a request of millions of empty Examples is refused instead of costing gigabytes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tfsctl.errors import InvalidArgument
from tfsctl.tensors import STRING_OVERHEAD

# Default bound on what one Input may decode to (the gRPC message limit's default).
DEFAULT_MAX_BYTES = 64 * 1024 * 1024


def examples_from_input(input_proto: Any, where: str = "request", max_bytes: int | None = DEFAULT_MAX_BYTES
                        ) -> np.ndarray:
    """Serialized ``tf.Example`` strings (object array of bytes) from a ``tensorflow.serving.Input``."""
    kind = input_proto.WhichOneof("kind")
    if kind == "example_list":
        examples = input_proto.example_list.examples
        context = b""
    elif kind == "example_list_with_context":
        examples = input_proto.example_list_with_context.examples
        context = None
    else:
        raise InvalidArgument(f"{where}: Input is empty (neither example_list nor example_list_with_context)")
    count = len(examples)
    if not count:
        raise InvalidArgument(f"{where}: Input is empty.")
    if max_bytes is not None:
        ctx_size = input_proto.example_list_with_context.context.ByteSize() if context is None else 0
        need = count * (STRING_OVERHEAD + ctx_size) + input_proto.ByteSize()
        if need > max_bytes:
            raise InvalidArgument(
                f"{where}: {count} examples need {need} bytes once decoded, more than the {max_bytes} bytes "
                "allowed for a request; send fewer examples per request"
            )
    if context is None:
        context = input_proto.example_list_with_context.context.SerializeToString()
    arr = np.empty(count, dtype=object)
    if context:
        arr[:] = [context + ex.SerializeToString() for ex in examples]
    else:
        arr[:] = [ex.SerializeToString() for ex in examples]
    return arr
