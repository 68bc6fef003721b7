"""Re-export of :mod:`tfsctl.tensors` (the codec lives at the bottom layer so ``core`` can use it too)."""

from tfsctl.tensors import (  # noqa: F401
    DTYPE_BY_NP,
    MAX_RANK,
    NP_BY_DTYPE,
    VAL_FIELD,
    as_proto_content,
    as_proto_field,
    decoded_bytes,
    dtype_name,
    from_numpy,
    make_shape,
    shape_of,
    to_numpy,
)
