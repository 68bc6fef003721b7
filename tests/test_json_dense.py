"""Dense numeric arrays read from REST body bytes (tfsctl/serving/json_dense.py): every body decodes exactly as the
general path decodes it (same arrays, or the same error), and the fast path is really taken for plain arrays."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from test_json_codec import spec  # noqa: E402 - the codec tests' signature input specs

from tfsctl.errors import ServingError  # noqa: E402
from tfsctl.serving import json_codec, json_dense  # noqa: E402
from tfsctl.serving.json_dense import DenseArray  # noqa: E402


@pytest.fixture(autouse=True)
def _small_runs(monkeypatch):
    """Take the fast path for arrays of a few bytes, so the cases stay small and readable."""
    monkeypatch.setattr(json_dense, "MIN_RUN_BYTES", 8)
    monkeypatch.setattr(json_codec, "_GC_PAUSE_BYTES", 0)


def _outcome(doc_of, body: bytes, specs: dict):
    try:
        doc = doc_of(body)
        inputs, rows = json_codec.decode_predict(doc, specs, json_codec.signature_name(doc))
    except ServingError as e:
        return type(e).__name__, e.message
    return rows, {k: (v.dtype.str, v.shape, v.tolist() if v.dtype == object else v.tobytes())
                  for k, v in inputs.items()}


def _same(body: bytes, specs: dict):
    general = _outcome(json_codec.parse_json, body, specs)
    fast = _outcome(json_codec.parse_predict_json, body, specs)
    assert fast == general, body[:300]
    return general


def _dense_values(doc) -> list:
    found = []
    if isinstance(doc, dict):
        for v in doc.values():
            found += _dense_values(v)
    elif isinstance(doc, list):
        for v in doc:
            found += _dense_values(v)
    elif isinstance(doc, DenseArray):
        found.append(doc)
    return found


IMAGE = {"images": spec("uint8")}
FLOATS = {"x": spec("float")}


@pytest.mark.parametrize("body, specs", [
    ({"instances": [{"images": [[[1, 2, 3], [4, 5, 6]], [[7, 8, 9], [10, 11, 255]]]}]}, IMAGE),
    ({"instances": [[[[1, 2, 3], [4, 5, 6]]], [[[7, 8, 9], [0, 0, 0]]]]}, IMAGE),  # plain list: one array
    ({"instances": [{"images": [[[1, 2, 3]]]}, {"images": [[[4, 5, 6]]]}]}, IMAGE),  # two instances, stacked
    ({"inputs": {"images": [[[[1, 2, 3], [4, 5, 6]]]]}}, IMAGE),
    ({"inputs": [[[[1, 2, 3], [4, 5, 6]]]]}, IMAGE),
    ({"signature_name": "s", "inputs": {"x": [[1.5, -2, 3e-3, 1E+5, -0.0, 12345678]]}}, FLOATS),
    ({"inputs": {"x": [[1, 2, 3, 16777217, -9223372036854775807]]}}, FLOATS),  # ints into float32, via int64
    ({"inputs": {"x": [[0.1, 2], [3, 4.25]]}}, {"x": spec("double")}),
    ({"inputs": {"x": [[-5, 7], [2147483647, -2147483648]]}}, {"x": spec("int32")}),
    ({"inputs": {"x": [[1.5, 70000.0]]}}, {"x": spec("half")}),
    ({"inputs": {"x": [[1, 2], [3, 4]], "y": "text"}}, {"x": spec("int64"), "y": spec("string")}),
])
@pytest.mark.parametrize("dumps", [
    lambda d: json.dumps(d).encode(),
    lambda d: json.dumps(d, separators=(",", ":")).encode(),
    lambda d: json.dumps(d, separators=(" , ", " : ")).encode(),
])
def test_dense_arrays_decode_as_the_general_path_does_and_take_the_fast_path(body, specs, dumps):
    raw = dumps(body)
    outcome = _same(raw, specs)
    assert isinstance(outcome[0], bool), outcome  # decoded, not an error
    assert _dense_values(json_codec.parse_predict_json(raw)), "the fast path was not taken"


@pytest.mark.parametrize("raw, specs", [
    (b'{"inputs": {"images": [[1, 2, 300]]}}', IMAGE),  # out of range
    (b'{"inputs": {"images": [[1, -2, 3]]}}', IMAGE),
    (b'{"inputs": {"images": [[1, 2.5, 3]]}}', IMAGE),  # a fraction for an integer input
    (b'{"inputs": {"images": [[1, 2.0, 3]]}}', IMAGE),
    (b'{"inputs": {"images": [[1, 2e2, 3]]}}', IMAGE),
    (b'{"inputs": {"x": [[1, 123456789012345678901234567890]]}}', FLOATS),  # beyond 64 bits
    (b'{"inputs": {"x": [[1, -9223372036854775809]]}}', {"x": spec("int64")}),
    (b'{"inputs": {"x": [[1, 18446744073709551615]]}}', {"x": spec("uint64")}),
    (b'{"inputs": {"x": [[1, 0, 1]]}}', {"x": spec("bool")}),
    (b'{"inputs": {"x": [[1, 2, 3]]}}', {"x": spec("string")}),
    (b'{"inputs": {"x": [[1, 2, 3]]}}', {"x": spec("complex64")}),
    (b'{"inputs": {"x": [[1, 2], [3, 4, 5]]}}', FLOATS),  # ragged
    (b'{"instances": [{"images": [[[1, 2, 3]]]}, {"images": [[[4, 5]]]}]}', IMAGE),  # instances differ
    (b'{"instances": [{"images": [[[1, 2, 3]]]}, {"images": [[[4, 5, 6]], [[7, 8, 9]]]}]}', IMAGE),
    (b'{"instances": [{"images": [[[1, 2, 3]]]}, {"images": 5}]}', IMAGE),
    (b'{"instances": [[[1, 2, 3]], [[4, 5, 6]]]}', {"images": spec("uint8"), "other": spec("uint8")}),
    (b'{"inputs": {"x": [[1, 2, 3]]}, "instances": [[1, 2, 3]]}', FLOATS),
    (b'{"signature_name": [1, 2, 3, 4], "inputs": {"x": [[1, 2, 3]]}}', FLOATS),
    # not JSON, or not where an array may stand: the general path's parse errors
    (b'{"inputs": {"x": [[1,]2, [3, 4]]}}', FLOATS),
    (b'{"inputs": {"x": [[1, 2]3, [4, 5]]}}', FLOATS),
    (b'{"inputs": {"x": [[1, 2], 3[4, 5]]}}', FLOATS),
    (b'{"inputs": {"x": [[1 2], [3, 4]]}}', FLOATS),
    (b'{"inputs": {"x": [[01, 2], [3, 4]]}}', FLOATS),
    (b'{"inputs": {"x": [[+1, 2], [3, 4]]}}', FLOATS),
    (b'{"inputs": {"x": [[.5, 2], [3, 4]]}}', FLOATS),
    (b'{"inputs": {"x": [[5., 2], [3, 4]]}}', FLOATS),
    (b'{"inputs": {"x": [[1, 2], [3, 4],]}}', FLOATS),
    (b'{"inputs": {"x": [[1, 2], [3, 4]]}', FLOATS),
    (b'{"inputs": {"x": 1, [[1, 2], [3, 4]]: 2}}', FLOATS),  # an array where a key goes
    (b'{"inputs": {"x": [[1, 2], [3, 4]]}} trailing', FLOATS),
    (b'{"inputs": {"x": [[1, 2], [NaN, 4]]}}', FLOATS),
    (b'{"inputs": {"x": "[[1, 2], [3, 4]]"}}', FLOATS),  # an array's text inside a string
    (b'{"inputs": {"x": "a\\"b", "y": [[1, 2], [3, 4]]}}', {"x": spec("string"), "y": spec("float")}),
])
def test_everything_else_gets_the_general_paths_answer(raw, specs):
    _same(raw, specs)


def test_an_array_text_inside_a_string_stays_a_string():
    raw = b'{"inputs": {"x": "[[1, 2], [3, 4]]", "y": [[1, 2], [3, 4]]}}'
    doc = json_codec.parse_predict_json(raw)
    assert doc["inputs"]["x"] == "[[1, 2], [3, 4]]"
    assert isinstance(doc["inputs"]["y"], DenseArray) and doc["inputs"]["y"].shape == (2, 2)


def test_mutated_bodies_decode_as_the_general_path_does():
    """Random edits of valid bodies (one byte inserted, deleted or replaced by a JSON-significant one): whatever
    the edit makes of the body, both paths agree on the arrays or on the error."""
    rng = random.Random(1234)
    seeds = [
        json.dumps({"inputs": {"x": [[[1, 2], [3, 4]], [[5, 6], [7, 8]]]}}).encode(),
        json.dumps({"instances": [{"x": [[1.5, 2], [-3, 4e1]]}, {"x": [[5, 6], [7, 8]]}]}).encode(),
        json.dumps({"instances": [[[1, 2, 3]], [[4, 5, 6]]]}, separators=(",", ":")).encode(),
    ]
    alphabet = b'[],.:{}" -+eE0123456789'
    for specs in (FLOATS, {"x": spec("uint8")}):
        for _ in range(700):
            raw = bytearray(rng.choice(seeds))
            for _ in range(rng.randint(1, 2)):
                i = rng.randrange(len(raw))
                op = rng.random()
                if op < 0.33:
                    del raw[i]
                elif op < 0.66:
                    raw.insert(i, rng.choice(alphabet))
                else:
                    raw[i] = rng.choice(alphabet)
            _same(bytes(raw), specs)


def test_a_large_image_body_takes_the_fast_path_at_the_real_threshold(monkeypatch):
    monkeypatch.undo()
    image = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    raw = json.dumps({"instances": [{"images": image.tolist()}]}).encode()
    assert len(raw) > json_dense.MIN_RUN_BYTES
    doc = json_codec.parse_predict_json(raw)
    assert [d.shape for d in _dense_values(doc)] == [(128, 128, 3)]
    inputs, rows = json_codec.decode_predict(doc, IMAGE)
    assert rows and inputs["images"].dtype == np.uint8 and np.array_equal(inputs["images"][0], image)


N18 = 2**59 + 2**35 + 1  # an integer whose float32 differs when rounded once (via int64) or twice (via float64)
RANK64 = b"[" * 64 + b"12,12" + b"]" * 64


@pytest.mark.parametrize("raw, specs", [
    # one float anywhere in a batch sends every number through float64, as the general path's batch does
    (b'{"instances": [{"x": [%d, 1, 2]}, {"x": [1.5, 1, 2]}]}' % N18, FLOATS),
    (b'{"instances": [{"x": [%d, 1, 2]}, {"x": [3, 1, 2]}]}' % N18, FLOATS),
    # stacking rank-64 instances would need 65 dimensions: the general path's error, not a crash
    (b'{"instances": [{"x": %s}, {"x": %s}]}' % (RANK64, RANK64), FLOATS),
    # nesting: past orjson's 1024 levels the general path decides (too deep), however the dense arrays sit
    (b'{"inputs": {"x": [1, 2, 3]}, "junk": ' + b"[" * 1000 + b"]" * 1000 + b"}", FLOATS),
    (b'{"inputs": {"x": 1}, "junk": ' + b"[" * 960 + b'"s", ' + RANK64 + b"]" * 960 + b"}", FLOATS),
    (b" " * 100, FLOATS),  # the empty document
])
def test_review_findings_decode_as_the_general_path_does(raw, specs):
    _same(raw, specs)


def test_a_list_opening_with_spaces_takes_the_fast_path():
    """orjson 3.13 fails on some long compact lists that open with "[  "; the flat list is stripped first."""
    raw = b'{"inputs": {"x": [[  ' + b"1," * 999 + b"1]]}}"
    assert _same(raw, {"x": spec("uint8")})[0] is False
    assert [d.shape for d in _dense_values(json_codec.parse_predict_json(raw))] == [(1, 1000)]


def test_finding_arrays_reads_each_byte_once_for_quotes(monkeypatch):
    """Runs that are not dense arrays must not make the quote count start over: the scan stays linear."""
    monkeypatch.setattr(json_dense, "MIN_RUN_BYTES", 64)
    scanned = []

    class Body(bytes):
        def count(self, sub, start=0, end=None):  # noqa: D102 - records how much of the body each count reads
            scanned.append((end if end is not None else len(self)) - start)
            return bytes.count(self, sub, start, end)

    body = Body(b'{"a": "q", "b": ' + (b"[" + b"1," * 40 + b"x") * 200 + b"}")
    assert json_dense.extract(body) is None  # no run is an array
    assert len(scanned) >= 100 and sum(scanned) <= len(body)


def test_float64_text_of_float32_values_decodes_on_the_fast_path(monkeypatch):
    """``json.dumps(float32_array.tolist())`` (TF Serving's clients' bodies) writes up to 17 significant digits,
    so small numbers have 19+ digits after the point ("0.00012345678901234567"): only integers that long may not
    fit 64 bits, so such text stays on the fast path, and decodes as the general path does."""
    x = np.random.default_rng(0).random((1, 8, 8, 3), dtype=np.float32) * np.float32(1e-3)
    raw = json.dumps({"instances": x.tolist()}).encode()
    assert any(len(t.split(".")[-1]) >= 19 for t in raw.decode().replace("[", "").replace("]", "").split(", "))
    _same(raw, FLOATS)

    def general(doc):
        raise AssertionError("decoded the general way")

    monkeypatch.setattr(json_codec, "_general", general)
    inputs, rows = json_codec.decode_predict(json_codec.parse_predict_json(raw), FLOATS)
    assert rows and inputs["x"].dtype == np.float32 and np.array_equal(inputs["x"], x)


@pytest.mark.parametrize("raw", [
    # integers beyond 64 bits beside a fraction: every number goes through float64 on both paths
    b'{"inputs": {"x": [[1.5, 123456789012345678901234567890]]}}',
    b'{"inputs": {"x": [[1.5, 12345678901234567890], [-9223372036854775809, 0.25]]}}',
    b'{"instances": [{"x": [1.5, 99999999999999999999]}, {"x": [2, 3]}]}',
    # numbers touching brackets at the array's ends
    b'{"inputs": {"x": [[1, 2], [3, 4]]5}}',
    b'{"inputs": {"x": 5[[1, 2], [3, 4]]}}',
])
def test_long_integers_among_floats_and_numbers_at_brackets_decode_as_the_general_path_does(raw):
    _same(raw, FLOATS)


# --- numbers read by simdjson (json_dense._simdjson_array) ------------------------------------------------------------

DOUBLES = {"x": spec("double")}
BIG = 2**63 + 2**11 + 1  # in uint64, beyond int64: a double only by rounding


def _simdjson_read(raw: bytes) -> list[DenseArray]:
    """The DenseArrays of a body whose numbers simdjson read (a float64 ndarray, not orjson's list)."""
    return [d for d in _dense_values(json_codec.parse_predict_json(raw)) if isinstance(d.values, np.ndarray)]


@pytest.mark.parametrize("numbers", [
    b"-0.0, 0.0, -0e0, 0.5, -1e-400, -0",  # negative zeros (and "-0", an integer: +0.0 on both paths)
    b"5e-324, -5e-324, 2.4703282292062328e-324, 2.4703282292062327e-324, 2.2250738585072011e-308, 1e-310",  # subnormals
    b"1.7976931348623157e308, -1.7976931348623157e308, 1e-400, 0e999",  # the largest double, underflow to zero
    b"0.30000000000000004441, 1.00000000000000011102230246251565404236316680908203125, 7.0E-1, 7e+1",  # rounding
    b"1.5, 9007199254740993, -9007199254740993, %d, %d, 9223372036854775807, -9223372036854775808" % (N18, BIG),
    b"1.5, 18446744073709551615, 123456789012345678901234567890e-10, 2",  # integers among floats
])
@pytest.mark.parametrize("specs", [DOUBLES, FLOATS])
def test_float_text_reads_as_the_general_path_reads_it(numbers, specs):
    count = numbers.count(b",") + 1
    raw = b'{"inputs": {"x": [[%s], [%s]]}}' % (numbers, b", ".join([b"0.25"] * count))
    outcome = _same(raw, specs)
    assert outcome[0] is False, outcome  # decoded, not an error
    assert [d.shape for d in _simdjson_read(raw)] == [(2, count)], "simdjson did not read the array"


@pytest.mark.parametrize("raw", [
    # ragged: simdjson flattens any nesting, so only the shape check stands between these and a wrong tensor
    b'{"inputs": {"x": [[1.5, 2], [3.5], [4, 5, 6.5]]}}',  # 6 numbers, as (3, 2) would have
    b'{"inputs": {"x": [[1.5, 2], 3.5, [4, 5]]}}',
    b'{"inputs": {"x": [[1.5, [2, 3]], [4.5, 5]]}}',
    b'{"instances": [[1.5, 2], [3.5, 4, 5]]}',
    # JSON syntax inside the array: the numbers' own, and their places
    b'{"inputs": {"x": [[01.5, 2], [3, 4]]}}',
    b'{"inputs": {"x": [[1.5, +2], [3, 4]]}}',
    b'{"inputs": {"x": [[.5, 2], [3, 4]]}}',
    b'{"inputs": {"x": [[5., 2], [3, 4]]}}',
    b'{"inputs": {"x": [[1.5, 2e], [3, 4]]}}',
    b'{"inputs": {"x": [[1.5, 2], [3.4.5, 4]]}}',
    b'{"inputs": {"x": [[1.5, 2], [-, 4]]}}',
    b'{"inputs": {"x": [[1.5 2], [3, 4]]}}',
    b'{"inputs": {"x": [[1.5, 2]3, [4, 5]]}}',
    b'{"inputs": {"x": [[1.5, 2], [3, 4],]}}',
    b'{"inputs": {"x": [[1.5, 2], [3, 4]]]}}',
    b'{"inputs": {"x": [[1.5, 2], [3, 4]]5}}',
    # beyond a double, integers beyond 64 bits, non-finite tokens
    b'{"inputs": {"x": [[1.5, 1e400], [3, 4]]}}',
    b'{"inputs": {"x": [[1.5, -1e400], [3, 4]]}}',
    b'{"inputs": {"x": [[1.5, 1.7976931348623159e308], [3, 4]]}}',
    b'{"inputs": {"x": [[1.5, 18446744073709551616], [3, 4]]}}',
    b'{"inputs": {"x": [[1.5, -9223372036854775809], [3, 4]]}}',
    b'{"inputs": {"x": [[1.5, NaN], [3, 4]]}}',
    # an array's text inside a string, beside a real one
    b'{"inputs": {"x": [[1.5, 2]], "s": "[[1.5, 2], [3.25, 4]]"}}',
    b'{"inputs": {"x": "[[1.5, 2], [3.25, 4]]"}}',
])
@pytest.mark.parametrize("specs", [DOUBLES, FLOATS, {"x": spec("int32")}])
def test_float_text_errors_are_the_general_paths(raw, specs):
    _same(raw, specs)


def test_an_array_text_inside_a_string_stays_a_string_with_floats():
    raw = b'{"inputs": {"x": [[1.5, 2]], "s": "[[1.5, 2], [3.25, 4]]"}}'
    doc = json_codec.parse_predict_json(raw)
    assert doc["inputs"]["s"] == "[[1.5, 2], [3.25, 4]]"
    assert [d.shape for d in _simdjson_read(raw)] == [(1, 2)]


def test_random_decimal_text_reads_as_the_general_path_reads_it():
    """Many spellings of doubles (17 to 25 digits, exponents from subnormal to near overflow, both signs): each
    reads to the same double bits on both paths."""
    rng = random.Random(20)
    numbers = []
    for _ in range(3000):
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 25)))
        number = f"{rng.choice(['', '-'])}{rng.randint(0, 9)}.{digits}"
        if rng.random() < 0.7:
            number += f"{rng.choice('eE')}{rng.choice(['', '+', '-'])}{rng.randint(0, 330)}"
        numbers.append(number)
    numbers = [n for n in numbers if abs(float(n)) <= 1.7e308]
    raw = b'{"inputs": {"x": [%s]}}' % ", ".join(numbers).encode()
    assert _same(raw, DOUBLES)[0] is False
    assert [d.shape for d in _simdjson_read(raw)] == [(len(numbers),)]


