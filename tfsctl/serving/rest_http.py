"""The REST port's HTTP plumbing (the part TF Serving leaves to ``net_http`` and ``http_server.cc``): an aiohttp
server in a thread of its own, its connections, the bounds on request bodies and the pool that runs model calls.

It knows no route: :class:`HttpServer` hands every request to the ``dispatch`` coroutine it is given (the routes
and handlers of ``rest_api.py`` and ``v2_rest.py``), which read bodies and run their work through
:meth:`HttpServer.reserve_body` and :meth:`HttpServer.run_with_body`.

Hostile clients are bounded: a connection must deliver its first request head within ``header_timeout``, an idle
keep-alive connection is closed after ``keepalive_timeout``, a body that makes no progress for ``body_timeout`` is
dropped, at most ``max_connections`` connections are open (more are answered 503 and closed at once), and running
out of file descriptors is logged once, not per accept.
"""

from __future__ import annotations

import asyncio
import contextvars
import errno
import logging
import resource
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from tfsctl.core import deadlines
from tfsctl.errors import InvalidArgument
from tfsctl.serving import json_codec
from tfsctl.serving.request_record import current
from tfsctl.serving.rest_common import HttpError as _HttpError

T = TypeVar("T")
log = logging.getLogger(__name__)

# A 1080p RGB image as JSON numbers is ~40-60 MB of text; 128 MiB leaves room and still bounds memory.
DEFAULT_MAX_BODY_BYTES = 128 * 1024 * 1024
_SMALL_BODY = 256 * 1024  # bodies up to this size skip the in-flight byte budget
DEFAULT_WORKERS = 64
DEFAULT_HEADER_TIMEOUT = 30.0
DEFAULT_KEEPALIVE_TIMEOUT = 30.0
DEFAULT_BODY_TIMEOUT = 60.0
_OUT_OF_FDS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_ACCEPT_QUIET_SECONDS = 30.0  # accept() failures this close together are one episode, logged once

Dispatch = Callable[[web.Request], Awaitable[web.StreamResponse]]


