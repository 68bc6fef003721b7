"""``tfsctl serve``: the model server process, wired the way ``tensorflow_model_server`` is.

:class:`ServerOptions` carries tensorflow_model_server's flags (same names, same defaults where they make sense);
:class:`ModelServer` builds Manager -> PredictionCore (-> Batcher) -> gRPC (+ REST) from them, keeps the health
service in step with the manager, polls ``--model_config_file`` for changes and shuts down gracefully: stop
accepting, let in-flight requests finish, then unload the models.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from tfsctl.errors import ConfigError, ServingError

log = logging.getLogger(__name__)

# A 1080p float32 RGB image is 1920*1080*3*4 = 24.9 MB; 64 MiB leaves room for batches of a few and for replies.
DEFAULT_GRPC_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
_HEALTH_PERIOD_S = 0.1


@dataclass
class ServerOptions:
    """tensorflow_model_server's flags (snake_case names as there); 0 disables the REST port."""

    port: int = 8500
    rest_api_port: int = 8501
    host: str = "0.0.0.0"
    model_name: str = "default"
    model_base_path: str = ""
    model_config_file: str = ""
    model_config_file_poll_wait_seconds: float = 0.0
    file_system_poll_wait_seconds: float = 1.0
    enable_batching: bool = False
    batching_parameters_file: str = ""
    monitoring_config_file: str = ""
    grpc_max_message_bytes: int = DEFAULT_GRPC_MAX_MESSAGE_BYTES
    ssl_config_file: str = ""
    max_num_load_retries: int = 5
    load_retry_interval_seconds: float = 60.0
    grpc_max_threads: int = 0
    workers: int = 1  # tfsctl-only: > 1 = one of N processes sharing the ports (SO_REUSEPORT); serving/workers.py

    def model_config(self):
        """The ModelServerConfig these options stand for; ConfigError when neither source of models is given."""
        from tfsctl.core.config import load_model_server_config, single_model_config

        if self.model_config_file and self.model_base_path:
            raise ConfigError("give either --model-config-file or --model-base-path, not both")
        if self.model_config_file:
            return load_model_server_config(self.model_config_file)
        if self.model_base_path:
            if not self.model_name:
                raise ConfigError("--model-name must not be empty")
            return single_model_config(self.model_name, Path(self.model_base_path).expanduser().absolute())
        raise ConfigError("no models to serve: give --model-base-path (with --model-name) or --model-config-file")

    def validate(self) -> None:
        """Reject flag values tensorflow_model_server would reject, with the flag's name."""
        for name in ("port", "rest_api_port"):
            value = getattr(self, name)
            if not 0 <= value <= 65535:
                raise ConfigError(f"--{name.replace('_', '-')} must be in 0..65535, got {value}")
        if self.grpc_max_message_bytes < 1024:
            raise ConfigError(f"--grpc-max-message-bytes must be >= 1024, got {self.grpc_max_message_bytes}")
        if self.file_system_poll_wait_seconds < 0 or self.model_config_file_poll_wait_seconds < 0:
            raise ConfigError("poll wait seconds must be >= 0")
        if self.max_num_load_retries < 0 or self.load_retry_interval_seconds < 0:
            raise ConfigError("--max-num-load-retries and --load-retry-interval-seconds must be >= 0")
        if self.grpc_max_threads < 0:
            raise ConfigError(f"--grpc-max-threads must be >= 0, got {self.grpc_max_threads}")
        if self.batching_parameters_file and not self.enable_batching:
            raise ConfigError("--batching-parameters-file needs --enable-batching")


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def _make_manager(options: ServerOptions, metrics: Any) -> Any:
    """The Manager with the polling and load-retry flags."""
    from tfsctl.core.manager import Manager

    return Manager(
        metrics,
        poll_wait_seconds=options.file_system_poll_wait_seconds,
        max_num_load_retries=options.max_num_load_retries,
        load_retry_interval_seconds=options.load_retry_interval_seconds,
    )


