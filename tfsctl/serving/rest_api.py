"""TF Serving's REST API (``/v1/...``, as ``http_rest_api_handler.cc`` and ``http_server.cc``) on aiohttp.

Routes, connection handling and the worker pool live here; JSON <-> numpy is ``json_codec``; every model call goes
through :class:`~tfsctl.serving.request_core.RequestCore` like gRPC's, holding one servable handle for the whole
request.

Routes (paths are case-insensitive and percent-decoded, as TF Serving's RE2 ``(?i)`` patterns and curl unescape)::

    POST /v1/models/NAME[/versions/N|/labels/L]:predict|:classify|:regress
    GET  /v1/models/NAME[/versions/N|/labels/L]            GetModelStatusResponse as JSON
    GET  /v1/models/NAME[/versions/N|/labels/L]/metadata   GetModelMetadataResponse as JSON
    OPTIONS /v1/...        CORS preflight: 200 when the Origin header names http(s)://, else 400
    GET  /v1/health/ready  (tfsctl) 200 when every configured model has an AVAILABLE version, else 503
    GET  /v1/health/live   (tfsctl) 200 while the process serves HTTP
    GET  <metrics_path>                   Prometheus text, only when given a path (--monitoring_config_file)

Any other ``/v1/`` request is 400 "Malformed request: METHOD PATH"; paths outside ``/v1/`` are 404. Errors are
``{"error": message}`` with the HTTP code of the typed error (tfsctl/errors.py). A model call that takes longer
than ``timeout_ms`` is answered 504 (DEADLINE_EXCEEDED, as TF Serving's RunOptions timeout).

Hostile clients are bounded: a connection must deliver its first request head within ``header_timeout``, an idle
keep-alive connection is closed after ``keepalive_timeout``, a body that makes no progress for ``body_timeout`` is
dropped, at most ``max_connections`` connections are open (more are answered 503 and closed at once), and running
out of file descriptors is logged once, not per accept.
"""

from __future__ import annotations

import asyncio
import contextvars
import errno
import functools
import logging
import re
import resource
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    regression_pb2,
)

from tfsctl.core import deadlines
from tfsctl.errors import InvalidArgument, ServingError
from tfsctl.serving import json_codec
from tfsctl.serving.logs import REQUEST_ID_HEADER, request_id
from tfsctl.serving.request_record import REST, current
from tfsctl.serving.rest_common import CORS_HEADERS as _CORS_HEADERS
from tfsctl.serving.rest_common import ORIGIN as _ORIGIN
from tfsctl.serving.rest_common import HttpError as _HttpError
from tfsctl.serving.tracing import TRACEPARENT, TRACESTATE
from tfsctl.serving.v2_rest import V2Rest, is_v2_path

if TYPE_CHECKING:
    from tfsctl.serving.request_core import RequestCore

T = TypeVar("T")
log = logging.getLogger(__name__)

# A 1080p RGB image as JSON numbers is ~40-60 MB of text; 128 MiB leaves room and still bounds memory.
DEFAULT_MAX_BODY_BYTES = 128 * 1024 * 1024
_SMALL_BODY = 256 * 1024  # bodies up to this size skip the in-flight byte budget
DEFAULT_WORKERS = 64
DEFAULT_HEADER_TIMEOUT = 30.0
DEFAULT_KEEPALIVE_TIMEOUT = 30.0
DEFAULT_BODY_TIMEOUT = 60.0

# TF Serving's kPredictionApiGegex and kModelStatusApiRegex (http_rest_api_util.cc), matched in full.
_PREDICT_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)", re.I)
_STATUS_PATH = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?", re.I)
_V1 = re.compile(r"/v1/", re.I)  # kHTTPRestApiHandlerPathRegex "(?i)/v1/.*": everything under it is the handler's
_JSON = "application/json"
_HEALTH_LIVE, _HEALTH_READY = "/v1/health/live", "/v1/health/ready"
_INT64_MAX = 2**63 - 1
_OUT_OF_FDS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_ACCEPT_QUIET_SECONDS = 30.0  # accept() failures this close together are one episode, logged once


def default_max_connections() -> int:
    """Half the process's file-descriptor limit (the rest is for models, gRPC and logs), at most 10000."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 10000
    return max(16, min(10000, soft // 2))


def model_spec(name: str, version: str | None, label: str | None, signature: str = "") -> model_pb2.ModelSpec:
    """The ModelSpec of a route (FillModelSpecWithNameVersionAndLabel): version as TF Serving's SimpleAtoi int64."""
    spec = model_pb2.ModelSpec(name=name, signature_name=signature)
    if version is not None:
        number = int(version)
        if number > _INT64_MAX:
            raise InvalidArgument(f"Failed to convert version: {version} to numeric.")
        spec.version.value = number
    elif label is not None:
        spec.version_label = label
    return spec


