"""Aspired-versions Manager: loads what the Source asks for, as the policy says, and hands out handles.

As TF Serving's AspiredVersionsManager + BasicManager:

- A Source (both are built by :class:`tfsctl.core.server_core.ServerCore`, one layer up) calls
  :meth:`Manager.set_aspired_versions`.
  After every change the Manager asks the pure policy (:func:`tfsctl.core.policy.next_action`) what to do next
  and does it: load on the load pool (``num_load_threads``), unload on the unload pool (``num_unload_threads``).
  Availability-preserving: a new version is loaded before a non-aspired one is unloaded.
- Each version goes START -> LOADING -> AVAILABLE -> UNLOADING -> END (a failed load: LOADING -> END with its
  error); every change is published on :attr:`Manager.events` (:mod:`tfsctl.core.events`). Status reports,
  readiness, metrics and reload waiters all read or subscribe to those events; nothing polls.
- A failed load is retried ``max_num_load_retries`` times, ``load_retry_interval_seconds`` apart (a version being
  copied in gets time to finish). After that the version stays in END and is not retried while it stays on disk
  unchanged; it is tried again when it disappears and comes back, or, with the opt-in
  ``retry_failed_versions_on_change``, when its directory changes (new mtime/inode).
- :meth:`Manager.handle` holds a reference on a version for a ``with`` block (TF Serving's ServableHandle); an
  UNLOADING version takes no new handles and is unloaded once the last one is released.
- The loader factory is injected (``loader_factory(name, version, path) -> Loader``).

The Manager knows the served models, not the config file nor the version labels (ServerCore holds both and
resolves a label to a version before it asks for a handle).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tfsctl.core import storage
from tfsctl.core.events import (
    AVAILABLE,
    END,
    LOADING,
    START,
    UNLOADING,
    EventBus,
    ServableStateEvent,
    ServableStateMonitor,
    VersionState,
    state_name,
)
from tfsctl.core.loader import Loader
from tfsctl.core.policy import Action, Harness, VersionSnapshot, next_action
from tfsctl.core.servable import Servable
from tfsctl.core.servable_request import has_available_version, unknown_label
from tfsctl.errors import NotFound, ServingError, Unavailable

log = logging.getLogger("tfsctl.core.manager")

LoaderFactory = Callable[[str, int, Path], Loader]


def _dir_stamp(path: Path) -> tuple | None:
    """Identity of a version directory's top level, to notice that a failed version was replaced or completed."""
    if storage.is_remote(path):  # cloud: no directory stamp on object storage; its last stable listing instead
        return storage.version_stamp(path)
    try:
        st = os.stat(path)
        names = tuple(sorted(os.listdir(path)))
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, names)


class _Version:
    """Book-keeping for one version of one model (guarded by the Manager's lock)."""

    __slots__ = ("version", "path", "harness", "state", "error", "servable", "loader", "refs", "aspired", "cancel",
                 "stamp", "unload_pending", "unload_started")

    def __init__(self, version: int, path: Path) -> None:
        self.version = version
        self.path = path
        self.harness = Harness.NEW
        self.state: int | None = None  # last published ModelVersionStatus.State
        self.error = ""
        self.servable: Servable | None = None
        self.loader: Loader | None = None
        self.refs = 0
        self.aspired = True
        self.cancel = threading.Event()  # set: stop retrying this load
        self.stamp = _dir_stamp(path)
        self.unload_pending = False  # UNLOADING, waiting for the last handle
        self.unload_started = 0.0


class _Model:
    __slots__ = ("name", "versions", "removed")

    def __init__(self, name: str) -> None:
        self.name = name
        self.versions: dict[int, _Version] = {}
        self.removed = False


class _Handle:
    """What :meth:`Manager.handle` returns: acquires on enter, releases on exit."""

    __slots__ = ("_manager", "_name", "_version", "_label", "_held")

    def __init__(self, manager: Manager, name: str, version: int | None, label: str | None) -> None:
        self._manager, self._name, self._version, self._label = manager, name, version, label
        self._held: tuple[_Model, _Version] | None = None

    def __enter__(self) -> Servable:
        self._held = self._manager._acquire(self._name, self._version, self._label)
        return self._held[1].servable  # type: ignore[return-value]

    def __exit__(self, *_exc: object) -> None:
        held, self._held = self._held, None
        if held is not None:
            self._manager._release(*held)


