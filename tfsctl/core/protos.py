"""TF Serving config messages that tensorflow-serving-api does not ship, declared at run time.

``BatchingParameters`` (from ``session_bundle_config.proto``), ``MonitoringConfig`` / ``PrometheusConfig``
(``monitoring_config.proto``) and ``SSLConfig`` (``ssl_config.proto``) keep TF Serving's package, message names,
field names, numbers and types, so the same text files that ``tensorflow_model_server`` reads parse here unchanged.
They live in a private descriptor pool so they can never clash with another copy of these protos in the process.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

_PACKAGE = "tensorflow.serving"
_F = descriptor_pb2.FieldDescriptorProto

_pool = descriptor_pool.DescriptorPool()
_pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)


def _field(msg: descriptor_pb2.DescriptorProto, name: str, number: int, ftype: int, *, type_name: str = "",
           repeated: bool = False) -> None:
    f = msg.field.add(name=name, number=number, type=ftype)
    f.label = _F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL
    if type_name:
        f.type_name = type_name
    f.json_name = "".join(p.capitalize() if i else p for i, p in enumerate(name.split("_")))


def _build() -> None:
    # session_bundle_config.proto: only BatchingParameters (SessionBundleConfig pulls in TF's ConfigProto).
    batching = descriptor_pb2.FileDescriptorProto(
        name="tfsctl/tensorflow_serving/batching_parameters.proto", package=_PACKAGE, syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    bp = batching.message_type.add(name="BatchingParameters")
    i64, string, boolean = (".google.protobuf.Int64Value", ".google.protobuf.StringValue",
                            ".google.protobuf.BoolValue")
    _field(bp, "max_batch_size", 1, _F.TYPE_MESSAGE, type_name=i64)
    _field(bp, "batch_timeout_micros", 2, _F.TYPE_MESSAGE, type_name=i64)
    _field(bp, "max_enqueued_batches", 3, _F.TYPE_MESSAGE, type_name=i64)
    _field(bp, "num_batch_threads", 4, _F.TYPE_MESSAGE, type_name=i64)
    _field(bp, "thread_pool_name", 5, _F.TYPE_MESSAGE, type_name=string)
    _field(bp, "enable_large_batch_splitting", 8, _F.TYPE_MESSAGE, type_name=boolean)
    _field(bp, "max_execution_batch_size", 9, _F.TYPE_MESSAGE, type_name=i64)
    _field(bp, "allowed_batch_sizes", 6, _F.TYPE_INT64, repeated=True)
    _field(bp, "pad_variable_length_inputs", 7, _F.TYPE_BOOL)
    _pool.Add(batching)

    monitoring = descriptor_pb2.FileDescriptorProto(
        name="tfsctl/tensorflow_serving/monitoring_config.proto", package=_PACKAGE, syntax="proto3",
    )
    pc = monitoring.message_type.add(name="PrometheusConfig")
    _field(pc, "enable", 1, _F.TYPE_BOOL)
    _field(pc, "path", 2, _F.TYPE_STRING)
    mc = monitoring.message_type.add(name="MonitoringConfig")
    _field(mc, "prometheus_config", 1, _F.TYPE_MESSAGE, type_name=f".{_PACKAGE}.PrometheusConfig")
    _pool.Add(monitoring)

    ssl = descriptor_pb2.FileDescriptorProto(
        name="tfsctl/tensorflow_serving/ssl_config.proto", package=_PACKAGE, syntax="proto3",
    )
    sc = ssl.message_type.add(name="SSLConfig")
    _field(sc, "server_key", 1, _F.TYPE_STRING)
    _field(sc, "server_cert", 2, _F.TYPE_STRING)
    _field(sc, "custom_ca", 3, _F.TYPE_STRING)
    _field(sc, "client_verify", 4, _F.TYPE_BOOL)
    _pool.Add(ssl)


_build()


def _cls(name: str) -> type:
    return message_factory.GetMessageClass(_pool.FindMessageTypeByName(f"{_PACKAGE}.{name}"))


BatchingParameters = _cls("BatchingParameters")
"""``tensorflow.serving.BatchingParameters``: max_batch_size, batch_timeout_micros, max_enqueued_batches,
num_batch_threads, thread_pool_name, enable_large_batch_splitting, max_execution_batch_size (wrapper messages:
``{ value: N }``), allowed_batch_sizes, pad_variable_length_inputs."""
PrometheusConfig = _cls("PrometheusConfig")
"""``tensorflow.serving.PrometheusConfig``: enable, path."""
MonitoringConfig = _cls("MonitoringConfig")
"""``tensorflow.serving.MonitoringConfig``: prometheus_config."""
SSLConfig = _cls("SSLConfig")
"""``tensorflow.serving.SSLConfig``: server_key, server_cert, custom_ca (PEM contents), client_verify."""

__all__ = ["BatchingParameters", "MonitoringConfig", "PrometheusConfig", "SSLConfig"]


# --- platform config (``--platform_config_file``) ----------------------------------------------------------------
# SessionBundleConfig embeds TensorFlow's ConfigProto, so these messages are declared on first use: only a server
# given --platform_config_file pays for importing TensorFlow's protos here.

_platform_messages: dict[str, type] = {}


def _add_with_dependencies(file_descriptor) -> None:
    """Copy a generated module's file (and, first, everything it imports) into the private pool."""
    try:
        _pool.FindFileByName(file_descriptor.name)
        return
    except KeyError:
        pass
    for dep in file_descriptor.dependencies:
        _add_with_dependencies(dep)
    _pool.AddSerializedFile(file_descriptor.serialized_pb)


