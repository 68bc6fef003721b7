"""The ``tfsctl`` command line: parse flags, call a module, render with rich. No logic beyond that.

Heavy imports (tensorflow, grpc) happen inside each command so ``tfsctl --help`` stays fast.
Each command's body is owned by the module it calls; keep them thin.
"""

from __future__ import annotations

import os

import typer
from rich.console import Console

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

app = typer.Typer(
    help="TensorFlow Serving's toolchain as one CLI: export, inspect, serve, predict, status, reload, bench.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 1) -> None:
    """Print a clear one-line error to stderr and exit non-zero."""
    err_console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


# --- export ---
# owner: tfsctl/export.py


# --- inspect ---
# owner: tfsctl/inspect.py


# --- serve / status / reload ---
# owner: tfsctl/serving/server.py


def _opt(default, *names: str, help: str):  # noqa: A002 - typer's keyword
    """An option accepted both as --kebab-case and as tensorflow_model_server's --snake_case."""
    decls = []
    for n in names:
        decls += [f"--{n}", f"--{n.replace('-', '_')}"] if "-" in n else [f"--{n}"]
    return typer.Option(default, *decls, help=help)


@app.command(context_settings={"help_option_names": ["-h", "--help"]})
def serve(
    port: int = _opt(8500, "port", help="gRPC port (0 = any free port)."),
    rest_api_port: int = _opt(8501, "rest-api-port", help="REST port (0 = off)."),
    host: str = _opt("0.0.0.0", "host", help="Address to bind."),
    model_name: str = _opt("default", "model-name", help="Name of the model given by --model-base-path."),
    model_base_path: str = _opt("", "model-base-path", help="Directory holding numeric version subdirectories."),
    model_config_file: str = _opt("", "model-config-file", help="ModelServerConfig text proto (many models)."),
    model_config_file_poll_wait_seconds: float = _opt(
        0.0, "model-config-file-poll-wait-seconds", help="Re-read --model-config-file this often (0 = never)."),
    file_system_poll_wait_seconds: float = _opt(
        1.0, "file-system-poll-wait-seconds", help="Poll model base paths for new versions this often."),
    enable_batching: bool = _opt(False, "enable-batching", help="Merge concurrent requests into batches."),
    batching_parameters_file: str = _opt("", "batching-parameters-file", help="BatchingParameters text proto."),
    monitoring_config_file: str = _opt("", "monitoring-config-file", help="MonitoringConfig text proto."),
    grpc_max_message_bytes: int = _opt(
        64 * 1024 * 1024, "grpc-max-message-bytes", help="Largest gRPC message in and out (bytes)."),
    ssl_config_file: str = _opt("", "ssl-config-file", help="SSLConfig text proto: TLS (and mTLS) for gRPC."),
    max_num_load_retries: int = _opt(5, "max-num-load-retries", help="Retries of a failed version load."),
    load_retry_interval_seconds: float = _opt(
        60.0, "load-retry-interval-seconds", help="Wait between load retries."),
    grpc_max_threads: int = _opt(0, "grpc-max-threads", help="gRPC worker threads (0 = automatic)."),
) -> None:
    """Serve SavedModels over TF Serving's gRPC (and REST) API until SIGTERM/SIGINT."""
    import logging

    from rich.panel import Panel

    from tfsctl.errors import ConfigError
    from tfsctl.serving.server import ModelServer, ServerOptions

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = ServerOptions(
        port=port, rest_api_port=rest_api_port, host=host, model_name=model_name, model_base_path=model_base_path,
        model_config_file=model_config_file, model_config_file_poll_wait_seconds=model_config_file_poll_wait_seconds,
        file_system_poll_wait_seconds=file_system_poll_wait_seconds, enable_batching=enable_batching,
        batching_parameters_file=batching_parameters_file, monitoring_config_file=monitoring_config_file,
        grpc_max_message_bytes=grpc_max_message_bytes, ssl_config_file=ssl_config_file,
        max_num_load_retries=max_num_load_retries, load_retry_interval_seconds=load_retry_interval_seconds,
        grpc_max_threads=grpc_max_threads,
    )
    server = ModelServer(options)
    try:
        server.start()
    except (ConfigError, OSError) as e:
        fail(str(e))
    models = ", ".join(server.manager.model_names()) or "none"
    rest = f"{host}:{server.rest_port}" if server.rest_port else "off"
    console.print(Panel.fit(
        f"[bold]gRPC[/] {host}:{server.grpc_port}{' (TLS)' if ssl_config_file else ''}   [bold]REST[/] {rest}\n"
        f"[bold]models[/] {models}   [bold]batching[/] {'on' if enable_batching else 'off'}\n"
        "SIGTERM / Ctrl-C stops gracefully", title="tfsctl serve", border_style="green"))
    raise typer.Exit(server.serve_forever())


# --- predict ---
# owner: tfsctl/client/predict.py


# --- bench ---
# owner: tfsctl/client/bench.py


def main() -> None:
    """Entry point for ``python -m tfsctl``."""
    app()
