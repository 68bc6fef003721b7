"""The one request path: every API (gRPC, REST) resolves models and runs signatures through :class:`PredictionCore`.

Front ends only decode requests into numpy / protos and encode the results; model resolution, signature checks,
tf.Example handling for Classify/Regress and the status codes all live here, so both wires behave the same way.
Behaviour follows TF Serving's ``predict_util``, ``classifier``, ``regressor``, ``multi_inference``,
``get_model_metadata_impl`` and ``get_model_status_impl``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_pb2,
    regression_pb2,
)

from tfsctl.core.servable import example_input_key, examples_from_input
from tfsctl.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ServingError,
    Unimplemented,
    Unknown,
)
from tfsctl.savedmodel import CLASSIFY_METHOD, REGRESS_METHOD

DEFAULT_SIGNATURE = "serving_default"
CLASSIFY_CLASSES = "classes"
CLASSIFY_SCORES = "scores"
REGRESS_OUTPUTS = "outputs"
SIGNATURE_DEF_FIELD = "signature_def"
_AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE
_END = get_model_status_pb2.ModelVersionStatus.END
_CODE_OK = 0
_CODE_UNKNOWN = 2


def signature_or_default(name: str) -> str:
    """TF Serving's rule: an empty signature name means ``serving_default``."""
    return name or DEFAULT_SIGNATURE


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


