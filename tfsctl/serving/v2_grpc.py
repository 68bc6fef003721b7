"""The Open Inference Protocol's gRPC API (``inference.GRPCInferenceService``) on the gRPC port, beside TF Serving's.

ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelInfer and the model repository RPCs
(RepositoryIndex, RepositoryModelLoad, RepositoryModelUnload) answer through
:class:`~tfsctl.serving.v2_core.V2Core`; the other RPCs of Triton's service (streaming, statistics, shared memory,
trace and log settings) stay UNIMPLEMENTED. Messages come from :mod:`tfsctl.core.v2_protos`.

ModelInfer takes each input from its typed ``contents`` field (the one its datatype names: ``fp32_contents`` for
FP32, ``int_contents`` for INT8/16/32, ...) or, for every input at once, from ``raw_input_contents`` (one entry per
input, in order; an input's ``binary_data_size`` parameter, which KServe's client sends, must match its entry).
Outputs go back the way the inputs came: ``raw_output_contents`` for raw inputs (what Triton's clients send and
read), typed ``contents`` for typed ones, unless the requested outputs say otherwise with ``binary_data`` (raw when
one asks for it, typed when all ask not to); raw after all when an output has no typed field (FP16, BF16).
The servicer shares :class:`~tfsctl.serving.grpc_servicer.ServicerBase` with TF Serving's: one place maps errors
to statuses (INVALID_ARGUMENT, NOT_FOUND, UNAVAILABLE while draining), counts request metrics and passes the
drain gate. On the event-loop server ModelInfer runs a quick request inline, as TF Serving's Predict does there
(:class:`LoopV2Servicer`); every other RPC runs in the gRPC pool.
"""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import Executor
from typing import Any

import grpc
import numpy as np

from tfsctl.core import v2_tensors
from tfsctl.core.servable import capped_message
from tfsctl.core.v2_protos import SERVICE_NAME as V2_SERVICE
from tfsctl.core.v2_protos import service_pb2, service_pb2_grpc
from tfsctl.core.v2_tensors import CONTENTS_FIELD
from tfsctl.errors import InvalidArgument
from tfsctl.serving.grpc_servicer import ServicerBase
from tfsctl.serving.request_core import WouldWait
from tfsctl.serving.v2_core import SIGNATURE_PARAMETER, InferRequest, InferResponse, InferTensor, V2Core

REQUEST_PARAMETERS = frozenset({SIGNATURE_PARAMETER, "content_type"})
# KServe's gRPC client marks raw inputs with binary_data_size (checked against the raw entry) and may ask outputs
# with binary_data (raw when any asks for it).
BINARY_SIZE, BINARY = "binary_data_size", "binary_data"
INPUT_PARAMETERS = frozenset({"content_type", BINARY_SIZE})
OUTPUT_PARAMETERS = frozenset({BINARY})
_CONTENTS_DTYPE = {"bool_contents": np.bool_, "int_contents": np.int32, "int64_contents": np.int64,
                   "uint_contents": np.uint32, "uint64_contents": np.uint64, "fp32_contents": np.float32,
                   "fp64_contents": np.float64}


def parameter_value(param: Any) -> Any:
    """An ``InferParameter`` / ``ModelRepositoryParameter`` as a Python value (None when unset)."""
    which = param.WhichOneof("parameter_choice")
    return getattr(param, which) if which is not None else None


def _parameters(params: Any, accepted: frozenset[str], where: str) -> dict[str, Any]:
    unknown = set(params) - accepted
    if unknown:
        raise InvalidArgument(f"{where}: unsupported parameter(s) {', '.join(sorted(unknown)[:5])} (accepted "
                              f"here: {', '.join(sorted(accepted)) or 'none'})")
    return {k: parameter_value(v) for k, v in params.items()}


