"""Config files in TF Serving's text formats: valid files parse, each kind of mistake is a clear ConfigError."""

from __future__ import annotations

from pathlib import Path

import pytest

from tfsctl.core import config
from tfsctl.errors import ConfigError

MODEL_CONFIG = """
model_config_list {
  config {
    name: "seg"
    base_path: "/models/seg"
    model_platform: "tensorflow"
    model_version_policy { specific { versions: 1 versions: 2 } }
    version_labels { key: "stable" value: 1 }
    version_labels { key: "canary" value: 2 }
  }
  config {
    name: 'toy'
    base_path: '/models/toy'
    model_version_policy { latest { num_versions: 2 } }
  }
}
"""


def write(tmp_path: Path, text: str, name: str = "cfg.txt") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_model_server_config_parses(tmp_path: Path) -> None:
    cfg = config.load_model_server_config(write(tmp_path, MODEL_CONFIG))
    seg, toy = cfg.model_config_list.config
    assert seg.name == "seg" and seg.base_path == "/models/seg"
    assert list(seg.model_version_policy.specific.versions) == [1, 2]
    assert dict(seg.version_labels) == {"stable": 1, "canary": 2}
    assert toy.model_version_policy.latest.num_versions == 2


def test_single_model_config() -> None:
    cfg = config.single_model_config("m", Path("/x/m"))
    (mc,) = cfg.model_config_list.config
    assert (mc.name, mc.base_path, mc.model_version_policy.WhichOneof("policy_choice")) == ("m", "/x/m", None)


