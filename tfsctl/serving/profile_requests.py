"""The model requests a profile's window holds, as lines of the trace's host plane ("tfsctl REST requests", ...).

Why: the profiler client stamps the window it asks for (``ProfileOptions.start_timestamp_ns``, its clock when it
made the call) and TensorFlow's session records only from the moment it starts. TF Serving's synchronous C++ handler
creates the session as the Profile call arrives; here the ``grpc.aio`` server hands a new connection's first call to
its handler 2 to 5 ms after the call's bytes arrive (measured on the wire), long enough for a small request sent
together with the call to run and finish unrecorded, and the trace to come back empty although the model ran inside
the window the client asked for. So the server keeps what it measured of its recent model requests (when each
began, when its model step ran, when it ended) and writes those inside the asked-for window into the trace's host
plane beside TensorFlow's threads: events of work the server did, never one for work it did not do. A window in
which no model ran stays empty, as TF Serving's (TensorFlow's own profiler service answers ``empty_trace`` for an
idle process, and TF Serving adds no events of its own outside batching).

Only requests that ran a model count (Predict, Classify, Regress, MultiInference; REST or gRPC): in TF Serving those
are the ones whose TensorFlow run leaves events; a status or metadata call leaves none there either.
"""

from __future__ import annotations

import time
from collections import deque
from typing import NamedTuple

from tfsctl.serving import xspace_wire
from tfsctl.serving.request_record import RequestRecord

MAX_RECENT = 16384  # model requests remembered for a window that began before its session (bounded memory)
MAX_LOOKBACK_NS = 1_000_000_000  # how far before the session a window may begin (a start further back: clock skew)
LINE_PREFIX = "tfsctl "  # the host plane's lines of the server's requests: "tfsctl REST requests", ...


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


def add_requests(xspace: bytes, requests: list[ModelRequest], session_start_ns: int) -> bytes:
    """``xspace`` with ``requests`` as lines of its host plane, where TensorFlow puts its threads' TraceMe events
    and where the trace viewers look: one line per wire ("tfsctl REST requests", "tfsctl GRPC requests"), an event
    per request (stats: model, version, signature, code) with its model step nested in it. Times are relative to
    the session's start, as TensorFlow writes its own lines (``NormalizeTimestamps``): negative before it."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    line_ids, event_ids, stat_ids = (xspace_wire.free_ids(taken) for taken in xspace_wire.host_plane_ids(xspace))
    plane = xplane_pb2.XPlane()  # only lines and metadata: merged into TensorFlow's host plane
    metadata: dict[str, int] = {}

    def event_id(name: str) -> int:
        if name not in metadata:
            metadata[name] = next(event_ids)
            plane.event_metadata[metadata[name]].id = metadata[name]
            plane.event_metadata[metadata[name]].name = name
        return metadata[name]

    stat = {}
    for name in ("model", "version", "signature", "code"):
        number = stat[name] = next(stat_ids)
        plane.stat_metadata[number].id = number
        plane.stat_metadata[number].name = name
    lines: dict[str, xplane_pb2.XLine] = {}
    for r in sorted(requests, key=lambda r: r.start_ns):
        line = lines.get(r.wire)
        if line is None:
            line_id = next(line_ids)
            line = lines[r.wire] = plane.lines.add(id=line_id, display_id=line_id,
                                                   name=f"{LINE_PREFIX}{r.wire} requests",
                                                   timestamp_ns=r.start_ns - session_start_ns)
        base_ns = line.timestamp_ns + session_start_ns
        event = line.events.add(metadata_id=event_id(f"{r.wire} {r.api}"), offset_ps=(r.start_ns - base_ns) * 1000,
                                duration_ps=(r.end_ns - r.start_ns) * 1000)
        event.stats.add(metadata_id=stat["model"], str_value=r.model)
        event.stats.add(metadata_id=stat["version"], int64_value=r.version)
        event.stats.add(metadata_id=stat["signature"], str_value=r.signature)
        event.stats.add(metadata_id=stat["code"], str_value=r.code)
        line.events.add(metadata_id=event_id("model step"), offset_ps=(r.step_start_ns - base_ns) * 1000,
                        duration_ps=max(0, r.step_end_ns - r.step_start_ns) * 1000)
    return xspace_wire.merge_into_host_plane(xspace, plane.SerializeToString())
