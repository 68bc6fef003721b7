"""Open Inference Protocol (KServe v2) tensors <-> numpy, with no wire and no TensorFlow runtime (protos only).

The v2 datatypes and their TensorFlow and numpy types, the shape rules, and the two element encodings every v2
wire uses:

- *values*: a flat or nested list of elements (REST JSON ``data``, gRPC's typed ``contents`` fields);
- *raw*: the elements' little-endian bytes, row-major; BYTES elements each as a 4-byte little-endian length and its
  bytes (the binary tensor data extension over REST, ``raw_input_contents`` / ``raw_output_contents`` over gRPC).

Decoding checks the shape (non-negative integers, rank at most :data:`~tfsctl.tensors.MAX_RANK`) and bounds the
decoded size (elements x element size, strings with :data:`~tfsctl.tensors.STRING_OVERHEAD` each) *before*
anything is allocated, and checks that the data holds exactly the elements the shape promises, so a small request
claiming a huge shape, or a binary size that does not add up, is INVALID_ARGUMENT, not an allocation. The server
(``serving/v2_core.py``) and the client both use this module, so both read and write the same bytes.
"""

from __future__ import annotations

import itertools
import math
import struct
from collections.abc import Sequence
from functools import cache
from typing import Any

import numpy as np
from tensorflow.core.framework import types_pb2

from tfsctl.errors import InvalidArgument
from tfsctl.tensors import MAX_RANK, STRING_OVERHEAD, dtype_name

BYTES = "BYTES"
BF16 = "BF16"
_FIXED: dict[str, str] = {  # v2 datatype -> numpy dtype name (little-endian on the wire)
    "BOOL": "bool",
    "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64",
    "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64",
    "FP16": "float16", "FP32": "float32", "FP64": "float64",
}
DATATYPES: tuple[str, ...] = (*_FIXED, BF16, BYTES)
# TF DataType -> v2 datatype: what a signature's tensors are called on the v2 wire.
V2_BY_TF: dict[int, str] = {
    types_pb2.DT_BOOL: "BOOL",
    types_pb2.DT_UINT8: "UINT8", types_pb2.DT_UINT16: "UINT16", types_pb2.DT_UINT32: "UINT32",
    types_pb2.DT_UINT64: "UINT64",
    types_pb2.DT_INT8: "INT8", types_pb2.DT_INT16: "INT16", types_pb2.DT_INT32: "INT32", types_pb2.DT_INT64: "INT64",
    types_pb2.DT_HALF: "FP16", types_pb2.DT_BFLOAT16: "BF16", types_pb2.DT_FLOAT: "FP32", types_pb2.DT_DOUBLE: "FP64",
    types_pb2.DT_STRING: "BYTES",
}
TF_BY_V2: dict[str, int] = {v: k for k, v in V2_BY_TF.items()}
# v2 datatype -> the gRPC InferTensorContents field that carries it typed (FP16 and BF16 have none: raw only).
CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents", "INT64": "int64_contents",
    "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}
_INT64_MAX = 2**63 - 1
_LEN = struct.Struct("<I")


@cache
def _bfloat16() -> np.dtype:
    import ml_dtypes  # TensorFlow's own bfloat16 numpy type; loaded only when a BF16 tensor is seen

    return np.dtype(ml_dtypes.bfloat16)


def v2_datatype(dtype_enum: int, what: str) -> str:
    """The v2 datatype of a TF DataType; INVALID_ARGUMENT naming ``what`` when v2 has none (complex, quantized,
    resource, variant)."""
    name = V2_BY_TF.get(dtype_enum)
    if name is None:
        raise InvalidArgument(f"{what} has TensorFlow dtype {dtype_name(dtype_enum)}, which the Open Inference "
                              f"Protocol has no datatype for (it has: {', '.join(DATATYPES)})")
    return name


