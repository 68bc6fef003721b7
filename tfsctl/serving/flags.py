"""``tfsctl serve``'s command line, parsed as ``tensorflow_model_server`` parses its own.

Every flag of TF Serving 2.21's ``main.cc`` is here with its name, type and default, so a command line written for
``tensorflow_model_server`` (a KServe manifest, a Docker entrypoint, TF Serving's own test harness) starts
``tfsctl serve`` unchanged. Syntax: ``--flag=value`` and ``--flag value``; booleans also bare (``--enable_batching``)
or ``=true|false|1|0``; each name also in kebab-case (``--model-base-path``).

A flag that cannot act here (TPU, ALTS, ...) is refused by name when given a non-default value: nothing
is ignored silently. The parser is plain Python (no click) so its errors are one line and ``--help`` fits 80
columns.
"""

from __future__ import annotations

import os
import textwrap
from dataclasses import dataclass
from typing import Any

from tfsctl.errors import ConfigError

_CPUS = os.cpu_count() or 1
_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)


class FlagError(ConfigError):
    """A flag is unknown, lacks its value, has a value of the wrong type, or cannot apply here (a usage error)."""


@dataclass(frozen=True)
class Flag:
    name: str
    kind: str  # "bool" | "int32" | "int64" | "float" | "str"
    default: Any
    help: str
    cannot: str = ""  # why it cannot apply here; then only its default value is accepted
    tfsctl_only: bool = False

    @property
    def metavar(self) -> str:
        return {"bool": "", "int32": "INT", "int64": "INT", "float": "NUM", "str": "STR"}[self.kind]


