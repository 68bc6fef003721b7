"""Where a version goes and how it gets there: atomically, durably, and without leftovers.

A version is written into a hidden staging directory beside the target, ``base/.tmp-<version>-<pid>-<random>``
(ignored by a polling server: not a version-directory name), fsynced file by file, renamed into place in one step,
and the base path's directory entry is fsynced after the rename. A power loss therefore leaves either no version or a
complete one, never a renamed but empty one.

Staging directories of exports that were killed stay behind; every export removes the stale ones first. A staging
directory is stale when the process id in its name is not running on this machine, or when it is older than
:data:`STALE_AFTER_SECONDS` (24 h; covers a recycled pid and directories from another host). Names without a pid (older
tfsctl) are stale after :data:`STALE_UNNAMED_SECONDS` (1 h). ``.old-*`` directories of an interrupted ``--force`` swap
follow the same rule.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

from tfsctl.errors import ExportError
from tfsctl.savedmodel import parse_version_dir

STALE_AFTER_SECONDS = 24 * 3600
STALE_UNNAMED_SECONDS = 3600
_STAGING_RE = re.compile(r"^\.(tmp|old)-[^-]+-(?:(\d+)-)?[^-]+$")


def numeric_versions(base: Path) -> list[int]:
    """The versions under a model base path, by TF Serving's version-directory rule, sorted."""
    if not base.is_dir():
        return []
    found = (parse_version_dir(p.name) for p in base.iterdir() if p.is_dir())
    return sorted(v for v in found if v is not None)


def resolve_target(out: str | Path) -> tuple[Path, int]:
    """``base`` -> (base, next version, 1 if none); ``base/N`` -> (base, N)."""
    out = Path(out)
    version = parse_version_dir(out.name)
    if version is not None and out.name.isdigit():
        return out.parent, version
    if re.fullmatch(r"[-+]?\d+", out.name.strip()):  # meant as a version, but no server would load it as written
        raise ExportError(f"version '{out.name}' in {out} is not a non-negative integer within int64 "
                          "written with plain digits")
    if out.exists() and not out.is_dir():
        raise ExportError(f"output {out} exists and is not a directory")
    existing = numeric_versions(out)
    return out, (existing[-1] + 1 if existing else 1)


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def clean_stale_staging(base: Path, *, now: float | None = None) -> list[Path]:
    """Remove staging directories of killed exports under ``base`` (rule in the module docstring); returns them."""
    if not base.is_dir():
        return []
    now = time.time() if now is None else now
    removed = []
    for entry in base.iterdir():
        match = _STAGING_RE.match(entry.name)
        if not match or not entry.is_dir() or entry.is_symlink():
            continue
        try:
            age = now - entry.stat().st_mtime
        except OSError:
            continue
        pid = int(match.group(2)) if match.group(2) else None
        if pid is None:
            stale = age > STALE_UNNAMED_SECONDS
        else:
            stale = age > STALE_AFTER_SECONDS or (pid != os.getpid() and not _pid_running(pid))
        if stale:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def make_staging_dir(base: Path, version: int) -> Path:
    """A fresh ``.tmp-<version>-<pid>-<random>`` directory under ``base`` (mode 0755: servers run as other users)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{version}-{os.getpid()}-", dir=base))
    os.chmod(tmp, 0o755)
    return tmp


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under ``root`` (directories after their contents), then ``root`` itself."""
    for dirpath, _dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def fsync_dir(path: Path) -> None:
    """fsync a directory's entries (a rename is durable only once its parent directory is)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with renameat2(RENAME_EXCHANGE); False where the OS/libc cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    rc = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return rc == 0


def move_into_place(tmp: Path, target: Path, force: bool) -> bool:
    """fsync ``tmp``, rename it to ``target``, fsync the parent; True when an existing version was replaced."""
    fsync_tree(tmp)
    replaced = _rename(tmp, target, force)
    fsync_dir(target.parent)
    return replaced


def _rename(tmp: Path, target: Path, force: bool) -> bool:
    if not target.exists():
        try:
            os.rename(tmp, target)
            return False
        except OSError:
            if not (target.exists() and force):  # lost a race with another writer
                raise ExportError(f"version directory {target} appeared while exporting; not overwriting it") \
                    from None
    if not force:
        raise ExportError(f"version {target.name} already exists at {target}; pass --force to replace it")
    if _exchange(tmp, target):
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old version
        return True
    old = Path(tempfile.mkdtemp(prefix=f".old-{target.name}-{os.getpid()}-", dir=target.parent))
    os.rename(target, old / "v")
    try:
        os.rename(tmp, target)
    except OSError:
        os.rename(old / "v", target)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)
    return True


def remove_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        shutil.rmtree(path)
