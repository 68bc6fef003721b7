"""The model requests a profile's window holds, as an XPlane of the trace (``/custom:tfsctl requests``).

Why: the profiler client stamps the window it asks for (``ProfileOptions.start_timestamp_ns``, its clock when it
made the request) and TensorFlow's session can only record from the moment it starts. TF Serving's C++ server starts
the session within a fraction of a millisecond of the Profile call's arrival; here the ``grpc.aio`` server hands a new
connection's first call to its handler 2 to 5 ms after it arrives (measured on the wire), long enough for a small
request sent together with the call to run and finish unrecorded, and the trace to come back empty although the
model ran inside the window the client asked for. So the server keeps what it measured of its recent model requests
(when each began, when its model step ran, when it ended) and writes the ones inside the asked-for window into the
trace beside TensorFlow's planes: real events of work the server did, never one for work it did not do. A window in
which no model ran stays empty, as TF Serving's (TensorFlow's host tracer records nothing in an idle process).

Only requests that ran a model count (Predict, Classify, Regress, MultiInference, REST or gRPC): in TF Serving those
are the ones whose TensorFlow run leaves events; a status or metadata call leaves none there either.
"""

from __future__ import annotations

import time
from collections import deque
from typing import NamedTuple

from tfsctl.serving.request_record import RequestRecord

MAX_RECENT = 16384  # model requests remembered for a window that began before its session (bounded memory)
MAX_LOOKBACK_NS = 1_000_000_000  # how far before the session a window may begin (a start further back: clock skew)
PLANE_NAME = "/custom:tfsctl requests"  # TSL's prefix for planes of a program's own (xplane_schema kCustomPlanePrefix)


class ModelRequest(NamedTuple):
    """One finished request that ran a model; times in ns since the epoch (TensorFlow's profiler clock)."""

    wire: str
    api: str
    model: str
    version: int
    signature: str
    code: str
    start_ns: int
    step_start_ns: int
    step_end_ns: int
    end_ns: int


class RecentRequests:
    """A :class:`~tfsctl.serving.request_core.RequestCore` observer keeping the last ``MAX_RECENT`` model requests."""

    def __init__(self, maxlen: int = MAX_RECENT) -> None:
        self._recent: deque[ModelRequest] = deque(maxlen=maxlen)  # append and iteration copy are GIL-atomic

    def observe(self, record: RequestRecord) -> None:
        if not record.run_start:  # no model ran: nothing TF Serving's trace would show either
            return
        now_ns, now = time.time_ns(), time.perf_counter()

        def wall(t: float) -> int:
            return now_ns - int((now - t) * 1e9)

        step_start = record.run_start + record.queue_s  # the batch queue wait is not the model's step
        self._recent.append(ModelRequest(
            record.wire, record.api, record.model, record.version or 0, record.signature, record.code,
            wall(record.start), wall(step_start), wall(record.run_start + record.step_s), now_ns))

    def between(self, start_ns: int, stop_ns: int) -> list[ModelRequest]:
        """The requests that began at or after ``start_ns`` and ended by ``stop_ns`` (as TensorFlow's TraceMe: an
        event counts when it began while tracing and ended before the trace stopped)."""
        return [r for r in list(self._recent) if r.start_ns >= start_ns and r.end_ns <= stop_ns]


def window_start(requested_ns: int, session_start_ns: int) -> int:
    """Where the window begins: the client's ``start_timestamp_ns`` when it lies before the session started (at
    most ``MAX_LOOKBACK_NS`` before), else the session's start."""
    if 0 < requested_ns < session_start_ns:
        return max(requested_ns, session_start_ns - MAX_LOOKBACK_NS)
    return session_start_ns


def requests_plane(requests: list[ModelRequest], session_start_ns: int) -> bytes:
    """A serialized XPlane of ``requests``: one line per wire, an event per request (stats: model, version,
    signature, code) with its model step nested in it. Times are relative to the session's start, as TensorFlow
    writes its own planes (``NormalizeTimestamps``): an event before the session started has a negative time."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    plane = xplane_pb2.XPlane(id=1 << 20, name=PLANE_NAME)
    metadata: dict[str, int] = {}

    def event_id(name: str) -> int:
        if name not in metadata:
            metadata[name] = len(metadata) + 1
            plane.event_metadata[metadata[name]].id = metadata[name]
            plane.event_metadata[metadata[name]].name = name
        return metadata[name]

    stat_ids = {}
    for number, name in enumerate(("model", "version", "signature", "code"), start=1):
        plane.stat_metadata[number].id = number
        plane.stat_metadata[number].name = name
        stat_ids[name] = number
    lines: dict[str, xplane_pb2.XLine] = {}
    for r in sorted(requests, key=lambda r: r.start_ns):
        line = lines.get(r.wire)
        if line is None:
            line = lines[r.wire] = plane.lines.add(id=len(lines) + 1, display_id=len(lines) + 1,
                                                   name=f"{r.wire} requests",
                                                   timestamp_ns=r.start_ns - session_start_ns)
        base_ns = line.timestamp_ns + session_start_ns
        event = line.events.add(metadata_id=event_id(f"{r.wire} {r.api}"), offset_ps=(r.start_ns - base_ns) * 1000,
                                duration_ps=(r.end_ns - r.start_ns) * 1000)
        event.stats.add(metadata_id=stat_ids["model"], str_value=r.model)
        event.stats.add(metadata_id=stat_ids["version"], int64_value=r.version)
        event.stats.add(metadata_id=stat_ids["signature"], str_value=r.signature)
        event.stats.add(metadata_id=stat_ids["code"], str_value=r.code)
        line.events.add(metadata_id=event_id("model step"), offset_ps=(r.step_start_ns - base_ns) * 1000,
                        duration_ps=max(0, r.step_end_ns - r.step_start_ns) * 1000)
    return plane.SerializeToString()