def default_max_connections() -> int:
    """Half the process's file-descriptor limit (the rest is for models, gRPC and logs), at most 10000."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 10000
    return max(16, min(10000, soft // 2))


class _Connection(asyncio.Protocol):
    """Wraps aiohttp's per-connection protocol: counts open connections and enforces the first request head's
    deadline (aiohttp's keep-alive timer covers idle connections and later heads)."""

    def __init__(self, server: HttpServer, inner: asyncio.Protocol) -> None:
        self._server = server
        self._inner = inner
        self._transport: asyncio.Transport | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        loop = asyncio.get_running_loop()
        self._deadline = loop.call_later(self._server.header_timeout, self._head_timed_out)
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._deadline is not None:
            seen = self._tail + data
            if b"\r\n\r\n" in seen:
                self._deadline.cancel()
                self._deadline = None
                self._tail = b""
            else:
                self._tail = seen[-3:]
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._server._connection_closed()
        self._inner.connection_lost(exc)

    def _head_timed_out(self) -> None:
        self._deadline = None
        self._server.header_timeouts += 1
        if self._transport is not None:
            self._transport.close()


class _Refused(asyncio.Protocol):
    """Over the connection cap: answer 503 at once and close, instead of leaving the client hanging."""

    BODY = json_codec.encode_error("Too many open connections to the REST server; retry later")
    REPLY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
             b"Content-Length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(self.REPLY)  # type: ignore[attr-defined]
        transport.close()


class HttpServer:
    """An HTTP/1.1 server in a thread of its own that passes every request to ``dispatch``; ``start()`` returns
    once the port is bound.

    ``num_threads`` (``--rest_api_num_threads``) sizes the pool that runs model calls (0: ``max_workers``);
    ``timeout_ms`` (``--rest_api_timeout_in_ms``, <= 0: none) bounds the work :meth:`run_with_body` runs with
    ``timed``; ``metrics`` (optional) counts open and refused connections.
    """

    def __init__(
        self,
        dispatch: Dispatch,
        host: str = "0.0.0.0",
        port: int = 8501,
        *,
        metrics: Any = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_workers: int = DEFAULT_WORKERS,
        shutdown_timeout: float = 10.0,
        timeout_ms: int = 30000,
        num_threads: int = 0,
        header_timeout: float = DEFAULT_HEADER_TIMEOUT,
        keepalive_timeout: float = DEFAULT_KEEPALIVE_TIMEOUT,
        body_timeout: float = DEFAULT_BODY_TIMEOUT,
        max_connections: int | None = None,
        reuse_port: bool = False,
        max_inflight_body_bytes: int | None = None,
    ) -> None:
        self.dispatch = dispatch
        self.timeout_ms = timeout_ms
        self.reuse_port = reuse_port  # SO_REUSEPORT: several worker processes share the port (serve --workers)
        self.num_threads = num_threads
        self.metrics = metrics
        self.host = host
        self.port = port
        self.max_body_bytes = max_body_bytes
        # Request bodies being read or decoded at once, in bytes: JSON decoding holds about ten times a body in
        # Python objects, so concurrent large bodies wait for room instead of multiplying that. Small bodies
        # (under _SMALL_BODY) never wait. Default: one largest body.
        self.max_inflight_body_bytes = max(max_inflight_body_bytes or max_body_bytes, _SMALL_BODY)
        self._inflight_body_bytes = 0  # event-loop thread only
        self._body_waiters: list[asyncio.Future] = []
        self.shutdown_timeout = shutdown_timeout
        self.header_timeout = header_timeout
        self.keepalive_timeout = keepalive_timeout
        self.body_timeout = body_timeout
        self.max_connections = max_connections if max_connections is not None else default_max_connections()
        self.workers = num_threads if num_threads > 0 else max_workers
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="tfsctl-rest")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        # Connection accounting (event-loop thread only; read by tests and the soak).
        self.open_connections = 0
        self.refused_connections = 0
        self.header_timeouts = 0
        self.accept_failures = 0
        self._last_accept_failure = -float("inf")
        self._stopping = False
        self._refusing = False

    @property
    def inflight_body_bytes(self) -> int:
        """Bytes of request bodies being read or decoded now (see ``max_inflight_body_bytes``)."""
        return self._inflight_body_bytes

    # --- lifecycle ---

    def start(self, timeout: float = 30.0) -> None:
        """Bind and serve in a background thread; raises OSError if the port cannot be bound."""
        self._thread = threading.Thread(target=self._serve, name="tfsctl-rest-loop", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout):
            raise RuntimeError(f"REST server did not start within {timeout}s")
        if self._start_error is not None:
            raise OSError(f"cannot serve REST on {self.host}:{self.port}: {self._start_error}") from self._start_error

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        loop.set_exception_handler(self._loop_exception)
        try:
            loop.run_until_complete(self._startup())
        except BaseException as e:  # noqa: BLE001 - reported to start()
            self._start_error = e
            if self._runner is not None:
                loop.run_until_complete(self._runner.cleanup())
            loop.close()
            self._started.set()
            return
        self._started.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _startup(self) -> None:
        app = web.Application(client_max_size=self.max_body_bytes)
        app.router.add_route("*", "/{tail:.*}", self.dispatch)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=self.shutdown_timeout,
                                     keepalive_timeout=self.keepalive_timeout, handle_signals=False)
        await self._runner.setup()
        self._server = await asyncio.get_running_loop().create_server(
            self._protocol, self.host, self.port, backlog=1024, reuse_port=self.reuse_port or None)
        self.port = int(self._server.sockets[0].getsockname()[1])

    def stop(self) -> None:
        """Stop accepting, let in-flight requests finish (bounded by ``shutdown_timeout``), then stop the loop."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            self._executor.shutdown(wait=False)
            return

        async def shutdown() -> None:
            self._stopping = True
            if self._server is not None:
                self._server.close()
            if self._runner is not None:
                await self._runner.cleanup()

        fut = asyncio.run_coroutine_threadsafe(shutdown(), loop)
        try:
            fut.result(self.shutdown_timeout + 5)
        except Exception:  # noqa: BLE001 - stop anyway
            log.exception("REST server cleanup failed")
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._executor.shutdown(wait=True)

    # --- connections ---

    def _protocol(self) -> asyncio.Protocol:
        """Protocol factory, called once per accepted connection."""
        if self.open_connections >= self.max_connections:
            self.refused_connections += 1
            if not self._refusing:
                self._refusing = True
                log.warning("REST: %d connections open, the limit; refusing new ones with 503 until some close",
                            self.open_connections)
            if self.metrics is not None:
                self.metrics.rest_connections_refused.inc()
            return _Refused()
        self.open_connections += 1
        if self.metrics is not None:
            self.metrics.rest_connections_open.inc()
        assert self._runner is not None and self._runner.server is not None
        return _Connection(self, self._runner.server())

    def _connection_closed(self) -> None:
        self.open_connections -= 1
        if self.metrics is not None:
            self.metrics.rest_connections_open.dec()
        if self._refusing and self.open_connections < self.max_connections:
            self._refusing = False

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        """Out of file descriptors: asyncio retries accept() every second and reports each failure; log it once."""
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in _OUT_OF_FDS and "accept" in str(context.get("message", "")):
            self.accept_failures += 1
            now = time.monotonic()
            if now - self._last_accept_failure > _ACCEPT_QUIET_SECONDS:  # a new episode: log it once
                log.error("REST: cannot accept connections: %s (%d open); asyncio retries every second, further "
                          "failures are not logged until none occurred for %g s", exc, self.open_connections,
                          _ACCEPT_QUIET_SECONDS)
            self._last_accept_failure = now
            return
        if self._stopping and isinstance(exc, ValueError) and "_start_serving" in repr(context.get("handle")):
            return  # asyncio's accept retry timer firing after the listening socket was closed by stop()
        loop.default_exception_handler(context)

    # --- bodies and the pool ---

    async def reserve_body(self, request: web.Request) -> int:
        """Wait for room in the in-flight body budget for a large body (see ``max_inflight_body_bytes``), at most
        ``timeout_ms``; returns the bytes reserved. A body without Content-Length reserves the largest one."""
        size = request.content_length
        if size is not None and size > self.max_body_bytes:
            raise _HttpError(413, self._too_large(size), "RESOURCE_EXHAUSTED")
        need = self.max_body_bytes if size is None else size
        if need <= _SMALL_BODY:
            return 0
        need = min(need, self.max_inflight_body_bytes)
        deadline = time.monotonic() + (self.timeout_ms / 1000 if self.timeout_ms > 0 else self.body_timeout)
        while self._inflight_body_bytes + need > self.max_inflight_body_bytes:
            room = asyncio.get_running_loop().create_future()
            self._body_waiters.append(room)
            try:
                await asyncio.wait_for(room, max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise _HttpError(503, "the server is busy with other large request bodies; retry later",
                                 "UNAVAILABLE") from None
            finally:
                if room in self._body_waiters:
                    self._body_waiters.remove(room)
        self._inflight_body_bytes += need
        return need

    def _release_body(self, reserved: int) -> None:
        """Give ``reserved`` bytes back and wake every waiter (event-loop thread only)."""
        if reserved:
            self._inflight_body_bytes -= reserved
            waiters, self._body_waiters = self._body_waiters, []
            for room in waiters:
                if not room.done():
                    room.set_result(None)

    async def run_with_body(self, request: web.Request, work: Callable[[bytes], T], reserved: int, *,
                            timed: bool, what: str) -> T:
        """Read the body and run ``work(body)`` in the pool, in a copy of this request's context (the request
        core finds the request's record there); ``timed``: bounded by ``timeout_ms`` (504), which is also the
        session run's timeout (core/deadlines), as in TF Serving. A request whose client has gone before it runs
        is not run.

        The ``reserved`` body bytes go back when the pool thread is done with the body: after a 504 the thread
        may still hold it, so the release follows the thread, not the reply."""
        loop = asyncio.get_running_loop()
        timed = timed and self.timeout_ms > 0
        deadline = deadlines.Deadline.after(self.timeout_ms / 1000 if timed else None)
        try:
            body = await self._read_body(request) if request.method == "POST" else b""
            job = self._executor.submit(contextvars.copy_context().run, deadlines.run_with, deadline, work, body)
            record = current()
            if record is not None:
                record.bytes_in = len(body)
        except BaseException:
            self._release_body(reserved)
            raise
        if reserved:
            job.add_done_callback(lambda _: loop.call_soon_threadsafe(self._release_body, reserved))
        call = asyncio.wrap_future(job)
        try:
            if not timed:
                return await call
            async with asyncio.timeout(self.timeout_ms / 1000):  # no extra task, unlike wait_for
                return await call
        except asyncio.CancelledError:  # the client went away
            deadline.cancel()
            raise
        except TimeoutError:
            raise _HttpError(504, f"Deadline Exceeded: {what} took longer than the REST timeout of "
                                  f"{self.timeout_ms} ms (--rest_api_timeout_in_ms)", "DEADLINE_EXCEEDED") from None

    async def _read_body(self, request: web.Request) -> bytes:
        """The whole (decoded) body, bounded in size and in time without progress."""
        if request.content_length is not None and request.content_length > self.max_body_bytes:
            raise _HttpError(413, self._too_large(request.content_length), "RESOURCE_EXHAUSTED")
        chunks: list[bytes] = []
        size = 0
        loop = asyncio.get_running_loop()
        try:
            # One timeout moved on at each chunk, not a wait_for per chunk (a task each: a 3 MB body comes in about
            # a dozen chunks, and the tasks cost 0.5 ms of the loop's time).
            async with asyncio.timeout(self.body_timeout) as progress:
                while True:
                    chunk = await request.content.readany()
                    if not chunk:
                        break
                    progress.reschedule(loop.time() + self.body_timeout)
                    size += len(chunk)
                    if size > self.max_body_bytes:
                        raise _HttpError(413, self._too_large(None), "RESOURCE_EXHAUSTED")
                    chunks.append(chunk)
        except TimeoutError:
            raise _HttpError(408, f"request body: no data for {self.body_timeout:g} s", "DEADLINE_EXCEEDED") from None
        except RequestPayloadError as e:  # e.g. a Content-Encoding the body does not match
            detail = " ".join(str(e).split())
            raise InvalidArgument(f"cannot read the request body: {detail}") from None
        return b"".join(chunks)

    def _too_large(self, size: int | None) -> str:
        got = f" ({size} bytes)" if size is not None else ""
        return f"request body{got} is larger than the limit of {self.max_body_bytes} bytes"

    async def in_pool(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in the pool, off the event loop (no body, no timeout: health, the metrics page)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)


__all__ = ["DEFAULT_BODY_TIMEOUT", "DEFAULT_HEADER_TIMEOUT", "DEFAULT_KEEPALIVE_TIMEOUT", "DEFAULT_MAX_BODY_BYTES",
           "DEFAULT_WORKERS", "Dispatch", "HttpServer", "default_max_connections"]
