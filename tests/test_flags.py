"""`tfsctl serve`'s command line: every tensorflow_model_server flag, its syntax, its checks and what it sets.

Fast: parsing and option building only (no server). Real `tfsctl serve` runs are in tests/test_startup.py.
"""

from __future__ import annotations

import ast
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from tfsctl.errors import ConfigError  # noqa: E402
from tfsctl.serving import options as options_module  # noqa: E402
from tfsctl.serving.flags import BY_NAME, FlagError, help_text, parse_args  # noqa: E402
from tfsctl.serving.options import ServerOptions, parse_channel_arguments  # noqa: E402

# The flags of TF Serving 2.21's model_servers/main.cc (names only), in its order.
MAIN_CC_FLAGS = """port grpc_socket_path rest_api_port rest_api_num_threads rest_api_timeout_in_ms
rest_api_enable_cors_support enable_batching allow_version_labels_for_unavailable_models batching_parameters_file
enable_per_model_batching_parameters model_config_file model_config_file_poll_wait_seconds model_name model_base_path
num_load_threads num_unload_threads max_num_load_retries load_retry_interval_micros file_system_poll_wait_seconds
flush_filesystem_caches tensorflow_session_parallelism tensorflow_session_config_file tensorflow_intra_op_parallelism
tensorflow_inter_op_parallelism use_alts_credentials ssl_config_file platform_config_file
per_process_gpu_memory_fraction saved_model_tags grpc_channel_arguments grpc_max_threads enable_model_warmup
num_request_iterations_for_warmup version monitoring_config_file remove_unused_fields_from_bundle_metagraph
prefer_tflite_model num_tflite_pools num_tflite_interpreters_per_pool enable_signature_method_name_check
xla_cpu_compilation_enabled xla_gpu_compilation_enabled enable_profiler thread_pool_factory_config_file
mixed_precision skip_initialize_tpu enable_grpc_healthcheck_service enable_serialization_as_tensor_content""".split()

KSERVE = ["--model_name=flowers", "--port=9000", "--rest_api_port=8080", "--model_base_path=/mnt/models",
          "--rest_api_timeout_in_ms=60000"]


def options(*argv: str) -> ServerOptions:
    return ServerOptions.from_args(list(argv))


def test_every_main_cc_flag_is_known_and_every_option_has_a_flag():
    assert len(MAIN_CC_FLAGS) == 48
    assert [n for n in MAIN_CC_FLAGS if n not in BY_NAME] == []
    fields = set(ServerOptions.__dataclass_fields__)
    assert {n for n in BY_NAME if n != "version"} == fields


def _field_defaults(source: str) -> dict[str, ast.expr]:
    """{field name: its default expression} of the ServerOptions class in ``source``."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef) and node.name == "ServerOptions":
            return {s.target.id: s.value for s in node.body
                    if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name) and s.value is not None}
    raise AssertionError("no class ServerOptions")


def _defaults_written_twice(source: str) -> list[str]:
    """Flag-backed fields whose default is not read from the flag table as ``_flag("<the field's name>")``."""
    return [name for name, value in _field_defaults(source).items() if name in BY_NAME and not (
        isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "_flag"
        and [a.value for a in value.args if isinstance(a, ast.Constant)] == [name] and not value.keywords)]


def test_each_default_is_written_once_in_the_flag_table():
    source = Path(options_module.__file__).read_text()
    assert _defaults_written_twice(source) == []
    assert set(_field_defaults(source)) == {f.name for f in dataclasses.fields(ServerOptions)}  # none left bare
    # the checker sees a literal default, another flag's default and a default_factory
    broken = source.replace('port: int = _flag("port")', "port: int = 8500").replace(
        'host: str = _flag("host")', 'host: str = _flag("model_name")').replace(
        'workers: int = _flag("workers")', "workers: int = field(default_factory=lambda: 1)")
    assert sorted(_defaults_written_twice(broken)) == ["host", "port", "workers"]
    # and the dataclass holds the flag's very value and type
    for f in dataclasses.fields(ServerOptions):
        flag = BY_NAME[f.name]
        assert f.default_factory is dataclasses.MISSING
        assert (f.default, type(f.default)) == (flag.default, type(flag.default)), f.name


def test_options_import_without_tensorflow():
    """The CLI validates flags and ``serve --workers``' supervisor passes options on before (or without) TensorFlow."""
    code = ("import sys, tfsctl.serving.options as o; o.ServerOptions.from_args(['--port=1']).validate(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tensorflow_serving')))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parent.parent),
                                                         os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env, check=True)
    assert out.stdout.strip() == "[]"


