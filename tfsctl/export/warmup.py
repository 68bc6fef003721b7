"""Warmup records for every export: ``assets.extra/tf_serving_warmup_requests``, one PredictionLog per signature of
the signature's kind (PredictLog, ClassifyLog or RegressLog), replayed by the server before a version is AVAILABLE.

Requests come from ``--warmup-request FILE`` (TF Serving REST JSON bodies: one object, a JSON array of them, or one
per line; ``signature_name`` picks the signature, ``instances``/``inputs`` for predict, ``examples`` for
classify/regress), or are made from the signature: zeros of each input's dtype and shape, unknown dimensions 1
unless ``--warmup-shape KEY=1x224x224x3`` says otherwise; classify/regress get one tf.Example holding the dense
features the graph's ParseExample op reads. Every record is run once against the written SavedModel in a TF1 session
(as TF Serving loads it) before the version is placed: a record that fails would make the server refuse the version.
A generated record that fails is left out with a warning; a record the user asked for that fails is an error.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tfsctl.errors import ExportError
from tfsctl.export.graph import first_line
from tfsctl.savedmodel import (
    CLASSIFY_METHOD,
    DEFAULT_SIGNATURE,
    INIT_OP_SIGNATURE,
    PREDICT_METHOD,
    REGRESS_METHOD,
    find_meta_graph,
    read_saved_model,
    warmup_path,
)


@dataclass
class WarmupPlan:
    """What the user asked for: shapes per input key, explicit REST bodies, or no warmup at all."""

    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    request_file: Path | None = None
    enabled: bool = True
    request_log: Path | None = None  # --warmup-from: a server's request log (logging_config) to take records from


def parse_shape(text: str, flag: str = "--warmup-shape") -> tuple[int, ...]:
    """``1x224x224x3`` -> (1, 224, 224, 3); ``scalar`` or ``""`` -> ()."""
    if text.strip().lower() in ("", "scalar"):
        return ()
    parts = text.lower().split("x")
    if not all(p.strip().isdigit() for p in parts):
        raise ExportError(f"{flag} {text!r} is not a shape like 1x224x224x3")
    return tuple(int(p) for p in parts)


def _zeros(dtype: Any, shape: tuple[int, ...]) -> Any:
    import numpy as np

    if dtype.name == "string":
        return np.full(shape, b"", dtype=object)
    return np.zeros(shape, dtype.as_numpy_dtype)


def _shape_for(key: str, info: Any, plan: WarmupPlan) -> tuple[int, ...]:
    if key in plan.shapes:
        return plan.shapes[key]
    if info.tensor_shape.unknown_rank:
        return (1,)
    return tuple(1 if d.size < 0 else int(d.size) for d in info.tensor_shape.dim)


def _examples_for(graph: Any, sess: Any, input_name: str) -> list[Any]:
    """One tf.Example with zero-valued dense features of the ParseExample op fed by ``input_name`` (if visible)."""
    from tensorflow.core.example import example_pb2

    example = example_pb2.Example()
    for op in graph.get_operations():
        if op.type not in ("ParseExample", "ParseExampleV2") or op.inputs[0].name != input_name:
            continue
        shapes = op.get_attr("dense_shapes")
        dtypes = op.get_attr("Tdense")
        if op.type == "ParseExampleV2":
            keys = [k.decode() for k in sess.run(op.inputs[3]).tolist()]
        else:
            n_sparse = op.get_attr("Nsparse")
            keys = [sess.run(t).decode() for t in op.inputs[2 + n_sparse: 2 + n_sparse + len(shapes)]]
        for key, shape, dtype in zip(keys, shapes, dtypes, strict=False):
            count = 1
            for d in shape.dim if hasattr(shape, "dim") else shape:
                count *= max(int(getattr(d, "size", d)), 1)
            feature = example.features.feature[key]
            if dtype.name == "string":
                feature.bytes_list.value.extend([b""] * count)
            elif dtype.is_integer:
                feature.int64_list.value.extend([0] * count)
            else:
                feature.float_list.value.extend([0.0] * count)
    return [example]


def _log(method: str, model_name: str, signature: str, *, inputs: dict[str, Any] | None = None,
         examples: list[Any] | None = None) -> Any:
    import tensorflow as tf
    from tensorflow_serving.apis import (
        classification_pb2,
        predict_pb2,
        prediction_log_pb2,
        regression_pb2,
    )

    if method == CLASSIFY_METHOD:
        req = classification_pb2.ClassificationRequest()
        req.input.example_list.examples.extend(examples or [])
    elif method == REGRESS_METHOD:
        req = regression_pb2.RegressionRequest()
        req.input.example_list.examples.extend(examples or [])
    else:
        req = predict_pb2.PredictRequest()
        for key, value in (inputs or {}).items():
            req.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    req.model_spec.name = model_name
    req.model_spec.signature_name = signature
    if method == CLASSIFY_METHOD:
        log = prediction_log_pb2.PredictionLog(classify_log=prediction_log_pb2.ClassifyLog(request=req))
    elif method == REGRESS_METHOD:
        log = prediction_log_pb2.PredictionLog(regress_log=prediction_log_pb2.RegressLog(request=req))
    else:
        log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=req))
    return log


def _value(value: Any) -> Any:
    """REST JSON -> Python: ``{"b64": ...}`` -> bytes, lists recursively."""
    if isinstance(value, dict):
        if set(value) == {"b64"} and isinstance(value["b64"], str):
            return base64.b64decode(value["b64"])
        raise ExportError(f"--warmup-request: unexpected object {json.dumps(value)[:80]} (only {{\"b64\": ...}})")
    if isinstance(value, list):
        return [_value(v) for v in value]
    return value


def _array(value: Any, info: Any, where: str) -> Any:
    import numpy as np
    import tensorflow as tf

    dtype = tf.as_dtype(info.dtype)
    try:
        if dtype.name == "string":
            return np.array(value, dtype=object)
        return np.asarray(value, dtype=dtype.as_numpy_dtype)
    except (ValueError, TypeError) as exc:
        raise ExportError(f"{where}: not a {dtype.name} tensor: {exc}") from None


def _example(features: Any, where: str) -> Any:
    from tensorflow.core.example import example_pb2

    if not isinstance(features, dict):
        raise ExportError(f"{where}: each example must be an object of feature: value(s)")
    ex = example_pb2.Example()
    for key, raw in features.items():
        values = raw if isinstance(raw, list) else [raw]
        values = [_value(v) for v in values]
        f = ex.features.feature[key]
        if all(isinstance(v, bytes | str) for v in values):
            f.bytes_list.value.extend(v.encode() if isinstance(v, str) else v for v in values)
        elif all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            f.int64_list.value.extend(values)
        elif all(isinstance(v, int | float) for v in values):
            f.float_list.value.extend(float(v) for v in values)
        else:
            raise ExportError(f"{where}: feature {key!r} mixes value types")
    return ex


def read_request_file(path: Path) -> list[dict[str, Any]]:
    """REST JSON bodies from a file: an object, an array of objects, or one object per line."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ExportError(f"--warmup-request {path}: cannot read: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
        bodies = data if isinstance(data, list) else [data]
    except json.JSONDecodeError:
        try:
            bodies = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise ExportError(f"--warmup-request {path}: not JSON: {exc}") from None
    if not bodies or not all(isinstance(b, dict) for b in bodies):
        raise ExportError(f"--warmup-request {path}: expected REST request bodies (JSON objects)")
    return bodies


