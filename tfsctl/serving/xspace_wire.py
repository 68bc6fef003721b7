"""A TensorFlow XSpace (a profile's trace) read and extended on the wire.

Why not ``xplane_pb2``: TensorFlow's Python protobuf refuses the non-UTF-8 strings its C++ tracers write, so the
few things the profiler service needs are done on the serialized bytes, leaving TensorFlow's planes as they are.
Field numbers are those of ``tsl/profiler/protobuf/xplane.proto``.
"""

from __future__ import annotations

from collections.abc import Iterator

from google.protobuf.message import DecodeError

HOST_PLANE = "/host:CPU"  # TSL's kHostThreadsPlaneName: the threads' TraceMe events
_SPACE_PLANES = 1  # XSpace.planes
_PLANE_NAME, _PLANE_LINES, _PLANE_EVENT_METADATA, _PLANE_STAT_METADATA = 2, 3, 4, 5
_LINE_ID, _LINE_EVENTS = 1, 4


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7


def varint_bytes(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def fields(buf: bytes) -> Iterator[tuple[int, int, bytes | int, bytes]]:
    """Each field of a serialized message: (number, wire type, value, the field's own bytes, key included); the
    value is the payload of a length-delimited field, else the integer (varint) or raw fixed bytes."""
    i = 0
    while i < len(buf):
        begin = i
        key, i = _varint(buf, i)
        wire = key & 7
        value: bytes | int
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        elif wire == 2:
            size, i = _varint(buf, i)
            value, i = buf[i:i + size], i + size
        else:
            raise ValueError(f"unexpected wire type {wire}")
        yield key >> 3, wire, value, buf[begin:i]


def submessages(buf: bytes, number: int) -> list[bytes]:
    """The length-delimited fields ``number`` of a serialized message."""
    return [value for n, wire, value, _ in fields(buf) if n == number and wire == 2]  # type: ignore[misc]


def length_delimited(number: int, payload: bytes) -> bytes:
    return varint_bytes(number << 3 | 2) + varint_bytes(len(payload)) + payload


def has_events(xspace: bytes) -> bool:
    """True when some XPlane has an XLine with an XEvent: TSL's ``!IsEmpty``."""
    return any(submessages(line, _LINE_EVENTS) for plane in submessages(xspace, _SPACE_PLANES)
               for line in submessages(plane, _PLANE_LINES))


def session_times(xspace: bytes) -> tuple[int, int] | None:
    """The session's start and stop (ns since the epoch) that TensorFlow wrote in its "Task Environment" plane
    (``profile_start_time``, ``profile_stop_time``): the origin of its planes' times. None if absent."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    for raw in submessages(xspace, _SPACE_PLANES):
        try:
            plane = xplane_pb2.XPlane.FromString(raw)
        except DecodeError:  # a plane of the C++ tracers with non-UTF-8 strings: not the one
            continue
        if plane.name != "Task Environment":
            continue
        stats = {plane.stat_metadata[s.metadata_id].name: s.uint64_value for s in plane.stats}
        if stats.get("profile_start_time") and stats.get("profile_stop_time"):
            return stats["profile_start_time"], stats["profile_stop_time"]
    return None


def plane_name(plane: bytes) -> bytes:
    """A serialized XPlane's name (as bytes: TensorFlow's names need not be UTF-8)."""
    for n, wire, value, _ in fields(plane):
        if n == _PLANE_NAME and wire == 2:
            return value  # type: ignore[return-value]
    return b""


def host_plane_ids(xspace: bytes) -> tuple[set[int], set[int], set[int]]:
    """The ids the host plane's lines, event metadata and stat metadata take (int64, as the proto declares them:
    TensorFlow's line ids are thread ids and may be anywhere in that range), so that lines and metadata added to
    it (:func:`merge_into_host_plane`) take ids of their own (:func:`free_ids`)."""
    taken: tuple[set[int], set[int], set[int]] = (set(), set(), set())
    kinds = (_PLANE_LINES, _PLANE_EVENT_METADATA, _PLANE_STAT_METADATA)
    for plane in submessages(xspace, _SPACE_PLANES):
        if plane_name(plane) != HOST_PLANE.encode():
            continue
        for n, wire, value, _ in fields(plane):
            if wire != 2 or n not in kinds:
                continue
            key = next((v for m, w, v, _ in fields(value) if m == 1 and w == 0), 0)  # type: ignore[arg-type]
            taken[kinds.index(n)].add(int(key) - (1 << 64) if int(key) >= 1 << 63 else int(key))  # type: ignore[arg-type]
    return taken


def free_ids(taken: set[int]) -> Iterator[int]:
    """1, 2, 3, ... skipping the ids in ``taken``."""
    candidate = 0
    while True:
        candidate += 1
        if candidate not in taken:
            yield candidate


def merge_into_host_plane(xspace: bytes, plane: bytes) -> bytes:
    """``xspace`` with the serialized XPlane ``plane`` (lines and metadata, no name or id) merged into its host
    plane, as protobuf merges a message (repeated fields and map entries appended); a host plane is added if there
    is none. Every other field stays byte for byte."""
    out, merged = bytearray(), False
    for n, wire, value, raw in fields(xspace):
        if n == _SPACE_PLANES and wire == 2 and not merged and isinstance(value, bytes) \
                and plane_name(value) == HOST_PLANE.encode():
            out += length_delimited(_SPACE_PLANES, value + plane)
            merged = True
        else:
            out += raw
    if not merged:
        out += length_delimited(_SPACE_PLANES, length_delimited(_PLANE_NAME, HOST_PLANE.encode()) + plane)
    return bytes(out)