class _Connection(asyncio.Protocol):
    """Wraps aiohttp's per-connection protocol: counts open connections and enforces the first request head's
    deadline (aiohttp's keep-alive timer covers idle connections and later heads)."""

    def __init__(self, server: RestServer, inner: asyncio.Protocol) -> None:
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


class RestServer:
    """TF Serving's REST API in a thread of its own; ``start()`` returns once the port is bound.

    ``num_threads`` (``--rest_api_num_threads``) sizes the pool that runs model calls (0: ``max_workers``);
    ``timeout_ms`` (``--rest_api_timeout_in_ms``, <= 0: none) bounds predict/classify/regress;
    ``enable_cors`` (``--rest_api_enable_cors_support``) adds TF Serving's CORS headers to every ``/v1`` reply;
    ``metrics_path`` serves the Prometheus page there (None, the default: no page, as TF Serving without a
    monitoring config that enables it).
    """

    def __init__(
        self,
        core: RequestCore,
        metrics: Any = None,
        host: str = "0.0.0.0",
        port: int = 8501,
        *,
        metrics_path: str | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_workers: int = DEFAULT_WORKERS,
        shutdown_timeout: float = 10.0,
        timeout_ms: int = 30000,
        num_threads: int = 0,
        enable_cors: bool = False,
        header_timeout: float = DEFAULT_HEADER_TIMEOUT,
        keepalive_timeout: float = DEFAULT_KEEPALIVE_TIMEOUT,
        body_timeout: float = DEFAULT_BODY_TIMEOUT,
        max_connections: int | None = None,
        reuse_port: bool = False,
        max_inflight_body_bytes: int | None = None,
    ) -> None:
        self.timeout_ms = timeout_ms
        self.reuse_port = reuse_port  # SO_REUSEPORT: several worker processes share the port (serve --workers)
        self.num_threads = num_threads
        self.enable_cors = enable_cors
        self.core = core
        self.metrics = metrics
        self.host = host
        self.port = port
        self.metrics_path = metrics_path
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
        self._v2 = V2Rest(self)

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
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
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

    # --- dispatch ---

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path, method = request.rel_url.raw_path, request.method
        if self.metrics_path and path == self.metrics_path and self.metrics is not None:
            body = await self._in_pool(self.metrics.render)
            return web.Response(status=200, body=body, headers={"Content-Type": self.metrics.content_type})
        if is_v2_path(path):  # the Open Inference Protocol beside /v1 (v2_rest.py)
            return await self._v2.dispatch(request)
        if not _V1.match(path):
            return self._reply(404, json_codec.encode_error(f"Not found: {method} {path}"), cors=False)
        if method == "OPTIONS":  # CORS preflight, answered whether or not CORS headers are on (http_server.cc)
            ok = _ORIGIN.search(request.headers.get("Origin", "")) is not None
            return self._reply(200 if ok else 400, b"", content_type=None)
        if method == "GET" and path in (_HEALTH_LIVE, _HEALTH_READY):
            return await self._health(path)
        malformed = InvalidArgument(f"Malformed request: {method} {path}")
        if method == "POST":
            m = _PREDICT_PATH.fullmatch(path)
            if m is not None:
                name, version, label, verb = m.groups()
                if verb in ("predict", "classify", "regress"):  # matched case-insensitively, compared exactly
                    return await self._model_call(request, verb, name, version, label)
        elif method == "GET":
            m = _STATUS_PATH.fullmatch(path)
            if m is not None:
                name, version, label, sub = m.groups()
                return await self._model_call(request, "metadata" if sub == "metadata" else "status",
                                              name or "", version, label)
        self.core.finish(self.core.begin(REST, "", ""), malformed.grpc_code.name)  # TF counts it (model_name "")
        return self._error_reply(malformed)

    async def _health(self, path: str) -> web.Response:
        if path == _HEALTH_LIVE:
            return self._reply(200, b'{"status":"live"}')
        if await self._in_pool(self.core.is_ready):
            return self._reply(200, b'{"status":"ready"}')
        return self._reply(503, json_codec.encode_error(
            "not ready: not every configured model has an AVAILABLE version"))

    async def _model_call(self, request: web.Request, verb: str, name: str, version: str | None,
                          label: str | None) -> web.Response:
        name = unquote(name)
        record = self.begin_record(request, verb, name)
        label = unquote(label) if label is not None else None
        try:
            model_spec(name, version, label)  # ParseModelInfo comes first: a version beyond int64 is 400 at once
            reserved = await self._reserve_body(request) if request.method == "POST" else 0
            encoded = await self._handle(request, verb, name, version, label, reserved)
            status, code = 200, "OK"
        except ServingError as e:
            status, encoded, code = e.http_status, json_codec.encode_error(e.message), e.grpc_code.name
        except _HttpError as e:
            status, encoded, code = e.status, json_codec.encode_error(e.message), e.code_name
        except Exception as e:  # noqa: BLE001 - never leak a traceback to the client
            log.exception("REST %s %s failed", request.method, request.path)
            status, code = 500, "INTERNAL"
            encoded = json_codec.encode_error(f"internal error: {type(e).__name__}: {e}")
        record.bytes_out = len(encoded)
        self.core.finish(record, code)
        response = self._reply(status, encoded)
        if record.request_id:
            response.headers[REQUEST_ID_HEADER] = record.request_id
        if status in (408, 413):
            response.force_close()
        return response

    async def _reserve_body(self, request: web.Request) -> int:
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

    def begin_record(self, request: web.Request, api: str, name: str) -> Any:
        """The request core's record of a REST request (``api`` its verb), with the client's request id, peer and
        trace context when the server tags requests (access log, traces)."""
        record = self.core.begin(REST, api, name)
        if self.core.tag_requests:
            record.request_id = request_id(request.headers.get(REQUEST_ID_HEADER))
            record.peer = request.remote or ""
            record.traceparent = request.headers.get(TRACEPARENT, "")
            record.tracestate = request.headers.get(TRACESTATE, "")
        return record

    async def _handle(self, request: web.Request, verb: str, name: str, version: str | None,
                      label: str | None, reserved: int = 0) -> bytes:
        """Read the body, run the handler in the pool (bounded by ``timeout_ms``), return the encoded reply."""
        return await self.run_with_body(request, functools.partial(getattr(self, f"_do_{verb}"), name, version,
                                                                   label),
                                        reserved, timed=verb in ("predict", "classify", "regress"),
                                        what=f"the {verb} request on model '{name}'")

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
        try:
            while True:
                chunk = await asyncio.wait_for(request.content.readany(), self.body_timeout)
                if not chunk:
                    break
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

    async def _in_pool(self, fn: Callable, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _reply(self, status: int, body: bytes, *, content_type: str | None = _JSON, cors: bool = True
               ) -> web.Response:
        headers = dict(_CORS_HEADERS) if cors and self.enable_cors else {}
        if content_type is not None:
            headers["Content-Type"] = content_type
        return web.Response(status=status, body=body, headers=headers)

    def _error_reply(self, error: ServingError) -> web.Response:
        return self._reply(error.http_status, json_codec.encode_error(error.message))

    # --- handlers (run in the thread pool; each returns the encoded JSON reply) ---

    def _do_predict(self, name: str, version: str | None, label: str | None, raw: bytes) -> bytes:
        doc = json_codec.parse_predict_json(raw)
        sig = json_codec.signature_name(doc)
        with self.core.hold(model_spec(name, version, label, sig)) as held:
            inputs, row_format = json_codec.decode_predict(doc, held.signature.inputs, sig)  # type: ignore[arg-type]
            del doc  # a big body's lists (65k for a 256x256 image) go now, not after the model call
            _, outputs = held.predict(inputs)
        return json_codec.encode_predict(outputs, row_format)

    def _do_classify(self, name: str, version: str | None, label: str | None, raw: bytes) -> bytes:
        doc = json_codec.parse_json(raw)
        request = classification_pb2.ClassificationRequest(
            model_spec=model_spec(name, version, label, json_codec.signature_name(doc)))
        json_codec.decode_examples(doc, request)
        return json_codec.encode_classification(self.core.classify(request).result)

    def _do_regress(self, name: str, version: str | None, label: str | None, raw: bytes) -> bytes:
        doc = json_codec.parse_json(raw)
        request = regression_pb2.RegressionRequest(
            model_spec=model_spec(name, version, label, json_codec.signature_name(doc)))
        json_codec.decode_examples(doc, request)
        return json_codec.encode_regression(self.core.regress(request).result)

    def _do_status(self, name: str, version: str | None, label: str | None, raw: bytes) -> bytes:
        if not name:
            raise InvalidArgument("Missing model name in request.")
        request = get_model_status_pb2.GetModelStatusRequest(model_spec=model_spec(name, version, label))
        return json_codec.encode_status(self.core.get_model_status(request))

    def _do_metadata(self, name: str, version: str | None, label: str | None, raw: bytes) -> bytes:
        if not name:
            raise InvalidArgument("Missing model name in request.")
        request = get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec=model_spec(name, version, label), metadata_field=["signature_def"])
        return json_codec.encode_metadata(self.core.get_model_metadata(request))
