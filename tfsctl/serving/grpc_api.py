"""TF Serving's gRPC API (PredictionService, ModelService) over :class:`~tfsctl.serving.request_core.RequestCore`.

The servicers only hand requests to the core and encode results: outputs in the typed ``*_val`` fields as TF
Serving's ``AsProtoField`` (its default), or in ``tensor_content`` with ``tensor_content=True``
(``--enable_serialization_as_tensor_content``); requests may use either form. Every
``ServingError`` becomes a gRPC status in :meth:`ServicerBase._outcome`, which also opens and closes the request's
record in the request core (``RequestCore.begin``/``finish``: metrics, access log, request log, traces);
it and the drain gate live in :mod:`tfsctl.serving.grpc_servicer`, shared with the v2 servicer.
The grpc.health.v1 service and server reflection are registered beside them by :func:`add_services`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

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
from tfsctl.serving.grpc_loop import LoopHealth, LoopServer
from tfsctl.serving.grpc_servicer import DEFAULT_MAX_TENSOR_BYTES, RequestGate, ServicerBase
from tfsctl.serving.request_core import RequestCore, WouldWait
from tfsctl.serving.v2_grpc import V2_SERVICE, add_v2_service  # the Open Inference Protocol

log = logging.getLogger(__name__)

PREDICTION_SERVICE = prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"].full_name
MODEL_SERVICE = model_service_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name
HEALTH_SERVICE = health.SERVICE_NAME
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
        return self._response(resolved, outputs)

    def _response(self, resolved: Any, outputs: dict) -> predict_pb2.PredictResponse:
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
    alone at once); with batching, any other waits for its batch on the loop; the rest run in ``executor``. The
    other methods stay synchronous and grpc runs them in its pool."""

    def __init__(self, core: RequestCore, metrics: Any = None, *, executor: Executor, **kwargs: Any) -> None:
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
        except WouldWait:  # large, or a version not known to be quick
            try:
                result, error = await self._queued_or_pooled(request, name, run, deadline, context)
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

    async def _queued_or_pooled(self, request: predict_pb2.PredictRequest, name: str, run: Callable[..., Any],
                                deadline: deadlines.Deadline, context: grpc.aio.ServicerContext) -> tuple[Any, Any]:
        """With batching, the request waits for its batch on the loop (``RequestCore.predict_queued``: no pool
        thread held); otherwise, or when the batcher cannot queue it whole (a split request), the pool runs it."""
        if self.core.batcher is not None:
            try:
                with deadlines.scope(deadline):
                    return await self._outcome_async("Predict", name,
                                                     functools.partial(self._predict_queued, request), context)
            except WouldWait:
                pass
        return await asyncio.get_running_loop().run_in_executor(
            self.executor, deadlines.run_with, deadline, self._outcome, "Predict", name, run, context)

    async def _predict_queued(self, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        resolved, outputs = await self.core.predict_queued(request, self.max_tensor_bytes)
        return self._response(resolved, outputs)


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer, ServicerBase):
    """tensorflow.serving.ModelService: GetModelStatus, HandleReloadConfigRequest."""

    def GetModelStatus(self, request, context):  # noqa: N802
        return self._call("GetModelStatus", request.model_spec.name, context,
                          lambda: self.core.get_model_status(request))

    def HandleReloadConfigRequest(self, request, context):  # noqa: N802
        left = context.time_remaining()  # answer before the client's deadline, even if models still load
        wait = None if left is None else max(0.0, left - 1.0)
        return self._call("HandleReloadConfigRequest", "", context, lambda: self.core.reload_config(request, wait))


def add_services(server: grpc.Server | LoopServer, core: RequestCore, metrics: Any = None, *,
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
    add_v2_service(server, core, metrics, gate=gate, executor=executor)
    health_servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    reflection.enable_server_reflection(
        (PREDICTION_SERVICE, MODEL_SERVICE, V2_SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME), server)
    return health_servicer


def update_health(health_servicer: Any, core: RequestCore, known: set[str]) -> set[str]:
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
