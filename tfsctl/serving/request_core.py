"""The one request path: every API (gRPC, REST) resolves models and runs signatures through :class:`RequestCore`.

Front ends only decode requests into numpy / protos and encode the results; model resolution, signature checks,
tf.Example handling for Classify/Regress, status, metadata, reload, readiness and the status codes all live here,
so both wires behave the same way and neither reaches past this class into the manager.
Behaviour follows TF Serving's ``predict_util``, ``classifier``, ``regressor``, ``multi_inference``,
``get_model_metadata_impl`` and ``get_model_status_impl``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from typing import Any

import numpy as np
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_pb2,
    predict_pb2,
    regression_pb2,
)
from tensorflow_serving.config import model_server_config_pb2

from tfsctl.core import deadlines, inference, storage
from tfsctl.core.events import VersionState
from tfsctl.core.examples import DEFAULT_MAX_BYTES
from tfsctl.core.memory import LARGE_REQUEST_BYTES, TRIMMER
from tfsctl.core.protocols import ServableManager, SignatureRunner
from tfsctl.core.servable import Servable, SignatureSpec
from tfsctl.core.servable_request import has_available_version
from tfsctl.errors import InvalidArgument, NotFound, ServingError
from tfsctl.model_layout import signature_or_default
from tfsctl.serving.request_record import GRPC, REST, RequestRecord, current

log = logging.getLogger(__name__)

SIGNATURE_DEF_FIELD = "signature_def"
# A Predict request of at most this many bytes may run on the gRPC event loop (see predict_is_quick).
QUICK_MAX_REQUEST_BYTES = 64 * 1024
# A Predict runs on the gRPC event loop only when its signature's step (the shortest of the last window of 8) is
# shorter than this: every request on the loop waits for the one before it, on one core.
LOOP_MAX_STEP_S = 250e-6
# With batching, a quick request runs on the event loop only when its model's step is shorter than this; it then
# runs alone at once (Batcher.run_now). Sharing a step pays only when the step costs more than handing requests to
# a batch thread (a few hundred µs); the loop runs requests one after another, so none would share one anyway.
# Longer steps go to the pool and batch.
BATCHING_PAYS_STEP_S = 100e-6
_CODE_OK = 0
_CODE_UNKNOWN = 2
# The requests TF Serving counts in request_count/request_latency, with their "API" label: gRPC's Predict, Classify
# and Regress (prediction_service_impl.cc), every request of its REST handler (http_server.cc; the verb, "" on GET).
_TF_API = {(GRPC, "Predict"): "Predict", (GRPC, "Classify"): "Classify", (GRPC, "Regress"): "Regress",
           (REST, "predict"): "predict", (REST, "classify"): "classify", (REST, "regress"): "regress",
           (REST, "status"): "", (REST, "metadata"): "", (REST, ""): "",
           # the Open Inference Protocol's infer (tfsctl's addition): counted as TF Serving counts Predict
           (GRPC, "grpc_v2_infer"): "ModelInfer", (REST, "rest_v2_infer"): "infer"}


class WouldWait(Exception):  # noqa: N818 - a signal to the caller, not an error anyone sees
    """``predict_request(only_if_quick=True)`` declined: the version it holds is not known to be quick (a new
    version came in meanwhile), or the request must be split across batches. Nothing ran; the caller sends it
    again where waiting is allowed."""


def _small(request_bytes: int) -> bool:
    """Small enough to run on the event loop: decoding and encoding it stay short."""
    return request_bytes <= QUICK_MAX_REQUEST_BYTES


def _version_of(spec: model_pb2.ModelSpec) -> int | None:
    return int(spec.version.value) if spec.HasField("version") else None


def _label_of(spec: model_pb2.ModelSpec) -> str | None:
    return spec.version_label if spec.WhichOneof("version_choice") == "version_label" else None


def make_model_spec(name: str, version: int, signature_name: str | None = None) -> model_pb2.ModelSpec:
    """The ModelSpec TF Serving puts in responses: name, the version actually used and, if given, the signature."""
    spec = model_pb2.ModelSpec(name=name)
    spec.version.value = int(version)
    if signature_name is not None:
        spec.signature_name = signature_or_default(signature_name)
    return spec


UNKNOWN_MODEL_LABEL = "<unknown>"


class RequestCore:
    """The request core of both front ends: resolves ModelSpecs against the manager and runs
    :mod:`tfsctl.core.inference` on the held version (through the batcher when there is one); also answers
    metadata, status, reload and readiness, so gRPC and REST never touch the manager.

    ``manager`` is a :class:`~tfsctl.core.protocols.ServableManager` (the ServerCore); ``batcher`` a
    :class:`~tfsctl.core.protocols.SignatureRunner` (the Batcher, ``run`` with ``Servable.run``'s signature).
    ``enable_signature_method_name_check`` is TF Serving's flag of that name (default off: Classify/Regress run
    any signature whose inputs and outputs fit). ``max_request_bytes`` bounds what one request may decode to.
    """

    def __init__(self, manager: ServableManager, batcher: SignatureRunner | None = None, *,
                 reload_wait_seconds: float = 30.0, enable_signature_method_name_check: bool = False,
                 max_request_bytes: int = DEFAULT_MAX_BYTES, metrics: Any = None, request_logger: Any = None,
                 readiness: Callable[[bool], bool] | None = None,
                 reload: Callable[[model_management_pb2.ReloadConfigRequest, float | None],
                                  model_management_pb2.ReloadConfigResponse] | None = None) -> None:
        self.enable_signature_method_name_check = enable_signature_method_name_check
        self.manager = manager
        self._readiness = readiness  # a ServerHooks.ready: own readiness -> reported readiness
        self._reload = reload  # a ServerHooks.reload: answers ReloadConfig in place of apply_reload
        self.batcher = batcher
        self.reload_wait_seconds = reload_wait_seconds
        self.max_request_bytes = max_request_bytes
        self.metrics = metrics
        # tfsctl.core.request_log.RequestLogger (the model config's logging_config), or None
        self.request_logger = request_logger
        # Called with every finished RequestRecord (access log, request log, traces), after the metrics.
        self.observers: list[Callable[[RequestRecord], None]] = []
        # Front ends take (or make) a request id, note the peer and return the id: on with an access log or traces.
        self.tag_requests = False
        run = self._batched_run if batcher is not None else inference.servable_run
        self._run = self._timed(run, None)
        self._runs = {api: self._timed(run, api) for api in ("Predict", "Classify", "Regress")}
        self._run_now_predict = self._timed(self._run_now, "Predict")
        # The batcher counts requests on their way to it, so a batch stops waiting once none is (batcher.py).
        self._arrival: Callable[[], AbstractContextManager[Any]] = getattr(batcher, "arrival", None) or nullcontext
        self._specs: dict[tuple[str, int, str], model_pb2.ModelSpec] = {}

    # --- helpers ---------------------------------------------------------------------------------------------

    @staticmethod
    def _require_name(spec: model_pb2.ModelSpec) -> str:
        if not spec.name:
            raise InvalidArgument("Missing ModelSpec name: set model_spec.name to the model to call")
        return spec.name

    def _handle(self, spec: model_pb2.ModelSpec) -> AbstractContextManager[Servable]:
        """``manager.handle`` for the spec's name and version/label."""
        return self.manager.handle(self._require_name(spec), _version_of(spec), _label_of(spec))

    def _batched_run(self, servable: Servable, signature_name: str, inputs: dict, output_filter: tuple) -> dict:
        assert self.batcher is not None
        return self.batcher.run(servable, signature_name, inputs, output_filter)

    def _run_now(self, servable: Servable, signature_name: str, inputs: dict, output_filter: tuple) -> dict:
        assert self.batcher is not None
        outputs = self.batcher.run_now(servable, signature_name, inputs, output_filter)
        if outputs is None:
            raise WouldWait(f"model '{servable.name}': a request split across batches waits for them")
        return outputs

    def _resolved(self, servable: Servable, signature_name: str) -> model_pb2.ModelSpec:
        """The reply's ModelSpec, built once per (model, version, signature); callers copy it, never mutate it."""
        key = (servable.name, servable.version, signature_name)
        spec = self._specs.get(key)
        if spec is None:
            if len(self._specs) >= 4096:
                self._specs.clear()
            spec = self._specs[key] = make_model_spec(servable.name, servable.version, signature_name)
        return spec

    @staticmethod
    def _trim_after(nbytes: int) -> None:
        if nbytes >= LARGE_REQUEST_BYTES:
            TRIMMER.request()

    # --- Predict -----------------------------------------------------------------------------------------------

    def predict_is_quick(self, request: predict_pb2.PredictRequest) -> bool:
        """Whether a Predict may run on the gRPC event loop (:mod:`tfsctl.serving.grpc_loop`) instead of a pool
        thread: a small request (at most ``QUICK_MAX_REQUEST_BYTES``: decoding and encoding stay short), a version
        whose signature steps are measured short (:meth:`Servable.runs_inline`), with batching under
        ``BATCHING_PAYS_STEP_S`` (batching could not pay: it runs alone at once, ``Batcher.run_now``). It then runs
        with ``only_if_quick``, which applies these rules itself on the version it holds (the loop calls that
        directly, not this). A request that would fail is not quick."""
        if not _small(request.ByteSize()):
            return False
        spec = request.model_spec
        servable = self.manager.peek(spec.name, _version_of(spec), _label_of(spec))
        return servable is not None and self._quick_on(servable, spec.signature_name, tuple(request.output_filter))

    def _quick_on(self, servable: Servable, signature_name: str, output_filter: tuple) -> bool:
        return servable.runs_inline(signature_name, output_filter,
                                    under=BATCHING_PAYS_STEP_S if self.batcher is not None else LOOP_MAX_STEP_S)

    def predict_request(self, request: predict_pb2.PredictRequest, max_bytes: int | None = None, *,
                        only_if_quick: bool = False) -> tuple[model_pb2.ModelSpec, dict[str, np.ndarray]]:
        """A PredictRequest as TF Serving's RunPredict: the key check comes before any input is decoded, and the
        decoded size is bounded (``max_bytes``, default ``max_request_bytes``). Returns the resolved ModelSpec
        and the outputs.

        ``only_if_quick`` (for a caller that must not block, such as the gRPC event loop): raise
        :class:`WouldWait` instead of running when the request is not quick by :meth:`predict_is_quick`'s rules
        (checked here on the version it holds) or, with batching, when it must be split across batches; nothing
        has run then, and the request may be sent again. Otherwise, with batching, it runs alone at once
        (:meth:`Batcher.run_now`)."""
        size = request.ByteSize()
        _note_bytes_in(size)
        run, arrival = self._runs["Predict"], self._arrival
        if only_if_quick:
            if not _small(size):
                raise WouldWait(f"a request of {size} bytes is not quick")
            if self.batcher is not None:
                run, arrival = self._run_now_predict, nullcontext  # it never queues: nothing to announce
        try:
            with arrival(), self._handle(request.model_spec) as servable:
                if only_if_quick and not self._quick_on(servable, request.model_spec.signature_name,
                                                       tuple(request.output_filter)):
                    raise WouldWait(f"model '{servable.name}' version {servable.version} is not known to be quick")
                name, outputs = inference.run_predict(
                    servable, request, run=run, method_check=self.enable_signature_method_name_check,
                    max_bytes=self.max_request_bytes if max_bytes is None else max_bytes)
                resolved = self._resolved(servable, name)
                if self.request_logger is not None and self.request_logger.wants(servable.name):
                    self._log_predict(request, resolved, outputs, size)
                return resolved, outputs
        finally:
            self._trim_after(size)

    async def predict_queued(self, request: predict_pb2.PredictRequest, max_bytes: int | None = None
                             ) -> tuple[model_pb2.ModelSpec, dict[str, np.ndarray]]:
        """:meth:`predict_request` on an event loop with batching, with no thread held while the request waits for
        its batch: it is decoded and queued on the loop (``Batcher.submit``), and the loop awaits the batch, which a
        batch thread runs. Why: a request handed to a pool thread, and its answer handed back, cost two thread
        hand-offs each way, one request after another; with 8 clients of ResNet50's 600 kB requests the time from a
        batch's answers to the next batch fell by about 1.6 ms of 15 (docs/PERFORMANCE.md), and a request waiting
        for its batch no longer needs a pool thread (``--grpc_max_threads`` no longer bounds a batch).

        :class:`WouldWait`, with nothing run, when the batcher does not queue the request whole (a model without
        batching, a request to split, or inputs that cannot be batched; only the last two are found after the
        decode): the caller sends it to the pool. A client that goes while the request is queued (``deadline``
        cancelled) leaves it to be dropped by its batch; the version stays held until then."""
        batcher = self.batcher
        if batcher is None:
            raise WouldWait("no batcher: the pool runs it")
        size = request.ByteSize()
        _note_bytes_in(size)
        loop = asyncio.get_running_loop()
        done: asyncio.Future = loop.create_future()

        def finished(task: Any) -> None:  # called in the batch thread
            try:
                loop.call_soon_threadsafe(_settle, done, task)
            except RuntimeError:  # the loop is closed: the server has gone
                pass

        stack = ExitStack()
        held: ExitStack | None = stack
        try:
            servable = stack.enter_context(self._handle(request.model_spec))
            if not batcher.batches(servable):
                raise WouldWait(f"model '{servable.name}' is not batched")
            with self._arrival():
                spec = inference.predict_signature(servable, request.model_spec.signature_name,
                                                   self.enable_signature_method_name_check)
                inputs = inference.decode_inputs(servable, spec, request.inputs,
                                                 self.max_request_bytes if max_bytes is None else max_bytes)
                start = time.perf_counter()
                if not batcher.submit(servable, spec.name, inputs, tuple(request.output_filter), finished):
                    raise WouldWait(f"model '{servable.name}': the batcher does not queue this request whole")
            del inputs  # the queue holds them until the batch runs
            try:
                task = await asyncio.shield(done)
            except asyncio.CancelledError:
                deadline = deadlines.current()
                if deadline is not None:
                    deadline.cancel()  # its batch drops it (Batcher._drop_gone)
                held = None  # the queued request keeps the version until then
                done.add_done_callback(lambda _: stack.close())
                raise
            record = current()
            if record is not None:
                record.queue_s, record.batch_size = task.queued, task.batch
            if task.error is not None:
                raise task.error
            self._ran(servable, spec.name, start, time.perf_counter() - start, "Predict")
            resolved = self._resolved(servable, spec.name)
            if self.request_logger is not None and self.request_logger.wants(servable.name):
                self._log_predict(request, resolved, task.outputs, size)
            return resolved, task.outputs
        finally:
            if held is not None:
                held.close()
            self._trim_after(size)

    def predict_with(self, servable: Servable, signature_name: str, inputs: Mapping[str, np.ndarray],
                     output_filter: Sequence[str] = (), *, only_if_quick: bool = False
                     ) -> tuple[model_pb2.ModelSpec, dict[str, np.ndarray]]:
        """Predict on a version the caller already holds (one handle per request, from decode to reply).

        ``only_if_quick``: as :meth:`predict_request`'s, on the held version (the caller checked the request's
        size and held it with ``hold(..., only_if_quick=True)``): :class:`WouldWait` before running anything
        unless its steps are measured short; with batching it runs alone at once."""
        run = self._runs["Predict"]
        if only_if_quick:
            if not self._quick_on(servable, signature_name, tuple(output_filter)):
                raise WouldWait(f"model '{servable.name}' version {servable.version} is not known to be quick")
            if self.batcher is not None:
                run = self._run_now_predict
        try:
            name, outputs = inference.predict_arrays(servable, signature_name, inputs, output_filter, run=run,
                                                     method_check=self.enable_signature_method_name_check)
            resolved = self._resolved(servable, name)
            if self.request_logger is not None and self.request_logger.wants(servable.name):
                self._log_predict_arrays(resolved, inputs, output_filter, outputs)
            return resolved, outputs
        finally:
            self._trim_after(sum(getattr(a, "nbytes", 0) for a in inputs.values()))

    @contextmanager
    def hold(self, model_spec: model_pb2.ModelSpec, *, only_if_quick: bool = False, request_bytes: int = 0
             ) -> Iterator[HeldServable]:
        """One servable handle for a whole front-end request (signature lookup, decode, run, encode), as gRPC holds
        it: a version swap in between can neither fail the request nor mix two versions.

        ``only_if_quick`` (the v2 gRPC ModelInfer on the event loop, as Predict's): :class:`WouldWait` for a
        request over ``QUICK_MAX_REQUEST_BYTES``, and the held predict runs only if quick (:meth:`predict_with`)."""
        arrival = self._arrival
        if only_if_quick:
            if not _small(request_bytes):
                raise WouldWait(f"a request of {request_bytes} bytes is not quick")
            if self.batcher is not None:
                arrival = nullcontext  # it never queues: nothing to announce
        with arrival(), self._handle(model_spec) as servable:
            yield HeldServable(self, servable, signature_or_default(model_spec.signature_name), only_if_quick)

    # --- Classify / Regress / MultiInference ----------------------------------------------------------------------

    def classify(self, request: classification_pb2.ClassificationRequest
                 ) -> classification_pb2.ClassificationResponse:
        """TF Serving's RunClassify on the version the request's ModelSpec resolves to."""
        return self._on_examples(request, inference.run_classify, classification_pb2.ClassificationResponse,
                                 "Classify")

    def regress(self, request: regression_pb2.RegressionRequest) -> regression_pb2.RegressionResponse:
        """TF Serving's RunRegress on the version the request's ModelSpec resolves to."""
        return self._on_examples(request, inference.run_regress, regression_pb2.RegressionResponse, "Regress")

    def _on_examples(self, request: Any, run: Callable[..., tuple[str, Any]], response_type: type, api: str) -> Any:
        """Classify and Regress alike: one held version, TF Serving's rules in ``run``, memory trimmed after."""
        size = request.input.ByteSize()
        _note_bytes_in(size)
        try:
            with self._arrival(), self._handle(request.model_spec) as servable:
                name, result = run(servable, request, run=self._runs[api],
                                   method_check=self.enable_signature_method_name_check,
                                   max_bytes=self.max_request_bytes)
                response = response_type(model_spec=make_model_spec(servable.name, servable.version, name),
                                         result=result)
            if self.request_logger is not None and self.request_logger.wants(response.model_spec.name):
                self._log_message("classify_log" if api == "Classify" else "regress_log", request, response, size)
            return response
        finally:
            self._trim_after(size)

    def multi_inference(self, request: inference_pb2.MultiInferenceRequest
                        ) -> inference_pb2.MultiInferenceResponse:
        """Several classify/regress tasks over one input on the version the first task's ModelSpec resolves to."""
        if not request.tasks:
            raise InvalidArgument("MultiInferenceRequest has no tasks")
        inference.check_multi_inference_tasks(request)
        size = request.input.ByteSize()
        _note_bytes_in(size)
        try:
            with self._arrival(), self._handle(request.tasks[0].model_spec) as servable:
                response = inference.run_multi_inference(
                    servable, request, run=self._run, method_check=self.enable_signature_method_name_check,
                    max_bytes=self.max_request_bytes)
                spec = make_model_spec(servable.name, servable.version, request.tasks[0].model_spec.signature_name)
            if self.request_logger is not None and self.request_logger.wants(spec.name):
                self._log_message("multi_inference_log", request, response, size, spec)
            if self.metrics is not None:  # RecordRequestExampleCount, MultiInference's only (multi_inference.cc)
                kind = request.input.WhichOneof("kind")
                count = len(getattr(request.input, kind).examples) if kind else 0
                self.metrics.observe_examples(request.tasks[0].model_spec.name, count)
            return response
        finally:
            self._trim_after(size)

    # --- recording: the one place a request is counted, whatever its wire --------------------------------------

    def begin(self, wire: str, api: str, model: str) -> RequestRecord:
        """Open the record of a request (``wire`` GRPC or REST, ``api`` the gRPC method or REST verb) and make it
        the current one in this context; every record begun is closed by :meth:`finish` or :meth:`discard`."""
        record = RequestRecord(wire, api, model)
        if self.tag_requests:
            record.wall = time.time()
        record.enter()
        return record

    def discard(self, record: RequestRecord) -> None:
        """Forget a record without counting it (an attempt that ran nothing and will be sent again)."""
        record.leave()

    def finish(self, record: RequestRecord, code: str = "OK") -> None:
        """Count a finished request (``code`` its gRPC status name): TF Serving's request_count and, when OK,
        request_latency for the requests TF Serving counts; then every observer (access log, request log, traces).
        Nothing here can fail the request."""
        record.leave()
        record.code = code
        try:
            metrics = self.metrics
            if metrics is not None:
                tf_api = _TF_API.get((record.wire, record.api))
                if tf_api is not None:
                    ok = code == "OK"
                    metrics.observe_request(self.metric_model_label(record.model, ok), tf_api, record.wire, code,
                                            int(record.seconds() * 1e6) if ok else None)
            for observer in self.observers:
                observer(record)
        except Exception:  # noqa: BLE001 - recording must never fail a request
            log.exception("recording request %s %s failed", record.wire, record.api)

    def _timed(self, run: Callable[..., dict], api: str | None) -> Callable[..., dict]:
        """``run`` that times the signature's run: TF Serving's runtime_latency (``api`` set, on success) and the
        current request's step time."""
        clock = time.perf_counter

        def timed(servable: Servable, signature_name: str, inputs: dict, output_filter: tuple) -> dict:
            start = clock()
            outputs = run(servable, signature_name, inputs, output_filter)
            ran(servable, signature_name, start, clock() - start, api)
            return outputs

        ran = self._ran
        return timed

    def _ran(self, servable: Servable, signature_name: str, start: float, seconds: float, api: str | None) -> None:
        """A signature ran (``start`` its perf_counter time): the current request's step time, version and
        signature, and TF Serving's runtime_latency when ``api`` is set."""
        record = current()
        if record is not None:
            if not record.run_start:
                record.run_start = start
            record.step_s += seconds
            record.version = servable.version
            record.signature = signature_name
        if self.metrics is not None and api is not None:
            self.metrics.observe_runtime(servable.name, api, int(seconds * 1e6))

    # --- request logging (the model config's logging_config; built and written by the logger's own thread) -------

    def _log_predict(self, request: predict_pb2.PredictRequest, resolved: model_pb2.ModelSpec,
                     outputs: dict[str, np.ndarray], size: int) -> None:
        def build() -> Any:
            from tensorflow_serving.apis import prediction_log_pb2

            entry = prediction_log_pb2.PredictionLog()
            entry.predict_log.request.CopyFrom(request)
            _fill_predict_response(entry.predict_log.response, resolved, outputs)
            return entry

        self.request_logger.submit(resolved.name, resolved, build, size + _nbytes(outputs))

    def _log_predict_arrays(self, resolved: model_pb2.ModelSpec, inputs: Mapping[str, np.ndarray],
                            output_filter: Sequence[str], outputs: dict[str, np.ndarray]) -> None:
        """A Predict that came as arrays (REST): logged as the PredictRequest it stands for."""
        inputs = dict(inputs)
        output_filter = list(output_filter)

        def build() -> Any:
            from tensorflow_serving.apis import prediction_log_pb2

            from tfsctl.tensors import as_proto_field

            entry = prediction_log_pb2.PredictionLog()
            req = entry.predict_log.request
            req.model_spec.name = resolved.name
            req.model_spec.signature_name = resolved.signature_name
            for key, value in inputs.items():
                as_proto_field(np.asarray(value), req.inputs[key])
            req.output_filter.extend(output_filter)
            _fill_predict_response(entry.predict_log.response, resolved, outputs)
            return entry

        self.request_logger.submit(resolved.name, resolved, build, _nbytes(inputs) + _nbytes(outputs))

    def _log_message(self, kind: str, request: Any, response: Any, size: int,
                     spec: model_pb2.ModelSpec | None = None) -> None:
        def build() -> Any:
            from tensorflow_serving.apis import prediction_log_pb2

            entry = prediction_log_pb2.PredictionLog()
            part = getattr(entry, kind)
            part.request.CopyFrom(request)
            part.response.CopyFrom(response)
            return entry

        spec = spec if spec is not None else response.model_spec
        self.request_logger.submit(spec.name, spec, build, size + response.ByteSize())

    # --- models and readiness (what the front ends' health checks and metric labels ask) ---------------------------

    def model_names(self) -> list[str]:
        """The models configured now, sorted."""
        return self.manager.model_names()

    def metric_model_label(self, name: str, ok: bool) -> str:
        """The model label a request is counted under: a failed request naming a model that is not configured
        counts as ``<unknown>``, so clients cannot grow the metric label set without bound (gRPC and REST alike)."""
        if ok or not name:
            return name
        try:
            known = name in self.manager.model_names()
        except Exception:  # noqa: BLE001 - metrics must not fail a request
            known = False
        return name if known else UNKNOWN_MODEL_LABEL

    def is_ready(self) -> bool:
        """True when every configured model has an AVAILABLE version (REST's /v1/health/ready, gRPC health ""),
        as the ``readiness`` hook (worker mode: and every other worker is ready) turns it."""
        own = bool(self.manager.is_ready())
        return own if self._readiness is None else bool(self._readiness(own))

    def model_available(self, name: str) -> bool:
        """True when ``name`` has an AVAILABLE version (gRPC health per model); False for an unknown model."""
        try:
            return has_available_version(self.manager.version_states(name))
        except ServingError:
            return False

    def version_states(self, name: str) -> list[VersionState]:
        """Every known version of ``name`` and its state, ascending (the v2 protocol's model versions, readiness
        and repository index read this); NotFound for a model that is neither configured nor ever seen."""
        return self.manager.version_states(name)

    def model_config(self) -> model_server_config_pb2.ModelServerConfig:
        """A copy of the model config in force (the v2 repository extension edits it and reloads it)."""
        return self.manager.config()

    # --- metadata / status / config --------------------------------------------------------------------------------

    def get_model_metadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest
                           ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        """``signature_def`` metadata: a SignatureDefMap packed in ``google.protobuf.Any``."""
        name = self._require_name(request.model_spec)
        if not request.metadata_field:
            raise InvalidArgument(f"model '{name}': GetModelMetadataRequest must specify at least one "
                                  f"metadata_field (supported: '{SIGNATURE_DEF_FIELD}')")
        for field in request.metadata_field:
            if field != SIGNATURE_DEF_FIELD:
                raise InvalidArgument(f"model '{name}': metadata field '{field}' is not supported "
                                      f"(supported: '{SIGNATURE_DEF_FIELD}')")
        with self._handle(request.model_spec) as servable:
            record = current()
            if record is not None:
                record.version = servable.version
            sig_map = get_model_metadata_pb2.SignatureDefMap()
            for key, sig in servable.signature_defs.items():
                sig_map.signature_def[key].CopyFrom(sig)
            response = get_model_metadata_pb2.GetModelMetadataResponse(
                model_spec=make_model_spec(servable.name, servable.version))
        response.metadata[SIGNATURE_DEF_FIELD].Pack(sig_map)
        return response

    def get_model_status(self, request: get_model_status_pb2.GetModelStatusRequest
                         ) -> get_model_status_pb2.GetModelStatusResponse:
        """TF Serving's get_model_status_impl: the asked version, else every version the state monitor knows
        (a model removed by a reload reports its versions in END), newest first. A version label is ignored, as
        there."""
        spec = request.model_spec
        name = self._require_name(spec)
        try:
            states = self.manager.model_status(name, _version_of(spec))
        except NotFound as e:
            raise NotFound(f"{e}{self._no_versions_hint(name)}") from None
        response = get_model_status_pb2.GetModelStatusResponse()
        for s in states:
            mvs = response.model_version_status.add(version=int(s.version), state=int(s.state))
            if s.error:
                mvs.status.error_code = _CODE_UNKNOWN
                mvs.status.error_message = s.error
            else:
                mvs.status.error_code = _CODE_OK
        return response

    def _no_versions_hint(self, name: str) -> str:
        """Why a configured model has no versions: its base path is missing or holds no version directory."""
        try:
            configs = self.manager.config().model_config_list.config
        except Exception:  # noqa: BLE001 - a manager without config(): no hint
            return ""
        for mc in configs:
            if mc.name == name:
                if not storage.isdir(mc.base_path):
                    return f" (base path {mc.base_path} does not exist)"
                return f" (no version directory under base path {mc.base_path} that its version policy selects)"
        return ""

    def reload_config(self, request: model_management_pb2.ReloadConfigRequest, wait_seconds: float | None = None
                      ) -> model_management_pb2.ReloadConfigResponse:
        """ReloadConfig as the server answers it: :meth:`apply_reload`, or the ``reload`` hook where one is given
        (worker mode: every worker applies it)."""
        if self._reload is not None:
            return self._reload(request, wait_seconds)
        return self.apply_reload(request, wait_seconds)

    def apply_reload(self, request: model_management_pb2.ReloadConfigRequest, wait_seconds: float | None = None
                     ) -> model_management_pb2.ReloadConfigResponse:
        """Apply a new ModelServerConfig here, then wait for newly added models as TF Serving's ServerCore does.

        The wait is bounded by ``reload_wait_seconds`` and ``wait_seconds``; a model still loading after it
        is not an error (its state shows in GetModelStatus), one whose every version failed is (UNKNOWN).
        """
        config = request.config
        if config.WhichOneof("config") != "model_config_list":
            raise InvalidArgument("ServerModelConfig type not supported by HandleReloadConfigRequest. Only "
                                  "ModelConfigList is currently supported")
        wait = self.reload_wait_seconds if wait_seconds is None else min(self.reload_wait_seconds, wait_seconds)
        self.manager.reload_config(config, wait)
        response = model_management_pb2.ReloadConfigResponse()
        response.status.error_code = _CODE_OK
        return response


