"""TF Serving's REST JSON <-> numpy, as ``util/json_tensor.cc`` reads and writes it, on orjson.

Reading: a predict body's "instances" (row format) or "inputs" (columnar) become one numpy array per signature
input, typed by the input's dtype; a classify/regress body's "examples" and "context" become tf.Examples. The rules
and the error texts are TF Serving's ("JSON Parse error", "is not of expected type", "'signature_name' key must be
a string value", ...), so clients that match on them keep working. ``NaN``, ``Infinity``, ``-Infinity``, ``Inf`` and
``-Inf`` are accepted as numbers, as rapidjson's kParseNanAndInfFlag accepts them.

Writing: outputs go out as "predictions" (rows) or "outputs" (columns). float32 values are written as the shortest
decimal that parses back to the same float32 (``2.1``, not ``2.0999999046325684``), doubles as the shortest double,
non-finite values as the bare tokens ``NaN``, ``Infinity`` and ``-Infinity`` as TF Serving writes them. Strings of
outputs named ``*_bytes`` are ``{"b64": ...}`` objects. orjson serializes numpy arrays in C, so a DeepLab-sized
reply (5.5M float32) takes tens of milliseconds instead of a second of ``json.dumps`` over Python lists.
"""

from __future__ import annotations

import base64
import binascii
import gc
import json
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from itertools import chain
from typing import Any, Protocol

import numpy as np
import orjson
import pybase64
from google.protobuf import json_format
from tensorflow.core.framework import types_pb2

from tfsctl.errors import InvalidArgument, Unimplemented
from tfsctl.serving import json_dense
from tfsctl.serving.json_dense import DenseArray

_NUMPY = orjson.OPT_SERIALIZE_NUMPY
_MAX_RANK = 64  # numpy's limit on dimensions (TensorShape allows 254; no real signature comes close)
_DEBUG_BYTES = 256  # TF Serving's kMaxJsonDebugStringBytes: values quoted in errors are cut here
_B64 = "b64"
_BYTES_SUFFIX = "_bytes"
_NONFINITE = {"nan": b"NaN", "inf": b"Infinity", "-inf": b"-Infinity"}
# Numeric dtypes orjson writes natively; anything else numeric is widened to float32 first (bfloat16).
_ORJSON_KINDS = {np.dtype(t) for t in (np.float16, np.float32, np.float64, np.int8, np.int16, np.int32, np.int64,
                                       np.uint8, np.uint16, np.uint32, np.uint64, np.bool_)}


class InputSpec(Protocol):
    """What the codec needs of a signature input: its numpy dtype and its TensorFlow DataType enum."""

    dtype: np.dtype
    dtype_enum: int


# --- parsing ----------------------------------------------------------------------------------------------------------

# Strings are matched first so NaN/Inf tokens inside them are left alone.
_CONSTANTS = re.compile(r'"(?:[^"\\]|\\.)*"|-?(?:Infinity|Inf|NaN)')
_STDLIB_CONSTANT = {"Infinity": "Infinity", "Inf": "Infinity", "-Infinity": "-Infinity", "-Inf": "-Infinity",
                    "NaN": "NaN", "-NaN": "NaN"}
# Python's json error texts -> rapidjson's (GetParseError_En), which TF Serving puts after "JSON Parse error: ".
_RAPIDJSON_ERRORS = (
    ("Expecting value", "Invalid value."),
    ("Expecting property name", "Missing a name for object member."),
    ("Expecting ':' delimiter", "Missing a colon after a name of object member."),
    ("Unterminated string", "Missing a closing quotation mark in string."),
    ("Invalid \\uXXXX", "Incorrect hex digit after \\u escape in string."),
    ("Invalid \\escape", "Invalid escape character in string."),
    ("Invalid control character", "Invalid encoding in string."),
)


_TOO_BIG = "Number too big to be stored in double."

# Bodies from this size on are parsed with the cyclic garbage collector paused (see _gc_paused).
_GC_PAUSE_BYTES = 64 << 10
_gc_lock = threading.Lock()


@contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while the block runs (in any thread: the switch is per process).

    A parsed body is a tree of fresh lists and dicts, so the collector has nothing to find in it, but every 700
    container allocations start a collection that walks them all over again: a 256x256 RGB image in "instances"
    is 65k lists, which cost about as much in collections as the parse itself (16 ms of 55 ms to parse and decode,
    most of it in full collections, which run nearly every such request once the process's long-lived objects are
    frozen). Only the block that found the collector on turns it off and back on, so the collector is never off
    for longer than one parse, however many overlap (a count of overlapping parses could keep it off for good).
    """
    with _gc_lock:
        mine = gc.isenabled()
        if mine:
            gc.disable()
    try:
        yield
    finally:
        if mine:
            gc.enable()


def parse_json(body: bytes) -> dict:
    """The request body as a JSON object; InvalidArgument with TF Serving's texts when it is not one."""
    if not body or body.isspace():  # not body.strip(): that copies a body with a trailing newline
        raise InvalidArgument("JSON Parse error: The document is empty")
    if len(body) >= _GC_PAUSE_BYTES:
        with _gc_paused():
            return _parse_object(body)
    return _parse_object(body)


class _DenseDoc(dict):
    """A predict body parsed with its large dense arrays read straight from the bytes (:mod:`json_dense`); keeps
    the body, so anything the fast path does not decide is parsed again the general way."""

    __slots__ = ("body",)
    body: bytes


def parse_predict_json(body: bytes) -> dict:
    """:func:`parse_json` for a predict body: large dense numeric arrays come back as ``DenseArray``
    (:func:`decode_predict` converts them, or parses the body again when they do not fit)."""
    if len(body) < _GC_PAUSE_BYTES or body.isspace():
        return parse_json(body)
    with _gc_paused():
        found = json_dense.extract(body)
        if found is not None:
            try:
                doc = orjson.loads(found[0])
            except orjson.JSONDecodeError:
                doc = None
            if isinstance(doc, dict) and json_dense.replace(doc, found[1]) is not None:
                dense = _DenseDoc(doc)
                dense.body = body
                return dense
        return _parse_object(body)


def _general(doc: dict) -> dict:
    """The body of a :class:`_DenseDoc` parsed the general way (nested lists); any other doc as it is."""
    return parse_json(doc.body) if isinstance(doc, _DenseDoc) else doc


def _parse_object(body: bytes) -> dict:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        if e.msg.startswith("number is infinity"):  # beyond a double: rapidjson's kParseErrorNumberTooBig
            raise InvalidArgument(f"JSON Parse error: {_TOO_BIG} at offset: {e.pos}") from None
        doc = _parse_tolerant(body)
    if not isinstance(doc, dict):
        raise InvalidArgument(f"JSON Value: {debug_string(doc)} Is not object")
    return doc


def _parse_tolerant(body: bytes) -> Any:
    """What orjson refuses but TF Serving's rapidjson accepts: NaN/Infinity/Inf tokens, trailing bytes after the
    document (kParseStopWhenDoneFlag), invalid UTF-8 inside strings. Slow (stdlib json), so only a fallback."""
    text = body.decode("utf-8", "surrogateescape")
    if "Inf" in text or "NaN" in text:
        text = _CONSTANTS.sub(lambda m: _STDLIB_CONSTANT.get(m.group(0), m.group(0)), text)
    start = len(text) - len(text.lstrip())
    try:
        doc, _ = json.JSONDecoder().raw_decode(text, start)
    except RecursionError:
        raise InvalidArgument("JSON Parse error: the document is nested too deeply") from None
    except ValueError as e:  # an integer beyond Python's digit limit for str -> int (4300 digits)
        if isinstance(e, json.JSONDecodeError):
            raise InvalidArgument(f"JSON Parse error: {_rapidjson_message(e, text)} at offset: {e.pos}") from None
        raise InvalidArgument(f"JSON Parse error: {_TOO_BIG}") from None
    return doc


