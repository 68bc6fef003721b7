"""File-system Source: polls model base paths for numeric version directories and emits the aspired versions.

Like TF Serving's FileSystemStoragePathSource, a version is a directory whose name is a non-negative integer
directly under the base path (other names, such as an exporter's ``.tmp-*`` directory, are ignored). The model's
VersionPolicy picks the aspired versions among those present; the Source hands them to the Manager with
``manager.set_aspired_versions(name, {version: path})`` on every poll.

A missing base path emits nothing (TF Serving: a file-system error, no callback). A base path with no version the
policy selects emits the empty set, so the Manager unloads every version: tensorflow_model_server's default. With
``servable_versions_always_present=True`` (ServerCore's option of that name; ``tfsctl serve
--servable_versions_always_present``) nothing is emitted then, so an emptied directory never takes a model offline.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from tfsctl.core import storage  # object-storage base paths
from tfsctl.errors import StorageError
from tfsctl.savedmodel import parse_version_dir

log = logging.getLogger("tfsctl.core.source")


@dataclass(frozen=True)
class VersionPolicy:
    """Which versions on disk to serve: ``latest`` N (default 1), ``all``, or ``specific`` versions."""

    kind: str = "latest"
    num_versions: int = 1
    versions: frozenset[int] = field(default_factory=frozenset)

    @classmethod
    def from_proto(cls, policy) -> VersionPolicy:
        """From ``FileSystemStoragePathSourceConfig.ServableVersionPolicy``; unset means latest 1 (as TF Serving)."""
        choice = policy.WhichOneof("policy_choice") if policy is not None else None
        if choice == "all":
            return cls("all")
        if choice == "specific":
            return cls("specific", versions=frozenset(int(v) for v in policy.specific.versions))
        n = policy.latest.num_versions if choice == "latest" else 1
        return cls("latest", num_versions=max(1, int(n)))

    def select(self, on_disk: dict[int, Path]) -> dict[int, Path]:
        """The aspired subset of the versions found on disk."""
        if self.kind == "all":
            return dict(on_disk)
        if self.kind == "specific":
            return {v: p for v, p in on_disk.items() if v in self.versions}
        keep = sorted(on_disk, reverse=True)[: self.num_versions]
        return {v: on_disk[v] for v in keep}


def list_versions(base_path: str | Path) -> dict[int, Path]:
    """Version directories under ``base_path`` ({} when it is missing, empty or unreadable).

    A child is a version when :func:`tfsctl.savedmodel.parse_version_dir` says so (TF Serving's int64 rule):
    ``.tmp-*``, ``latest`` or a name beyond int64 are ignored. Two names for one number (``123`` and
    ``00000123``) are resolved as TF Serving's IndexChildrenByVersion does: children are taken in sorted name
    order and the later one wins; a warning names both.
    """
    if storage.is_remote(base_path):  # cloud: s3:// gs:// listed through fsspec (raises StorageError)
        return storage.list_versions(base_path)  # type: ignore[return-value]  # URLs (str), not Paths
    base_path = storage.normalize(base_path)  # cloud: file:// is a local path
    found: dict[int, Path] = {}
    try:
        with os.scandir(base_path) as it:
            entries = sorted(it, key=lambda e: e.name)
    except FileNotFoundError:
        return {}
    except OSError as e:
        log.warning("cannot list model base path %s: %s", base_path, e)
        return {}
    for entry in entries:
        version = parse_version_dir(entry.name)
        if version is None:
            continue
        try:
            if not entry.is_dir():
                continue
        except OSError:
            continue
        if version in found:
            _warn_duplicate(base_path, version, found[version].name, entry.name)
        found[version] = Path(entry.path)
    return found


_warned_duplicates: set[tuple[str, int, str, str]] = set()
_warned_lock = threading.Lock()


def _warn_duplicate(base_path: str | Path, version: int, ignored: str, chosen: str) -> None:
    """Once per (base path, version, pair of names), not on every poll."""
    key = (str(base_path), version, ignored, chosen)
    with _warned_lock:
        if key in _warned_duplicates or len(_warned_duplicates) > 10_000:
            return
        _warned_duplicates.add(key)
    log.warning("duplicate version directories under %s: version %d will be loaded from %s; %s is ignored",
                base_path, version, chosen, ignored)


class AspiredVersionsTarget(Protocol):
    def set_aspired_versions(self, name: str, versions: dict[int, Path]) -> None: ...


@dataclass(frozen=True)
class WatchedModel:
    name: str
    base_path: Path
    policy: VersionPolicy


class FileSystemSource:
    """Polls every watched base path each ``poll_wait_seconds``.

    As ``--file_system_poll_wait_seconds`` in TF Serving: 0 polls once (at start, and when a model is added or
    changed), a negative value never polls (nothing is ever loaded).
    """

    def __init__(self, target: AspiredVersionsTarget, poll_wait_seconds: float = 1.0, *,
                 servable_versions_always_present: bool = False) -> None:
        self.target = target
        self.poll_wait_seconds = float(poll_wait_seconds)
        self.servable_versions_always_present = servable_versions_always_present
        self._models: dict[str, WatchedModel] = {}
        self._lock = threading.Lock()
        self._poll_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._missing: set[tuple[str, Path]] = set()  # (model, base path) already reported as missing

    def set_models(self, models: dict[str, tuple[str | Path, VersionPolicy]], *, poll: bool = True) -> None:
        """Replace the watched models; new or changed ones are polled at once when ``poll`` is true."""
        new = {name: WatchedModel(name, Path(bp), pol) for name, (bp, pol) in models.items()}
        with self._lock:
            changed = [n for n, m in new.items() if self._models.get(n) != m]
            self._models = new
        if poll and changed and self.poll_wait_seconds >= 0:
            self.poll_once(changed)

    def poll_once(self, names: list[str] | None = None) -> None:
        """List the base paths (all, or ``names``) and emit their aspired versions."""
        with self._lock:
            models = [m for n, m in self._models.items() if names is None or n in names]
        with self._poll_lock:
            for m in models:
                if not self._report_missing(m):
                    continue
                try:  # an unreadable object store keeps what is loaded (no empty set emitted)
                    on_disk = list_versions(m.base_path)
                except StorageError as e:
                    storage.report_error(m.name, m.base_path, e)
                    continue
                aspired = m.policy.select(on_disk)
                if not aspired:
                    log.debug("no aspired versions of model %s under %s", m.name, m.base_path)
                    if self.servable_versions_always_present:
                        continue
                try:
                    self.target.set_aspired_versions(m.name, aspired)
                except Exception:  # noqa: BLE001 - one model's trouble must not stop polling the others
                    log.exception("setting aspired versions of model %s failed", m.name)

    def _report_missing(self, m: WatchedModel) -> bool:
        """True when the base path exists; warns once (not every poll) while it does not, else a typo looks idle."""
        key = (m.name, m.base_path)
        if storage.isdir(m.base_path):  # cloud: was os.path.isdir
            self._missing.discard(key)
            return True
        if key not in self._missing:
            self._missing.add(key)
            log.warning("model %s: base path %s does not exist; waiting for it to appear", m.name, m.base_path)
        return False

    def start(self) -> None:
        """Poll once now, then keep polling in a daemon thread (unless ``poll_wait_seconds`` <= 0)."""
        self._stop.clear()
        if self.poll_wait_seconds < 0:
            log.warning("file system polling is disabled (poll wait %s s): no model version will load",
                        self.poll_wait_seconds)
            return
        self.poll_once()
        if self.poll_wait_seconds > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="tfsctl-fs-source", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        t, self._thread = self._thread, None
        if t is not None:
            t.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_wait_seconds):
            self.poll_once()