def _settle(done: asyncio.Future, task: Any) -> None:
    """On the loop: a queued request's batch task is done (the await may have been cancelled meanwhile)."""
    if not done.done():
        done.set_result(task)


def _note_bytes_in(size: int) -> None:
    record = current()
    if record is not None and not record.bytes_in:
        record.bytes_in = size


def _nbytes(arrays: Mapping[str, Any]) -> int:
    return sum(getattr(a, "nbytes", 0) for a in arrays.values())


def _fill_predict_response(response: predict_pb2.PredictResponse, spec: model_pb2.ModelSpec,
                           outputs: Mapping[str, np.ndarray]) -> None:
    from tfsctl.tensors import as_proto_field

    response.model_spec.CopyFrom(spec)
    for key, value in outputs.items():
        as_proto_field(value, response.outputs[key])


class HeldServable:
    """A servable held by :meth:`RequestCore.hold`: its signature spec and a predict that runs on it."""

    def __init__(self, core: RequestCore, servable: Servable, signature_name: str, only_if_quick: bool = False
                 ) -> None:
        self.servable = servable
        self.signature_name = signature_name
        self._core = core
        self._only_if_quick = only_if_quick

    @property
    def signature(self) -> SignatureSpec:
        """The SignatureSpec (inputs/outputs TensorSpecs); unknown signature -> FAILED_PRECONDITION."""
        return self.servable.signature(self.signature_name)

    def predict(self, inputs: Mapping[str, np.ndarray], output_filter: Sequence[str] = ()
                ) -> tuple[model_pb2.ModelSpec, dict[str, np.ndarray]]:
        """Predict on the held version (no second resolve)."""
        return self._core.predict_with(self.servable, self.signature_name, inputs, output_filter,
                                       only_if_quick=self._only_if_quick)
