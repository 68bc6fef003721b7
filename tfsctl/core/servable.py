"""One loaded SavedModel version, run as TF Serving's SavedModelBundle runs it: a session over the meta graph.

``run`` follows TF Serving's ``predict_util``: the request's input keys must match the signature (missing inputs
may come from the signature's ``defaults``), dtypes must match, and shapes are left to the graph — a session
callable built from ``CallableOptions`` does not check feed shapes against the placeholders (Python's
``Session.run`` would), exactly like the C++ ``Session::Run`` TF Serving calls. Callables are built once per
(signature, output list) and cached; calling one costs tens of microseconds, with no Python lock around it.
TF runtime errors keep their TF status code, as TF Serving returns ``Session::Run``'s status.

Short steps run in the caller's thread. A session step normally goes through TF's inter-op thread pool: the
caller hands the step over and sleeps until a pool thread finishes it. For a step of a few microseconds (a small
model) that hand-over costs more than the step itself (toy model: 7 µs in the caller's thread against 25 µs through
the pool, and a third of the server's CPU per request). So each callable measures its steps in windows of 8: once
a window's median is under :data:`INLINE_STEP_S`, later calls run in the caller's thread
(``RunOptions.inter_op_thread_pool = -1``); once every step of a window takes longer than :data:`POOLED_STEP_S`
(bigger batches), calls go back to the pool, where independent ops run in parallel. (Every step, not the median: on
a busy machine a 7 µs step often takes milliseconds of wall time to get its thread and the GIL back, but a step
that is really long is long every time.)
Results are the same either way; intra-op parallelism is unaffected. A session config that sets the inter-op
threads or pools explicitly turns this off (``inline_short_steps=False``): the user's choice stands.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from tensorflow.core.protobuf import meta_graph_pb2

from tfsctl.core import deadlines
from tfsctl.core.examples import examples_from_input
from tfsctl.errors import (
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    ServingError,
    Unavailable,
    Unimplemented,
    Unknown,
)
from tfsctl.savedmodel import CLASSIFY_METHOD, DEFAULT_SIGNATURE, INIT_OP_SIGNATURE, PREDICT_METHOD, REGRESS_METHOD
from tfsctl.tensors import NP_BY_DTYPE, dtype_name, shape_of, to_numpy

# Error messages list at most this many names (an input map of 100k keys must not make a 1 MB message).
MAX_NAMES_IN_MESSAGE = 5
MAX_NAME_CHARS = 64
MAX_MESSAGE_CHARS = 4096
# Distinct output lists a version keeps callables for; further ones are built per call and released.
MAX_CACHED_CALLABLES = 256


def capped_names(names: Iterable[str], limit: int = MAX_NAMES_IN_MESSAGE) -> str:
    """``a,b,c`` for a few names; ``a,b,c,d,e and 99995 more`` for many; long names cut."""
    items = sorted(names)
    shown = [n if len(n) <= MAX_NAME_CHARS else n[: MAX_NAME_CHARS - 3] + "..." for n in items[:limit]]
    text = ",".join(shown)
    return text + (f" and {len(items) - limit} more" if len(items) > limit else "")


def capped_message(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """One line, at most ``limit`` characters (gRPC status messages travel in metadata)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class TensorSpec:
    """What a signature says of one tensor: numpy dtype, DataType enum, shape (-1 = any; None = any rank)."""

    key: str
    dtype: np.dtype
    dtype_enum: int
    shape: tuple[int, ...] | None
    tensor_name: str = ""

    def describe(self) -> str:
        dims = "?" if self.shape is None else "[" + ", ".join("?" if d < 0 else str(d) for d in self.shape) + "]"
        return f"{dtype_name(self.dtype_enum)} {dims}"


@dataclass(frozen=True)
class SignatureSpec:
    """A signature as the request path needs it, computed once at load time."""

    name: str
    method_name: str
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    defaults: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class Resources:
    """Resource use of one version: bytes on disk and the growth of process RSS measured around the load."""

    disk_bytes: int = 0
    ram_bytes: int = 0
    load_seconds: float = 0.0


# Steps whose median is under this run in the caller's thread; when all of a window's steps take longer than
# POOLED_STEP_S, they go back to the pool.
INLINE_STEP_S = 0.001
POOLED_STEP_S = 0.004
_STEP_SAMPLES = 8  # steps per decision window (after the first step, which builds the executor)


