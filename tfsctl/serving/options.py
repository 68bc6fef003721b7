"""``ServerOptions``: tensorflow_model_server's flags as one dataclass, importable without TensorFlow.

The CLI validates a command line and the ``serve --workers`` supervisor hands the options to its workers before (or
without) loading TensorFlow, so this module imports only the flag table and the errors at module level; the two
methods that read files (:meth:`ServerOptions.model_config`, :meth:`ServerOptions.load_settings`) import the config
and loader modules when called. Every field's default is its flag's, read from :data:`tfsctl.serving.flags.FLAGS`
(``tests/test_flags.py`` checks that no default is written here).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tfsctl.errors import ConfigError
from tfsctl.serving.flags import BY_NAME, FlagError, check_applicable, parse_args

log = logging.getLogger(__name__)

DEFAULT_GRPC_MAX_MESSAGE_BYTES: int = BY_NAME["grpc_max_message_bytes"].default
_RUNNERS_WITHOUT_TFLITE = ("--tflite_signature_runners changes how model.tflite is served: it needs "
                           "--prefer_tflite_model (or prefer_tflite_model in --platform_config_file)")


def _flag(name: str) -> Any:
    """The default of flag ``name``: the flag table is the one place a default is written."""
    return BY_NAME[name].default


@dataclass(frozen=True)
class LoadSettings:
    """The flags' (or the platform config's) word on loading and batching."""

    load_options: Any  # tfsctl.core.loader.LoadOptions
    enable_batching: bool
    batching_parameters: Any  # BatchingParameters or None (TF Serving's defaults)
    enable_per_model_batching_params: bool


@dataclass
class ServerOptions:
    """tensorflow_model_server's flags: same snake_case names, types and defaults (see :mod:`tfsctl.serving.flags`).

    Where tfsctl's default differs it says so in the flag's help and in docs/SERVER_FLAGS.md. ``port`` 0 means an
    OS-chosen port (TF Serving: no TCP port, allowed only with ``grpc_socket_path``; that combination still means
    "socket only" here); ``rest_api_port`` 0 (the default, as TF Serving) turns REST off. Each default is the flag
    table's (``_flag``), never written here; an option without a flag would keep its own default here.
    """

    port: int = _flag("port")
    grpc_socket_path: str = _flag("grpc_socket_path")
    rest_api_port: int = _flag("rest_api_port")
    rest_api_num_threads: int = _flag("rest_api_num_threads")
    rest_api_timeout_in_ms: int = _flag("rest_api_timeout_in_ms")
    rest_api_enable_cors_support: bool = _flag("rest_api_enable_cors_support")
    enable_batching: bool = _flag("enable_batching")
    allow_version_labels_for_unavailable_models: bool = _flag("allow_version_labels_for_unavailable_models")
    batching_parameters_file: str = _flag("batching_parameters_file")
    enable_per_model_batching_parameters: bool = _flag("enable_per_model_batching_parameters")
    model_config_file: str = _flag("model_config_file")
    model_config_file_poll_wait_seconds: float = _flag("model_config_file_poll_wait_seconds")
    model_name: str = _flag("model_name")
    model_base_path: str = _flag("model_base_path")
    num_load_threads: int = _flag("num_load_threads")
    num_unload_threads: int = _flag("num_unload_threads")
    max_num_load_retries: int = _flag("max_num_load_retries")
    load_retry_interval_micros: int = _flag("load_retry_interval_micros")
    file_system_poll_wait_seconds: float = _flag("file_system_poll_wait_seconds")
    flush_filesystem_caches: bool = _flag("flush_filesystem_caches")
    tensorflow_session_parallelism: int = _flag("tensorflow_session_parallelism")
    tensorflow_session_config_file: str = _flag("tensorflow_session_config_file")
    tensorflow_intra_op_parallelism: int = _flag("tensorflow_intra_op_parallelism")
    tensorflow_inter_op_parallelism: int = _flag("tensorflow_inter_op_parallelism")
    use_alts_credentials: bool = _flag("use_alts_credentials")
    ssl_config_file: str = _flag("ssl_config_file")
    platform_config_file: str = _flag("platform_config_file")
    per_process_gpu_memory_fraction: float = _flag("per_process_gpu_memory_fraction")
    saved_model_tags: str = _flag("saved_model_tags")
    grpc_channel_arguments: str = _flag("grpc_channel_arguments")
    grpc_max_threads: int = _flag("grpc_max_threads")
    enable_model_warmup: bool = _flag("enable_model_warmup")
    num_request_iterations_for_warmup: int = _flag("num_request_iterations_for_warmup")
    monitoring_config_file: str = _flag("monitoring_config_file")
    remove_unused_fields_from_bundle_metagraph: bool = _flag("remove_unused_fields_from_bundle_metagraph")
    prefer_tflite_model: bool = _flag("prefer_tflite_model")
    num_tflite_pools: int = _flag("num_tflite_pools")
    num_tflite_interpreters_per_pool: int = _flag("num_tflite_interpreters_per_pool")
    enable_signature_method_name_check: bool = _flag("enable_signature_method_name_check")
    xla_cpu_compilation_enabled: bool = _flag("xla_cpu_compilation_enabled")
    xla_gpu_compilation_enabled: bool = _flag("xla_gpu_compilation_enabled")
    enable_profiler: bool = _flag("enable_profiler")
    thread_pool_factory_config_file: str = _flag("thread_pool_factory_config_file")
    mixed_precision: str = _flag("mixed_precision")
    skip_initialize_tpu: bool = _flag("skip_initialize_tpu")
    enable_grpc_healthcheck_service: bool = _flag("enable_grpc_healthcheck_service")
    enable_serialization_as_tensor_content: bool = _flag("enable_serialization_as_tensor_content")
    # tfsctl's own
    host: str = _flag("host")
    grpc_max_message_bytes: int = _flag("grpc_max_message_bytes")
    load_retry_interval_seconds: float | None = _flag("load_retry_interval_seconds")
    servable_versions_always_present: bool = _flag("servable_versions_always_present")
    retry_failed_versions_on_change: bool = _flag("retry_failed_versions_on_change")
    batching_isolate_failures: bool = _flag("batching_isolate_failures")
    batching_wait_for_answered_clients: bool = _flag("batching_wait_for_answered_clients")
    tflite_signature_runners: bool = _flag("tflite_signature_runners")
    model_cache_dir: str = _flag("model_cache_dir")
    op_library: str = _flag("op_library")
    request_log_max_file_bytes: int = _flag("request_log_max_file_bytes")
    access_log: str = _flag("access_log")
    log_format: str = _flag("log_format")
    trace_otlp_endpoint: str = _flag("trace_otlp_endpoint")
    workers: int = _flag("workers")  # > 1: one of N processes sharing the ports (serving/supervisor.py)
    worker_cpu_affinity: bool = _flag("worker_cpu_affinity")

    @classmethod
    def from_args(cls, argv: list[str]) -> ServerOptions:
        """Options from a tensorflow_model_server command line (FlagError on a mistake; no --help/--version)."""
        parsed = parse_args(argv)
        if parsed.help or parsed.version:
            raise FlagError("--help and --version are handled by the command line, not ServerOptions")
        return cls(**parsed.values)

    def model_config(self):
        """The ModelServerConfig these options stand for; ConfigError when neither source of models is given."""
        from tfsctl.core.config import load_model_server_config, single_model_config

        if self.model_config_file:
            if self.model_base_path:  # as tensorflow_model_server: the config file wins
                log.warning("--model_base_path and --model_name are ignored: --model_config_file is set")
            return load_model_server_config(self.model_config_file)
        if self.model_base_path:
            if not self.model_name:
                raise ConfigError("--model_name must not be empty")
            from tfsctl.core.storage import split_url  # cloud: a URL base path stays a URL

            base = self.model_base_path if split_url(self.model_base_path)[0] else \
                Path(self.model_base_path).expanduser().absolute()
            return single_model_config(self.model_name, base)
        raise ConfigError("no models to serve: give --model_base_path (with --model_name) or --model_config_file")

    def validate(self) -> None:
        """Reject flag values tensorflow_model_server would reject (and those that cannot apply), naming the flag."""
        check_applicable({f.name: getattr(self, f.name) for f in BY_NAME.values() if hasattr(self, f.name)})
        for name in ("port", "rest_api_port"):
            value = getattr(self, name)
            if not 0 <= value <= 65535:
                raise FlagError(f"--{name} must be in 0..65535, got {value}")
        if self.grpc_max_message_bytes < 1024:
            raise FlagError(f"--grpc_max_message_bytes must be >= 1024, got {self.grpc_max_message_bytes}")
        for name in ("rest_api_num_threads", "num_load_threads", "num_unload_threads", "max_num_load_retries",
                     "grpc_max_threads", "num_request_iterations_for_warmup", "tensorflow_session_parallelism",
                     "tensorflow_intra_op_parallelism", "tensorflow_inter_op_parallelism",
                     "model_config_file_poll_wait_seconds"):
            if getattr(self, name) < 0:
                raise FlagError(f"--{name} must be >= 0, got {getattr(self, name)}")
        if self.rest_api_timeout_in_ms <= 0:
            raise FlagError(f"--rest_api_timeout_in_ms must be > 0, got {self.rest_api_timeout_in_ms}")
        if not 1 <= self.workers <= 64:
            raise FlagError(f"--workers must be in 1..64, got {self.workers}")
        if self.worker_cpu_affinity and self.workers == 1:
            raise FlagError("--worker_cpu_affinity pins each of several workers to a CPU: it needs --workers 2 or more")
        if self.load_retry_interval_seconds is not None and self.load_retry_interval_seconds < 0:
            raise FlagError(f"--load_retry_interval_seconds must be >= 0, got {self.load_retry_interval_seconds}")
        if not 0.0 <= self.per_process_gpu_memory_fraction <= 1.0:
            raise FlagError("--per_process_gpu_memory_fraction must be in 0.0..1.0, got "
                            f"{self.per_process_gpu_memory_fraction}")
        if min(self.tensorflow_intra_op_parallelism, self.tensorflow_inter_op_parallelism,
               self.tensorflow_session_parallelism) > 0:
            raise FlagError("configure either --tensorflow_session_parallelism or --tensorflow_intra_op_parallelism "
                            "and --tensorflow_inter_op_parallelism, not all three")
        if self.log_format not in ("text", "json"):
            raise FlagError(f"--log_format must be text or json, got {self.log_format!r}")
        if self.request_log_max_file_bytes < 1024:
            raise FlagError(f"--request_log_max_file_bytes must be >= 1024, got {self.request_log_max_file_bytes}")
        for name in ("batching_parameters_file", "batching_isolate_failures", "batching_wait_for_answered_clients"):
            if getattr(self, name) and not self.enable_batching:
                raise FlagError(f"--{name} is set without --enable_batching")
        if self.tflite_signature_runners and not self.prefer_tflite_model and not self.platform_config_file:
            raise FlagError(_RUNNERS_WITHOUT_TFLITE)
        parse_channel_arguments(self.grpc_channel_arguments)

    def load_settings(self) -> LoadSettings:
        """How versions load and whether requests batch, as server.cc builds its SessionBundleConfig.

        Reads --tensorflow_session_config_file, --batching_parameters_file or --platform_config_file
        (ConfigError for a bad file).
        """
        from tfsctl.core.config import load_batching_parameters, load_platform_config, load_session_config
        from tfsctl.core.loader import LoadOptions

        if self.platform_config_file:
            for name in ("enable_batching", "tensorflow_session_config_file", "tensorflow_session_parallelism",
                         "tensorflow_intra_op_parallelism", "tensorflow_inter_op_parallelism", "saved_model_tags",
                         "per_process_gpu_memory_fraction"):
                if getattr(self, name):  # ignored by tensorflow_model_server too; say so rather than stay silent
                    log.warning("--%s is ignored: --platform_config_file sets the tensorflow platform's config", name)
            defaults = ServerOptions()
            for name in ("prefer_tflite_model", "num_tflite_pools", "num_tflite_interpreters_per_pool"):
                if getattr(self, name) != getattr(defaults, name):  # legacy_config's fields decide, as in server.cc
                    log.warning("--%s is ignored: --platform_config_file sets the tensorflow platform's config", name)
            platform = load_platform_config(self.platform_config_file)
            if self.tflite_signature_runners and not platform.prefer_tflite_model:
                raise FlagError(_RUNNERS_WITHOUT_TFLITE)
            options = LoadOptions(
                saved_model_tags=platform.saved_model_tags,
                session_config=platform.session_config,
                per_process_gpu_memory_fraction=platform.per_process_gpu_memory_fraction,
                enable_model_warmup=platform.enable_model_warmup,
                num_request_iterations_for_warmup=platform.num_request_iterations_for_warmup or 1,
                prefer_tflite_model=platform.prefer_tflite_model,
                num_tflite_pools=platform.num_tflite_pools,
                num_tflite_interpreters_per_pool=platform.num_tflite_interpreters_per_pool,
                tflite_signature_runners=self.tflite_signature_runners,  # tfsctl's own: no platform config field
            )
            return LoadSettings(options, platform.batching_parameters is not None, platform.batching_parameters,
                                platform.enable_per_model_batching_params)
        session_config = b""
        if self.tensorflow_session_config_file:
            session_config = load_session_config(self.tensorflow_session_config_file)
        if self.tensorflow_intra_op_parallelism > 0 or self.tensorflow_inter_op_parallelism > 0:
            intra, inter = self.tensorflow_intra_op_parallelism, self.tensorflow_inter_op_parallelism
        else:
            intra = inter = self.tensorflow_session_parallelism
        tags = frozenset(t.strip() for t in self.saved_model_tags.split(",") if t.strip()) or frozenset({"serve"})
        options = LoadOptions(
            saved_model_tags=tags,
            session_config=session_config,
            intra_op_parallelism=intra,
            inter_op_parallelism=inter,
            per_process_gpu_memory_fraction=self.per_process_gpu_memory_fraction,
            enable_model_warmup=self.enable_model_warmup,
            num_request_iterations_for_warmup=self.num_request_iterations_for_warmup or 1,
            prefer_tflite_model=self.prefer_tflite_model,
            num_tflite_pools=self.num_tflite_pools,
            num_tflite_interpreters_per_pool=self.num_tflite_interpreters_per_pool,
            tflite_signature_runners=self.tflite_signature_runners,
        )
        batching = None
        if self.enable_batching and self.batching_parameters_file:
            batching = load_batching_parameters(self.batching_parameters_file)
        return LoadSettings(options, self.enable_batching, batching,
                            self.enable_batching and self.enable_per_model_batching_parameters)

    @property
    def load_retry_interval(self) -> float:
        """Seconds between load retries (negative micros = no wait, as TF Serving)."""
        if self.load_retry_interval_seconds is not None:
            return self.load_retry_interval_seconds
        return max(0, self.load_retry_interval_micros) / 1e6


def parse_channel_arguments(text: str) -> list[tuple[str, int | str]]:
    """``--grpc_channel_arguments``: ``key=value,key=value`` -> gRPC server options; ints as ints (server.cc).

    A key given twice keeps its last value (TF Serving's test harness appends ``grpc.so_reuseaddr=1`` that way).
    """
    args: dict[str, int | str] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise FlagError(f"--grpc_channel_arguments: {item!r} is not key=value")
        value = value.strip()
        try:
            number = int(value, 10)
        except ValueError:
            args[key.strip()] = value
        else:
            args[key.strip()] = number if -(2**31) <= number < 2**31 else value
    return list(args.items())