def _rapidjson_message(e: json.JSONDecodeError, text: str) -> str:
    if e.msg.startswith("Expecting ',' delimiter"):
        return ("Missing a comma or '}' after an object member." if _innermost_bracket(text, e.pos) == "{"
                else "Missing a comma or ']' after an array element.")
    for python, rapid in _RAPIDJSON_ERRORS:
        if e.msg.startswith(python):
            return rapid
    return e.msg + "."


def _innermost_bracket(text: str, pos: int) -> str:
    """The innermost open bracket at ``pos`` (strings skipped); error path only."""
    stack: list[str] = []
    for m in re.finditer(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', text[:pos]):
        tok = m.group(0)
        if tok in "[{":
            stack.append(tok)
        elif tok in "]}" and stack:
            stack.pop()
    return stack[-1] if stack else "["


def debug_string(value: Any) -> str:
    """A JSON value as TF Serving quotes it in errors: compact and cut at 256 bytes."""
    try:
        text = orjson.dumps(value, option=_NUMPY, default=str)
    except (TypeError, orjson.JSONEncodeError):
        text = repr(value).encode()
    return text[:_DEBUG_BYTES].decode("utf-8", "ignore")


def signature_name(doc: dict) -> str:
    """The optional "signature_name" ("" when absent)."""
    sig = doc.get("signature_name", "")
    if not isinstance(sig, str):
        doc = _general(doc)
        raise InvalidArgument(f"JSON Value: {debug_string(doc)} not formatted correctly. "
                              "'signature_name' key must be a string value.")
    return sig


# --- JSON value -> numpy ----------------------------------------------------------------------------------------------


def dtype_string(dtype_enum: int) -> str:
    """TensorFlow's DataTypeString: DT_FLOAT -> "float", DT_STRING -> "string"."""
    try:
        return types_pb2.DataType.Name(dtype_enum)[3:].lower()
    except ValueError:
        return f"type {dtype_enum}"


def _dt(dtype_enum: int) -> str:
    try:
        return types_pb2.DataType.Name(dtype_enum)
    except ValueError:
        return f"type {dtype_enum}"


def _named(name: str, spec: InputSpec, convert: Callable[[], np.ndarray]) -> np.ndarray:
    """Run a conversion for input ``name``; errors keep TF Serving's text and get the input named after it."""
    try:
        return convert()
    except InvalidArgument as e:
        raise InvalidArgument(f"{e.message} [input '{name}', {_dt(spec.dtype_enum)}]") from None


def _json_type(value: Any) -> str:
    if value is None:
        return "Null"
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def _type_error(value: Any, dtype_enum: int, why: str = "") -> InvalidArgument:
    return InvalidArgument(f"JSON Value: {debug_string(value)} Type: {_json_type(value)} is not of expected type: "
                           f"{dtype_string(dtype_enum)}{why}")


def is_b64(value: Any) -> bool:
    """TF Serving's base64 object: exactly one key, "b64", holding a string."""
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get(_B64), str)


def _b64decode(value: Any) -> bytes:
    if not is_b64(value):
        raise InvalidArgument(f"JSON Value: {debug_string(value)} not formatted correctly for base64 data")
    data = value[_B64].strip()
    data += "=" * (-len(data) % 4)  # absl::Base64Unescape also takes unpadded input
    try:
        # SIMD, 30x the standard library on a 3 MB image. Where it decodes, it decodes as the standard library does;
        # it refuses a little more (padding beyond a complete group, "YWJj="), which the standard library decides.
        return pybase64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        pass
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument(f"Unable to base64 decode: {debug_string(value)}") from None


