"""Servable state events: the Manager publishes, metrics, health, readiness and reload waiters subscribe.

As TF Serving's ``EventBus<ServableState>`` and ``ServableStateMonitor``: every version's move through
START -> LOADING -> AVAILABLE -> UNLOADING -> END (a failed load: LOADING -> END with its error) is one
:class:`ServableStateEvent`. The core never calls upward (Prometheus, gRPC health); whoever cares subscribes.

Subscribers run synchronously on the publishing thread, in publication order, while the Manager holds its lock:
they must be quick and must not block or wait on another thread that needs the Manager. A subscriber that raises
is logged and the others still run.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tensorflow_serving.apis import get_model_status_pb2

log = logging.getLogger("tfsctl.core.events")

_State = get_model_status_pb2.ModelVersionStatus.State
START = _State.Value("START")
LOADING = _State.Value("LOADING")
AVAILABLE = _State.Value("AVAILABLE")
UNLOADING = _State.Value("UNLOADING")
END = _State.Value("END")
MAX_ENDED_PER_MODEL = 32  # ended versions the monitor remembers per model (TF Serving keeps all; we bound memory)
MAX_FORGOTTEN_MODELS = 256  # removed models whose END states are still reported


def state_name(state: int) -> str:
    """``AVAILABLE`` style name of a ModelVersionStatus.State value."""
    return _State.Name(state)


@dataclass(frozen=True)
class ServableStateEvent:
    """One state change of one version.

    ``error`` is the load error ("" when none); ``previous`` the state it left (None for START); ``seconds`` how
    long the phase that just ended took (the load for AVAILABLE or a failed END, the unload for END after
    UNLOADING), 0 otherwise.
    """

    name: str
    version: int
    state: int
    error: str = ""
    previous: int | None = None
    seconds: float = 0.0
    time: float = field(default_factory=time.time)

    @property
    def state_name(self) -> str:
        return state_name(self.state)


Subscriber = Callable[[ServableStateEvent], None]


class EventBus:
    """Synchronous publish/subscribe of :class:`ServableStateEvent` (TF Serving's EventBus)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: dict[int, Subscriber] = {}
        self._ids = itertools.count()

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call ``callback(event)`` for every later event; returns a function that unsubscribes."""
        with self._lock:
            key = next(self._ids)
            self._subscribers[key] = callback

        def unsubscribe() -> None:
            with self._lock:
                self._subscribers.pop(key, None)

        return unsubscribe

    def publish(self, event: ServableStateEvent) -> None:
        with self._lock:
            subscribers = list(self._subscribers.values())
        for callback in subscribers:
            try:
                callback(event)
            except Exception:  # noqa: BLE001 - one subscriber's bug must not break loading or the others
                log.exception("servable state subscriber %r failed on %s", callback, event)


@dataclass(frozen=True)
class VersionState:
    """One version's state for status reports; ``error`` is the load error ("" when none)."""

    version: int
    state: int
    error: str = ""

    @property
    def state_name(self) -> str:
        return state_name(self.state)


class ServableStateMonitor:
    """The last state of every version seen on a bus, kept after the version (or its model) is gone.

    This is what GetModelStatus reports (TF Serving's get_model_status_impl reads its ServableStateMonitor), so
    a model removed by a config reload still shows its versions, in END. Memory stays bounded: at most
    :data:`MAX_ENDED_PER_MODEL` ended versions per model and :data:`MAX_FORGOTTEN_MODELS` models with no live
    version. :meth:`wait_until` blocks on a Condition fed by the events, without polling.
    """

    def __init__(self, bus: EventBus) -> None:
        self._cond = threading.Condition()
        self._states: dict[str, dict[int, VersionState]] = {}
        self._seq: dict[tuple[str, int], int] = {}  # (model, version) -> sequence number of its last event
        self._counter = 0
        self._unsubscribe = bus.subscribe(self._on_event)

    def close(self) -> None:
        self._unsubscribe()

    def _on_event(self, event: ServableStateEvent) -> None:
        with self._cond:
            versions = self._states.pop(event.name, None) or {}
            self._states[event.name] = versions  # re-inserted: the most recently active model is last
            versions[event.version] = VersionState(event.version, event.state, event.error)
            self._counter += 1
            self._seq[(event.name, event.version)] = self._counter
            ended = sorted(v for v, s in versions.items() if s.state == END)
            for v in ended[: max(0, len(ended) - MAX_ENDED_PER_MODEL)]:
                del versions[v]
                self._seq.pop((event.name, v), None)
            dead = [n for n, vs in self._states.items() if all(s.state == END for s in vs.values())]
            for n in dead[: max(0, len(dead) - MAX_FORGOTTEN_MODELS)]:
                for v in self._states.pop(n):
                    self._seq.pop((n, v), None)
            self._cond.notify_all()

    def sequence(self) -> int:
        """A mark: :meth:`version_states` with ``since=mark`` then shows only what changed after it."""
        with self._cond:
            return self._counter

    def version_states(self, name: str, since: int = 0) -> list[VersionState]:
        """Every remembered version of ``name``, ascending ([] for a model never seen).

        ``since`` (a :meth:`sequence` mark) keeps only versions with an event after the mark: what ServerCore's
        reload waits on, so a model removed and added again is not judged by the END states of its past.
        """
        with self._cond:
            return [s for v, s in sorted(self._states.get(name, {}).items()) if self._seq.get((name, v), 0) > since]

    def state(self, name: str, version: int) -> VersionState | None:
        with self._cond:
            return self._states.get(name, {}).get(int(version))

    def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Block until ``predicate()`` (re-checked after each event) is true; False on timeout.

        ``predicate`` runs with the monitor's lock held: it may read the monitor, not take other locks.
        """
        with self._cond:
            return self._cond.wait_for(predicate, timeout=max(0.0, timeout))

    def wait_for_state(self, name: str, version: int, states: set[int] | frozenset[int], timeout: float) -> bool:
        """Block until ``version`` of ``name`` was last seen in one of ``states``."""
        def reached() -> bool:
            s = self._states.get(name, {}).get(int(version))
            return s is not None and s.state in states

        return self.wait_until(reached, timeout)


__all__ = [
    "AVAILABLE", "END", "LOADING", "START", "UNLOADING", "EventBus", "ServableStateEvent", "ServableStateMonitor",
    "VersionState", "state_name",
]