def numpy_dtype(datatype: str, name: str = "tensor") -> np.dtype:
    """The numpy dtype of a v2 datatype (BYTES: object); an unknown name is INVALID_ARGUMENT naming the valid ones."""
    if datatype == BYTES:
        return np.dtype(object)
    if datatype == BF16:
        return _bfloat16()
    np_name = _FIXED.get(datatype)
    if np_name is None:
        raise InvalidArgument(f"tensor '{name}': invalid datatype '{datatype}' (the protocol's datatypes: "
                              f"{', '.join(DATATYPES)})")
    return np.dtype(np_name)


def datatype_of(dtype: np.dtype, name: str = "tensor") -> str:
    """The v2 datatype of a numpy dtype (bytes/str/object: BYTES); a type v2 has no name for is INVALID_ARGUMENT."""
    if dtype.kind in "OSU":
        return BYTES
    if dtype.name == "bfloat16":
        return BF16
    for v2, np_name in _FIXED.items():
        if dtype.name == np_name:
            return v2
    raise InvalidArgument(f"tensor '{name}': numpy dtype {dtype.name} has no Open Inference Protocol datatype")


def checked_shape(shape: Any, name: str = "tensor") -> tuple[int, ...]:
    """A request's ``shape``: a list of integers in [0, 2**63), at most ``MAX_RANK`` of them."""
    if not isinstance(shape, (list, tuple)) and not hasattr(shape, "__len__"):
        raise InvalidArgument(f"tensor '{name}': 'shape' must be a list of integers, got {type(shape).__name__}")
    if len(shape) > MAX_RANK:
        raise InvalidArgument(f"tensor '{name}': rank {len(shape)} exceeds the maximum of {MAX_RANK}")
    dims = []
    for d in shape:
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)):
            raise InvalidArgument(f"tensor '{name}': shape dimensions must be integers, got {d!r}")
        if d < 0 or d > _INT64_MAX:
            raise InvalidArgument(f"tensor '{name}': shape {list(shape)} has a dimension outside [0, 2**63)")
        dims.append(int(d))
    return tuple(dims)


def _check_holdable(name: str, dims: tuple[int, ...], itemsize: int) -> None:
    """numpy refuses a shape whose non-zero dimensions times the item size pass 2**63 - 1, even with no elements
    ([0, 2**62] of FP32): that shape is INVALID_ARGUMENT here, not numpy's ValueError later."""
    if math.prod(d for d in dims if d) * itemsize > _INT64_MAX:
        raise InvalidArgument(f"tensor '{name}': shape {list(dims)} is too large to hold (its non-zero dimensions "
                              f"times the {itemsize}-byte elements pass 2**63 - 1), though it has no elements")


def decoded_bytes(datatype: str, shape: tuple[int, ...], payload: int = 0) -> int:
    """Bytes decoding a tensor allocates (exact integers: no overflow); ``payload`` is a BYTES tensor's data size."""
    count = math.prod(shape)
    if datatype == BYTES:
        return count * STRING_OVERHEAD + payload
    return count * numpy_dtype(datatype).itemsize


def check_size(name: str, need: int, max_bytes: int | None) -> None:
    if max_bytes is not None and need > max_bytes:
        raise InvalidArgument(f"input '{name}': decoding it needs {need} bytes, more than the {max_bytes} bytes "
                              "allowed for a request")


# --- values (JSON data, gRPC typed contents) -------------------------------------------------------------------


def _flatten(data: Any, count: int) -> list:
    """Nested lists -> one flat list, stopping once more than ``count`` elements were seen."""
    if not isinstance(data, list):
        return [data]
    flat: list = []
    stack = [iter(data)]
    while stack and len(flat) <= count:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
            if len(flat) > count:
                break
        else:
            stack.pop()
    return flat


def _element_error(name: str, datatype: str, got: str) -> InvalidArgument:
    expected = {"BOOL": "true/false", BYTES: "strings"}.get(datatype, "integers" if datatype[0] in "IU" else "numbers")
    return InvalidArgument(f"tensor '{name}': {datatype} data must hold {expected}, got {got}")


