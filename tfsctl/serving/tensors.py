"""TensorProto <-> numpy, with the ``tensor_content`` fast path both ways.

Outgoing tensors always use ``tensor_content`` (one ``tobytes``), except strings, which TensorProto can only carry
in ``string_val``. Incoming tensors may use ``tensor_content`` or the typed ``*_val`` fields, as TF Serving
accepts from clients: an empty field gives zeros, a shorter one is padded with its last value (TF's FromProto).
"""

from __future__ import annotations

import math

import numpy as np
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

from tfsctl.errors import InvalidArgument

# DataType enum value -> numpy dtype.
NP_BY_DTYPE: dict[int, np.dtype] = {
    types_pb2.DT_FLOAT: np.dtype(np.float32),
    types_pb2.DT_DOUBLE: np.dtype(np.float64),
    types_pb2.DT_INT32: np.dtype(np.int32),
    types_pb2.DT_UINT8: np.dtype(np.uint8),
    types_pb2.DT_INT16: np.dtype(np.int16),
    types_pb2.DT_INT8: np.dtype(np.int8),
    types_pb2.DT_STRING: np.dtype(object),
    types_pb2.DT_COMPLEX64: np.dtype(np.complex64),
    types_pb2.DT_INT64: np.dtype(np.int64),
    types_pb2.DT_BOOL: np.dtype(np.bool_),
    types_pb2.DT_UINT16: np.dtype(np.uint16),
    types_pb2.DT_COMPLEX128: np.dtype(np.complex128),
    types_pb2.DT_HALF: np.dtype(np.float16),
    types_pb2.DT_UINT32: np.dtype(np.uint32),
    types_pb2.DT_UINT64: np.dtype(np.uint64),
}
DTYPE_BY_NP: dict[np.dtype, int] = {v: k for k, v in NP_BY_DTYPE.items() if k != types_pb2.DT_STRING}

# Which typed field carries each dtype, and how to turn its values into numpy.
_VAL_FIELD: dict[int, str] = {
    types_pb2.DT_FLOAT: "float_val",
    types_pb2.DT_DOUBLE: "double_val",
    types_pb2.DT_INT32: "int_val",
    types_pb2.DT_UINT8: "int_val",
    types_pb2.DT_INT16: "int_val",
    types_pb2.DT_INT8: "int_val",
    types_pb2.DT_UINT16: "int_val",
    types_pb2.DT_STRING: "string_val",
    types_pb2.DT_INT64: "int64_val",
    types_pb2.DT_BOOL: "bool_val",
    types_pb2.DT_HALF: "half_val",
    types_pb2.DT_UINT32: "uint32_val",
    types_pb2.DT_UINT64: "uint64_val",
    types_pb2.DT_COMPLEX64: "scomplex_val",
    types_pb2.DT_COMPLEX128: "dcomplex_val",
}


def dtype_name(dtype: int) -> str:
    """``DT_FLOAT`` style name of a DataType enum value."""
    try:
        return types_pb2.DataType.Name(dtype)
    except ValueError:
        return f"DataType({dtype})"


def shape_of(proto: tensor_shape_pb2.TensorShapeProto) -> tuple[int, ...] | None:
    """Shape as a tuple (-1 for unknown dims), or None for unknown rank."""
    if proto.unknown_rank:
        return None
    return tuple(int(d.size) for d in proto.dim)


