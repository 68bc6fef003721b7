"""OpenTelemetry traces of requests (tfsctl's; TF Serving has none), exported over OTLP/HTTP.

On when ``--trace_otlp_endpoint`` is given or the standard ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_ENDPOINT`` is set (``OTEL_SDK_DISABLED=true`` keeps it off); the other ``OTEL_*`` settings
(service name, headers, batch processor) apply as the SDK reads them. Off by default, and then nothing runs per
request.

Each request becomes a SERVER span named after its API (``Predict``, ``predict``, ...) with four children:
``decode`` (from arrival to the model call), ``queue`` (the batch queue wait; only for a batched request), ``step``
(the model's run) and ``encode`` (from the model's answer to the reply), built from the times the request core
measured. The request
thread only queues its finished record (a bounded queue: when full, the record is dropped and counted in
``dropped``); a thread of its own builds the spans and the SDK's batch processor exports them, so neither the
span building nor the exporter delays a reply. A W3C ``traceparent`` (and ``tracestate``) sent by the
client, as an HTTP header or gRPC metadata, makes the span a child of the caller's.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque

from tfsctl.errors import ConfigError
from tfsctl.serving.request_record import RequestRecord

log = logging.getLogger(__name__)

TRACEPARENT, TRACESTATE = "traceparent", "tracestate"
_ENV = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
MAX_PENDING = 4096  # finished requests waiting for their spans; more are dropped (counted), never waited for


def traces_endpoint(flag: str = "") -> str:
    """Where spans go: the flag's base URL (``/v1/traces`` appended, as the SDK does for
    ``OTEL_EXPORTER_OTLP_ENDPOINT``), else the standard variables; "" = tracing off."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return ""
    if flag:
        return flag.rstrip("/") + "/v1/traces"
    if os.environ.get(_ENV[0]):
        return os.environ[_ENV[0]]
    if os.environ.get(_ENV[1]):
        return os.environ[_ENV[1]].rstrip("/") + "/v1/traces"
    return ""


class Tracer:
    """An observer of finished requests (``RequestCore.observers``) that turns each into spans."""

    def __init__(self, endpoint: str) -> None:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.trace import SpanKind, set_span_in_context
            from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
        except ImportError as e:
            raise ConfigError(f"tracing is on (OTLP endpoint {endpoint}) but OpenTelemetry is not installed: "
                              f"pip install 'tfsctl[tracing]' ({e})") from None
        resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME") or "tfsctl"})
        self.provider = TracerProvider(resource=resource)
        self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        self._tracer = self.provider.get_tracer("tfsctl.serving")
        self._propagator = TraceContextTextMapPropagator()
        self._kind = SpanKind.SERVER
        self._child = set_span_in_context
        self.endpoint = endpoint
        self.dropped = 0
        self._pending: deque[tuple[RequestRecord, float]] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="tfsctl-tracing", daemon=True)
        self._thread.start()

    def __call__(self, record: RequestRecord) -> None:
        """Queue a finished request for its spans (the request thread's only work)."""
        end = record.seconds()
        with self._cond:
            if len(self._pending) >= MAX_PENDING or self._closing:
                self.dropped += 1
                return
            self._pending.append((record, end))
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if not self._pending:
                    return
                batch = list(self._pending)
                self._pending.clear()
            for record, end in batch:
                try:
                    self._spans(record, end)
                except Exception:  # noqa: BLE001 - a span that cannot be built is dropped, not raised
                    log.exception("tracing: cannot build the spans of a request")

    def _spans(self, record: RequestRecord, elapsed: float) -> None:
        carrier = {}
        if record.traceparent:
            carrier[TRACEPARENT] = record.traceparent
            if record.tracestate:
                carrier[TRACESTATE] = record.tracestate
        parent = self._propagator.extract(carrier) if carrier else None
        # perf_counter times of the record -> epoch nanoseconds, anchored at the request's wall-clock start
        def at(perf: float) -> int:
            return int((record.wall + (perf - record.start)) * 1e9)

        end = record.start + elapsed
        attributes = {
            "rpc.system": "grpc" if record.wire == "GRPC" else "http", "rpc.method": record.api,
            "tfsctl.wire": record.wire, "tfsctl.model": record.model, "tfsctl.status": record.code,
            "tfsctl.request_id": record.request_id, "tfsctl.batch_size": record.batch_size,
        }
        if record.version is not None:
            attributes["tfsctl.version"] = record.version
        if record.signature:
            attributes["tfsctl.signature"] = record.signature
        span = self._tracer.start_span(record.api or "request", context=parent, kind=self._kind,
                                       start_time=at(record.start), attributes=attributes)
        if record.run_start:
            inner = self._child(span)
            run_end = record.run_start + record.step_s
            queued = record.run_start + record.queue_s
            phases = [("decode", record.start, record.run_start), ("queue", record.run_start, queued),
                      ("step", queued, run_end), ("encode", run_end, end)]
            if not record.batch_size:
                del phases[1]  # not batched: no queue
            for name, a, b in phases:
                self._tracer.start_span(name, context=inner, start_time=at(a)).end(end_time=at(max(a, b)))
        if record.code != "OK":
            from opentelemetry.trace import Status, StatusCode

            span.set_status(Status(StatusCode.ERROR, record.code))
        span.end(end_time=at(end))

    def close(self) -> None:
        """Build the spans still queued, export what is buffered, then stop."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(30)
        try:
            self.provider.shutdown()
        except Exception:  # noqa: BLE001 - shutting down anyway
            log.exception("tracing: shutdown failed")
