"""``tfsctl serve``: the model server process, wired the way ``tensorflow_model_server`` is.

From :class:`~tfsctl.serving.options.ServerOptions` (tensorflow_model_server's flags; re-exported here),
:class:`ModelServer` builds a ServerCore (which builds the Manager) -> RequestCore (-> Batcher) -> gRPC (+ REST)
from them, keeps the health service in step with the manager, polls ``--model_config_file`` for changes and shuts
down gracefully: stop accepting, let in-flight requests finish, then unload the models.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2
from tensorflow_serving.apis.get_model_status_pb2 import ModelVersionStatus

from tfsctl.core.config import load_monitoring_config, load_ssl_config, parse_model_server_config
from tfsctl.core.loader import Loader, load_op_library_files
from tfsctl.core.memory import steady_thresholds
from tfsctl.core.remote_loader import remote_aware_factory
from tfsctl.core.request_log import RequestLogger
from tfsctl.core.servable_request import has_available_version
from tfsctl.core.server_core import ServerCore, ServerCoreOptions
from tfsctl.errors import ConfigError, ServingError, Unknown
from tfsctl.serving.batcher import Batcher
from tfsctl.serving.grpc_api import RequestGate, add_services, update_health
from tfsctl.serving.grpc_loop import LoopServer
from tfsctl.serving.logs import AccessLog
from tfsctl.serving.metrics import Metrics
from tfsctl.serving.options import (  # noqa: F401 - DEFAULT_GRPC_MAX_MESSAGE_BYTES, ServerOptions: re-exported
    DEFAULT_GRPC_MAX_MESSAGE_BYTES,
    LoadSettings,
    ServerOptions,
    parse_channel_arguments,
)
from tfsctl.serving.profiler import add_profiler_service
from tfsctl.serving.request_core import RequestCore
from tfsctl.serving.rest_api import RestServer
from tfsctl.serving.tracing import Tracer, traces_endpoint

log = logging.getLogger(__name__)

_HEALTH_PERIOD_S = 0.1
_LOAD_POLL_S = 0.05
# How soon serve_forever notices a signal (its handler only sets a flag: see ModelServer.request_stop).
_SIGNAL_POLL_S = 0.1


@dataclass(frozen=True)
class ServerHooks:
    """What a process that embeds the server plugs in (``serve --workers``: each worker); None keeps the server's own.

    The server calls them, nothing is replaced on a class: ``ready(own)`` turns this server's own readiness (every
    configured model has an AVAILABLE version) into the readiness it reports (gRPC health "", /v1/health/ready,
    v2 ready); ``reload(request, wait_seconds)`` answers a ReloadConfig in place of applying it here (the request
    core's ``apply_reload`` applies it locally); ``collect_metrics()`` gives the metric families the metrics page
    renders. The stop hook is :meth:`ModelServer.request_stop`, safe to call from a signal handler.
    """

    ready: Callable[[bool], bool] | None = None
    reload: Callable[[Any, float | None], Any] | None = None
    collect_metrics: Callable[[], Iterable] | None = None


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def _make_server_core(options: ServerOptions, metrics: Any, loader_factory: Callable[..., Any],
                      request_logger: Any) -> Any:
    """The ServerCore (event bus, Manager, Source) from the polling, loading and label flags (ServerCore::Options)."""
    return ServerCore(ServerCoreOptions(
        file_system_poll_wait_seconds=options.file_system_poll_wait_seconds,
        max_num_load_retries=options.max_num_load_retries,
        load_retry_interval_seconds=options.load_retry_interval,
        num_load_threads=max(1, options.num_load_threads),  # 0 = TF Serving's serial loads = one thread
        num_unload_threads=max(1, options.num_unload_threads),
        # s3:// and gs:// versions are copied into the local cache, then loaded by the ordinary Loader
        loader_factory=remote_aware_factory(loader_factory, cache=options.model_cache_dir or None),
        allow_version_labels_for_unavailable_models=options.allow_version_labels_for_unavailable_models,
        servable_versions_always_present=options.servable_versions_always_present,
        retry_failed_versions_on_change=options.retry_failed_versions_on_change,
        state_subscribers=(metrics.on_servable_state,),
        request_logger=request_logger,
    ))


def _make_batcher(settings: LoadSettings, metrics: Any, isolate_failures: bool = False,
                  wait_for_answered_clients: bool = False) -> Any:
    """The Batcher; ``--enable_per_model_batching_parameters`` reads each version's batching_params.pbtxt."""
    return Batcher(settings.batching_parameters, metrics, per_model=settings.enable_per_model_batching_params,
                   isolate_failures=isolate_failures, wait_for_answered_clients=wait_for_answered_clients)


_HEALTH_METHOD_PREFIX = "/grpc.health.v1.Health/"


class _HideHealth(grpc.aio.ServerInterceptor):
    """Hides grpc.health.v1 (UNIMPLEMENTED) under ``--enable_grpc_healthcheck_service=false``, as
    tensorflow_model_server without the flag; installed only then, so the default path has no interceptor."""

    async def intercept_service(self, continuation, handler_call_details):
        if handler_call_details.method.startswith(_HEALTH_METHOD_PREFIX):
            return None
        return await continuation(handler_call_details)


def _malloc_trim() -> None:
    """Give the heap pages freed while loading back to the OS (glibc only; elsewhere nothing to do)."""
    name = ctypes.util.find_library("c")
    if not name:
        return
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError):
        pass


