"""The gRPC server as a ``grpc.aio`` server whose event loop runs in a thread of its own.

Why asyncio: with grpcio's thread-pool server, every RPC is handed from the polling thread to a pool thread and
back, and those threads contend for the GIL; on a small model that costs more than the model (toy Predict: about
0.5x a bare Python gRPC server). On the event loop, a Predict that is known to be quick (see
:meth:`~tfsctl.serving.request_core.RequestCore.predict_is_quick`) runs inline with no hand-over at all: the loop offers
every Predict to the core with ``only_if_quick``, which declines a large or slow one before running it. With
batching, a declined Predict waits for its batch on the loop too (``RequestCore.predict_queued``: queued with a
callback, no thread held). Everything else, slow or blocking (a large model without batching, reloads, status,
health), runs in the thread pool: the servicers' synchronous methods run there through grpc's
``migration_thread_pool``, and the async Predict sends the calls it cannot run inline or queue to the same pool.

:class:`LoopServer` lets the synchronous :class:`~tfsctl.serving.server.ModelServer` start and stop it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Sequence
from concurrent import futures
from typing import Any, TypeVar

import grpc

T = TypeVar("T")


class Pool(futures.ThreadPoolExecutor):
    """The loop server's thread pool, which can say how many jobs wait for a thread."""

    def waiting(self) -> int:
        """Jobs submitted and not yet taken by a thread (a cancelled one counts until a thread drops it)."""
        return self._work_queue.qsize()


class LoopServer:
    """A ``grpc.aio.Server`` (``.server``) with its loop in a daemon thread and a thread pool (``.executor``)."""

    def __init__(self, *, threads: int, interceptors: Sequence[Any] = (),
                 options: Sequence[tuple[str, Any]] = ()) -> None:
        self.executor = Pool(max_workers=threads, thread_name_prefix="tfsctl-grpc")
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="tfsctl-grpc-loop", daemon=True)
        self._thread.start()
        self._closed = False

        async def create() -> grpc.aio.Server:
            return grpc.aio.server(migration_thread_pool=self.executor, interceptors=list(interceptors),
                                   options=list(options))

        try:
            self.server: grpc.aio.Server = self.call(create())
        except BaseException:  # e.g. bad channel arguments: leave no loop thread or pool behind
            self._close_loop()
            raise

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and wait for its result (from any thread but the loop's)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def add_port(self, address: str, credentials: grpc.ServerCredentials | None) -> int:
        """Bind ``address``; the port number, 0 when it cannot be bound."""
        async def add() -> int:
            try:
                if credentials is not None:
                    return self.server.add_secure_port(address, credentials)
                return self.server.add_insecure_port(address)
            except RuntimeError:  # grpc raises instead of returning 0 in some versions
                return 0

        return self.call(add())

    def start(self) -> None:
        self.call(self.server.start())

    def submit(self, coro: Coroutine[Any, Any, Any], timeout: float = 10.0) -> None:
        """Run ``coro`` on the loop: waited for from another thread, scheduled from the loop's own; dropped once
        the server is closed (nothing serves then)."""
        if self._closed or self.loop.is_closed():
            coro.close()
            return
        if threading.current_thread() is self._thread:
            self.loop.create_task(coro)
            return
        self.call(coro, timeout)

    def stop(self, grace: float | None) -> None:
        """Stop serving (RPCs still running get ``grace`` seconds), then end the loop and the pool; idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self.call(self.server.stop(grace))
        finally:
            self._close_loop()

    def _close_loop(self) -> None:
        self._closed = True
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self.loop.close()
        self.executor.shutdown(wait=False, cancel_futures=True)


class LoopHealth:
    """grpc.health.v1 on the loop server: grpc_health's asyncio servicer (a Watch stream holds no thread), with
    the synchronous servicer's ``set`` and ``enter_graceful_shutdown`` for callers on other threads."""

    def __init__(self, loop_server: LoopServer) -> None:
        from grpc_health.v1._async import HealthServicer

        self._loop_server = loop_server
        self.servicer = HealthServicer()

    def set(self, service: str, status: Any) -> None:
        self._loop_server.submit(self.servicer.set(service, status))

    def enter_graceful_shutdown(self) -> None:
        self._loop_server.submit(self.servicer.enter_graceful_shutdown())
