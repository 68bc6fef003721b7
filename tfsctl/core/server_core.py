"""ServerCore: builds and owns the serving core (event bus, Manager, file-system Source), the config and the labels.

As TF Serving's ServerCore (model_servers/server_core.cc): ``ServerCore(ServerCoreOptions(...))`` is
``ServerCore::Create`` without the first config (the caller applies that, then :meth:`ServerCore.start`). It is
what the server and the request core are given; the Manager below it knows nothing of it.

- :meth:`ServerCore.apply_config` validates the config (nothing changes when it is bad), checks the version labels,
  (a config with no ``model_config_list`` set is no change at first and FAILED_PRECONDITION later, as TF Serving),
  hands the Manager the models to serve, and points the Source at their base paths and policies.
  Models missing from the new config are removed: no new requests, their versions unload once in-flight ones
  finish, and their states stay reported (END).
- Labels (UpdateModelVersionLabelMap) live here: a request's label is resolved to a version here (as
  ServableRequestFromModelSpec) before the Manager is asked for that version. A label must point to an AVAILABLE
  version, else FAILED_PRECONDITION "... which is not currently available for inference". With
  ``allow_version_labels_for_unavailable_models`` a label may point anywhere, except that an existing label may
  only move to an AVAILABLE version. So labels in the config a server starts with need that flag, as in
  tensorflow_model_server.
- :meth:`ServerCore.reload_config` then waits for the models it added (WaitUntilModelsAvailable): a model whose
  every version failed is UNKNOWN "... did not become available"; one still loading after the wait is not an
  error (its state shows in GetModelStatus).
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from tensorflow_serving.config import model_server_config_pb2

from tfsctl.core.config import validate_model_server_config
from tfsctl.core.events import AVAILABLE, END, EventBus, ServableStateMonitor, VersionState
from tfsctl.core.manager import LoaderFactory, Manager
from tfsctl.core.servable import Servable
from tfsctl.core.servable_request import has_available_version, require_version_or_label, resolve_label
from tfsctl.core.source import FileSystemSource, VersionPolicy
from tfsctl.errors import ConfigError, FailedPrecondition, InvalidArgument, NotFound, ServingError, Unknown


@dataclass(frozen=True)
class ServerCoreOptions:
    """What ServerCore builds its parts from (TF Serving's ServerCore::Options; the flags map onto it)."""

    file_system_poll_wait_seconds: float = 1.0
    servable_versions_always_present: bool = False  # False: an emptied base path unloads the model (TF's default)
    allow_version_labels_for_unavailable_models: bool = False
    num_load_threads: int = 4
    num_unload_threads: int = 1
    max_num_load_retries: int = 5
    load_retry_interval_seconds: float = 1.0
    unload_timeout_seconds: float = 60.0  # how long stop() waits for held handles before unloading anyway
    # tfsctl's opt-in (TF's enable_reload_servables_with_error): a version that failed every retry loads again
    # once its directory changes, so a half-copied version serves when the copy completes
    retry_failed_versions_on_change: bool = False
    # start() moves the objects alive then (TensorFlow's module state, mostly) out of the garbage collector's
    # reach: the full collection each unload runs then scans only what models created
    freeze_gc: bool = True
    loader_factory: LoaderFactory | None = None  # None: tfsctl.core.loader.Loader
    # each gets every servable state event, subscribed before the first one (e.g. Metrics.on_servable_state)
    state_subscribers: tuple[Callable[[Any], None], ...] = ()
    # tfsctl.core.request_log.RequestLogger: reconfigured with every config applied (TF's ServerRequestLogger)
    request_logger: Any = None


class _Handle:
    """What :meth:`ServerCore.handle` returns: resolves a label to a version on enter, then holds the Manager's
    handle for that version (TF Serving: ServableRequestFromModelSpec, then GetServableHandle)."""

    __slots__ = ("_core", "_name", "_version", "_label", "_held")

    def __init__(self, core: ServerCore, name: str, version: int | None, label: str | None) -> None:
        self._core, self._name, self._version, self._label = core, name, version, label
        self._held: Any = None

    def __enter__(self) -> Servable:
        version = self._core._version_for(self._name, self._version, self._label)
        held = self._core.manager.handle(self._name, version, via_label=self._label or None)
        servable = held.__enter__()
        self._held = held
        return servable

    def __exit__(self, *exc: object) -> None:
        held, self._held = self._held, None
        if held is not None:
            held.__exit__(*exc)


class ServerCore:
    """Builds the event bus, one Manager and one file-system Source; holds the config and the version labels."""

    Options = ServerCoreOptions

    def __init__(self, options: ServerCoreOptions | None = None) -> None:
        self.options = options = options or ServerCoreOptions()
        self.events = EventBus()
        for subscriber in options.state_subscribers:
            self.events.subscribe(subscriber)
        self.manager = Manager(
            event_bus=self.events,
            loader_factory=options.loader_factory,
            num_load_threads=options.num_load_threads,
            num_unload_threads=options.num_unload_threads,
            max_num_load_retries=options.max_num_load_retries,
            load_retry_interval_seconds=options.load_retry_interval_seconds,
            unload_timeout_seconds=options.unload_timeout_seconds,
            retry_failed_versions_on_change=options.retry_failed_versions_on_change,
        )
        self.source = FileSystemSource(self.manager, options.file_system_poll_wait_seconds,
                                       servable_versions_always_present=options.servable_versions_always_present)
        self.request_logger: Any = options.request_logger
        self._config = model_server_config_pb2.ModelServerConfig()
        self._labels: dict[str, dict[str, int]] = {}  # replaced whole, never mutated: read without the lock
        self._lock = threading.Lock()  # one config change at a time
        self._started = False

    @property
    def monitor(self) -> ServableStateMonitor:
        """The state monitor every status report reads (fed by :attr:`events`)."""
        return self.manager.monitor

    def start(self) -> None:
        """Poll every base path now (loads begin at once), then every ``file_system_poll_wait_seconds``.

        With ``freeze_gc`` the objects alive now are moved out of the garbage collector's reach first: the full
        collection each unload runs then scans only what models created, a few milliseconds instead of a
        GIL-holding pause of a few hundred.
        """
        if self.options.freeze_gc:
            gc.collect()
            gc.freeze()
        self._started = True
        self.source.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop polling, then unload every version (in-flight handles get up to ``timeout`` s)."""
        self.source.stop()
        self.manager.stop(timeout)

    def config(self) -> model_server_config_pb2.ModelServerConfig:
        """A copy of the config in force (lock-free: safe to call from a state-event subscriber)."""
        current = self._config  # replaced whole, never mutated
        copy = model_server_config_pb2.ModelServerConfig()
        copy.CopyFrom(current)
        return copy

    def apply_config(self, config: model_server_config_pb2.ModelServerConfig) -> None:
        """Serve what ``config`` lists; InvalidArgument / FailedPrecondition (and no change) when it cannot be."""
        try:
            validate_model_server_config(config, "model config")
        except ConfigError as e:
            raise InvalidArgument(str(e)) from None
        if config.WhichOneof("config") is None:
            current = self._config
            if current.WhichOneof("config") is None or current == config:
                return  # TF Serving: "Taking no action for empty config"
            raise FailedPrecondition("Cannot transition to requested config. It is only legal to transition from "
                                     "one ModelConfigList to another (an empty model_config_list removes every model)")
        wanted = {mc.name: mc for mc in config.model_config_list.config}
        with self._lock:
            labels = {name: self._checked_labels(mc) for name, mc in wanted.items()}
            self._labels = {**self._labels, **labels}  # new models' labels before the Manager serves them
            self.manager.configure(labels)
            self._labels = labels
            applied = model_server_config_pb2.ModelServerConfig()
            applied.CopyFrom(config)
            self._config = applied
            if self.request_logger is not None:
                self.request_logger.configure(applied)
            watched = {
                name: (mc.base_path, VersionPolicy.from_proto(mc.model_version_policy)) for name, mc in wanted.items()
            }
            # Outside the Manager's lock: the Source calls back into set_aspired_versions.
            self.source.set_models(watched, poll=self._started)

    def _checked_labels(self, mc: model_server_config_pb2.ModelConfig) -> dict[str, int]:
        """``mc``'s labels, or FailedPrecondition naming the first one TF Serving would refuse."""
        name = mc.name
        current = self._labels.get(name, {})
        for label, version in sorted(mc.version_labels.items()):
            moved = label in current and current[label] != version
            if self.options.allow_version_labels_for_unavailable_models and not moved:
                continue
            state = self.manager.monitor.state(name, version)
            if state is None or state.state != AVAILABLE:
                raise FailedPrecondition(  # TF Serving's code and words
                    f"Request to assign label to version {version} of model {name}, which is not currently "
                    f"available for inference (label '{label}')"
                )
        return dict(mc.version_labels)

    def reload_config(self, config: model_server_config_pb2.ModelServerConfig, timeout: float) -> None:
        """Apply ``config``, then wait up to ``timeout`` s for the models it adds (see the module doc)."""
        before = set(self.manager.model_names())
        mark = self.manager.monitor.sequence()
        self.apply_config(config)
        added = [mc.name for mc in config.model_config_list.config if mc.name not in before]
        self.wait_until_models_available(added, timeout, since=mark)

    def wait_until_models_available(self, names: Iterable[str], timeout: float, *, since: int = 0) -> None:
        """Block (on state events) until each model is AVAILABLE or has failed; Unknown for those that failed.

        ``since`` is a :meth:`ServableStateMonitor.sequence` mark: only events after it count (TF Serving waits
        on a fresh monitor, so states from before a model was removed and added again do not count).
        """
        monitor = self.manager.monitor
        names = list(names)

        def failed(name: str) -> list[str]:
            states = monitor.version_states(name, since)
            if states and all(s.state == END and s.error for s in states):
                return [f"version {s.version}: {s.error}" for s in states]
            return []

        def settled() -> bool:
            return all(has_available_version(monitor.version_states(n, since)) or failed(n) for n in names)

        if names:
            monitor.wait_until(settled, max(0.0, timeout))
        for name in names:
            errors = failed(name)
            if errors and not has_available_version(monitor.version_states(name, since)):
                # TF Serving's WaitUntilModelsAvailable answers UNKNOWN "... did not become available"
                raise Unknown(f"model '{name}' did not become available: {'; '.join(errors)}")


    # --- what the request core asks (tfsctl.core.protocols.ServableManager) ---

    def labels(self, name: str) -> dict[str, int]:
        """``name``'s version labels ({label: version}); NotFound for a model that is not served."""
        labels = self._labels.get(name)
        if labels is None:
            raise NotFound(f"Servable not found for request: Latest({name}) (no model named '{name}')")
        return dict(labels)

    def _version_for(self, name: str, version: int | None, label: str | None) -> int | None:
        """The version a request names: ``label`` resolved through the labels. Where the model is not served
        (or the Manager is stopping) the Manager answers, so its errors come first as in TF Serving."""
        if not label:
            return version
        labels = self._labels.get(name)
        if labels is None or self.manager.stopping:
            return version
        require_version_or_label(name, version, label)
        return resolve_label(name, label, labels)

    def handle(self, name: str, version: int | None = None, label: str | None = None
               ) -> AbstractContextManager[Servable]:
        """The Servable for a request, held (not unloadable) for the ``with`` block: TF Serving's ServableHandle.
        Resolved when the ``with`` block is entered; without a label it is the Manager's own handle."""
        if not label:
            return self.manager.handle(name, version)
        return _Handle(self, name, version, label)

    def peek(self, name: str, version: int | None = None, label: str | None = None) -> Servable | None:
        """The Servable a request would get now, not held; None where it would fail (see Manager.peek)."""
        try:
            resolved = self._version_for(name, version, label)
        except ServingError:
            return None
        return self.manager.peek(name, resolved, via_label=label or None)

    def model_names(self) -> list[str]:
        """The models being served (configured now), sorted."""
        return self.manager.model_names()

    def version_states(self, name: str) -> list[VersionState]:
        """Every known version of ``name``, ascending (see Manager.version_states)."""
        return self.manager.version_states(name)

    def model_status(self, name: str, version: int | None = None) -> list[VersionState]:
        """GetModelStatus's answer, newest first (see Manager.model_status)."""
        return self.manager.model_status(name, version)

    def is_ready(self) -> bool:
        """True when every configured model has an AVAILABLE version."""
        return self.manager.is_ready()

    def wait_until_ready(self, timeout: float) -> bool:
        """Block (on state events) until :meth:`is_ready`; False on timeout."""
        return self.manager.wait_until_ready(timeout)


__all__ = ["ServerCore", "ServerCoreOptions"]