def logs_from_bodies(bodies: list[dict[str, Any]], signatures: dict[str, Any], model_name: str,
                     where: str) -> list[Any]:
    """PredictionLogs for TF Serving REST bodies, typed by the signatures they name."""
    logs = []
    for i, body in enumerate(bodies):
        at = f"{where} request {i + 1}"
        name = body.get("signature_name") or DEFAULT_SIGNATURE
        sig = signatures.get(name)
        if sig is None:
            raise ExportError(f"{at}: no signature {name!r} (have {', '.join(sorted(signatures))})")
        if sig.method_name in (CLASSIFY_METHOD, REGRESS_METHOD):
            examples = body.get("examples")
            if not isinstance(examples, list) or not examples:
                raise ExportError(f"{at}: signature {name!r} is {sig.method_name.rsplit('/', 1)[1]}: give "
                                  '"examples": [...]')
            logs.append(_log(sig.method_name, model_name, name,
                             examples=[_example(e, f"{at} example {j + 1}") for j, e in enumerate(examples)]))
            continue
        inputs: dict[str, Any] = {}
        if "inputs" in body:
            cols = body["inputs"]
            if not isinstance(cols, dict):
                if len(sig.inputs) != 1:
                    raise ExportError(f"{at}: signature {name!r} has {len(sig.inputs)} inputs: \"inputs\" must "
                                      "be an object keyed by input")
                cols = {next(iter(sig.inputs)): cols}
            inputs = {k: _value(v) for k, v in cols.items()}
        elif "instances" in body:
            rows = body["instances"]
            if not isinstance(rows, list) or not rows:
                raise ExportError(f"{at}: \"instances\" must be a non-empty list")
            if all(isinstance(r, dict) and "b64" not in r for r in rows):
                inputs = {k: [_value(r.get(k)) for r in rows] for k in rows[0]}
            elif len(sig.inputs) == 1:
                inputs = {next(iter(sig.inputs)): [_value(r) for r in rows]}
            else:
                raise ExportError(f"{at}: signature {name!r} has several inputs: each instance must be an object")
        else:
            raise ExportError(f"{at}: give \"instances\" or \"inputs\"")
        missing = sorted(set(sig.inputs) - set(inputs))
        extra = sorted(set(inputs) - set(sig.inputs))
        if missing or extra:
            raise ExportError(f"{at}: signature {name!r} inputs are {sorted(sig.inputs)}; missing {missing}, "
                              f"unknown {extra}")
        arrays = {k: _array(v, sig.inputs[k], f"{at} input {k!r}") for k, v in inputs.items()}
        logs.append(_log(PREDICT_METHOD, model_name, name, inputs=arrays))
    return logs


