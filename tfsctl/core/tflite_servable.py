"""One loaded TensorFlow Lite version, run as TF Serving's TfLiteSession runs it: a pool of interpreters.

``--prefer_tflite_model`` makes the loader serve ``model.tflite`` from a version directory that has one (TF
Serving's rule, also when ``saved_model.pb`` is there). The version's SignatureDefs come from
:mod:`tfsctl.tflite_model`; the request core validates and decodes against them exactly as for a SavedModel
(:class:`TfLiteServable` is a :class:`~tfsctl.core.servable.Servable`), so gRPC, REST, warmup and ``--enable_batching``
reach TFLite models through the same path.

The pool (``tflite_interpreter_pool.cc``): ``--num_tflite_pools`` interpreters (at least one), each with one
thread, built from the same model bytes. A request takes a free interpreter, waiting while all are busy; LiteRT
releases the GIL while it invokes, so requests on different interpreters run in parallel. An input whose shape
differs from the interpreter's resizes it (and reallocates) first, as ``SetInputAndInvokeMiniBatch`` does.

``--num_tflite_interpreters_per_pool`` > 1 turns on TfLiteSession's own batching: requests that wait for an
interpreter are merged along dimension 0 and run as one invocation by whichever request gets an interpreter (TF
Serving's scheduler has a zero batch timeout, so it only merges what is already queued), up to
``ceil(500 / num_tflite_interpreters_per_pool)`` rows, or the model's fixed batch size when it has one. A batch
that fails fails each of its requests with the same error.

Errors: an input shape the model cannot take (resize or allocation fails) is INVALID_ARGUMENT; a failed invoke is
INTERNAL "Failed to invoke TfLite interpreter", as in TF Serving. An interpreter that failed is replaced by a fresh
one, so no request leaves the pool in a broken state.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tfsctl.core.servable import Servable, SignatureSpec, capped_message, capped_names
from tfsctl.errors import FailedPrecondition, Internal, InvalidArgument, ServingError
from tfsctl.tflite_model import LiteSignature, new_interpreter

INITIAL_BATCH_SIZE = 500  # TF Serving's kInitialBatchSize: the most rows its TFLite scheduler merges


def max_batch_rows(interpreters_per_pool: int, model_batch_size: int = -1) -> int:
    """TfLiteSession::Create's ``max_execution_batch_size``: 0 (no merging) unless ``interpreters_per_pool`` > 1."""
    if interpreters_per_pool <= 1:
        return 0
    if model_batch_size > 1:
        return model_batch_size
    return (INITIAL_BATCH_SIZE + interpreters_per_pool - 1) // interpreters_per_pool


class _Interpreter:
    """One interpreter, its signature runners (built once each) and its input shapes (the primary subgraph's)."""

    def __init__(self, content: bytes) -> None:
        self.content = content
        self.reset()

    def reset(self) -> None:
        """A fresh interpreter: after a failure the old one may be left half-resized."""
        self.interpreter: Any = None
        self.interpreter = new_interpreter(self.content, num_threads=1)
        self._runners: dict[str, Any] = {}
        self._shapes = {d["index"]: tuple(int(x) for x in d["shape"]) for d in self.interpreter.get_input_details()}

    def run(self, sig: LiteSignature, feeds: dict[str, np.ndarray], aliases: Sequence[str]) -> dict[str, np.ndarray]:
        """Invoke ``sig`` on ``feeds``; ValueError for a shape the model cannot take, RuntimeError for a failed
        invoke."""
        it = self.interpreter
        if it is None:
            raise RuntimeError("the interpreter could not be rebuilt after an earlier failure")
        if sig.runner is not None:
            runner = self._runners.get(sig.runner)
            if runner is None:
                runner = self._runners[sig.runner] = it.get_signature_runner(sig.runner)
            try:
                out = runner(**feeds)
            except (ValueError, RuntimeError) as e:
                if "invoke" in str(e).lower():
                    raise RuntimeError(str(e)) from None
                raise ValueError(str(e)) from None
            return {a: out[a] for a in aliases}
        resized = False
        for key, arr in feeds.items():
            index = sig.inputs[key]
            if self._shapes.get(index) != arr.shape:
                try:
                    it.resize_tensor_input(index, list(arr.shape))
                except (ValueError, RuntimeError) as e:
                    raise ValueError(f"Failed to resize input tensor {key} to {list(arr.shape)}: {e}") from None
                self._shapes[index] = arr.shape
                resized = True
        if resized:
            try:
                it.allocate_tensors()
            except (ValueError, RuntimeError) as e:
                raise ValueError(f"Failed to allocate tensors: {e}") from None
        try:
            for key, arr in feeds.items():
                it.set_tensor(sig.inputs[key], arr)
        except ValueError as e:
            raise ValueError(" ".join(str(e).split())) from None
        it.invoke()
        return {a: it.get_tensor(sig.outputs[a]) for a in aliases}


