"""The REST JSON codec (tfsctl/serving/json_codec.py) against TF Serving's json_tensor.cc rules: pure functions."""

from __future__ import annotations

import base64
import json
import math
import os
import re
from dataclasses import dataclass

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tfsctl.errors import InvalidArgument, Unimplemented  # noqa: E402
from tfsctl.serving import json_codec  # noqa: E402

DT = {"float": (np.float32, 1), "double": (np.float64, 2), "int32": (np.int32, 3), "uint8": (np.uint8, 4),
      "string": (object, 7), "int64": (np.int64, 9), "bool": (np.bool_, 10), "complex64": (np.complex64, 8),
      "uint64": (np.uint64, 23), "half": (np.float16, 19)}


@dataclass
class Spec:
    dtype: np.dtype
    dtype_enum: int


def spec(name: str) -> Spec:
    dtype, enum = DT[name]
    return Spec(np.dtype(dtype), enum)


def columnar(arr: np.ndarray) -> bytes:
    return json_codec.encode_predict({"y": arr}, row_format=False)


# --- floats out -------------------------------------------------------------------------------------------------------


def _random_float32(n: int, seed: int = 7) -> np.ndarray:
    """Uniform over bit patterns: every exponent, subnormals included; non-finite patterns dropped."""
    bits = np.random.default_rng(seed).integers(0, 2**32, size=n, dtype=np.uint64).astype(np.uint32)
    values = bits.view(np.float32)
    return values[np.isfinite(values)]


def test_float32_round_trips_exactly_over_random_bit_patterns():
    values = _random_float32(200_000)
    edges = np.array([0.0, -0.0, 1e-45, -1e-45, 1.1754942e-38, 1.1754944e-38, 3.4028235e38, -3.4028235e38,
                      2.1, 0.1, 1.0, 16777217.0, 1e-7, 9e6], np.float32)
    values = np.concatenate([values, edges])
    parsed = np.array(json.loads(columnar(values))["outputs"], np.float64).astype(np.float32)
    assert parsed.view(np.uint32).tolist() == values.view(np.uint32).tolist()  # bit-exact, -0.0 included


def test_float32_is_written_with_the_fewest_digits_that_round_trip():
    values = _random_float32(3000, seed=11)
    text = columnar(values).decode()
    tokens = re.findall(r"-?[0-9.]+(?:e[-+]?\d+)?", text)
    assert len(tokens) == len(values)

    def digits(token: str) -> int:
        mantissa = token.lstrip("-").split("e")[0].replace(".", "").lstrip("0").rstrip("0")
        return max(1, len(mantissa))

    for token, v in zip(tokens, values.tolist(), strict=True):
        shortest = np.format_float_scientific(np.float32(v), unique=True)  # Dragon4 shortest for float32
        assert digits(token) == digits(shortest), (token, shortest)
    assert json.loads(columnar(np.array([2.1, 0.1, 1.0, 100.0], np.float32))) == {"outputs": [2.1, 0.1, 1.0, 100.0]}
    assert columnar(np.array([2.1], np.float32)) == b'{"outputs":[2.1]}'
    assert columnar(np.array([2.1], np.float64)) == b'{"outputs":[2.1]}'
    assert columnar(np.array([2.1], np.float32).astype(np.float64)) == b'{"outputs":[2.0999999046325684]}'
    assert columnar(np.array([1.0, -0.0], np.float32)) == b'{"outputs":[1.0,-0.0]}'


def test_non_finite_values_are_written_as_tf_serving_tokens():
    arr = np.array([[1.5, np.nan], [np.inf, -np.inf]], np.float32)
    assert columnar(arr) == b'{"outputs":[[1.5,NaN],[Infinity,-Infinity]]}'
    assert json_codec.encode_predict({"y": np.float32(np.nan)}, False) == b'{"outputs":NaN}'
    assert json_codec.encode_predict({"y": np.array([-np.inf], np.float64)}, True) == b'{"predictions":[-Infinity]}'
    reply = json_codec.encode_predict({"a": np.array([np.nan, 1.0], np.float32), "b": np.array([1, 2])}, True)
    assert reply == b'{"predictions":[{"a":NaN,"b":1},{"a":1.0,"b":2}]}'
    parsed = json.loads(reply)  # Python's json reads the tokens, as api_rest.md says
    assert math.isnan(parsed["predictions"][0]["a"])


