"""``tfsctl serve --workers N``: N serving processes behind the same gRPC and REST ports (tfsctl-only, opt-in).

Why: one Python process keeps at most about one core busy (the GIL), so a server on an N-core machine serves N
times more with N processes. Each worker is a full :class:`~tfsctl.serving.server.ModelServer` with its own copy of
every model; the kernel spreads connections over them (SO_REUSEPORT on both ports). A supervisor process starts
them, keeps what a client sees consistent whichever worker answers, and stops them:

- **Reload** (ModelService.HandleReloadConfigRequest): the worker that receives it hands it to the supervisor, which
  has every worker apply it (one reload at a time, so all apply the same sequence) and answers only when all have
  (each waits for newly added models as usual). GetModelStatus and labels then agree on any connection.
- **Health**: overall health (gRPC ``""`` and REST ``/v1/health/ready``) is SERVING only while every worker has
  every configured model available. Per-model gRPC health is each worker's own.
- **Metrics**: prometheus_client's multiprocess mode; the metrics page of any worker shows the sum over all workers
  (every tfsctl metric is a counter or a histogram).
- **Stop**: SIGTERM/SIGINT to the supervisor stops every worker gracefully (each drains in-flight requests and
  unloads), then the supervisor exits 0. A worker that dies is restarted (at most ``MAX_RESTARTS`` times) with the
  model config of the last reload.

Model versions found on disk are loaded by each worker on its own poll, so during a version change two workers may
briefly serve different versions, exactly as two TF Serving replicas behind a load balancer would.
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection, wait
from typing import Any

log = logging.getLogger(__name__)

MAX_RESTARTS = 5
_REPORT_PERIOD_S = 0.05
_RELOAD_TIMEOUT_S = 3600.0
_RESIGNAL_S = 1.0


# --- supervisor ------------------------------------------------------------------------------------------------


def _reserve_port(host: str) -> tuple[socket.socket, int]:
    """A free port, held by a bound (not listening) SO_REUSEPORT socket so no other program takes it meanwhile."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, 0))
    return sock, int(sock.getsockname()[1])


@dataclass
class _Worker:
    index: int
    process: Any
    conn: Connection
    ready: bool = False
    started: bool = False
    grpc_port: int = 0
    rest_port: int = 0


@dataclass
class _Reload:
    origin: int
    rid: str
    config: bytes
    wait_seconds: float | None
    waiting: set[int] = field(default_factory=set)
    pids: set[int] = field(default_factory=set)  # the workers asked to apply it
    error: tuple[str, str] | None = None
    response: bytes = b""