class _Task:
    """A request waiting in the pool: its feeds, then its outputs or error."""

    __slots__ = ("sig", "aliases", "feeds", "rows", "key", "outputs", "error", "done")

    def __init__(self, sig: LiteSignature, aliases: tuple[str, ...], feeds: dict[str, np.ndarray],
                 key: tuple | None) -> None:
        self.sig, self.aliases, self.feeds, self.key = sig, aliases, feeds, key
        self.rows = next(iter(feeds.values())).shape[0] if key is not None else 0
        self.outputs: dict[str, np.ndarray] | None = None
        self.error: BaseException | None = None
        self.done = False


class InterpreterPool:
    """``size`` interpreters over one model; ``batch_rows`` > 0 merges waiting requests (see the module docstring).

    Thread-safe. A request runs on an interpreter in its own thread: with merging, the request that gets a free
    interpreter runs the queued compatible requests with its own and hands each its rows.
    """

    def __init__(self, content: bytes, size: int, batch_rows: int = 0) -> None:
        self._content = content
        self.size = max(1, int(size))
        self.batch_rows = max(0, int(batch_rows))
        self._free = [_Interpreter(content) for _ in range(self.size)]
        self._cond = threading.Condition()
        self._queue: deque[_Task] = deque()
        self._closed = False
        self.busy_peak = 0  # most interpreters in use at once (what the pool size allowed; tests read it)
        self.batches = 0  # invocations that ran more than one request
        self._busy = 0

    def run(self, sig: LiteSignature, feeds: dict[str, np.ndarray], aliases: tuple[str, ...],
            batch_key: tuple | None = None) -> dict[str, np.ndarray]:
        """Run ``sig`` on an interpreter (waiting for one); ``batch_key`` marks requests that may be merged."""
        task = _Task(sig, aliases, feeds, batch_key if self.batch_rows else None)
        with self._cond:
            self._queue.append(task)
            while True:
                if task.done:
                    break
                if self._closed:
                    self._drop(task)
                    raise FailedPrecondition("the version has been unloaded")
                if self._free and self._queue and self._queue[0] is task:
                    worker = self._free.pop()
                    batch = self._take(task)
                    self._busy += 1
                    self.busy_peak = max(self.busy_peak, self._busy)
                    if self._free and self._queue:
                        self._cond.notify_all()  # the next request in line may take another interpreter
                    break
                self._cond.wait()
            if task.done:
                return self._result(task)
        try:
            self._execute(worker, batch)
        finally:
            with self._cond:
                self._busy -= 1
                if not self._closed:
                    self._free.append(worker)
                self._cond.notify_all()
        return self._result(task)

    def _drop(self, task: _Task) -> None:
        try:
            self._queue.remove(task)
        except ValueError:
            pass

    def _take(self, task: _Task) -> list[_Task]:
        """Pops ``task`` (the queue's head) and, when merging, the queued requests it can run with (same key)."""
        self._queue.popleft()
        batch = [task]
        if task.key is None or not self._queue:
            return batch
        rows = task.rows
        keep: deque[_Task] = deque()
        while self._queue:
            other = self._queue.popleft()
            if other.key == task.key and rows + other.rows <= self.batch_rows:
                batch.append(other)
                rows += other.rows
            else:
                keep.append(other)
        self._queue = keep
        return batch

    def _execute(self, worker: _Interpreter, batch: list[_Task]) -> None:
        head = batch[0]
        try:
            if len(batch) == 1:
                feeds = head.feeds
            else:
                feeds = {k: np.concatenate([t.feeds[k] for t in batch]) for k in head.feeds}
            outputs = worker.run(head.sig, feeds, head.aliases)
            if len(batch) > 1:
                self.batches += 1
                start = 0
                for t in batch:
                    t.outputs = {}
                    for a, arr in outputs.items():
                        if arr.ndim == 0 or arr.shape[0] != sum(x.rows for x in batch):
                            raise RuntimeError(f"output '{a}' has shape {list(arr.shape)}, which does not split "
                                               f"into the batch's {len(batch)} requests")
                        t.outputs[a] = arr[start:start + t.rows]
                    start += t.rows
            else:
                head.outputs = outputs
        except Exception as e:  # noqa: BLE001 - handed to every request of the batch
            for t in batch:
                t.error = e
            try:
                worker.reset()  # a failed interpreter may be left half-resized
            except Exception:  # noqa: BLE001 - it loaded once; the next run on it reports the failure
                worker.interpreter = None
        finally:
            with self._cond:
                for t in batch:
                    t.done = True

    @staticmethod
    def _result(task: _Task) -> dict[str, np.ndarray]:
        if task.error is not None:
            raise task.error
        assert task.outputs is not None
        return task.outputs

    def close(self) -> None:
        """Drop the interpreters; waiting and later requests fail with FailedPrecondition."""
        with self._cond:
            self._closed = True
            self._free = []
            self._cond.notify_all()