class Manager:
    """Owns the served models' versions: loads, unloads, handles and their state events."""

    def __init__(
        self,
        *,
        event_bus: EventBus | None = None,
        loader_factory: LoaderFactory | None = None,
        num_load_threads: int = 4,
        num_unload_threads: int = 1,
        max_num_load_retries: int = 5,
        load_retry_interval_seconds: float = 1.0,
        unload_timeout_seconds: float = 60.0,
        retry_failed_versions_on_change: bool = False,
    ) -> None:
        """The load policy's settings, the loader factory, the pools' sizes and the bus state events go on.

        ``unload_timeout_seconds`` bounds how long :meth:`stop` waits for held handles before unloading anyway.
        ``retry_failed_versions_on_change`` (tfsctl's opt-in) loads a version that failed every retry again once
        its directory changes, so a half-copied version serves when the copy completes; TF Serving (the default)
        retries it only after it leaves and comes back.
        """
        self.retry_failed_versions_on_change = retry_failed_versions_on_change
        self.loader_factory: LoaderFactory = loader_factory or Loader
        self.num_unload_threads = max(1, int(num_unload_threads))
        self.max_num_load_retries = max(0, int(max_num_load_retries))
        self.load_retry_interval_seconds = max(0.0, float(load_retry_interval_seconds))
        self.unload_timeout_seconds = unload_timeout_seconds
        self.events = event_bus or EventBus()
        self.monitor = ServableStateMonitor(self.events)  # before any event: it is what status reports read
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._models: dict[str, _Model] = {}
        self._pending_unloads: set[tuple[_Model, _Version]] = set()
        self._load_pool = ThreadPoolExecutor(max_workers=max(1, num_load_threads), thread_name_prefix="tfsctl-load")
        self._unload_pool = ThreadPoolExecutor(max_workers=self.num_unload_threads,
                                               thread_name_prefix="tfsctl-unload")
        self._stopping = threading.Event()

    # --- lifecycle ---

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` began: no new handles."""
        return self._stopping.is_set()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop retrying, unload every version (in-flight handles get up to ``timeout`` s)."""
        self._stopping.set()
        with self._lock:
            for model in self._models.values():
                for rec in model.versions.values():
                    rec.aspired = False
                    rec.cancel.set()
                self._manage(model)
        self._load_pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            for model in self._models.values():
                for rec in model.versions.values():
                    if rec.harness is Harness.LOADING:  # queued loads that the shutdown cancelled
                        rec.harness = Harness.DISABLED
                        self._publish(model, rec, END, error="the server is shutting down")
            wait = min(timeout, self.unload_timeout_seconds)
            if not self._changed.wait_for(lambda: not self._pending_unloads, timeout=max(0.0, wait)):
                for model, rec in list(self._pending_unloads):
                    log.warning("model %s version %d: unloading with %d handle(s) still held",
                                model.name, rec.version, rec.refs)
                    self._submit_unload(model, rec)
        self._unload_pool.shutdown(wait=True)

    # --- the served models (ServerCore calls these) ---

    def configure(self, models: Iterable[str]) -> None:
        """Serve exactly ``models`` (names): new names are added, absent ones removed.

        A removed model takes no new handles at once; its versions are unaspired, so the policy unloads them
        once in-flight handles are released. Its states stay in :attr:`monitor` (END) for status reports.
        """
        models = set(models)
        with self._lock:
            for name in [n for n in self._models if n not in models]:
                model = self._models.pop(name)
                model.removed = True
                for rec in model.versions.values():
                    rec.aspired = False
                    rec.cancel.set()
                self._manage(model)
            for name in models:
                if name not in self._models:
                    self._models[name] = _Model(name)
            self._changed.notify_all()

    def set_aspired_versions(self, name: str, versions: Mapping[int, Path]) -> None:
        """The Source's view of which versions of ``name`` should be served now (TF Serving's callback)."""
        with self._lock:
            model = self._models.get(name)
            if model is None or self._stopping.is_set():
                return
            rec: _Version | None
            for v, rec in model.versions.items():
                was_aspired, rec.aspired = rec.aspired, v in versions
                if not rec.aspired and rec.harness is Harness.LOADING:
                    rec.cancel.set()  # stop retrying a version that left the disk or the policy
                elif rec.aspired and not was_aspired and rec.harness is Harness.LOADING:
                    rec.cancel.clear()
            for v, path in versions.items():
                rec = model.versions.get(v)
                if rec is not None and (
                    rec.harness is Harness.DISABLED
                    or (rec.harness is Harness.ERROR and self.retry_failed_versions_on_change
                        and _dir_stamp(Path(path)) != rec.stamp)
                ):
                    rec = None  # unloaded earlier and came back, or (opt-in) its directory changed since it failed
                if rec is None:
                    rec = model.versions[v] = _Version(int(v), Path(path))
                    self._publish(model, rec, START)
            self._manage(model)

    # --- queries ---

    def model_names(self) -> list[str]:
        """The models being served (configured now), sorted."""
        with self._lock:
            return sorted(self._models)

    def version_states(self, name: str) -> list[VersionState]:
        """Every known version of ``name`` (ascending), also after the model was removed (then in END).

        NotFound only for a model that is not configured and was never seen.
        """
        states = self.monitor.version_states(name)
        if not states:
            self._model(name)
        return states

    def model_status(self, name: str, version: int | None = None) -> list[VersionState]:
        """GetModelStatus as TF Serving's get_model_status_impl answers it: newest first.

        Reads the state monitor, so a model removed by a reload reports its versions in END. NotFound "Could
        not find any versions of model M" / "Could not find version V of model M" otherwise. (TF Serving
        ignores a version label here: the label's model reports all its versions.)
        """
        if version is not None:
            state = self.monitor.state(name, int(version))
            if state is None:
                raise NotFound(f"Could not find version {version} of model {name}")
            return [state]
        states = self.monitor.version_states(name)
        if not states:
            raise NotFound(f"Could not find any versions of model {name}")
        return states[::-1]

    def is_ready(self) -> bool:
        """True when every configured model has an AVAILABLE version."""
        with self._lock:
            return all(has_available_version(r.state for r in m.versions.values()) for m in self._models.values())

    def wait_until_ready(self, timeout: float) -> bool:
        """Block (on state events, no polling) until :meth:`is_ready`; False on timeout."""
        with self._changed:
            return self._changed.wait_for(self.is_ready, timeout=max(0.0, timeout))

    def wait_for_state(self, name: str, version: int, states: set[int] | frozenset[int], timeout: float) -> bool:
        """Block until ``version`` of ``name`` is in one of ``states`` (False on timeout)."""
        return self.monitor.wait_for_state(name, version, states, timeout)

    # --- handles ---

    def handle(self, name: str, version: int | None = None, *, via_label: str | None = None) -> _Handle:
        """The Servable for a request, held (not unloadable) for the ``with`` block: TF Serving's ServableHandle.

        The version is resolved and held when the ``with`` block is entered (a plain class, not a generator
        context manager: this runs on every request)."""
        return _Handle(self, name, version, via_label)

    def _release(self, model: _Model, rec: _Version) -> None:
        with self._lock:
            rec.refs -= 1
            if rec.refs == 0 and rec.unload_pending:
                self._submit_unload(model, rec)

    def peek(self, name: str, version: int | None = None, *, via_label: str | None = None) -> Servable | None:
        """The Servable a request for (name, version) would get now, not held; None where it would fail.
        For decisions about how to run a request, never for running it (it may unload at any moment)."""
        try:
            with self._lock:
                return self._resolve(name, version, via_label)[1].servable
        except ServingError:
            return None

    def _acquire(self, name: str, version: int | None, label: str | None) -> tuple[_Model, _Version]:
        with self._lock:
            model, rec = self._resolve(name, version, label)
            rec.refs += 1
            return model, rec

    def _resolve(self, name: str, version: int | None, label: str | None) -> tuple[_Model, _Version]:
        """TF Serving's ServableHandle lookup (caller holds ``_lock``): latest or a version. ``label``: the
        version label ServerCore resolved ``version`` from, named in the error; a label it could not resolve
        (the model was not configured there yet) is an unknown label."""
        if self._stopping.is_set():
            raise Unavailable(f"model '{name}': the server is shutting down")
        model = self._model(name)
        if label:
            if version is None:
                raise unknown_label(name, label, {})
            rec = model.versions.get(version)
            if rec is None or rec.harness is not Harness.READY:
                raise NotFound(
                    f"Servable not found for request: Specific({name}, {version}) "
                    f"(label '{label}' points to version {version}, which is not AVAILABLE)"
                )
        elif version is not None:
            rec = model.versions.get(int(version))
            if rec is None or rec.harness is not Harness.READY:
                state = state_name(rec.state) if rec is not None and rec.state is not None else "not found"
                raise NotFound(f"Servable not found for request: Specific({name}, {version}) ({state})")
        else:
            ready = [r for r in model.versions.values() if r.harness is Harness.READY]
            if not ready:
                errors = [f"version {s.version}: {s.error}" for s in self.monitor.version_states(name) if s.error]
                detail = f"; load errors: {'; '.join(errors)}" if errors else ""
                # TF Serving's ServableHandle lookup: NOT_FOUND while no version is AVAILABLE
                raise NotFound(f"Servable not found for request: Latest({name}) (no version is AVAILABLE yet"
                               f"{detail})")
            rec = max(ready, key=lambda r: r.version)
        return model, rec

    def _model(self, name: str) -> _Model:
        model = self._models.get(name)
        if model is None:
            raise NotFound(f"Servable not found for request: Latest({name}) (no model named '{name}')")
        return model

    # --- applying the policy (caller holds the lock) ---

    def _manage(self, model: _Model) -> None:
        """Apply the policy's actions until it has none, then forget versions that ended and are not aspired."""
        while True:
            action = next_action(VersionSnapshot(v, r.harness, r.aspired) for v, r in model.versions.items())
            if action is None:
                break
            rec = model.versions[action.version]
            if action.action is Action.LOAD:
                self._start_load(model, rec)
            else:
                self._start_unload(model, rec)
        for v in [v for v, r in model.versions.items()
                  if not r.aspired and r.harness in (Harness.DISABLED, Harness.ERROR)]:
            del model.versions[v]  # its END state stays in the monitor
        self._changed.notify_all()

    def _publish(self, model: _Model, rec: _Version, state: int, *, error: str = "", seconds: float = 0.0) -> None:
        previous, rec.state, rec.error = rec.state, state, error
        self.events.publish(ServableStateEvent(model.name, rec.version, state, error, previous, seconds))
        self._changed.notify_all()

    # --- loading ---

    def _start_load(self, model: _Model, rec: _Version) -> None:
        rec.harness = Harness.LOADING
        try:
            self._load_pool.submit(self._load, model, rec)
        except RuntimeError:  # pool shut down: the manager is stopping
            rec.harness = Harness.DISABLED
            self._publish(model, rec, END, error="the server is shutting down")

    def _load(self, model: _Model, rec: _Version) -> None:
        with self._lock:
            if rec.cancel.is_set() or not rec.aspired:
                rec.harness = Harness.DISABLED
                self._publish(model, rec, END)
                self._manage(model)
                return
            self._publish(model, rec, LOADING)
        started = time.monotonic()
        servable: Servable | None = None
        loader: Loader | None = None
        error = ""
        attempts = 0
        for attempt in range(self.max_num_load_retries + 1):
            if attempt:
                if rec.cancel.wait(self.load_retry_interval_seconds) or self._stopping.is_set():
                    break
                log.info("retrying load of model %s version %d (attempt %d)", model.name, rec.version, attempt + 1)
            attempts += 1
            rec.stamp = _dir_stamp(rec.path)
            try:
                loader = self.loader_factory(model.name, rec.version, rec.path)
                servable = loader.load()
                break
            except Exception as e:  # noqa: BLE001 - a load error of any kind is reported, never raised
                error = str(e) or type(e).__name__
                loader = None
                log.warning("load of model %s version %d failed: %s", model.name, rec.version, error)
        seconds = time.monotonic() - started
        with self._lock:
            if servable is None:
                cut_short = attempts <= self.max_num_load_retries
                rec.harness = Harness.DISABLED if cut_short else Harness.ERROR  # cut short: tried again if aspired
                if error and cut_short:
                    error += " (load cancelled before all retries ran)"
                self._publish(model, rec, END, error=error, seconds=seconds)
            else:
                rec.servable, rec.loader, rec.harness = servable, loader, Harness.READY
                log.info("model %s version %d is AVAILABLE (%.2fs)", model.name, rec.version, seconds)
                self._publish(model, rec, AVAILABLE, seconds=seconds)
                if self._stopping.is_set() or model.removed:
                    rec.aspired = False
            self._manage(model)

    # --- unloading ---

    def _start_unload(self, model: _Model, rec: _Version) -> None:
        """UNLOADING now (no new handles); the unload itself runs once the last handle is released."""
        rec.harness = Harness.UNLOADING
        rec.unload_started = time.monotonic()
        self._publish(model, rec, UNLOADING)
        if rec.refs == 0:
            self._submit_unload(model, rec)
        else:
            rec.unload_pending = True
            self._pending_unloads.add((model, rec))

    def _submit_unload(self, model: _Model, rec: _Version) -> None:
        rec.unload_pending = False
        self._pending_unloads.discard((model, rec))
        self._changed.notify_all()
        try:
            self._unload_pool.submit(self._unload, model, rec)
        except RuntimeError:  # the pool is gone (after stop): unload on this thread
            self._unload(model, rec)

    def _unload(self, model: _Model, rec: _Version) -> None:
        with self._lock:
            loader, rec.loader, rec.servable = rec.loader, None, None
        if loader is not None:
            try:
                loader.unload()
            except Exception:  # noqa: BLE001 - a failing unload must not stop the others
                log.exception("unload of model %s version %d failed", model.name, rec.version)
        del loader
        with self._lock:
            rec.harness = Harness.DISABLED
            log.info("model %s version %d unloaded", model.name, rec.version)
            self._publish(model, rec, END, seconds=time.monotonic() - rec.unload_started)
            self._manage(model)


__all__ = [
    "AVAILABLE", "END", "LOADING", "START", "UNLOADING", "LoaderFactory", "Manager", "VersionState", "state_name",
]