class Supervisor:
    """Starts ``workers`` serving processes for ``options`` and coordinates them (see the module docstring)."""

    def __init__(self, options: Any, workers: int, *, grace: float = 10.0) -> None:
        if workers < 1:
            from tfsctl.errors import ConfigError

            raise ConfigError(f"--workers must be >= 1, got {workers}")
        self.options = replace(options, workers=workers)
        self.count = workers
        self.grace = grace
        self.grpc_port: int | None = None
        self.rest_port: int | None = None
        self._ctx = multiprocessing.get_context("spawn")
        self._workers: dict[int, _Worker] = {}
        self._reserved: list[socket.socket] = []
        self._stop = threading.Event()
        self._signalled = False  # set by the signal handler (stop() sets _stop): see _stopping
        self._all_ready = False
        self._reloads: list[_Reload] = []
        self._config: bytes | None = None  # the model config of the last reload, for restarted workers
        self._restarts = 0
        self._metrics_dir = ""
        self._started = threading.Event()

    # --- lifecycle ---

    def start(self) -> None:
        """Validate, reserve the ports, start the workers; returns once every worker has bound both ports."""
        opts = self.options
        opts.validate()
        opts.model_config()  # a bad config fails here, once, not in N workers
        if opts.port == 0:
            sock, port = _reserve_port(opts.host)
            self._reserved.append(sock)
            opts.port = port
        self._metrics_dir = tempfile.mkdtemp(prefix="tfsctl-metrics-")
        for i in range(self.count):
            self._spawn(i, None)
        deadline = time.monotonic() + 600
        while not all(w.started for w in self._workers.values()):
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("workers did not bind their ports within 600 s")
            self._step(0.1)
            dead = [w for w in self._workers.values() if not w.process.is_alive() and not w.started]
            if dead:
                self.stop()
                raise OSError(f"worker {dead[0].index} exited while starting (exit code {dead[0].process.exitcode}); "
                              "see its log above")
        first = self._workers[0]
        self.grpc_port, self.rest_port = first.grpc_port, first.rest_port or None
        self._started.set()

    def _spawn(self, index: int, config: bytes | None) -> None:
        parent, child = self._ctx.Pipe()
        env_key = "PROMETHEUS_MULTIPROC_DIR"
        previous = os.environ.get(env_key)
        os.environ[env_key] = self._metrics_dir  # inherited by the child before it imports prometheus_client
        try:
            process = self._ctx.Process(target=_worker_main, args=(index, self.options, child, config, self.grace),
                                        name=f"tfsctl-worker-{index}", daemon=False)
            process.start()
        finally:
            if previous is None:
                os.environ.pop(env_key, None)
            else:
                os.environ[env_key] = previous
        child.close()
        self._workers[index] = _Worker(index, process, parent)
        log.info("started worker %d (pid %d)", index, process.pid)

    def serve_forever(self, on_started: Callable[[Supervisor], None] | None = None) -> int:
        """Start, coordinate until SIGTERM/SIGINT, stop every worker gracefully; 0 when all stopped cleanly."""
        previous = {}

        def on_signal(signum: int, _frame: Any) -> None:
            if self._signalled:
                return  # a repeat: already stopping (a plain flag, no lock: see ModelServer._signalled)
            self._signalled = True
            log.info("supervisor received %s, stopping workers", signal.Signals(signum).name)

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, on_signal)
        try:
            self.start()
            if on_started is not None:
                on_started(self)
            while not self._stopping():
                self._step(0.2)
                if self._restarts > MAX_RESTARTS:
                    log.error("workers keep dying (%d restarts); stopping", self._restarts)
                    self.stop()
                    return 1
            return self.stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def stop(self) -> int:
        """SIGTERM every worker, wait for them (grace + unload time), kill stragglers; 0 when all exited 0."""
        self._stop.set()
        deadline = time.monotonic() + self.grace + 60
        # Repeat the SIGTERM until each worker exits: one still between fork and exec, or still in interpreter
        # start-up, may lose the first (a worker already stopping takes a repeat as the same request).
        # At most one SIGTERM per worker per _RESIGNAL_S: a sentinel turns ready as its process exits, a moment
        # before the process can be reaped, and re-signalling on every wake-up then floods the other workers.
        signalled: dict[int, float] = {}
        while time.monotonic() < deadline:
            alive = [w for w in self._workers.values() if w.process.is_alive()]
            if not alive:
                break
            now = time.monotonic()
            for w in alive:
                if now - signalled.get(w.index, -math.inf) >= _RESIGNAL_S:
                    signalled[w.index] = now
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(w.process.pid, signal.SIGTERM)
            ready = set(wait([w.process.sentinel for w in alive], min(_RESIGNAL_S, max(0.0, deadline - now))))
            for w in alive:
                if w.process.sentinel in ready:
                    w.process.join(1.0)  # it is exiting: wait until it can be reaped
        code = 0
        for w in self._workers.values():
            w.process.join(max(0.0, deadline - time.monotonic()))
            if w.process.is_alive():
                log.error("worker %d did not stop in time; its threads' stacks follow, then it is killed", w.index)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w.process.pid, _DUMP_STACKS)  # faulthandler in the worker writes them to its stderr
                w.process.join(1.0)
                w.process.kill()
                w.process.join(5)
                code = 1
            elif w.process.exitcode == -signal.SIGTERM and not w.started:
                pass  # ended by the stop's SIGTERM before it could install its handlers: nothing was served
            elif w.process.exitcode != 0:
                log.error("worker %d (pid %s) exited with code %s", w.index, w.process.pid, w.process.exitcode)
                code = 1
            w.conn.close()
        self._workers.clear()
        for sock in self._reserved:
            sock.close()
        self._reserved.clear()
        if self._metrics_dir:
            shutil.rmtree(self._metrics_dir, ignore_errors=True)
            self._metrics_dir = ""
        return code

    @property
    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers.values()]

    # --- coordination ---

    def _stopping(self) -> bool:
        """A stop was asked for: by :meth:`stop` or by a signal (whose handler may only set a plain flag)."""
        return self._stop.is_set() or self._signalled

    def _step(self, timeout: float) -> None:
        """Handle every message that arrives within ``timeout`` and any worker that died."""
        conns = {w.conn: w for w in self._workers.values()}
        sentinels = {w.process.sentinel: w for w in self._workers.values()}
        for ready in wait([*conns, *sentinels], timeout):
            if ready in conns:
                w = conns[ready]
                try:
                    message = ready.recv()
                except (EOFError, OSError):
                    continue  # the sentinel reports the death
                self._handle(w, message)
            elif ready in sentinels:
                self._died(sentinels[ready])

    def _handle(self, w: _Worker, message: tuple) -> None:
        kind = message[0]
        if kind == "started":
            w.started, w.grpc_port, w.rest_port = True, message[1], message[2]
        elif kind == "ready":
            w.ready = bool(message[1])
            self._broadcast_health()
        elif kind == "reload":
            _, rid, config, wait_seconds = message
            self._reloads.append(_Reload(w.index, rid, config, wait_seconds))
            if len(self._reloads) == 1:
                self._begin_reload()
        elif kind == "applied":
            _, rid, error, response = message
            current = self._reloads[0] if self._reloads else None
            if current is None or current.rid != rid:
                return
            current.waiting.discard(w.index)
            if w.index == current.origin:
                current.response = response
            if error is not None and current.error is None:
                current.error = error
            if not current.waiting:
                self._finish_reload()

    def _begin_reload(self) -> None:
        current = self._reloads[0]
        current.waiting = set(self._workers)
        current.pids = {w.process.pid for w in self._workers.values()}
        for other in self._workers.values():
            self._send(other, ("apply", current.rid, current.config, current.wait_seconds))

    def _finish_reload(self) -> None:
        current = self._reloads.pop(0)
        if current.error is None:  # the config restarted workers start from; a refused one changed nothing
            self._config = current.config
            for w in self._workers.values():  # a worker restarted meanwhile started from the previous config
                if w.process.pid not in current.pids:
                    self._send(w, ("apply", uuid.uuid4().hex, current.config, None))
        origin = self._workers.get(current.origin)
        if origin is not None:
            self._send(origin, ("reloaded", current.rid, current.error, current.response))
        if self._reloads:
            self._begin_reload()

    def _broadcast_health(self) -> None:
        all_ready = len(self._workers) == self.count and all(w.ready for w in self._workers.values())
        if all_ready != self._all_ready:
            self._all_ready = all_ready
            for w in self._workers.values():
                self._send(w, ("cluster", all_ready))

    def _send(self, w: _Worker, message: tuple) -> None:
        try:
            w.conn.send(message)
        except (OSError, ValueError):
            pass  # a dying worker; its sentinel reports it

    def _died(self, w: _Worker) -> None:
        w.process.join(1)
        self._workers.pop(w.index, None)
        w.conn.close()
        if self._reloads:  # it will never answer; a restarted worker starts from the new config
            current = self._reloads[0]
            current.waiting.discard(w.index)
            if w.index == current.origin:
                current.origin = -1
            if not current.waiting:
                self._finish_reload()
        if self._stopping():
            return
        self._restarts += 1
        log.error("worker %d (pid %s) exited with code %s; restarting it", w.index, w.process.pid, w.process.exitcode)
        self._all_ready = True  # force a broadcast: the cluster is not ready until the new worker is
        self._broadcast_health()
        if self._restarts <= MAX_RESTARTS:
            self._spawn(w.index, self._config)


