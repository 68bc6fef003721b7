"""Large dense numeric arrays in a REST body, read from the bytes without building nested Python lists.

Why: a 256x256 RGB image sent as JSON numbers is 65k nested lists and 196k numbers. Parsing it into Python lists and
walking them into a numpy array took about 33 ms of a DeepLab REST request, with the GIL held (more than the model
step). Here each long run of number, bracket and comma characters outside strings is checked to be a dense array
(its brackets and commas exactly those of a tensor of some shape) and parsed by simdjson straight into one flat
ndarray: float64 for float text (a ResNet image as ``json.dumps`` writes float32 values, 3.1 MB: 3-4 ms where orjson
takes 12 ms to make Python floats), exact int64 for integer text (a uint8 image); what simdjson refuses (an integer
beyond int64, a number beyond a double) is parsed by orjson as one flat list. The rest of the body is parsed with a
placeholder string where the array was (:func:`extract`).

Nothing here decides what a request means: a :class:`DenseArray` stands where the nested list stood, and
:func:`to_array` converts it only in the cases whose outcome is certain (numbers for a numeric input, in range).
Everything else raises :class:`NotDense`, and the caller parses the original body the general way, so every error
text is the general path's (``json_codec``).
"""

from __future__ import annotations

import math
import secrets
from typing import Any

import numpy as np
import orjson
import simdjson

# A run of this many number/bracket/comma/whitespace bytes is worth the fast path (smaller arrays parse fast anyway).
MIN_RUN_BYTES = 16 << 10
_MAX_RANK = 64

_NUMBER_CHARS = b"0123456789.eE+-"
_WS = b" \t\n\r"
# body -> 1 for bytes that may be part of a numeric array, 0 for anything else (quotes, letters, braces, colons).
_RUN_MARKS = bytes(1 if bytes([c]) in _NUMBER_CHARS + _WS + b"[]," else 0 for c in range(256))
# array text -> number chars as "n", brackets and commas kept (whitespace is deleted by the same translate call)
_SHAPE_MARKS = bytes(ord("n") if bytes([c]) in _NUMBER_CHARS else c for c in range(256))


class NotDense(Exception):
    """A dense array met a case the fast path does not decide; parse the original body the general way."""


class DenseArray:
    """A dense nested JSON array of numbers: its numbers in order (an ndarray when simdjson read them: float64
    when the text has a fraction or an exponent, else int64; Python ints and floats, as orjson read them, when
    simdjson refused the text), its shape, whether any number was written with a fraction or an exponent
    (``floats``), and, in all-integer text orjson read, whether any was 19 characters or longer (``wide``: it may
    not fit 64 bits, and orjson then reads an integer as a float; with ``floats`` every number goes through
    float64 anyway)."""

    __slots__ = ("values", "shape", "floats", "wide")

    def __init__(self, values: list | np.ndarray, shape: tuple[int, ...], floats: bool, wide: bool) -> None:
        self.values, self.shape, self.floats, self.wide = values, shape, floats, wide

    def __repr__(self) -> str:
        return f"DenseArray(shape={self.shape}, floats={self.floats})"


def extract(body: bytes) -> tuple[bytes, dict[str, DenseArray]] | None:
    """The body with each large dense numeric array replaced by a unique placeholder string, and the arrays by
    placeholder; None when there is none (or the body holds a backslash: an escaped quote would hide strings)."""
    if len(body) < MIN_RUN_BYTES or b"\\" in body:
        return None
    marks = body.translate(_RUN_MARKS)
    run = b"\x01" * MIN_RUN_BYTES
    prefix = f"\x00tfsctl-dense-{secrets.token_hex(8)}-"
    parts: list[bytes] = []
    found: dict[str, DenseArray] = {}
    done = pos = quotes = counted = 0  # copied up to ``done``; searched from ``pos``; ``quotes`` up to ``counted``
    while True:
        i = marks.find(run, pos)
        if i < 0:
            break
        end = marks.find(b"\x00", i)
        end = len(body) if end < 0 else end
        pos = end
        start = body.find(b"[", i, end)
        if start < 0:
            continue
        quotes += body.count(b'"', counted, start)  # every byte is counted once: linear in the body
        counted = start
        if quotes % 2:
            continue  # inside a string
        dense = _dense_at(body, start, end)
        if dense is None:
            continue
        stop, array = dense
        after = stop
        while after < len(body) and body[after] in _WS:
            after += 1
        if after < len(body) and body[after] == 0x3A:  # ":": in a key's place, where a string would be valid
            continue
        key = f"{prefix}{len(found)}"
        parts += (body[done:start], orjson.dumps(key))
        found[key] = array
        done = stop
    if not found:
        return None
    parts.append(body[done:])
    return b"".join(parts), found