def _dense_shape(value: Any) -> list[int]:
    """TF Serving's GetDenseTensorShape: the shape read down the first elements."""
    shape: list[int] = []
    while isinstance(value, list):
        if len(shape) == _MAX_RANK:
            raise InvalidArgument(f"JSON Value: {debug_string(value)} nested more than {_MAX_RANK} levels deep "
                                  "(the most dimensions a tensor can have)")
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _walk(value: Any, shape: list[int], leaf: Callable[[Any], Any], out: list) -> None:
    """TF Serving's FillTensorProto: check the nesting against ``shape`` and collect ``leaf(v)`` in order."""
    rank = len(shape)
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        v, level = stack.pop()
        if not isinstance(v, list):
            if level != rank:
                raise InvalidArgument(f"JSON Value: {debug_string(v)} found at incorrect level: {level + 1} "
                                      f"in the JSON DOM. Expected at level: {rank}")
            out.append(leaf(v))
            continue
        if level >= rank:
            raise InvalidArgument(f"Encountered list at unexpected level: {level} expected < {rank}")
        if len(v) != shape[level]:
            raise InvalidArgument(f"Encountered list at unexpected size: {len(v)} at level: {level} "
                                  f"expected size: {shape[level]}")
        stack.extend((item, level + 1) for item in reversed(v))


def _flat_leaves(value: Any) -> tuple[list, list[int]] | None:
    """The leaves of a dense nested list and its shape, level by level in C (map/chain); None when the nesting
    is not dense (or too deep), so the exact walk can say where."""
    shape: list[int] = []
    probe = value
    while isinstance(probe, list):
        shape.append(len(probe))
        if not probe:
            break
        probe = probe[0]
    if len(shape) > _MAX_RANK:
        return None
    items = [value]
    for n in shape:
        if set(map(type, items)) != {list} or set(map(len, items)) != {n}:
            return None if items else ([], shape)
        items = list(chain.from_iterable(items))
    if list in set(map(type, items)):
        return None
    return items, shape


def _leaves(value: Any, leaf: Callable[[Any], Any]) -> tuple[list, list[int]]:
    shape = _dense_shape(value)
    out: list = []
    _walk(value, shape, leaf, out)
    return out, shape


def _string_leaf(dtype_enum: int) -> Callable[[Any], bytes]:
    def leaf(v: Any) -> bytes:
        if isinstance(v, str):
            return v.encode("utf-8", "surrogateescape")
        if isinstance(v, dict):
            return _b64decode(v)
        raise _type_error(v, dtype_enum)
    return leaf