# --- other types out --------------------------------------------------------------------------------------------------


def test_integers_bools_and_strings_out():
    out = json.loads(json_codec.encode_predict({
        "i64": np.array([2**63 - 1, -(2**63)], np.int64), "u64": np.array([2**64 - 1, 0], np.uint64),
        "flag": np.array([True, False]), "text": np.array([b"caf\xc3\xa9", b"\xff\x00"], object),
        "img_bytes": np.array([b"ab", b"\x00"], object), "u8": np.array([255, 0], np.uint8),
    }, row_format=False))["outputs"]
    assert out["i64"] == [2**63 - 1, -(2**63)] and out["u64"] == [2**64 - 1, 0]
    assert out["flag"] == [True, False] and out["u8"] == [255, 0]
    assert out["text"] == ["café", {"b64": base64.b64encode(b"\xff\x00").decode()}]  # non-UTF-8: base64 object
    assert out["img_bytes"] == [{"b64": "YWI="}, {"b64": "AA=="}]  # *_bytes outputs: always base64


def test_row_format_needs_a_batch_dimension_shared_by_every_output():
    with pytest.raises(InvalidArgument, match="Tensor name: y has no shape information"):
        json_codec.encode_predict({"y": np.float32(1.0)}, True)
    with pytest.raises(InvalidArgument, match="has inconsistent batch size: 3 expecting: 2"):
        json_codec.encode_predict({"a": np.zeros(2), "b": np.zeros(3)}, True)
    with pytest.raises(InvalidArgument, match="Cannot convert empty tensor map to JSON"):
        json_codec.encode_predict({}, True)
    assert json.loads(json_codec.encode_predict({"s": np.array([[b"a"], [b"b"]], object), "n": np.arange(2)}, True)) \
        == {"predictions": [{"s": ["a"], "n": 0}, {"s": ["b"], "n": 1}]}


# --- parsing ----------------------------------------------------------------------------------------------------------


def test_nan_and_infinity_tokens_are_accepted_on_input():
    doc = json_codec.parse_json(b'{"instances": [NaN, -NaN, Inf, -Inf, Infinity, -Infinity, 1.5], "s": "NaN Inf"}')
    arr = json_codec.json_to_tensor(doc["instances"], spec("float"))
    assert np.isnan(arr[:2]).all() and arr[2:6].tolist() == [np.inf, -np.inf, np.inf, -np.inf] and arr[6] == 1.5
    assert doc["s"] == "NaN Inf"  # tokens inside strings are left alone


@pytest.mark.parametrize(("body", "needle"), [
    (b"", "JSON Parse error: The document is empty"),
    (b"   ", "JSON Parse error: The document is empty"),
    (b"instances = [1, 2]", "JSON Parse error: Invalid value. at offset: 0"),
    (b'{"a": [1, 2 3]}', "JSON Parse error: Missing a comma or ']' after an array element."),
    (b'{"a": 1 "b": 2}', "JSON Parse error: Missing a comma or '}' after an object member."),
    (b'{"a" 1}', "JSON Parse error: Missing a colon after a name of object member."),
    (b'{"a": "x', "JSON Parse error: Missing a closing quotation mark in string."),
    (b"[1, 2]", "JSON Value: [1,2] Is not object"),
    (b'{"inputs": [1e400]}', "JSON Parse error: Number too big to be stored in double. at offset: 12"),
    (b'{"inputs": [1, ' + b"9" * 400 + b"]}", "JSON Parse error: Number too big to be stored in double."),
    (b'{"inputs": [NaN, ' + b"9" * 5000 + b"]}", "JSON Parse error: Number too big to be stored in double."),
])
def test_parse_errors_use_rapidjson_texts(body, needle):
    with pytest.raises(InvalidArgument) as info:
        json_codec.parse_json(body)
    assert needle in info.value.message


def test_tolerated_like_rapidjson():
    assert json_codec.parse_json(b'{"a": 1} trailing bytes') == {"a": 1}  # kParseStopWhenDoneFlag
    assert json_codec.parse_json(b'{"s": "\xff"}')["s"].encode("utf-8", "surrogateescape") == b"\xff"
    assert json_codec.signature_name({"signature_name": "x"}) == "x" and json_codec.signature_name({}) == ""
    with pytest.raises(InvalidArgument, match="'signature_name' key must be a string value."):
        json_codec.signature_name({"signature_name": 100})