class PredictionCore:
    """Resolves ModelSpecs against the manager and runs signatures (through the batcher when there is one).

    ``manager`` follows the Manager contract (``handle``, ``model_names``, ``version_states``, ``labels``,
    ``apply_config``); ``batcher`` the Batcher contract (``run`` with ``Servable.run``'s signature).
    """

    def __init__(self, manager: Any, batcher: Any = None, metrics: Any = None, *,
                 reload_wait_seconds: float = 30.0, enable_signature_method_name_check: bool = False) -> None:
        self.enable_signature_method_name_check = enable_signature_method_name_check
        self.manager = manager
        self.batcher = batcher
        self.metrics = metrics
        self.reload_wait_seconds = reload_wait_seconds

    # --- helpers ---------------------------------------------------------------------------------------------

    @staticmethod
    def _require_name(spec: model_pb2.ModelSpec) -> str:
        if not spec.name:
            raise InvalidArgument("Missing ModelSpec name: set model_spec.name to the model to call")
        return spec.name

    def _handle(self, spec: model_pb2.ModelSpec):
        """``manager.handle`` for the spec's name and version/label."""
        return self.manager.handle(self._require_name(spec), _version_of(spec), _label_of(spec))

    def _run(self, servable: Any, signature_name: str, inputs: Mapping[str, np.ndarray],
             output_filter: Sequence[str] = ()) -> dict[str, np.ndarray]:
        """Run one signature of a held servable; errors get the model name and version in front."""
        try:
            if self.batcher is not None:
                return self.batcher.run(servable, signature_name, dict(inputs), tuple(output_filter))
            return servable.run(signature_name, dict(inputs), tuple(output_filter))
        except ServingError as e:
            prefix = f"model '{servable.name}' version {servable.version}"
            if servable.name in e.message:
                raise
            raise type(e)(f"{prefix}: {e.message}") from e

    @staticmethod
    def _signature(servable: Any, signature_name: str, method: str | None = None):
        """SignatureDef by name: unknown -> FAILED_PRECONDITION; wrong method -> FAILED_PRECONDITION."""
        sig = servable.signature_defs.get(signature_name)
        if sig is None:
            known = ", ".join(sorted(servable.signature_defs)) or "none"
            raise FailedPrecondition(
                f"model '{servable.name}' version {servable.version}: serving signature '{signature_name}' "
                f"not found (signatures: {known})"
            )
        if method is not None and sig.method_name != method:
            raise FailedPrecondition(
                f"model '{servable.name}' version {servable.version}: signature '{signature_name}' has "
                f"method_name '{sig.method_name}', expected {method}"
            )
        return sig

    # --- Predict -----------------------------------------------------------------------------------------------

    def predict(self, model_spec: model_pb2.ModelSpec, inputs: Mapping[str, np.ndarray],
                output_filter: Sequence[str] = ()) -> tuple[model_pb2.ModelSpec, dict[str, np.ndarray]]:
        """Run a predict signature; returns the resolved ModelSpec (version actually used) and the outputs."""
        signature_name = signature_or_default(model_spec.signature_name)
        with self._handle(model_spec) as servable:
            outputs = self._run(servable, signature_name, inputs, output_filter)
            return make_model_spec(servable.name, servable.version, signature_name), outputs

    @contextmanager
    def hold(self, model_spec: model_pb2.ModelSpec) -> Iterator[HeldServable]:
        """One servable handle for a whole front-end request (signature lookup, decode, run, encode), as gRPC holds
        it: a version swap in between can neither fail the request nor mix two versions."""
        with self._handle(model_spec) as servable:
            yield HeldServable(self, servable, signature_or_default(model_spec.signature_name))

    # --- Classify / Regress --------------------------------------------------------------------------------------

    def _classify_on(self, servable: Any, signature_name: str, examples: np.ndarray
                     ) -> classification_pb2.ClassificationResult:
        sig = self._signature(servable, signature_name, CLASSIFY_METHOD)
        where = f"model '{servable.name}' signature '{signature_name}'"
        key = example_input_key(servable.signature(signature_name), CLASSIFY_METHOD, where)
        wanted = [k for k in (CLASSIFY_CLASSES, CLASSIFY_SCORES) if k in sig.outputs]
        if not wanted:
            raise FailedPrecondition(f"{where}: classify signature has neither '{CLASSIFY_CLASSES}' nor "
                                     f"'{CLASSIFY_SCORES}' output")
        out = self._run(servable, signature_name, {key: examples}, wanted)
        return classification_result(out.get(CLASSIFY_CLASSES), out.get(CLASSIFY_SCORES), len(examples), where)

    def _regress_on(self, servable: Any, signature_name: str, examples: np.ndarray
                    ) -> regression_pb2.RegressionResult:
        sig = self._signature(servable, signature_name, REGRESS_METHOD)
        where = f"model '{servable.name}' signature '{signature_name}'"
        key = example_input_key(servable.signature(signature_name), REGRESS_METHOD, where)
        if REGRESS_OUTPUTS not in sig.outputs:
            raise FailedPrecondition(f"{where}: regress signature has no '{REGRESS_OUTPUTS}' output")
        out = self._run(servable, signature_name, {key: examples}, [REGRESS_OUTPUTS])
        return regression_result(out[REGRESS_OUTPUTS], len(examples), where)

    def classify(self, request: classification_pb2.ClassificationRequest
                 ) -> classification_pb2.ClassificationResponse:
        """Classify serialized tf.Examples with a ``tensorflow/serving/classify`` signature."""
        signature_name = signature_or_default(request.model_spec.signature_name)
        with self._handle(request.model_spec) as servable:
            examples = examples_from_input(request.input, "ClassificationRequest.input")
            result = self._classify_on(servable, signature_name, examples)
            return classification_pb2.ClassificationResponse(
                model_spec=make_model_spec(servable.name, servable.version, signature_name), result=result)

    def regress(self, request: regression_pb2.RegressionRequest) -> regression_pb2.RegressionResponse:
        """Regress serialized tf.Examples with a ``tensorflow/serving/regress`` signature."""
        signature_name = signature_or_default(request.model_spec.signature_name)
        with self._handle(request.model_spec) as servable:
            examples = examples_from_input(request.input, "RegressionRequest.input")
            result = self._regress_on(servable, signature_name, examples)
            return regression_pb2.RegressionResponse(
                model_spec=make_model_spec(servable.name, servable.version, signature_name), result=result)

    def multi_inference(self, request: inference_pb2.MultiInferenceRequest
                        ) -> inference_pb2.MultiInferenceResponse:
        """Several classify/regress tasks over one input, all on the same model (and the same version)."""
        if not request.tasks:
            raise InvalidArgument("MultiInferenceRequest has no tasks")
        first = request.tasks[0].model_spec
        seen: set[str] = set()
        for task in request.tasks:
            spec = task.model_spec
            if not spec.name:
                raise InvalidArgument("Found ModelSpec with an empty model name in MultiInferenceRequest")
            if spec.name != first.name:
                raise InvalidArgument(
                    f"All ModelSpecs in a MultiInferenceRequest must access the same model name "
                    f"(got '{first.name}' and '{spec.name}')")
            if (_version_of(spec), _label_of(spec)) != (_version_of(first), _label_of(first)):
                raise InvalidArgument(f"model '{first.name}': all tasks of a MultiInferenceRequest must ask for "
                                      "the same version or version_label")
            sig_name = signature_or_default(spec.signature_name)
            if sig_name in seen:
                raise InvalidArgument(f"model '{first.name}': duplicate evaluation of signature '{sig_name}'")
            seen.add(sig_name)
            if task.method_name not in (CLASSIFY_METHOD, REGRESS_METHOD):
                raise Unimplemented(f"model '{first.name}' signature '{sig_name}': unsupported method_name "
                                    f"'{task.method_name}' (use {CLASSIFY_METHOD} or {REGRESS_METHOD})")
        response = inference_pb2.MultiInferenceResponse()
        with self._handle(first) as servable:
            examples = examples_from_input(request.input, "MultiInferenceRequest.input")
            for task in request.tasks:
                sig_name = signature_or_default(task.model_spec.signature_name)
                result = response.results.add()
                if task.method_name == CLASSIFY_METHOD:
                    result.classification_result.CopyFrom(self._classify_on(servable, sig_name, examples))
                else:
                    result.regression_result.CopyFrom(self._regress_on(servable, sig_name, examples))
                result.model_spec.CopyFrom(make_model_spec(servable.name, servable.version, sig_name))
        return response

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
            sig_map = get_model_metadata_pb2.SignatureDefMap()
            for key, sig in servable.signature_defs.items():
                sig_map.signature_def[key].CopyFrom(sig)
            response = get_model_metadata_pb2.GetModelMetadataResponse(
                model_spec=make_model_spec(servable.name, servable.version))
        response.metadata[SIGNATURE_DEF_FIELD].Pack(sig_map)
        return response

    def get_model_status(self, request: get_model_status_pb2.GetModelStatusRequest
                         ) -> get_model_status_pb2.GetModelStatusResponse:
        """State of every version of a model (or the one version / label asked for), newest first."""
        spec = request.model_spec
        name = self._require_name(spec)
        if name not in set(self.manager.model_names()):
            raise NotFound(f"Could not find any versions of model '{name}'")
        states = sorted(self.manager.version_states(name), key=lambda s: s.version, reverse=True)
        if not states:  # configured, but the Source has found no version yet: TF Serving answers NOT_FOUND
            raise NotFound(f"Could not find any versions of model '{name}'{self._no_versions_hint(name)}")
        version = _version_of(spec)
        label = _label_of(spec)
        if label is not None:
            labels = self.manager.labels(name)
            if label not in labels:
                raise InvalidArgument(f"model '{name}': unknown version label '{label}' "
                               f"(labels: {', '.join(sorted(labels)) or 'none'})")
            version = labels[label]
        if version is not None:
            states = [s for s in states if s.version == version]
            if not states:
                raise NotFound(f"Could not find version {version} of model '{name}'")
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
                if not os.path.isdir(mc.base_path):
                    return f" (base path {mc.base_path} does not exist)"
                return f" (no version directory under base path {mc.base_path} that its version policy selects)"
        return ""

    def reload_config(self, request: model_management_pb2.ReloadConfigRequest, wait_seconds: float | None = None
                      ) -> model_management_pb2.ReloadConfigResponse:
        """Apply a new ModelServerConfig, then wait for newly added models as TF Serving's ServerCore does.

        The wait is bounded by ``reload_wait_seconds`` and ``wait_seconds``; a model still loading after it
        is not an error (its state shows in GetModelStatus), one whose every version failed is.
        """
        config = request.config
        if config.WhichOneof("config") != "model_config_list":
            raise InvalidArgument("ReloadConfigRequest.config must hold a model_config_list "
                                  "(custom_model_config is not supported)")
        before = set(self.manager.model_names())
        self.manager.apply_config(config)
        added = [c.name for c in config.model_config_list.config if c.name not in before]
        wait = self.reload_wait_seconds if wait_seconds is None else min(self.reload_wait_seconds, wait_seconds)
        self._wait_for_models(added, wait)
        response = model_management_pb2.ReloadConfigResponse()
        response.status.error_code = _CODE_OK
        return response

    def _wait_for_models(self, names: Iterable[str], seconds: float) -> None:
        """Wait until each model has an AVAILABLE version; a model whose every version failed is an error."""
        pending = set(names)
        deadline = time.monotonic() + max(0.0, seconds)
        while pending and time.monotonic() < deadline:
            for name in list(pending):
                states = self.manager.version_states(name) if name in set(self.manager.model_names()) else []
                if any(s.state == _AVAILABLE for s in states):
                    pending.discard(name)
                elif states and all(s.state == _END and s.error for s in states):
                    errors = "; ".join(f"version {s.version}: {s.error}" for s in states)
                    # TF Serving's WaitUntilModelsAvailable answers UNKNOWN "... did not become available"
                    raise Unknown(f"model '{name}' did not become available: {errors}")
            if pending:
                time.sleep(0.02)