def parse_infer(request: service_pb2.ModelInferRequest) -> tuple[InferRequest, bool]:
    """A ModelInferRequest -> the core's request (inputs not decoded) and whether the outputs go raw: when an output
    asks ``binary_data``, else when every output asks not to, typed, else as the inputs came."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidArgument(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs: with "
                              "raw_input_contents, every input takes its data from it, one entry each, in order")
    tensors = []
    for i, node in enumerate(request.inputs):
        where = f"input '{node.name}'"
        size = _parameters(node.parameters, INPUT_PARAMETERS, where).get(BINARY_SIZE)
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
            raise InvalidArgument(f"{where}: {BINARY_SIZE} must be a non-negative integer (int64_param or "
                                  f"uint64_param), got {size!r:.32}")
        tensor = InferTensor(node.name, node.datatype, list(node.shape))
        set_fields = [f.name for f, _ in node.contents.ListFields()] if node.HasField("contents") else []
        if raw:
            if set_fields:
                raise InvalidArgument(f"{where}: data in both contents and raw_input_contents")
            if size is not None and size != len(raw[i]):
                raise InvalidArgument(f"{where}: {BINARY_SIZE} is {size}, its raw_input_contents entry has "
                                      f"{len(raw[i])} bytes")
            tensor.raw = raw[i]
        else:
            if size is not None:
                raise InvalidArgument(f"{where}: {BINARY_SIZE} given, but the request has no raw_input_contents")
            field = CONTENTS_FIELD.get(node.datatype)
            if field is None:
                v2_tensors.numpy_dtype(node.datatype, node.name)  # an unknown datatype says so
                raise InvalidArgument(f"{where}: {node.datatype} has no typed contents field; send it in "
                                      "raw_input_contents")
            wrong = [f for f in set_fields if f != field]
            if wrong:
                raise InvalidArgument(f"{where}: datatype {node.datatype} reads contents.{field}, but the data is "
                                      f"in contents.{wrong[0]}")
            values = getattr(node.contents, field)
            # numbers straight into numpy (no Python object per value); BYTES stay in the message until decoded
            tensor.data = values if field == "bytes_contents" else np.asarray(values, dtype=_CONTENTS_DTYPE[field])
        tensors.append(tensor)
    names = [o.name for o in request.outputs] if request.outputs else None
    choices = []
    for o in request.outputs:
        choice = _parameters(o.parameters, OUTPUT_PARAMETERS, f"output '{o.name}'").get(BINARY)
        if choice is not None and not isinstance(choice, bool):
            raise InvalidArgument(f"output '{o.name}': '{BINARY}' must be a bool_param")
        choices.append(choice)
    params = _parameters(request.parameters, REQUEST_PARAMETERS, "the inference request")
    raw_out = True if True in choices else False if choices and all(c is False for c in choices) else bool(raw)
    return InferRequest(request.model_name, request.model_version, request.id, params, tensors, names), raw_out


def encode_infer(result: InferResponse, raw: bool) -> service_pb2.ModelInferResponse:
    """The response, raw when the request was (or an output has no typed field), else typed contents."""
    response = service_pb2.ModelInferResponse(model_name=result.model, model_version=result.version, id=result.id)
    raw = raw or any(dt not in CONTENTS_FIELD for _, dt, _ in result.outputs)
    for name, datatype, array in result.outputs:
        out = response.outputs.add(name=name, datatype=datatype, shape=list(array.shape))
        if raw:
            response.raw_output_contents.append(v2_tensors.to_raw(array))
        elif datatype == v2_tensors.BYTES:
            out.contents.bytes_contents.extend(v if isinstance(v, bytes) else str(v).encode()
                                               for v in array.reshape(-1))
        else:
            getattr(out.contents, CONTENTS_FIELD[datatype]).extend(np.asarray(array).reshape(-1).tolist())
    return response


def _metadata_response(doc: dict[str, Any]) -> service_pb2.ModelMetadataResponse:
    tensor = service_pb2.ModelMetadataResponse.TensorMetadata
    return service_pb2.ModelMetadataResponse(
        name=doc["name"], versions=doc["versions"], platform=doc["platform"],
        inputs=[tensor(**t) for t in doc["inputs"]], outputs=[tensor(**t) for t in doc["outputs"]])


def _repository(name: str) -> None:
    if name:
        raise InvalidArgument(f"repository_name '{name[:64]}': this server has one model repository, its model "
                              "config; leave repository_name empty")


class V2Servicer(service_pb2_grpc.GRPCInferenceServiceServicer, ServicerBase):
    """inference.GRPCInferenceService over :class:`V2Core` (synchronous methods: grpc runs them in its pool)."""

    def __init__(self, core: Any, metrics: Any = None, **kwargs: Any) -> None:
        super().__init__(core, metrics, **kwargs)
        self.v2 = V2Core.of(core)

    def ServerLive(self, request, context):  # noqa: N802 - gRPC method names
        return service_pb2.ServerLiveResponse(live=True)

    def ServerReady(self, request, context):  # noqa: N802
        return self._call("grpc_v2_server_ready", "", context,
                          lambda: service_pb2.ServerReadyResponse(ready=self.v2.server_ready()))

    def ModelReady(self, request, context):  # noqa: N802
        return self._call("grpc_v2_model_ready", request.name, context, lambda: service_pb2.ModelReadyResponse(
            ready=self.v2.model_ready(request.name, request.version)))

    def ServerMetadata(self, request, context):  # noqa: N802
        return service_pb2.ServerMetadataResponse(**V2Core.server_metadata())

    def ModelMetadata(self, request, context):  # noqa: N802
        return self._call("grpc_v2_model_metadata", request.name, context,
                          lambda: _metadata_response(self.v2.model_metadata(request.name, request.version)))

    def ModelInfer(self, request, context):  # noqa: N802
        return self._call("grpc_v2_infer", request.model_name, context, functools.partial(self._infer, request))

    def _infer(self, request: service_pb2.ModelInferRequest, *, only_if_quick: bool = False
               ) -> service_pb2.ModelInferResponse:
        self.v2.check_model(request.model_name)
        parsed, raw = parse_infer(request)
        result = self.v2.infer(parsed, only_if_quick=only_if_quick,
                               request_bytes=request.ByteSize() if only_if_quick else 0)
        return encode_infer(result, raw)

    def RepositoryIndex(self, request, context):  # noqa: N802
        def index() -> service_pb2.RepositoryIndexResponse:
            _repository(request.repository_name)
            entry = service_pb2.RepositoryIndexResponse.ModelIndex
            return service_pb2.RepositoryIndexResponse(
                models=[entry(**e) for e in self.v2.repository_index(request.ready)])

        return self._call("grpc_v2_repository_index", "", context, index)

    def RepositoryModelLoad(self, request, context):  # noqa: N802
        return self._repository_call("load", request, context, service_pb2.RepositoryModelLoadResponse)

    def RepositoryModelUnload(self, request, context):  # noqa: N802
        return self._repository_call("unload", request, context, service_pb2.RepositoryModelUnloadResponse)

    def _repository_call(self, verb: str, request: Any, context: grpc.ServicerContext, response: type) -> Any:
        left = context.time_remaining()  # answer before the client's deadline, as HandleReloadConfigRequest
        wait = None if left is None else max(0.0, left - 1.0)

        def run() -> Any:
            _repository(request.repository_name)
            params = {k: parameter_value(v) for k, v in request.parameters.items()}
            getattr(self.v2, verb)(request.model_name, params, wait)
            return response()

        return self._call(f"grpc_v2_repository_{verb}", request.model_name, context, run)


class LoopV2Servicer(V2Servicer):
    """On the ``grpc.aio`` server: ModelInfer is a coroutine that runs a quick request inline on the event loop
    and any other in ``executor``, with the rules of TF Serving's Predict there
    (:class:`~tfsctl.serving.grpc_api.LoopPredictionServicer`); the other methods run in grpc's pool."""

    def __init__(self, core: Any, metrics: Any = None, *, executor: Executor, **kwargs: Any) -> None:
        super().__init__(core, metrics, **kwargs)
        self.executor = executor

    async def ModelInfer(self, request, context):  # noqa: N802
        name = request.model_name
        run = functools.partial(self._infer, request)
        try:  # the quick route first: it declines (WouldWait) before running anything
            result, error = self._outcome("grpc_v2_infer", name, functools.partial(run, only_if_quick=True))
        except WouldWait:
            result, error = await asyncio.get_running_loop().run_in_executor(
                self.executor, self._outcome, "grpc_v2_infer", name, run)
        if error is None:
            return result
        del request, run  # the abort's traceback must not keep a large request alive
        await context.abort(error.grpc_code, capped_message(error.message))
        raise AssertionError("unreachable: context.abort raises")  # pragma: no cover


def add_v2_service(server: grpc.Server, core: Any, metrics: Any = None, *, executor: Executor | None = None,
                   **kwargs: Any) -> V2Servicer:
    """Register inference.GRPCInferenceService on ``server``; with ``executor`` (a grpc.aio server's pool, see
    :class:`~tfsctl.serving.grpc_loop.LoopServer`) ModelInfer runs quick requests on the event loop."""
    servicer = (LoopV2Servicer(core, metrics, executor=executor, **kwargs) if executor is not None
                else V2Servicer(core, metrics, **kwargs))
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    return servicer


__all__ = ["V2_SERVICE", "LoopV2Servicer", "V2Servicer", "add_v2_service", "encode_infer", "parse_infer"]
