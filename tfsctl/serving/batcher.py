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

tfsctl additions, so batching does not tax a lone request nor a closed loop of clients:

- A batch does not wait out ``batch_timeout_micros`` for nobody. The batcher counts the requests on their way to it
  (the front ends announce each request as it enters the handler, :meth:`Batcher.arrival`; a bare ``run`` call
  counts from its start). Once two batches in a row waited out their timeout while none was on its way, a batch also
  runs as soon as no request is on its way and no batch is running. Requests still decoding hold the batch open
  (up to the timeout), and so does a running batch, so requests arriving meanwhile share the next batch. Before
  that point a batch that fills up, or times out while requests are still arriving, resets the count; after it the
  rule stays on (``close_early_after`` sets the count; 0: from the start).
- An idle batcher runs a request alone in its caller's thread, without a queue entry, merge or second validation.
  :meth:`Batcher.run_now` does so whatever the batcher is doing, for models whose steps are too short for batching
  to pay (the gRPC event loop's requests).
- The request whose arrival makes a batch ready runs it in its own thread when a batch slot is free (at most
  ``num_batch_threads`` batches run at once, callers and batch threads together). A batch waiting for a slot is
  handed, when one frees up, to its first request's thread (woken for its result anyway). The batch threads run
  the batches that time out, and those whose first request is part of a split one.

Opt-in for closed-loop clients (``wait_for_answered_clients``, ``--batching_wait_for_answered_clients``): a client
that waits for its answer before it sends again comes back milliseconds after the answer, so a batch answered is a
promise of as many requests. Until that many have arrived (or ``batch_timeout_micros`` after the answer), the batcher
does not run a request alone nor close a batch early, and a batch that waited out its timeout behind a busy thread
waits on for them once a thread frees (at most ``batch_timeout_micros`` more: clients coming back to another queue
would hold it again and again). Without it, eight such clients on one batch thread settle in two batches of four
taking turns (each runs as the other's clients return; TF Serving's scheduler does the same); with it, they share one
batch of eight. It can add up to ``batch_timeout_micros`` to a request when the answered clients do not come back,
hence opt-in.

Per-model batching (``per_model=True``, ``--enable_per_model_batching_parameters``): each version directory's
``batching_params.pbtxt`` gives that model's queue options (the thread pool stays global); a model without the file
is not batched, as TF Serving.
"""

from __future__ import annotations

import bisect
import logging
import math
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from tfsctl.core import deadlines
from tfsctl.core.config import BatchOptions, load_model_batching_parameters
from tfsctl.errors import (
    Cancelled,
    ConfigError,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    ResourceExhausted,
    ServingError,
    Unavailable,
)
from tfsctl.savedmodel import DEFAULT_SIGNATURE
from tfsctl.serving.request_record import current

log = logging.getLogger(__name__)

__all__ = ["BatchOptions", "Batcher", "BatchableServable"]

# Batches in a row that waited out batch_timeout_micros while no request was on its way, before batches run as soon as
# no request is on its way (see the module docstring). Until then the batcher waits as TF Serving's always does.
_WASTED_WAITS_TO_CLOSE_EARLY = 2


class _Answered:
    """Clients of recently answered batches, expected back (``wait_for_answered_clients``): each answered batch is a
    count of arrivals to wait for, until ``batch_timeout_micros`` after its answer. Callers hold the batcher's lock."""

    __slots__ = ("_sets", "until")

    _MAX_SETS = 1024  # answered batches remembered at once: a bound, far above any timeout's worth in practice

    def __init__(self) -> None:
        self._sets: deque[list] = deque()  # [expiry, clients not back yet], oldest first
        self.until = -math.inf  # when the latest answered batch's clients stop being expected

    def add(self, clients: int, now: float, timeout: float) -> None:
        if timeout > 0 and clients > 0:
            if len(self._sets) >= self._MAX_SETS:
                self._sets.popleft()
            self._sets.append([now + timeout, clients])
            self.until = max(self.until, now + timeout)

    def expected(self, now: float) -> bool:
        """Some answered client has not come back, and is still within its timeout."""
        sets = self._sets
        while sets and sets[0][0] <= now:
            sets.popleft()
        return bool(sets)

    def next_expiry(self, now: float) -> float:
        """When the oldest answered batch still expected stops being expected (expired ones are dropped first: an
        expiry in the past would make a batch thread sleep for no time, again and again)."""
        return self._sets[0][0] if self.expected(now) else math.inf

    def returned(self, now: float) -> None:
        """A request arrived: it is taken as one of the expected clients (the oldest answer first)."""
        if self.expected(now):
            head = self._sets[0]
            head[1] -= 1
            if not head[1]:
                self._sets.popleft()


class BatchableServable(Protocol):
    """What the batcher needs from a loaded version (``tfsctl.core.servable.Servable`` fits)."""

    name: str
    version: int
    signature_defs: dict[str, Any]

    def run(
        self, signature_name: str, inputs: dict[str, np.ndarray], output_filter: Sequence[str] = ()
    ) -> dict[str, np.ndarray]: ...


def _note(queued: float, batch: int) -> None:
    """Tell the current request's record (access log, traces) its queue wait and the size of its batch."""
    record = current()
    if record is not None:
        record.queue_s, record.batch_size = queued, batch


class _Task:
    """One queued request (or part of a split one). Its caller's thread sleeps on ``_signal`` until the task is done,
    or until it is handed a batch to run (``lead``): the thread that would be woken for its result anyway runs it.
    A task queued by :meth:`Batcher.submit` has no thread waiting: ``callback`` is called with it once it is done,
    and it never leads (a batch thread runs its batch). ``whole``: the task is a whole request, not a part."""

    __slots__ = ("inputs", "size", "enqueued", "whole", "can_lead", "callback", "lead", "done", "outputs", "error",
                 "deadline", "_signal", "queued", "batch")

    def __init__(self, inputs: dict[str, np.ndarray], size: int, enqueued: float, whole: bool = False,
                 callback: Callable[[_Task], None] | None = None) -> None:
        self.inputs, self.size, self.enqueued, self.whole, self.callback = inputs, size, enqueued, whole, callback
        self.can_lead = whole and callback is None
        self.deadline = deadlines.current()  # its client's, set by the front end in the caller's thread
        self.lead: tuple[_Queue, list[_Task]] | None = None
        self.done = False
        self.outputs: dict[str, np.ndarray] | None = None
        self.error: BaseException | None = None
        self.queued, self.batch = 0.0, 0  # seconds in the queue and the size of the batch that ran it
        self._signal = threading.Lock()
        self._signal.acquire()

    def finish(self, outputs: dict[str, np.ndarray] | None, error: BaseException | None, wake: bool) -> None:
        self.outputs, self.error, self.done = outputs, error, True
        callback = self.callback
        if callback is not None:
            self.callback = None  # it may hold what holds this task (a future whose result it becomes): no cycle
            try:
                callback(self)
            except Exception:  # noqa: BLE001 - the batch goes on for the other tasks
                log.exception("a batch task's callback failed")
        elif wake:
            self._signal.release()

    def hand(self, queue: _Queue, tasks: list[_Task]) -> None:
        """Wake this task's caller to run ``tasks`` (a batch slot is already taken for it); its own task is first."""
        self.lead = (queue, tasks)
        self._signal.release()

    def wait(self) -> None:
        if not self.done:
            self._signal.acquire()


@dataclass
class _Batch:
    tasks: list[_Task] = field(default_factory=list)
    size: int = 0
    started: float = 0.0  # when its first task arrived
    held_from: float | None = None  # wait_for_answered_clients: when it was first held past its timeout


@dataclass
class _Queue:
    key: tuple
    servable: Any
    signature_name: str
    output_filter: tuple[str, ...]
    options: BatchOptions
    batches: deque[_Batch] = field(default_factory=deque)  # the last one is open
    pending: int = 0  # examples queued, not yet taken by a batch thread

    def ready(self, now: float, stopping: bool, nobody_coming: bool, held: bool = False) -> str | None:
        """Why the head batch may run now ("full", "timeout", "arrived", "stopping"), or None: it waits.
        ``held``: answered clients are on their way back (``Batcher._held``), so even a timed-out batch waits."""
        if not self.batches:
            return None
        head = self.batches[0]
        if len(self.batches) > 1 or head.size >= self.options.execution_batch_size:
            return "full"  # the next request did not fit: TF Serving closes it
        if stopping:
            return "stopping"
        if now - head.started >= self.options.batch_timeout_micros / 1e6:
            return None if held else "timeout"
        return "arrived" if nobody_coming else None


class Batcher:
    """Merges compatible concurrent ``run`` calls into batches; same contract as ``Servable.run``.

    ``params``: TF Serving's ``BatchingParameters`` message, a ``BatchOptions``, or None (TF Serving's defaults).
    ``per_model``: read each version's ``batching_params.pbtxt`` (``--enable_per_model_batching_parameters``).
    """

    def __init__(self, params: Any = None, metrics: Any = None, *, per_model: bool = False,
                 isolate_failures: bool = False, close_early_after: int = _WASTED_WAITS_TO_CLOSE_EARLY,
                 wait_for_answered_clients: bool = False) -> None:
        """``isolate_failures`` (tfsctl's opt-in): a batch that fails with INVALID_ARGUMENT is rerun request by
        request, so only the bad request fails; TF Serving (the default) fails every request of the batch.
        ``close_early_after``: wasted timeout waits in a row before batches stop waiting for nobody (0: at once).
        ``wait_for_answered_clients`` (tfsctl's opt-in, for closed-loop clients): see the module docstring."""
        self._close_early_after = close_early_after
        self.isolate_failures = isolate_failures
        self.options = BatchOptions.from_params(params)
        self.metrics = metrics
        self.per_model = per_model
        self._cond = threading.Condition(threading.Lock())
        self._queues: dict[tuple, _Queue] = {}
        self._model_options: weakref.WeakKeyDictionary[Any, BatchOptions | None] = weakref.WeakKeyDictionary()
        self._dims: weakref.WeakKeyDictionary[Any, dict] = weakref.WeakKeyDictionary()
        self._stopping = False
        self._arriving = 0  # requests on their way to a queue: announced or inside run(), not yet queued
        self._running = 0  # batches running, in batch threads and callers: at most num_batch_threads
        self._wasted = 0  # batches in a row that waited out their timeout while no request was on its way
        self._close_early = close_early_after <= 0  # a batch runs once no request is on its way
        self._wake_at = math.inf  # when the last batch thread to go to sleep wakes up by itself
        self._local = threading.local()  # .arriving: this thread's request is counted in _arriving
        self._answered = _Answered() if wait_for_answered_clients else None
        self._slots = self.options.num_batch_threads
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
        local = self._local
        if not getattr(local, "arriving", False):
            self._begin_arrival()
        try:
            return self._run(servable, signature_name or DEFAULT_SIGNATURE, inputs, tuple(output_filter))
        finally:
            if local.arriving:  # left before reaching a queue (unbatched, refused, invalid)
                self._end_arrival()

    def run_now(
        self,
        servable: BatchableServable,
        signature_name: str,
        inputs: dict[str, np.ndarray],
        output_filter: Sequence[str] = (),
    ) -> dict[str, np.ndarray] | None:
        """Run at once in the caller's thread, as a batch of its own, whatever is queued or running: for a model
        whose steps are too short for sharing one to pay for handing requests to a batch thread (the gRPC event
        loop's requests, ``service.BATCHING_PAYS_STEP_S``). TF Serving's checks still apply (``max_batch_size``,
        a stopped batcher); it takes no batch slot and never waits. Running them alone keeps such requests off the
        queue altogether: queued behind each other they would never find the batcher idle again under load.
        None, with nothing run, for a request that must be split across batches (that is the queue's work, which
        waits): the caller hands it to a thread that calls :meth:`run`."""
        signature_name = signature_name or DEFAULT_SIGNATURE
        output_filter = tuple(output_filter)
        plan = self._plan_whole(servable, signature_name, inputs, output_filter)
        if isinstance(plan, str):
            if plan == "split":  # enable_large_batch_splitting: the queue's job
                return None
            return servable.run(signature_name, inputs, output_filter)  # unbatched: runs directly
        opts, key, size = plan
        return self._run_alone(servable, signature_name, inputs, output_filter, opts, key, size)

    def submit(
        self,
        servable: BatchableServable,
        signature_name: str,
        inputs: dict[str, np.ndarray],
        output_filter: Sequence[str],
        callback: Callable[[_Task], None],
    ) -> bool:
        """Queue ``inputs`` as :meth:`run` does, with no thread waiting for them: ``callback(task)`` is called, from
        the batch thread that ran its batch (or that dropped it: its client gone), once ``task.outputs`` or
        ``task.error`` is set; ``task.queued`` and ``task.batch`` say how long it waited and the size of its
        batch. For an event loop, which must not block: the request's batch runs in a batch thread.

        False, with nothing queued, for a request the queue does not take whole (unbatched by its shapes or its
        model's options, or to be split across batches): the caller runs it with :meth:`run` in a thread. Errors a
        request gets before it is queued (too large, invalid, a full queue, a stopped batcher) are raised here."""
        signature_name = signature_name or DEFAULT_SIGNATURE
        output_filter = tuple(output_filter)
        plan = self._plan_whole(servable, signature_name, inputs, output_filter)
        if isinstance(plan, str):  # unbatched or split
            return False
        opts, key, size = plan
        validate = getattr(servable, "validate", None)
        if validate is not None:
            validate(signature_name, inputs)
        local = self._local
        if not getattr(local, "arriving", False):
            self._begin_arrival()
        try:
            self._enqueue(servable, signature_name, inputs, output_filter, opts, key, size, callback)
        finally:
            if local.arriving:  # refused: a full queue, a stopped batcher
                self._end_arrival()
        return True

    def _plan_whole(self, servable: BatchableServable, signature_name: str, inputs: dict[str, np.ndarray],
                    output_filter: tuple) -> tuple[BatchOptions, tuple, int] | str:
        """:meth:`run_now` and :meth:`submit`: TF Serving's checks (a stopped batcher, ``max_batch_size``), then the
        queue options, key and size of a request the queue takes whole (counted in batching_session's
        input_batch_size); "unbatched" or "split" for the others."""
        if self._stopping:
            raise Unavailable("server is shutting down: batcher stopped")
        opts = self._options_for(servable)
        plan = None if opts is None else self._plan(servable, signature_name, inputs, output_filter, opts)
        if plan is None:
            return "unbatched"
        assert opts is not None
        key, size = plan
        _check_size(servable, signature_name, size, opts)
        if size > opts.execution_batch_size:
            return "split"
        if self.metrics is not None:  # batching_session/input_batch_size
            self.metrics.observe_batch_input(np.shape(v)[0] if np.ndim(v) else 1 for v in inputs.values())
        return opts, key, size

    def batches(self, servable: BatchableServable) -> bool:
        """Whether requests to ``servable`` are batched at all (per-model batching: its version has parameters)."""
        return self._options_for(servable) is not None

    def arrival(self) -> _Arrival:
        """Context manager a front end enters when a request comes in, before decoding it: until the request reaches
        a queue (its ``run`` call) or leaves, a batch it could join does not run early (see the module docstring)."""
        return _Arrival(self)

    def _begin_arrival(self) -> None:
        with self._cond:
            self._arriving += 1
            if self._answered is not None:
                self._answered.returned(time.monotonic())
        self._local.arriving = True

    def _end_arrival(self) -> None:
        self._local.arriving = False
        with self._cond:
            self._arriving -= 1
            self._wake_if_released(time.monotonic())  # a batch waiting for this request may run now

    def _nobody_coming(self, now: float) -> bool:
        """Lock held: a batch may close early (see the module docstring): no request on its way, no batch running
        and, with ``wait_for_answered_clients``, no answered client expected back."""
        return (self._close_early and not self._arriving and not self._running
                and (self._answered is None or not self._answered.expected(now)))

    def _wake_if_released(self, now: float) -> bool:
        """Lock held, after a request stopped being on its way: wake a batch thread when a queued batch may now run
        (it may close early, or, with ``wait_for_answered_clients``, stop being held while a thread is free)."""
        if self._queues and not self._arriving and (
                self._nobody_coming(now) or (self._answered is not None and self._running < self._slots)):
            self._cond.notify()
            return True
        return False

    def _holding(self, now: float) -> bool:
        """Lock held: a batch past its timeout still waits, for answered clients on their way back."""
        answered = self._answered
        return (answered is not None and now < answered.until
                and (self._arriving > 0 or answered.expected(now)))

    def _answering(self, clients: int, opts: BatchOptions) -> None:
        """Just before a batch's answers go out: expect its clients back (``wait_for_answered_clients``)."""
        if self._answered is not None:
            with self._cond:
                self._answered.add(clients, time.monotonic(), opts.batch_timeout_micros / 1e6)

    def _run(self, servable: BatchableServable, signature_name: str, inputs: dict[str, np.ndarray],
             output_filter: tuple) -> dict[str, np.ndarray]:
        opts = self._options_for(servable)
        plan = None if opts is None else self._plan(servable, signature_name, inputs, output_filter, opts)
        if plan is None:
            self._end_arrival()
            if self._stopping:
                raise Unavailable("server is shutting down: batcher stopped")
            return servable.run(signature_name, inputs, output_filter)
        assert opts is not None
        key, size = plan
        _check_size(servable, signature_name, size, opts)
        if self.metrics is not None:  # batching_session/input_batch_size: each input of a request to batch
            self.metrics.observe_batch_input(np.shape(v)[0] if np.ndim(v) else 1 for v in inputs.values())
        if self._close_early and self._claim_idle(key, size, opts):
            try:
                return self._run_alone(servable, signature_name, inputs, output_filter, opts, key, size)
            finally:
                self._answering(1, opts)
                self._release_slot()
        validate = getattr(servable, "validate", None)
        if validate is not None:
            validate(signature_name, inputs)
        tasks, queue, batch = self._enqueue(servable, signature_name, inputs, output_filter, opts, key, size)
        me = tasks[0] if len(tasks) == 1 else None
        if batch is not None:  # this request made a batch ready and a slot was free: run it here, no hand-off
            self._execute_and_release(queue, batch, me)
        if me is not None:
            me.wait()
            if me.lead is not None:  # handed a ready batch (its own task first) when a slot freed up
                self._execute_and_release(*me.lead, me)
            if me.error is not None:
                raise me.error
            assert me.outputs is not None
            _note(me.queued, me.batch)
            return me.outputs
        # Wait for every part of a split request, even after one failed: none may still sit in a queue.
        for t in tasks:
            t.wait()
        self._answering(1, opts)  # its client is answered now, once (its parts' batches do not count it)
        for t in tasks:
            if t.error is not None:
                raise t.error
        parts = [t.outputs for t in tasks]
        return {k: np.concatenate([p[k] for p in parts], axis=0) for k in parts[0]}  # type: ignore[index,union-attr]

    def _claim_idle(self, key: tuple, size: int, opts: BatchOptions) -> bool:
        """True (a batch slot taken) when this request would run at once anyway: the batcher is idle (no batch
        running, nothing queued for it, no other request on its way). It then runs alone, without a queue."""
        with self._cond:
            if (self._arriving != 1 or self._running or key in self._queues or self._stopping
                    or size > opts.execution_batch_size
                    or (self._answered is not None and self._answered.expected(time.monotonic()))):
                return False
            self._local.arriving = False
            self._arriving = 0
            self._running = 1
            self._wake_if_released(time.monotonic())  # another queue's batch it held may run on a free thread
            return True

    def _run_alone(self, servable: Any, signature_name: str, inputs: dict[str, np.ndarray], output_filter: tuple,
                   opts: BatchOptions, key: tuple, size: int) -> dict[str, np.ndarray]:
        """A batch of one request in the caller's thread: no task, merge or split (``servable.run`` validates)."""
        allowed = opts.allowed_batch_sizes
        if not allowed or size in allowed or size > allowed[-1]:
            outputs = servable.run(signature_name, inputs, output_filter)
            if self.metrics is not None:
                self.metrics.observe_batch(servable.name, size, [0.0], real_size=size,
                                           thread_pool_name=opts.thread_pool_name)
            _note(0.0, size)
            return outputs
        validate = getattr(servable, "validate", None)
        if validate is not None:
            validate(signature_name, inputs)
        queue = _Queue(key, servable, signature_name, output_filter, opts)
        outputs, _ = self._run_batch(queue, [_Task(inputs, size, time.monotonic())])
        return {k: v[:size] for k, v in outputs.items()}

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
                 opts: BatchOptions, key: tuple, size: int, callback: Callable[[_Task], None] | None = None
                 ) -> tuple[list[_Task], _Queue, list[_Task] | None]:
        """Queue the request (in parts when split); returns its tasks, the queue, and the head batch's tasks when
        the caller is to run that batch itself (it became ready and a batch slot was free), else None. With
        ``callback`` (:meth:`submit`: no thread of the caller's waits) a batch it makes ready goes to a batch thread."""
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
            opened = False
            for chunk in chunks:
                n = int(next(iter(chunk.values())).shape[0])
                task = _Task(chunk, n, now, whole=len(chunks) == 1, callback=callback)
                if not queue.batches or queue.batches[-1].size + n > limit:
                    queue.batches.append(_Batch(started=now))
                    opened = True
                batch = queue.batches[-1]
                batch.tasks.append(task)
                batch.size += n
                tasks.append(task)
            queue.pending += size
            self._queues[key] = queue
            self._local.arriving = False
            self._arriving -= 1
            nobody_coming = self._nobody_coming(now)
            mine = None
            if self._running < self._slots:
                reason = queue.ready(now, False, nobody_coming, self._held(queue, now, self._holding(now)))
                if reason is not None:
                    if callback is not None:
                        self._cond.notify()  # no thread of the caller's can run it: a batch thread does
                        return tasks, queue, None
                    mine = self._take(queue, reason)
                    self._running += 1
            if not self._wake_if_released(now) and opened:  # another queue's batch may run now, or
                self._kick()  # a new batch to time
        return tasks, queue, mine

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
            dims_key = (signature_name, name, arr.ndim)
            variable = cache.get(dims_key, _UNKNOWN)
            if variable is _UNKNOWN:  # the SignatureDef (a proto: slow to walk) is read once per input and rank
                variable = cache[dims_key] = _variable_dims(servable.signature_defs.get(signature_name), name, arr.ndim)
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

    # --- batch threads ---

    def _ready_queue(self, now: float) -> tuple[_Queue | None, str, float | None]:
        """The ready queue with the oldest head batch and why it is ready, else the seconds until one times out."""
        best: _Queue | None = None
        why = ""
        wait: float | None = None
        nobody_coming = self._nobody_coming(now)
        holding = self._holding(now)
        for q in self._queues.values():
            if not q.batches:
                continue
            head = q.batches[0].started
            reason = q.ready(now, self._stopping, nobody_coming, self._held(q, now, holding))
            if reason is not None:
                if best is None or head < best.batches[0].started:
                    best, why = q, reason
            else:
                left = self._due(q, holding, now) - now
                wait = left if wait is None else min(wait, left)
        return best, why, wait

    def _due(self, queue: _Queue, holding: bool, now: float) -> float:
        """Lock held: when the queue's head batch must be looked at again: its timeout, or while answered clients
        are expected, the moment they stop being expected (whichever is earlier of that and the timeout, unless
        the batch is already past its timeout and held: then also the end of its hold)."""
        head = queue.batches[0]
        timeout = queue.options.batch_timeout_micros / 1e6
        due = head.started + timeout
        answered = self._answered
        if answered is not None:
            if holding and head.held_from is not None:  # set only once past its timeout
                return min(answered.until, answered.next_expiry(now), head.held_from + timeout)
            return min(due, answered.next_expiry(now))
        return due

    def _held(self, queue: _Queue, now: float, holding: bool) -> bool:
        """Lock held: the queue's head batch, if past its timeout, waits on for answered clients (``holding``):
        only while a thread is free to run it, and at most ``batch_timeout_micros`` from the first time. Clients
        coming back to another queue cannot join it, and each of their answers would hold it again: without the
        bound, a closed loop on another model held it for as long as the loop ran."""
        if not holding or self._running >= self._slots:
            return False
        head = queue.batches[0]
        timeout = queue.options.batch_timeout_micros / 1e6
        if head.held_from is None:
            if now - head.started < timeout:
                return False  # not past its timeout: nothing to hold yet
            head.held_from = now
        return now < head.held_from + timeout

    def _take(self, queue: _Queue, reason: str) -> list[_Task]:
        """Pop the head batch (lock held); ``reason`` (see ``_Queue.ready``) feeds the early-close rule."""
        if not self._close_early:
            if reason == "timeout" and not self._arriving:  # it waited for nobody
                self._wasted += 1
                self._close_early = self._wasted >= self._close_early_after
            elif reason in ("timeout", "full"):  # partners came, or were still coming: waiting paid
                self._wasted = 0
        batch = queue.batches.popleft()
        queue.pending -= batch.size
        if not queue.batches:
            del self._queues[queue.key]
        return batch.tasks

    def _execute_and_release(self, queue: _Queue, tasks: list[_Task], me: _Task | None) -> None:
        try:
            self._execute(queue, tasks, me)
        finally:
            self._release_slot()

    def _release_slot(self) -> None:
        """Free a batch slot; a batch ready for it goes to its first request's thread (woken to run it, where it
        would have been woken for its result anyway) or, when that thread cannot lead, to a batch thread."""
        with self._cond:
            self._running -= 1
            if self._stopping:
                self._cond.notify_all()  # the last batch done: every batch thread may exit
                return
            if not self._queues:
                return
            queue, reason, _ = self._ready_queue(time.monotonic())
            if queue is not None:
                leader = queue.batches[0].tasks[0]
                if not leader.can_lead:
                    self._cond.notify()
                    return
                tasks = self._take(queue, reason)
                self._running += 1
                leader.hand(queue, tasks)
            self._kick()  # a batch left queued must be timed

    def _kick(self) -> None:
        """Lock held: wake a batch thread when a queued batch times out before any sleeping one wakes up."""
        now = time.monotonic()
        holding = self._holding(now)
        for q in self._queues.values():
            if q.batches:
                deadline = self._due(q, holding, now)
                if deadline < self._wake_at:
                    self._wake_at = deadline  # the woken thread sets its own; this avoids waking a second one
                    self._cond.notify()
                    return

    def _worker(self) -> None:
        while True:
            with self._cond:
                while True:
                    queue, reason, wait = self._ready_queue(time.monotonic())
                    if queue is not None and self._running < self._slots:
                        tasks = self._take(queue, reason)
                        self._running += 1
                        if self._queues:
                            self._cond.notify()  # more work may be ready for another thread
                        break
                    if self._stopping and not self._queues:
                        return
                    # A ready batch without a free slot goes out when a slot is released (_release_slot).
                    self._wake_at = math.inf if wait is None else time.monotonic() + wait
                    self._cond.wait(wait)
                    self._wake_at = math.inf  # awake: it may go on to run a batch, timing nothing meanwhile
            self._execute_and_release(queue, tasks, None)
            del queue, tasks  # asleep, the thread holds nothing of the batch it ran (its requests' inputs)

    def _execute(self, queue: _Queue, tasks: list[_Task], me: _Task | None) -> None:
        """Run a batch and deliver each task's outputs or error (``me``, the running thread's own task, unwoken).

        A task whose client has gone (deadline passed, call cancelled) while it was queued is not run; the batch
        runs under the latest deadline of the others (TF Serving's BatchingSession)."""
        tasks = self._drop_gone(queue, tasks, me)
        if not tasks:
            return
        try:
            with deadlines.scope(deadlines.latest([t.deadline for t in tasks])):
                outputs, sizes = self._run_batch(queue, tasks)
        except BaseException as exc:  # delivered to every caller; never lost
            self._answering(_clients(tasks), queue.options)
            if not isinstance(exc, ServingError):
                log.exception("batch for model %s failed", queue.servable.name)
                exc = Internal(f"model '{queue.servable.name}' signature '{queue.signature_name}': batch failed: {exc}")
            if self.isolate_failures and len(tasks) > 1 and isinstance(exc, InvalidArgument):
                self._run_each(queue, tasks, me)  # one request's bad data must not fail its neighbours
                return
            for t in tasks:
                t.finish(None, exc, t is not me)
            return
        self._answering(_clients(tasks), queue.options)
        if len(tasks) == 1 and all(v.shape[0] == sizes[0] for v in outputs.values()):  # no split, no padding
            tasks[0].finish(outputs, None, tasks[0] is not me)
            return
        offset = 0
        for t, n in zip(tasks, sizes, strict=True):
            t.finish({k: v[offset : offset + n] for k, v in outputs.items()}, None, t is not me)
            offset += n

    @staticmethod
    def _drop_gone(queue: _Queue, tasks: list[_Task], me: _Task | None) -> list[_Task]:
        """The tasks whose clients still wait; the others get their error now (TF Serving's text for a task that
        timed out in the queue) and are left out of the batch."""
        live = []
        for t in tasks:
            d = t.deadline
            if d is None or not d.gone():
                live.append(t)
            elif d.cancelled:
                t.finish(None, Cancelled(f"{_where(queue.servable, queue.signature_name)}: the client cancelled "
                                         "the request while it waited in the batching queue"), t is not me)
            else:
                t.finish(None, ResourceExhausted("Run() timeout exceeded while waiting in batching queue"),
                         t is not me)
        return live

    @staticmethod
    def _run_each(queue: _Queue, tasks: list[_Task], me: _Task | None) -> None:
        """Run each request of a failed batch alone, so each gets its own outputs or error."""
        for t in tasks:
            try:
                with deadlines.scope(t.deadline):
                    outputs = queue.servable.run(queue.signature_name, t.inputs, queue.output_filter)
            except ServingError as exc:
                t.finish(None, exc, t is not me)
            except BaseException as exc:  # noqa: BLE001 - delivered to its caller, never lost
                log.exception("request for model %s failed", queue.servable.name)
                t.finish(None, Internal(f"model '{queue.servable.name}' signature '{queue.signature_name}': "
                                        f"{type(exc).__name__}: {exc}"), t is not me)
            else:
                t.finish(outputs, None, t is not me)

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
            self.metrics.observe_batch(queue.servable.name, padded, [now - t.enqueued for t in tasks],
                                       real_size=total, thread_pool_name=opts.thread_pool_name)
        for t in tasks:
            t.queued, t.batch = now - t.enqueued, padded
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


