"""``tfsctl serve --workers N``: the supervisor of N serving processes behind the same gRPC and REST ports
(tfsctl-only, opt-in). It never loads TensorFlow (``tests/test_layers.py`` checks its module-level imports); each
worker (:mod:`tfsctl.serving.worker`) does.

Why: one Python process keeps at most about one core busy (the GIL), so a server on an N-core machine serves N
times more with N processes. Each worker is a full :class:`~tfsctl.serving.server.ModelServer` with its own copy of
every model; the kernel spreads connections over them (SO_REUSEPORT on both ports). The supervisor starts them,
keeps what a client sees consistent whichever worker answers, and stops them; the messages between them are the
dataclasses of :mod:`tfsctl.serving.worker_messages`:

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

from tfsctl.serving.worker import worker_main
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

MAX_RESTARTS = 5
_RESIGNAL_S = 1.0


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
    error: WorkerError | None = None
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
            process = self._ctx.Process(target=worker_main, args=(index, self.options, child, config, self.grace),
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
                return  # a repeat: already stopping (a plain flag, no lock: see ModelServer.request_stop)
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
                    os.kill(w.process.pid, DUMP_STACKS)  # faulthandler in the worker writes them to its stderr
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

    def _handle(self, w: _Worker, message: object) -> None:
        if isinstance(message, Started):
            w.started, w.grpc_port, w.rest_port = True, message.grpc_port, message.rest_port
        elif isinstance(message, Ready):
            w.ready = message.ready
            self._broadcast_health()
        elif isinstance(message, ReloadAsked):
            self._reloads.append(_Reload(w.index, message.rid, message.config, message.wait_seconds))
            if len(self._reloads) == 1:
                self._begin_reload()
        elif isinstance(message, Applied):
            current = self._reloads[0] if self._reloads else None
            if current is None or current.rid != message.rid:
                return
            current.waiting.discard(w.index)
            if w.index == current.origin:
                current.response = message.response
            if message.error is not None and current.error is None:
                current.error = message.error
            if not current.waiting:
                self._finish_reload()
        else:
            log.error("worker %d sent an unknown message %r; ignored", w.index, type(message).__name__)

    def _begin_reload(self) -> None:
        current = self._reloads[0]
        current.waiting = set(self._workers)
        current.pids = {w.process.pid for w in self._workers.values()}
        for other in self._workers.values():
            self._send(other, Apply(current.rid, current.config, current.wait_seconds))

    def _finish_reload(self) -> None:
        current = self._reloads.pop(0)
        if current.error is None:  # the config restarted workers start from; a refused one changed nothing
            self._config = current.config
            for w in self._workers.values():  # a worker restarted meanwhile started from the previous config
                if w.process.pid not in current.pids:
                    self._send(w, Apply(uuid.uuid4().hex, current.config, None))
        origin = self._workers.get(current.origin)
        if origin is not None:
            self._send(origin, Reloaded(current.rid, current.error, current.response))
        if self._reloads:
            self._begin_reload()

    def _broadcast_health(self) -> None:
        all_ready = len(self._workers) == self.count and all(w.ready for w in self._workers.values())
        if all_ready != self._all_ready:
            self._all_ready = all_ready
            for w in self._workers.values():
                self._send(w, ClusterReady(all_ready))

    def _send(self, w: _Worker, message: object) -> None:
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


__all__ = ["MAX_RESTARTS", "Supervisor", "serve_workers"]
