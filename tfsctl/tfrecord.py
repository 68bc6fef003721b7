"""TFRecord framing in plain Python: the file format of TF Serving's warmup records and of tfsctl's request logs.

Each record is ``uint64 length | uint32 masked crc32c(length) | data | uint32 masked crc32c(data)`` (little
endian), as TensorFlow's ``RecordWriter``. Plain Python (with google-crc32c) so the client side (``tfsctl bench
--requests-from``) reads logs without loading TensorFlow, and the request log's writer sees the OS error (disk
full, permission) of every write.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import google_crc32c

_MASK_DELTA = 0xA282EAD8
# A request log's files (tfsctl.core.request_log): PREFIX-<start>-<pid>-<n>.tfrecord, ".partial" while written.
LOG_SUFFIX = ".tfrecord"
PARTIAL_SUFFIX = ".partial"
# A record longer than this is taken as corruption, not allocated (a request is at most a few hundred MB).
MAX_RECORD_BYTES = 1 << 31


class RecordError(ValueError):
    """The bytes are not TFRecord framing (bad checksum, truncated record, absurd length)."""


def masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


def frame(data: bytes) -> bytes:
    """One record, framed."""
    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", masked_crc(header)) + data + struct.pack("<I", masked_crc(data))


def read_records(stream: BinaryIO, *, allow_truncated_tail: bool = False) -> Iterator[bytes]:
    """The records of a TFRecord stream, checksums checked. ``allow_truncated_tail``: a last record cut short (a
    file still being written) ends the stream instead of raising."""
    while True:
        header = stream.read(12)
        if not header:
            return
        if len(header) < 12:
            if allow_truncated_tail:
                return
            raise RecordError("truncated record header")
        length, crc = struct.unpack("<QI", header)
        if masked_crc(header[:8]) != crc:
            raise RecordError("corrupt record length (checksum mismatch)")
        if length > MAX_RECORD_BYTES:
            raise RecordError(f"record length {length} is larger than {MAX_RECORD_BYTES}")
        body = stream.read(length + 4)
        if len(body) < length + 4:
            if allow_truncated_tail:
                return
            raise RecordError("truncated record")
        data = body[:length]
        if masked_crc(data) != struct.unpack("<I", body[length:])[0]:
            raise RecordError("corrupt record data (checksum mismatch)")
        yield data


def log_files(path: str | Path) -> list[Path]:
    """The files of a request log: a file itself, a directory's ``*.tfrecord`` files, or the files of a
    ``filename_prefix`` (``PREFIX-*.tfrecord``), oldest name first; a file still being written (``.partial``) last."""
    p = Path(path)
    if p.is_file():
        return [p]
    if p.is_dir():
        found = sorted(p.glob(f"*{LOG_SUFFIX}")) + sorted(p.glob(f"*{LOG_SUFFIX}{PARTIAL_SUFFIX}"))
    else:
        found = sorted(p.parent.glob(f"{p.name}-*{LOG_SUFFIX}")) + \
            sorted(p.parent.glob(f"{p.name}-*{LOG_SUFFIX}{PARTIAL_SUFFIX}"))
    return found


def read_log(path: str | Path) -> Iterator[bytes]:
    """Every record of a request log (see :func:`log_files`); a ``.partial`` file's cut-short last record is
    skipped. OSError when nothing is there; RecordError for a file that is not TFRecord framing."""
    files = log_files(path)
    if not files:
        raise FileNotFoundError(f"{path}: no request log there (a .tfrecord file, a directory of them, or a "
                                "logging_config filename_prefix)")
    for f in files:
        with open(f, "rb") as stream:
            try:
                yield from read_records(stream, allow_truncated_tail=f.name.endswith(PARTIAL_SUFFIX))
            except RecordError as e:
                raise RecordError(f"{f}: {e}") from None