# --- JSON -> tensors --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "dtype", "expected"), [
    ([[1, 2.5]], "float", [[1.0, 2.5]]),
    ([1e39], "float", [np.inf]),  # GetFloat(): out of range becomes inf, as in TF Serving
    (["NaN-free", "ok"], "string", [b"NaN-free", b"ok"]),
    ([{"b64": "YWI="}, {"b64": "YWI"}], "string", [b"ab", b"ab"]),  # padding optional (absl::Base64Unescape)
    ([True, False], "bool", [True, False]),
    ([255, 0], "uint8", [255, 0]),
    ([2, -3], "int32", [2, -3]),
    (7, "int64", 7),
    ([2**63 - 1], "int64", [2**63 - 1]),
    ([2**64 - 1], "uint64", [2**64 - 1]),
    ([1, 2**64 - 1], "uint64", [1, 2**64 - 1]),  # numpy holds the pair as objects: still in range
    ([0.5], "half", [0.5]),
    ([], "float", []),
    ([[], []], "int32", [[], []]),
])
def test_json_to_tensor_converts_to_the_signature_dtype(value, dtype, expected):
    arr = json_codec.json_to_tensor(value, spec(dtype))
    assert arr.dtype == np.dtype(DT[dtype][0]) and arr.tolist() == expected


@pytest.mark.parametrize(("value", "dtype", "needle"), [
    ([True], "float", "JSON Value: true Type: True is not of expected type: float"),
    ([1], "bool", "JSON Value: 1 Type: Number is not of expected type: bool"),
    ([-1], "uint8", "JSON Value: -1 Type: Number is not of expected type: uint8"),
    ([2**70], "int64", "is not of expected type: int64"),
    ([2.0], "int32", "JSON Value: 2.0 Type: Number is not of expected type: int32"),
    ([float("nan")], "int32", "is not of expected type: int32"),
    ([None], "float", "JSON Value: null Type: Null is not of expected type: float"),
    ([1, "a"], "float", 'JSON Value: "a" Type: String is not of expected type: float'),
    ([["a"], ["a", "b"]], "string", "Encountered list at unexpected size: 2 at level: 1 expected size: 1"),
    ([[1.0], 2.0], "float", "JSON Value: 2.0 found at incorrect level"),
    ([{"b64": 5}], "string", "not formatted correctly for base64 data"),
    ([{"b64": "!!"}], "string", "Unable to base64 decode"),
    ([7], "string", "JSON Value: 7 Type: Number is not of expected type: string"),
    (json.loads("[" * 70 + '"a"' + "]" * 70), "string", "levels deep"),
])
def test_json_to_tensor_rejects_values_that_do_not_fit(value, dtype, needle):
    with pytest.raises(InvalidArgument) as info:
        json_codec.json_to_tensor(value, spec(dtype))
    assert needle in info.value.message


def test_complex_inputs_are_unimplemented_as_in_tf_serving():
    with pytest.raises(Unimplemented, match="Conversion of JSON Value: 1 to type: complex64"):
        json_codec.json_to_tensor([1], spec("complex64"))


def test_predict_bodies_in_row_and_columnar_formats():
    specs = {"tag": spec("string"), "signal": spec("int32"), "sensor": spec("int32")}
    rows = {"instances": [{"tag": "foo", "signal": [1, 2, 3, 4, 5], "sensor": [[1, 2], [3, 4]]},
                          {"tag": "bar", "signal": [3, 4, 1, 2, 5], "sensor": [[4, 5], [6, 8]]}]}
    cols = {"inputs": {"tag": ["foo", "bar"], "signal": [[1, 2, 3, 4, 5], [3, 4, 1, 2, 5]],
                       "sensor": [[[1, 2], [3, 4]], [[4, 5], [6, 8]]]}}
    a, row = json_codec.decode_predict(rows, specs)
    b, col = json_codec.decode_predict(cols, specs)
    assert row and not col
    for k in specs:
        assert a[k].tolist() == b[k].tolist()
    assert a["sensor"].shape == (2, 2, 2) and a["tag"].tolist() == [b"foo", b"bar"]
    one = {"x": spec("float")}
    assert json_codec.decode_predict({"instances": [[[1, 2]], [[3, 4]]]}, one)[0]["x"].shape == (2, 1, 2)
    assert json_codec.decode_predict({"inputs": {"b64": "YQ=="}}, {"s": spec("string")})[0]["s"].tolist() == b"a"


