"""The TensorProto codec: TF's AsProtoField / AsProtoTensorContent / FromProto rules, and bounded decoding."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.core.framework import tensor_pb2, types_pb2  # noqa: E402
from tensorflow_serving.apis import input_pb2  # noqa: E402

from tfsctl.core.examples import examples_from_input  # noqa: E402
from tfsctl.errors import InvalidArgument  # noqa: E402
from tfsctl.tensors import as_proto_content, as_proto_field, decoded_bytes, make_shape, to_numpy  # noqa: E402

CASES = [
    (np.array([[1.5, -2.25]], np.float32), "float_val", [1.5, -2.25]),
    (np.array([1.0, 2.5], np.float64), "double_val", [1.0, 2.5]),
    (np.array([1, -7], np.int32), "int_val", [1, -7]),
    (np.array([1, 200], np.uint8), "int_val", [1, 200]),
    (np.array([-3, 4], np.int16), "int_val", [-3, 4]),
    (np.array([-3, 4], np.int8), "int_val", [-3, 4]),
    (np.array([65535], np.uint16), "int_val", [65535]),
    (np.array([2**40, -1], np.int64), "int64_val", [2**40, -1]),
    (np.array([2**32 - 1], np.uint32), "uint32_val", [2**32 - 1]),
    (np.array([2**64 - 1], np.uint64), "uint64_val", [2**64 - 1]),
    (np.array([True, False]), "bool_val", [True, False]),
    (np.array([1.0, -0.5], np.float16), "half_val", np.array([1.0, -0.5], np.float16).view(np.uint16).tolist()),
    (np.array([1 + 2j, -3.5j], np.complex64), "scomplex_val", [1.0, 2.0, 0.0, -3.5]),
    (np.array([1 + 2j], np.complex128), "dcomplex_val", [1.0, 2.0]),
    (np.array([[b"a", b"\xff"]], object), "string_val", [b"a", b"\xff"]),
]


@pytest.mark.parametrize("arr, field, values", CASES, ids=[c[1] + "-" + str(c[0].dtype) for c in CASES])
def test_as_proto_field_matches_tf(arr, field, values):
    proto = as_proto_field(arr)
    assert not proto.tensor_content
    assert list(getattr(proto, field)) == values
    assert [d.size for d in proto.tensor_shape.dim] == list(arr.shape)
    # TF itself decodes it back to the same array
    back = tf.make_ndarray(proto)
    assert back.dtype == arr.dtype and back.shape == arr.shape
    np.testing.assert_array_equal(back, arr)
    np.testing.assert_array_equal(to_numpy(proto), arr)


@pytest.mark.parametrize("arr", [c[0] for c in CASES if c[1] != "string_val"])
def test_as_proto_content_round_trips(arr):
    proto = as_proto_content(arr)
    assert proto.tensor_content and not proto.float_val
    np.testing.assert_array_equal(tf.make_ndarray(proto), arr)
    np.testing.assert_array_equal(to_numpy(proto), arr)


def test_strings_stay_in_string_val_with_tensor_content():
    proto = as_proto_content(np.array([b"x", b"y"], object))
    assert list(proto.string_val) == [b"x", b"y"] and not proto.tensor_content


def test_from_proto_pads_and_truncates_like_tf():
    short = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=make_shape((2, 2)), float_val=[1.0, 2.0])
    np.testing.assert_array_equal(to_numpy(short), [[1, 2], [2, 2]])  # last value repeated
    empty = tensor_pb2.TensorProto(dtype=types_pb2.DT_INT32, tensor_shape=make_shape((3,)))
    np.testing.assert_array_equal(to_numpy(empty), [0, 0, 0])
    long = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=make_shape((2,)), float_val=[1, 2, 3, 4])
    np.testing.assert_array_equal(to_numpy(long), [1, 2])  # extra values ignored, as FromProtoField
    strings = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=make_shape((3,)), string_val=[b"a"])
    assert to_numpy(strings).tolist() == [b"a", b"a", b"a"]


@pytest.mark.parametrize("proto, needle", [
    (tensor_pb2.TensorProto(dtype=types_pb2.DT_COMPLEX64, tensor_shape=make_shape((1,)), scomplex_val=[1, 2, 3]),
     "pairs"),
    (tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=make_shape((1,) * 65)), "rank 65"),
    (tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=make_shape((1,) * 300)), "rank 300"),
    (tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=make_shape((-1, 2))), "negative"),
    (tensor_pb2.TensorProto(dtype=types_pb2.DT_VARIANT, tensor_shape=make_shape((1,))), "unsupported dtype"),
    (tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=make_shape((1,)), tensor_content=b"ab"),
     "tensor_content"),
    (tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=make_shape((2,)), tensor_content=b"abc"),
     "tensor_content has 3 bytes"),
])
def test_malformed_tensors_are_invalid_argument(proto, needle):
    with pytest.raises(InvalidArgument, match=needle):
        to_numpy(proto, "x")


def test_decoding_is_bounded_before_allocation():
    huge = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=make_shape((2**40, 2**40)), float_val=[1])
    assert decoded_bytes(huge) == 4 * 2**80
    with pytest.raises(InvalidArgument, match="more than the 1024 bytes"):
        to_numpy(huge, "x", max_bytes=1024)
    many = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=make_shape((100_000,)))
    many.string_val.extend([b"ab"] * 100_000)
    assert decoded_bytes(many) > 100_000 * 40  # per-string overhead counts, not just the 2 payload bytes
    with pytest.raises(InvalidArgument):
        to_numpy(many, "s", max_bytes=1_000_000)


def test_examples_are_bounded():
    inp = input_pb2.Input()
    for _ in range(30_000):
        inp.example_list.examples.add()  # empty Examples: 2 bytes each on the wire
    with pytest.raises(InvalidArgument, match="30000 examples need"):
        examples_from_input(inp, "Classify", max_bytes=1_000_000)
    assert len(examples_from_input(inp, "Classify", max_bytes=None)) == 30_000


@pytest.mark.parametrize("arr", [
    np.random.default_rng(1).standard_normal((3, 300)).astype(np.float32),
    np.random.default_rng(1).standard_normal(1000),
    np.random.default_rng(1).integers(-2**31, 2**31, 1000).astype(np.int32),
    np.random.default_rng(1).integers(-2**63, 2**63 - 1, 1000, dtype=np.int64),
    np.random.default_rng(1).integers(0, 21, (1, 40, 40)).astype(np.int64),
    np.random.default_rng(1).integers(0, 255, 1000).astype(np.uint8),
    np.random.default_rng(1).integers(-128, 127, 1000).astype(np.int8),
    np.random.default_rng(1).integers(0, 2**64 - 1, 1000, dtype=np.uint64),
    np.random.default_rng(1).integers(0, 2**32 - 1, 1000).astype(np.uint32),
    np.random.default_rng(1).random(1000) > 0.5,
    np.random.default_rng(1).standard_normal(1000).astype(np.float16),
    (np.random.default_rng(1).standard_normal(600) + 1j).astype(np.complex64),
    (np.random.default_rng(1).standard_normal(600) - 2j).astype(np.complex128),
], ids=lambda a: f"{a.dtype}-{a.size}")
def test_packed_fast_path_equals_value_by_value(arr):
    """Large arrays go through numpy-built wire bytes: the proto must equal the one built value by value."""
    import tfsctl.tensors as tensors

    fast = as_proto_field(arr)
    old = tensors.PACKED_MIN_ELEMENTS
    tensors.PACKED_MIN_ELEMENTS = 10**12
    try:
        slow = as_proto_field(arr)
    finally:
        tensors.PACKED_MIN_ELEMENTS = old
    assert fast == slow
    np.testing.assert_array_equal(tf.make_ndarray(fast), arr)