class ModelServer:
    """One serving process: gRPC (and REST) front ends over one Manager."""

    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        self.grpc_port: int | None = None
        self.rest_port: int | None = None
        self.metrics: Any = None
        self.manager: Any = None
        self.batcher: Any = None
        self.core: Any = None
        self.rest: Any = None
        self.monitoring_config: Any = None
        self._grpc: grpc.Server | None = None
        self._health: Any = None
        self._stop_event = threading.Event()
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._config_text: str | None = None

    # --- lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Validate flags, bind the ports and start loading the models; returns once the ports are bound.

        Raises ConfigError for bad flags or files and OSError when a port cannot be bound.
        """
        from tfsctl.serving.grpc_api import add_services
        from tfsctl.serving.metrics import Metrics
        from tfsctl.serving.service import PredictionCore

        if self._grpc is not None or self._stopped.is_set():
            raise RuntimeError("a ModelServer starts once; create a new one")
        opts = self.options
        opts.validate()
        config = opts.model_config()
        if opts.model_config_file:
            self._config_text = Path(opts.model_config_file).read_text()
        credentials = self._credentials()
        batching_params = None
        if opts.enable_batching and opts.batching_parameters_file:
            from tfsctl.core.config import load_batching_parameters

            batching_params = load_batching_parameters(opts.batching_parameters_file)
        if opts.monitoring_config_file:
            from tfsctl.core.config import load_monitoring_config

            self.monitoring_config = load_monitoring_config(opts.monitoring_config_file)

        self.metrics = Metrics()
        self.manager = _make_manager(opts, self.metrics)
        if opts.enable_batching:
            from tfsctl.serving.batcher import Batcher

            self.batcher = Batcher(batching_params, self.metrics)
        self.core = PredictionCore(self.manager, self.batcher, self.metrics)

        # Batched requests block a worker while they wait in the queue: allow enough of them to fill batches.
        threads = opts.grpc_max_threads or max(64, 8 * (os.cpu_count() or 1))
        max_bytes = int(opts.grpc_max_message_bytes)
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="tfsctl-grpc"),
            options=[
                ("grpc.max_receive_message_length", max_bytes),
                ("grpc.max_send_message_length", max_bytes),
                ("grpc.so_reuseport", 1 if opts.workers > 1 else 0),
            ],
        )
        self._health = add_services(server, self.core, self.metrics, max_tensor_bytes=max_bytes)
        address = _address(opts.host, opts.port)
        try:
            port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
        except RuntimeError:  # grpc raises instead of returning 0 in some versions
            port = 0
        if port == 0:
            reason = "address in use or not available"
            if credentials is not None:
                reason += ", or the SSL config's server_key/server_cert are not a valid PEM key and certificate"
            self._abort_start()
            raise OSError(f"cannot bind gRPC port {address}: {reason}")
        self.grpc_port = port
        self._grpc = server

        try:
            self.manager.apply_config(config)
            self.manager.start()
            server.start()
            if opts.rest_api_port > 0:
                self._start_rest()
        except BaseException:
            self._abort_start()
            raise
        self._spawn(self._health_loop, "tfsctl-health")
        if opts.model_config_file and opts.model_config_file_poll_wait_seconds > 0:
            self._spawn(self._config_loop, "tfsctl-config-poll")
        log.info("serving gRPC on %s (port %s), REST on %s", address, self.grpc_port, self.rest_port or "off")

    def _credentials(self) -> grpc.ServerCredentials | None:
        if not self.options.ssl_config_file:
            return None
        from tfsctl.core.config import load_ssl_config

        ssl = load_ssl_config(self.options.ssl_config_file)
        return grpc.ssl_server_credentials(
            [(ssl.server_key.encode(), ssl.server_cert.encode())],
            root_certificates=ssl.custom_ca.encode() if ssl.custom_ca else None,
            require_client_auth=bool(ssl.client_verify),
        )

    def _start_rest(self) -> None:
        from tfsctl.serving.rest_api import RestServer

        kwargs: dict[str, Any] = {}
        if self.monitoring_config is not None:  # the file decides; without one the REST server's default holds
            prom = self.monitoring_config.prometheus_config
            kwargs["metrics_path"] = prom.path if prom.enable else None
        if self.options.workers > 1:
            kwargs["reuse_port"] = True
        self.rest = RestServer(self.core, self.manager, self.metrics, self.options.host, self.options.rest_api_port,
                               **kwargs)
        self.rest.start()
        self.rest_port = self.rest.port

    def _abort_start(self) -> None:
        """Undo a half-done start so a failed start leaves no threads or ports behind."""
        if self._grpc is not None:
            self._grpc.stop(None)
        for part in (self.rest, self.batcher, self.manager):
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

    def stop(self, grace: float | None = 10.0) -> None:
        """Stop accepting requests, let in-flight ones finish (up to ``grace`` s), then unload models. Idempotent."""
        with self._stop_lock:
            if self._stopped.is_set() or self._grpc is None:
                return
            self._stop_event.set()
            if self._health is not None:
                self._health.enter_graceful_shutdown()
            grpc_done = self._grpc.stop(grace)  # refuses new RPCs now; in-flight ones run on
            if self.rest is not None:
                try:
                    self.rest.stop()  # same for REST: stop accepting, drain
                except Exception:  # noqa: BLE001 - keep shutting down the rest
                    log.exception("stopping the REST server failed")
            grpc_done.wait()
            for t in self._threads:
                t.join(timeout=5)
            if self.batcher is not None:
                self.batcher.stop()
            self.manager.stop()
            self._stopped.set()
            log.info("server stopped")

    def serve_forever(self, grace: float = 10.0, on_started: Callable[[ModelServer], None] | None = None) -> int:
        """Start (unless started), serve until SIGTERM/SIGINT or :meth:`stop`, stop gracefully; returns 0.

        The signal handlers go in before :meth:`start`, so a SIGTERM during start-up also ends in a graceful stop.
        ``on_started`` runs once the ports are bound (the CLI prints its banner there).
        """
        previous = {}

        def on_signal(signum: int, _frame: Any) -> None:
            log.info("received %s, shutting down", signal.Signals(signum).name)
            self._stop_event.set()

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, on_signal)
        try:
            if self._grpc is None:
                self.start()
            if on_started is not None:
                on_started(self)
            while not self._stop_event.wait(0.5):
                pass
            self.stop(grace)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 0

    # --- background loops ----------------------------------------------------------------------------------------

    def _health_loop(self) -> None:
        from tfsctl.serving.grpc_api import update_health

        known: set[str] = set()
        while not self._stop_event.is_set():
            try:
                known = update_health(self._health, self.manager, known)
            except Exception:  # noqa: BLE001 - health must never kill the server
                log.exception("health update failed")
            self._stop_event.wait(_HEALTH_PERIOD_S)

    def _config_loop(self) -> None:
        """Re-read ``--model_config_file`` every poll period; apply it when its text changed."""
        from tfsctl.core.config import parse_model_server_config

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
                self.manager.apply_config(config)
            except (ConfigError, ServingError) as e:
                log.error("model config file %s not applied: %s", path, e)
            else:
                log.info("applied new model config from %s", path)
            self._config_text = text