@pytest.mark.parametrize(("body", "needle"), [
    ({"instances": [1, 2]}, "instances is a plain list, but expecting list of objects"),
    ({"inputs": [1, 2]}, "inputs is a plain value/list, but expecting an object"),
    ({"instances": [{"a": 1, "b": 2}, [1]]}, "Expecting object but got list at item 1 of input list"),
    ({"instances": [{"a": 1}]}, "Failed to process element: 0 of 'instances' list. JSON object: {\"a\":1} keys must "
                                "be equal to: a,b"),
    ({"instances": [{"a": 1, "b": 2}, {"a": [1], "b": 2}]},
     "Failed to process element: 1 key: a of 'instances' list. Error: INVALID_ARGUMENT: Expecting shape [] "
     "but got: [1]"),
    ({"instances": [{"a": [1, 2], "b": 2}, {"a": [[1], [2]], "b": 2}]},
     "Expecting shape [2] but got: [2,1]"),
    ({"instances": [{"a": 1, "b": 2, "c": 3}]}, "does not have named input: c"),
    ({"inputs": {"a": [1]}}, "Missing named input: b in 'inputs' object."),
])
def test_predict_body_errors_use_tf_serving_texts(body, needle):
    specs = {"a": spec("float"), "b": spec("float")}
    with pytest.raises(InvalidArgument) as info:
        json_codec.decode_predict(body, specs)
    assert needle in info.value.message


def test_examples_body_to_tf_examples():
    from tensorflow_serving.apis import classification_pb2

    req = classification_pb2.ClassificationRequest()
    json_codec.decode_examples({"context": {"lang": "en"}, "examples": [
        {"n": [1, 2], "f": 0.5, "s": "a", "b": {"b64": base64.b64encode(b"\x00\xff").decode()}, "t": True,
         "r": [1.0, -3.14, float("nan"), float("inf")]},
    ]}, req)
    ctx = req.input.example_list_with_context.context.features.feature
    assert list(ctx["lang"].bytes_list.value) == [b"en"]
    feat = req.input.example_list_with_context.examples[0].features.feature
    assert list(feat["n"].int64_list.value) == [1, 2]
    assert list(feat["f"].float_list.value) == [0.5]
    assert list(feat["s"].bytes_list.value) == [b"a"]
    assert list(feat["b"].bytes_list.value) == [b"\x00\xff"]
    assert list(feat["t"].int64_list.value) == [1]  # booleans are int64 features, as TF Serving
    assert len(feat["r"].float_list.value) == 4
    for body, needle in [
        ({"context": {"x": 1}, "examples": [{"x": 2}]}, "also appears in 'context'"),
        ({"examples": [{"x": [1, 2.5]}]}, "Unexpected element type in feature: x expecting type: int64"),
        ({"examples": [{"x": [1, "a"]}]}, "Unexpected element type in feature: x expecting type: int64"),
        ({"examples": [{"x": None}]}, "Feature: x has element with unexpected JSON type: Null"),
        ({"examples": [{"x": 2**63}]}, "Only int64_t is supported."),
        ({"examples": []}, "'examples' value is an empty array"),
        ({"examples": {}}, "Expecting 'examples' value to be an list/array"),
        ({}, "When method is classify, key 'examples' is expected and was not found"),
        ({"examples": ["x"]}, "Example must be JSON object but got JSON String"),
    ]:
        with pytest.raises(InvalidArgument) as info:
            json_codec.decode_examples(body, classification_pb2.ClassificationRequest())
        assert needle in info.value.message, (body, info.value.message)


def test_classify_and_regress_results_as_float32():
    from tensorflow_serving.apis import classification_pb2, regression_pb2

    result = classification_pb2.ClassificationResult()
    row = result.classifications.add()
    row.classes.add(label="a", score=0.1)
    row.classes.add(label="", score=float("nan"))
    assert json_codec.encode_classification(result) == b'{"results":[[["a",0.1],["",NaN]]]}'
    reg = regression_pb2.RegressionResult()
    reg.regressions.add(value=2.1)
    reg.regressions.add(value=3.5)
    assert json_codec.encode_regression(reg) == b'{"results":[2.1,3.5]}'