def test_defaults_are_tensorflow_model_servers():
    o = options()
    assert (o.port, o.rest_api_port, o.model_name, o.rest_api_timeout_in_ms, o.max_num_load_retries) == (
        8500, 0, "default", 30000, 5)
    assert (o.load_retry_interval_micros, o.file_system_poll_wait_seconds, o.num_load_threads) == (60_000_000, 1, 0)
    assert o.enable_model_warmup and o.flush_filesystem_caches and not o.enable_batching
    assert not o.enable_serialization_as_tensor_content and not o.enable_signature_method_name_check


def test_kserve_command_line():
    o = options(*KSERVE)
    assert (o.model_name, o.port, o.rest_api_port, o.model_base_path, o.rest_api_timeout_in_ms) == (
        "flowers", 9000, 8080, "/mnt/models", 60000)
    o.validate()


@pytest.mark.parametrize("argv, expected", [
    (["--enable_batching"], True),
    (["--enable_batching=true"], True),
    (["--enable_batching=True"], True),
    (["--enable_batching=1"], True),
    (["--enable_batching=false"], False),
    (["--enable_batching=0"], False),
    (["--enable_batching", "false"], False),
    (["--enable-batching"], True),
    (["--enable-batching=false"], False),
])
def test_boolean_syntax(argv, expected):
    assert options(*argv).enable_batching is expected


def test_value_syntax_and_kebab_aliases():
    a = options("--port=1234", "--model_base_path", "/m", "--model-name", "x", "--rest-api-port=0",
                "--file_system_poll_wait_seconds=0.5", "--saved_model_tags=serve,gpu")
    assert (a.port, a.model_base_path, a.model_name, a.rest_api_port) == (1234, "/m", "x", 0)
    assert a.file_system_poll_wait_seconds == 0.5 and a.saved_model_tags == "serve,gpu"
    assert options("--model_name=a=b").model_name == "a=b"  # only the first '=' separates
    assert options().enable_model_warmup is True and options("--enable_model_warmup=false").enable_model_warmup is False


@pytest.mark.parametrize("argv, words", [
    (["--port=abc"], ["--port", "integer", "'abc'"]),
    (["--port", "8.5"], ["--port", "integer"]),
    (["--port=99999999999"], ["--port", "int32"]),
    (["--per_process_gpu_memory_fraction=lots"], ["--per_process_gpu_memory_fraction", "number"]),
    (["--enable_batching=yes"], ["--enable_batching", "true, false, 1 or 0"]),
    (["--no_such_flag=1"], ["unknown flag --no_such_flag"]),
    (["--model_name"], ["--model_name needs a value"]),
    (["stray"], ["unexpected argument 'stray'"]),
    (["--file_system_poll_wait_seconds=nan"], ["finite"]),
])
def test_bad_flags_are_one_clear_error(argv, words):
    with pytest.raises(FlagError) as info:
        parse_args(argv)
    assert "\n" not in str(info.value)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("argv, words", [
    (["--port=-1"], ["--port must be in 0..65535"]),
    (["--rest_api_port=70000"], ["--rest_api_port must be in 0..65535"]),
    (["--num_load_threads=-2"], ["--num_load_threads must be >= 0"]),
    (["--rest_api_timeout_in_ms=0"], ["--rest_api_timeout_in_ms must be > 0"]),
    (["--per_process_gpu_memory_fraction=1.5"], ["--per_process_gpu_memory_fraction"]),
    (["--tensorflow_session_parallelism=2", "--tensorflow_intra_op_parallelism=2",
      "--tensorflow_inter_op_parallelism=2"], ["not all three"]),
    (["--batching_parameters_file=/b"], ["--batching_parameters_file is set without --enable_batching"]),
    (["--batching_isolate_failures"], ["--batching_isolate_failures is set without --enable_batching"]),
    (["--batching_wait_for_answered_clients"],
     ["--batching_wait_for_answered_clients is set without --enable_batching"]),
    (["--grpc_channel_arguments=grpc.max_connection_age_ms"], ["--grpc_channel_arguments", "key=value"]),
    (["--use_alts_credentials"], ["--use_alts_credentials=true cannot apply"]),
    (["--skip_initialize_tpu"], ["--skip_initialize_tpu", "TPU"]),
    (["--thread_pool_factory_config_file=/x"], ["--thread_pool_factory_config_file"]),
    (["--mixed_precision=bfloat16"], ["--mixed_precision=bfloat16 cannot apply"]),
    (["--remove_unused_fields_from_bundle_metagraph=false"], ["--remove_unused_fields_from_bundle_metagraph"]),
    (["--worker_cpu_affinity"], ["--worker_cpu_affinity", "--workers 2 or more"]),
])
def test_invalid_or_inapplicable_values_name_the_flag(argv, words):
    with pytest.raises(FlagError) as info:
        options(*argv, "--model_base_path=/m").validate()
    for word in words:
        assert word in str(info.value)


