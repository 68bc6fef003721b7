"""Model base paths beyond the local disk: ``s3://`` and ``gs://`` through fsspec.

Plain paths and ``file://`` URLs stay on the local code path (``os.scandir``); any other scheme goes through fsspec
(``s3fs`` and ``gcsfs`` come with the optional extra ``tfsctl[cloud]``). Only the Source (listing) and the caching
loader (download) call this module, so the rest of the server never sees a URL.

**When a version on object storage is complete.** Object stores have no directory rename, so an upload such as
``aws s3 cp --recursive 7/ s3://bucket/model/7/`` becomes visible file by file, in any order (``saved_model.pb`` may
arrive before the variables). A version directory is loaded only when

1. it holds ``saved_model.pb`` (or ``saved_model.pbtxt``);
2. if it holds anything under ``variables/``: ``variables/variables.index`` and every data shard that the shard
   names promise (``variables.data-00000-of-00002`` needs ``...-00001-of-00002`` too), and at least one shard;
3. its listing (every object's relative name, size and ETag/mtime) is identical in two consecutive listings: the
   previous poll's, or, for a version not seen before, a second listing :data:`SETTLE_SECONDS` later.

Rule 3 catches what rules 1-2 cannot know about (assets, the warmup file). Uploading a version under a temporary
name and renaming it (server-side copy) is still the safest way, as with TF Serving.

S3 settings come from the usual AWS environment: ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_PROFILE``,
``AWS_REGION`` (or ``AWS_DEFAULT_REGION``), the endpoint from ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``, and
TF Serving's own S3 variables ``S3_ENDPOINT`` (``host:port``, with ``S3_USE_HTTPS=0`` for plain HTTP),
``S3_REGION`` and ``S3_VERIFY_SSL=0``. GCS uses Google's default credentials (``GOOGLE_APPLICATION_CREDENTIALS``)
and ``STORAGE_EMULATOR_HOST`` through gcsfs.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tfsctl.errors import ConfigError, StorageError
from tfsctl.model_layout import parse_version_dir  # pure: the client (reload) imports this module

log = logging.getLogger("tfsctl.core.storage")

#: fsspec protocol -> the package that implements it (all in ``tfsctl[cloud]``).
REMOTE_SCHEMES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs"}
EXTRA_HINT = "pip install 'tfsctl[cloud]'"
#: Wait before the confirming second listing of a version not seen in the previous poll.
SETTLE_SECONDS = 1.0

# "s3://b/k", and "s3:/b/k" (what pathlib makes of a URL: the Manager stores version paths as Path objects).
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):/+(.*)$")
_SHARD = re.compile(r"^variables\.data-(\d+)-of-(\d+)$")
_PB_FILES = ("saved_model.pb", "saved_model.pbtxt")

_fs_lock = threading.Lock()
_filesystems: dict[str, Any] = {}
_seen_lock = threading.Lock()
# base URL -> (last listing's fingerprints, versions found complete, last fingerprint seen twice in a row)
_seen: dict[str, tuple[dict[int, tuple], frozenset[int], dict[int, tuple]]] = {}
_reported: dict[tuple[str, int], str] = {}  # (base URL, version) -> last "incomplete" reason logged


def split_url(path: str | Path) -> tuple[str | None, str]:
    """``(scheme, rest)`` of a URL (``rest`` without leading slashes), ``(None, path)`` for a plain path."""
    text = str(path)
    m = _URL.match(text)
    if not m:
        return None, text
    return m.group(1).lower(), m.group(2).rstrip("/")


def is_remote(path: str | Path) -> bool:
    """True for a path that must be listed and copied through fsspec (any scheme but ``file``)."""
    scheme, _ = split_url(path)
    return scheme is not None and scheme != "file"


def normalize(path: str | Path) -> str:
    """The canonical form: ``s3://bucket/key`` for remote paths, a plain local path for ``file://`` and paths."""
    scheme, rest = split_url(path)
    if scheme is None:
        return str(path)
    if scheme == "file":
        return "/" + rest
    return f"{scheme}://{rest}"


