"""The request core on one held version: Predict, Classify, Regress and MultiInference as TF Serving runs them.

Live requests (through the serving layer's ``RequestCore``) and warmup replay (the loader) call the
same functions, as TF Serving's ``RunPredict`` / ``RunClassify`` / ``RunRegress`` / ``RunMultiInference`` serve
both. ``run`` is how a signature is executed: ``Servable.run`` by default, the Batcher when batching is on.
Rules and messages follow ``predict_util.cc``, ``classifier.cc``, ``regressor.cc`` and ``multi_inference.cc``;
``method_check`` is ``--enable_signature_method_name_check``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from google.protobuf import text_format
from tensorflow_serving.apis import classification_pb2, inference_pb2, regression_pb2

from tfsctl.core.examples import DEFAULT_MAX_BYTES, examples_from_input
from tfsctl.core.servable import Servable, SignatureSpec, capped_message, capped_names
from tfsctl.errors import Internal, InvalidArgument, Unimplemented
from tfsctl.savedmodel import CLASSIFY_METHOD, DEFAULT_SIGNATURE, PREDICT_METHOD, REGRESS_METHOD
from tfsctl.tensors import header, to_numpy

CLASSIFY_INPUTS = "inputs"
CLASSIFY_CLASSES = "classes"
CLASSIFY_SCORES = "scores"
REGRESS_INPUTS = "inputs"
REGRESS_OUTPUTS = "outputs"
_DT_STRING = 7
_DT_FLOAT = 1

RunFn = Callable[[Any, str, dict, tuple], dict]


def servable_run(servable: Any, signature_name: str, inputs: dict, output_filter: tuple) -> dict:
    """The default ``run``: the servable's own session callable."""
    return servable.run(signature_name, inputs, output_filter)


def _where(servable: Any, signature_name: str | None = None) -> str:
    base = f"model '{servable.name}' version {servable.version}"
    return base if signature_name is None else f"{base}, signature '{signature_name}'"


def _sig_text(servable: Any, name: str) -> str:
    sig = servable.signature_defs.get(name)
    return capped_message(text_format.MessageToString(sig, as_one_line=True) if sig is not None else name, 600)


# --- Predict ------------------------------------------------------------------------------------------------------


def predict_signature(servable: Servable, signature_name: str, method_check: bool = False) -> SignatureSpec:
    """The signature a Predict runs: unknown -> FAILED_PRECONDITION; with ``method_check`` a method other than
    predict/classify/regress is refused (INTERNAL, TF Serving's code for it)."""
    spec = servable.signature(signature_name)
    if method_check and spec.method_name not in (PREDICT_METHOD, CLASSIFY_METHOD, REGRESS_METHOD):
        raise Internal(
            f"{_where(servable, spec.name)}: Expected prediction signature method_name to be one of "
            f"{{{PREDICT_METHOD}, {CLASSIFY_METHOD}, {REGRESS_METHOD}}}. Was: {spec.method_name}"
        )
    return spec


def decode_inputs(servable: Servable, spec: SignatureSpec, protos: Mapping[str, Any],
                  max_bytes: int | None = DEFAULT_MAX_BYTES) -> dict[str, np.ndarray]:
    """Request TensorProtos -> numpy, after the key check and a bound on the decoded size of all inputs together.

    Keys are checked first, so an extra input of millions of strings is refused without decoding it.
    """
    keys = list(protos)  # a protobuf map's own iterator; its items() view is the slow generic one
    servable.check_input_keys(spec, set(keys))
    entries = []
    total, biggest, most = 0, "", -1
    for key in keys:
        proto = protos[key]
        try:
            head = header(proto, key)
        except InvalidArgument as e:
            raise InvalidArgument(f"{_where(servable, spec.name)}: {e.message}") from None
        entries.append((key, proto, head))
        total += head[2]
        if head[2] > most:
            biggest, most = key, head[2]
    if max_bytes is not None and total > max_bytes:
        raise InvalidArgument(
            f"{_where(servable, spec.name)}: the inputs need {total} bytes once decoded "
            f"(input '{capped_names([biggest], 1)}' {most} bytes), more than the {max_bytes} bytes allowed for a "
            "request"
        )
    out = {}
    for key, proto, head in entries:
        try:
            out[key] = to_numpy(proto, key, checked=head)
        except InvalidArgument as e:
            raise InvalidArgument(f"{_where(servable, spec.name)}: {e.message}") from None
    return out


