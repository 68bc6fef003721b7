"""What every gRPC servicer shares (TF Serving's and the Open Inference Protocol's): the drain gate and
:class:`ServicerBase`, whose :meth:`ServicerBase._outcome` turns every error into a gRPC status and opens and
closes the request's record in the request core. A module of its own so both servicer modules import it and
neither imports the other's servicers.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from tfsctl.core.servable import capped_message
from tfsctl.errors import Internal, ServingError, Unavailable
from tfsctl.serving.logs import REQUEST_ID_HEADER, request_id
from tfsctl.serving.request_core import RequestCore, WouldWait
from tfsctl.serving.request_record import GRPC, RequestRecord
from tfsctl.serving.tracing import TRACEPARENT, TRACESTATE
from tfsctl.tensors import as_proto_content, as_proto_field

log = logging.getLogger("tfsctl.serving.grpc_api")
T = TypeVar("T")

# A decoded input may not exceed what one maximal gRPC message could carry in tensor_content.
DEFAULT_MAX_TENSOR_BYTES = 64 * 1024 * 1024

SHUTTING_DOWN = "the server is shutting down"


class RequestGate:
    """Counts the TF Serving RPCs in flight and, once the server drains, has new ones answered UNAVAILABLE.

    gRPC's own shutdown cancels RPCs it has accepted but not yet handed to a servicer (the client sees CANCELLED).
    Draining first, with the server still up, lets every RPC that arrives during the grace period be answered
    UNAVAILABLE (retryable elsewhere) while the ones already running finish. The servicers pass through it in
    :meth:`ServicerBase._call` (no interceptor: that would cost a Python wrapper per RPC).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._in_flight = 0
        self._draining = False
        self.gauge: Any = None  # prometheus Gauge of the RPCs in flight, once the server has its metrics

    def enter(self) -> bool:
        """Count one more RPC; False (not counted) once draining."""
        with self._cond:
            if self._draining:
                return False
            self._in_flight += 1
            if self.gauge is not None:
                self.gauge.set(self._in_flight)
            return True

    def exit(self) -> None:
        with self._cond:
            self._in_flight -= 1
            if self.gauge is not None:
                self.gauge.set(self._in_flight)
            if self._in_flight == 0 and self._draining:
                self._cond.notify_all()

    def drain(self, timeout: float | None) -> bool:
        """Refuse new RPCs from now on; wait (up to ``timeout``) until none is in flight. True if none is."""
        with self._cond:
            self._draining = True
            return self._cond.wait_for(lambda: self._in_flight == 0, timeout)


