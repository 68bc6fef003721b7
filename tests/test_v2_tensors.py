"""The v2 tensor codecs (core/v2_tensors.py) without a server: every datatype both ways, and the bounds."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from tensorflow.core.framework import types_pb2

from tfsctl.core import v2_tensors as v2
from tfsctl.errors import InvalidArgument

SAMPLES = {
    "BOOL": np.array([[True, False, True]]),
    "UINT8": np.array([0, 255], np.uint8), "UINT16": np.array([65535], np.uint16),
    "UINT32": np.array([2**32 - 1], np.uint32), "UINT64": np.array([2**64 - 1, 0], np.uint64),
    "INT8": np.array([-128, 127], np.int8), "INT16": np.array([-(2**15)], np.int16),
    "INT32": np.array([[-(2**31), 5]], np.int32), "INT64": np.array([-(2**63), 2**63 - 1], np.int64),
    "FP16": np.array([1.5, -0.25], np.float16), "FP32": np.array([[1.25, 2, 3]], np.float32),
    "FP64": np.array([1e300], np.float64), "BF16": np.array([1.5, -2], ml_dtypes.bfloat16),
    "BYTES": np.array([[b"a", b"\xff\x00"], [b"", "\u00e9".encode()]], dtype=object),
}


@pytest.mark.parametrize("datatype", list(SAMPLES))
def test_raw_round_trip_and_datatype_names(datatype):
    arr = SAMPLES[datatype]
    assert v2.datatype_of(arr.dtype) == datatype
    back = v2.from_raw(datatype, list(arr.shape), v2.to_raw(arr))
    assert back.shape == arr.shape and back.dtype == v2.numpy_dtype(datatype)
    assert back.tolist() == arr.tolist()
    assert v2.TF_BY_V2[datatype] in v2.V2_BY_TF and v2.V2_BY_TF[v2.TF_BY_V2[datatype]] == datatype


@pytest.mark.parametrize("datatype", [d for d in SAMPLES if d not in ("BYTES", "FP16", "BF16")])
def test_values_round_trip_flat_and_nested(datatype):
    arr = SAMPLES[datatype]
    for data in (arr.tolist(), arr.reshape(-1).tolist()):
        back = v2.from_values(datatype, list(arr.shape), data)
        assert back.dtype == arr.dtype and back.tolist() == arr.tolist()
    assert v2.to_values(arr) == arr.reshape(-1).tolist()


def test_values_checks():
    assert v2.from_values("FP32", [2], [1, 2]).tolist() == [1.0, 2.0]  # integers are numbers for floats
    assert v2.from_values("BYTES", [2], ["\u00e9", b"x"]).tolist() == ["\u00e9".encode(), b"x"]
    for datatype, data, words in (("UINT8", [256], "out of range"), ("INT64", [1.5], "integers"),
                                  ("INT32", [True], "integers"), ("BOOL", [1], "true/false"),
                                  ("FP32", ["1"], "numbers"), ("BYTES", [1], "strings")):
        with pytest.raises(InvalidArgument, match=words):
            v2.from_values(datatype, [1], data)
    with pytest.raises(InvalidArgument, match="nested unevenly"):
        v2.from_values("FP32", [3], [[1, 2], [3]])
    with pytest.raises(InvalidArgument, match="holds 4 elements but the data has 3"):
        v2.from_values("INT32", [2, 2], [1, 2, 3])


def test_shapes_and_bounds_come_before_allocation():
    for shape, words in (([-1], "outside"), ([2**63], "outside"), ([1.0], "integers"), ([True], "integers"),
                         ("12", "integers"), ([1] * 65, "rank 65")):
        with pytest.raises(InvalidArgument, match=words):
            v2.checked_shape(shape)
    with pytest.raises(InvalidArgument, match="bytes allowed"):
        v2.from_values("FP64", [2**40, 2**20], [1.0], max_bytes=64 << 20)
    with pytest.raises(InvalidArgument, match="4-byte length"):  # 10**15 strings claimed by 8 bytes
        v2.from_raw("BYTES", [10**15], b"\0" * 8)
    with pytest.raises(InvalidArgument, match="needs 32"):
        v2.from_raw("FP64", [4], b"\0" * 31)
    with pytest.raises(InvalidArgument, match="left after"):
        v2.from_raw("BYTES", [1], b"\x01\0\0\0ab")


def test_names_v2_lacks_are_clear_errors():
    with pytest.raises(InvalidArgument, match="DT_COMPLEX64"):
        v2.v2_datatype(types_pb2.DT_COMPLEX64, "output 'z'")
    with pytest.raises(InvalidArgument, match="complex64"):
        v2.datatype_of(np.dtype(np.complex64))
    with pytest.raises(InvalidArgument, match="FP8"):
        v2.numpy_dtype("FP8")
    with pytest.raises(InvalidArgument, match="binary_data"):
        v2.to_values(np.array([b"\xff"], dtype=object))


@pytest.mark.parametrize("datatype", ["INT64", "UINT8", "FP32", "FP16"])
def test_booleans_are_not_numbers(datatype):
    """true/false among numbers is refused as Triton refuses it, not read as 1/0."""
    with pytest.raises(InvalidArgument, match="bool"):
        v2.from_values(datatype, [2, 2], [[1, True], [0, 2]])
    assert v2.from_values(datatype, [2, 2], [[1, 1], [0, 2]]).tolist() == [[1, 1], [0, 2]]


@pytest.mark.parametrize("datatype", ["FP32", "BYTES", "UINT8"])
def test_no_elements_but_dimensions_numpy_cannot_hold(datatype):
    """[0, 2**62, 8] has no elements, but numpy refuses the shape ('array is too big'): a clear error, not a 500."""
    for shape in ([0, 2**62, 8], [2**61, 0, 2**61]):
        with pytest.raises(InvalidArgument, match="too large"):
            v2.from_values(datatype, shape, [])
        with pytest.raises(InvalidArgument, match="too large"):
            v2.from_raw(datatype, shape, b"")
    assert v2.from_values(datatype, [0, 2**20], []).shape == (0, 2**20)
    assert v2.from_raw(datatype, [2**20, 0], b"").shape == (2**20, 0)


def test_raw_bool_bytes_other_than_0_and_1_are_true():
    """A raw BOOL byte of 2 is true, stored as 1: kept as 2, TF's logical_not made it 3 (true again)."""
    arr = v2.from_raw("BOOL", [4], b"\x02\x01\x00\xff")
    assert arr.tolist() == [True, True, False, True] and arr.view(np.uint8).tolist() == [1, 1, 0, 1]