def test_status_and_metadata_json_have_tf_serving_keys():
    from tensorflow.core.protobuf import meta_graph_pb2
    from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2

    status = get_model_status_pb2.GetModelStatusResponse()
    mvs = status.model_version_status.add(version=123, state=get_model_status_pb2.ModelVersionStatus.AVAILABLE)
    mvs.status.error_code = 0
    assert json.loads(json_codec.encode_status(status)) == {"model_version_status": [
        {"version": "123", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
    meta = get_model_metadata_pb2.GetModelMetadataResponse()
    meta.model_spec.name = "m"
    meta.model_spec.version.value = 123
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    sig = meta_graph_pb2.SignatureDef(method_name="tensorflow/serving/predict")
    sig.inputs["x"].name = "x:0"
    sig.inputs["x"].dtype = 1
    sig_map.signature_def["serving_default"].CopyFrom(sig)
    meta.metadata["signature_def"].Pack(sig_map)
    body = json.loads(json_codec.encode_metadata(meta))
    assert body["model_spec"] == {"name": "m", "signature_name": "", "version": "123"}
    assert list(body["metadata"]) == ["signature_def"] and "@type" not in body["metadata"]["signature_def"]
    assert body["metadata"]["signature_def"]["signature_def"]["serving_default"]["inputs"]["x"] == {
        "dtype": "DT_FLOAT", "name": "x:0"}


def test_a_big_body_is_parsed_with_the_collector_paused_and_restored(monkeypatch):
    import gc

    seen = []
    real_loads = json_codec.orjson.loads
    monkeypatch.setattr(json_codec.orjson, "loads", lambda body: (seen.append(gc.isenabled()), real_loads(body))[1])
    image = np.arange(128 * 128 * 3).reshape(128, 128, 3).tolist()
    body = json.dumps({"instances": [{"images": image}]}).encode()
    assert len(body) >= json_codec._GC_PAUSE_BYTES
    small = b'{"instances": [[1.0, 2.0]]}'
    was = gc.isenabled()
    try:
        gc.enable()
        assert json_codec.parse_json(body)["instances"][0]["images"] == image
        json_codec.parse_json(small)
        assert seen == [False, True] and gc.isenabled()
        with pytest.raises(InvalidArgument):  # an error inside the pause still resumes the collector
            json_codec.parse_json(b"[" + body + b"]")
        assert gc.isenabled()
        gc.disable()  # off before: stays off
        json_codec.parse_json(body)
        assert not gc.isenabled()
        gc.enable()
        with json_codec._gc_paused():  # nested (another thread's parse): the one that paused it resumes it
            json_codec.parse_json(body)
            assert not gc.isenabled()
        assert gc.isenabled()
        # Overlapping parses in two threads, the one that paused first ending first: the collector comes back
        # then, not when the last overlapping parse ends (it is never off for longer than one parse).
        first, second = json_codec._gc_paused(), json_codec._gc_paused()
        first.__enter__()
        second.__enter__()
        first.__exit__(None, None, None)
        assert gc.isenabled()
        second.__exit__(None, None, None)
        assert gc.isenabled()
    finally:
        (gc.enable if was else gc.disable)()


def test_b64_strings_decode_as_the_standard_library_decides():
    """Where the SIMD decoder refuses (padding beyond a complete group) the standard library decides: the same
    bytes, or the same error, for every spelling."""
    import binascii
    import random

    rng = random.Random(64)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    cases = ["YWJj=", "YWJj==", "YWI==", "YQ===", "YWJjZA=", " YWI ", "YW=I", "=YWI", "YW I=", "YWJ\n", "Y\u00e9"]
    for _ in range(3000):
        cases.append("".join(rng.choice(alphabet + "= -_" if rng.random() < 0.2 else alphabet + "=")
                             for _ in range(rng.randint(0, 13))))
    for data in cases:
        padded = data.strip() + "=" * (-len(data.strip()) % 4)
        try:
            want: object = base64.b64decode(padded, validate=True)
        except (binascii.Error, ValueError):
            want = "Unable to base64 decode"
        try:
            got: object = json_codec.json_to_tensor([{"b64": data}], spec("string")).tolist()[0]
        except InvalidArgument as e:
            got = "Unable to base64 decode" if "Unable to base64 decode" in e.message else e.message
        assert got == want, data
    assert json_codec.json_to_tensor([{"b64": "YWJj="}], spec("string")).tolist() == [b"abc"]