def check_path(path: str | Path) -> None:
    """ConfigError now (at start or reload) for an unknown scheme or a missing ``tfsctl[cloud]`` extra."""
    scheme, _ = split_url(path)
    if scheme is None or scheme == "file":
        return
    package = REMOTE_SCHEMES.get(scheme)
    if package is None:
        known = ", ".join(["file"] + sorted(REMOTE_SCHEMES))
        raise ConfigError(f"base path {path}: unknown scheme '{scheme}://' (supported: {known})")
    try:
        __import__(package)
        __import__("fsspec")
    except ImportError:
        raise ConfigError(
            f"base path {path}: '{scheme}://' needs the {package} package: {EXTRA_HINT}"
        ) from None


def _s3_options() -> dict[str, Any]:
    """s3fs arguments from the AWS environment plus TF Serving's S3_* variables."""
    env = os.environ
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if not endpoint and env.get("S3_ENDPOINT"):
        endpoint = env["S3_ENDPOINT"]
        if "://" not in endpoint:
            https = env.get("S3_USE_HTTPS", "1").lower() not in ("0", "false")
            endpoint = ("https://" if https else "http://") + endpoint
    client: dict[str, Any] = {}
    if endpoint:
        client["endpoint_url"] = endpoint
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or env.get("S3_REGION")
    if region:
        client["region_name"] = region
    if env.get("S3_VERIFY_SSL", "1").lower() in ("0", "false"):
        client["verify"] = False
    return {
        "client_kwargs": client,
        "config_kwargs": {"connect_timeout": 10, "read_timeout": 60, "retries": {"max_attempts": 3}},
        "skip_instance_cache": True,
        "use_listings_cache": False,
    }


def _gcs_filesystem() -> Any:
    """gcsfs's core filesystem: the plain JSON API (gcsfs's default class also probes each bucket's layout through
    the gRPC control plane, which an emulator does not offer and a read-only model path does not need)."""
    from gcsfs.core import GCSFileSystem

    options: dict[str, Any] = {"skip_instance_cache": True, "use_listings_cache": False}
    if os.environ.get("STORAGE_EMULATOR_HOST") and not os.environ.get("GOOGLE_APPLICATION_CREDENTIALS"):
        options["token"] = "anon"  # emulators take unauthenticated requests
    return GCSFileSystem(**options)


def filesystem(scheme: str) -> Any:
    """One fsspec filesystem per scheme for this process (built from the environment on first use)."""
    check_path(f"{scheme}://x")
    with _fs_lock:
        fs = _filesystems.get(scheme)
        if fs is None:
            if REMOTE_SCHEMES[scheme] == "s3fs":
                import fsspec

                fs = fsspec.filesystem("s3", **_s3_options())
            else:
                fs = _gcs_filesystem()
            _filesystems[scheme] = fs
        return fs


def reset_filesystems() -> None:
    """Forget the filesystems and listing history (after the environment changed; tests)."""
    with _fs_lock:
        _filesystems.clear()
    with _seen_lock:
        _seen.clear()
        _reported.clear()
    with _errors_lock:
        _errors.clear()


def _explain(url: str, what: str, e: BaseException) -> StorageError:
    """A StorageError that says what failed and which settings to check."""
    scheme, _ = split_url(url)
    text = " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, PermissionError) or "AccessDenied" in text or "InvalidAccessKeyId" in text or \
            "SignatureDoesNotMatch" in text or "Forbidden" in text:
        hint = ("check the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE) and the endpoint "
                "(AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL or S3_ENDPOINT)") if scheme in ("s3", "s3a") else \
            "check the credentials (GOOGLE_APPLICATION_CREDENTIALS)"
        return StorageError(f"cannot {what} {url}: access denied ({text}); {hint}")
    return StorageError(f"cannot {what} {url}: {type(e).__name__}: {text}")


