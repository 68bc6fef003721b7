"""One ``serve --workers`` worker: a :class:`~tfsctl.serving.server.ModelServer` whose hooks go to the supervisor.

The worker plugs in through :class:`~tfsctl.serving.server.ServerHooks` (nothing is replaced on a class):

- ``ready``: the server's own readiness and the supervisor's word that every worker is ready
  (:class:`~tfsctl.serving.worker_messages.ClusterReady`);
- ``reload``: a ReloadConfig is handed to the supervisor (:class:`ReloadAsked`), which has every worker apply it
  (:class:`Apply`, applied here with the request core's ``apply_reload``) and answers this one (:class:`Reloaded`);
- ``collect_metrics``: the sum over every worker (prometheus_client's multiprocess mode);
- stop: a SIGTERM/SIGINT before the server's own handlers are in calls :meth:`ModelServer.request_stop`.

Its own readiness goes to the supervisor (:class:`Ready`) as it changes. This module imports nothing heavy at
module level (the supervisor imports it for :func:`worker_main`); the worker process imports the server inside it.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import uuid
from multiprocessing.connection import Connection
from typing import Any

from tfsctl.serving.worker_messages import (
    DUMP_STACKS,
    Applied,
    Apply,
    ClusterReady,
    Ready,
    ReloadAsked,
    Reloaded,
    Started,
    WorkerError,
)

log = logging.getLogger(__name__)

_REPORT_PERIOD_S = 0.05
_RELOAD_TIMEOUT_S = 3600.0


class _Link:
    """The worker's end of the supervisor pipe: coordinated reloads, cluster readiness, readiness reports."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.cluster_ready = False
        self.server: Any = None  # the ModelServer, once its ports are bound
        self._send_lock = threading.Lock()
        self._waiting: dict[str, tuple[threading.Event, list]] = {}

    # --- the server's hooks ---

    def ready(self, own: bool) -> bool:
        """ServerHooks.ready: this worker's own readiness, and every other worker's."""
        return own and self.cluster_ready

    def reload_config(self, request: Any, wait_seconds: float | None = None) -> Any:
        """ServerHooks.reload: every worker applies it (via the supervisor) before this one answers."""
        from tensorflow_serving.apis import model_management_pb2

        rid = uuid.uuid4().hex
        done = threading.Event()
        result: list[Any] = []
        self._waiting[rid] = (done, result)
        try:
            self.send(ReloadAsked(rid, request.config.SerializeToString(), wait_seconds))
            if not done.wait(_RELOAD_TIMEOUT_S):
                from tfsctl.errors import Unavailable

                raise Unavailable("reload not confirmed by every worker in time")
        finally:
            self._waiting.pop(rid, None)
        answer: Reloaded = result[0]
        if answer.error is not None:
            raise _error_from(answer.error)
        reply = model_management_pb2.ReloadConfigResponse()
        reply.ParseFromString(answer.response)
        return reply

    # --- the pipe ---

    def attach(self, server: Any) -> None:
        self.server = server
        threading.Thread(target=self.listen, name="tfsctl-worker-link", daemon=True).start()

    def send(self, message: object) -> None:
        with self._send_lock:
            self.conn.send(message)

    def apply(self, message: Apply) -> None:
        """Apply a reload here (the request core's own reload, not the hook) and tell the supervisor."""
        error, response = None, b""
        try:
            reply = self.server.core.apply_reload(_reload_request(message.config), message.wait_seconds)
            response = reply.SerializeToString()
        except Exception as e:  # noqa: BLE001 - reported to the worker that received the reload
            error = WorkerError(type(e).__name__, str(e))
        self.send(Applied(message.rid, error, response))

    def listen(self) -> None:
        """Messages from the supervisor, until the pipe closes."""
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                return
            if isinstance(message, Apply):
                threading.Thread(target=self.apply, args=(message,), name="tfsctl-worker-apply", daemon=True).start()
            elif isinstance(message, Reloaded):
                waiter = self._waiting.get(message.rid)
                if waiter is not None:
                    waiter[1].append(message)
                    waiter[0].set()
            elif isinstance(message, ClusterReady):
                self.cluster_ready = message.ready
            else:
                log.error("unknown message %r from the supervisor; ignored", type(message).__name__)

    def report(self, stop: threading.Event) -> None:
        """Tell the supervisor whenever this worker's own readiness changes."""
        last: bool | None = None
        while not stop.wait(_REPORT_PERIOD_S):
            try:
                ready = bool(self.server.server_core.is_ready())
            except Exception:  # noqa: BLE001 - readiness must never kill the worker
                ready = False
            if ready != last:
                try:
                    self.send(Ready(ready))
                except OSError:
                    return
                last = ready