class HeldServable:
    """A servable held by :meth:`PredictionCore.hold`: its signature spec and a predict that runs on it."""

    def __init__(self, core: PredictionCore, servable: Any, signature_name: str) -> None:
        self.servable = servable
        self.signature_name = signature_name
        self._core = core

    @property
    def signature(self) -> Any:
        """The SignatureSpec (inputs/outputs TensorSpecs); unknown signature -> FAILED_PRECONDITION."""
        return self.servable.signature(self.signature_name)

    def predict(self, inputs: Mapping[str, np.ndarray], output_filter: Sequence[str] = ()
                ) -> tuple[model_pb2.ModelSpec, dict[str, np.ndarray]]:
        """PredictionCore.predict on the held version (no second resolve)."""
        outputs = self._core._run(self.servable, self.signature_name, inputs, output_filter)
        return make_model_spec(self.servable.name, self.servable.version, self.signature_name), outputs


def classification_result(classes: np.ndarray | None, scores: np.ndarray | None, num_examples: int,
                          where: str) -> classification_pb2.ClassificationResult:
    """Build a ClassificationResult from ``classes`` (string [N, C]) and/or ``scores`` (float [N, C])."""
    num_classes = 0
    for key, arr, kind in ((CLASSIFY_CLASSES, classes, "O"), (CLASSIFY_SCORES, scores, "f")):
        if arr is None:
            continue
        if arr.ndim != 2:
            raise InvalidArgument(
                f"{where}: expected '{key}' of shape [batch_size, num_classes], got {list(arr.shape)}")
        if arr.dtype.kind not in (kind, "S"):
            raise InvalidArgument(f"{where}: '{key}' has unexpected dtype {arr.dtype}")
        if arr.shape[0] != num_examples:
            raise InvalidArgument(f"{where}: expected '{key}' batch size {num_examples}, got {arr.shape[0]}")
        num_classes = arr.shape[1]
    if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
        raise InvalidArgument(f"{where}: classes and scores disagree in dim 1: {classes.shape[1]} vs {scores.shape[1]}")
    result = classification_pb2.ClassificationResult()
    for i in range(num_examples):
        row = result.classifications.add()
        for c in range(num_classes):
            cl = row.classes.add()
            if classes is not None:
                label = classes[i, c]
                cl.label = label.decode("utf-8", "replace") if isinstance(label, bytes) else str(label)
            if scores is not None:
                cl.score = float(scores[i, c])
    return result


def regression_result(outputs: np.ndarray, num_examples: int, where: str) -> regression_pb2.RegressionResult:
    """Build a RegressionResult from ``outputs`` (float [N] or [N, 1])."""
    if outputs.ndim == 2 and outputs.shape[1] == 1:
        outputs = outputs[:, 0]
    if outputs.ndim != 1:
        raise InvalidArgument(f"{where}: expected '{REGRESS_OUTPUTS}' of shape [batch_size] or [batch_size, 1], "
                              f"got {list(outputs.shape)}")
    if outputs.dtype.kind != "f":
        raise InvalidArgument(f"{where}: '{REGRESS_OUTPUTS}' has unexpected dtype {outputs.dtype}")
    if outputs.shape[0] != num_examples:
        raise InvalidArgument(f"{where}: expected '{REGRESS_OUTPUTS}' batch size {num_examples}, "
                              f"got {outputs.shape[0]}")
    result = regression_pb2.RegressionResult()
    for v in outputs.tolist():
        result.regressions.add(value=float(v))
    return result