def run_predict(servable: Servable, request: Any, *, run: RunFn = servable_run, method_check: bool = False,
                max_bytes: int | None = DEFAULT_MAX_BYTES) -> tuple[str, dict[str, np.ndarray]]:
    """A ``PredictRequest`` on ``servable``: returns the signature name used and the outputs."""
    spec = predict_signature(servable, request.model_spec.signature_name, method_check)
    inputs = decode_inputs(servable, spec, request.inputs, max_bytes)
    return spec.name, run(servable, spec.name, inputs, tuple(request.output_filter))


def predict_arrays(servable: Servable, signature_name: str, inputs: Mapping[str, np.ndarray],
                   output_filter: Sequence[str] = (), *, run: RunFn = servable_run, method_check: bool = False
                   ) -> tuple[str, dict[str, np.ndarray]]:
    """Predict with already decoded inputs (REST): same checks, same run."""
    spec = predict_signature(servable, signature_name, method_check)
    return spec.name, run(servable, spec.name, dict(inputs), tuple(output_filter))


# --- Classify / Regress -------------------------------------------------------------------------------------------


def _lookup(servable: Servable, signature_name: str, not_found: str) -> SignatureSpec:
    name = signature_name or DEFAULT_SIGNATURE
    if not servable.has_signature(name):
        known = capped_names(k for k in servable.signature_defs if not k.startswith("__")) or "none"
        raise InvalidArgument(f"{_where(servable)}: {not_found}{name} (signatures: {known})")
    return servable.signature(name)


def classification_outputs(servable: Servable, spec: SignatureSpec, method_check: bool = False) -> list[str]:
    """classifier.cc's PreProcessClassification: the outputs to fetch (``classes`` and/or ``scores``)."""
    where = _where(servable, spec.name)
    if method_check and spec.method_name != CLASSIFY_METHOD:
        raise InvalidArgument(f"{where}: Expected classification signature method_name to be {CLASSIFY_METHOD}. "
                              f"Was: {spec.method_name}")
    if len(spec.inputs) != 1:
        raise InvalidArgument(f"{where}: Expected one input Tensor.")
    if len(spec.outputs) not in (1, 2):
        raise InvalidArgument(f"{where}: Expected one or two output Tensors, found {len(spec.outputs)}")
    if CLASSIFY_INPUTS not in spec.inputs:
        raise InvalidArgument(f"{where}: No classification inputs found in SignatureDef: "
                              f"{_sig_text(servable, spec.name)}")
    wanted = [k for k in (CLASSIFY_CLASSES, CLASSIFY_SCORES) if k in spec.outputs]
    if not wanted:
        raise InvalidArgument(
            f"{where}: Expected classification signature outputs to contain at least one of \"{CLASSIFY_CLASSES}\" "
            f"or \"{CLASSIFY_SCORES}\". Signature was: {_sig_text(servable, spec.name)}")
    return wanted


def regression_outputs(servable: Servable, spec: SignatureSpec, method_check: bool = False) -> list[str]:
    """regressor.cc's PreProcessRegression: exactly one input ``inputs`` and one output ``outputs``."""
    where = _where(servable, spec.name)
    if method_check and spec.method_name != REGRESS_METHOD:
        raise InvalidArgument(f"{where}: Expected regression signature method_name to be {REGRESS_METHOD}. "
                              f"Was: {spec.method_name}")
    if len(spec.inputs) != 1:
        raise InvalidArgument(f"{where}: Expected one input Tensor.")
    if len(spec.outputs) != 1:
        raise InvalidArgument(f"{where}: Expected one output Tensor.")
    if REGRESS_INPUTS not in spec.inputs:
        raise InvalidArgument(f"{where}: No regression inputs found in SignatureDef: {_sig_text(servable, spec.name)}")
    if REGRESS_OUTPUTS not in spec.outputs:
        raise InvalidArgument(f"{where}: No regression outputs found in SignatureDef: "
                              f"{_sig_text(servable, spec.name)}")
    return [REGRESS_OUTPUTS]


