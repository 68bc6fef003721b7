"""TF Serving's gRPC API (PredictionService, ModelService) over :class:`~tfsctl.serving.service.ServingCore`.

The servicers only hand requests to the core and encode results: outputs in the typed ``*_val`` fields as TF
Serving's ``AsProtoField`` (its default), or in ``tensor_content`` with ``tensor_content=True``
(``--enable_serialization_as_tensor_content``); requests may use either form. Every
``ServingError`` becomes a gRPC status in :meth:`ServicerBase._outcome`, which also opens and closes the request's
record in the request core (``ServingCore.begin``/``finish``: metrics, access log, request log, traces).
The grpc.health.v1 service and server reflection are registered beside them by :func:`add_services`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from tensorflow_serving.apis import (
    model_service_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2,
    prediction_service_pb2_grpc,
)

from tfsctl.core import deadlines
from tfsctl.core.servable import capped_message
from tfsctl.errors import Internal, ServingError, Unavailable
from tfsctl.serving.grpc_loop import LoopHealth, LoopServer
from tfsctl.serving.logs import REQUEST_ID_HEADER, request_id
from tfsctl.serving.request_record import GRPC
from tfsctl.serving.service import ServingCore, WouldWait
from tfsctl.serving.tracing import TRACEPARENT, TRACESTATE
from tfsctl.tensors import as_proto_content, as_proto_field

log = logging.getLogger(__name__)
T = TypeVar("T")

PREDICTION_SERVICE = prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"].full_name
MODEL_SERVICE = model_service_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name
HEALTH_SERVICE = health.SERVICE_NAME
# A decoded input may not exceed what one maximal gRPC message could carry in tensor_content.
DEFAULT_MAX_TENSOR_BYTES = 64 * 1024 * 1024
# Metric label for requests naming a model that is not configured.


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

    def __init__(self, core: ServingCore, metrics: Any = None, *,
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
        gate = self.gate
        if gate is not None and not gate.enter():
            return None, Unavailable(SHUTTING_DOWN)
        record = self.core.begin(GRPC, api, model_name)
        if self.core.tag_requests and context is not None:
            _tag(record, context)
        error: ServingError | None = None
        declined = False
        try:
            result = fn()
            if record.wall:
                record.bytes_out = result.ByteSize() if hasattr(result, "ByteSize") else 0
            return result, None
        except WouldWait:
            declined = True
            self.core.discard(record)  # sent again where waiting is allowed: recorded then
            raise
        except ServingError as e:
            # The traceback's frames hold the request (maybe tens of MB): drop them now, not at the next gc.
            error = e.with_traceback(None)
            error.__context__ = error.__cause__ = None
        except Exception as e:  # noqa: BLE001 - anything unexpected is INTERNAL, and the server keeps serving
            log.exception("%s on model %r failed", api, model_name)
            error = Internal(f"{api} on model '{model_name}': {type(e).__name__}: {e}")
        finally:
            try:
                if not declined:
                    self.core.finish(record, error.grpc_code.name if error is not None else "OK")
            finally:
                if gate is not None:
                    gate.exit()  # exactly once, whatever the recording does
        return None, error


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


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer, ServicerBase):
    """tensorflow.serving.PredictionService: Predict, Classify, Regress, MultiInference, GetModelMetadata."""

    def Predict(self, request: predict_pb2.PredictRequest, context: grpc.ServicerContext  # noqa: N802
                ) -> predict_pb2.PredictResponse:
        deadline = deadlines.Deadline.after(context.time_remaining())  # the session run's timeout (core/deadlines)
        context.add_callback(deadline.cancel)
        with deadlines.scope(deadline):
            return self._call("Predict", request.model_spec.name, context, lambda: self._predict(request))

    def _predict(self, request: predict_pb2.PredictRequest, *, only_if_quick: bool = False
                 ) -> predict_pb2.PredictResponse:
        resolved, outputs = self.core.predict_request(request, self.max_tensor_bytes, only_if_quick=only_if_quick)
        response = predict_pb2.PredictResponse(model_spec=resolved)
        encode = self._encode
        for key, value in outputs.items():
            encode(value, response.outputs[key])
        return response

    def Classify(self, request, context):  # noqa: N802 - gRPC method name
        return self._call("Classify", request.model_spec.name, context, lambda: self.core.classify(request))

    def Regress(self, request, context):  # noqa: N802
        return self._call("Regress", request.model_spec.name, context, lambda: self.core.regress(request))

    def MultiInference(self, request, context):  # noqa: N802
        name = request.tasks[0].model_spec.name if request.tasks else ""
        return self._call("MultiInference", name, context, lambda: self.core.multi_inference(request))

    def GetModelMetadata(self, request, context):  # noqa: N802
        return self._call("GetModelMetadata", request.model_spec.name, context,
                          lambda: self.core.get_model_metadata(request))


class LoopPredictionServicer(PredictionServicer):
    """PredictionService on a ``grpc.aio`` server (:mod:`tfsctl.serving.grpc_loop`): Predict is a coroutine that
    runs a quick request inline on the event loop (with batching: only for steps too short for batching to pay,
    alone at once) and any other in ``executor``; the other methods stay synchronous and grpc runs them in its pool."""

    def __init__(self, core: ServingCore, metrics: Any = None, *, executor: Executor, **kwargs: Any) -> None:
        super().__init__(core, metrics, **kwargs)
        self.executor = executor

    async def Predict(self, request: predict_pb2.PredictRequest, context: grpc.aio.ServicerContext  # noqa: N802
                      ) -> predict_pb2.PredictResponse:
        name = request.model_spec.name
        run = functools.partial(self._predict, request)
        # The client's deadline is the session run's timeout, and a request whose client has gone is not run
        # (core/deadlines): cancelled while the pool or a batch queue holds it, it is dropped there.
        deadline = deadlines.Deadline.after(context.time_remaining())
        try:  # the quick route first: it declines (WouldWait) before running anything a quick request would not
            with deadlines.scope(deadline):
                result, error = self._outcome("Predict", name, functools.partial(run, only_if_quick=True), context)
        except WouldWait:  # large, a version not known to be quick, or a split request: the pool runs it
            try:
                result, error = await asyncio.get_running_loop().run_in_executor(
                    self.executor, deadlines.run_with, deadline, self._outcome, "Predict", name, run, context)
            except asyncio.CancelledError:
                deadline.cancel()
                raise
        if error is None:
            return result  # type: ignore[return-value]
        # context.abort raises; the exception's traceback keeps this frame alive until a cyclic collection, so
        # it must not hold the request (a rejected request can be tens of MB).
        del request, run
        await context.abort(error.grpc_code, capped_message(error.message))
        raise AssertionError("unreachable: context.abort raises")  # pragma: no cover


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer, ServicerBase):
    """tensorflow.serving.ModelService: GetModelStatus, HandleReloadConfigRequest."""

    def GetModelStatus(self, request, context):  # noqa: N802
        return self._call("GetModelStatus", request.model_spec.name, context,
                          lambda: self.core.get_model_status(request))

    def HandleReloadConfigRequest(self, request, context):  # noqa: N802
        left = context.time_remaining()  # answer before the client's deadline, even if models still load
        wait = None if left is None else max(0.0, left - 1.0)
        return self._call("HandleReloadConfigRequest", "", context, lambda: self.core.reload_config(request, wait))


def add_services(server: grpc.Server | LoopServer, core: ServingCore, metrics: Any = None, *,
                 max_tensor_bytes: int = DEFAULT_MAX_TENSOR_BYTES, tensor_content: bool = False,
                 gate: RequestGate | None = None) -> Any:
    """Register PredictionService, ModelService, inference.GRPCInferenceService (v2_grpc.py), grpc.health.v1
    and reflection; returns the health servicer (an
    object with ``set(service, status)`` and ``enter_graceful_shutdown()``).

    On a :class:`LoopServer`, Predicts that are not quick run in its executor, and health is the asyncio servicer.
    Health starts NOT_SERVING; the owner calls :func:`update_health` as models become available.
    """
    kwargs: dict[str, Any] = {"max_tensor_bytes": max_tensor_bytes, "tensor_content": tensor_content, "gate": gate}
    health_servicer: Any
    executor = server.executor if isinstance(server, LoopServer) else None
    if isinstance(server, LoopServer):
        predictions: PredictionServicer = LoopPredictionServicer(core, metrics, executor=server.executor, **kwargs)
        health_servicer = LoopHealth(server)
        registered_health = health_servicer.servicer
        server = server.server
    else:
        predictions = PredictionServicer(core, metrics, **kwargs)
        health_servicer = registered_health = health.HealthServicer()
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(predictions, server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(core, metrics, gate=gate), server)
    health_pb2_grpc.add_HealthServicer_to_server(registered_health, server)
    from tfsctl.serving.v2_grpc import V2_SERVICE, add_v2_service  # the Open Inference Protocol (it imports this)

    add_v2_service(server, core, metrics, gate=gate, executor=executor)
    health_servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    reflection.enable_server_reflection(
        (PREDICTION_SERVICE, MODEL_SERVICE, V2_SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME), server)
    return health_servicer


def update_health(health_servicer: Any, core: ServingCore, known: set[str]) -> set[str]:
    """Set overall ("" = every configured model ready) and per-model health; returns the model names now set.

    Models removed from the config are set NOT_SERVING: grpc's servicer has no way to forget a name.
    """
    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    names = set(core.model_names())
    for name in names:
        health_servicer.set(name, serving if core.model_available(name) else not_serving)
    for name in known - names:
        health_servicer.set(name, not_serving)
    health_servicer.set("", serving if core.is_ready() else not_serving)
    return names