def test_a_resnet_sized_body_is_read_by_simdjson_at_the_real_threshold(monkeypatch):
    """TF Serving's resnet_client.py body (``json.dumps`` of a float32 image's ``tolist()``), row and columnar."""
    monkeypatch.undo()
    x = np.random.default_rng(5).random((1, 64, 64, 3), dtype=np.float32) - np.float32(0.5)
    x[0, 0, 0] = [-0.0, 1e-40, 3.4028235e38]  # a negative zero, a float32 subnormal, float32's largest
    for raw in (json.dumps({"instances": x.tolist()}).encode(), json.dumps({"inputs": x.tolist()}).encode()):
        assert [d.shape for d in _simdjson_read(raw)] == [(1, 64, 64, 3)]
        inputs, _ = json_codec.decode_predict(json_codec.parse_predict_json(raw), FLOATS)
        assert inputs["x"].tobytes() == x.tobytes()
        _same(raw, FLOATS)


@pytest.mark.parametrize("raw", [
    b'{"inputs": {"x": ["s", [[1.5, 2]], [[3.5, 4]]]}}',
    b'{"inputs": {"x": ["s", [[1, 2]], [[3, 4]]]}}',
    b'{"inputs": {"x": ["s", [[1.5, 2]], 7]}}',
])
def test_an_array_ends_at_its_first_closing_brackets_not_the_runs_last(raw):
    """The end is tried at the run's last "]" * rank first (no search through the whole array); when that text
    is not dense, the first one decides, as a search from the start would."""
    assert [d.shape for d in _dense_values(json_codec.parse_predict_json(raw))] == [(1, 2)]
    _same(raw, FLOATS)


