"""Request logging as TF Serving's ``LoggingConfig`` describes it, with a file collector TF Serving's binary lacks.

A model config's ``logging_config { log_collector_config { type filename_prefix } sampling_config { sampling_rate
} }`` samples that model's successful Predict, Classify, Regress and MultiInference requests (any wire) and writes
each as a ``PredictionLog`` with its ``LogMetadata`` (model spec, sampling config, SavedModel tags, time): the
format of TF Serving's warmup records, so a log can be replayed (``tfsctl bench --requests-from``) or turned into
warmup records (``tfsctl export --warmup-from``).

- **Collector types** (:data:`COLLECTOR_TYPES`): ``"file"`` and ``"tfrecord"`` (the same collector): TFRecord files
  ``PREFIX-<start>-<pid>-<n>.tfrecord``, each at most ``max_file_bytes`` (then the next one starts). A file being
  written is named ``....tfrecord.partial`` and renamed when complete, so a finished name never holds half a file.
  Any other type is refused when the config is read, as TF Serving's ``LogCollector::Create`` ("Cannot find
  LogCollector::Factory for type: ...").
- **Never slows or fails a request.** The request thread only samples and hands references to a bounded queue
  (records and bytes); one writer thread builds, serializes and writes. A full queue drops the record. Each sampled
  request is counted once in ``request_log_count{model_name, status_code}``: OK once written, UNAVAILABLE when
  dropped at a full queue, RESOURCE_EXHAUSTED / PERMISSION_DENIED / ... when the write failed (disk full, an
  unwritable prefix: logged once per collector until a write succeeds again).
- **Reloads.** :meth:`RequestLogger.configure` runs with every applied model config (``ServerCore``); a logging
  config unchanged keeps its collector and files, as TF Serving's ServerRequestLogger keys loggers by config.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from tfsctl.errors import ConfigError
from tfsctl.tfrecord import LOG_SUFFIX, PARTIAL_SUFFIX, frame

log = logging.getLogger(__name__)

COLLECTOR_TYPES = ("file", "tfrecord")
DEFAULT_MAX_FILE_BYTES = 64 * 1024 * 1024
DEFAULT_QUEUE_RECORDS = 1024
DEFAULT_QUEUE_BYTES = 256 * 1024 * 1024

_ERRNO_CODES = {errno.ENOSPC: "RESOURCE_EXHAUSTED", errno.EDQUOT: "RESOURCE_EXHAUSTED", errno.EFBIG: "OUT_OF_RANGE",
                errno.EACCES: "PERMISSION_DENIED", errno.EPERM: "PERMISSION_DENIED", errno.EROFS: "PERMISSION_DENIED",
                errno.ENOENT: "NOT_FOUND", errno.ENOTDIR: "NOT_FOUND", errno.EISDIR: "FAILED_PRECONDITION"}


def check_logging_config(mc: Any, where: str) -> None:
    """Refuse a model's ``logging_config`` that cannot act: an unknown collector type, no prefix, a bad rate."""
    if not mc.HasField("logging_config"):
        return
    lc = mc.logging_config
    if lc.HasField("custom_logging_config"):
        raise ConfigError(f"{where}: model '{mc.name}': logging_config.custom_logging_config is not supported "
                          f"(log_collector_config types: {', '.join(COLLECTOR_TYPES)})")
    kind = lc.log_collector_config.type
    if kind not in COLLECTOR_TYPES:
        raise ConfigError(f"{where}: model '{mc.name}': Cannot find LogCollector::Factory for type: {kind!r} "
                          f"(tfsctl's collector types: {', '.join(COLLECTOR_TYPES)})")
    if not lc.log_collector_config.filename_prefix:
        raise ConfigError(f"{where}: model '{mc.name}': logging_config.log_collector_config.filename_prefix is "
                          "empty (the file collector writes PREFIX-...tfrecord)")
    sampling = lc.sampling_config
    rates = [sampling.sampling_rate] + [t.sampling_rate for t in sampling.per_task_sampling_configs]
    for rate in rates:
        if not 0.0 <= rate <= 1.0:
            raise ConfigError(f"{where}: model '{mc.name}': sampling_rate must be in [0, 1], got {rate}")
    for task in sampling.per_task_sampling_configs:  # TF Serving matches them against its job's dc and task index
        if task.dc or _has(task, "task_index"):
            raise ConfigError(f"{where}: model '{mc.name}': per_task_sampling_configs naming a dc or task_index "
                              "cannot match here (tfsctl has neither); give sampling_rate")
    if sampling.attributes:
        raise ConfigError(f"{where}: model '{mc.name}': sampling_config.attributes is not supported")