# TF Serving reads at most this many warmup records (WarmupConsts::kMaxNumRecords); more is a load error there.
MAX_WARMUP_RECORDS = 1000


def logs_from_request_log(source: Path, model_name: str) -> list[Any]:
    """The records of a request log as warmup records, as TF Serving's warmup guide recommends (logged traffic):
    at most :data:`MAX_WARMUP_RECORDS`, oldest first, each without its log metadata and named for this model."""
    from tensorflow_serving.apis import prediction_log_pb2

    from tfsctl.tfrecord import RecordError, read_log

    logs = []
    try:
        for data in read_log(source):
            entry = prediction_log_pb2.PredictionLog.FromString(data)
            kind = entry.WhichOneof("log_type")
            if kind not in ("predict_log", "classify_log", "regress_log"):
                continue  # MultiInference records are not taken (each is run here as the signature it names)
            entry.ClearField("log_metadata")
            part = getattr(entry, kind)
            part.ClearField("response")
            part.request.model_spec.name = model_name
            part.request.model_spec.ClearField("version_choice")  # the new version is the one warmed up
            logs.append(entry)
            if len(logs) == MAX_WARMUP_RECORDS:
                break
    except (OSError, RecordError) as e:
        raise ExportError(f"--warmup-from {source}: {e}") from None
    except Exception as e:  # noqa: BLE001 - not PredictionLog records
        raise ExportError(f"--warmup-from {source}: record {len(logs) + 1} is not a PredictionLog: {e}") from None
    if not logs:
        raise ExportError(f"--warmup-from {source}: the request log holds no Predict, Classify or Regress record")
    return logs


