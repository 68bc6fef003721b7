"""Loading versions that live on object storage: copy into a local cache, load with the ordinary Loader, clean up.

TensorFlow loads a SavedModel from a local directory, so a remote version (``s3://``, ``gs://``) is first copied
into the model cache (``--model_cache_dir``, else ``$TFSCTL_MODEL_CACHE_DIR``, else a per-process temporary
directory) by :func:`tfsctl.core.storage.download` (temporary directory, then rename), then handed to the wrapped
loader factory. The copy is deleted when the version unloads or when its load fails. Local paths go straight to the
wrapped factory: :func:`remote_aware_factory` is safe to install unconditionally.
"""

from __future__ import annotations

import atexit
import fcntl
import logging
import os
import re
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tfsctl.core import storage
from tfsctl.core.loader import Loader, LoadError
from tfsctl.core.servable import Resources, Servable

log = logging.getLogger("tfsctl.core.remote_loader")

CACHE_ENV = "TFSCTL_MODEL_CACHE_DIR"
LoaderFactory = Callable[[str, int, Any], Any]

_lock = threading.Lock()
_roots: dict[str, Path] = {}  # configured cache dir -> the directory this process uses
_held: list[int] = []  # lock file descriptors kept open for the life of the process
_COPY = re.compile(r"^(\d+\.[0-9a-f]{8}|\.partial-\d+\.[0-9a-f]{8}-.*)$")  # what CachingLoader creates


def cache_dir(explicit: str | Path | None = None) -> Path:
    """The model cache: ``explicit``, else ``$TFSCTL_MODEL_CACHE_DIR``, else one temporary directory per process.

    A configured directory is claimed with a lock file; the first process to claim it deletes the copies a
    previous (crashed or restarted) process left there, and only those (names this module creates). A second live
    process pointed at the same directory works in a private subdirectory instead of deleting the first one's
    copies.
    """
    chosen = str(explicit or os.environ.get(CACHE_ENV) or "")
    with _lock:
        root = _roots.get(chosen)
        if root is None:
            root = _claim(Path(chosen).expanduser()) if chosen else _temporary()
            _roots[chosen] = root
        return root


def _temporary() -> Path:
    root = Path(tempfile.mkdtemp(prefix="tfsctl-model-cache-"))
    atexit.register(shutil.rmtree, root, True)
    return root


def _claim(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / ".tfsctl-cache.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        private = Path(tempfile.mkdtemp(prefix=f"process-{os.getpid()}-", dir=root))
        atexit.register(shutil.rmtree, private, True)
        log.warning("model cache %s is in use by another process; using %s", root, private)
        return private
    _held.append(fd)
    for model_dir in root.iterdir():
        if not model_dir.is_dir() or model_dir.name.startswith("process-"):
            continue
        for entry in model_dir.iterdir():
            if entry.is_dir() and _COPY.match(entry.name):
                log.info("removing %s, left in the model cache by an earlier process", entry)
                shutil.rmtree(entry, ignore_errors=True)
    return root


class CachingLoader:
    """The Loader of one remote version: download, delegate, and delete the copy after unload."""

    def __init__(self, name: str, version: int, url: str, *, cache: str | Path | None,
                 inner_factory: LoaderFactory) -> None:
        self.name = name
        self.version = int(version)
        self.url = storage.normalize(url)
        self.cache = cache
        self.inner_factory = inner_factory
        self.local: Path | None = None
        self._inner: Any = None

    def estimate_resources(self) -> Resources:
        """Bytes the copy will take (the object sizes in the listing)."""
        try:
            return Resources(disk_bytes=storage.version_size(self.url))
        except Exception:  # noqa: BLE001 - an estimate never fails a load by itself
            return Resources()

    def load(self) -> Servable:
        """Copy the version into the cache and load the copy; LoadError (copy removed) when either fails."""
        where = f"model '{self.name}' version {self.version} ({self.url})"
        try:
            dest = cache_dir(self.cache) / quote(self.name, safe="") / f"{self.version}.{uuid.uuid4().hex[:8]}"
            storage.download(self.url, dest)
        except Exception as e:  # noqa: BLE001 - StorageError, or an OSError of the cache disk
            raise LoadError(f"{where}: {e}") from None
        self.local = dest
        log.info("%s copied to %s", where, dest)
        try:
            self._inner = self.inner_factory(self.name, self.version, dest)
            return self._inner.load()
        except LoadError as e:
            self._drop()
            raise LoadError(f"{e} (copied from {self.url})") from None
        except BaseException:
            self._drop()
            raise

    def unload(self) -> None:
        """Unload through the wrapped loader, then delete the local copy."""
        try:
            if self._inner is not None:
                self._inner.unload()
        finally:
            self._drop()

    def _drop(self) -> None:
        local, self.local = self.local, None
        if local is not None:
            shutil.rmtree(local, ignore_errors=True)


def remote_aware_factory(inner: LoaderFactory | None = None, *, cache: str | Path | None = None) -> LoaderFactory:
    """A Manager ``loader_factory``: remote paths get a CachingLoader around ``inner``, local paths ``inner``.

    ``inner`` defaults to the ordinary :class:`Loader`. A ``file://`` path is loaded in place.
    """
    make = inner or Loader

    def factory(name: str, version: int, path: Any) -> Any:
        if storage.is_remote(path):
            # The cache directory is resolved in load(): a bad one is then that version's load error.
            return CachingLoader(name, version, str(path), cache=cache, inner_factory=make)
        return make(name, version, Path(storage.normalize(path)))

    factory.inner = make  # type: ignore[attr-defined]  # the wrapped factory, for introspection
    return factory
