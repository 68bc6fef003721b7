"""A request's deadline and cancellation, carried from the front end to the session run.

As TF Serving (``enforce_session_run_timeout``): a gRPC deadline becomes the session run's timeout
(``RunOptions.timeout_in_ms``), so TensorFlow cancels a step that outlives it, and a request whose client has gone
(deadline passed, or the call cancelled) while it waited for a thread or in a batch queue is not run at all.

The front end sets the request's :class:`Deadline` with :func:`scope` in the thread (or asyncio task) that handles
it; ``Servable.run`` reads it with :func:`current`, and the batcher keeps each queued task's and runs a batch under
the latest deadline of its live tasks (TF Serving's ``BatchingSession``). A context variable rather than a
parameter: the deadline crosses the core's layers (service, inference, batcher) without each passing it on.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

from tfsctl.errors import Cancelled, DeadlineExceeded

T = TypeVar("T")


class Deadline:
    """When a request's client stops waiting (``time.monotonic()`` seconds; None: never), and whether it left."""

    __slots__ = ("at", "cancelled")

    def __init__(self, at: float | None) -> None:
        self.at = at
        self.cancelled = False

    @classmethod
    def after(cls, seconds: float | None) -> Deadline:
        """The deadline ``seconds`` from now (None: none)."""
        return cls(None if seconds is None else time.monotonic() + seconds)

    def cancel(self) -> None:
        """The client has gone (the call was cancelled): nothing for it runs from now on."""
        self.cancelled = True

    def gone(self) -> bool:
        return self.cancelled or (self.at is not None and time.monotonic() >= self.at)

    def check(self, what: str) -> None:
        """Raise Cancelled or DeadlineExceeded when the client has gone; ``what`` names the request's work."""
        if self.cancelled:
            raise Cancelled(f"{what}: the client cancelled the request before it ran")
        if self.at is not None and time.monotonic() >= self.at:
            raise DeadlineExceeded(f"{what}: the request's deadline passed before it ran")

    def timeout_ms(self) -> int | None:
        """Milliseconds left, rounded up (at least 1); None without a deadline."""
        if self.at is None:
            return None
        return max(1, math.ceil(1000 * (self.at - time.monotonic())))


def latest(deadlines: list[Deadline | None]) -> Deadline | None:
    """The deadline a batch of these requests runs under: the latest (None if any request has none)."""
    if not deadlines or any(d is None or d.at is None for d in deadlines):
        return None
    return Deadline(max(d.at for d in deadlines))  # type: ignore[union-attr,type-var]


_CURRENT: ContextVar[Deadline | None] = ContextVar("tfsctl_deadline", default=None)


def current() -> Deadline | None:
    """The deadline of the request this thread (or task) is working for, if its front end set one."""
    return _CURRENT.get()


@contextmanager
def scope(deadline: Deadline | None) -> Iterator[None]:
    """Work in the block is for a request with ``deadline`` (None: no deadline, also over an outer one)."""
    token = _CURRENT.set(deadline)
    try:
        yield
    finally:
        _CURRENT.reset(token)


def run_with(deadline: Deadline | None, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` for a request with ``deadline``: what a front end hands to a pool thread."""
    with scope(deadline):
        return fn(*args)
