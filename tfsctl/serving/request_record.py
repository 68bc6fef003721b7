"""One request's facts, gathered while it runs, for the metrics, the access log, the request log and traces.

A front end opens a :class:`RequestRecord` through :meth:`ServingCore.begin
<tfsctl.serving.service.ServingCore.begin>` and closes it through ``ServingCore.finish``, the one place that records
a request whatever the wire. Meanwhile the layers below add what only they know (the version and signature that
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
    """What one request did. ``api`` is the gRPC method ("Predict") or the REST verb ("predict", "status")."""

    __slots__ = ("wire", "api", "model", "start", "wall", "request_id", "peer", "version", "signature", "code",
                 "bytes_in", "bytes_out", "queue_s", "batch_size", "step_s", "run_start", "traceparent", "tracestate",
                 "_token")

    def __init__(self, wire: str, api: str, model: str) -> None:
        self.wire, self.api, self.model = wire, api, model
        self.start = time.perf_counter()
        self.wall = 0.0  # time.time() at the start, filled only when an access log wants it
        self.request_id = ""
        self.peer = ""
        self.version: int | None = None
        self.signature = ""
        self.code = "OK"
        self.bytes_in = 0
        self.bytes_out = 0
        self.queue_s = 0.0
        self.batch_size = 0
        self.step_s = 0.0
        self.run_start = 0.0  # perf_counter time the model call began (0: it never ran)
        self.traceparent = ""  # the client's W3C trace context, kept for traces
        self.tracestate = ""
        self._token: Any = None

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
