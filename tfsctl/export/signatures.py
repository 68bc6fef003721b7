"""Signatures asked for on the command line (``--input``/``--output``/``--signature``/``--method``) or in a
``--signatures`` JSON file, and their SignatureDefs over a TF1 graph.

The JSON file maps signature names to their method and tensors::

    {"serving_default": {"method": "predict", "inputs": {"images": "ImageTensor:0"},
                         "outputs": {"segmentation_map": "SemanticPredictions:0"}},
     "classify": {"method": "classify", "inputs": {"inputs": "tf_example:0"},
                  "outputs": {"classes": "classes:0", "scores": "scores:0"}}}

(``{"signatures": {...}}`` around it is accepted too). ``method`` is ``predict`` (default), ``classify`` or
``regress``, or a full method name (``tensorflow/serving/predict``). A tensor named without ``:N`` means ``:0``.
Classify and regress signatures follow TF Serving's rules: exactly one DT_STRING input ``inputs`` (serialized
tf.Examples); classify outputs ``classes`` (string) and/or ``scores`` (float), regress output ``outputs`` (float).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tfsctl.errors import ExportError
from tfsctl.savedmodel import CLASSIFY_METHOD, DEFAULT_SIGNATURE, PREDICT_METHOD, REGRESS_METHOD

METHODS = {"predict": PREDICT_METHOD, "classify": CLASSIFY_METHOD, "regress": REGRESS_METHOD}
_KEY_RE = re.compile(r"^[A-Za-z0-9_.\-/]+$")


@dataclass
class SignatureSpec:
    """One signature: name, TF Serving method name, and {key: graph tensor name} for inputs and outputs."""

    name: str = DEFAULT_SIGNATURE
    method: str = PREDICT_METHOD
    inputs: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)


def method_name(text: str) -> str:
    """``predict``/``classify``/``regress`` (or the full name) -> ``tensorflow/serving/...``."""
    if text in METHODS.values():
        return text
    try:
        return METHODS[text.lower()]
    except KeyError:
        raise ExportError(f"--method must be predict, classify or regress, got {text!r}") from None


def tensor_name(text: str) -> str:
    """``x`` -> ``x:0``; ``x:1`` stays."""
    return text if re.search(r":\d+$", text) else f"{text}:0"


def parse_pairs(items: list[str] | None, flag: str) -> dict[str, str]:
    """``["KEY=VALUE", ...]`` -> dict; one line naming the flag for a malformed or repeated item."""
    result: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise ExportError(f"{flag} {item!r} is not KEY=VALUE")
        if not _KEY_RE.match(key):
            raise ExportError(f"{flag} {item!r}: key {key!r} may hold only letters, digits and _ . - /")
        if key in result:
            raise ExportError(f"{flag} {key!r} is given twice")
        result[key] = value
    return result


def specs_from_flags(inputs: list[str] | None, outputs: list[str] | None, signature: str | None,
                     method: str | None) -> list[SignatureSpec]:
    """The one signature the flags describe ([] when no --input/--output was given)."""
    ins, outs = parse_pairs(inputs, "--input"), parse_pairs(outputs, "--output")
    if not ins and not outs:
        if method is not None:
            raise ExportError("--method applies to the signature --input/--output describe; give them too")
        return []
    if not outs:
        raise ExportError("--input given without --output: name the signature's outputs with --output KEY=TENSOR")
    spec = SignatureSpec(name=signature or DEFAULT_SIGNATURE, method=method_name(method or "predict"),
                         inputs={k: tensor_name(v) for k, v in ins.items()},
                         outputs={k: tensor_name(v) for k, v in outs.items()})
    return [spec]


def specs_from_file(path: str | Path) -> list[SignatureSpec]:
    """Signatures from a ``--signatures`` JSON file (schema in the module docstring)."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except OSError as exc:
        raise ExportError(f"--signatures {p}: cannot read: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ExportError(f"--signatures {p}: not JSON: {exc}") from None
    if isinstance(data, dict) and set(data) == {"signatures"}:
        data = data["signatures"]
    if not isinstance(data, dict) or not data:
        raise ExportError(f"--signatures {p}: expected an object mapping signature names to "
                          '{"method", "inputs", "outputs"}')
    specs = []
    for name, body in data.items():
        where = f"--signatures {p}: signature {name!r}"
        if not isinstance(body, dict):
            raise ExportError(f"{where} must be an object with inputs and outputs")
        unknown = set(body) - {"method", "method_name", "inputs", "outputs"}
        if unknown:
            raise ExportError(f"{where} has unknown field(s) {sorted(unknown)}")
        tensors = {}
        for role in ("inputs", "outputs"):
            mapping = body.get(role)
            if not isinstance(mapping, dict) or not mapping or not all(
                    isinstance(k, str) and isinstance(v, str) and k and v for k, v in mapping.items()):
                raise ExportError(f"{where}: {role} must be a non-empty object of KEY: TENSOR names")
            tensors[role] = {k: tensor_name(v) for k, v in mapping.items()}
        specs.append(SignatureSpec(name=name, method=method_name(str(body.get("method", body.get(
            "method_name", "predict")))), inputs=tensors["inputs"], outputs=tensors["outputs"]))
    return specs


def check_method_rules(name: str, method: str, inputs: dict[str, int], outputs: dict[str, int]) -> None:
    """TF Serving's classify/regress shape of a signature (dtypes as DataType enums); ExportError naming the key."""
    from tensorflow.core.framework import types_pb2

    if method == PREDICT_METHOD:
        return
    kind = "classify" if method == CLASSIFY_METHOD else "regress"
    if set(inputs) != {"inputs"} or inputs["inputs"] != types_pb2.DT_STRING:
        raise ExportError(f"signature {name!r} ({kind}) needs exactly one input 'inputs' of serialized "
                          f"tf.Examples (DT_STRING), got {sorted(inputs)}")
    allowed = {"classes": types_pb2.DT_STRING, "scores": types_pb2.DT_FLOAT} if kind == "classify" else \
        {"outputs": types_pb2.DT_FLOAT}
    bad = [k for k in outputs if k not in allowed]
    if bad or not outputs:
        raise ExportError(f"signature {name!r} ({kind}) outputs must be among {sorted(allowed)}, got "
                          f"{sorted(outputs)}")
    for k, dtype in outputs.items():
        if dtype != allowed[k]:
            from tensorflow.python.framework import dtypes

            raise ExportError(f"signature {name!r} ({kind}) output {k!r} must be "
                              f"{dtypes.as_dtype(allowed[k]).name}, the tensor is {dtypes.as_dtype(dtype).name}")


def build_signature_defs(graph: Any, specs: list[SignatureSpec], where: str) -> dict[str, Any]:
    """SignatureDefs over tensors of ``graph``; ExportError naming the first missing tensor (and what exists)."""
    import tensorflow as tf

    defs = {}
    for spec in specs:
        infos: dict[str, dict[str, Any]] = {"inputs": {}, "outputs": {}}
        for role, mapping in (("inputs", spec.inputs), ("outputs", spec.outputs)):
            for key, name in mapping.items():
                try:
                    tensor = graph.get_tensor_by_name(name)
                except (KeyError, ValueError):
                    raise ExportError(f"{where}: signature {spec.name!r} {role[:-1]} {key!r}: no tensor {name!r} "
                                      f"in the graph{_suggest(graph, name)} (tfsctl inspect lists candidates)") \
                        from None
                infos[role][key] = tf.compat.v1.saved_model.utils.build_tensor_info(tensor)
        check_method_rules(spec.name, spec.method, {k: v.dtype for k, v in infos["inputs"].items()},
                           {k: v.dtype for k, v in infos["outputs"].items()})
        defs[spec.name] = tf.compat.v1.saved_model.signature_def_utils.build_signature_def(
            inputs=infos["inputs"], outputs=infos["outputs"], method_name=spec.method)
    return defs


def _suggest(graph: Any, name: str) -> str:
    import difflib

    op_names = [op.name for op in graph.get_operations()]
    close = difflib.get_close_matches(name.rsplit(":", 1)[0], op_names, n=3)
    return f" (did you mean {', '.join(repr(c + ':0') for c in close)}?)" if close else ""
