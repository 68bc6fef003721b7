"""The config files of ``tensorflow_model_server``, read in its text-proto formats and checked up front.

ModelServerConfig comes from the official ``tensorflow_serving.config`` protos; batching, monitoring and SSL configs
from :mod:`tfsctl.core.protos` (same names and numbers as TF Serving's). Every problem is a :class:`ConfigError`
that names the file and, where it can be known, the line, so a bad config fails at start-up rather than at the
first request.

Relative ``base_path`` values are kept as written (resolved against the working directory), as TF Serving does.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import text_format
from google.protobuf.message import Message
from tensorflow_serving.config import model_server_config_pb2

from tfsctl.core.protos import BatchingParameters, MonitoringConfig, SSLConfig
from tfsctl.core.request_log import check_logging_config
from tfsctl.core.storage import check_path  # cloud
from tfsctl.errors import ConfigError

ModelServerConfig = model_server_config_pb2.ModelServerConfig
ModelConfig = model_server_config_pb2.ModelConfig

# TF Serving's PrometheusExporter::kPrometheusPath, used when prometheus_config.path is empty.
DEFAULT_PROMETHEUS_PATH = "/monitoring/prometheus/metrics"
_PLATFORMS = ("", "tensorflow")


def _read(path: str | Path, what: str) -> str:
    p = Path(path)
    try:
        return p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: {what} file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{p}: {what} file is a directory") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: cannot read {what} file: {e}") from None


def _parse(text: str, message: Message, source: str) -> Message:
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as e:
        reason = re.sub(r"^\d+:\d+ : ", "", str(e))
        line, col = e.GetLine(), e.GetColumn()
        where = f"{source}:{line}:{col}" if line is not None and line >= 0 else source
        # TF Serving's words first ("Error parsing text-format tensorflow.serving.ModelServerConfig"): scripts grep them
        raise ConfigError(f"{where}: Error parsing text-format {message.DESCRIPTOR.full_name}: {reason}") from None
    return message


def _line_of(text: str, needle: str) -> str:
    """``:N`` for the first line containing ``needle`` (for messages about semantic errors), else ``""``."""
    for i, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return f":{i}"
    return ""


# --- ModelServerConfig ---


def parse_model_server_config(text: str, source: str = "<model config>") -> model_server_config_pb2.ModelServerConfig:
    """Parse and validate a ModelServerConfig text proto; ``source`` names it in errors."""
    config = _parse(text, ModelServerConfig(), source)
    validate_model_server_config(config, source, text)
    return config


def load_model_server_config(path: str | Path) -> model_server_config_pb2.ModelServerConfig:
    """Read ``--model_config_file``: a ModelServerConfig text proto with a model_config_list."""
    return parse_model_server_config(_read(path, "model config"), str(path))


def validate_model_server_config(
    config: model_server_config_pb2.ModelServerConfig, source: str = "<model config>", text: str = ""
) -> None:
    """Reject what TF Serving rejects: custom configs, unnamed/duplicate models, bad platforms and policies."""
    if config.WhichOneof("config") == "custom_model_config":
        raise ConfigError(f"{source}: custom_model_config is not supported; use model_config_list")
    seen: set[str] = set()
    for i, mc in enumerate(config.model_config_list.config):
        if not mc.name:
            raise ConfigError(f"{source}: model config #{i + 1} has no name")
        where = f"{source}{_line_of(text, mc.name) if text else ''}"
        if mc.name in seen:
            raise ConfigError(f"{where}: model name '{mc.name}' appears more than once")
        seen.add(mc.name)
        if not mc.base_path:
            raise ConfigError(f"{where}: model '{mc.name}' has no base_path")
        if "://" not in mc.base_path and not os.path.isabs(mc.base_path):  # resolved against whose cwd? (as TF Serving)
            raise ConfigError(f"{where}: model '{mc.name}': base_path '{mc.base_path}' is relative; "
                              "give an absolute path (as tensorflow_model_server requires)")
        try:  # cloud: an unknown scheme, or s3:// / gs:// without the tfsctl[cloud] extra
            check_path(mc.base_path)
        except ConfigError as e:
            raise ConfigError(f"{where}: model '{mc.name}': {e}") from None
        if mc.model_platform not in _PLATFORMS:
            raise ConfigError(
                f"{where}: model '{mc.name}': model_platform '{mc.model_platform}' is not supported (only tensorflow)"
            )
        policy = mc.model_version_policy
        choice = policy.WhichOneof("policy_choice")
        if choice == "specific":
            if not policy.specific.versions:
                raise ConfigError(f"{where}: model '{mc.name}': specific version policy lists no versions")
            bad = [v for v in policy.specific.versions if v < 0]
            if bad:
                raise ConfigError(f"{where}: model '{mc.name}': negative version {bad[0]} in specific policy")
        check_logging_config(mc, where)  # an unknown collector type is refused here, as TF Serving's LogCollector
        for label, version in mc.version_labels.items():
            if not label:
                raise ConfigError(f"{where}: model '{mc.name}': empty version label")
            if version < 0:
                raise ConfigError(f"{where}: model '{mc.name}': label '{label}' points to negative version {version}")


def single_model_config(name: str, base_path: str | Path) -> model_server_config_pb2.ModelServerConfig:
    """The config ``--model_name/--model_base_path`` stand for: one model, default policy (latest 1)."""
    config = ModelServerConfig()
    mc = config.model_config_list.config.add()
    mc.name = name
    mc.base_path = str(base_path)
    mc.model_platform = "tensorflow"
    validate_model_server_config(config, "--model_name/--model_base_path")
    return config


# --- BatchingParameters ---

# TF Serving's defaults (SharedBatchScheduler::QueueOptions / Options) for fields a BatchingParameters leaves unset.
DEFAULT_MAX_BATCH_SIZE = 1000
DEFAULT_MAX_ENQUEUED_BATCHES = 10
BATCHING_PARAMS_FILE = "batching_params.pbtxt"
"""The per-model batching file TF Serving reads from a version dir (``--enable_per_model_batching_parameters``)."""


def _batching_error(name: str, reason: str) -> ConfigError:
    """A ConfigError naming the offending field, so a file's parser can point at its line."""
    err = ConfigError(f"batching: {reason}")
    err.field, err.reason = name, reason  # type: ignore[attr-defined]
    return err