def to_numpy(proto: tensor_pb2.TensorProto, name: str = "tensor", max_bytes: int | None = None) -> np.ndarray:
    """Decode a TensorProto; raise InvalidArgument naming ``name`` when it is malformed.

    ``max_bytes`` bounds the decoded size before anything is allocated: typed ``*_val`` fields are padded to the
    shape, so a tiny message can claim a huge shape. The element count is exact (Python ints), so absurd
    dimensions cannot overflow into a small size.
    """
    np_dtype = NP_BY_DTYPE.get(proto.dtype)
    if np_dtype is None:
        raise InvalidArgument(f"input '{name}': unsupported dtype {dtype_name(proto.dtype)}")
    shape = shape_of(proto.tensor_shape) or ()
    if any(d < 0 for d in shape):
        raise InvalidArgument(f"input '{name}': shape {list(shape)} has an unknown dimension")
    count = math.prod(shape)
    itemsize = 8 if np_dtype.kind == "O" else np_dtype.itemsize
    if max_bytes is not None and count * itemsize > max_bytes:
        raise InvalidArgument(
            f"input '{name}': shape {list(shape)} of {dtype_name(proto.dtype)} needs {count * itemsize} bytes, "
            f"more than the {max_bytes} bytes allowed for one tensor"
        )
    if proto.tensor_content:
        if proto.dtype == types_pb2.DT_STRING:
            raise InvalidArgument(f"input '{name}': DT_STRING cannot be sent in tensor_content")
        expected = count * np_dtype.itemsize
        if len(proto.tensor_content) != expected:
            raise InvalidArgument(
                f"input '{name}': tensor_content has {len(proto.tensor_content)} bytes, shape {list(shape)} "
                f"of {dtype_name(proto.dtype)} needs {expected}"
            )
        return np.frombuffer(proto.tensor_content, dtype=np_dtype).reshape(shape)
    field = _VAL_FIELD[proto.dtype]
    values = getattr(proto, field)
    if proto.dtype in (types_pb2.DT_COMPLEX64, types_pb2.DT_COMPLEX128):
        flat = np.asarray(values, dtype=np.float64).reshape(-1, 2)
        arr = (flat[:, 0] + 1j * flat[:, 1]).astype(np_dtype)
    elif proto.dtype == types_pb2.DT_HALF:
        arr = np.asarray(values, dtype=np.uint16).view(np.float16)
    elif proto.dtype == types_pb2.DT_STRING:
        arr = np.empty(len(values), dtype=object)
        arr[:] = list(values)
    else:
        arr = np.asarray(values, dtype=np_dtype)
    if arr.size > count:
        raise InvalidArgument(
            f"input '{name}': {field} has {arr.size} values, more than shape {list(shape)} holds ({count})"
        )
    if arr.size < count:
        fill = arr[-1] if arr.size else (b"" if proto.dtype == types_pb2.DT_STRING else 0)
        padded = np.empty(count, dtype=np_dtype) if np_dtype.kind == "O" else np.zeros(count, dtype=np_dtype)
        padded[: arr.size] = arr
        padded[arr.size :] = fill
        arr = padded
    return arr.reshape(shape)


def from_numpy(array: np.ndarray | bytes | str | int | float) -> tensor_pb2.TensorProto:
    """Encode an array as a TensorProto (``tensor_content`` for numbers, ``string_val`` for strings)."""
    arr = np.asarray(array)
    proto = tensor_pb2.TensorProto()
    proto.tensor_shape.CopyFrom(make_shape(arr.shape))
    if arr.dtype.kind in ("O", "S", "U"):
        proto.dtype = types_pb2.DT_STRING
        proto.string_val.extend(
            v if isinstance(v, bytes) else str(v).encode("utf-8") for v in arr.reshape(-1).tolist()
        )
        return proto
    dtype = DTYPE_BY_NP.get(arr.dtype)
    if dtype is None:
        raise InvalidArgument(f"cannot encode numpy dtype {arr.dtype} as a TensorProto")
    proto.dtype = dtype
    proto.tensor_content = np.ascontiguousarray(arr).tobytes()
    return proto


def make_shape(shape: tuple[int | None, ...] | None) -> tensor_shape_pb2.TensorShapeProto:
    """TensorShapeProto from a tuple; None dims become -1, a None shape is unknown rank."""
    proto = tensor_shape_pb2.TensorShapeProto()
    if shape is None:
        proto.unknown_rank = True
        return proto
    for d in shape:
        proto.dim.add(size=-1 if d is None else int(d))
    return proto