class _Arrival:
    """``Batcher.arrival()``: counts the calling thread's request as on its way until its ``run`` queues it."""

    __slots__ = ("_batcher", "_mine")

    def __init__(self, batcher: Batcher) -> None:
        self._batcher = batcher
        self._mine = False

    def __enter__(self) -> None:
        if not getattr(self._batcher._local, "arriving", False):  # nested: the outer one counts
            self._batcher._begin_arrival()
            self._mine = True

    def __exit__(self, *exc: object) -> None:
        if self._mine and self._batcher._local.arriving:  # never queued (refused, unbatched, failed to decode)
            self._batcher._end_arrival()


def _clients(tasks: list[_Task]) -> int:
    """Clients a batch answers: its whole requests (a split request's client is answered once all its parts ran)."""
    return sum(t.whole for t in tasks)


def _check_size(servable: Any, signature_name: str, size: int, opts: BatchOptions) -> None:
    """TF Serving's check, before anything is queued: a request may not exceed ``max_batch_size``."""
    if size > opts.max_batch_size:
        raise InvalidArgument(f"{_where(servable, signature_name)}: Task size {size} is larger than maximum "
                              f"input batch size {opts.max_batch_size} (max_batch_size); send smaller requests"
                              + ("" if opts.enable_large_batch_splitting
                                 else " or enable enable_large_batch_splitting"))


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
