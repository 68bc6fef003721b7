"""TensorProto <-> numpy, as TensorFlow's ``Tensor::FromProto`` / ``AsProtoField`` / ``AsProtoTensorContent`` do.

Decoding accepts ``tensor_content`` and the typed ``*_val`` fields (an empty field gives zeros, a shorter one is
padded with its last value, a longer one is cut to the shape: TF's ``FromProtoField``). Before anything is
allocated the decoded size is bounded (:func:`decoded_bytes`): element count x element size, plus string payload,
so a tiny message claiming a huge shape, or millions of small strings, is refused with INVALID_ARGUMENT.

Encoding writes typed fields (:func:`as_proto_field`, TF Serving's default reply) or ``tensor_content``
(:func:`as_proto_content`, ``--enable_serialization_as_tensor_content``; strings stay in ``string_val``).
This module is a bottom-layer codec: it imports protos and numpy, never the serving or core layers.
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

# Which typed field carries each dtype (TF's ProtoHelper).
VAL_FIELD: dict[int, str] = {
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
_COMPLEX = (types_pb2.DT_COMPLEX64, types_pb2.DT_COMPLEX128)
# numpy cannot hold more dimensions than this (TF allows 254); more is refused as malformed.
MAX_RANK = 64
# What one decoded string costs beyond its payload: a pointer in the object array and the bytes object header.
STRING_OVERHEAD = 8 + 33


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


def _checked_shape(proto: tensor_pb2.TensorProto, name: str) -> tuple[int, ...]:
    shape_proto = proto.tensor_shape
    dims = shape_proto.dim
    if len(dims) > MAX_RANK:
        raise InvalidArgument(f"tensor parsing error: {name}: rank {len(dims)} exceeds the maximum of {MAX_RANK}")
    if shape_proto.unknown_rank:
        raise InvalidArgument(f"tensor parsing error: {name}: the shape has unknown rank")
    shape = tuple([d.size for d in dims])
    if shape and min(shape) < 0:
        raise InvalidArgument(f"tensor parsing error: {name}: shape {list(shape)} has a negative dimension")
    return shape


def header(proto: tensor_pb2.TensorProto, name: str = "tensor") -> tuple[np.dtype, tuple[int, ...], int]:
    """(numpy dtype, shape, decoded bytes) of a TensorProto, checked, without decoding its values.

    The byte count uses exact Python integers, so absurd dimensions cannot overflow into a small number. Strings
    count their payload (the message's own size bounds it) plus a fixed per-element overhead.
    """
    np_dtype = NP_BY_DTYPE.get(proto.dtype)
    if np_dtype is None:
        raise InvalidArgument(f"tensor parsing error: {name}: unsupported dtype {dtype_name(proto.dtype)}")
    shape = _checked_shape(proto, name)
    count = math.prod(shape)
    if proto.dtype == types_pb2.DT_STRING:
        return np_dtype, shape, count * STRING_OVERHEAD + (proto.ByteSize() if proto.string_val else 0)
    return np_dtype, shape, count * np_dtype.itemsize


def decoded_bytes(proto: tensor_pb2.TensorProto, name: str = "tensor") -> int:
    """Bytes :func:`to_numpy` would allocate for ``proto``, computed without decoding it."""
    return header(proto, name)[2]


def to_numpy(proto: tensor_pb2.TensorProto, name: str = "tensor", max_bytes: int | None = None,
             checked: tuple[np.dtype, tuple[int, ...], int] | None = None) -> np.ndarray:
    """Decode a TensorProto; raise InvalidArgument naming ``name`` when it is malformed or over ``max_bytes``.

    ``checked`` is this proto's :func:`header` when the caller already computed it.
    """
    np_dtype, shape, need = checked or header(proto, name)
    if max_bytes is not None and need > max_bytes:
        raise InvalidArgument(
            f"input '{name}': decoding it needs {need} bytes, more than the {max_bytes} bytes allowed for a request"
        )
    content = proto.tensor_content
    if content:
        if proto.dtype == types_pb2.DT_STRING:
            raise InvalidArgument(f"tensor parsing error: {name}: DT_STRING cannot be sent in tensor_content")
        if len(content) != need:
            raise InvalidArgument(
                f"tensor parsing error: {name}: tensor_content has {len(content)} bytes, shape "
                f"{list(shape)} of {dtype_name(proto.dtype)} needs {need}"
            )
        return np.frombuffer(content, dtype=np_dtype).reshape(shape)
    count = math.prod(shape)
    values = getattr(proto, VAL_FIELD[proto.dtype])
    n = len(values)
    if proto.dtype in _COMPLEX:
        if n % 2:
            raise InvalidArgument(
                f"tensor parsing error: {name}: {VAL_FIELD[proto.dtype]} holds {n} values; complex numbers need "
                "pairs (real, imaginary)"
            )
        n //= 2
    if count == 0:
        return np.zeros(shape, dtype=np_dtype) if np_dtype.kind != "O" else np.empty(shape, dtype=object)
    take = min(n, count)  # TF's FromProtoField: extra values are ignored, missing ones repeat the last
    if proto.dtype == types_pb2.DT_STRING:
        arr = np.empty(count, dtype=object)
        if take:
            arr[:take] = list(values[:take]) if take < n else list(values)
            arr[take:] = arr[take - 1]
        else:
            arr[:] = b""
        return arr.reshape(shape)
    if proto.dtype in _COMPLEX:
        flat = np.asarray(values[: 2 * take], dtype=np.float64).reshape(-1, 2)
        part = (flat[:, 0] + 1j * flat[:, 1]).astype(np_dtype)
    elif proto.dtype == types_pb2.DT_HALF:
        part = np.asarray(values[:take], dtype=np.int64).astype(np.uint16).view(np.float16)
    else:
        part = np.asarray(values[:take] if take < n else values, dtype=np_dtype)
    if take == count:
        return part.reshape(shape)
    arr = np.zeros(count, dtype=np_dtype)
    if take:
        arr[:take] = part
        arr[take:] = part[-1]
    return arr.reshape(shape)


def make_shape(shape: tuple[int | None, ...] | None) -> tensor_shape_pb2.TensorShapeProto:
    """TensorShapeProto from a tuple; None dims become -1, a None shape is unknown rank."""
    proto = tensor_shape_pb2.TensorShapeProto()
    if shape is None:
        proto.unknown_rank = True
        return proto
    for d in shape:
        proto.dim.add(size=-1 if d is None else int(d))
    return proto


def _string_values(arr: np.ndarray) -> list[bytes]:
    return [v if isinstance(v, bytes) else str(v).encode("utf-8") for v in arr.ravel().tolist()]


def _start(arr: np.ndarray, out: tensor_pb2.TensorProto | None) -> tuple[tensor_pb2.TensorProto, int | None]:
    proto = tensor_pb2.TensorProto() if out is None else out
    dims = proto.tensor_shape.dim
    for d in arr.shape:
        dims.add(size=d)
    if arr.dtype.kind in "OSU":
        proto.dtype = types_pb2.DT_STRING
        proto.string_val.extend(_string_values(arr))
        return proto, None
    dtype = DTYPE_BY_NP.get(arr.dtype)
    if dtype is None:
        raise InvalidArgument(f"cannot encode numpy dtype {arr.dtype} as a TensorProto")
    proto.dtype = dtype
    return proto, dtype


def as_proto_field(array: np.ndarray | bytes | str | int | float, out: tensor_pb2.TensorProto | None = None
                   ) -> tensor_pb2.TensorProto:
    """Encode as TF's ``Tensor::AsProtoField`` does: values in the typed ``*_val`` field of the dtype.

    ``out`` is an empty TensorProto to fill in place (a reply's map entry), saving a copy. Large arrays are
    written as the packed field's wire bytes built with numpy (:func:`packed_field_bytes`) and merged in, which
    is many times faster than converting each value to a Python object.
    """
    arr = np.asarray(array)
    proto, dtype = _start(arr, out)
    if dtype is None:
        return proto
    if arr.size >= PACKED_MIN_ELEMENTS:
        proto.MergeFromString(packed_field_bytes(arr, dtype))
        return proto
    field = getattr(proto, VAL_FIELD[dtype])
    if dtype in _COMPLEX:
        field.extend(_complex_pairs(arr, dtype).ravel().tolist())
    elif dtype == types_pb2.DT_HALF:
        field.extend(np.ascontiguousarray(arr).view(np.uint16).ravel().tolist())
    else:
        field.extend(arr.ravel().tolist())
    return proto


# Arrays of at least this many elements are encoded through packed wire bytes.
PACKED_MIN_ELEMENTS = 256
_FIELD_NUMBER = {name: f.number for name, f in tensor_pb2.TensorProto.DESCRIPTOR.fields_by_name.items()}
_FIXED_WIDTH = {
    types_pb2.DT_FLOAT: np.dtype("<f4"), types_pb2.DT_DOUBLE: np.dtype("<f8"),
    types_pb2.DT_COMPLEX64: np.dtype("<f4"), types_pb2.DT_COMPLEX128: np.dtype("<f8"),
}


def _complex_pairs(arr: np.ndarray, dtype: int) -> np.ndarray:
    pairs = np.empty(arr.shape + (2,), dtype=np.float64 if dtype == types_pb2.DT_COMPLEX128 else np.float32)
    pairs[..., 0] = arr.real
    pairs[..., 1] = arr.imag
    return pairs


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def varints(values: np.ndarray) -> bytes:
    """Protobuf varint encoding of uint64 values, vectorized (negative ints arrive as their 64-bit two's complement,
    ten bytes each, as protobuf writes them)."""
    v = np.ascontiguousarray(values, dtype=np.uint64).ravel()
    if not v.size:
        return b""
    n = np.ones(v.shape, np.int64)
    rest = v >> np.uint64(7)
    while True:
        more = rest != 0
        if not more.any():
            break
        n += more
        rest >>= np.uint64(7)
    ends = np.cumsum(n)
    starts = ends - n
    out = np.empty(int(ends[-1]), np.uint8)
    for k in range(int(n.max())):
        sel = n > k if k else slice(None)
        chunk = ((v[sel] >> np.uint64(7 * k)) & np.uint64(0x7F)).astype(np.uint8)
        chunk[n[sel] - 1 > k] |= 0x80
        out[starts[sel] + k] = chunk
    return out.tobytes()


def packed_field_bytes(arr: np.ndarray, dtype: int) -> bytes:
    """Wire bytes of the packed typed field holding ``arr`` (tag, length, payload), for ``MergeFromString``."""
    field = VAL_FIELD[dtype]
    if dtype in _FIXED_WIDTH:
        src = _complex_pairs(arr, dtype) if dtype in _COMPLEX else arr
        payload = np.ascontiguousarray(src, dtype=_FIXED_WIDTH[dtype]).tobytes()
    elif dtype == types_pb2.DT_BOOL:
        payload = np.ascontiguousarray(arr, dtype=np.uint8).tobytes()
    elif dtype == types_pb2.DT_HALF:
        payload = varints(np.ascontiguousarray(arr).view(np.uint16).astype(np.uint64))
    elif dtype in (types_pb2.DT_UINT32, types_pb2.DT_UINT64):
        payload = varints(arr.astype(np.uint64))
    else:  # int_val / int64_val: signed, sign-extended to 64 bits
        payload = varints(arr.astype(np.int64).view(np.uint64))
    return _varint((_FIELD_NUMBER[field] << 3) | 2) + _varint(len(payload)) + payload


def as_proto_content(array: np.ndarray | bytes | str | int | float, out: tensor_pb2.TensorProto | None = None
                     ) -> tensor_pb2.TensorProto:
    """Encode numbers in ``tensor_content`` (one memory copy); strings in ``string_val``."""
    arr = np.asarray(array)
    proto, dtype = _start(arr, out)
    if dtype is not None:
        proto.tensor_content = np.ascontiguousarray(arr).tobytes()
    return proto


def from_numpy(array: np.ndarray | bytes | str | int | float, *, typed: bool = False) -> tensor_pb2.TensorProto:
    """Encode an array for a request or reply: ``tensor_content`` by default, typed ``*_val`` fields with
    ``typed=True``. Strings always travel in ``string_val``."""
    return as_proto_field(array) if typed else as_proto_content(array)