def classification_signature(servable: Servable, signature_name: str, method_check: bool = False
                             ) -> tuple[SignatureSpec, list[str]]:
    """GetClassificationSignatureDef: unknown name -> INVALID_ARGUMENT, then the method / shape rules."""
    spec = _lookup(servable, signature_name, "No signature was found with the name: ")
    return spec, classification_outputs(servable, spec, method_check)


def regression_signature(servable: Servable, signature_name: str, method_check: bool = False
                         ) -> tuple[SignatureSpec, list[str]]:
    """GetRegressionSignatureDef: unknown name -> INVALID_ARGUMENT, then the method / shape rules."""
    spec = _lookup(servable, signature_name, "No signature was found with the name: ")
    return spec, regression_outputs(servable, spec, method_check)


def classification_result(classes: np.ndarray | None, scores: np.ndarray | None, num_examples: int,
                          where: str) -> classification_pb2.ClassificationResult:
    """PostProcessClassificationResult: ``classes`` string [N, C] and/or ``scores`` float [N, C]."""
    for key, arr, kind in ((CLASSIFY_CLASSES, classes, "DT_STRING"), (CLASSIFY_SCORES, scores, "DT_FLOAT")):
        if arr is None:
            continue
        if arr.ndim != 2:
            raise InvalidArgument(f"{where}: Expected Tensor shape: [batch_size num_classes] but got "
                                  f"{list(arr.shape)} for '{key}'")
        ok = arr.dtype.kind in "OS" if kind == "DT_STRING" else arr.dtype == np.float32
        if not ok:
            raise InvalidArgument(f"{where}: Expected {key} Tensor of {kind}. Got: {arr.dtype.name}")
        if arr.shape[0] != num_examples:
            raise InvalidArgument(f"{where}: Expected {key} output batch size of {num_examples}. Got: {arr.shape[0]}")
    if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
        raise InvalidArgument(f"{where}: Tensors class and score should match in dim_size(1). Got "
                              f"{classes.shape[1]} vs. {scores.shape[1]}")
    num_classes = (classes if classes is not None else scores).shape[1] if (  # type: ignore[union-attr]
        classes is not None or scores is not None) else 0
    result = classification_pb2.ClassificationResult()
    labels = classes.tolist() if classes is not None else None
    values = scores.tolist() if scores is not None else None
    for i in range(num_examples):
        row = result.classifications.add()
        for c in range(num_classes):
            cl = row.classes.add()
            if labels is not None:
                label = labels[i][c]
                cl.label = label.decode("utf-8", "replace") if isinstance(label, bytes) else str(label)
            if values is not None:
                cl.score = values[i][c]
    return result


def regression_result(outputs: np.ndarray, num_examples: int, where: str) -> regression_pb2.RegressionResult:
    """PostProcessRegressionResult: ``outputs`` float [N] or [N, 1]."""
    if not (outputs.ndim == 1 or (outputs.ndim == 2 and outputs.shape[1] == 1)):
        raise InvalidArgument(f"{where}: Expected output Tensor shape to be either [batch_size] or [batch_size, 1] "
                              f"but got {list(outputs.shape)}")
    if outputs.shape[0] != num_examples:
        raise InvalidArgument(f"{where}: Input batch size did not match output batch size: {num_examples} vs. "
                              f"{outputs.shape[0]}")
    if outputs.dtype != np.float32:
        raise InvalidArgument(f"{where}: Expected output Tensor of DT_FLOAT.  Got: {outputs.dtype.name}")
    result = regression_pb2.RegressionResult()
    for v in outputs.ravel().tolist():
        result.regressions.add(value=v)
    return result