def _find(url: str) -> dict[str, dict]:
    """Every object under ``url`` as {relative name: info}; {} when there is none."""
    scheme, rest = split_url(url)
    fs = filesystem(scheme)  # type: ignore[arg-type]  # a remote URL has a scheme
    try:
        fs.invalidate_cache()
        found = fs.find(rest, detail=True, withdirs=False)
    except FileNotFoundError:
        return {}
    except Exception as e:  # noqa: BLE001 - every backend raises its own types
        raise _explain(url, "list", e) from None
    prefix = rest + "/"
    out = {}
    for key, info in found.items():
        key = key.lstrip("/")
        # Zero-byte "folder" markers (keys ending in "/", made by consoles and some tools) are not files.
        if key.startswith(prefix) and not key.endswith("/") and info.get("type", "file") != "directory":
            out[key[len(prefix):]] = info
    return out


def _stamp(info: dict) -> tuple:
    return (int(info.get("size") or 0), str(info.get("ETag") or info.get("etag") or info.get("md5Hash") or
                                          info.get("LastModified") or info.get("mtime") or ""))


def missing_parts(names: Iterable[str]) -> str:
    """Why a version directory with these relative file names is not complete ("" when rules 1-2 hold)."""
    names = set(names)
    if not any(n in names for n in _PB_FILES):
        return "no saved_model.pb yet"
    variables = {n[len("variables/"):] for n in names if n.startswith("variables/")}
    if variables:
        if "variables.index" not in variables:
            return "no variables/variables.index yet"
        shards = [m for m in (_SHARD.match(n) for n in variables) if m]
        if not shards:
            return "no variables/variables.data-* shard yet"
        total = int(shards[0].group(2))
        have = {int(m.group(1)) for m in shards if int(m.group(2)) == total}
        if have != set(range(total)):
            return f"{len(have)} of {total} variables shards"
    return ""


def _scan(base: str) -> dict[int, tuple[dict[str, dict], str]]:
    """{version: ({relative name: info}, incomplete reason)} of the version directories under ``base``."""
    versions: dict[int, dict[str, dict]] = {}
    for rel, info in _find(base).items():
        top, sep, inner = rel.partition("/")
        version = parse_version_dir(top)
        if version is None or not sep:
            continue
        versions.setdefault(version, {})[inner] = info
    return {v: (files, missing_parts(files.keys())) for v, files in versions.items()}


def list_versions(base_path: str | Path, settle_seconds: float | None = None) -> dict[int, str]:
    """The complete versions under a remote base path as {version: URL} (the module docstring has the rule).

    A version once found complete stays listed while rules 1-2 hold (a rewritten file does not make it flap).
    Raises StorageError (access denied, endpoint unreachable): the Source logs it and keeps what is loaded.
    """
    base = normalize(base_path)
    try:
        check_path(base)
    except ConfigError as e:  # e.g. a scheme that a reload brought in and this installation cannot read
        raise StorageError(str(e)) from None
    settle = SETTLE_SECONDS if settle_seconds is None else settle_seconds
    listing = _scan(base)
    with _errors_lock:
        _errors.pop(base, None)
    with _seen_lock:
        previous, confirmed, stable = _seen.get(base, ({}, frozenset(), {}))
    prints = _fingerprints(listing)
    unconfirmed = [v for v, (_, why) in listing.items()
                   if not why and v not in confirmed and previous.get(v) != prints[v]]
    if unconfirmed and settle > 0:
        time.sleep(settle)  # the settle window of rule 3, for versions this process has not seen before
        previous, listing = prints, _scan(base)
        prints = _fingerprints(listing)
    complete: dict[int, str] = {}
    with _seen_lock:
        for v, (_, why) in sorted(listing.items()):
            if not why and v not in confirmed and previous.get(v) != prints[v]:
                why = "still changing (listing not stable yet)"
            key = (base, v)
            if why:
                if _reported.get(key) != why:
                    _reported[key] = why
                    log.info("%s/%d is not complete (%s): not loading it yet", base, v, why)
                continue
            if _reported.pop(key, None) is not None:
                log.info("%s/%d is complete", base, v)
            complete[v] = f"{base}/{v}"
        stable = {v: prints[v] if previous.get(v) == prints[v] else stable.get(v)  # type: ignore[misc]
                  for v in prints}
        _seen[base] = (prints, frozenset(complete), stable)
    return complete


