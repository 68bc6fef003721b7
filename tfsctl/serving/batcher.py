"""Server-side dynamic batching, after TF Serving's BasicBatchScheduler + BatchingSession.

Why: one model call on a batch of N costs far less than N calls of one, so concurrent requests of compatible shape
are merged along dimension 0, run once, and the outputs are split back to each caller.

Semantics (TF Serving's, with its defaults):

- One queue per (servable, signature, output filter, non-batch dims and dtype of every input). A batch is formed
  when a batch thread is free and either the queue holds ``max_batch_size`` examples or its oldest request has waited
  ``batch_timeout_micros`` (0: form a batch as soon as a thread is free; batches then grow under load by themselves).
- ``num_batch_threads`` threads run batches, shared by every queue.
- A queue holds at most ``max_enqueued_batches * max_batch_size`` examples not yet taken by a thread; more is refused
  at once with ``ResourceExhausted`` (HTTP 429) instead of growing without bound.
- ``allowed_batch_sizes``: a batch is padded up to the next allowed size by repeating its last row; the padding rows
  are dropped from the outputs.
- A request with more than ``max_batch_size`` examples is split into chunks of at most ``max_batch_size`` (each may
  share a batch with others) and its outputs are concatenated again. Only a request larger than the whole queue
  (``max_enqueued_batches * max_batch_size``) is refused, with ``InvalidArgument``: retrying could never help.
- ``pad_variable_length_inputs``: requests whose inputs differ only in dimensions the signature declares variable
  (``-1``) share a queue; each input is zero-padded (``b""`` for strings) to the largest size in the batch. As in
  TF Serving, outputs are only split along dimension 0, never cropped: a caller may get outputs sized for the padded
  inputs. Without this flag such requests simply go to different queues.
- Each request is validated against the signature before it is queued. Data that passes validation can still fail
  inside the graph (a corrupt image, a bad height): when a batch of several requests fails with INVALID_ARGUMENT,
  each request is run again on its own, so only the bad one gets the error and its neighbours get their outputs
  (TF Serving fails the whole batch). Any other batch error is delivered to every request in it.
- Requests that cannot be batched (scalar inputs, inputs whose dimension 0 differs, a signature whose dimension 0 is
  fixed, an empty batch) run directly, unbatched.
"""

from __future__ import annotations

import bisect
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from tfsctl.errors import ConfigError, Internal, InvalidArgument, ResourceExhausted, ServingError, Unavailable

log = logging.getLogger(__name__)

DEFAULT_SIGNATURE = "serving_default"


class BatchableServable(Protocol):
    """What the batcher needs from a loaded version (``tfsctl.core.servable.Servable`` fits)."""

    name: str
    version: int
    signature_defs: dict[str, Any]

    def run(
        self, signature_name: str, inputs: dict[str, np.ndarray], output_filter: Sequence[str] = ()
    ) -> dict[str, np.ndarray]: ...


@dataclass(frozen=True)
class BatchOptions:
    """Batching knobs with TF Serving's defaults (BasicBatchScheduler::Options)."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    num_batch_threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    max_enqueued_batches: int = 10
    allowed_batch_sizes: tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "num_batch_threads", "max_enqueued_batches"):
            if getattr(self, name) < 1:
                raise ConfigError(f"batching: {name} must be >= 1, got {getattr(self, name)}")
        if self.batch_timeout_micros < 0:
            raise ConfigError(f"batching: batch_timeout_micros must be >= 0, got {self.batch_timeout_micros}")
        sizes = list(self.allowed_batch_sizes)
        if sizes:
            if any(s < 1 for s in sizes) or any(b <= a for a, b in zip(sizes, sizes[1:], strict=False)):
                raise ConfigError(f"batching: allowed_batch_sizes must be positive and increasing, got {sizes}")
            if sizes[-1] != self.max_batch_size:
                raise ConfigError(
                    f"batching: the last allowed_batch_sizes entry ({sizes[-1]}) must equal max_batch_size "
                    f"({self.max_batch_size})"
                )

    @classmethod
    def from_params(cls, params: Any) -> BatchOptions:
        """From TF Serving's ``BatchingParameters`` message (wrapper fields; unset ones keep the defaults)."""
        if params is None:
            return cls()
        if isinstance(params, BatchOptions):
            return params
        kwargs: dict[str, Any] = {}
        for name in ("max_batch_size", "batch_timeout_micros", "num_batch_threads", "max_enqueued_batches"):
            if params.HasField(name):
                kwargs[name] = int(getattr(params, name).value)
        sizes = tuple(int(s) for s in params.allowed_batch_sizes)
        if sizes:
            kwargs["allowed_batch_sizes"] = sizes
            # TF Serving requires the last allowed size to be max_batch_size; derive it when only the sizes are set.
            kwargs.setdefault("max_batch_size", sizes[-1])
        kwargs["pad_variable_length_inputs"] = bool(params.pad_variable_length_inputs)
        return cls(**kwargs)


@dataclass
class _Task:
    inputs: dict[str, np.ndarray]
    size: int
    enqueued: float
    future: Future = field(default_factory=Future)


@dataclass
class _Queue:
    key: tuple
    servable: Any
    signature_name: str
    output_filter: tuple[str, ...]
    tasks: deque[_Task] = field(default_factory=deque)
    pending: int = 0  # examples queued, not yet taken by a batch thread


