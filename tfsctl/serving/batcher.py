"""Server-side dynamic batching, after TF Serving's SharedBatchScheduler + BatchingSession.

Why: one model call on a batch of N costs far less than N calls of one, so concurrent requests of compatible shape
are merged along dimension 0, run once, and the outputs are split back to each caller.

Semantics (TF Serving's, with its defaults; the knobs and their checks are :class:`tfsctl.core.config.BatchOptions`):

- One queue per (servable, signature, output filter, non-batch dims and dtype of every input). Each queue holds a
  list of batches; the last one is open. A request joins the open batch, or closes it and opens a new one when it
  does not fit. A batch runs when a batch thread is free and it is closed, or full, or its first request has waited
  ``batch_timeout_micros`` (0: as soon as a thread is free; batches then grow under load by themselves).
- ``num_batch_threads`` threads run batches, shared by every queue.
- ``max_batch_size`` bounds a request: a bigger one is refused with INVALID_ARGUMENT ("Task size N is larger than
  maximum input batch size M"), as TF Serving. With ``enable_large_batch_splitting`` such a request (up to
  ``max_batch_size``) is split instead: its first part fills what is left of the open batch, the rest goes in chunks of
  ``max_execution_batch_size``, and the outputs are concatenated again.
- At most ``max_enqueued_batches`` batches wait per queue; a request that does not fit is refused at once with
  UNAVAILABLE (HTTP 503), as TF Serving's batch scheduler, instead of growing without bound.
- ``allowed_batch_sizes``: a batch is padded up to the next allowed size by repeating its last row; the padding rows
  are dropped from the outputs.
- ``pad_variable_length_inputs``: requests whose inputs differ only in dimensions the signature declares variable
  (``-1``) share a queue; each input is zero-padded (``b""`` for strings) to the largest size in the batch. As in
  TF Serving, outputs are only split along dimension 0, never cropped.
- Each request is validated against the signature before it is queued. A batch error reaches every request in it,
  as in TF Serving; with ``isolate_failures`` (``--batching_isolate_failures``) a batch of several requests that
  fails with INVALID_ARGUMENT is run again request by request, so only the bad one gets the error.
- Requests that cannot be batched (scalar inputs, inputs whose dimension 0 differs, a signature whose dimension 0 is
  fixed, an empty batch) run directly, unbatched.

One tfsctl addition, so batching does not tax a lone request: a request that arrives when the batcher is idle
(nothing queued or running, so every batch thread is free), right after two requests that also found it idle, runs at
once in the caller's thread as a batch of its own (padding and metrics as any batch) instead of waiting out
``batch_timeout_micros`` for partners that the traffic shows are not coming. Any overlap between requests switches
back to TF Serving's waiting, so batches still form under concurrent load.

Per-model batching (``per_model=True``, ``--enable_per_model_batching_parameters``): each version directory's
``batching_params.pbtxt`` gives that model's queue options (the thread pool stays global); a model without the file
is not batched, as TF Serving.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from tfsctl.core.config import BatchOptions, load_model_batching_parameters
from tfsctl.errors import (
    ConfigError,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    ServingError,
    Unavailable,
)
from tfsctl.savedmodel import DEFAULT_SIGNATURE

log = logging.getLogger(__name__)

__all__ = ["BatchOptions", "Batcher", "BatchableServable"]

# Consecutive requests that found the batcher idle, this one included, before a lone request runs at once (see the
# module docstring): the first two after any overlap still wait for partners, as TF Serving's batcher always does.
_IDLE_STREAK_TO_RUN_ALONE = 3


class BatchableServable(Protocol):
    """What the batcher needs from a loaded version (``tfsctl.core.servable.Servable`` fits)."""

    name: str
    version: int
    signature_defs: dict[str, Any]

    def run(
        self, signature_name: str, inputs: dict[str, np.ndarray], output_filter: Sequence[str] = ()
    ) -> dict[str, np.ndarray]: ...


@dataclass
class _Task:
    inputs: dict[str, np.ndarray]
    size: int
    enqueued: float
    future: Future = field(default_factory=Future)


@dataclass
class _Batch:
    tasks: list[_Task] = field(default_factory=list)
    size: int = 0
    started: float = 0.0  # when its first task arrived


@dataclass
class _Queue:
    key: tuple
    servable: Any
    signature_name: str
    output_filter: tuple[str, ...]
    options: BatchOptions
    batches: deque[_Batch] = field(default_factory=deque)  # the last one is open
    pending: int = 0  # examples queued, not yet taken by a batch thread

    def ready(self, now: float, stopping: bool) -> bool:
        if not self.batches:
            return False
        if len(self.batches) > 1 or stopping:
            return True
        head = self.batches[0]
        return (head.size >= self.options.execution_batch_size
                or now - head.started >= self.options.batch_timeout_micros / 1e6)


class Batcher:
    """Merges compatible concurrent ``run`` calls into batches; same contract as ``Servable.run``.

    ``params``: TF Serving's ``BatchingParameters`` message, a ``BatchOptions``, or None (TF Serving's defaults).
    ``per_model``: read each version's ``batching_params.pbtxt`` (``--enable_per_model_batching_parameters``).
    """

    def __init__(self, params: Any = None, metrics: Any = None, *, per_model: bool = False,
                 isolate_failures: bool = False) -> None:
        """``isolate_failures`` (tfsctl's opt-in): a batch that fails with INVALID_ARGUMENT is rerun request by
        request, so only the bad request fails; TF Serving (the default) fails every request of the batch."""
        self.isolate_failures = isolate_failures
        self.options = BatchOptions.from_params(params)
        self.metrics = metrics
        self.per_model = per_model
        self._cond = threading.Condition(threading.Lock())
        self._queues: dict[tuple, _Queue] = {}
        self._model_options: weakref.WeakKeyDictionary[Any, BatchOptions | None] = weakref.WeakKeyDictionary()
        self._dims: weakref.WeakKeyDictionary[Any, dict] = weakref.WeakKeyDictionary()
        self._stopping = False
        self._in_flight = 0  # batched requests queued or running (lone ones included)
        self._idle_streak = 0  # consecutive arrivals that found nothing in flight
        self._threads = [
            threading.Thread(target=self._worker, name=f"{self.options.thread_pool_name}-{i}", daemon=True)
            for i in range(self.options.num_batch_threads)
        ]
        for t in self._threads:
            t.start()

    # --- caller side ---

    def run(
        self,
        servable: BatchableServable,
        signature_name: str,
        inputs: dict[str, np.ndarray],
        output_filter: Sequence[str] = (),
    ) -> dict[str, np.ndarray]:
        """Run ``inputs`` on ``servable`` as part of a batch; blocks until this request's outputs are ready."""
        signature_name = signature_name or DEFAULT_SIGNATURE
        output_filter = tuple(output_filter)
        opts = self._options_for(servable)
        plan = None if opts is None else self._plan(servable, signature_name, inputs, output_filter, opts)
        if plan is None:
            if self._stopping:
                raise Unavailable("server is shutting down: batcher stopped")
            return servable.run(signature_name, inputs, output_filter)
        assert opts is not None
        key, size = plan
        if size > opts.max_batch_size:  # TF Serving's check, before anything is queued
            raise InvalidArgument(f"{_where(servable, signature_name)}: Task size {size} is larger than maximum "
                                  f"input batch size {opts.max_batch_size} (max_batch_size); send smaller requests"
                                  + ("" if opts.enable_large_batch_splitting
                                     else " or enable enable_large_batch_splitting"))
        with self._cond:
            if self._stopping:
                raise Unavailable("server is shutting down: batcher stopped")
            idle = self._in_flight == 0
            self._idle_streak = self._idle_streak + 1 if idle else 0
            alone = idle and self._idle_streak >= _IDLE_STREAK_TO_RUN_ALONE and size <= opts.execution_batch_size
            if alone:
                self._in_flight += 1
        if alone:
            try:
                return self._run_alone(servable, signature_name, inputs, output_filter, opts, key, size)
            finally:
                with self._cond:
                    self._in_flight -= 1
        validate = getattr(servable, "validate", None)
        if validate is not None:
            validate(signature_name, inputs)
        tasks = self._enqueue(servable, signature_name, inputs, output_filter, opts, key, size)
        try:
            parts = [t.future.result() for t in tasks]
        finally:
            # Every part of a split request is in flight until it ran, even after another part failed: the
            # count must not drop while parts still sit in a queue (the lone-request path reads it as "idle").
            futures_wait([t.future for t in tasks])
            with self._cond:
                self._in_flight -= len(tasks)
        if len(parts) == 1:
            return parts[0]
        return {k: np.concatenate([p[k] for p in parts], axis=0) for k in parts[0]}

    def _options_for(self, servable: Any) -> BatchOptions | None:
        """Queue options for ``servable``: the global ones, or (per-model) its version's file; None = unbatched."""
        if not self.per_model:
            return self.options
        try:
            return self._model_options[servable]
        except (KeyError, TypeError):
            pass
        path = getattr(servable, "path", None)
        try:
            params = load_model_batching_parameters(path) if path is not None else None
            opts = None if params is None else BatchOptions.from_params(params, base=self.options)
        except ConfigError as e:
            raise FailedPrecondition(f"model '{servable.name}' version {servable.version}: bad per-model batching "
                                     f"parameters: {e}") from None
        try:
            self._model_options[servable] = opts
        except TypeError:  # not weak-referenceable: read the file each time
            pass
        return opts

    def _enqueue(self, servable: Any, signature_name: str, inputs: dict[str, np.ndarray], output_filter: tuple,
                 opts: BatchOptions, key: tuple, size: int) -> list[_Task]:
        now = time.monotonic()
        limit = opts.execution_batch_size
        with self._cond:
            if self._stopping:
                raise Unavailable("server is shutting down: batcher stopped")
            queue = self._queues.get(key)
            if queue is None:
                queue = _Queue(key, servable, signature_name, output_filter, opts)
            open_size = queue.batches[-1].size if queue.batches else 0
            num_batches = max(len(queue.batches), 1)  # TF Serving's queue always has an open batch, maybe empty
            if opts.enable_large_batch_splitting:
                full = size > (opts.max_enqueued_batches - num_batches) * limit + (limit - open_size)
            else:
                full = open_size + size > opts.max_batch_size and num_batches >= opts.max_enqueued_batches
            if full:
                # TF Serving's shared batch scheduler: UNAVAILABLE (retryable), not RESOURCE_EXHAUSTED
                raise Unavailable(
                    "The batch scheduling queue to which this task was submitted is full: batch queue for "
                    f"{_where(servable, signature_name)} is full ({queue.pending} examples pending "
                    f"in {len(queue.batches)} batch(es), max_enqueued_batches {opts.max_enqueued_batches}); retry later"
                )
            chunks = [inputs]
            if opts.enable_large_batch_splitting and open_size + size > limit:
                # The first part fills what is left of the open batch, the rest goes in full execution batches.
                first = limit - open_size
                bounds = [0, *range(first if first > 0 else limit, size, limit), size]
                chunks = [{k: v[lo:hi] for k, v in inputs.items()} for lo, hi in zip(bounds, bounds[1:], strict=False)]
            tasks = []
            for chunk in chunks:
                n = int(next(iter(chunk.values())).shape[0])
                task = _Task(chunk, n, now)
                if not queue.batches or queue.batches[-1].size + n > limit:
                    queue.batches.append(_Batch(started=now))
                batch = queue.batches[-1]
                batch.tasks.append(task)
                batch.size += n
                tasks.append(task)
            queue.pending += size
            self._queues[key] = queue
            self._in_flight += len(tasks)
            self._cond.notify()
        return tasks

    def _plan(self, servable: BatchableServable, signature_name: str, inputs: dict[str, np.ndarray],
              output_filter: tuple, opts: BatchOptions) -> tuple[tuple, int] | None:
        """Queue key and batch size for a request, or None when it cannot be batched."""
        if not inputs:
            return None
        try:
            cache = self._dims[servable]
        except KeyError:
            cache = self._dims[servable] = {}
        except TypeError:  # not weak-referenceable: no cache
            cache = {}
        size = None
        parts = []
        for name in sorted(inputs):
            arr = inputs[name]
            if not arr.ndim or (size is not None and arr.shape[0] != size):
                return None
            size = arr.shape[0]
            key = (signature_name, name, arr.ndim)
            variable = cache.get(key, _UNKNOWN)
            if variable is _UNKNOWN:  # the SignatureDef (a proto: slow to walk) is read once per input and rank
                variable = cache[key] = _variable_dims(servable.signature_defs.get(signature_name), name, arr.ndim)
            if variable is None:  # dimension 0 fixed by the signature: not batchable
                return None
            if opts.pad_variable_length_inputs:
                inner = tuple(-1 if (i + 1) in variable else d for i, d in enumerate(arr.shape[1:]))
            else:
                inner = arr.shape[1:]
            parts.append((name, arr.dtype.str, inner))
        if not size:
            return None
        key = (servable.name, servable.version, id(servable), signature_name, output_filter, tuple(parts))
        return key, int(size)

    def _run_alone(self, servable: Any, signature_name: str, inputs: dict[str, np.ndarray], output_filter: tuple,
                   opts: BatchOptions, key: tuple, size: int) -> dict[str, np.ndarray]:
        """A lone request on an idle batcher: a batch of its own, run in the caller's thread (no hand-off, no wait)."""
        allowed = opts.allowed_batch_sizes
        if not allowed or size in allowed or size > allowed[-1]:
            outputs = servable.run(signature_name, inputs, output_filter)
            if self.metrics is not None:
                self.metrics.observe_batch(servable.name, size, [0.0])
            return outputs
        validate = getattr(servable, "validate", None)
        if validate is not None:
            validate(signature_name, inputs)
        queue = _Queue(key, servable, signature_name, output_filter, opts)
        outputs, _ = self._run_batch(queue, [_Task(inputs, size, time.monotonic())])
        return {k: v[:size] for k, v in outputs.items()}

    # --- batch threads ---

    def _ready_queue(self, now: float) -> tuple[_Queue | None, float | None]:
        """The ready queue with the oldest head batch, else the seconds until one becomes ready."""
        best: _Queue | None = None
        wait: float | None = None
        for q in self._queues.values():
            if not q.batches:
                continue
            head = q.batches[0].started
            if q.ready(now, self._stopping):
                if best is None or head < best.batches[0].started:
                    best = q
            else:
                left = head + q.options.batch_timeout_micros / 1e6 - now
                wait = left if wait is None else min(wait, left)
        return best, wait

    def _take(self, queue: _Queue) -> list[_Task]:
        batch = queue.batches.popleft()
        queue.pending -= batch.size
        if not queue.batches:
            del self._queues[queue.key]
        return batch.tasks

    def _worker(self) -> None:
        while True:
            with self._cond:
                while True:
                    queue, wait = self._ready_queue(time.monotonic())
                    if queue is not None:
                        tasks = self._take(queue)
                        if self._queues:
                            self._cond.notify()  # more work may be ready for another thread
                        break
                    if self._stopping and not self._queues:
                        return
                    self._cond.wait(wait)
            self._execute(queue, tasks)

    def _execute(self, queue: _Queue, tasks: list[_Task]) -> None:
        try:
            outputs, sizes = self._run_batch(queue, tasks)
        except BaseException as exc:  # delivered to every caller; never lost
            if not isinstance(exc, ServingError):
                log.exception("batch for model %s failed", queue.servable.name)
                exc = Internal(f"model '{queue.servable.name}' signature '{queue.signature_name}': batch failed: {exc}")
            if self.isolate_failures and len(tasks) > 1 and isinstance(exc, InvalidArgument):
                self._run_each(queue, tasks)  # one request's bad data must not fail its neighbours
                return
            for t in tasks:
                t.future.set_exception(exc)
            return
        offset = 0
        for t, n in zip(tasks, sizes, strict=True):
            t.future.set_result({k: v[offset : offset + n] for k, v in outputs.items()})
            offset += n

    @staticmethod
    def _run_each(queue: _Queue, tasks: list[_Task]) -> None:
        """Run each request of a failed batch alone, so each gets its own outputs or error."""
        for t in tasks:
            try:
                t.future.set_result(queue.servable.run(queue.signature_name, t.inputs, queue.output_filter))
            except ServingError as exc:
                t.future.set_exception(exc)
            except BaseException as exc:  # noqa: BLE001 - delivered to its caller, never lost
                log.exception("request for model %s failed", queue.servable.name)
                t.future.set_exception(Internal(
                    f"model '{queue.servable.name}' signature '{queue.signature_name}': {type(exc).__name__}: {exc}"))

    def _run_batch(self, queue: _Queue, tasks: list[_Task]) -> tuple[dict[str, np.ndarray], list[int]]:
        sizes = [t.size for t in tasks]
        total = sum(sizes)
        opts = queue.options
        merged: dict[str, np.ndarray] = {}
        for name in tasks[0].inputs:
            arrays = [t.inputs[name] for t in tasks]
            if opts.pad_variable_length_inputs:
                arrays = _pad_to_common_shape(arrays)
            merged[name] = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)
        padded = total
        allowed = opts.allowed_batch_sizes
        if allowed and total <= allowed[-1]:
            padded = allowed[bisect.bisect_left(allowed, total)]
            if padded > total:
                merged = {k: np.concatenate([v, np.repeat(v[-1:], padded - total, axis=0)]) for k, v in merged.items()}
        now = time.monotonic()
        if self.metrics is not None:
            self.metrics.observe_batch(queue.servable.name, padded, [now - t.enqueued for t in tasks])
        outputs = queue.servable.run(queue.signature_name, merged, queue.output_filter)
        for name, value in outputs.items():
            if np.ndim(value) == 0 or value.shape[0] != padded:
                raise Internal(
                    f"model '{queue.servable.name}' signature '{queue.signature_name}': output '{name}' has shape "
                    f"{list(np.shape(value))}, expected dimension 0 of {padded} (the batch size); this signature "
                    "cannot be batched"
                )
        return outputs, sizes

    # --- lifecycle ---

    def pending(self) -> int:
        """Examples queued and not yet taken by a batch thread (all queues)."""
        with self._cond:
            return sum(q.pending for q in self._queues.values())

    def stop(self, timeout: float | None = None) -> None:
        """Refuse new requests, run everything already queued, then stop the batch threads."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout)


_UNKNOWN = object()


def _where(servable: Any, signature_name: str) -> str:
    return f"model '{servable.name}' version {servable.version} signature '{signature_name}'"


def _variable_dims(sig: Any, name: str, ndim: int) -> set[int] | None:
    """Axes (>= 1) the signature declares variable for ``name``; None when its dimension 0 is fixed."""
    if sig is None or name not in sig.inputs:
        return set(range(1, ndim))
    shape = sig.inputs[name].tensor_shape
    if shape.unknown_rank:
        return set(range(1, ndim))
    dims = [int(d.size) for d in shape.dim]
    if not dims or dims[0] >= 0:
        return None
    return {i for i, d in enumerate(dims) if i >= 1 and d < 0}


def _pad_to_common_shape(arrays: list[np.ndarray]) -> list[np.ndarray]:
    """Zero-pad (b"" for strings) each array's inner dims up to the largest in the batch."""
    target = tuple(max(a.shape[i] for a in arrays) for i in range(1, arrays[0].ndim))
    out = []
    for a in arrays:
        if a.shape[1:] == target:
            out.append(a)
            continue
        fill: Any = b"" if a.dtype == object else 0
        padded = np.full((a.shape[0], *target), fill, dtype=a.dtype)
        padded[tuple(slice(0, n) for n in a.shape)] = a
        out.append(padded)
    return out