def test_inapplicable_flags_at_their_default_are_accepted():
    options("--use_alts_credentials=false", "--enable_profiler=false",
            "--remove_unused_fields_from_bundle_metagraph=true", "--xla_cpu_compilation_enabled=true",
            "--model_base_path=/m").validate()


def test_channel_arguments_as_server_cc_parses_them():
    assert parse_channel_arguments("") == []
    assert parse_channel_arguments("grpc.max_connection_age_ms=2000, grpc.primary_user_agent=abc,"
                                   "grpc.so_reuseaddr=0,grpc.so_reuseaddr=1") == [
        ("grpc.max_connection_age_ms", 2000), ("grpc.primary_user_agent", "abc"), ("grpc.so_reuseaddr", 1)]


def test_load_settings_from_the_session_flags(tmp_path):
    from tensorflow.core.protobuf import config_pb2

    from tfsctl.core.loader import LoadOptions

    s = options("--model_base_path=/m").load_settings()
    assert s.load_options == LoadOptions(num_request_iterations_for_warmup=1)
    assert not s.enable_batching and s.batching_parameters is None

    s = options("--tensorflow_session_parallelism=3", "--saved_model_tags=serve, gpu,",
                "--enable_model_warmup=false", "--num_request_iterations_for_warmup=7",
                "--per_process_gpu_memory_fraction=0.25").load_settings()
    o = s.load_options
    assert (o.intra_op_parallelism, o.inter_op_parallelism) == (3, 3)  # session parallelism sets both (server.cc)
    assert o.saved_model_tags == frozenset({"serve", "gpu"})
    assert (o.enable_model_warmup, o.num_request_iterations_for_warmup) == (False, 7)
    assert o.per_process_gpu_memory_fraction == 0.25

    o = options("--tensorflow_intra_op_parallelism=2").load_settings().load_options
    assert (o.intra_op_parallelism, o.inter_op_parallelism) == (2, 0)

    cfg = tmp_path / "session.config"
    cfg.write_text("intra_op_parallelism_threads: 5\nallow_soft_placement: true\n")
    o = options(f"--tensorflow_session_config_file={cfg}").load_settings().load_options
    proto = config_pb2.ConfigProto.FromString(o.session_config)
    assert proto.intra_op_parallelism_threads == 5 and proto.allow_soft_placement
    cfg.write_text("intra_op_threads: 5\n")
    with pytest.raises(ConfigError, match=f"{cfg}:1"):
        options(f"--tensorflow_session_config_file={cfg}").load_settings()


def test_batching_flags_reach_the_settings(tmp_path):
    params = tmp_path / "batching.config"
    params.write_text("max_batch_size { value: 8 }\n")
    s = options("--enable_batching", f"--batching_parameters_file={params}",
                "--enable_per_model_batching_parameters").load_settings()
    assert s.enable_batching and s.batching_parameters.max_batch_size.value == 8
    assert s.enable_per_model_batching_params
    s = options("--enable_per_model_batching_parameters").load_settings()  # only with --enable_batching
    assert not s.enable_batching and not s.enable_per_model_batching_params