@dataclass(frozen=True)
class BatchOptions:
    """BatchingParameters resolved to plain values with TF Serving's defaults, and checked: THE batching rule set.

    ``max_batch_size`` is TF Serving's input batch size limit (a bigger request is refused); with
    ``enable_large_batch_splitting`` requests are split into chunks of at most ``max_execution_batch_size`` (default
    ``max_batch_size``), which is then the size of the batches actually run. Without splitting the two are equal.
    """

    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    batch_timeout_micros: int = 0
    num_batch_threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    max_enqueued_batches: int = DEFAULT_MAX_ENQUEUED_BATCHES
    allowed_batch_sizes: tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False
    enable_large_batch_splitting: bool = False
    max_execution_batch_size: int | None = None
    thread_pool_name: str = "batch_threads"

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "num_batch_threads"):
            if getattr(self, name) < 1:
                raise _batching_error(name, f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_timeout_micros < 0:
            raise _batching_error("batch_timeout_micros",
                                  f"batch_timeout_micros must be >= 0, got {self.batch_timeout_micros}")
        if self.max_enqueued_batches < 0 or (self.max_enqueued_batches == 0 and self.enable_large_batch_splitting):
            raise _batching_error("max_enqueued_batches",
                                  f"max_enqueued_batches must be >= 1, got {self.max_enqueued_batches}")
        if self.max_enqueued_batches == 0:  # TF Serving rewrites 0 to 1 when splitting is off (old configs rely on it)
            object.__setattr__(self, "max_enqueued_batches", 1)
        if self.max_execution_batch_size is not None and self.enable_large_batch_splitting:
            if not 1 <= self.max_execution_batch_size <= self.max_batch_size:
                raise _batching_error(
                    "max_execution_batch_size",
                    f"max_execution_batch_size must be between 1 and max_batch_size ({self.max_batch_size}), "
                    f"got {self.max_execution_batch_size}",
                )
        sizes = list(self.allowed_batch_sizes)
        if sizes:
            if any(s < 1 for s in sizes):
                raise _batching_error("allowed_batch_sizes", f"allowed_batch_sizes must be positive, got {sizes}")
            if any(b <= a for a, b in zip(sizes, sizes[1:], strict=False)):
                raise _batching_error("allowed_batch_sizes",
                                      f"allowed_batch_sizes must be strictly increasing, got {sizes}")
            if sizes[-1] != self.max_batch_size:  # TF Serving's rule (bundle_factory_util), with or without splitting
                raise _batching_error(
                    "allowed_batch_sizes",
                    f"the last allowed_batch_sizes entry ({sizes[-1]}) must equal max_batch_size "
                    f"({self.max_batch_size})",
                )

    @property
    def execution_batch_size(self) -> int:
        """The largest batch ever run: ``max_execution_batch_size`` when splitting, else ``max_batch_size``."""
        if self.enable_large_batch_splitting and self.max_execution_batch_size is not None:
            return self.max_execution_batch_size
        return self.max_batch_size

    @classmethod
    def from_params(cls, params: Any, base: BatchOptions | None = None) -> BatchOptions:
        """From a ``BatchingParameters`` message (unset wrapper fields keep TF Serving's defaults).

        ``base`` gives the thread-pool fields (``num_batch_threads``, ``thread_pool_name``) for a per-model file: as in
        TF Serving, those always come from the global parameters because the pool is shared by every model.
        """
        if params is None:
            return base if base is not None else cls()
        if isinstance(params, BatchOptions):
            return params
        kwargs: dict[str, Any] = {}
        for name in ("max_batch_size", "batch_timeout_micros", "num_batch_threads", "max_enqueued_batches",
                     "max_execution_batch_size"):
            if params.HasField(name):
                kwargs[name] = int(getattr(params, name).value)
        if params.HasField("thread_pool_name"):
            kwargs["thread_pool_name"] = params.thread_pool_name.value
        if params.HasField("enable_large_batch_splitting"):
            kwargs["enable_large_batch_splitting"] = bool(params.enable_large_batch_splitting.value)
        sizes = tuple(int(s) for s in params.allowed_batch_sizes)
        if sizes:
            kwargs["allowed_batch_sizes"] = sizes
        kwargs["pad_variable_length_inputs"] = bool(params.pad_variable_length_inputs)
        if base is not None:
            kwargs["num_batch_threads"] = base.num_batch_threads
            kwargs["thread_pool_name"] = base.thread_pool_name
        return cls(**kwargs)


def parse_batching_parameters(text: str, source: str = "<batching parameters>") -> Message:
    """Parse and validate BatchingParameters text (``max_batch_size { value: 32 }`` ...)."""
    params = _parse(text, BatchingParameters(), source)
    try:
        BatchOptions.from_params(params)
    except ConfigError as e:
        name = getattr(e, "field", "")
        raise ConfigError(f"{source}{_line_of(text, name) if name else ''}: {e.reason}") from None  # type: ignore[attr-defined]
    return params


def load_batching_parameters(path: str | Path) -> Message:
    """Read ``--batching_parameters_file`` (TF Serving's BatchingParameters text format)."""
    return parse_batching_parameters(_read(path, "batching parameters"), str(path))


def load_model_batching_parameters(version_dir: str | Path) -> Message | None:
    """The ``batching_params.pbtxt`` of one model version (per-model batching), or None when it has none."""
    path = Path(version_dir) / BATCHING_PARAMS_FILE
    if not path.is_file():
        return None
    return load_batching_parameters(path)


# --- MonitoringConfig ---


def parse_monitoring_config(text: str, source: str = "<monitoring config>") -> Message:
    """Parse MonitoringConfig text; an enabled Prometheus config with no path gets TF Serving's default path."""
    config = _parse(text, MonitoringConfig(), source)
    prom = config.prometheus_config
    if prom.enable and not prom.path:
        prom.path = DEFAULT_PROMETHEUS_PATH
    if prom.path and not prom.path.startswith("/"):
        where = f"{source}{_line_of(text, 'path')}"
        raise ConfigError(f"{where}: prometheus_config.path must start with '/': {prom.path!r}")
    return config


def load_monitoring_config(path: str | Path) -> Message:
    """Read ``--monitoring_config_file`` (``prometheus_config { enable: true path: "/metrics" }``)."""
    return parse_monitoring_config(_read(path, "monitoring config"), str(path))


# --- SSLConfig ---


def parse_ssl_config(text: str, source: str = "<ssl config>") -> Message:
    """Parse SSLConfig text; key and cert are PEM contents (as in TF Serving), both required."""
    config = _parse(text, SSLConfig(), source)
    for name in ("server_key", "server_cert"):
        value = getattr(config, name)
        if not value:
            raise ConfigError(f"{source}: {name} is required (PEM contents)")
        if "-----BEGIN" not in value:
            raise ConfigError(f"{source}{_line_of(text, name)}: {name} does not hold PEM data (-----BEGIN ...)")
    if config.custom_ca and "-----BEGIN" not in config.custom_ca:
        raise ConfigError(f"{source}{_line_of(text, 'custom_ca')}: custom_ca does not hold PEM data (-----BEGIN ...)")
    if config.client_verify and not config.custom_ca:
        raise ConfigError(f"{source}: client_verify needs custom_ca to check client certificates against")
    return config


def load_ssl_config(path: str | Path) -> Message:
    """Read ``--ssl_config_file`` (SSLConfig: server_key, server_cert, custom_ca, client_verify)."""
    return parse_ssl_config(_read(path, "SSL config"), str(path))


# --- TensorFlow session config and platform config ---


def parse_session_config(text: str, source: str = "<session config>") -> bytes:
    """``--tensorflow_session_config_file``: a text ``tensorflow.ConfigProto`` -> its serialized bytes."""
    from tensorflow.core.protobuf import config_pb2

    return _parse(text, config_pb2.ConfigProto(), source).SerializeToString()


def load_session_config(path: str | Path) -> bytes:
    """Read ``--tensorflow_session_config_file`` (e.g. ``intra_op_parallelism_threads: 4``)."""
    return parse_session_config(_read(path, "TensorFlow session config"), str(path))


@dataclass(frozen=True)
class PlatformSettings:
    """What the ``tensorflow`` platform's SavedModelBundleSourceAdapterConfig sets (its ``legacy_config``)."""

    session_config: bytes
    batching_parameters: Message | None
    saved_model_tags: frozenset[str]
    enable_model_warmup: bool
    num_request_iterations_for_warmup: int
    per_process_gpu_memory_fraction: float
    enable_per_model_batching_params: bool
    prefer_tflite_model: bool = False
    num_tflite_pools: int = 0  # the proto's default: one interpreter
    num_tflite_interpreters_per_pool: int = 0


# SessionBundleConfig fields with no meaning here: refused when set, so a platform config never half-applies.
_UNSUPPORTED_BUNDLE_FIELDS = {
    "session_target": "remote TensorFlow sessions are not supported",
    "experimental_fixed_input_tensors": "fixed input tensors are not supported",
    "mixed_precision": "load-time mixed precision is not supported",
    "session_run_load_threadpool_index": "C++ session thread pools do not exist here",
    "enable_saved_model_config": "saved_model_config.pb is not read",
}


def parse_platform_config(text: str, source: str = "<platform config>") -> PlatformSettings:
    """``--platform_config_file``: a PlatformConfigMap whose only platform is ``tensorflow``.

    Its ``source_adapter_config`` is an Any holding TF Serving's ``SavedModelBundleSourceAdapterConfig``; the
    ``legacy_config`` (SessionBundleConfig) inside sets the session config, batching, tags and warmup, as it does in
    tensorflow_model_server (which then ignores --enable_batching and the parallelism flags).
    """
    from tensorflow_serving.config import platform_config_pb2

    from tfsctl.core.protos import message_pool, platform_config_messages

    messages = platform_config_messages()
    platform_map = platform_config_pb2.PlatformConfigMap()
    try:
        text_format.Parse(text, platform_map, descriptor_pool=message_pool())
    except text_format.ParseError as e:
        reason = re.sub(r"^\d+:\d+ : ", "", str(e))
        line = e.GetLine()
        raise ConfigError(f"{source}{f':{line}' if line is not None and line >= 0 else ''}: {reason}") from None
    others = sorted(set(platform_map.platform_configs) - {"tensorflow"})
    if others:
        raise ConfigError(f"{source}{_line_of(text, others[0])}: platform {others[0]!r} is not supported "
                          "(tfsctl serves the 'tensorflow' platform only)")
    if "tensorflow" not in platform_map.platform_configs:
        raise ConfigError(f"{source}: PlatformConfigMap has no entry for platform tensorflow")
    any_config = platform_map.platform_configs["tensorflow"].source_adapter_config
    adapter = messages["SavedModelBundleSourceAdapterConfig"]()
    if not any_config.Unpack(adapter):
        raise ConfigError(f"{source}: the tensorflow platform's source_adapter_config must be a "
                          f"tensorflow.serving.SavedModelBundleSourceAdapterConfig, got {any_config.type_url!r}")
    bundle = adapter.legacy_config
    for name, reason in _UNSUPPORTED_BUNDLE_FIELDS.items():
        value = getattr(bundle, name)
        is_set = bundle.HasField(name) if name == "session_run_load_threadpool_index" else bool(
            len(value) if name == "experimental_fixed_input_tensors" else value)
        if is_set:
            raise ConfigError(
                f"{source}{_line_of(text, name)}: legacy_config.{name} cannot apply in tfsctl: {reason}")
    batching = None
    if bundle.HasField("batching_parameters"):
        batching = parse_batching_parameters(text_format.MessageToString(bundle.batching_parameters),
                                             f"{source} (legacy_config.batching_parameters)")
    iterations = bundle.model_warmup_options.num_request_iterations.value \
        if bundle.model_warmup_options.HasField("num_request_iterations") else 0
    return PlatformSettings(
        session_config=bundle.session_config.SerializeToString(),
        batching_parameters=batching,
        saved_model_tags=frozenset(t for t in bundle.saved_model_tags if t) or frozenset({"serve"}),
        enable_model_warmup=bundle.enable_model_warmup,
        num_request_iterations_for_warmup=iterations,
        per_process_gpu_memory_fraction=bundle.session_config.gpu_options.per_process_gpu_memory_fraction,
        enable_per_model_batching_params=bundle.enable_per_model_batching_params,
        prefer_tflite_model=bundle.prefer_tflite_model,
        num_tflite_pools=bundle.num_tflite_pools,
        num_tflite_interpreters_per_pool=bundle.num_tflite_interpreters_per_pool,
    )


def load_platform_config(path: str | Path) -> PlatformSettings:
    """Read ``--platform_config_file`` (TF Serving's PlatformConfigMap text format)."""
    return parse_platform_config(_read(path, "platform config"), str(path))
