"""Aspired-versions Manager: loads what the Source asks for, preserving availability, and hands out handles.

The rules, as TF Serving's AspiredVersionsManager with the availability-preserving policy:

- Each version goes START -> LOADING -> AVAILABLE -> UNLOADING -> END (``ModelVersionStatus.State`` values).
  A failed load ends in END with its error kept in :meth:`Manager.version_states`.
- A new version is loaded before an old one is unloaded: a version that is no longer aspired is unloaded only
  once some aspired version of the model is AVAILABLE. So a corrupt new version (it fails every retry) and a base
  path that went empty or vanished both leave the last AVAILABLE version serving.
- A failed load is retried ``max_num_load_retries`` times, ``load_retry_interval_seconds`` apart (a version being
  copied in gets time to finish). After that the version stays in END and is not retried while it stays on disk
  unchanged; it is tried again when its directory changes (new mtime/inode) or disappears and comes back.
- :meth:`Manager.handle` holds a reference count on a version for a ``with`` block; unloading waits for it, so an
  in-flight request finishes on the version it started on.
- Version labels come from the config. A label may point to a version that is not AVAILABLE only while the label
  is new (not yet assigned, e.g. at start-up); moving an existing label to a version that is not AVAILABLE is
  rejected, as TF Serving does with ``allow_version_labels_for_unavailable_models``.
- Removing a model from the config unloads all of its versions (after in-flight requests finish). Changing a
  model's base_path does not reload versions that are already AVAILABLE under the same number.

Loads run on a small thread pool so one slow model does not hold up the others.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.config import model_server_config_pb2

from tfsctl.core import storage  # cloud
from tfsctl.core.config import validate_model_server_config
from tfsctl.core.loader import Loader
from tfsctl.core.servable import Servable
from tfsctl.core.source import FileSystemSource, VersionPolicy
from tfsctl.errors import ConfigError, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from tfsctl.serving.metrics import Metrics

log = logging.getLogger("tfsctl.core.manager")

_State = get_model_status_pb2.ModelVersionStatus.State
START = _State.Value("START")
LOADING = _State.Value("LOADING")
AVAILABLE = _State.Value("AVAILABLE")
UNLOADING = _State.Value("UNLOADING")
END = _State.Value("END")
_MAX_ENDED_RECORDS = 32  # ended versions kept per model for status reports


def state_name(state: int) -> str:
    """``AVAILABLE`` style name of a ModelVersionStatus.State value."""
    return _State.Name(state)


@dataclass(frozen=True)
class VersionState:
    """One version's state for status reports; ``error`` is the load error ("" when none)."""

    version: int
    state: int
    error: str = ""

    @property
    def state_name(self) -> str:
        return state_name(self.state)


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

    __slots__ = ("version", "path", "state", "error", "servable", "loader", "refs", "aspired", "cancelled", "stamp",
                 "unload_requested")

    def __init__(self, version: int, path: Path) -> None:
        self.version = version
        self.path = path
        self.state = START
        self.error = ""
        self.servable: Servable | None = None
        self.loader: Loader | None = None
        self.refs = 0
        self.aspired = True
        self.cancelled = False
        self.unload_requested = False
        self.stamp = _dir_stamp(path)


class _Model:
    __slots__ = ("name", "config", "versions", "labels", "removed")

    def __init__(self, config: model_server_config_pb2.ModelConfig) -> None:
        self.name = config.name
        self.config = config
        self.versions: dict[int, _Version] = {}
        self.labels: dict[str, int] = dict(config.version_labels)
        self.removed = False