def _reload_request(config: bytes) -> Any:
    from tensorflow_serving.apis import model_management_pb2

    request = model_management_pb2.ReloadConfigRequest()
    request.config.ParseFromString(config)
    return request


def _error_from(error: WorkerError) -> Exception:
    """The typed serving error a worker raised, rebuilt on the worker that answers the client."""
    from tfsctl import errors

    cls = getattr(errors, error.type_name, None)
    if isinstance(cls, type) and issubclass(cls, errors.ServingError):
        return cls(error.message)
    return errors.Internal(f"{error.type_name}: {error.message}")


def _collect_all_workers() -> list:
    """Every metric family summed over every worker (prometheus_client multiprocess mode)."""
    from prometheus_client import CollectorRegistry, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return list(registry.collect())


def pin_to_cpu(index: int) -> int:
    """Run this process on one CPU, the ``index``-th of those it may use (round robin); returns it.

    Called before TensorFlow or gRPC start a thread: every thread inherits the mask, and TensorFlow sizes its
    thread pools to the CPUs the process may use. Why: N workers on N cores otherwise preempt each other's event
    loop thousands of times a second (with gRPC's poller threads and TensorFlow's pools in between); one core each
    keeps each worker's threads together (toy model, 2 workers on 2 cores: about 13% more requests per second)."""
    allowed = sorted(os.sched_getaffinity(0))
    cpu = allowed[index % len(allowed)]
    os.sched_setaffinity(0, {cpu})
    return cpu


def worker_main(index: int, options: Any, conn: Connection, config: bytes | None, grace: float) -> None:
    """One serving process (runs in a fresh interpreter)."""
    import sys

    logging.basicConfig(level=logging.INFO,
                        format=f"%(asctime)s %(levelname)s worker-{index} %(name)s: %(message)s")
    if getattr(options, "log_format", "text") == "json":
        from tfsctl.serving.logs import use_json_lines

        use_json_lines(worker=index)
    import faulthandler

    faulthandler.register(DUMP_STACKS, all_threads=True)  # the supervisor's question before it kills a straggler
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if options.worker_cpu_affinity:
        pin_to_cpu(index)
    from tfsctl.serving.server import ModelServer, ServerHooks

    # Until serve_forever installs its own handlers (and again after it restores these), a SIGTERM/SIGINT is a
    # request to stop: the supervisor may be stopping while this worker still starts (e.g. just restarted).
    # Plain flags only: a handler may take no lock (see ModelServer.request_stop).
    requested: list[bool] = []
    servers: list[Any] = []

    def on_early_signal(_signum: int, _frame: Any) -> None:
        if requested:
            return  # a repeat: already requested
        requested.append(True)
        for srv in servers:
            srv.request_stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_early_signal)
    link = _Link(conn)
    server = ModelServer(options, ServerHooks(ready=link.ready, reload=link.reload_config,
                                              collect_metrics=_collect_all_workers))
    servers.append(server)
    if requested:
        server.request_stop()  # start() sees it and stops before binding; serve_forever returns 0
    stop = threading.Event()

    def on_started(srv: Any) -> None:
        link.attach(srv)
        threading.Thread(target=link.report, args=(stop,), name="tfsctl-worker-report", daemon=True).start()
        if config is not None:  # a restarted worker catches up with the last reload
            srv.core.apply_reload(_reload_request(config), None)
        link.send(Started(srv.grpc_port, srv.rest_port or 0))

    try:
        code = server.serve_forever(grace=grace, on_started=on_started)
    except Exception as e:  # noqa: BLE001 - reported through the exit code and the log
        log.error("worker %d failed: %s", index, e)
        code = 1
    finally:
        stop.set()
        # A second SIGTERM/SIGINT may still come (Ctrl-C reaches the whole process group, then the supervisor's
        # SIGTERM follows); the interpreter's shutdown restores default handlers, so block them: exit with our code.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    conn.close()
    sys.exit(code)


__all__ = ["pin_to_cpu", "worker_main"]
