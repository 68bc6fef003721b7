"""The server's own logs: the access log (``--access_log``, one line per request) and JSON log lines
(``--log_format=json``). Both are tfsctl's: TF Serving writes neither.

An access-log line carries what the request core gathered in the request's :class:`RequestRecord
<tfsctl.serving.request_record.RequestRecord>`: time, request id, peer, wire and API, model, version, signature,
status, bytes in and out, batch queue wait, batch size, step and total milliseconds. The request id is the client's
``x-request-id`` (HTTP header or gRPC metadata) or one generated here, and goes back to the client (HTTP response
header, gRPC trailing metadata).
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
import uuid
from typing import Any, TextIO

from tfsctl.serving.request_record import RequestRecord

REQUEST_ID_HEADER = "x-request-id"
MAX_REQUEST_ID_CHARS = 128  # a longer client id is cut: a log line stays bounded


def request_id(given: str | None) -> str:
    """The client's id (printable, bounded) or a new one."""
    if given:
        cleaned = "".join(c for c in given[:MAX_REQUEST_ID_CHARS] if c.isprintable() and not c.isspace())
        if cleaned:
            return cleaned
    return uuid.uuid4().hex


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int(seconds * 1000) % 1000:03d}Z"


def access_fields(record: RequestRecord) -> dict[str, Any]:
    """The access-log fields of a finished request."""
    return {
        "time": _iso(record.wall or time.time()),
        "request_id": record.request_id,
        "peer": record.peer,
        "wire": record.wire,
        "api": record.api,
        "model": record.model,
        "version": record.version,
        "signature": record.signature,
        "status": record.code,
        "bytes_in": record.bytes_in,
        "bytes_out": record.bytes_out,
        "queue_ms": round(record.queue_s * 1e3, 3),
        "batch_size": record.batch_size,
        "step_ms": round(max(0.0, record.step_s - record.queue_s) * 1e3, 3),
        "total_ms": round(record.seconds() * 1e3, 3),
    }


def format_access(fields: dict[str, Any], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(fields, separators=(",", ":"))
    f = fields
    return (f"{f['time']} {f['request_id']} {f['peer'] or '-'} {f['wire']} {f['api'] or '-'} {f['model'] or '-'} "
            f"{f['version'] if f['version'] is not None else '-'} {f['signature'] or '-'} {f['status']} "
            f"in={f['bytes_in']} out={f['bytes_out']} queue_ms={f['queue_ms']} batch={f['batch_size']} "
            f"step_ms={f['step_ms']} total_ms={f['total_ms']}")


class AccessLog:
    """``--access_log=PATH|-``: appends one line per finished request (an observer of ``RequestCore``)."""

    def __init__(self, target: str, fmt: str = "text") -> None:
        self.fmt = fmt
        self._lock = threading.Lock()
        self._own = target != "-"
        self._stream: TextIO = open(target, "a", encoding="utf-8", buffering=1) if self._own else sys.stderr  # noqa: SIM115
        self.failed = False

    def __call__(self, record: RequestRecord) -> None:
        line = format_access(access_fields(record), self.fmt) + "\n"
        try:
            with self._lock:
                self._stream.write(line)
        except (OSError, ValueError) as e:  # a full disk must not fail requests; say so once
            if not self.failed:
                self.failed = True
                logging.getLogger(__name__).error("access log: cannot write: %s (further lines are dropped)", e)

    def close(self) -> None:
        if self._own:
            with self._lock:
                self._stream.close()


class JsonFormatter(logging.Formatter):
    """``--log_format=json``: one JSON object per log line (time, level, logger, message, exception)."""

    def __init__(self, extra: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.extra = dict(extra or {})

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {"time": _iso(record.created), "level": record.levelname, "logger": record.name,
                               **self.extra, "message": record.getMessage()}
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, separators=(",", ":"))


def configure_logging(fmt: str) -> None:
    """The server process's log lines: text (as before) or JSON lines on stderr."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if fmt == "json":
        use_json_lines()


def use_json_lines(**extra: Any) -> None:
    """Every handler already installed writes JSON lines (``extra`` fields added to each, e.g. a worker index);
    TensorFlow's Python logger may have a handler of its own, made before this ran."""
    for name in ("", "tensorflow", "absl"):
        for handler in logging.getLogger(name).handlers:
            handler.setFormatter(JsonFormatter(extra))
