"""TFRecord framing in plain Python: the file format of TF Serving's warmup records and of tfsctl's request logs.

Each record is ``uint64 length | uint32 masked crc32c(length) | data | uint32 masked crc32c(data)`` (little
endian), as TensorFlow's ``RecordWriter``. Plain Python (with google-crc32c) so the client side (``tfsctl bench
--requests-from``) reads logs without loading TensorFlow, and the request log's writer sees the OS error (disk
full, permission) of every write.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import BinaryIO

import google_crc32c

_MASK_DELTA = 0xA282EAD8
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
