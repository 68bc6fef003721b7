"""Process memory: RSS, and handing freed heap back to the OS after large requests.

glibc keeps freed memory of large requests (protobuf arenas, decoded arrays) in its per-thread arenas, so RSS
stays at its peak after a burst of big or hostile requests. ``malloc_trim(0)`` returns it: it walks every arena
(the event loop's, each pool thread's) and gives back every free page, wherever glibc's dynamic mmap threshold put
the block. Trimming walks every arena, so it is rate-limited and runs on a background thread, after the request's
memory has been freed, and only after requests of at least ``LARGE_REQUEST_BYTES``.

glibc's thresholds are fixed once (:func:`steady_thresholds`): the mmap threshold where its dynamic one ends up
after the first large free, so large blocks come from the arenas (an earlier version pinned ``M_MMAP_THRESHOLD`` at
1 MiB, which sent every large allocation of the model's own step through mmap/munmap), and a request's freed
scratch stays for the next request instead of being handed back by glibc after each one (docs/PERFORMANCE.md,
"Memory"). An operator's ``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_`` (glibc's own environment
variables) still apply.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
import time
from typing import Any

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
# A request that decodes or carries at least this many bytes asks for a trim afterwards.
LARGE_REQUEST_BYTES = 8 * 1024 * 1024
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameter numbers (malloc.h)
# glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit: its dynamic mmap threshold rises to at most this (each freed mapped
# block raises it to that block's size), so a batch's large activations come from the arenas, as with glibc's own.
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
# Free memory at an arena's top that glibc keeps for the next request: a 3 MB REST body's parse frees about 16 MB.
# Not glibc's 2x64 MiB: malloc_trim cannot give back a thread arena's top, so each arena may keep this much.
TRIM_THRESHOLD_BYTES = 32 * 1024 * 1024


def rss_bytes(pid: int | None = None) -> int:
    """Resident set size of this process (or ``pid``) from Linux /proc; 0 where unavailable."""
    try:
        with open(f"/proc/{pid or 'self'}/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def _glibc(name: str, argtypes: list) -> Any:
    """glibc's function ``name`` (returning int), or None where the C library is not glibc."""
    try:
        fn = getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):  # not glibc: nothing to trim or tune
        return None
    fn.argtypes = argtypes
    fn.restype = ctypes.c_int
    return fn


_malloc_trim = _glibc("malloc_trim", [ctypes.c_size_t])
_mallopt = _glibc("mallopt", [ctypes.c_int, ctypes.c_int])


def steady_thresholds() -> bool:
    """``mallopt``: mmap threshold 32 MiB (the highest glibc's dynamic one reaches), trim threshold 32 MiB; False
    where glibc is not available or the operator set either threshold.

    Why: glibc's dynamic thresholds follow the largest block freed (a 3 MB REST body's: about 3 and 6 MiB), so each
    free of a request's scratch (a ResNet body's parse: about 16 MB in several blocks, the body's marks, the
    array's text, simdjson's buffers) left more than the trim threshold free at the arena's top; glibc gave it back
    and the next request page-faulted 4,000 fresh pages (the parse took 15 ms in the server instead of 9). Up to
    32 MiB now stays for the next request; the :class:`Trimmer` still gives memory back after large requests."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False  # the operator's own setting stands
    if _mallopt is None:
        return False
    # Setting either turns glibc's dynamic adjustment off, so both are set.
    return bool(_mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(_mallopt(_M_TRIM_THRESHOLD,
                                                                                      TRIM_THRESHOLD_BYTES))


def trim_now() -> bool:
    """``malloc_trim(0)``: give freed heap pages back to the OS; False where glibc is not available."""
    if _malloc_trim is None:
        return False
    _malloc_trim(0)
    return True


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