def _dense_at(body: bytes, start: int, end: int) -> tuple[int, DenseArray] | None:
    """The dense array starting at ``body[start]`` (a "[") within the run ending at ``end``: (its end, it), or None."""
    rank = 0
    while start + rank < end and body[start + rank] == 0x5B:  # "["
        rank += 1
    if rank > _MAX_RANK:
        return None
    closing = b"]" * rank
    # The array ends at the first "]" * rank. Tried at the run's last one first: a run is usually the array and a
    # little whitespace or a comma, and a search from the start reads every byte of it (1.5 ms on a ResNet body).
    # A dense array holds no "]" * rank before its end, so when the text up to the last one is dense, that is the
    # first one too; when it is not, the first one decides, as if searched from the start.
    last = body.rfind(closing, start, end)
    if last < 0:
        return None
    array = _array_text(body[start:last + rank], rank)
    if array is not None:
        return last + rank, array
    first = body.find(closing, start, end)
    if first == last:
        return None
    array = _array_text(body[start:first + rank], rank)
    return None if array is None else (first + rank, array)


def _array_text(text: bytes, rank: int) -> DenseArray | None:
    """The dense array whose whole text is ``text`` (``rank`` "[" open it), or None. Its shape is read once, from
    its brackets and commas alone (number and whitespace characters deleted), for both ways of reading its numbers."""
    shape = _shape_of(text.translate(None, _NUMBER_CHARS + _WS), rank)
    if shape is None:
        return None
    floats = b"." in text or b"e" in text or b"E" in text
    return _simdjson_array(text, shape, floats) or _flat_array(text, shape, floats)


def _simdjson_array(text: bytes, shape: tuple[int, ...], floats: bool) -> DenseArray | None:
    """The array's numbers read by simdjson straight into an ndarray; None when the orjson way must decide.

    Float text (a fraction or an exponent anywhere, where the general path sends every number through float64)
    becomes float64; integer text int64, exactly (the general path's first step too; the input's range is checked
    on conversion, :func:`to_array`). simdjson reads the text with its brackets, so it enforces JSON's syntax (a
    number touching a bracket, two numbers in one place, a bad number all fail); it flattens any nesting, so the
    shape is checked from the brackets and commas. Its doubles are correctly rounded, as orjson's are (subnormals
    and halfway cases too), and its integers become doubles correctly rounded, as the general path's
    ``np.asarray`` of mixed ints and floats makes them; ``-0`` (an integer) is +0.0 and ``-0.0``, ``-0e0``,
    ``-1e-400`` are -0.0 on both paths. It fails (ValueError, RuntimeError) on what it cannot hold, beyond a
    double or an integer beyond 64 bits (int64 for integer text), and the orjson way then decides."""
    try:
        # A parser per parse: one keeps buffers sized for the largest document it read (2-3x the text), and a
        # parser per thread would hold that for good after one large body.
        doc = simdjson.Parser().parse(text)
        if not isinstance(doc, simdjson.Array):
            return None
        buffer = doc.as_buffer(of_type="d" if floats else "i")
    except Exception:  # noqa: BLE001 - any refusal (syntax, range, a non-number): the orjson way decides
        return None
    values = np.frombuffer(buffer, np.float64 if floats else np.int64)
    if values.size != math.prod(shape):
        return None
    return DenseArray(values, shape, floats, False)


def _flat_array(text: bytes, shape: tuple[int, ...], floats: bool) -> DenseArray | None:
    """The array's numbers read by orjson as one flat list (integers stay exact Python ints), or None."""
    marked = text.translate(_SHAPE_MARKS, _WS)
    if _number_touches_bracket(marked):
        return None  # a number right after "]" or right before "[": not where an element goes
    try:
        # The numbers and commas alone: no number touches a bracket on its outer side (checked above), so deleting
        # the brackets joins no two numbers. Stripped: orjson 3.13 fails on some long lists that open with "[  ".
        values = orjson.loads(b"[" + text.translate(None, b"[]").strip(_WS) + b"]")
    except orjson.JSONDecodeError:
        return None  # a bad number, two numbers in one place, an empty place
    if len(values) != math.prod(shape):
        return None
    # With a fraction or an exponent anywhere, every number goes through float64, a long integer too, and orjson
    # reads one as the general path converts it (both round once, correctly): only all-integer text can be wide.
    # Not searched in float text: float64 text of small numbers is 19+ characters a number ("0.00012345678901234567"),
    # and the search re-reads each of them at every position (about 100 ms on a 3 MB ResNet body).
    return DenseArray(values, shape, floats, not floats and b"n" * 19 in marked)