class ModelServer:
    """One serving process: gRPC (and REST) front ends over one ServerCore (which owns the Manager), started as
    TF Serving's ServerCore::Create."""

    def __init__(self, options: ServerOptions, hooks: ServerHooks | None = None) -> None:
        self.options = options
        self.hooks = hooks or ServerHooks()
        self.grpc_port: int | None = None
        self.rest_port: int | None = None
        self.metrics: Any = None
        self.server_core: Any = None  # tfsctl.core.server_core.ServerCore: config, labels, Manager and Source
        self.manager: Any = None  # its Manager (version states, state events)
        self.batcher: Any = None
        self.core: Any = None
        self.rest: Any = None
        self.monitoring_config: Any = None
        self.request_logger: Any = None
        self.access_log: Any = None
        self.tracer: Any = None
        self.load_settings: LoadSettings | None = None
        self._grpc: Any = None  # a grpc_loop.LoopServer once started
        self._gate = RequestGate()
        self._health: Any = None
        self._started = False
        self._stop_event = threading.Event()
        # Set by request_stop (signal handlers), which may take no lock (the main thread may hold the Event's own
        # when a signal arrives, and a handler calling Event.set() would then wait for itself); relayed by
        # _stop_wanted in the main thread.
        self._stop_requested = False
        self._stop_signal = ""  # the signal that asked for the stop, logged where the stop is relayed
        self._health_changed = threading.Event()
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._config_text: str | None = None

    # --- lifecycle ---------------------------------------------------------------------------------------------

    def start(self, load_timeout: float | None = None) -> None:
        """Validate flags, load the initial models, then open the gRPC (and REST) ports, as ServerCore::Create.

        Returns once the ports are bound. The ports open only after every configured model whose base path holds
        versions has loaded them or failed all its retries, so a client that connects is served at once (a model
        with no version on disk yet does not hold the ports closed: health and status report it).
        ``load_timeout`` bounds that wait (None: as long as it takes, as TF Serving); the ports then open anyway.
        A stop request (SIGTERM under :meth:`serve_forever`) during the wait returns without opening them.
        Raises ConfigError for bad flags or files and OSError when a port cannot be bound.
        """
        if self._started or self._stopped.is_set():
            raise RuntimeError("a ModelServer starts once; create a new one")
        self._started = True
        opts = self.options
        steady_thresholds()  # a large request's freed scratch is reused by the next, not page-faulted again
        try:
            opts.validate()
            config = opts.model_config()
            if opts.model_config_file:
                self._config_text = Path(opts.model_config_file).read_text()
            credentials = self._credentials()
            if opts.op_library:  # before any model: graphs using the ops import (tfsctl-only flag)
                load_op_library_files([p.strip() for p in opts.op_library.split(",") if p.strip()])
            settings = self.load_settings = opts.load_settings()
            if opts.monitoring_config_file:
                self.monitoring_config = load_monitoring_config(opts.monitoring_config_file)

            self.metrics = Metrics(collect=self.hooks.collect_metrics)
            self._gate.gauge = self.metrics.grpc_in_flight
            self.request_logger = RequestLogger(saved_model_tags=settings.load_options.saved_model_tags,
                                                max_file_bytes=opts.request_log_max_file_bytes,
                                                counter=self.metrics.observe_request_log)
            self.server_core = _make_server_core(
                opts, self.metrics, functools.partial(Loader, options=settings.load_options, observer=self.metrics),
                self.request_logger)
            self.manager = self.server_core.manager
            if settings.enable_batching:
                self.batcher = _make_batcher(settings, self.metrics, opts.batching_isolate_failures,
                                             opts.batching_wait_for_answered_clients)
            self.core = RequestCore(self.server_core, self.batcher,
                                    enable_signature_method_name_check=opts.enable_signature_method_name_check,
                                    max_request_bytes=int(opts.grpc_max_message_bytes), metrics=self.metrics,
                                    request_logger=self.request_logger, readiness=self.hooks.ready,
                                    reload=self.hooks.reload)
            if opts.access_log:
                try:
                    self.access_log = AccessLog(opts.access_log, opts.log_format)
                except OSError as e:
                    raise ConfigError(f"--access_log {opts.access_log}: cannot open: {e.strerror or e}") from None
                self.core.observers.append(self.access_log)
                self.core.tag_requests = True
            endpoint = traces_endpoint(opts.trace_otlp_endpoint)
            if endpoint:
                self.tracer = Tracer(endpoint)
                self.core.observers.append(self.tracer)
                self.core.tag_requests = True
                log.info("request traces go to %s (OTLP/HTTP)", endpoint)
            self.server_core.apply_config(config)
            self.server_core.start()
        except BaseException:
            self._abort_start()
            raise
        try:
            self._wait_for_initial_loads(load_timeout)
        except BaseException:
            self._abort_start()
            raise
        if opts.flush_filesystem_caches:
            _malloc_trim()
        with self._stop_lock:  # a stop() from another thread either comes first (no ports) or sees them open
            if self._stop_wanted():
                return  # stopped while loading: the ports never open
            try:
                self._start_grpc(credentials)
                if opts.rest_api_port > 0:
                    if opts.rest_api_port == opts.port:  # as tensorflow_model_server: logged, REST skipped
                        log.error("--rest_api_port cannot be the same as --port; REST is not started")
                    else:
                        self._start_rest()
            except BaseException:
                self._abort_start()
                raise
        self._spawn(self._health_loop, "tfsctl-health")
        if opts.model_config_file and opts.model_config_file_poll_wait_seconds > 0:
            self._spawn(self._config_loop, "tfsctl-config-poll")
        where = f"{_address(opts.host, opts.port)} (port {self.grpc_port})" if self.grpc_port else "no TCP port"
        if opts.grpc_socket_path:
            where += f" and unix:{opts.grpc_socket_path}"
        log.info("serving gRPC on %s, REST on %s", where, self.rest_port or "off")

    def _wait_for_initial_loads(self, timeout: float | None) -> None:
        """Block until no initial version is still START/LOADING (or ``timeout``, or a stop request)."""
        pending = (ModelVersionStatus.START, ModelVersionStatus.LOADING)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            states = {name: self.manager.version_states(name) for name in self.manager.model_names()}
            loading = [n for n, vs in states.items() if any(v.state in pending for v in vs)]
            if not loading:
                break
            if deadline is not None and time.monotonic() >= deadline:
                log.warning("opening the ports while model(s) %s still load (load timeout %.1f s)",
                            ", ".join(loading), timeout)
                return
            if self._stop_event.wait(_LOAD_POLL_S) or self._stop_wanted():
                return
        failed = [f"{{name: {n} version: {v.version}}} due to error: {v.error}" for n, vs in states.items()
                  if not has_available_version(vs) for v in vs if v.error]
        if failed:  # as ServerCore::Create: the server does not start (tensorflow_model_server exits)
            raise Unknown(f"{len(failed)} model(s) did not become available: {'; '.join(failed)}")

    def _start_grpc(self, credentials: grpc.ServerCredentials | None) -> None:
        opts = self.options
        # Batched requests block a worker while they wait in the queue: allow enough of them to fill batches.
        threads = opts.grpc_max_threads or max(64, 8 * (os.cpu_count() or 1))
        max_bytes = int(opts.grpc_max_message_bytes)
        channel_options: dict[str, int | str] = {
            "grpc.max_receive_message_length": max_bytes,
            "grpc.max_send_message_length": max_bytes,
            "grpc.so_reuseport": 1 if opts.workers > 1 else 0,  # serve --workers: one port, N processes
        }
        channel_options.update(parse_channel_arguments(opts.grpc_channel_arguments))
        loop_server = LoopServer(threads=threads, options=list(channel_options.items()),
                                 interceptors=[] if opts.enable_grpc_healthcheck_service else [_HideHealth()])
        self._grpc = loop_server
        server = loop_server.server
        self._health = add_services(loop_server, self.core, self.metrics, max_tensor_bytes=max_bytes,
                                    tensor_content=opts.enable_serialization_as_tensor_content, gate=self._gate)
        if opts.enable_grpc_healthcheck_service:  # the service names tensorflow_model_server reports SERVING
            for name in ("ModelService", "PredictionService"):
                self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if opts.enable_profiler:  # TF Serving's ProfilerService, served in process (serving/profiler.py)
            add_profiler_service(server, self.core.observers)
        addresses = []
        if opts.port != 0 or not opts.grpc_socket_path:
            addresses.append(_address(opts.host, opts.port))
        if opts.grpc_socket_path:
            addresses.append(f"unix:{opts.grpc_socket_path}")
        for address in addresses:
            port = loop_server.add_port(address, credentials)
            if port == 0:
                reason = "address in use or not available"
                if credentials is not None:
                    reason += ", or the SSL config's server_key/server_cert are not a valid PEM key and certificate"
                what = address if address.startswith("unix:") else f"port {address}"
                raise OSError(f"cannot bind gRPC {what}: {reason}")
            if not address.startswith("unix:"):
                self.grpc_port = port
        loop_server.start()

    def _credentials(self) -> grpc.ServerCredentials | None:
        if not self.options.ssl_config_file:
            return None
        ssl = load_ssl_config(self.options.ssl_config_file)
        return grpc.ssl_server_credentials(
            [(ssl.server_key.encode(), ssl.server_cert.encode())],
            root_certificates=ssl.custom_ca.encode() if ssl.custom_ca else None,
            require_client_auth=bool(ssl.client_verify),
        )

    def _start_rest(self) -> None:
        opts = self.options
        kwargs: dict[str, Any] = {}
        # As TF Serving's http_server.cc: the Prometheus page exists only under a monitoring config that enables
        # it (its path, empty -> the default, is filled in by load_monitoring_config); otherwise that path is an
        # unknown route like any other.
        if self.monitoring_config is not None and self.monitoring_config.prometheus_config.enable:
            kwargs["metrics_path"] = self.monitoring_config.prometheus_config.path
        if opts.workers > 1:
            kwargs["reuse_port"] = True  # serve --workers: every worker process listens on the same port
        self.rest = RestServer(self.core, self.metrics, opts.host, opts.rest_api_port,
                               timeout_ms=opts.rest_api_timeout_in_ms, num_threads=opts.rest_api_num_threads,
                               enable_cors=opts.rest_api_enable_cors_support, **kwargs)
        self.rest.start()
        self.rest_port = self.rest.port

    def _abort_start(self) -> None:
        """Undo a half-done start so a failed start leaves no threads or ports behind."""
        if self._grpc is not None:
            self._grpc.stop(None)
            self._grpc = None
        if self.access_log is not None:
            self.access_log.close()
        if self.tracer is not None:
            self.tracer.close()
        for part in (self.rest, self.batcher, self.request_logger, self.server_core):
            if part is not None:
                try:
                    part.stop()
                except Exception:  # noqa: BLE001 - best effort while already failing
                    log.exception("cleanup after a failed start")
        self._stopped.set()

    def _spawn(self, target: Any, name: str) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def wait_until_ready(self, timeout: float | None = None) -> bool:
        """True once every configured model has an AVAILABLE version (False on timeout)."""
        if self.manager is None:
            return False
        return bool(self.manager.wait_until_ready(365 * 86400.0 if timeout is None else timeout))

    def grpc_waiting(self) -> int:
        """gRPC calls (and other jobs) waiting for a thread of the gRPC pool, not yet running; 0 before start."""
        return self._grpc.executor.waiting() if self._grpc is not None else 0

    def request_stop(self) -> None:
        """Ask the server to stop (gracefully, as on SIGTERM): before :meth:`start` binds the ports it then never
        does; under :meth:`serve_forever` it stops and returns. Sets a plain flag only, so a signal handler may
        call it; idempotent."""
        self._stop_requested = True

    def _stop_wanted(self) -> bool:
        """Whether a stop was asked for, by :meth:`stop` or :meth:`request_stop` (relayed to the stop event here,
        in the calling thread: never inside a signal handler)."""
        if self._stop_requested and not self._stop_event.is_set():
            if self._stop_signal:
                log.info("received %s, shutting down", self._stop_signal)
            self._stop_event.set()
        return self._stop_event.is_set()

    def stop(self, grace: float | None = 10.0, *, close_grpc: bool = True) -> None:
        """Stop gracefully; idempotent. New RPCs and REST requests are refused (UNAVAILABLE / 503) from now on,
        those in flight get up to ``grace`` seconds to finish; then the ports close and the models unload.

        ``close_grpc=False`` leaves the gRPC listener refusing (UNAVAILABLE) instead of shutting it down, for a
        process about to exit: gRPC's own shutdown cancels the calls it has accepted but not handed over yet
        (CANCELLED), while a process exit closes the connections, which clients see as UNAVAILABLE.
        """
        with self._stop_lock:
            if self._stopped.is_set() or not self._started:
                return
            self._stop_event.set()
            if self._health is not None:
                self._health.enter_graceful_shutdown()
            self._health_changed.set()  # wakes the health loop, which sees the stop
            deadline = None if grace is None else time.monotonic() + grace
            rest_stop = None
            if self.rest is not None:  # REST drains on its own thread meanwhile
                rest_stop = threading.Thread(target=self._stop_rest, name="tfsctl-rest-stop", daemon=True)
                rest_stop.start()
            if self._grpc is not None:
                if not self._gate.drain(grace):
                    log.warning("gRPC requests still running after the %.1f s grace period are cancelled", grace)
                if close_grpc:
                    left = 1.0 if deadline is None else max(0.0, deadline - time.monotonic())
                    # Nothing of ours runs now; a short grace lets the RPCs the gate is refusing get their answer.
                    self._grpc.stop(min(left, 1.0))
            if rest_stop is not None:
                rest_stop.join()
            for t in self._threads:
                t.join(timeout=5)
            if self.batcher is not None:
                self.batcher.stop()
            if self.request_logger is not None:
                self.request_logger.stop()  # what is queued is written, every file gets its final name
            if self.access_log is not None:
                self.access_log.close()
            if self.tracer is not None:
                self.tracer.close()  # exports the spans still buffered
            if self.server_core is not None:
                self.server_core.stop()
            self._stopped.set()
            log.info("server stopped")

    def _stop_rest(self) -> None:
        try:
            self.rest.stop()  # stop accepting, drain
        except Exception:  # noqa: BLE001 - keep shutting down the rest
            log.exception("stopping the REST server failed")

    def serve_forever(self, grace: float = 10.0, on_started: Callable[[ModelServer], None] | None = None, *,
                      close_grpc: bool = True) -> int:
        """Start (unless started), serve until SIGTERM/SIGINT or :meth:`stop`, stop gracefully; returns 0.

        The signal handlers go in before :meth:`start`, so a SIGTERM during start-up (while the initial models
        load) also ends in a graceful stop. ``on_started`` runs once the ports are bound (the CLI prints its
        banner there).
        """
        previous = {}

        def on_signal(signum: int, _frame: Any) -> None:
            # Plain flags, no lock and no logging (see __init__): a repeat returns at once, and the line is logged
            # once where the stop is relayed (_stop_wanted). A handler that logged would nest once per signal
            # arriving while it runs (a burst from a supervisor re-sending SIGTERM ended in RecursionError), and a
            # signal arriving between its check and its flag logged the line twice.
            if self._stop_requested:
                return
            self._stop_signal = signal.Signals(signum).name
            self.request_stop()

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, on_signal)
        try:
            if not self._started:
                self.start()
            if on_started is not None and not self._stop_wanted():
                on_started(self)
            while not (self._stop_event.wait(_SIGNAL_POLL_S) or self._stop_wanted()):
                pass
            self.stop(grace, close_grpc=close_grpc)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 0

    # --- background loops ----------------------------------------------------------------------------------------

    def _health_loop(self) -> None:
        """Keep grpc.health.v1 in step with the manager: on each of its state events where it publishes them
        (``manager.events``), else (and as a backstop) every ``_HEALTH_PERIOD_S``."""
        changed = self._health_changed
        events = getattr(self.manager, "events", None)
        unsubscribe = events.subscribe(lambda _event: changed.set()) if events is not None else None
        period = _HEALTH_PERIOD_S * (10 if events is not None else 1)
        known: set[str] = set()
        try:
            while not self._stop_event.is_set():
                changed.clear()
                try:
                    known = update_health(self._health, self.core, known)
                except Exception:  # noqa: BLE001 - health must never kill the server
                    log.exception("health update failed")
                if changed.wait(period):
                    continue
        finally:
            if callable(unsubscribe):
                unsubscribe()

    def _config_loop(self) -> None:
        """Re-read ``--model_config_file`` every poll period; apply it when its text changed."""
        path = Path(self.options.model_config_file)
        while not self._stop_event.wait(self.options.model_config_file_poll_wait_seconds):
            try:
                text = path.read_text()
            except OSError as e:
                log.warning("cannot read model config file %s: %s", path, e)
                continue
            if text == self._config_text:
                continue
            try:
                config = parse_model_server_config(text, str(path))
                self.server_core.apply_config(config)
            except (ConfigError, ServingError) as e:
                log.error("model config file %s not applied: %s", path, e)
            else:
                log.info("applied new model config from %s", path)
            self._config_text = text