class TfLiteServable(Servable):
    """A loaded ``model.tflite``: its signatures as SignatureDefs, run on an :class:`InterpreterPool`."""

    def __init__(self, name: str, version: int, path: str | Path, signatures: Mapping[str, LiteSignature],
                 pool: InterpreterPool) -> None:
        super().__init__(name, version, path, {k: s.signature_def for k, s in signatures.items()}, session=None,
                         inline_short_steps=False)
        self._lite = dict(signatures)
        self._pool: InterpreterPool | None = pool

    def __repr__(self) -> str:
        return f"TfLiteServable({self.name!r}, version={self.version}, path='{self.path}')"

    @property
    def pool(self) -> InterpreterPool | None:
        return self._pool

    def runs_inline(self, signature_name: str, output_filter: Sequence[str] = (), *, under: float | None = None
                    ) -> bool:
        """Never: a request may wait for a free interpreter, which must not block the gRPC event loop."""
        return False

    def _aliases(self, spec: SignatureSpec, output_filter: tuple[str, ...]) -> tuple[str, ...]:
        if not output_filter:
            return tuple(spec.outputs)
        where = f"{self._where}, signature '{spec.name}'"
        seen: set[str] = set()
        for alias in output_filter:
            if alias not in spec.outputs:
                raise InvalidArgument(f"{where}: output tensor alias not found in signature: "
                                      f"{capped_names([alias], 1)} Outputs expected to be in the set "
                                      f"{{{capped_names(spec.outputs)}}}.")
            if alias in seen:
                raise InvalidArgument(f"{where}: duplicate output tensor alias: {capped_names([alias], 1)}")
            seen.add(alias)
        return output_filter

    def run(self, signature_name: str, inputs: Mapping[str, np.ndarray], output_filter: Sequence[str] = ()
            ) -> dict[str, np.ndarray]:
        """Check the inputs against the signature, run it on a pooled interpreter, return the asked outputs."""
        spec = self.validate(signature_name, inputs)
        aliases = self._aliases(spec, tuple(output_filter))
        sig = self._lite[spec.name]
        feeds = {}
        for key, arr in inputs.items():
            if arr.dtype.kind == "U":
                arr = np.char.encode(arr, "utf-8")
            elif arr.dtype.kind != "O":
                arr = np.ascontiguousarray(arr)
            feeds[key] = arr
        pool = self._pool
        if pool is None:
            raise FailedPrecondition(f"{self._where} has been unloaded")
        where = f"{self._where}, signature '{spec.name}'"
        try:
            return pool.run(sig, feeds, aliases, self._batch_key(spec, feeds, aliases))
        except ServingError as e:
            if isinstance(e, FailedPrecondition) and "unloaded" in e.message:
                raise FailedPrecondition(f"{self._where} has been unloaded") from None
            raise
        except ValueError as e:
            raise InvalidArgument(capped_message(f"{where}: the model cannot take these inputs: {e}")) from None
        except Exception as e:  # noqa: BLE001 - LiteRT raises RuntimeError for a failed invoke
            raise Internal(capped_message(f"{where}: Failed to invoke TfLite interpreter: {e}")) from None

    @staticmethod
    def _batch_key(spec: SignatureSpec, feeds: Mapping[str, np.ndarray], aliases: tuple[str, ...]) -> tuple | None:
        """What requests must share to be merged: signature, outputs and every input's dtype and inner shape, with
        one row count across inputs and a variable dimension 0 in the signature. None: never merged."""
        rows = None
        parts = []
        for key in sorted(feeds):
            arr = feeds[key]
            ts = spec.inputs[key]
            if arr.ndim == 0 or arr.dtype.kind == "O" or ts.shape is None or not ts.shape or ts.shape[0] != -1:
                return None
            if rows is None:
                rows = arr.shape[0]
            elif arr.shape[0] != rows:
                return None
            parts.append((key, arr.dtype.str, arr.shape[1:]))
        if not parts:
            return None
        return (spec.name, aliases, tuple(parts))

    def close(self) -> None:
        """Release the interpreters; later runs fail with FailedPrecondition."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()


def load_tflite(name: str, version: int, path: str | Path, content: bytes, *, num_pools: int = 1,
                interpreters_per_pool: int = 1, signature_runners: bool = False) -> TfLiteServable:
    """The version at ``path`` from its ``model.tflite`` bytes; TfLiteModelError when the model cannot run here.
    ``signature_runners``: serve its LiteRT signatures by name (``--tflite_signature_runners``, tfsctl's own)."""
    from tfsctl.tflite_model import read_signatures

    first = _Interpreter(content)
    signatures = read_signatures(content, first.interpreter, signature_runners)
    inputs = first.interpreter.get_input_details()
    model_batch = int(inputs[0]["shape_signature"][0]) if len(inputs) == 1 and len(inputs[0]["shape"]) else -1
    pool = InterpreterPool(content, num_pools, max_batch_rows(interpreters_per_pool, model_batch))
    return TfLiteServable(name, version, path, signatures, pool)


__all__ = ["INITIAL_BATCH_SIZE", "InterpreterPool", "TfLiteServable", "load_tflite", "max_batch_rows"]