def _count_error(name: str, dims: tuple[int, ...], count: int, got: int) -> InvalidArgument:
    return InvalidArgument(f"tensor '{name}': shape {list(dims)} holds {count} elements but the data has {got}")


def from_values(datatype: str, shape: Any, data: Any, name: str = "tensor", max_bytes: int | None = None
                ) -> np.ndarray:
    """A tensor from its elements, flat or nested in row-major order (JSON ``data``, gRPC ``contents``).

    The element count must equal the shape's; integers must be integers that fit the datatype, booleans
    booleans, BYTES elements strings (sent UTF-8 encoded) or bytes; floats take any number.
    """
    dims = checked_shape(shape, name)
    dtype = numpy_dtype(datatype, name)
    count = math.prod(dims)
    if count == 0:
        _check_holdable(name, dims, dtype.itemsize)
    if datatype == BYTES:
        if isinstance(data, Sequence) and not isinstance(data, (list, str, bytes, bytearray)):
            if len(data) != count:  # a sequence (gRPC bytes_contents): counted before a list of it is made
                raise _count_error(name, dims, count, len(data))
            data = list(data)
        flat = _flatten(data, count)
        if len(flat) != count:
            raise _count_error(name, dims, count, len(flat))
        out = np.empty(count, dtype=object)
        payload = 0
        for i, v in enumerate(flat):
            if isinstance(v, str):
                v = v.encode()
            elif not isinstance(v, (bytes, bytearray)):
                raise _element_error(name, datatype, type(v).__name__)
            payload += len(v)
            out[i] = bytes(v)
        check_size(name, decoded_bytes(BYTES, dims, payload), max_bytes)
        return out.reshape(dims)
    check_size(name, decoded_bytes(datatype, dims), max_bytes)
    try:  # numpy parses the (nested) lists in C and infers the element kind, checked below before the cast
        arr = np.asarray(data)
    except (ValueError, TypeError, OverflowError):
        arr = None
    if arr is not None and datatype == "UINT64" and arr.dtype.kind in "fO":
        exact = _uint64(data, count, name)  # values past int64 make numpy infer float64 or object
        if exact is not None:
            arr = exact
    if arr is None or arr.dtype.kind in "OUSV":
        flat = _flatten(data, count)
        if len(flat) != count:
            raise _count_error(name, dims, count, len(flat))
        kinds = ", ".join(sorted({type(v).__name__ for v in flat[:1000]}))
        if arr is None and all(isinstance(v, (int, float)) for v in flat[:1000]):
            raise InvalidArgument(f"tensor '{name}': data is nested unevenly (give it flat, or nested as the shape)")
        raise _element_error(name, datatype, kinds)
    if arr.size != count:
        raise _count_error(name, dims, count, arr.size)
    if count == 0:  # [] (or [[]]) reads as float64: no element says anything about the datatype
        return np.empty(dims, dtype=dtype)
    kind = arr.dtype.kind
    if kind in "iuf" and data is not arr and _has_bool(data, arr.ndim):
        raise _element_error(name, datatype, "bool")  # numpy reads true/false among numbers as 1/0
    if datatype == "BOOL":
        if kind != "b":
            raise _element_error(name, datatype, arr.dtype.name)
    elif dtype.kind in "iu":
        if kind not in "iu":
            raise _element_error(name, datatype, arr.dtype.name)
        if arr.dtype != dtype and arr.size:
            info = np.iinfo(dtype)
            low, high = int(arr.min()), int(arr.max())
            if low < info.min or high > info.max:
                raise InvalidArgument(f"tensor '{name}': value {low if low < info.min else high} is out of range "
                                      f"for {datatype}")
    elif kind not in "iuf":  # floating datatypes take any number, not booleans or strings
        raise _element_error(name, datatype, arr.dtype.name)
    return arr.astype(dtype, copy=False).reshape(dims)