PLATFORM = """platform_configs {
  key: "tensorflow"
  value {
    source_adapter_config {
      [type.googleapis.com/tensorflow.serving.SavedModelBundleSourceAdapterConfig] {
        legacy_config {
          session_config { inter_op_parallelism_threads: 3 gpu_options { per_process_gpu_memory_fraction: 0.5 } }
          batching_parameters { max_batch_size { value: 16 } batch_timeout_micros { value: 100 } }
          saved_model_tags: "serve"
          saved_model_tags: "custom"
          enable_model_warmup: true
          model_warmup_options { num_request_iterations { value: 4 } }
        }
      }
    }
  }
}
"""


def test_platform_config_file_sets_session_batching_tags_and_warmup(tmp_path, caplog):
    from tensorflow.core.protobuf import config_pb2

    path = tmp_path / "platform.config"
    path.write_text(PLATFORM)
    s = options(f"--platform_config_file={path}", "--tensorflow_session_parallelism=9").load_settings()
    o = s.load_options
    assert config_pb2.ConfigProto.FromString(o.session_config).inter_op_parallelism_threads == 3
    assert (o.intra_op_parallelism, o.inter_op_parallelism) == (0, 0)  # the flag is ignored, as TF Serving
    assert "--tensorflow_session_parallelism is ignored" in caplog.text
    assert o.saved_model_tags == frozenset({"serve", "custom"})
    assert (o.enable_model_warmup, o.num_request_iterations_for_warmup) == (True, 4)
    assert o.per_process_gpu_memory_fraction == 0.5
    assert s.enable_batching and s.batching_parameters.max_batch_size.value == 16

    path.write_text(PLATFORM.replace("enable_model_warmup: true", "enable_model_warmup: true session_target: 'x'"))
    with pytest.raises(ConfigError, match="legacy_config.session_target cannot apply"):
        options(f"--platform_config_file={path}").load_settings()
    path.write_text(PLATFORM.replace('key: "tensorflow"', 'key: "tflite"'))
    with pytest.raises(ConfigError, match="platform 'tflite' is not supported"):
        options(f"--platform_config_file={path}").load_settings()
    path.write_text(PLATFORM.replace("max_batch_size { value: 16 }", "max_batch_size { value: 0 }"))
    with pytest.raises(ConfigError, match="max_batch_size must be >= 1"):
        options(f"--platform_config_file={path}").load_settings()
    path.write_text(PLATFORM.replace("legacy_config {", "legacy_config { bogus: 1 "))
    with pytest.raises(ConfigError, match=f"{path}:6: .*no field named \"bogus\""):
        options(f"--platform_config_file={path}").load_settings()


def test_help_fits_80_columns_and_lists_every_flag():
    text = help_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    for name in BY_NAME:
        assert f"--{name}" in text
    assert "--model-base-path" not in text  # the kebab aliases are accepted, not listed
    for argv in (["serve", "--help"], ["serve", "-h"], ["serve", "--port=1", "--help"]):
        result = CliRunner().invoke(__import__("tfsctl.cli").cli.app, argv)
        assert result.exit_code == 0 and "--rest_api_timeout_in_ms=INT" in result.output, result.output


@pytest.mark.parametrize("argv, code, words", [
    (["--port=abc", "--model_base_path=/m"], 2, ["--port", "integer"]),
    (["--use_alts_credentials=true", "--model_base_path=/m"], 2, ["--use_alts_credentials=true cannot apply"]),
    (["--rest_api_port=-5", "--model_base_path=/m"], 2, ["--rest_api_port must be in 0..65535"]),
    (["--port=0"], 1, ["no models to serve"]),
])
def test_cli_flag_errors_are_one_line_with_exit_code(argv, code, words):
    from tfsctl.cli import app

    result = CliRunner().invoke(app, ["serve", *argv])
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for word in words:
        assert word in lines[0]