def platform_config_messages() -> dict[str, type]:
    """``SessionBundleConfig``, ``ModelWarmupOptions`` and ``SavedModelBundleSourceAdapterConfig`` (TF Serving's
    names, field names and numbers), plus ``ConfigProto``, all from the private pool.

    ``session_bundle_config.proto``'s ``in_graph_batching_parameters`` (7) and the deprecated
    ``num_tflite_interpreters`` (785) are left out: a file setting them fails to parse with the field's name.
    """
    if _platform_messages:
        return _platform_messages
    from tensorflow.core.protobuf import config_pb2, named_tensor_pb2

    _add_with_dependencies(config_pb2.DESCRIPTOR)
    _add_with_dependencies(named_tensor_pb2.DESCRIPTOR)
    bundle = descriptor_pb2.FileDescriptorProto(
        name="tfsctl/tensorflow_serving/session_bundle_config.proto", package=_PACKAGE, syntax="proto3",
        dependency=["google/protobuf/wrappers.proto", config_pb2.DESCRIPTOR.name, named_tensor_pb2.DESCRIPTOR.name,
                    "tfsctl/tensorflow_serving/batching_parameters.proto"],
    )
    i32 = ".google.protobuf.Int32Value"
    wo = bundle.message_type.add(name="ModelWarmupOptions")
    _field(wo, "num_request_iterations", 1, _F.TYPE_MESSAGE, type_name=i32)
    _field(wo, "num_model_warmup_threads", 2, _F.TYPE_MESSAGE, type_name=i32)
    _field(wo, "model_name", 3, _F.TYPE_STRING)
    _field(wo, "model_version", 4, _F.TYPE_INT64)
    _field(wo, "enable_all_batch_sizes_warmup", 5, _F.TYPE_BOOL)
    sb = bundle.message_type.add(name="SessionBundleConfig")
    _field(sb, "session_target", 1, _F.TYPE_STRING)
    _field(sb, "session_config", 2, _F.TYPE_MESSAGE, type_name=".tensorflow.ConfigProto")
    _field(sb, "batching_parameters", 3, _F.TYPE_MESSAGE, type_name=f".{_PACKAGE}.BatchingParameters")
    _field(sb, "session_run_load_threadpool_index", 4, _F.TYPE_MESSAGE, type_name=i32)
    _field(sb, "experimental_transient_ram_bytes_during_load", 5, _F.TYPE_UINT64)
    _field(sb, "saved_model_tags", 6, _F.TYPE_STRING, repeated=True)
    _field(sb, "experimental_fixed_input_tensors", 778, _F.TYPE_MESSAGE, type_name=".tensorflow.NamedTensorProto",
           repeated=True)
    _field(sb, "enable_model_warmup", 779, _F.TYPE_BOOL)
    _field(sb, "model_warmup_options", 780, _F.TYPE_MESSAGE, type_name=f".{_PACKAGE}.ModelWarmupOptions")
    _field(sb, "enable_session_metadata", 781, _F.TYPE_BOOL)
    _field(sb, "remove_unused_fields_from_bundle_metagraph", 782, _F.TYPE_BOOL)
    _field(sb, "prefer_tflite_model", 783, _F.TYPE_BOOL)
    _field(sb, "resource_estimation_uses_validation_result", 784, _F.TYPE_BOOL)
    _field(sb, "num_tflite_interpreters_per_pool", 786, _F.TYPE_INT32)
    _field(sb, "num_tflite_pools", 787, _F.TYPE_INT32)
    _field(sb, "wrap_session_with_no_threading_params", 788, _F.TYPE_BOOL)
    _field(sb, "enable_per_model_batching_params", 789, _F.TYPE_BOOL)
    _field(sb, "enable_saved_model_config", 790, _F.TYPE_BOOL)
    _field(sb, "mixed_precision", 791, _F.TYPE_STRING)
    _pool.Add(bundle)
    adapter = descriptor_pb2.FileDescriptorProto(
        name="tfsctl/tensorflow_serving/saved_model_bundle_source_adapter.proto", package=_PACKAGE,
        syntax="proto3", dependency=[bundle.name],
    )
    sa = adapter.message_type.add(name="SavedModelBundleSourceAdapterConfig")
    _field(sa, "legacy_config", 1000, _F.TYPE_MESSAGE, type_name=f".{_PACKAGE}.SessionBundleConfig")
    _pool.Add(adapter)
    for name in ("ModelWarmupOptions", "SessionBundleConfig", "SavedModelBundleSourceAdapterConfig"):
        _platform_messages[name] = _cls(name)
    _platform_messages["ConfigProto"] = message_factory.GetMessageClass(
        _pool.FindMessageTypeByName("tensorflow.ConfigProto"))
    return _platform_messages


def message_pool() -> descriptor_pool.DescriptorPool:
    """The private pool (text_format needs it to expand ``[type.googleapis.com/...]`` Any values)."""
    return _pool