def _check_leaf(ok: Callable[[Any], bool], dtype_enum: int, why: str = "") -> Callable[[Any], None]:
    def leaf(v: Any) -> None:
        if not ok(v):
            raise _type_error(v, dtype_enum, why)
    return leaf


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _is_integer(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def json_to_tensor(value: Any, spec: InputSpec) -> np.ndarray:
    """One tensor's JSON (a scalar or nested lists) as an array of the input's dtype, with TF Serving's checks.

    Numbers go through numpy in C; the Python walk (for exact error texts) runs only when that fails.
    """
    dtype, enum = np.dtype(spec.dtype), spec.dtype_enum
    if isinstance(value, DenseArray):
        return json_dense.to_array(value, dtype)
    if enum == types_pb2.DT_STRING or dtype.kind in "OSU":
        flat, shape = _leaves(value, _string_leaf(enum))
        arr = np.empty(len(flat), dtype=object)
        arr[:] = flat
        return arr.reshape(shape)
    if dtype.kind not in "biuf":
        first = value
        while isinstance(first, list) and first:
            first = first[0]
        raise Unimplemented(f"Conversion of JSON Value: {debug_string(first)} to type: {dtype_string(enum)}")
    flat_leaves = _flat_leaves(value)
    if flat_leaves is not None:
        leaves, shape = flat_leaves
        types = set(map(type, leaves))
        if dtype.kind == "b":
            ok = types <= {bool}
        elif dtype.kind == "f":
            ok = types <= {int, float}
        else:
            ok = types <= {int}
        if ok:
            src = np.asarray(leaves) if leaves else np.zeros(0, dtype)
            if src.dtype.kind == "O":  # integers beyond 64 bits: rapidjson reads them as doubles
                src = src.astype(np.float64) if dtype.kind == "f" else src
            if dtype.kind in "iu" and src.size:
                info = np.iinfo(dtype)
                if src.dtype.kind == "O" or int(src.min()) < info.min or int(src.max()) > info.max:
                    bad = next((v for v in leaves if not info.min <= v <= info.max), None)
                    if bad is not None:
                        raise _type_error(bad, enum, f" (out of range for {_dt(enum)} [{info.min}, {info.max}])")
                    src = np.array(leaves, dtype=dtype)  # uint64 beyond int64: in range, numpy held them as objects
            with np.errstate(over="ignore"):  # TF Serving's GetFloat(): out of range becomes +-inf
                return src.astype(dtype).reshape(shape)
    # Slow path: find the first offending value the way TF Serving walks the DOM (structure, then types).
    if dtype.kind == "b":
        _leaves(value, _check_leaf(lambda v: isinstance(v, bool), enum))
    elif dtype.kind == "f":
        _leaves(value, _check_leaf(_is_number, enum))
    else:
        _leaves(value, _check_leaf(_is_integer, enum))
        info = np.iinfo(dtype)
        _leaves(value, _check_leaf(lambda v: info.min <= v <= info.max, enum,
                                   f" (out of range for {_dt(enum)} [{info.min}, {info.max}])"))
    raise InvalidArgument(f"JSON Value: {debug_string(value)} does not form a {dtype_string(enum)} tensor")


# --- predict requests -------------------------------------------------------------------------------------------------


def _shape_string(shape: tuple[int, ...]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def _batch(values: list, spec: InputSpec, where: Callable[[int], str]) -> np.ndarray:
    """Stack one input's per-instance values into a [N, ...] tensor; per-instance errors as TF Serving words them."""
    if values and all(isinstance(v, DenseArray) for v in values):
        return json_dense.stack(values, np.dtype(spec.dtype))
    try:
        return json_to_tensor(values, spec)
    except InvalidArgument:
        first: np.ndarray | None = None
        for i, item in enumerate(values):
            try:
                arr = json_to_tensor(item, spec)
            except InvalidArgument as e:
                raise InvalidArgument(f"{where(i)} Error: INVALID_ARGUMENT: {e.message}") from None
            if first is None:
                first = arr
            elif arr.size != first.size:
                raise InvalidArgument(f"{where(i)} Error: INVALID_ARGUMENT: Expecting tensor size: {first.size} "
                                      f"but got: {arr.size}") from None
            elif arr.shape != first.shape:
                raise InvalidArgument(f"{where(i)} Error: INVALID_ARGUMENT: Expecting shape "
                                      f"{_shape_string(first.shape)} but got: {_shape_string(arr.shape)}") from None
        raise


def _is_element_object(value: Any) -> bool:
    return isinstance(value, dict) and not is_b64(value)


def _from_instances(instances: list, specs: Mapping[str, InputSpec]) -> dict[str, np.ndarray]:
    if not isinstance(instances[0], dict) and len(specs) > 1:
        raise InvalidArgument("instances is a plain list, but expecting list of objects as multiple input tensors "
                              "required as per tensorinfo_map")
    if not _is_element_object(instances[0]):
        for i, item in enumerate(instances):
            if _is_element_object(item):
                raise InvalidArgument(f"Expecting value/list but got object at item {i} of input list")
        name, spec = next(iter(specs.items()))
        return {name: _named(name, spec, lambda: _batch(
            instances, spec, lambda i: f"Failed to process element: {i} of 'instances' list."))}
    names = set(specs)
    for i, item in enumerate(instances):
        if not _is_element_object(item):
            raise InvalidArgument(f"Expecting object but got list at item {i} of input list")
        for key in item:
            if key not in names:
                raise InvalidArgument(f"Failed to process element: {i} key: {key} of 'instances' list. Error: "
                                      f"INVALID_ARGUMENT: JSON object: does not have named input: {key}")
        if len(item) != len(names):
            raise InvalidArgument(f"Failed to process element: {i} of 'instances' list. JSON object: "
                                  f"{debug_string(item)} keys must be equal to: {','.join(sorted(names))}")
    out = {}
    for name, spec in specs.items():
        def where(i: int, n: str = name) -> str:
            return f"Failed to process element: {i} key: {n} of 'instances' list."

        out[name] = _named(name, spec, lambda n=name, sp=spec, w=where: _batch([item[n] for item in instances], sp, w))  # type: ignore[misc]
    return out


def _from_inputs(inputs: Any, specs: Mapping[str, InputSpec]) -> dict[str, np.ndarray]:
    if not isinstance(inputs, dict) or is_b64(inputs):
        if len(specs) > 1:
            raise InvalidArgument("inputs is a plain value/list, but expecting an object as multiple input tensors "
                                  "required as per tensorinfo_map")
        name, spec = next(iter(specs.items()))
        return {name: _named(name, spec, lambda: json_to_tensor(inputs, spec))}
    out = {}
    for name, spec in specs.items():  # TF Serving reads the signature's inputs; other keys are ignored
        if name not in inputs:
            raise InvalidArgument(f"Missing named input: {name} in 'inputs' object.")
        out[name] = _named(name, spec, lambda n=name, sp=spec: json_to_tensor(inputs[n], sp))  # type: ignore[misc]
    return out


def decode_predict(doc: dict, specs: Mapping[str, InputSpec], signature: str = ""
                   ) -> tuple[dict[str, np.ndarray], bool]:
    """A predict body -> (named input arrays, row_format); ``specs`` are the signature's inputs.

    A body from :func:`parse_predict_json` whose dense arrays do not fit (or that fails in any way) is parsed and
    decoded again the general way, so outcomes and error texts are the general path's."""
    if isinstance(doc, _DenseDoc):
        try:
            return _decode_predict(doc, specs, signature)
        except Exception:  # noqa: BLE001 - NotDense, an error or anything unforeseen: the general path decides
            doc = _general(doc)
    return _decode_predict(doc, specs, signature)


def _decode_predict(doc: dict, specs: Mapping[str, InputSpec], signature: str) -> tuple[dict[str, np.ndarray], bool]:
    if not specs:
        raise InvalidArgument(f"Failed to get input map for signature: {signature or 'DEFAULT'}")
    has_rows, has_cols = "instances" in doc, "inputs" in doc
    if has_rows and has_cols:
        raise InvalidArgument(f"JSON Value: {debug_string(doc)} Not formatted correctly expecting only one of "
                              "'inputs' or 'instances' keys to exist ")
    if has_rows:
        instances = doc["instances"]
        if isinstance(instances, DenseArray) and len(specs) == 1:  # a plain list of instances, read as one array
            name, spec = next(iter(specs.items()))
            return {name: json_dense.to_array(instances, np.dtype(spec.dtype))}, True
        if not isinstance(instances, list):
            raise InvalidArgument(f"JSON Value: {debug_string(doc)} Expecting 'instances' to be an list/array")
        if not instances:
            raise InvalidArgument(f"JSON Value: {debug_string(doc)} No values in 'instances' array")
        return _from_instances(instances, specs), True
    if has_cols:
        return _from_inputs(doc["inputs"], specs), False
    raise InvalidArgument("Missing 'inputs' or 'instances' key")


# --- classify / regress requests --------------------------------------------------------------------------------------


def _fill_feature(feature: Any, values: list, name: str) -> None:
    """TF Serving's AddValueToFeature for every value of one feature: one kind per feature."""
    kind: str | None = None

    def want(k: str) -> None:
        nonlocal kind
        if kind is not None and kind != k:
            raise InvalidArgument(f"Unexpected element type in feature: {name} expecting type: {kind}")
        kind = k

    for v in values:
        if v is None or isinstance(v, list) or (isinstance(v, dict) and not is_b64(v)):
            raise InvalidArgument(f"Feature: {name} has element with unexpected JSON type: {_json_type(v)}")
        if isinstance(v, bool):
            want("int64")
            feature.int64_list.value.append(int(v))
        elif isinstance(v, dict):
            want("bytes")
            feature.bytes_list.value.append(_b64decode(v))
        elif isinstance(v, str):
            want("bytes")
            feature.bytes_list.value.append(v.encode("utf-8", "surrogateescape"))
        elif isinstance(v, float):
            want("float")
            feature.float_list.value.append(v)
        else:
            want("int64")
            if v >= 2**63:
                raise InvalidArgument(f"Feature: {name} has uint64_t element. Only int64_t is supported.")
            if v < -(2**63):  # rapidjson reads it as a double
                raise InvalidArgument(f"Unexpected element type in feature: {name} expecting type: int64")
            feature.int64_list.value.append(v)


def _fill_example(features: Any, obj: Any) -> None:
    if not isinstance(obj, dict):
        raise InvalidArgument(f"Example must be JSON object but got JSON {_json_type(obj)}")
    for name, content in obj.items():
        _fill_feature(features.feature[name], content if isinstance(content, list) else [content], name)


def decode_examples(doc: dict, request: Any) -> None:
    """Fill a Classification/RegressionRequest's ``input`` from "context" and "examples" (TF Serving's rules)."""
    target = request.input.example_list
    context: dict = {}
    if "context" in doc:
        target = request.input.example_list_with_context
        _fill_example(target.context.features, doc["context"])
        context = doc["context"]
    examples = doc.get("examples")
    if "examples" not in doc:
        raise InvalidArgument(f"JSON Value: {debug_string(doc)} When method is classify, key 'examples' is expected "
                              "and was not found")
    if not isinstance(examples, list):
        raise InvalidArgument(f"JSON Value: {debug_string(doc)} Expecting 'examples' value to be an list/array")
    if not examples:
        raise InvalidArgument(f"JSON Value: {debug_string(doc)} 'examples' value is an empty array")
    for i, obj in enumerate(examples):
        both = sorted(set(context) & set(obj)) if isinstance(obj, dict) else []
        if both:  # api_rest.md: features in "context" MUST NOT appear in examples
            raise InvalidArgument(f"Feature: {both[0]} of example {i} also appears in 'context'; features in "
                                  "'context' must not appear in examples")
        _fill_example(target.examples.add().features, obj)


# --- numpy -> JSON ----------------------------------------------------------------------------------------------------


def _string_json(arr: np.ndarray, as_bytes: bool) -> Any:
    def enc(v: Any) -> Any:
        if isinstance(v, str):
            v = v.encode("utf-8", "surrogateescape")
        if not as_bytes:
            try:
                return v.decode("utf-8")
            except UnicodeDecodeError:
                pass  # tfsctl writes non-UTF-8 strings as base64 objects rather than invalid JSON
        return {_B64: base64.b64encode(bytes(v)).decode("ascii")}

    flat = [enc(v) for v in arr.ravel().tolist()]
    if arr.ndim == 0:
        return flat[0]
    out = np.empty(len(flat), dtype=object)
    out[:] = flat
    return out.reshape(arr.shape).tolist()


def _nonfinite(arr: np.ndarray) -> bytes:
    """orjson writes NaN/Inf as null; put TF Serving's tokens back, in order (numeric JSON has no other nulls)."""
    parts = orjson.dumps(arr, option=_NUMPY).split(b"null")
    tokens = [_NONFINITE[str(v)] for v in arr[~np.isfinite(arr)].astype(np.float64).tolist()]
    out = bytearray(parts[0])
    for token, part in zip(tokens, parts[1:], strict=True):
        out += token
        out += part
    return bytes(out)


def tensor_json(name: str, arr: np.ndarray) -> Any:
    """An output tensor as something orjson writes the way TF Serving does (arrays stay numpy: no Python floats)."""
    arr = np.asarray(arr)
    if arr.dtype.kind in "OSU":
        return _string_json(arr, name.endswith(_BYTES_SUFFIX))
    if arr.dtype not in _ORJSON_KINDS:
        if arr.dtype.kind == "c" or arr.dtype.kind not in "biuf" and not arr.dtype.name.startswith("bfloat"):
            raise InvalidArgument(f"Failed to write JSON value for tensor type: {arr.dtype.name} (output '{name}')")
        arr = arr.astype(np.float32)
    if arr.ndim == 0:
        arr = arr.reshape(1)
        scalar = True
    else:
        arr = np.ascontiguousarray(arr)
        scalar = False
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        text = _nonfinite(arr)
        return orjson.Fragment(text[1:-1] if scalar else text)
    return arr[0] if scalar else arr


def _dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, option=_NUMPY)


def encode_predict(outputs: Mapping[str, np.ndarray], row_format: bool) -> bytes:
    """TF Serving's predict reply: {"predictions": ...} for row requests, {"outputs": ...} for columnar ones."""
    if not outputs:
        raise InvalidArgument("Cannot convert empty tensor map to JSON")
    if not row_format:
        if len(outputs) == 1:
            name, arr = next(iter(outputs.items()))
            return _dumps({"outputs": tensor_json(name, arr)})
        return _dumps({"outputs": {k: tensor_json(k, v) for k, v in outputs.items()}})
    batch = -1
    for name, arr in outputs.items():
        if np.ndim(arr) == 0:
            raise InvalidArgument(f"Tensor name: {name} has no shape information ")
        if batch >= 0 and arr.shape[0] != batch:
            raise InvalidArgument(f"Tensor name: {name} has inconsistent batch size: {arr.shape[0]} "
                                  f"expecting: {batch}")
        batch = arr.shape[0]
    if len(outputs) == 1:
        name, arr = next(iter(outputs.items()))
        return _dumps({"predictions": tensor_json(name, arr)})
    columns = {}
    for name, arr in outputs.items():
        if np.asarray(arr).dtype.kind in "OSU":
            columns[name] = tensor_json(name, arr)  # nested lists: rows are its items
        else:
            columns[name] = [tensor_json(name, arr[i]) for i in range(batch)]
    return _dumps({"predictions": [{k: rows[i] for k, rows in columns.items()} for i in range(batch)]})


def encode_classification(result: Any) -> bytes:
    """{"results": [[[label, score], ...], ...]}: scores are float32 in the proto, written as float32."""
    rows = []
    for cl in result.classifications:
        scores = np.array([c.score for c in cl.classes], np.float32)
        values = tensor_json("scores", scores)
        if isinstance(values, orjson.Fragment):  # non-finite scores: write them one by one
            values = [tensor_json("scores", s) for s in scores]
        rows.append([[c.label, values[i]] for i, c in enumerate(cl.classes)])
    return _dumps({"results": rows})


def encode_regression(result: Any) -> bytes:
    """{"results": [value, ...]} with float32 values."""
    return _dumps({"results": tensor_json("outputs", np.array([r.value for r in result.regressions], np.float32))})


def encode_error(message: str) -> bytes:
    """TF Serving's error body: {"error": message}."""
    return _dumps({"error": message})


# --- status and metadata ----------------------------------------------------------------------------------------------


def _proto_dict(message: Any) -> dict:
    # TF Serving prints with always_print_fields_with_no_presence; the status protos carry snake_case json_names.
    return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


def _pretty(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1) + "\n").encode()  # TF Serving's add_whitespace output, one-space indent


def encode_status(response: Any) -> bytes:
    """GetModelStatusResponse as TF Serving prints it: {"model_version_status": [{"version": "1", ...}]}."""
    return _pretty(_proto_dict(response))


def encode_metadata(response: Any) -> bytes:
    """GetModelMetadataResponse as TF Serving's REST handler writes it: the SignatureDefMap unpacked from its Any
    (no "@type"), under metadata.signature_def."""
    from tensorflow_serving.apis import get_model_metadata_pb2

    metadata = {}
    for key, packed in response.metadata.items():
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        if not packed.Unpack(sig_map):
            raise InvalidArgument(f"Failed to unpack 'Any' object to 'SignatureDefMap' ({key}).")
        metadata[key] = _proto_dict(sig_map)
    return _pretty({"model_spec": _proto_dict(response.model_spec), "metadata": metadata})