# main.cc's flags in its order, then tfsctl's own. Defaults are TF Serving's except where the help says otherwise.
FLAGS: tuple[Flag, ...] = (
    Flag("port", "int32", 8500, "gRPC port (0 = an OS-chosen port, or none with --grpc_socket_path)"),
    Flag("grpc_socket_path", "str", "", "also serve gRPC on this UNIX socket"),
    Flag("rest_api_port", "int32", 0, "HTTP/REST port (0 = no REST; the Docker image uses 8501)"),
    Flag("rest_api_num_threads", "int32", 0, "REST worker threads (0 = from the CPU count)"),
    Flag("rest_api_timeout_in_ms", "int32", 30000, "timeout of a REST call"),
    Flag("rest_api_enable_cors_support", "bool", False, "send CORS headers on REST responses"),
    Flag("enable_batching", "bool", False, "batch concurrent requests"),
    Flag("allow_version_labels_for_unavailable_models", "bool", False,
         "allow a new label on a version that is not AVAILABLE yet"),
    Flag("batching_parameters_file", "str", "", "BatchingParameters text proto (needs --enable_batching)"),
    Flag("enable_per_model_batching_parameters", "bool", False,
         "read batching_params.pbtxt from each SavedModel"),
    Flag("model_config_file", "str", "", "ModelServerConfig text proto (many models)"),
    Flag("model_config_file_poll_wait_seconds", "float", 0.0, "re-read --model_config_file this often (0 = never)"),
    Flag("model_name", "str", "default", "name of the model at --model_base_path"),
    Flag("model_base_path", "str", "", "directory of numeric version subdirectories"),
    Flag("num_load_threads", "int32", 0, "threads loading versions (0 = one at a time)"),
    Flag("num_unload_threads", "int32", 0, "threads unloading versions (0 = one)"),
    Flag("max_num_load_retries", "int32", 5, "retries of a failed load"),
    Flag("load_retry_interval_micros", "int64", 60_000_000, "wait between load retries (< 0: none)"),
    Flag("file_system_poll_wait_seconds", "float", 1.0,
         "poll base paths this often (0 = once, < 0 = never)"),
    Flag("flush_filesystem_caches", "bool", True, "give freed memory back after the initial loads"),
    Flag("tensorflow_session_parallelism", "int64", 0, "intra- and inter-op threads (0 = auto)"),
    Flag("tensorflow_session_config_file", "str", "", "ConfigProto text proto for the sessions"),
    Flag("tensorflow_intra_op_parallelism", "int64", 0, "threads within one op (0 = auto)"),
    Flag("tensorflow_inter_op_parallelism", "int64", 0, "ops run at once (0 = auto)"),
    Flag("use_alts_credentials", "bool", False, "Google ALTS credentials",
         cannot="ALTS works only on Google Cloud; use --ssl_config_file"),
    Flag("ssl_config_file", "str", "", "SSLConfig text proto: TLS (and mTLS) for gRPC"),
    Flag("platform_config_file", "str", "", "PlatformConfigMap text proto (tensorflow platform)"),
    Flag("per_process_gpu_memory_fraction", "float", 0.0, "share of GPU memory per process (0 = auto)"),
    Flag("saved_model_tags", "str", "", "comma-separated meta graph tags (default serve)"),
    Flag("grpc_channel_arguments", "str", "", "gRPC server args, e.g. grpc.max_connection_age_ms=2000"),
    Flag("grpc_max_threads", "int32", 0, "gRPC worker threads (0 = max(64, 8 x CPUs))"),
    Flag("enable_model_warmup", "bool", True, "replay assets.extra warmup records at load"),
    Flag("num_request_iterations_for_warmup", "int32", 0, "times each warmup record runs (if > 0)"),
    Flag("version", "bool", False, "print the version and exit"),
    Flag("monitoring_config_file", "str", "", "MonitoringConfig text proto (Prometheus page)"),
    Flag("remove_unused_fields_from_bundle_metagraph", "bool", True, "drop unused MetaGraphDef fields",
         cannot="tfsctl keeps only the signatures of the loaded meta graph (always true)"),
    Flag("prefer_tflite_model", "bool", False, "serve a version's model.tflite instead of its SavedModel"),
    Flag("num_tflite_pools", "int32", _CPUS, "TFLite interpreters per loaded model (default: one per CPU)"),
    Flag("num_tflite_interpreters_per_pool", "int32", 1, "> 1: merge waiting TFLite requests into batches"),
    Flag("enable_signature_method_name_check", "bool", False,
         "Classify/Regress need the signature's method name"),
    Flag("xla_cpu_compilation_enabled", "bool", False, "XLA:CPU JIT (tfsctl never disables XLA)"),
    Flag("xla_gpu_compilation_enabled", "bool", False, "XLA:GPU JIT (tfsctl never disables XLA)"),
    Flag("enable_profiler", "bool", True, "tensorflow.ProfilerService on the gRPC port"),
    Flag("thread_pool_factory_config_file", "str", "", "ThreadPoolConfig text proto",
         cannot="C++ thread pool factories do not exist here"),
    Flag("mixed_precision", "str", "", "mixed precision mode", cannot="load-time mixed precision is not supported"),
    Flag("skip_initialize_tpu", "bool", False, "skip TPU init", cannot="there are no TPUs here"),
    Flag("enable_grpc_healthcheck_service", "bool", True, "grpc.health.v1 (tfsctl: on; TF Serving: off)"),
    Flag("enable_serialization_as_tensor_content", "bool", False,
         "Predict replies in tensor_content, not *_val"),
    # tfsctl's own
    Flag("host", "str", "0.0.0.0", "address to bind", tfsctl_only=True),
    # A 1080p float32 RGB image is 1920*1080*3*4 = 24.9 MB; 64 MiB leaves room for batches of a few and replies.
    Flag("grpc_max_message_bytes", "int32", 64 * 1024 * 1024, "largest gRPC message in and out", tfsctl_only=True),
    Flag("workers", "int32", 1, "N serving processes sharing the ports, each with its own models",
         tfsctl_only=True),
    Flag("worker_cpu_affinity", "bool", False,
         "with --workers: pin worker i to CPU i (of those allowed), TensorFlow's threads included", tfsctl_only=True),
    Flag("tflite_signature_runners", "bool", False,
         "with --prefer_tflite_model: serve model.tflite's LiteRT signatures by name, not a generated "
         "serving_default", tfsctl_only=True),
    Flag("batching_isolate_failures", "bool", False,
         "rerun a batch that fails on bad data request by request", tfsctl_only=True),
    Flag("batching_wait_for_answered_clients", "bool", False,
         "closed-loop clients: hold the next batch (up to batch_timeout_micros) for the clients of the batch just "
         "answered", tfsctl_only=True),
    Flag("retry_failed_versions_on_change", "bool", False,
         "load a failed version again once its directory changes", tfsctl_only=True),
    Flag("servable_versions_always_present", "bool", False,
         "keep the loaded versions when the base path empties (ServerCore's option)", tfsctl_only=True),
    Flag("model_cache_dir", "str", "",
         "local copies of s3:// and gs:// versions [$TFSCTL_MODEL_CACHE_DIR or a temp dir]", tfsctl_only=True),
    Flag("load_retry_interval_seconds", "float", None, "overrides --load_retry_interval_micros", tfsctl_only=True),
    Flag("op_library", "str", "", "comma-separated custom-op .so files to load before any model",
         tfsctl_only=True),
    Flag("request_log_max_file_bytes", "int64", 64 * 1024 * 1024,
         "request log files (a model config's logging_config) start anew past this size", tfsctl_only=True),
    Flag("access_log", "str", "", "one line per request to PATH, or - for stderr [off]", tfsctl_only=True),
    Flag("log_format", "str", "text", "text or json: every server log line and the access log", tfsctl_only=True),
    Flag("trace_otlp_endpoint", "str", "",
         "OTLP/HTTP base URL for request traces [$OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT; off]", tfsctl_only=True),
)
BY_NAME = {f.name: f for f in FLAGS}