_N, _OPEN, _CLOSE = ord("n"), ord("["), ord("]")


def _number_touches_bracket(marked: bytes) -> bool:
    """Whether a number ("n") stands right after a "]" or right before a "[" in ``marked``.

    By the brackets' positions (few) rather than ``b"]n" in marked``, which compares at nearly every byte of a
    text made mostly of "n" (about 10 ms for both checks on a 3 MB ResNet body)."""
    codes = np.frombuffer(marked, np.uint8)
    closes = np.flatnonzero(codes[:-1] == _CLOSE)
    opens = np.flatnonzero(codes[1:] == _OPEN)
    return bool((codes[closes + 1] == _N).any() or (codes[opens] == _N).any())


def _shape_of(structure: bytes, rank: int) -> tuple[int, ...] | None:
    """The shape whose brackets and commas are exactly ``structure`` ("[[,],[,]]" -> (2, 2)), or None."""
    lengths = []  # length of the first list at each level, innermost first
    for level in range(rank - 1, -1, -1):
        close = structure.find(b"]" * (rank - level))
        if close < 0:
            return None
        lengths.append(close + (rank - level) - level)
    lengths.reverse()
    dims = [lengths[-1] - 1]
    for level in range(rank - 2, -1, -1):
        count, rest = divmod(lengths[level] - 1, lengths[level + 1] + 1)
        if rest or count < 1:
            return None
        dims.insert(0, count)
    if dims[-1] < 1 or lengths[0] != len(structure):
        return None
    inner = b"[" + b"," * (dims[-1] - 1) + b"]"
    for d in reversed(dims[:-1]):
        inner = b"[" + b",".join([inner] * d) + b"]"
    return tuple(dims) if inner == structure else None


# Deepest nesting (placeholders counting as their arrays' rank) the fast path takes on; deeper bodies are parsed the
# general way, which decides what is too deep (orjson stops at 1024 levels).
MAX_DEPTH = 512


def replace(doc: Any, found: dict[str, DenseArray]) -> Any | None:
    """``doc`` with each placeholder string put back as its DenseArray (in place), or None when the body nests
    deeper than ``MAX_DEPTH`` levels (a placeholder counting as its array's rank): such a body goes the general way."""
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            return None
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for k, v in items:
            if isinstance(v, str):
                if v in found:
                    if depth + len(found[v].shape) > MAX_DEPTH:
                        return None
                    node[k] = found[v]
            elif isinstance(v, dict | list):
                stack.append((v, depth + 1))
    return doc


def to_array(value: DenseArray, dtype: np.dtype) -> np.ndarray:
    """The array for a numeric input of ``dtype``, as the general path would build it; NotDense when that path
    might say otherwise (a non-numeric dtype, a fraction for an integer input, a value out of range)."""
    if value.wide:
        raise NotDense("a number of 19 characters or more")
    kind, n = dtype.kind, len(value.values)
    try:
        if kind in "iu":
            if value.floats:
                raise NotDense("fraction or exponent for an integer input")
            if isinstance(value.values, np.ndarray):  # integer text simdjson read: exact int64
                info = np.iinfo(dtype)
                if n and (int(value.values.min()) < info.min or int(value.values.max()) > info.max):
                    raise NotDense("value out of range")
                return value.values.astype(dtype).reshape(value.shape)
            return np.fromiter(value.values, dtype, n).reshape(value.shape)  # OverflowError when out of range
        if kind == "f":
            # As the general path: all integers -> int64 first; any float -> float64 first; then the input's dtype.
            wide_type = np.float64 if value.floats else np.int64
            if isinstance(value.values, np.ndarray):  # simdjson read it: float64, or int64 (made float64 in a
                wide = value.values.astype(wide_type, copy=False)  # batch with a float, as the general path does)
            else:
                wide = np.fromiter(value.values, wide_type, n)
            with np.errstate(over="ignore"):
                return wide.astype(dtype).reshape(value.shape)
    except (OverflowError, TypeError, ValueError):
        raise NotDense("value out of range") from None
    raise NotDense(f"dtype {dtype}")


def stack(values: list[DenseArray], dtype: np.dtype) -> np.ndarray:
    """Per-instance arrays of one input stacked into [N, ...] as the general path builds the batch (one float in
    any instance sends every number through float64); NotDense unless they all have one shape."""
    shape = values[0].shape
    if any(v.shape != shape for v in values) or len(shape) >= _MAX_RANK:
        raise NotDense("instances of different shapes, or too many dimensions")
    floats = any(v.floats for v in values)
    return np.stack([to_array(v if v.floats == floats else DenseArray(v.values, v.shape, floats, v.wide), dtype)
                     for v in values])