def serve_workers(options: Any, workers: int, *, grace: float = 10.0,
                  on_started: Callable[[Supervisor], None] | None = None) -> int:
    """Run ``workers`` serving processes on ``options``' ports until SIGTERM/SIGINT; returns the exit code."""
    return Supervisor(options, workers, grace=grace).serve_forever(on_started)


# --- worker ----------------------------------------------------------------------------------------------------

# Sent by the supervisor to a worker that did not stop in time, just before killing it: every thread's stack goes
# to the worker's stderr (the server log), so a hang says where it was.
_DUMP_STACKS = signal.SIGUSR1


class _Link:
    """The worker's end of the supervisor pipe: coordinated reloads, cluster readiness, readiness reports."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.cluster_ready = False
        self.core: Any = None
        self.manager: Any = None
        self._send_lock = threading.Lock()
        self._waiting: dict[str, tuple[threading.Event, list]] = {}
        self._own_ready: Callable[[Any], bool] = lambda _manager: False
        self._apply: Callable[..., Any] = lambda *_args: None

    def install(self) -> None:
        """Hook this process's Manager, ServingCore and Metrics (class level, before the server exists, so no
        request or health check can see an unhooked server; this process serves nothing else)."""
        from tfsctl.core.manager import Manager
        from tfsctl.serving.metrics import Metrics
        from tfsctl.serving.service import ServingCore

        link = self
        self._own_ready, self._apply = Manager.is_ready, ServingCore.reload_config

        def is_ready(manager: Any) -> bool:
            return bool(link._own_ready(manager)) and link.cluster_ready

        def reload_config(core: Any, request: Any, wait_seconds: float | None = None) -> Any:
            return link.reload_config(request, wait_seconds)

        Manager.is_ready = is_ready  # type: ignore[method-assign]
        ServingCore.reload_config = reload_config  # type: ignore[method-assign]
        Metrics.collect = lambda _metrics: _collect_all_workers()  # type: ignore[method-assign]

    def attach(self, server: Any) -> None:
        self.core, self.manager = server.core, server.manager
        threading.Thread(target=self.listen, name="tfsctl-worker-link", daemon=True).start()

    def send(self, message: tuple) -> None:
        with self._send_lock:
            self.conn.send(message)

    def reload_config(self, request: Any, wait_seconds: float | None = None) -> Any:
        """A reload received here: every worker applies it (via the supervisor) before this one answers."""
        from tensorflow_serving.apis import model_management_pb2

        rid = uuid.uuid4().hex
        done, result = threading.Event(), []
        self._waiting[rid] = (done, result)
        try:
            self.send(("reload", rid, request.config.SerializeToString(), wait_seconds))
            if not done.wait(_RELOAD_TIMEOUT_S):
                from tfsctl.errors import Unavailable

                raise Unavailable("reload not confirmed by every worker in time")
        finally:
            self._waiting.pop(rid, None)
        error, response = result
        if error is not None:
            raise _error_from(error)
        reply = model_management_pb2.ReloadConfigResponse()
        reply.ParseFromString(response)
        return reply

    def apply(self, rid: str, config: bytes, wait_seconds: float | None) -> None:
        error, response = None, b""
        try:
            response = self._apply(self.core, _reload_request(config), wait_seconds).SerializeToString()
        except Exception as e:  # noqa: BLE001 - reported to the worker that received the reload
            error = (type(e).__name__, str(e))
        self.send(("applied", rid, error, response))

    def listen(self) -> None:
        """Messages from the supervisor, until the pipe closes."""
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                return
            kind = message[0]
            if kind == "apply":
                threading.Thread(target=self.apply, args=message[1:], name="tfsctl-worker-apply", daemon=True).start()
            elif kind == "reloaded":
                _, rid, error, response = message
                waiter = self._waiting.get(rid)
                if waiter is not None:
                    waiter[1].extend([error, response])
                    waiter[0].set()
            elif kind == "cluster":
                self.cluster_ready = bool(message[1])

    def report(self, stop: threading.Event) -> None:
        """Tell the supervisor whenever this worker's own readiness changes."""
        last: bool | None = None
        while not stop.wait(_REPORT_PERIOD_S):
            try:
                ready = bool(self._own_ready(self.manager))
            except Exception:  # noqa: BLE001 - readiness must never kill the worker
                ready = False
            if ready != last:
                try:
                    self.send(("ready", ready))
                except OSError:
                    return
                last = ready