@dataclass
class ParsedArgs:
    """The outcome of :func:`parse_args`: flag values (only those given) or a request for help/version."""

    values: dict[str, Any]
    help: bool = False
    version: bool = False


def _bool(text: str, flag: str) -> bool:
    low = text.strip().lower()
    if low in ("true", "1"):
        return True
    if low in ("false", "0"):
        return False
    raise FlagError(f"--{flag}: expected true, false, 1 or 0, got {text!r}")


def convert(flag: Flag, text: str) -> Any:
    """``text`` as ``flag``'s type; FlagError naming the flag otherwise."""
    if flag.kind == "bool":
        return _bool(text, flag.name)
    if flag.kind in ("int32", "int64"):
        try:
            value = int(text.strip(), 10)
        except ValueError:
            raise FlagError(f"--{flag.name}: expected an integer, got {text!r}") from None
        lo, hi = _INT32 if flag.kind == "int32" else _INT64
        if not lo <= value <= hi:
            raise FlagError(f"--{flag.name}: {value} does not fit a {flag.kind}")
        return value
    if flag.kind == "float":
        try:
            number = float(text.strip())
        except ValueError:
            raise FlagError(f"--{flag.name}: expected a number, got {text!r}") from None
        if number != number or number in (float("inf"), float("-inf")):
            raise FlagError(f"--{flag.name}: expected a finite number, got {text!r}")
        return number
    return text


def _lookup(raw: str) -> Flag | None:
    return BY_NAME.get(raw.replace("-", "_"))


def parse_args(argv: list[str]) -> ParsedArgs:
    """tensorflow_model_server's flag syntax -> {flag name: value}; FlagError (one line) on any mistake."""
    values: dict[str, Any] = {}
    result = ParsedArgs(values)
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg in ("-h", "--help", "-help", "--helpfull"):
            result.help = True
            continue
        if not arg.startswith("-") or arg in ("-", "--"):
            raise FlagError(f"unexpected argument {arg!r}: tfsctl serve takes only --flags")
        body = arg.lstrip("-")
        name, eq, text = body.partition("=")
        flag = _lookup(name)
        if flag is None:
            raise FlagError(f"unknown flag --{name} (tfsctl serve --help lists them)")
        if not eq:
            if flag.kind == "bool":
                if i < len(argv) and argv[i].strip().lower() in ("true", "false", "1", "0"):
                    text = argv[i]
                    i += 1
                else:
                    text = "true"
            elif i < len(argv):
                text = argv[i]
                i += 1
            else:
                raise FlagError(f"--{flag.name} needs a value")
        value = convert(flag, text)
        if flag.name == "version":
            result.version = value
            continue
        values[flag.name] = value
    return result


def check_applicable(values: dict[str, Any]) -> None:
    """Refuse, by name, a flag that cannot act here when it is given a value other than its default."""
    for name, value in values.items():
        flag = BY_NAME[name]
        if flag.cannot and value != flag.default:
            raise FlagError(f"--{name}={_show(value)} cannot apply in tfsctl: {flag.cannot}")


def _show(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def help_text(width: int = 80) -> str:
    """One line per flag (snake_case shown; the kebab-case spelling is accepted too), within ``width`` columns."""
    lines = [
        "Usage: tfsctl serve [--flag=value | --flag value | --bool_flag] ...",
        "",
        "Serve SavedModels over TF Serving's gRPC and REST APIs until SIGTERM/SIGINT.",
        "The flags are tensorflow_model_server's; --kebab-case spellings work too.",
        "",
    ]
    groups = (("tensorflow_model_server flags", [f for f in FLAGS if not f.tfsctl_only and not f.cannot]),
              ("tfsctl's own", [f for f in FLAGS if f.tfsctl_only]),
              ("accepted only at their default (cannot apply here)", [f for f in FLAGS if f.cannot]))
    for title, flags in groups:
        lines.append(f"{title}:")
        for f in flags:
            left = f"  --{f.name}" + (f"={f.metavar}" if f.metavar else "")
            default = "" if f.kind == "bool" and f.default is False or f.default in ("", 0, 0.0) else \
                f" [{_show(f.default)}]"
            if f.name in ("version", "load_retry_interval_seconds", "num_tflite_pools"):
                default = ""
            text = f.help + default
            if len(left) + 2 + len(text) <= width:
                lines.append(f"{left}  {text}")
            else:
                lines.append(left)
                lines.extend(textwrap.wrap(text, width, initial_indent=" " * 6, subsequent_indent=" " * 6))
        lines.append("")
    lines.append("  -h, --help  show this message and exit")
    return "\n".join(lines)