class Manager:
    """Owns the models of one server: their Source, loads, unloads, labels and handles."""

    def __init__(
        self,
        metrics: Metrics | None = None,
        *,
        poll_wait_seconds: float = 1.0,
        max_num_load_retries: int = 5,
        load_retry_interval_seconds: float = 1.0,
        num_load_threads: int = 4,
        unload_timeout_seconds: float = 60.0,
        freeze_gc: bool = True,
        loader_factory: Callable[[str, int, Path], Loader] | None = None,
        allow_version_labels_for_unavailable_models: bool = False,
        num_unload_threads: int = 1,
    ) -> None:
        self.loader_factory: Callable[[str, int, Path], Loader] = loader_factory or Loader
        self.allow_version_labels_for_unavailable_models = allow_version_labels_for_unavailable_models
        self.num_unload_threads = max(1, int(num_unload_threads))
        self.metrics = metrics
        self.max_num_load_retries = max(0, int(max_num_load_retries))
        self.load_retry_interval_seconds = max(0.0, float(load_retry_interval_seconds))
        self.unload_timeout_seconds = unload_timeout_seconds
        self.freeze_gc = freeze_gc
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._models: dict[str, _Model] = {}
        self._config = model_server_config_pb2.ModelServerConfig()
        self._pool = ThreadPoolExecutor(max_workers=max(1, num_load_threads), thread_name_prefix="tfsctl-load")
        self._stopping = threading.Event()
        self._started = False
        self._background: set[threading.Thread] = set()
        self.source = FileSystemSource(self, poll_wait_seconds)

    # --- lifecycle ---

    def start(self) -> None:
        """Start polling the base paths of the configured models (loads begin at once).

        With ``freeze_gc`` the objects alive now (TensorFlow's own module state, mostly) are moved out of the
        garbage collector's reach first: the full collection each unload runs then scans only what models
        created, a few milliseconds instead of a GIL-holding pause of a few hundred.
        """
        if self.freeze_gc:
            gc.collect()
            gc.freeze()
        self._started = True
        self.source.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop polling, stop retrying, unload every version (waiting up to ``timeout`` for in-flight handles)."""
        self._stopping.set()
        self.source.stop()
        with self._lock:
            for model in self._models.values():
                for rec in model.versions.values():
                    rec.cancelled = True
                    if rec.state == AVAILABLE:
                        self._begin_unload(model, rec)
            self._changed.notify_all()
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            for model in self._models.values():
                for rec in model.versions.values():
                    if rec.state in (START, LOADING):  # queued loads that the shutdown cancelled
                        rec.state = END
            self._changed.notify_all()
        deadline = time.monotonic() + timeout
        with self._lock:
            pending = list(self._background)
        for t in pending:
            t.join(max(0.0, deadline - time.monotonic()))

    # --- configuration ---

    def apply_config(self, config: model_server_config_pb2.ModelServerConfig) -> None:
        """Add, change and remove models to match ``config``; InvalidArgument (nothing changed) if it is bad."""
        try:
            validate_model_server_config(config, "model config")
        except ConfigError as e:
            raise InvalidArgument(str(e)) from None
        wanted = {mc.name: mc for mc in config.model_config_list.config}
        with self._lock:
            for name, mc in wanted.items():
                model = self._models.get(name)
                if model is None:
                    continue
                for label, version in mc.version_labels.items():
                    if model.labels.get(label) == version:
                        continue
                    rec = model.versions.get(version)
                    if label in model.labels and (rec is None or rec.state != AVAILABLE):
                        raise FailedPrecondition(  # TF Serving's code for "not currently available"
                            f"model '{name}': cannot move label '{label}' to version {version}, which is not "
                            f"AVAILABLE (a label may point to a version that is not loaded only when it is new)"
                        )
            for name in list(self._models):
                if name not in wanted:
                    self._remove_model(self._models.pop(name))
            for name, mc in wanted.items():
                copy = model_server_config_pb2.ModelConfig()
                copy.CopyFrom(mc)
                model = self._models.get(name)
                if model is None:
                    self._models[name] = _Model(copy)
                else:
                    model.config = copy
                    model.labels = dict(copy.version_labels)
            self._config = model_server_config_pb2.ModelServerConfig()
            self._config.CopyFrom(config)
            watched = {
                name: (mc.base_path, VersionPolicy.from_proto(mc.model_version_policy)) for name, mc in wanted.items()
            }
            self._changed.notify_all()
        # Polling outside the lock: the Source calls back into set_aspired_versions.
        self.source.set_models(watched, poll=self._started)

    def config(self) -> model_server_config_pb2.ModelServerConfig:
        """A copy of the config in force."""
        with self._lock:
            copy = model_server_config_pb2.ModelServerConfig()
            copy.CopyFrom(self._config)
            return copy

    # --- Source target ---

    def set_aspired_versions(self, name: str, versions: dict[int, Path]) -> None:
        """The Source's view of which versions of ``name`` should be served now."""
        with self._lock:
            model = self._models.get(name)
            if model is None or model.removed or self._stopping.is_set():
                return
            was_aspired = {v: r.aspired for v, r in model.versions.items()}
            for v, rec in model.versions.items():
                rec.aspired = v in versions
                if not rec.aspired and rec.state in (START, LOADING):
                    rec.cancelled = True  # stop retrying a version that left the disk or the policy
            for v, path in versions.items():
                rec = model.versions.get(v)
                if rec is not None:
                    if rec.state == END and (
                        not rec.error or not was_aspired[v] or _dir_stamp(path) != rec.stamp
                    ):
                        rec = None  # unloaded earlier, came back, or its directory changed since it failed: retry
                    elif rec.state in (START, LOADING) and rec.cancelled:
                        rec.cancelled = False
                if rec is None:
                    rec = _Version(v, Path(path))
                    model.versions[v] = rec
                    self._schedule_load(model, rec)
            self._reconcile(model)

    # --- queries ---

    def model_names(self) -> list[str]:
        with self._lock:
            return sorted(self._models)

    def version_states(self, name: str) -> list[VersionState]:
        """Every known version of ``name`` (ascending); NotFound for an unknown model."""
        with self._lock:
            model = self._model(name)
            return [VersionState(v, r.state, r.error) for v, r in sorted(model.versions.items())]

    def labels(self, name: str) -> dict[str, int]:
        with self._lock:
            return dict(self._model(name).labels)

    def available_versions(self, name: str) -> list[int]:
        with self._lock:
            return sorted(v for v, r in self._model(name).versions.items() if r.state == AVAILABLE)

    def is_ready(self) -> bool:
        """True when every configured model has an AVAILABLE version."""
        with self._lock:
            return all(any(r.state == AVAILABLE for r in m.versions.values()) for m in self._models.values())

    def wait_until_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not self.is_ready():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, 0.5))
            return True

    def wait_for_state(self, name: str, version: int, states: set[int] | frozenset[int], timeout: float) -> bool:
        """Block until ``version`` of ``name`` is in one of ``states`` (False on timeout)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                model = self._models.get(name)
                rec = model.versions.get(version) if model else None
                if rec is not None and rec.state in states:
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, 0.5))

    # --- handles ---

    @contextlib.contextmanager
    def handle(self, name: str, version: int | None = None, label: str | None = None) -> Iterator[Servable]:
        """The Servable for a request, held (not unloadable) for the ``with`` block: TF Serving's ServableHandle."""
        rec = self._acquire(name, version, label)
        try:
            yield rec.servable  # type: ignore[misc]
        finally:
            with self._lock:
                rec.refs -= 1
                if rec.refs == 0:
                    self._changed.notify_all()

    def _acquire(self, name: str, version: int | None, label: str | None) -> _Version:
        with self._lock:
            if self._stopping.is_set():
                raise Unavailable(f"model '{name}': the server is shutting down")
            model = self._model(name)
            if version is not None and label:
                raise InvalidArgument(f"model '{name}': give a version or a version label, not both")
            if label:
                if label not in model.labels:  # TF Serving: "Unrecognized servable version label", INVALID_ARGUMENT
                    known = ", ".join(sorted(model.labels)) or "none"
                    raise InvalidArgument(f"model '{name}': unknown version label '{label}' (labels: {known})")
                version = model.labels[label]
                rec = model.versions.get(version)
                if rec is None or rec.state != AVAILABLE:
                    raise NotFound(
                        f"Servable not found for request: Specific({name}, {version}) "
                        f"(label '{label}' points to version {version}, which is not AVAILABLE)"
                    )
            elif version is not None:
                rec = model.versions.get(int(version))
                if rec is None or rec.state != AVAILABLE:
                    state = state_name(rec.state) if rec is not None else "not found"
                    raise NotFound(f"Servable not found for request: Specific({name}, {version}) ({state})")
            else:
                ready = [r for r in model.versions.values() if r.state == AVAILABLE]
                if not ready:
                    errors = [f"version {r.version}: {r.error}" for r in model.versions.values() if r.error]
                    detail = f"; load errors: {'; '.join(errors)}" if errors else ""
                    raise Unavailable(f"model '{name}' has no AVAILABLE version yet{detail}")
                rec = max(ready, key=lambda r: r.version)
            rec.refs += 1
            return rec

    def _model(self, name: str) -> _Model:
        model = self._models.get(name)
        if model is None:
            raise NotFound(f"Servable not found for request: Latest({name}) (no model named '{name}')")
        return model

    # --- policy (caller holds the lock) ---

    def _reconcile(self, model: _Model) -> None:
        """Unload versions that are no longer aspired, but only once an aspired version is AVAILABLE."""
        if any(r.aspired and r.state == AVAILABLE for r in model.versions.values()):
            for rec in list(model.versions.values()):
                if not rec.aspired and rec.state == AVAILABLE:
                    self._begin_unload(model, rec)
        ended = [v for v, r in model.versions.items() if r.state == END]
        for v in sorted(ended)[:-_MAX_ENDED_RECORDS] if len(ended) > _MAX_ENDED_RECORDS else []:
            del model.versions[v]
        self._changed.notify_all()

    def _remove_model(self, model: _Model) -> None:
        model.removed = True
        for rec in model.versions.values():
            rec.cancelled = True
            if rec.state == AVAILABLE:
                self._begin_unload(model, rec)
        self._changed.notify_all()

    # --- loading ---

    def _schedule_load(self, model: _Model, rec: _Version) -> None:
        rec.state = START
        try:
            self._pool.submit(self._load, model, rec)
        except RuntimeError:  # pool shut down: the manager is stopping
            rec.state, rec.error = END, "the server is shutting down"

    def _load(self, model: _Model, rec: _Version) -> None:
        started = time.monotonic()
        servable: Servable | None = None
        loader: Loader | None = None
        error = ""
        with self._lock:
            if rec.cancelled or model.removed:
                rec.state, rec.error = END, ""
                self._changed.notify_all()
                return
            rec.state = LOADING
            self._changed.notify_all()
        for attempt in range(self.max_num_load_retries + 1):
            if attempt:
                if self._stopping.wait(self.load_retry_interval_seconds) or rec.cancelled or model.removed:
                    break
                log.info("retrying load of model %s version %d (attempt %d)", model.name, rec.version, attempt + 1)
            rec.stamp = _dir_stamp(rec.path)
            loader = self.loader_factory(model.name, rec.version, rec.path)
            try:
                servable = loader.load()
                error = ""
                break
            except Exception as e:  # noqa: BLE001 - a load error of any kind is reported, never raised
                error = str(e) or type(e).__name__
                log.warning("load of model %s version %d failed: %s", model.name, rec.version, error)
        seconds = time.monotonic() - started
        with self._lock:
            if servable is None:
                cancelled = rec.cancelled or model.removed or self._stopping.is_set()
                rec.state = END
                rec.error = error
                if error and cancelled and attempt < self.max_num_load_retries:
                    rec.error += " (load cancelled before all retries ran)"
                self._observe(model.name, "load_error", seconds)
                self._reconcile(model)
                return
            rec.servable, rec.loader, rec.state, rec.error = servable, loader, AVAILABLE, ""
            log.info("model %s version %d is AVAILABLE (%.2fs)", model.name, rec.version, seconds)
            self._observe(model.name, "load", seconds)
            if model.removed or self._stopping.is_set():
                self._begin_unload(model, rec)
            self._reconcile(model)

    # --- unloading ---

    def _begin_unload(self, model: _Model, rec: _Version) -> None:
        """Mark UNLOADING now (no new handles) and finish in the background once in-flight handles are released."""
        if rec.state != AVAILABLE:
            return
        rec.state = UNLOADING
        self._changed.notify_all()
        t = threading.Thread(target=self._unload, args=(model, rec), name="tfsctl-unload", daemon=True)
        self._background.add(t)
        t.start()

    def _unload(self, model: _Model, rec: _Version) -> None:
        started = time.monotonic()
        try:
            with self._changed:
                deadline = started + self.unload_timeout_seconds
                while rec.refs > 0:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        log.warning("model %s version %d: unloading with %d handle(s) still held",
                                    model.name, rec.version, rec.refs)
                        break
                    self._changed.wait(min(left, 0.5))
                loader, rec.loader = rec.loader, None
                rec.servable = None
            if loader is not None:
                loader.unload()
            with self._lock:
                rec.state = END
                self._observe(model.name, "unload", time.monotonic() - started)
                log.info("model %s version %d unloaded", model.name, rec.version)
                self._changed.notify_all()
        finally:
            with self._lock:
                self._background.discard(threading.current_thread())

    def _observe(self, name: str, event: str, seconds: float) -> None:
        if self.metrics is not None:
            try:
                self.metrics.observe_model_event(name, event, seconds)
            except Exception:  # noqa: BLE001 - metrics must never break serving
                log.exception("metrics hook failed")


def state_counts(states: list[VersionState]) -> dict[str, int]:
    """Count of versions by state name (for logs and status summaries)."""
    out: dict[str, int] = {}
    for s in states:
        out[s.state_name] = out.get(s.state_name, 0) + 1
    return out


__all__ = ["AVAILABLE", "END", "LOADING", "START", "UNLOADING", "Manager", "VersionState", "state_name"]