class Batcher:
    """Merges compatible concurrent ``run`` calls into batches; same contract as ``Servable.run``."""

    def __init__(self, params: Any = None, metrics: Any = None) -> None:
        self.options = BatchOptions.from_params(params)
        self.metrics = metrics
        self._cond = threading.Condition()
        self._queues: dict[tuple, _Queue] = {}
        self._stopping = False
        self._threads = [
            threading.Thread(target=self._worker, name=f"tfsctl-batch-{i}", daemon=True)
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
        validate = getattr(servable, "validate", None)
        if validate is not None:
            validate(signature_name, inputs)
        plan = self._plan(servable, signature_name, inputs, tuple(output_filter))
        if plan is None:
            if self._stopping:
                raise Unavailable("server is shutting down: batcher stopped")
            return servable.run(signature_name, inputs, output_filter)
        key, size = plan
        opts = self.options
        chunks = (
            [inputs]
            if size <= opts.max_batch_size
            else [
                {k: v[i : i + opts.max_batch_size] for k, v in inputs.items()}
                for i in range(0, size, opts.max_batch_size)
            ]
        )
        now = time.monotonic()
        tasks = [_Task(c, int(next(iter(c.values())).shape[0]), now) for c in chunks]
        with self._cond:
            if self._stopping:
                raise Unavailable("server is shutting down: batcher stopped")
            queue = self._queues.get(key)
            if queue is None:
                queue = self._queues[key] = _Queue(key, servable, signature_name, tuple(output_filter))
            limit = opts.max_enqueued_batches * opts.max_batch_size
            if size > limit:  # could never fit, however long the caller waits: not a "retry later"
                if not queue.tasks:
                    del self._queues[key]
                raise InvalidArgument(
                    f"request for model '{servable.name}' version {servable.version} signature '{signature_name}' "
                    f"has {size} examples, more than the batch queue can ever hold ({limit} = max_enqueued_batches "
                    f"{opts.max_enqueued_batches} x max_batch_size {opts.max_batch_size}); send smaller requests"
                )
            if queue.pending + size > limit:
                raise ResourceExhausted(
                    f"batch queue for model '{servable.name}' version {servable.version} signature "
                    f"'{signature_name}' is full ({queue.pending} examples pending, limit {limit}); retry later"
                )
            queue.tasks.extend(tasks)
            queue.pending += size
            self._cond.notify()
        parts = [t.future.result() for t in tasks]
        if len(parts) == 1:
            return parts[0]
        return {k: np.concatenate([p[k] for p in parts], axis=0) for k in parts[0]}

    def _plan(
        self, servable: BatchableServable, signature_name: str, inputs: dict[str, np.ndarray], output_filter: tuple
    ) -> tuple[tuple, int] | None:
        """Queue key and batch size for a request, or None when it cannot be batched."""
        if not inputs:
            return None
        sizes = {a.shape[0] if a.ndim else None for a in inputs.values()}
        if len(sizes) != 1 or None in sizes:
            return None
        size = sizes.pop()
        if size == 0:
            return None
        sig = servable.signature_defs.get(signature_name)
        parts = []
        for name in sorted(inputs):
            arr = inputs[name]
            variable = _variable_dims(sig, name, arr.ndim)
            if variable is None:  # dimension 0 fixed by the signature: not batchable
                return None
            if self.options.pad_variable_length_inputs:
                inner = tuple(-1 if (i + 1) in variable else d for i, d in enumerate(arr.shape[1:]))
            else:
                inner = tuple(arr.shape[1:])
            parts.append((name, arr.dtype.str, inner))
        key = (servable.name, servable.version, id(servable), signature_name, output_filter, tuple(parts))
        return key, size

    # --- batch threads ---

    def _ready_queue(self, now: float) -> tuple[_Queue | None, float | None]:
        """The ready queue with the oldest head request, else the seconds until one becomes ready."""
        timeout = self.options.batch_timeout_micros / 1e6
        best: _Queue | None = None
        wait: float | None = None
        for q in self._queues.values():
            if not q.tasks:
                continue
            head = q.tasks[0].enqueued
            if self._stopping or q.pending >= self.options.max_batch_size or now - head >= timeout:
                if best is None or head < best.tasks[0].enqueued:
                    best = q
            else:
                left = head + timeout - now
                wait = left if wait is None else min(wait, left)
        return best, wait

    def _take(self, queue: _Queue) -> list[_Task]:
        tasks: list[_Task] = []
        total = 0
        while queue.tasks and (not tasks or total + queue.tasks[0].size <= self.options.max_batch_size):
            task = queue.tasks.popleft()
            tasks.append(task)
            total += task.size
        queue.pending -= total
        if not queue.tasks:
            del self._queues[queue.key]
        return tasks

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
            if len(tasks) > 1 and isinstance(exc, InvalidArgument):
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
        merged: dict[str, np.ndarray] = {}
        for name in tasks[0].inputs:
            arrays = [t.inputs[name] for t in tasks]
            if self.options.pad_variable_length_inputs:
                arrays = _pad_to_common_shape(arrays)
            merged[name] = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)
        padded = total
        allowed = self.options.allowed_batch_sizes
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
