"""ServerCore: the wiring ModelServerConfig -> file-system Source -> Manager, config reloads and version labels.

As TF Serving's ServerCore (model_servers/server_core.cc):

- :meth:`ServerCore.apply_config` validates the config (nothing changes when it is bad), checks the version labels,
  (a config with no ``model_config_list`` set is no change at first and FAILED_PRECONDITION later, as TF Serving),
  hands the Manager the models and labels to serve, and points the Source at their base paths and policies.
  Models missing from the new config are removed: no new requests, their versions unload once in-flight ones
  finish, and their states stay reported (END).
- Labels (UpdateModelVersionLabelMap): a label must point to an AVAILABLE version, else FAILED_PRECONDITION
  "... which is not currently available for inference". With ``allow_version_labels_for_unavailable_models`` a
  label may point anywhere, except that an existing label may only move to an AVAILABLE version. So labels in
  the config a server starts with need that flag, as in tensorflow_model_server.
- :meth:`ServerCore.reload_config` then waits for the models it added (WaitUntilModelsAvailable): a model whose
  every version failed is UNKNOWN "... did not become available"; one still loading after the wait is not an
  error (its state shows in GetModelStatus).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from tensorflow_serving.config import model_server_config_pb2

from tfsctl.core.config import validate_model_server_config
from tfsctl.core.events import AVAILABLE, END
from tfsctl.core.manager import Manager
from tfsctl.core.servable_request import has_available_version
from tfsctl.core.source import FileSystemSource, VersionPolicy
from tfsctl.errors import ConfigError, FailedPrecondition, InvalidArgument, Unknown


class ServerCore:
    """One Manager fed by one file-system Source, configured by a ModelServerConfig."""

    def __init__(
        self,
        manager: Manager,
        *,
        poll_wait_seconds: float | None = None,
        servable_versions_always_present: bool = False,
        allow_version_labels_for_unavailable_models: bool | None = None,
    ) -> None:
        """``None`` settings are taken from the Manager (its constructor carries the flags for older callers)."""
        self.manager = manager
        self.allow_version_labels_for_unavailable_models = (
            manager.allow_version_labels_for_unavailable_models
            if allow_version_labels_for_unavailable_models is None
            else allow_version_labels_for_unavailable_models
        )
        poll = manager.poll_wait_seconds if poll_wait_seconds is None else poll_wait_seconds
        self.source = FileSystemSource(manager, poll, servable_versions_always_present=servable_versions_always_present)
        self._config = model_server_config_pb2.ModelServerConfig()
        self._lock = threading.Lock()  # one config change at a time
        self._started = False
        # tfsctl.core.request_log.RequestLogger: reconfigured with every config applied (TF's ServerRequestLogger)
        self.request_logger: Any = None
        manager.attach(self)

    def start(self) -> None:
        """Poll every base path now, then every ``poll_wait_seconds``."""
        self._started = True
        self.source.start()

    def stop(self) -> None:
        self.source.stop()

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
            self.manager.configure(labels)
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
        current = self.manager.labels(name) if name in self.manager.model_names() else {}
        for label, version in sorted(mc.version_labels.items()):
            moved = label in current and current[label] != version
            if self.allow_version_labels_for_unavailable_models and not moved:
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


__all__ = ["ServerCore"]