def _has(message: Any, field: str) -> bool:
    try:
        return message.HasField(field)
    except ValueError:  # a plain proto3 scalar: set means non-zero
        return bool(getattr(message, field))


def sampling_rate(lc: Any) -> float:
    """The rate TF Serving's RequestLogger uses: the first per-task config that matches (here: one naming no dc
    and no task index), else ``sampling_rate``."""
    for task in lc.sampling_config.per_task_sampling_configs:
        if not task.dc and not _has(task, "task_index"):
            return float(task.sampling_rate)
    return float(lc.sampling_config.sampling_rate)


def error_code(exc: BaseException) -> str:
    """The gRPC code name a failed write is counted under."""
    if isinstance(exc, OSError) and exc.errno in _ERRNO_CODES:
        return _ERRNO_CODES[exc.errno]
    return "UNKNOWN"


class FileCollector:
    """Appends framed records to ``PREFIX-<start>-<pid>-<n>.tfrecord`` files of at most ``max_file_bytes``."""

    def __init__(self, prefix: str, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES) -> None:
        self.prefix = prefix
        self.max_file_bytes = max(1, max_file_bytes)
        self._stamp = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{os.getpid()}"
        self._index = 0
        self._file: Any = None
        self._path = ""
        self._size = 0
        self.files: list[str] = []  # completed files, oldest first
        self.failing = False  # a write failed and has not succeeded since (the failure is logged once)

    def write(self, data: bytes) -> None:
        """Append one record (OSError on failure: nothing half-written stays in a finished file)."""
        record = frame(data)
        if self._file is not None and self._size + len(record) > self.max_file_bytes and self._size > 0:
            self._finish()
        if self._file is None:
            self._open()
        try:
            self._file.write(record)
            self._file.flush()
        except OSError:
            self._abandon()  # the file may end in a partial record: it is never renamed to a finished name
            raise
        self._size += len(record)

    def _open(self) -> None:
        self._index += 1
        self._path = f"{self.prefix}-{self._stamp}-{self._index:05d}{LOG_SUFFIX}"
        directory = os.path.dirname(self._path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        self._file = open(self._path + PARTIAL_SUFFIX, "wb")  # noqa: SIM115 - closed by _finish/_abandon
        self._size = 0

    def _finish(self) -> None:
        f, self._file = self._file, None
        if f is None:
            return
        try:
            f.flush()
            os.fsync(f.fileno())
            f.close()
            os.replace(self._path + PARTIAL_SUFFIX, self._path)
            self.files.append(self._path)
        except OSError as e:
            log.error("request log: cannot finish %s: %s", self._path, e)
            self._abandon(f)

    def _abandon(self, f: Any = None) -> None:
        f = f or self._file
        self._file = None
        if f is not None:
            try:
                f.close()
            except OSError:
                pass
        try:
            os.unlink(self._path + PARTIAL_SUFFIX)
        except OSError:
            pass

    def close(self) -> None:
        """Finish the current file (it gets its final name)."""
        self._finish()


@dataclass
class _Route:
    """One model's logging: its sampling rate, the collector its config shares, the metadata's fixed parts."""

    rate: float
    collector: FileCollector
    config: Any  # the LoggingConfig


@dataclass
class _Item:
    model: str
    route: _Route
    build: Callable[[], Any]  # -> PredictionLog (without log_metadata)
    spec: Any  # ModelSpec actually used
    nbytes: int
    when: float


class RequestLogger:
    """The server's request logger: per-model sampling, a bounded queue and one writer thread.

    ``counter(model, status_code)`` counts each sampled request once (the server's ``request_log_count``).
    """

    def __init__(self, *, saved_model_tags: Iterable[str] = ("serve",), max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
                 queue_records: int = DEFAULT_QUEUE_RECORDS, queue_bytes: int = DEFAULT_QUEUE_BYTES,
                 counter: Callable[[str, str], None] | None = None) -> None:
        self.saved_model_tags = sorted(saved_model_tags)
        self.max_file_bytes = max_file_bytes
        self.queue_records = max(1, queue_records)
        self.queue_bytes = max(1, queue_bytes)
        self._count = counter or (lambda _model, _code: None)
        self._routes: dict[str, _Route] = {}  # replaced whole on configure: read without a lock
        self._collectors: dict[bytes, FileCollector] = {}
        self._queue: deque[_Item] = deque()
        self._queued_bytes = 0
        self._cond = threading.Condition(threading.Lock())
        self._busy = False
        self._stopping = False
        self._retired: list[FileCollector] = []
        self._thread: threading.Thread | None = None
        self.dropped = 0
        self.written = 0

    # --- configuration (ServerCore.apply_config) ---

    def configure(self, config: Any) -> None:
        """Route each model with a ``logging_config`` to its collector; a config seen before keeps its collector."""
        routes: dict[str, _Route] = {}
        collectors: dict[bytes, FileCollector] = {}
        for mc in config.model_config_list.config:
            if not mc.HasField("logging_config"):
                continue
            lc = mc.logging_config
            key = lc.SerializeToString(deterministic=True)
            collector = collectors.get(key) or self._collectors.get(key)
            if collector is None:
                collector = FileCollector(lc.log_collector_config.filename_prefix, self.max_file_bytes)
            collectors[key] = collector
            routes[mc.name] = _Route(sampling_rate(lc), collector, lc)
        with self._cond:
            retired = [c for k, c in self._collectors.items() if k not in collectors]
            self._collectors = collectors
            self._routes = routes
            self._retired.extend(retired)  # closed by the writer thread, after what is queued for them
            self._cond.notify_all()
        if routes and self._thread is None:
            self._thread = threading.Thread(target=self._writer, name="tfsctl-request-log", daemon=True)
            self._thread.start()

    def wants(self, model: str) -> bool:
        """Whether this request of ``model`` is sampled (cheap: the request path asks before building anything)."""
        route = self._routes.get(model)
        return route is not None and route.rate > 0 and (route.rate >= 1.0 or random.random() < route.rate)

    # --- the request path ---

    def submit(self, model: str, spec: Any, build: Callable[[], Any], nbytes: int) -> None:
        """Queue one sampled request: ``build()`` makes its PredictionLog (in the writer thread); never blocks."""
        route = self._routes.get(model)
        if route is None:
            return
        item = _Item(model, route, build, spec, nbytes, time.time())
        with self._cond:
            if (self._stopping or len(self._queue) >= self.queue_records
                    or (self._queue and self._queued_bytes + nbytes > self.queue_bytes)):
                self.dropped += 1
                dropped = True
            else:
                self._queue.append(item)
                self._queued_bytes += nbytes
                self._cond.notify()
                dropped = False
        if dropped:
            self._count(model, "UNAVAILABLE")

    # --- the writer thread ---

    def _writer(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._retired and not self._stopping:
                    self._cond.wait()
                if not self._queue and self._stopping:
                    retired, self._retired = self._retired, []
                    for c in retired:
                        c.close()
                    return
                item = self._queue.popleft() if self._queue else None
                if item is not None:
                    self._queued_bytes -= item.nbytes
                    self._busy = True
                retired = [] if self._queue else self._retired
                if not self._queue:
                    self._retired = []
            if item is not None:
                self._write(item)
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
            for c in retired:
                c.close()

    def _write(self, item: _Item) -> None:
        collector = item.route.collector
        try:
            entry = item.build()
            meta = entry.log_metadata
            meta.model_spec.CopyFrom(item.spec)
            meta.sampling_config.CopyFrom(item.route.config.sampling_config)
            meta.saved_model_tags.extend(self.saved_model_tags)
            meta.timestamp_secs = int(item.when)
            data = entry.SerializeToString()
        except Exception:  # noqa: BLE001 - a record that cannot be built is counted, never raised
            log.exception("request log: cannot build the record of a %s request", item.model)
            self._count(item.model, "INTERNAL")
            return
        try:
            collector.write(data)
        except OSError as e:
            if not collector.failing:
                log.error("request log for model %s: cannot write under %s: %s (further failures are counted in "
                          ":tensorflow:serving:request_log_count, not logged, until a write succeeds)", item.model,
                          collector.prefix, e)
            collector.failing = True
            self._count(item.model, error_code(e))
            return
        if collector.failing:
            log.info("request log for model %s: writing under %s again", item.model, collector.prefix)
            collector.failing = False
        self.written += 1
        self._count(item.model, "OK")

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued is written (tests, shutdown); True if it was in time."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._busy, timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is queued, finish every file (final names), stop the writer."""
        with self._cond:
            self._stopping = True
            self._retired.extend(self._collectors.values())
            self._collectors = {}
            self._routes = {}
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        else:
            for c in self._retired:
                c.close()
            self._retired = []