class ServicerBase:
    """What both servicers share: the request core, the reply encoding and :meth:`_call`, which turns errors into
    gRPC statuses and counts request metrics."""

    def __init__(self, core: RequestCore, metrics: Any = None, *,
                 max_tensor_bytes: int = DEFAULT_MAX_TENSOR_BYTES, tensor_content: bool = False,
                 gate: RequestGate | None = None) -> None:
        self.core = core
        self.metrics = metrics
        self.gate = gate
        self.max_tensor_bytes = max_tensor_bytes
        self._encode = as_proto_content if tensor_content else as_proto_field

    def _call(self, api: str, model_name: str, context: grpc.ServicerContext, fn: Callable[[], T]) -> T:
        """Run ``fn``; an error becomes the RPC's gRPC status (see :meth:`_outcome`)."""
        result, error = self._outcome(api, model_name, fn, context)
        if error is None:
            return result  # type: ignore[return-value]
        context.abort(error.grpc_code, capped_message(error.message))
        raise AssertionError("unreachable: context.abort raises")  # pragma: no cover

    def _outcome(self, api: str, model_name: str, fn: Callable[[], T], context: Any = None
                 ) -> tuple[T | None, ServingError | None]:
        """Run ``fn`` through the drain gate; map errors to ServingErrors (the only place that does, for both
        the thread-pool and the event-loop paths) and have the request core record the request (``api`` the
        RPC's method name)."""
        record = self._open(api, model_name, context)
        if record is None:
            return None, Unavailable(SHUTTING_DOWN)
        try:
            result = fn()
        except BaseException as e:  # noqa: BLE001 - mapped, or raised again as it is
            error = self._failed(record, api, model_name, e)
            if error is None:
                raise  # WouldWait (record discarded) or a cancellation (recorded CANCELLED)
            return None, error
        self._succeeded(record, result)
        return result, None

    async def _outcome_async(self, api: str, model_name: str, fn: Callable[[], Awaitable[T]], context: Any = None
                             ) -> tuple[T | None, ServingError | None]:
        """:meth:`_outcome` for a coroutine (on the event loop): the same gate, errors and record."""
        record = self._open(api, model_name, context)
        if record is None:
            return None, Unavailable(SHUTTING_DOWN)
        try:
            result = await fn()
        except BaseException as e:  # noqa: BLE001 - mapped, or raised again as it is
            error = self._failed(record, api, model_name, e)
            if error is None:
                raise
            return None, error
        self._succeeded(record, result)
        return result, None

    def _open(self, api: str, model_name: str, context: Any) -> RequestRecord | None:
        """Pass the drain gate (None: draining) and open the request's record."""
        gate = self.gate
        if gate is not None and not gate.enter():
            return None
        record = self.core.begin(GRPC, api, model_name)
        if self.core.tag_requests and context is not None:
            _tag(record, context)
        return record

    def _succeeded(self, record: RequestRecord, result: Any) -> None:
        """Close what :meth:`_open` opened for a result."""
        try:
            if record.wall:
                record.bytes_out = result.ByteSize() if hasattr(result, "ByteSize") else 0
            self.core.finish(record, "OK")
        finally:
            self._leave_gate()

    def _failed(self, record: RequestRecord, api: str, model_name: str, exc: BaseException) -> ServingError | None:
        """Close what :meth:`_open` opened for ``exc``: its ServingError, or None when the caller is to raise it
        again: :class:`WouldWait` (the record discarded: the request is sent again) or anything that is not an
        ``Exception`` (a cancelled coroutine: CANCELLED). Never raises: raised from here, the exception's traceback
        would hold this frame, which holds the exception, and with it the request until a garbage collection."""
        try:
            if isinstance(exc, WouldWait):
                self.core.discard(record)  # sent again where waiting is allowed: recorded then
                return None
            if isinstance(exc, ServingError):
                # The traceback's frames hold the request (maybe tens of MB): drop them now, not at the next gc.
                error = exc.with_traceback(None)
                error.__context__ = error.__cause__ = None
            elif isinstance(exc, Exception):  # anything unexpected is INTERNAL, and the server keeps serving
                log.error("%s on model %r failed", api, model_name, exc_info=exc)
                error = Internal(f"{api} on model '{model_name}': {type(exc).__name__}: {exc}")
            else:
                self.core.finish(record, "CANCELLED")
                return None
            self.core.finish(record, error.grpc_code.name)
            return error
        finally:
            self._leave_gate()

    def _leave_gate(self) -> None:
        if self.gate is not None:
            self.gate.exit()  # exactly once per _open, whatever the recording does


def _tag(record: Any, context: Any) -> None:
    """The request id (the client's ``x-request-id`` metadata, else a new one), peer and W3C trace context; the id
    goes back in the trailing metadata."""
    given = None
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_HEADER:
            given = value
        elif key == TRACEPARENT:
            record.traceparent = value
        elif key == TRACESTATE:
            record.tracestate = value
    record.request_id = request_id(given)
    record.peer = context.peer() or ""
    context.set_trailing_metadata(((REQUEST_ID_HEADER, record.request_id),))


__all__ = ["DEFAULT_MAX_TENSOR_BYTES", "SHUTTING_DOWN", "RequestGate", "ServicerBase"]