def _has_bool(data: Any, ndim: int) -> bool:
    """Whether regularly nested ``data`` (numpy made an ``ndim``-dimensional array of it) holds a bool; the walk
    stays in C (chain, map, set), a few ms per million elements."""
    if ndim == 0:
        return type(data) is bool
    leaves: Any = data
    for _ in range(ndim - 1):
        leaves = itertools.chain.from_iterable(leaves)
    return bool in set(map(type, leaves))


def _uint64(data: Any, count: int, name: str) -> np.ndarray | None:
    """UINT64 data with values past int64: Python integers in [0, 2**64), else None (the caller says why)."""
    flat = _flatten(data, count)
    if not all(type(v) is int for v in flat):
        return None
    try:
        return np.array(flat, dtype=np.uint64)
    except OverflowError:
        raise InvalidArgument(f"tensor '{name}': a value is out of range for UINT64") from None


def to_values(array: np.ndarray) -> list:
    """A tensor's elements as a flat list for JSON (BYTES as str when UTF-8, else an error naming the fix)."""
    flat = array.reshape(-1)
    if flat.dtype.kind in "OSU":
        out = []
        for v in flat:
            if isinstance(v, bytes):
                try:
                    v = v.decode()
                except UnicodeDecodeError:
                    raise InvalidArgument("a BYTES output is not UTF-8 text and cannot be sent as JSON; ask for it "
                                          "with binary_data") from None
            out.append(v)
        return out
    if flat.dtype.name == "bfloat16":
        flat = flat.astype(np.float32)
    return flat.tolist()


# --- raw bytes (binary tensor data, raw_*_contents) ------------------------------------------------------------


def from_raw(datatype: str, shape: Any, raw: bytes | memoryview, name: str = "tensor",
             max_bytes: int | None = None) -> np.ndarray:
    """A tensor from its raw bytes; the byte count must be exactly what the shape and datatype need."""
    dims = checked_shape(shape, name)
    dtype = numpy_dtype(datatype, name)
    count = math.prod(dims)
    if count == 0:
        _check_holdable(name, dims, dtype.itemsize)
    size = len(raw)
    if datatype != BYTES:
        need = count * dtype.itemsize
        if size != need:
            raise InvalidArgument(f"tensor '{name}': {size} bytes of binary data, but shape {list(dims)} of "
                                  f"{datatype} needs {need}")
        check_size(name, need, max_bytes)
        if datatype == "BOOL":  # any non-zero byte is true, stored as 1 (TF's ops assume 0 or 1)
            return (np.frombuffer(raw, dtype=np.uint8) != 0).reshape(dims)
        return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype, copy=False).reshape(dims)
    if count * _LEN.size > size:  # every element needs at least its 4-byte length: checked before any allocation
        raise InvalidArgument(f"tensor '{name}': {size} bytes of BYTES data cannot hold the {count} elements of "
                              f"shape {list(dims)} (each needs a 4-byte length)")
    check_size(name, decoded_bytes(BYTES, dims, size), max_bytes)
    view = memoryview(raw)
    out = np.empty(count, dtype=object)
    at = 0
    for i in range(count):
        if at + 4 > size:
            raise InvalidArgument(f"tensor '{name}': BYTES data ends inside element {i} of {count}")
        (n,) = _LEN.unpack_from(view, at)
        at += 4
        if at + n > size:
            raise InvalidArgument(f"tensor '{name}': BYTES element {i} claims {n} bytes, only {size - at} remain")
        out[i] = bytes(view[at:at + n])
        at += n
    if at != size:
        raise InvalidArgument(f"tensor '{name}': {size - at} bytes of BYTES data left after the {count} elements "
                              f"of shape {list(dims)}")
    return out.reshape(dims)


def to_raw(array: np.ndarray) -> bytes:
    """A tensor's raw bytes (little-endian, row-major; BYTES length-prefixed)."""
    if array.dtype.kind in "OSU":
        parts = []
        for v in array.reshape(-1):
            b = v.encode() if isinstance(v, str) else bytes(v)
            parts.append(_LEN.pack(len(b)))
            parts.append(b)
        return b"".join(parts)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return np.ascontiguousarray(array).tobytes()
