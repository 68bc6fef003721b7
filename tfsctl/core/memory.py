"""Process memory: RSS, and handing freed heap back to the OS after large requests.

glibc keeps freed memory of large requests (protobuf arenas, decoded arrays) in its per-thread arenas, so RSS
stays at its peak after a burst of big or hostile requests. ``malloc_trim(0)`` returns it. Trimming walks every
arena, so it is rate-limited and runs on a background thread, after the request's memory has been freed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
import time

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
# A request that decodes or carries at least this many bytes asks for a trim afterwards.
LARGE_REQUEST_BYTES = 8 * 1024 * 1024


def rss_bytes(pid: int | None = None) -> int:
    """Resident set size of this process (or ``pid``) from Linux /proc; 0 where unavailable."""
    try:
        with open(f"/proc/{pid or 'self'}/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def _load_malloc_trim():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to trim
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


_malloc_trim = _load_malloc_trim()


def trim_now() -> bool:
    """``malloc_trim(0)``: give freed heap pages back to the OS; False where glibc is not available."""
    if _malloc_trim is None:
        return False
    _malloc_trim(0)
    return True


_M_MMAP_THRESHOLD = -3  # mallopt parameter number (malloc.h)
# Allocations from this size on get pages of their own (mmap), returned to the OS as soon as they are freed.
MMAP_THRESHOLD_BYTES = 1 << 20


def map_large_allocations(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """``mallopt(M_MMAP_THRESHOLD, threshold)``: large allocations (request messages, decoded tensors) are mapped
    on their own and unmapped when freed; False where glibc is not available or ``MALLOC_MMAP_THRESHOLD_`` is set.

    glibc's default threshold is dynamic: each large block freed raises it, so later blocks of that size come
    from the arenas and stay there, spread over the arenas of whichever threads allocated them. After a burst of
    large requests handled on several threads (the gRPC event loop parses, a pool thread decodes), ``malloc_trim``
    then cannot give them all back. A fixed threshold costs a map and page faults per large block, TensorFlow's
    own large intermediates included; the sample DeepLab at 256x256 steps in 13-17 ms either way (measured in
    process, alternating, on the development machine).
    """
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False  # the operator's own setting stands
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, int(threshold)))


class Trimmer:
    """Runs :func:`trim_now` on its own thread at most every ``min_interval`` seconds, when asked.

    :meth:`request` is cheap (sets an event), so request threads call it after a large request and go on.
    """

    def __init__(self, min_interval: float = 0.5) -> None:
        self.min_interval = min_interval
        self.trims = 0
        self._wanted = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def request(self) -> None:
        """Ask for a trim soon (after the current request's memory is released)."""
        if _malloc_trim is None:
            return
        self._wanted.set()
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._loop, name="tfsctl-malloc-trim", daemon=True)
                    self._thread.start()

    def _loop(self) -> None:
        while True:
            self._wanted.wait()
            # The rate limit also lets the request that asked return and free its memory first.
            time.sleep(self.min_interval)
            self._wanted.clear()
            trim_now()
            self.trims += 1


TRIMMER = Trimmer()
