"""One loaded SavedModel version: its SignatureDefs and a validated, thread-safe ``run``.

Validation happens here, once, for every front end: a request is checked against the SignatureDef on disk
(missing / extra inputs, dtype, rank, fixed dimensions) before TensorFlow sees it, so clients get TF Serving's
INVALID_ARGUMENT with a message naming model, signature and input instead of a runtime trace. The checks use
per-signature specs computed at load time, so the request path does a few dict lookups and comparisons.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tensorflow.core.protobuf import meta_graph_pb2

from tfsctl.errors import FailedPrecondition, Internal, InvalidArgument, ServingError
from tfsctl.savedmodel import CLASSIFY_METHOD, PREDICT_METHOD, REGRESS_METHOD
from tfsctl.serving.tensors import NP_BY_DTYPE, dtype_name, shape_of

DEFAULT_SIGNATURE = "serving_default"
INIT_OP_SIGNATURE = "__saved_model_init_op"


@dataclass(frozen=True)
class TensorSpec:
    """What a signature expects of one tensor: numpy dtype, DataType enum, shape (-1 = any; None = any rank)."""

    key: str
    dtype: np.dtype
    dtype_enum: int
    shape: tuple[int, ...] | None

    def describe(self) -> str:
        dims = "?" if self.shape is None else "[" + ", ".join("?" if d < 0 else str(d) for d in self.shape) + "]"
        return f"{dtype_name(self.dtype_enum)} {dims}"


@dataclass(frozen=True)
class SignatureSpec:
    """A runnable signature: its specs and the concrete function that runs it (None if not callable)."""

    name: str
    method_name: str
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    fn: Any = None


@dataclass
class Resources:
    """Resource use of one version: bytes on disk and the growth of process RSS measured around the load."""

    disk_bytes: int = 0
    ram_bytes: int = 0
    load_seconds: float = 0.0


def _spec(key: str, info: meta_graph_pb2.TensorInfo) -> TensorSpec:
    return TensorSpec(key, NP_BY_DTYPE.get(info.dtype, np.dtype(object)), info.dtype, shape_of(info.tensor_shape))


def _signature_spec(name: str, sig: meta_graph_pb2.SignatureDef, fn: Any) -> SignatureSpec:
    return SignatureSpec(
        name=name,
        method_name=sig.method_name or PREDICT_METHOD,
        inputs={k: _spec(k, v) for k, v in sig.inputs.items()},
        outputs={k: _spec(k, v) for k, v in sig.outputs.items()},
        fn=fn,
    )


class Servable:
    """A loaded model version; ``run`` may be called from many threads at once.

    ``loaded`` is the object returned by ``tf.saved_model.load`` (kept alive here; :meth:`close` drops it).
    """

    def __init__(
        self,
        name: str,
        version: int,
        path: str | Path,
        signature_defs: Mapping[str, meta_graph_pb2.SignatureDef],
        loaded: Any = None,
        resources: Resources | None = None,
    ) -> None:
        self.name = name
        self.version = int(version)
        self.path = Path(path)
        self.signature_defs: dict[str, meta_graph_pb2.SignatureDef] = dict(signature_defs)
        self.resources = resources or Resources()
        self.warmup_records = 0
        self._loaded = loaded
        self._lock = threading.Lock()
        fns = dict(getattr(loaded, "signatures", {}) or {}) if loaded is not None else {}
        self._specs: dict[str, SignatureSpec] = {
            k: _signature_spec(k, v, fns.get(k)) for k, v in self.signature_defs.items()
        }
        self._where = f"model '{name}' version {self.version}"

    # --- introspection ---

    def __repr__(self) -> str:
        return f"Servable({self.name!r}, version={self.version}, path='{self.path}')"

    def resolve_signature(self, signature_name: str) -> str:
        """``""`` means ``serving_default``; unknown names raise FailedPrecondition (as TF Serving)."""
        name = signature_name or DEFAULT_SIGNATURE
        if name not in self._specs:
            known = ", ".join(sorted(k for k in self._specs if k != INIT_OP_SIGNATURE)) or "none"
            raise FailedPrecondition(
                f"{self._where}: serving signature name '{name}' not found in signature def (known: {known})"
            )
        return name

    def signature(self, signature_name: str) -> SignatureSpec:
        """Precomputed spec of a signature (``""`` = serving_default); FailedPrecondition if unknown."""
        return self._specs[self.resolve_signature(signature_name)]

    def method_name(self, signature_name: str) -> str:
        """``tensorflow/serving/predict|classify|regress`` of a signature; FailedPrecondition if unknown."""
        return self.signature(signature_name).method_name

    # --- request path ---

    def validate(self, signature_name: str, inputs: Mapping[str, np.ndarray]) -> SignatureSpec:
        """Check ``inputs`` against the SignatureDef; returns the spec, raises FailedPrecondition/InvalidArgument."""
        spec = self.signature(signature_name)
        where = f"{self._where}, signature '{spec.name}'"
        expected = spec.inputs
        if inputs.keys() != expected.keys():
            missing = sorted(expected.keys() - inputs.keys())
            extra = sorted(inputs.keys() - expected.keys())
            parts = []
            if missing:
                parts.append("missing input(s) " + ", ".join(f"'{k}' ({expected[k].describe()})" for k in missing))
            if extra:
                parts.append("unexpected input(s) " + ", ".join(f"'{k}'" for k in extra))
            raise InvalidArgument(
                f"{where}: {'; '.join(parts)}; the signature expects {', '.join(repr(k) for k in sorted(expected))}"
            )
        for key, ts in expected.items():
            arr = inputs[key]
            if not isinstance(arr, np.ndarray):
                raise InvalidArgument(f"{where}: input '{key}' must be an array, got {type(arr).__name__}")
            if ts.dtype.kind == "O":
                if arr.dtype.kind not in "OSU":
                    raise InvalidArgument(
                        f"{where}: input '{key}' expects {dtype_name(ts.dtype_enum)} but got {arr.dtype.name}"
                    )
            elif arr.dtype != ts.dtype:
                got = arr.dtype.name if arr.dtype.kind != "O" else "string"
                raise InvalidArgument(
                    f"{where}: input '{key}' expects {dtype_name(ts.dtype_enum)} ({ts.dtype.name}) but got {got}"
                )
            shape = ts.shape
            if shape is None:
                continue
            if arr.ndim != len(shape):
                raise InvalidArgument(
                    f"{where}: input '{key}' expects rank {len(shape)} {ts.describe()} but got rank {arr.ndim} "
                    f"shape {list(arr.shape)}"
                )
            for axis, (want, got) in enumerate(zip(shape, arr.shape, strict=True)):
                if want >= 0 and want != got:
                    raise InvalidArgument(
                        f"{where}: input '{key}' expects shape {ts.describe()} but got {list(arr.shape)} "
                        f"(dimension {axis} must be {want})"
                    )
        return spec

    def run(
        self, signature_name: str, inputs: Mapping[str, np.ndarray], output_filter: Sequence[str] = ()
    ) -> dict[str, np.ndarray]:
        """Validate, run the signature, return the requested outputs (all when ``output_filter`` is empty)."""
        spec = self.validate(signature_name, inputs)
        where = f"{self._where}, signature '{spec.name}'"
        if output_filter:
            unknown = [k for k in output_filter if k not in spec.outputs]
            if unknown:
                raise InvalidArgument(
                    f"{where}: output_filter names unknown output '{unknown[0]}' "
                    f"(outputs: {', '.join(sorted(spec.outputs))})"
                )
            if len(set(output_filter)) != len(output_filter):
                raise InvalidArgument(f"{where}: output_filter names an output more than once")
        fn = spec.fn
        if fn is None:
            if self._loaded is None:
                raise FailedPrecondition(f"{self._where} has been unloaded")
            raise FailedPrecondition(f"{where}: the signature is not callable")
        import tensorflow as tf

        try:
            feed = {}
            for key, arr in inputs.items():
                if arr.dtype.kind == "U":
                    arr = np.char.encode(arr, "utf-8").astype(object)
                feed[key] = tf.convert_to_tensor(arr)
        except (ValueError, TypeError, tf.errors.InvalidArgumentError) as e:
            raise InvalidArgument(f"{where}: cannot convert inputs to tensors: {e}") from None
        try:
            result = fn(**feed)
        except tf.errors.InvalidArgumentError as e:
            raise InvalidArgument(f"{where}: {tf_error_text(e.message)}") from None
        except ServingError:
            raise
        except Exception as e:  # noqa: BLE001 - anything else is a server-side failure
            raise Internal(f"{where}: execution failed: {type(e).__name__}: {e}") from None
        keys = output_filter or result.keys()
        return {k: result[k].numpy() for k in keys}

    # --- lifecycle ---

    def close(self) -> None:
        """Drop the TensorFlow objects so their memory can be freed; later ``run`` calls fail cleanly."""
        with self._lock:
            self._loaded = None
            self._specs = {k: SignatureSpec(v.name, v.method_name, v.inputs, v.outputs, None)
                           for k, v in self._specs.items()}


def tf_error_text(message: str) -> str:
    """A TF runtime error message without the graph-execution boilerplate, on one line."""
    skip = ("Graph execution error", "Detected at node", "<stack traces unavailable>")
    lines = [ln.strip() for ln in message.splitlines() if ln.strip() and not ln.strip().startswith(skip)]
    return " ".join(lines) or message.strip()


# --- tf.Example input (Classify / Regress / warmup) ---


def examples_from_input(input_proto: Any, where: str = "request") -> np.ndarray:
    """Serialized ``tf.Example`` strings (object array of bytes) from a ``tensorflow.serving.Input``.

    With ``example_list_with_context`` the context's bytes are prepended to each example's: protobuf parsing of the
    concatenation merges the two, example features winning over the context's, as in TF Serving.
    """
    kind = input_proto.WhichOneof("kind")
    if kind == "example_list":
        out = [ex.SerializeToString() for ex in input_proto.example_list.examples]
    elif kind == "example_list_with_context":
        ctx = input_proto.example_list_with_context.context.SerializeToString()
        out = [ctx + ex.SerializeToString() for ex in input_proto.example_list_with_context.examples]
    else:
        raise InvalidArgument(f"{where}: input is empty (neither example_list nor example_list_with_context)")
    if not out:
        raise InvalidArgument(f"{where}: input holds no examples")
    arr = np.empty(len(out), dtype=object)
    arr[:] = out
    return arr


EXAMPLE_INPUTS = "inputs"


def example_input_key(spec: SignatureSpec, method: str, where: str) -> str:
    """The input of a classify/regress signature: exactly one, named ``inputs``, DT_STRING (TF Serving's rule)."""
    if spec.method_name != method:
        raise FailedPrecondition(
            f"{where}: signature '{spec.name}' has method_name '{spec.method_name}', expected '{method}'"
        )
    if len(spec.inputs) != 1 or EXAMPLE_INPUTS not in spec.inputs:
        kind = method.rsplit("/", 1)[-1]
        raise FailedPrecondition(f"{where}: a {kind} signature needs exactly one input named '{EXAMPLE_INPUTS}'")
    if spec.inputs[EXAMPLE_INPUTS].dtype_enum != 7:  # DT_STRING
        raise FailedPrecondition(f"{where}: signature '{spec.name}' input '{EXAMPLE_INPUTS}' must be DT_STRING")
    return EXAMPLE_INPUTS


__all__ = [
    "CLASSIFY_METHOD", "DEFAULT_SIGNATURE", "PREDICT_METHOD", "REGRESS_METHOD", "Resources", "Servable",
    "SignatureSpec", "TensorSpec", "example_input_key", "examples_from_input",
]