def _classify_on(servable: Servable, spec: SignatureSpec, wanted: list[str], examples: np.ndarray, run: RunFn
                 ) -> classification_pb2.ClassificationResult:
    out = run(servable, spec.name, {CLASSIFY_INPUTS: examples}, tuple(wanted))
    return classification_result(out.get(CLASSIFY_CLASSES), out.get(CLASSIFY_SCORES), len(examples),
                                 _where(servable, spec.name))


def _regress_on(servable: Servable, spec: SignatureSpec, wanted: list[str], examples: np.ndarray, run: RunFn
                ) -> regression_pb2.RegressionResult:
    out = run(servable, spec.name, {REGRESS_INPUTS: examples}, tuple(wanted))
    return regression_result(out[REGRESS_OUTPUTS], len(examples), _where(servable, spec.name))


def run_classify(servable: Servable, request: Any, *, run: RunFn = servable_run, method_check: bool = False,
                 max_bytes: int | None = DEFAULT_MAX_BYTES) -> tuple[str, classification_pb2.ClassificationResult]:
    """A ``ClassificationRequest`` on ``servable``: the signature name used and the result."""
    spec, wanted = classification_signature(servable, request.model_spec.signature_name, method_check)
    examples = examples_from_input(request.input, _where(servable, spec.name), max_bytes)
    return spec.name, _classify_on(servable, spec, wanted, examples, run)


def run_regress(servable: Servable, request: Any, *, run: RunFn = servable_run, method_check: bool = False,
                max_bytes: int | None = DEFAULT_MAX_BYTES) -> tuple[str, regression_pb2.RegressionResult]:
    """A ``RegressionRequest`` on ``servable``: the signature name used and the result."""
    spec, wanted = regression_signature(servable, request.model_spec.signature_name, method_check)
    examples = examples_from_input(request.input, _where(servable, spec.name), max_bytes)
    return spec.name, _regress_on(servable, spec, wanted, examples, run)


def check_multi_inference_tasks(request: Any) -> str:
    """The checks that need no model (multi_inference.cc): returns the model name all tasks share."""
    model_name = ""
    seen: set[str] = set()
    for task in request.tasks:
        name = task.model_spec.name
        if not name:
            raise InvalidArgument("Found ModelSpec with an empty model name.")
        if not model_name:
            model_name = name
        elif name != model_name:
            raise InvalidArgument("All ModelSpecs in a MultiInferenceRequest must access the same model name.")
        sig = task.model_spec.signature_name or DEFAULT_SIGNATURE
        if sig in seen:
            raise InvalidArgument(f"Duplicate evaluation of signature: {sig}")
        seen.add(sig)
    return model_name


def run_multi_inference(servable: Servable, request: Any, *, run: RunFn = servable_run, method_check: bool = False,
                        max_bytes: int | None = DEFAULT_MAX_BYTES) -> inference_pb2.MultiInferenceResponse:
    """A ``MultiInferenceRequest`` on ``servable``: every task over the same examples, results in task order."""
    check_multi_inference_tasks(request)
    plans = []
    for task in request.tasks:
        spec = _lookup(servable, task.model_spec.signature_name, "Requested signature not found in model graph: ")
        if task.method_name == CLASSIFY_METHOD:
            plans.append((task, spec, classification_outputs(servable, spec, method_check)))
        elif task.method_name == REGRESS_METHOD:
            plans.append((task, spec, regression_outputs(servable, spec, method_check)))
        else:
            raise Unimplemented(f"{_where(servable, spec.name)}: Unsupported signature method_name: "
                                f"{capped_message(task.method_name, 200)}")
    response = inference_pb2.MultiInferenceResponse()
    if not plans:
        return response
    examples = examples_from_input(request.input, _where(servable), max_bytes)
    for task, spec, wanted in plans:
        result = response.results.add()
        if task.method_name == CLASSIFY_METHOD:
            result.classification_result.CopyFrom(_classify_on(servable, spec, wanted, examples, run))
        else:
            result.regression_result.CopyFrom(_regress_on(servable, spec, wanted, examples, run))
        result.model_spec.name = servable.name
        result.model_spec.version.value = servable.version
        result.model_spec.signature_name = spec.name
    return response
