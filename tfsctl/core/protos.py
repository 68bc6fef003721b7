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