def write_warmup(export_dir: Path, logs: list[Any]) -> Path | None:
    """The TFRecord file of PredictionLogs (nothing when there are no logs)."""
    if not logs:
        return None
    import tensorflow as tf

    path = warmup_path(export_dir)
    path.parent.mkdir(exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for log in logs:
            writer.write(log.SerializeToString())
    return path


def plan_and_check(export_dir: Path, tags: list[str], model_name: str, plan: WarmupPlan,
                   fixed_logs: list[Any] | None = None) -> tuple[list[Any], list[str]]:
    """(logs that ran fine, warnings): generated or given records, each run once in a TF1 session."""
    import tensorflow as tf

    proto = read_saved_model(export_dir)
    mg = find_meta_graph(proto, set(tags))
    signatures = {n: s for n, s in mg.signature_def.items() if n != INIT_OP_SIGNATURE} if mg else {}
    explicit = plan.request_file is not None or plan.request_log is not None
    warnings: list[str] = []
    unknown = sorted(k for k in plan.shapes if not any(k in s.inputs for s in signatures.values()))
    if unknown:
        raise ExportError(f"--warmup-shape {unknown[0]!r}: no signature has an input of that name "
                          f"(inputs: {sorted({k for s in signatures.values() for k in s.inputs})})")
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as sess:
        try:
            tf.compat.v1.saved_model.loader.load(sess, tags, str(export_dir))
        except Exception as exc:  # noqa: BLE001 - any load failure means a server could not load it either
            raise ExportError(f"the written SavedModel does not load in a TF1 session: {first_line(exc)}") from None
        if plan.request_log is not None:
            logs = logs_from_request_log(plan.request_log, model_name)
        elif explicit:
            assert plan.request_file is not None
            logs = logs_from_bodies(read_request_file(plan.request_file), signatures, model_name,
                                    f"--warmup-request {plan.request_file}")
        elif fixed_logs is not None:
            logs = fixed_logs
        else:
            logs = []
            for name in sorted(signatures):
                sig = signatures[name]
                if sig.method_name in (CLASSIFY_METHOD, REGRESS_METHOD) and "inputs" in sig.inputs:
                    logs.append(_log(sig.method_name, model_name, name,
                                     examples=_examples_for(graph, sess, sig.inputs["inputs"].name)))
                else:
                    inputs = {k: _zeros(tf.as_dtype(v.dtype), _shape_for(k, v, plan)) for k, v in sig.inputs.items()}
                    logs.append(_log(PREDICT_METHOD, model_name, name, inputs=inputs))
        kept = []
        for log in logs:
            name, error = _run(sess, signatures, log)
            if error is None:
                kept.append(log)
                continue
            if explicit or fixed_logs is not None or any(k in plan.shapes for k in signatures[name].inputs):
                raise ExportError(f"warmup request for signature {name!r} fails: {error}")
            warnings.append(f"no warmup for signature {name!r}: a request of zeros fails ({error}); give "
                            "--warmup-shape KEY=DIMS or --warmup-request FILE")
    return kept, warnings


def _run(sess: Any, signatures: dict[str, Any], log: Any) -> tuple[str, str | None]:
    """Run one PredictionLog's request as the server's warmup would; (signature, error or None)."""
    import tensorflow as tf

    kind = log.WhichOneof("log_type")
    req = getattr(log, kind).request
    name = req.model_spec.signature_name or DEFAULT_SIGNATURE
    sig = signatures.get(name)
    if sig is None:
        return name, f"no signature {name!r}"
    try:
        if kind == "predict_log":
            feed = {sig.inputs[k].name: tf.make_ndarray(v) for k, v in req.inputs.items()}
            if set(req.inputs) != set(sig.inputs):
                return name, f"inputs {sorted(req.inputs)} do not match the signature's {sorted(sig.inputs)}"
        else:
            feed = {sig.inputs["inputs"].name: [e.SerializeToString() for e in req.input.example_list.examples]}
        sess.run({k: v.name for k, v in sig.outputs.items()}, feed_dict=feed)
    except Exception as exc:  # noqa: BLE001 - TF runtime errors of every kind
        return name, first_line(exc)
    return name, None