@pytest.mark.parametrize(
    "text, needle",
    [
        ("model_config_list { config { name: 'a' bogus: 1 } }", "no field named \"bogus\""),
        ("model_config_list { config { name: 'a' base_path: '/a' }", "1:"),
        ("model_config_list { config { base_path: '/a' } }", "has no name"),
        ("model_config_list { config { name: 'a' } }", "model 'a' has no base_path"),
        ("model_config_list { config { name: 'a' base_path: 'models/a' } }", "base_path 'models/a' is relative"),
        (
            "model_config_list { config { name: 'a' base_path: '/a' } config { name: 'a' base_path: '/b' } }",
            "appears more than once",
        ),
        ("model_config_list { config { name: 'a' base_path: '/a' model_platform: 'onnx' } }", "model_platform"),
        (
            "model_config_list { config { name: 'a' base_path: '/a' model_version_policy { specific {} } } }",
            "lists no versions",
        ),
        ("custom_model_config { }", "custom_model_config is not supported"),
    ],
)
def test_model_server_config_errors(tmp_path: Path, text: str, needle: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        config.load_model_server_config(path)
    assert str(path) in str(exc.value)
    assert needle in str(exc.value)


def test_parse_error_names_line(tmp_path: Path) -> None:
    path = write(tmp_path, "model_config_list {\n  config {\n    name: 'a'\n    nope: 3\n  }\n}\n")
    with pytest.raises(ConfigError, match=rf"{path}:4:\d+: .*nope"):
        config.load_model_server_config(path)


def test_parse_error_keeps_tf_servings_words(tmp_path: Path) -> None:
    """TF Serving's own test greps stderr for 'Error parsing text-format tensorflow.serving.ModelServerConfig'."""
    path = write(tmp_path, "improperly formatted file\n")
    with pytest.raises(ConfigError, match="Error parsing text-format tensorflow.serving.ModelServerConfig: "):
        config.load_model_server_config(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model config file not found"):
        config.load_model_server_config(tmp_path / "absent.txt")
    with pytest.raises(ConfigError, match="is a directory"):
        config.load_batching_parameters(tmp_path)


def test_batching_parameters(tmp_path: Path) -> None:
    text = """
    max_batch_size { value: 32 }
    batch_timeout_micros { value: 2000 }
    max_enqueued_batches { value: 100 }
    num_batch_threads { value: 4 }
    thread_pool_name { value: "batch_threads" }
    allowed_batch_sizes: 8
    allowed_batch_sizes: 16
    allowed_batch_sizes: 32
    pad_variable_length_inputs: true
    """
    p = config.load_batching_parameters(write(tmp_path, text))
    assert p.max_batch_size.value == 32 and p.batch_timeout_micros.value == 2000
    assert p.max_enqueued_batches.value == 100 and p.num_batch_threads.value == 4
    assert p.thread_pool_name.value == "batch_threads"
    assert list(p.allowed_batch_sizes) == [8, 16, 32] and p.pad_variable_length_inputs
    empty = config.parse_batching_parameters("")
    assert not empty.HasField("max_batch_size")


# Field name -> (number, type) for every message tfsctl declares in tfsctl/core/protos.py, written down from TF
# Serving's .proto sources (tensorflow_serving/servables/tensorflow/session_bundle_config.proto,
# config/monitoring_config.proto, config/ssl_config.proto at TF Serving 2.21), not from tfsctl's descriptors.
TF_SERVING_MESSAGES = {
    "BatchingParameters": {
        "max_batch_size": (1, "google.protobuf.Int64Value"),
        "batch_timeout_micros": (2, "google.protobuf.Int64Value"),
        "max_enqueued_batches": (3, "google.protobuf.Int64Value"),
        "num_batch_threads": (4, "google.protobuf.Int64Value"),
        "thread_pool_name": (5, "google.protobuf.StringValue"),
        "enable_large_batch_splitting": (8, "google.protobuf.BoolValue"),
        "max_execution_batch_size": (9, "google.protobuf.Int64Value"),
        "allowed_batch_sizes": (6, "repeated int64"),
        "pad_variable_length_inputs": (7, "bool"),
    },
    "PrometheusConfig": {"enable": (1, "bool"), "path": (2, "string")},
    "MonitoringConfig": {"prometheus_config": (1, "tensorflow.serving.PrometheusConfig")},
    "SSLConfig": {
        "server_key": (1, "string"), "server_cert": (2, "string"), "custom_ca": (3, "string"),
        "client_verify": (4, "bool"),
    },
}


def _type_of(f) -> str:
    from google.protobuf.descriptor import FieldDescriptor

    if f.type == FieldDescriptor.TYPE_MESSAGE:
        name = f.message_type.full_name
    else:
        name = {FieldDescriptor.TYPE_INT64: "int64", FieldDescriptor.TYPE_BOOL: "bool",
                FieldDescriptor.TYPE_STRING: "string"}.get(f.type, f"type{f.type}")
    repeated = getattr(f, "is_repeated", None)
    repeated = repeated if repeated is not None else f.label == FieldDescriptor.LABEL_REPEATED
    return f"repeated {name}" if repeated else name


def test_declared_messages_match_tf_serving_protos() -> None:
    """Every message in tfsctl.core.protos has TF Serving's package, field names, numbers and types, so text and
    binary configs written for tensorflow_model_server read the same here."""
    from tfsctl.core import protos

    assert set(protos.__all__) == set(TF_SERVING_MESSAGES), "a declared message lacks its TF Serving reference"
    for name, expected in TF_SERVING_MESSAGES.items():
        desc = getattr(protos, name).DESCRIPTOR
        assert desc.full_name == f"tensorflow.serving.{name}"
        got = {f.name: (f.number, _type_of(f)) for f in desc.fields}
        assert got == expected, name


def test_large_batch_splitting_fields_parse_and_validate(tmp_path: Path) -> None:
    p = config.parse_batching_parameters(
        "max_batch_size { value: 64 }\nenable_large_batch_splitting { value: true }\n"
        "max_execution_batch_size { value: 16 }\n")
    assert p.enable_large_batch_splitting.value and p.max_execution_batch_size.value == 16
    opts = config.BatchOptions.from_params(p)
    assert (opts.max_batch_size, opts.execution_batch_size) == (64, 16)
    # Without max_execution_batch_size, batches run at max_batch_size; without splitting it is ignored (TF Serving).
    assert config.BatchOptions(max_batch_size=8, enable_large_batch_splitting=True).execution_batch_size == 8
    assert config.BatchOptions(max_batch_size=8, max_execution_batch_size=2).execution_batch_size == 8
    # max_enqueued_batches 0 is rewritten to 1 without splitting (TF Serving keeps old configs working).
    assert config.BatchOptions(max_enqueued_batches=0).max_enqueued_batches == 1
    path = write(tmp_path, "max_batch_size { value: 8 }\nenable_large_batch_splitting { value: true }\n"
                           "max_execution_batch_size { value: 16 }\n")
    with pytest.raises(ConfigError, match=rf"{path}:3: max_execution_batch_size must be between 1 and max_batch_size"):
        config.load_batching_parameters(path)


@pytest.mark.parametrize(
    "text, needle",
    [
        ("max_batch_size: 32", "max_batch_size"),
        ("max_batch_size { value: 0 }", "max_batch_size must be >= 1"),
        ("num_batch_threads { value: -1 }", "num_batch_threads must be >= 1"),
        ("batch_timeout_micros { value: -5 }", "batch_timeout_micros must be >= 0"),
        ("max_batch_size { value: 32 } allowed_batch_sizes: 16 allowed_batch_sizes: 8", "strictly increasing"),
        ("max_batch_size { value: 32 } allowed_batch_sizes: 8 allowed_batch_sizes: 16", "must equal max_batch_size"),
        ("allowed_batch_sizes: 8 allowed_batch_sizes: 16", "must equal max_batch_size (1000)"),
        ("enable_large_batch_splitting { value: true } max_enqueued_batches { value: 0 }",
         "max_enqueued_batches must be >= 1"),
        ("max_enqueued_batches { value: -1 }", "max_enqueued_batches must be >= 1"),
    ],
)
def test_batching_errors(tmp_path: Path, text: str, needle: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=str(path)) as exc:
        config.load_batching_parameters(path)
    assert needle in str(exc.value)


def test_monitoring_config(tmp_path: Path) -> None:
    c = config.load_monitoring_config(write(tmp_path, 'prometheus_config { enable: true path: "/metrics" }'))
    assert c.prometheus_config.enable and c.prometheus_config.path == "/metrics"
    d = config.parse_monitoring_config("prometheus_config { enable: true }")
    assert d.prometheus_config.path == config.DEFAULT_PROMETHEUS_PATH
    with pytest.raises(ConfigError, match="must start with '/'"):
        config.parse_monitoring_config('prometheus_config { enable: true path: "metrics" }')
    with pytest.raises(ConfigError, match="no field named"):
        config.parse_monitoring_config("prometheus { enable: true }")


PEM_KEY = "-----BEGIN PRIVATE KEY-----\\nabc\\n-----END PRIVATE KEY-----\\n"
PEM_CERT = "-----BEGIN CERTIFICATE-----\\nabc\\n-----END CERTIFICATE-----\\n"


def test_ssl_config(tmp_path: Path) -> None:
    text = f'server_key: "{PEM_KEY}"\nserver_cert: "{PEM_CERT}"\ncustom_ca: "{PEM_CERT}"\nclient_verify: true\n'
    c = config.load_ssl_config(write(tmp_path, text))
    assert c.server_key.startswith("-----BEGIN PRIVATE KEY-----\n") and c.client_verify
    with pytest.raises(ConfigError, match="server_cert is required"):
        config.parse_ssl_config(f'server_key: "{PEM_KEY}"')
    with pytest.raises(ConfigError, match="server_key does not hold PEM"):
        config.parse_ssl_config(f'server_key: "/etc/key.pem" server_cert: "{PEM_CERT}"')
    with pytest.raises(ConfigError, match="client_verify needs custom_ca"):
        config.parse_ssl_config(f'server_key: "{PEM_KEY}" server_cert: "{PEM_CERT}" client_verify: true')
