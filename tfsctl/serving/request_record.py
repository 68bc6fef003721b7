"""One request's facts, gathered while it runs, for the metrics, the access log, the request log and traces.

A front end opens a :class:`RequestRecord` through :meth:`RequestCore.begin
<tfsctl.serving.request_core.RequestCore.begin>` and closes it through ``RequestCore.finish``, the one place that
records a request whatever the wire. Meanwhile the layers below add what only they know (the version and signature that
answered, the step time, the batch queue wait and batch size) to the record of the request running in the current
context (:func:`current`).
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from typing import Any

GRPC, REST = "GRPC", "REST"  # TF Serving's request_latency "entrypoint" label values

_CURRENT: ContextVar[RequestRecord | None] = ContextVar("tfsctl_request", default=None)


class RequestRecord:
    """What one request did. ``api`` is the gRPC method ("Predict") or the REST verb ("predict", "status").

    Only the four fields every request has are set per instance; the others keep these class-level defaults until
    a layer fills them (a request pays for what it uses)."""

    wall = 0.0  # time.time() at the start, filled only while request ids are on (access log, traces)
    request_id = ""
    peer = ""
    version: int | None = None
    signature = ""
    code = "OK"
    bytes_in = 0
    bytes_out = 0
    queue_s = 0.0
    batch_size = 0
    step_s = 0.0
    run_start = 0.0  # perf_counter time the model call began (0: it never ran)
    traceparent = ""  # the client's W3C trace context, kept for traces
    tracestate = ""
    _token: Any = None

    def __init__(self, wire: str, api: str, model: str) -> None:
        self.wire, self.api, self.model = wire, api, model
        self.start = time.perf_counter()

    def enter(self) -> None:
        """Make this the current context's request (the thread that runs it)."""
        self._token = _CURRENT.set(self)

    def leave(self) -> None:
        token, self._token = self._token, None
        if token is not None:
            try:
                _CURRENT.reset(token)
            except ValueError:  # left from another context (a request handed between threads): just clear it
                _CURRENT.set(None)

    def seconds(self) -> float:
        return time.perf_counter() - self.start


def current() -> RequestRecord | None:
    """The record of the request running in this context, if any."""
    return _CURRENT.get()