def _reload_request(config: bytes) -> Any:
    from tensorflow_serving.apis import model_management_pb2

    request = model_management_pb2.ReloadConfigRequest()
    request.config.ParseFromString(config)
    return request


def _error_from(error: tuple[str, str]) -> Exception:
    """The typed serving error a worker raised, rebuilt on the worker that answers the client."""
    from tfsctl import errors

    cls = getattr(errors, error[0], None)
    if isinstance(cls, type) and issubclass(cls, errors.ServingError):
        return cls(error[1])
    return errors.Internal(f"{error[0]}: {error[1]}")


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


def _worker_main(index: int, options: Any, conn: Connection, config: bytes | None, grace: float) -> None:
    """One serving process (runs in a fresh interpreter)."""
    import sys

    logging.basicConfig(level=logging.INFO,
                        format=f"%(asctime)s %(levelname)s worker-{index} %(name)s: %(message)s")
    if getattr(options, "log_format", "text") == "json":
        from tfsctl.serving.logs import use_json_lines

        use_json_lines(worker=index)
    import faulthandler

    faulthandler.register(_DUMP_STACKS, all_threads=True)  # the supervisor's question before it kills a straggler
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if options.worker_cpu_affinity:
        pin_to_cpu(index)
    from tfsctl.serving.server import ModelServer

    # Until serve_forever installs its own handlers (and again after it restores these), a SIGTERM/SIGINT is a
    # request to stop: the supervisor may be stopping while this worker still starts (e.g. just restarted).
    # Plain flags only: a handler may take no lock (see ModelServer._signalled).
    requested: list[bool] = []
    servers: list[Any] = []

    def on_early_signal(_signum: int, _frame: Any) -> None:
        if requested:
            return  # a repeat: already requested
        requested.append(True)
        for srv in servers:
            srv._signalled = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_early_signal)
    link = _Link(conn)
    link.install()
    server = ModelServer(options)
    servers.append(server)
    if requested:
        server._stop_event.set()  # start() sees it and stops before binding; serve_forever returns 0
    stop = threading.Event()

    def on_started(srv: Any) -> None:
        link.attach(srv)
        threading.Thread(target=link.report, args=(stop,), name="tfsctl-worker-report", daemon=True).start()
        if config is not None:  # a restarted worker catches up with the last reload
            link._apply(srv.core, _reload_request(config), None)
        link.send(("started", srv.grpc_port, srv.rest_port or 0))

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