class _Runner:
    """One session callable for a (signature, outputs) pair; with ``make_inline``, it picks where steps run (see
    the module docstring). The bookkeeping is unlocked: a race only loses a sample, never a result."""

    __slots__ = ("fn", "feed_keys", "aliases", "inline", "step_seconds", "_make_inline", "_calls", "_pooled",
                 "_samples", "_timed")

    def __init__(self, fn: Callable[..., list], feed_keys: tuple[str, ...], aliases: tuple[str, ...],
                 make_inline: Callable[[], Callable[..., list]] | None = None,
                 timed: Callable[..., list] | None = None) -> None:
        self.fn = fn
        self._timed = timed
        self.feed_keys = feed_keys
        self.aliases = aliases
        self.inline = False
        # The shortest step of the last window: what a step costs undisturbed (inf until a window is complete).
        self.step_seconds = float("inf")
        self._make_inline = make_inline
        self._calls = 0
        self._samples: list[float] = []
        self._pooled = fn

    def __call__(self, *feeds: Any, timeout_ms: int | None = None) -> list:
        """One step; with ``timeout_ms`` (a client's deadline) TensorFlow cancels it once that has passed, unless
        steps run in the caller's thread (measured under 1 ms: the deadline was checked just before)."""
        if timeout_ms is not None and self._timed is not None and not self.inline:
            start = time.perf_counter()
            values = self._timed(timeout_ms, *feeds)
            if self._make_inline is not None:
                self._observe(time.perf_counter() - start)
            return values
        if self._make_inline is None:
            return self.fn(*feeds)
        fn = self.fn
        start = time.perf_counter()
        values = fn(*feeds)
        self._observe(time.perf_counter() - start)
        return values

    def _observe(self, seconds: float) -> None:
        self._calls += 1
        if self._calls == 1:
            return  # the first step builds the executor: not a step time
        samples = self._samples
        samples.append(seconds)
        if len(samples) < _STEP_SAMPLES:
            return
        # Order statistics over a window, not a mean: steps preempted on a busy machine must not count.
        ordered = sorted(samples)
        self._samples = []
        self.step_seconds = ordered[0]
        if not self.inline and ordered[len(ordered) // 2] < INLINE_STEP_S:
            try:
                inline_fn = self._make_inline()  # type: ignore[misc]  # not None while adapting
            except Exception:  # noqa: BLE001 - e.g. unloaded meanwhile: keep the pool, stop adapting
                self._make_inline = None
                return
            self.fn, self.inline, self._calls, self.step_seconds = inline_fn, True, 1, float("inf")
        elif self.inline and ordered[0] > POOLED_STEP_S:
            self.fn, self.inline, self._calls, self.step_seconds = self._pooled, False, 1, float("inf")


def _names_every_output(spec: SignatureSpec, asked: tuple[str, ...]) -> bool:
    """An output filter naming every output is served by the "all outputs" callable (and executor) that warmup
    built, as TF's session caches executors by the sorted fetch names; a new one would cost a second on DeepLab."""
    return bool(asked) and len(asked) == len(spec.outputs) and set(asked) == set(spec.outputs)


def _spec(key: str, info: meta_graph_pb2.TensorInfo) -> TensorSpec:
    return TensorSpec(key, NP_BY_DTYPE.get(info.dtype, np.dtype(object)), info.dtype, shape_of(info.tensor_shape),
                      info.name)


def signature_spec(name: str, sig: meta_graph_pb2.SignatureDef) -> SignatureSpec:
    """The precomputed spec of a SignatureDef (defaults decoded once)."""
    defaults = {}
    for key, proto in getattr(sig, "defaults", {}).items():
        try:
            defaults[key] = to_numpy(proto, key)
        except InvalidArgument:
            continue  # an unusable default is as good as none: the input is then required
    return SignatureSpec(
        name=name,
        method_name=sig.method_name,
        inputs={k: _spec(k, v) for k, v in sig.inputs.items()},
        outputs={k: _spec(k, v) for k, v in sig.outputs.items()},
        defaults=defaults,
    )


_ERROR_BY_CODE: dict[int, type[ServingError]] = {
    grpc.StatusCode.CANCELLED.value[0]: Cancelled,
    grpc.StatusCode.DEADLINE_EXCEEDED.value[0]: DeadlineExceeded,
    grpc.StatusCode.INVALID_ARGUMENT.value[0]: InvalidArgument,
    grpc.StatusCode.FAILED_PRECONDITION.value[0]: FailedPrecondition,
    grpc.StatusCode.NOT_FOUND.value[0]: NotFound,
    grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE.value[0]: Unavailable,
    grpc.StatusCode.UNIMPLEMENTED.value[0]: Unimplemented,
    grpc.StatusCode.UNKNOWN.value[0]: Unknown,
    grpc.StatusCode.INTERNAL.value[0]: Internal,
}
_GRPC_BY_CODE = {c.value[0]: c for c in grpc.StatusCode}


def serving_error(code: int, message: str) -> ServingError:
    """A ServingError carrying TF status ``code`` (TF's codes are gRPC's)."""
    cls = _ERROR_BY_CODE.get(code)
    if cls is not None:
        return cls(message)
    err = ServingError(message)
    err.grpc_code = _GRPC_BY_CODE.get(code, grpc.StatusCode.UNKNOWN)
    return err


def tf_error_text(message: str) -> str:
    """A TF runtime error message without the graph-execution boilerplate, on one line."""
    skip = ("Graph execution error", "Detected at node", "<stack traces unavailable>")
    lines = [ln.strip() for ln in message.splitlines() if ln.strip() and not ln.strip().startswith(skip)]
    return " ".join(lines) or message.strip()


class Servable:
    """A loaded model version; ``run`` may be called from many threads at once.

    ``session`` is the ``tf.compat.v1.Session`` holding the version's graph (None for a servable without one);
    :meth:`close` closes it.
    """

    def __init__(
        self,
        name: str,
        version: int,
        path: str | Path,
        signature_defs: Mapping[str, meta_graph_pb2.SignatureDef],
        session: Any = None,
        resources: Resources | None = None,
        *,
        inline_short_steps: bool = True,
    ) -> None:
        self.name = name
        self.version = int(version)
        self.path = Path(path)
        self.signature_defs: dict[str, meta_graph_pb2.SignatureDef] = dict(signature_defs)
        self.resources = resources or Resources()
        self.warmup_records = 0
        self._session = session
        self.inline_short_steps = inline_short_steps
        self._lock = threading.Lock()  # guards building callables and closing, never a run
        self._runners: dict[tuple[str, tuple[str, ...]], _Runner] = {}
        self._specs: dict[str, SignatureSpec] = {k: signature_spec(k, v) for k, v in self.signature_defs.items()}
        self._where = f"model '{name}' version {self.version}"

    # --- introspection ---

    def __repr__(self) -> str:
        return f"Servable({self.name!r}, version={self.version}, path='{self.path}')"

    @property
    def session(self) -> Any:
        return self._session

    def resolve_signature(self, signature_name: str) -> str:
        """``""`` means ``serving_default``; unknown names raise FailedPrecondition (TF Serving's Predict code)."""
        name = signature_name or DEFAULT_SIGNATURE
        if name not in self._specs:
            known = capped_names(k for k in self._specs if k != INIT_OP_SIGNATURE) or "none"
            raise FailedPrecondition(
                f"{self._where}: Serving signature key \"{name}\" not found. (signatures: {known})"
            )
        return name

    def has_signature(self, signature_name: str) -> bool:
        return (signature_name or DEFAULT_SIGNATURE) in self._specs

    def signature(self, signature_name: str) -> SignatureSpec:
        """Precomputed spec of a signature (``""`` = serving_default); FailedPrecondition if unknown."""
        spec = self._specs.get(signature_name or DEFAULT_SIGNATURE)
        return spec if spec is not None else self._specs[self.resolve_signature(signature_name)]

    def method_name(self, signature_name: str) -> str:
        """``tensorflow/serving/predict|classify|regress`` of a signature; FailedPrecondition if unknown."""
        return self.signature(signature_name).method_name or PREDICT_METHOD

    # --- request path ---

    def check_input_keys(self, spec: SignatureSpec, keys: Any) -> None:
        """predict_util's key check: no extra input, none missing unless the signature has a default for it."""
        expected = spec.inputs
        if not isinstance(keys, (set, frozenset, type({}.keys()))):
            keys = set(keys)  # a protobuf map's keys
        if keys == expected.keys():
            return
        extra = keys - expected.keys()
        missing = expected.keys() - keys - spec.defaults.keys()
        if extra or missing:
            raise InvalidArgument(
                f"{self._where}, signature '{spec.name}': input size does not match signature: "
                f"{len(keys)}!={len(expected)} len({{{capped_names(keys)}}}) != "
                f"len({{{capped_names(expected)}}}). Sent extra: {{{capped_names(extra)}}}. "
                f"Missing but required: {{{capped_names(missing)}}}."
            )

    def validate(self, signature_name: str, inputs: Mapping[str, Any]) -> SignatureSpec:
        """predict_util's checks: input keys match the signature (defaults fill gaps), dtypes match."""
        spec = self.signature(signature_name)
        expected = spec.inputs
        self.check_input_keys(spec, inputs.keys())
        for key, arr in inputs.items():
            ts = expected[key]
            kind = getattr(arr, "dtype", None)
            if kind is None:
                raise InvalidArgument(f"{self._where}, signature '{spec.name}': input '{key}' must be an array, "
                                      f"got {type(arr).__name__}")
            if ts.dtype.kind == "O":
                if arr.dtype.kind not in "OSU":
                    raise InvalidArgument(f"{self._where}, signature '{spec.name}': input '{key}' expects "
                                          f"{dtype_name(ts.dtype_enum)} but got {arr.dtype.name}")
            elif arr.dtype != ts.dtype:
                got = arr.dtype.name if arr.dtype.kind not in "OSU" else "string"
                raise InvalidArgument(f"{self._where}, signature '{spec.name}': input '{key}' expects "
                                      f"{dtype_name(ts.dtype_enum)} ({ts.dtype.name}) but got {got}")
        return spec

    def _runner(self, spec: SignatureSpec, output_filter: tuple[str, ...]) -> _Runner:
        key = (spec.name, output_filter)
        runner = self._runners.get(key)
        if runner is not None:
            return runner
        where = f"{self._where}, signature '{spec.name}'"
        if output_filter:
            seen: set[str] = set()
            for alias in output_filter:
                if alias not in spec.outputs:
                    raise InvalidArgument(
                        f"{where}: output tensor alias not found in signature: {capped_names([alias], 1)} "
                        f"Outputs expected to be in the set {{{capped_names(spec.outputs)}}}."
                    )
                if alias in seen:
                    raise InvalidArgument(f"{where}: duplicate output tensor alias: {capped_names([alias], 1)}")
                seen.add(alias)
            aliases = output_filter
        else:
            aliases = tuple(spec.outputs)
        from tensorflow.core.protobuf import config_pb2

        feed_keys = tuple(spec.inputs)
        options = config_pb2.CallableOptions()
        options.feed.extend(spec.inputs[k].tensor_name for k in feed_keys)
        options.fetch.extend(spec.outputs[a].tensor_name for a in aliases)
        with self._lock:
            runner = self._runners.get(key)
            if runner is not None:
                return runner
            if self._session is None:
                raise FailedPrecondition(f"{self._where} has been unloaded")
            try:
                fn = self._session._make_callable_from_options(options)
            except Exception as e:  # noqa: BLE001 - a signature naming tensors the graph lacks
                raise FailedPrecondition(f"{where}: the signature cannot be run: {capped_message(str(e), 500)}"
                                         ) from None
            runner = _Runner(fn, feed_keys, aliases, self._inline_maker(options) if self.inline_short_steps else None,
                             self._timed_run(options))
            if len(self._runners) < MAX_CACHED_CALLABLES:
                self._runners[key] = runner
        return runner

    def runs_inline(self, signature_name: str, output_filter: Sequence[str] = (), *, under: float | None = None
                    ) -> bool:
        """Whether this signature's steps (with these outputs) are measured short and run in the caller's
        thread: a request for them takes microseconds of TF time (and, with ``under``, a step, measured in the
        caller's thread, can take less than that)."""
        name = signature_name or DEFAULT_SIGNATURE
        spec = self._specs.get(name)
        if spec is None:
            return False
        asked = tuple(output_filter)
        runner = self._runners.get((name, () if _names_every_output(spec, asked) else asked))
        return runner is not None and runner.inline and (under is None or runner.step_seconds < under)

    def _inline_maker(self, options: Any) -> Callable[[], Callable[..., list]]:
        """Builds the same callable with its steps in the caller's thread (``inter_op_thread_pool = -1``)."""
        def make() -> Callable[..., list]:
            inline = type(options)()
            inline.CopyFrom(options)
            inline.run_options.inter_op_thread_pool = -1
            with self._lock:
                if self._session is None:
                    raise FailedPrecondition(f"{self._where} has been unloaded")
                return self._session._make_callable_from_options(inline)
        return make

    def _timed_run(self, options: Any) -> Callable[..., list]:
        """The step of ``options`` as a session run with ``RunOptions.timeout_in_ms`` (a client's deadline):
        session callables fix their RunOptions when made, and each new one builds its own executor (0.7 s on a
        ResNet50), while a plain session run keeps one executor for these feeds and fetches whatever the timeout.
        Called below ``Session.run``'s Python checks, as the callables are (shapes are the graph's to check)."""
        from tensorflow.core.protobuf import config_pb2
        from tensorflow.python.client import pywrap_tf_session as tf_session

        session = self._session
        graph = session.graph
        feeds = [graph.get_tensor_by_name(n)._as_tf_output() for n in options.feed]
        fetches = [graph.get_tensor_by_name(n)._as_tf_output() for n in options.fetch]

        def run(timeout_ms: int, *values: Any) -> list:
            session = self._session
            if session is None:
                raise FailedPrecondition(f"{self._where} has been unloaded")
            run_options = config_pb2.RunOptions(timeout_in_ms=timeout_ms).SerializeToString()
            buffer = tf_session.TF_NewBufferFromString(run_options)
            try:
                return session._call_tf_sessionrun(buffer, dict(zip(feeds, values, strict=True)), fetches, [], None)
            finally:
                tf_session.TF_DeleteBuffer(buffer)
        return run

    def run(
        self, signature_name: str, inputs: Mapping[str, np.ndarray], output_filter: Sequence[str] = ()
    ) -> dict[str, np.ndarray]:
        """Check, run the signature, return the requested outputs (all when ``output_filter`` is empty)."""
        spec = self.validate(signature_name, inputs)
        asked = tuple(output_filter)
        every = _names_every_output(spec, asked)
        runner = self._runner(spec, () if every else asked)
        feeds = []
        for key in runner.feed_keys:
            arr = inputs.get(key)
            if arr is None:
                arr = spec.defaults[key]
            elif arr.dtype.kind in "SU":
                arr = _as_bytes_objects(arr)
            feeds.append(arr)
        if self._session is None:
            raise FailedPrecondition(f"{self._where} has been unloaded")
        timeout_ms = None
        deadline = deadlines.current()
        if deadline is not None:  # the client's deadline: not run once it has gone, else the step's timeout
            deadline.check(f"{self._where}, signature '{spec.name}'")
            timeout_ms = deadline.timeout_ms()
        try:
            values = runner(*feeds, timeout_ms=timeout_ms)
        except ServingError:
            raise
        except UnicodeDecodeError as e:
            # TF's message quoted the client's non-UTF-8 bytes; the client sent them, so it is theirs to fix.
            text = e.object.decode("utf-8", "replace") if isinstance(e.object, bytes) else str(e)
            raise InvalidArgument(capped_message(f"{self._where}, signature '{spec.name}': {tf_error_text(text)}")
                                  ) from None
        except Exception as e:  # noqa: BLE001
            raise self._error(spec, e) from None
        outputs = dict(zip(runner.aliases, values, strict=True))
        return {k: outputs[k] for k in asked} if every else outputs

    def _error(self, spec: SignatureSpec, e: Exception) -> ServingError:
        where = f"{self._where}, signature '{spec.name}'"
        code = getattr(e, "error_code", None)
        if isinstance(code, int):  # tf.errors.OpError: keep TF's status code, as TF Serving does
            return serving_error(code, capped_message(f"{where}: {tf_error_text(getattr(e, 'message', str(e)))}"))
        if isinstance(e, (TypeError, ValueError)):  # numpy/TF could not convert a feed
            return InvalidArgument(capped_message(f"{where}: cannot feed the inputs: {e}"))
        if self._session is None or isinstance(e, RuntimeError) and "closed" in str(e).lower():
            return FailedPrecondition(f"{self._where} has been unloaded")
        return Internal(capped_message(f"{where}: execution failed: {type(e).__name__}: {e}"))

    # --- lifecycle ---

    def close(self) -> None:
        """Release the callables and close the session so its memory can be freed; later runs fail cleanly."""
        with self._lock:
            session, self._session = self._session, None
            self._runners = {}
        if session is not None:
            try:
                session.close()
            except Exception:  # noqa: BLE001 - closing twice or a dead session: nothing left to free
                pass


def _as_bytes_objects(arr: np.ndarray) -> np.ndarray:
    if arr.dtype.kind == "U":
        arr = np.char.encode(arr, "utf-8")
    return arr.astype(object)


__all__ = [
    "CLASSIFY_METHOD", "DEFAULT_SIGNATURE", "PREDICT_METHOD", "REGRESS_METHOD", "Resources", "Servable",
    "SignatureSpec", "TensorSpec", "capped_message", "capped_names", "examples_from_input", "serving_error",
    "signature_spec", "tf_error_text",
]