@pytest.mark.parametrize("numbers, dtype", [
    (b"0, 255, 7, -0", "uint8"),
    (b"-2147483648, 2147483647, 0", "int32"),
    (b"-9223372036854775808, 9223372036854775807, -0", "int64"),
    (b"0, 9223372036854775807", "uint64"),
    (b"%d, -9223372036854775807, 16777217, 9007199254740993" % N18, "float"),  # int64 first, then float32
    (b"%d, 9223372036854775807, -9223372036854775808" % N18, "double"),
    (b"1, 2, 65504, 65520, -65520", "half"),  # beyond float16: inf, as the general path makes it
])
def test_integer_text_reads_as_the_general_path_reads_it(numbers, dtype):
    count = numbers.count(b",") + 1
    raw = b'{"inputs": {"x": [[%s], [%s]]}}' % (numbers, b", ".join([b"1"] * count))
    outcome = _same(raw, {"x": spec(dtype)})
    assert outcome[0] is False, outcome  # decoded, not an error
    assert [(d.shape, d.values.dtype) for d in _simdjson_read(raw)] == [((2, count), np.int64)]


@pytest.mark.parametrize("numbers", [
    b"1, 256", b"-1, 0", b"1, 2147483648", b"1, -2147483649",  # beyond uint8 or int32
    b"1, 9223372036854775808", b"1, -9223372036854775809", b"1, 18446744073709551616",  # beyond int64 / uint64
    b"1, 99999999999999999999999999999999999999", b"01, 2", b"1, 2 3", b"1, -", b"1, --2",
])
@pytest.mark.parametrize("dtype", ["uint8", "int32", "int64", "uint64", "float", "bool"])
def test_integer_text_errors_are_the_general_paths(numbers, dtype):
    _same(b'{"inputs": {"x": [[%s], [7, 8]]}}' % numbers, {"x": spec(dtype)})


def test_a_batch_of_integer_and_float_instances_goes_through_float64_as_the_general_path():
    """One float in any instance sends every number of the batch through float64 (N18 rounds differently)."""
    raw = b'{"instances": [{"x": [%d, 1, 2]}, {"x": [1.5, 1, 2]}]}' % N18
    assert sorted(str(d.values.dtype) for d in _simdjson_read(raw)) == ["float64", "int64"]
    assert _same(raw, FLOATS)[0] is True