def version_stamp(url: str | Path) -> tuple | None:
    """The identity of a remote version's content as of its last stable listing (None if not listed).

    The Manager compares it to decide that a version whose load failed was re-uploaded and deserves a new try, as
    it does with a local directory's stamp; it changes only once the new upload's listing is stable (rule 3), so a
    re-upload in progress does not trigger loads of half-replaced files.
    """
    base, _, name = normalize(url).rpartition("/")
    version = parse_version_dir(name)
    with _seen_lock:
        history = _seen.get(base)
    return None if history is None or version is None else history[2].get(version)


def _fingerprints(listing: dict[int, tuple[dict[str, dict], str]]) -> dict[int, tuple]:
    return {v: tuple(sorted((n, _stamp(i)) for n, i in files.items())) for v, (files, _) in listing.items()}


def isdir(path: str | Path) -> bool:
    """Whether a base path exists: a local directory, or a remote prefix holding at least one object.

    A remote path that cannot be listed counts as existing: :func:`list_versions` reports that error itself.
    """
    if not is_remote(path):
        return os.path.isdir(normalize(path))
    scheme, rest = split_url(path)
    try:
        fs = filesystem(scheme)  # type: ignore[arg-type]  # a remote URL has a scheme
        fs.invalidate_cache()
        return bool(fs.ls(rest, detail=False))
    except FileNotFoundError:
        return False
    except Exception:  # noqa: BLE001
        return True


_errors_lock = threading.Lock()
_errors: dict[str, str] = {}  # base URL -> last listing error logged (cleared by a successful listing)


def report_error(model: str, base_path: str | Path, error: BaseException) -> None:
    """Log a listing error of ``model``'s base path once per distinct message (polls repeat it every second)."""
    text, base = str(error), normalize(base_path)
    with _errors_lock:
        if _errors.get(base) == text:
            return
        _errors[base] = text
    log.error("model %s: %s (keeping the versions already loaded; retrying every poll)", model, text)


def version_size(url: str) -> int:
    """Bytes a remote version will take in the local cache."""
    return sum(int(i.get("size") or 0) for i in _find(normalize(url)).values())


def download(url: str | Path, dest: Path) -> None:
    """Copy the version at ``url`` into the new directory ``dest`` atomically.

    The files go to a hidden temporary directory beside ``dest`` first, are checked against the listing (every
    file, every size, and rules 1-2), and only then renamed to ``dest``: a failed or interrupted copy leaves no
    directory that looks like a version. Raises StorageError.
    """
    url = normalize(url)
    scheme, rest = split_url(url)
    files = _find(url)
    why = missing_parts(files.keys()) if files else "nothing there"
    if why:
        raise StorageError(f"cannot copy {url}: the version is not complete ({why})")
    dest.parent.mkdir(parents=True, exist_ok=True)
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix=f".partial-{dest.name}-", dir=dest.parent))
    try:
        remote, local = [], []
        for rel in sorted(files):
            target = tmp / rel
            if ".." in Path(rel).parts:
                raise StorageError(f"cannot copy {url}: unsafe object name {rel!r}")
            target.parent.mkdir(parents=True, exist_ok=True)
            remote.append(f"{rest}/{rel}")
            local.append(str(target))
        try:
            filesystem(scheme).get(remote, local)  # type: ignore[arg-type]  # a remote URL has a scheme
        except Exception as e:  # noqa: BLE001
            raise _explain(url, "copy", e) from None
        for rel, info in files.items():
            size = (tmp / rel).stat().st_size if (tmp / rel).exists() else -1
            if size != int(info.get("size") or 0):
                raise StorageError(f"cannot copy {url}: {rel} changed during the copy (retrying later)")
        os.rename(tmp, dest)
    except BaseException:
        _rmtree(tmp)
        raise


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
