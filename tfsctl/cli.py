"""The ``tfsctl`` command line: parse flags, call a module, render with rich. No logic beyond that.

Heavy imports (tensorflow, grpc) happen inside each command so ``tfsctl --help`` stays fast.
Each command's body is owned by the module it calls; keep them thin.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

app = typer.Typer(
    help="TensorFlow Serving's toolchain as one CLI: export, inspect, serve, predict, status, reload, bench.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 1) -> None:
    """Print a clear one-line error to stderr and exit non-zero.

    The message is escaped (paths and server messages may hold ``[...]``, which rich would take for markup),
    its line breaks (TensorFlow runtime errors from a server carry ``\n\t [[{{node ...}}]]``) become spaces, and
    it is not wrapped, so a log or ``grep`` sees one line.
    """
    one_line = " ".join(part.strip() for part in message.splitlines() if part.strip())
    err_console.print(f"[bold red]error:[/] {escape(one_line)}", soft_wrap=True)
    raise typer.Exit(code)


def quiet_tensorflow(devices: bool = False) -> None:
    """Import TensorFlow (and with ``devices`` probe them) with the native start-up chatter kept off the terminal.

    TensorFlow's C++ runtime logs through absl before any log level applies (``Could not find cuda drivers``,
    ``failed call to cuInit`` on machines without a GPU), so a one-line error would drown in it. File descriptor 2
    points at a temporary file meanwhile; the text is replayed if the import fails. ``TF_CPP_MIN_LOG_LEVEL`` below
    2 (asking for TensorFlow's info/warning logs) leaves everything on the terminal.
    """
    import sys

    if "tensorflow" in sys.modules or os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2") in ("0", "1"):
        return
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as capture:
            os.dup2(capture.fileno(), 2)
            try:
                import tensorflow as tf

                if devices:  # only commands that run ops: the CUDA probe logs here, not at import
                    tf.config.list_physical_devices()
            except BaseException:
                os.dup2(saved, 2)
                capture.seek(0)
                sys.stderr.write(capture.read().decode("utf-8", "replace"))
                raise
    finally:
        os.dup2(saved, 2)
        os.close(saved)


# --- export ---
# owner: tfsctl/export.py


def _parse_size(text: str) -> tuple[int, int]:
    """``WIDTHxHEIGHT`` (as image sizes are usually written, e.g. 320x240) -> (height, width)."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts) or min(int(p) for p in parts) < 1:
        raise typer.BadParameter(f"{text!r} is not WIDTHxHEIGHT with positive integers (e.g. 320x240)")
    return int(parts[1]), int(parts[0])


@app.command()
def export(
    source: Path = typer.Argument(..., help="Checkpoint directory holding model.json, or a Keras .keras file."),
    out: Path = typer.Argument(..., help="Model base path (the next integer version is used) or BASE/VERSION."),
    force: bool = typer.Option(False, "--force", help="Replace an existing version (swapped in atomically)."),
    warmup_size: list[str] = typer.Option(
        None, "--warmup-size", help="WIDTHxHEIGHT of a predict_images warmup request; repeatable (default 256x256; "
        "'none' for no warmup file)."),
    max_image_pixels: int = typer.Option(
        2048 * 2048, "--max-image-pixels", help="Largest image (pixels) the signatures accept."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Export a checkpoint (or .keras model) as a versioned SavedModel that a model server can load."""
    quiet_tensorflow(devices=True)
    import json
    import time

    from rich.table import Table

    from tfsctl.errors import ExportError

    if warmup_size and any(s.lower() == "none" for s in warmup_size):
        sizes: list[tuple[int, int]] = []
    else:
        sizes = [_parse_size(s) for s in (warmup_size or ["256x256"])]
    started = time.perf_counter()
    try:
        from tfsctl.export import export_model

        if as_json:
            result = export_model(source, out, force=force, warmup_sizes=sizes, max_image_pixels=max_image_pixels)
        else:
            with err_console.status(f"Exporting {source} ..."):
                result = export_model(source, out, force=force, warmup_sizes=sizes,
                                      max_image_pixels=max_image_pixels)
    except ExportError as e:
        fail(str(e))
    except KeyboardInterrupt:
        fail("cancelled; nothing was written", 130)
    elapsed = time.perf_counter() - started
    if as_json:
        typer.echo(json.dumps({**result.to_dict(), "seconds": round(elapsed, 2)}))
        return
    from tfsctl.inspect import inspect_saved_model

    done = "replaced" if result.replaced else "exported"
    table = Table(title=f"{done} version {result.version}: {escape(str(result.path))}")
    table.add_column("signature")
    table.add_column("method", overflow="fold")
    table.add_column("inputs")
    table.add_column("outputs")
    serve = inspect_saved_model(result.path).meta_graph()
    for sig in serve.signatures if serve else []:
        if sig.name in result.signatures:
            table.add_row(sig.name, sig.method_name,
                          "\n".join(f"{t.key} {t.dtype} {t.shape_str}" for t in sig.inputs),
                          "\n".join(f"{t.key} {t.dtype} {t.shape_str}" for t in sig.outputs))
    console.print(table)
    warm = ", ".join(f"{w}x{h}" for h, w in result.warmup_sizes) or "none"
    console.print(f"source {escape(str(result.source))}; warmup requests: {warm}; {elapsed:.1f} s")


# --- inspect ---
# owner: tfsctl/inspect.py


def _render_saved_model(info) -> None:  # noqa: ANN001 - SavedModelInfo, imported lazily
    from rich.table import Table

    version = f" (version {info.version})" if info.version is not None else ""
    console.print(f"[bold]SavedModel[/] {escape(str(info.path))}{version}")
    console.print("tag-sets: " + "; ".join(", ".join(tags) or "(none)" for tags in info.tag_sets))
    if info.warmup_records is not None:
        console.print(f"warmup records: {info.warmup_records}")
    for mg in info.meta_graphs:
        summary = Table(title=f"tag-set {', '.join(mg.tags)!s}: signatures (TF {mg.tensorflow_version or '?'})")
        summary.add_column("signature")
        summary.add_column("method", overflow="fold")
        summary.add_column("inputs")
        summary.add_column("outputs")
        for sig in mg.signatures:
            if sig.name.startswith("__"):  # __saved_model_init_op: internal, not servable
                continue
            summary.add_row(sig.name, sig.method_name or "-", ", ".join(t.key for t in sig.inputs),
                            ", ".join(t.key for t in sig.outputs))
        console.print(summary)
        for sig in mg.signatures:
            if sig.name.startswith("__"):
                continue
            table = Table(title=f"signature {sig.name!r} ({sig.method_name or 'no method'})", title_justify="left")
            table.add_column("")
            table.add_column("key")
            table.add_column("dtype")
            table.add_column("shape", no_wrap=True)
            table.add_column("tensor", overflow="fold")
            for role, tensors in (("input", sig.inputs), ("output", sig.outputs)):
                for t in tensors:
                    name = t.name if t.encoding == "dense" else f"{t.name} ({t.encoding})"
                    table.add_row(role, t.key, t.dtype, t.shape_str, name)
            console.print(table)


@app.command()
def inspect(
    path: Path = typer.Argument(..., help="A SavedModel directory, or a model base path with version directories."),
    as_json: bool = typer.Option(False, "--json", help="Print everything as JSON."),
) -> None:
    """Show tag-sets, signatures, method names and tensors of any SavedModel (like saved_model_cli show --all)."""
    quiet_tensorflow()
    import json

    from rich.table import Table

    from tfsctl.errors import InspectError
    from tfsctl.inspect import BasePathInfo, inspect_path

    try:
        info = inspect_path(path)
    except InspectError as e:
        fail(str(e))
    if as_json:
        typer.echo(json.dumps(info.to_dict(), indent=2))
        return
    if isinstance(info, BasePathInfo):
        table = Table(title=f"model base path {escape(str(info.path))}")
        table.add_column("version", justify="right")
        table.add_column("valid")
        table.add_column("signatures / error")
        for v in info.versions:
            table.add_row(str(v.version), "[green]yes[/]" if v.valid else "[red]no[/]",
                          escape(", ".join(v.signatures) if v.valid else v.error))
        console.print(table)
        if info.latest is None:
            fail(f"{info.path} has no valid SavedModel version")
        console.print(f"latest valid version: {info.latest.version}")
        _render_saved_model(info.latest)
    else:
        _render_saved_model(info)


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
    workers: int = typer.Option(1, "--workers", help="tfsctl-only: N serving processes sharing the ports (each holds "
                                "its own copy of the models); see docs/PERFORMANCE.md."),
) -> None:
    """Serve SavedModels over TF Serving's gRPC (and REST) API until SIGTERM/SIGINT."""
    if workers == 1:  # with --workers the supervisor never runs a model: each worker imports TensorFlow itself
        quiet_tensorflow(devices=True)
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

    def banner(server: ModelServer) -> None:
        models = ", ".join(server.manager.model_names()) or "none"
        rest = f"{host}:{server.rest_port}" if server.rest_port else "off"
        console.print(Panel.fit(
            f"[bold]gRPC[/] {host}:{server.grpc_port}{' (TLS)' if ssl_config_file else ''}   [bold]REST[/] {rest}\n"
            f"[bold]models[/] {models}   [bold]batching[/] {'on' if enable_batching else 'off'}\n"
            "SIGTERM / Ctrl-C stops gracefully", title="tfsctl serve", border_style="green"))

    try:
        if workers != 1:
            from tfsctl.serving.workers import serve_workers

            code = serve_workers(options, workers, on_started=lambda sup: console.print(
                f"tfsctl serve: {workers} workers on gRPC {host}:{sup.grpc_port}, REST "
                f"{f'{host}:{sup.rest_port}' if sup.rest_port else 'off'} (pids {sup.pids})"))
        else:
            code = ModelServer(options).serve_forever(on_started=banner)
    except (ConfigError, OSError) as e:
        fail(str(e))
    raise typer.Exit(code)


# --- predict ---
# owner: tfsctl/client/predict.py


@app.command()
def predict(
    image: Path = typer.Argument(..., help="Image file (JPEG, PNG, WebP, ...); EXIF orientation is applied."),
    server: str = typer.Option("localhost:8500", "--server", "-s", help="gRPC HOST:PORT of the model server."),
    model: str = typer.Option("deeplab", "--model", "-m", help="Model name."),
    version: int | None = typer.Option(None, "--version", help="Model version (default: latest available)."),
    label: str | None = typer.Option(None, "--label", help="Version label (e.g. stable, canary)."),
    signature: str = typer.Option("predict_images", "--signature", help="Signature name."),
    output: Path = typer.Option(Path("mask.png"), "--output", "-o", help="Overlay PNG to write."),
    alpha: float = typer.Option(0.5, "--alpha", help="Mask opacity over the image, 0..1."),
    use_async: bool = typer.Option(False, "--async", help="Send via the gRPC future API with a live progress line."),
    timeout: float = typer.Option(30.0, "--timeout", help="RPC deadline in seconds."),
    output_key: str = typer.Option("segmentation_map", "--output-key", help="Output tensor holding class ids."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON instead of a table."),
) -> None:
    """Segment IMAGE on a model server and write the VOC-palette overlay with a legend to --output."""
    quiet_tensorflow()
    import json

    from rich.table import Table

    from tfsctl.client.predict import predict_image
    from tfsctl.errors import ClientError

    try:
        if use_async and not as_json:
            with err_console.status(f"Predict on {server} ...") as spinner:
                result = predict_image(
                    image, server=server, model=model, version=version, label=label, signature=signature,
                    output=output, alpha=alpha, timeout=timeout, use_async=True, output_key=output_key,
                    on_wait=lambda s: spinner.update(f"Predict on {server}: waiting {s:.1f} s"),
                )
        else:
            result = predict_image(
                image, server=server, model=model, version=version, label=label, signature=signature,
                output=output, alpha=alpha, timeout=timeout, use_async=use_async, output_key=output_key,
            )
    except ClientError as e:
        fail(e.message)
    except KeyboardInterrupt:
        fail("cancelled", 130)
    if as_json:
        console.print_json(json.dumps(result.to_dict()))
        return
    served = f"{result.model} v{result.version}" if result.version is not None else result.model
    size = f"{result.image_size[1]}x{result.image_size[0]}"
    console.print(f"{escape(image.name)} ({size}) on {escape(served)}, {escape(result.signature)}")
    table = Table()
    table.add_column("id", justify="right")
    table.add_column("class")
    table.add_column("pixels", justify="right")
    table.add_column("share", justify="right")
    for s in result.shares:
        table.add_row(str(s.class_id), s.name, f"{s.pixels:,}", f"{s.share * 100:.1f}%")
    console.print(table)
    t = result.timings_ms
    console.print(
        f"latency: request round trip {result.rpc_ms:.1f} ms, total {result.total_ms:.1f} ms "
        f"(decode {t['decode']:.1f}, encode {t['encode']:.1f}, render {t['render']:.1f})"
    )
    console.print(f"wrote {escape(str(result.output))}")


# --- status / reload (ModelService client) ---
# owner: tfsctl/client/rpc.py


@app.command()
def status(
    server: str = typer.Option("localhost:8500", "--server", "-s", help="gRPC HOST:PORT of the model server."),
    model: str = typer.Option(..., "--model", "-m", help="Model name."),
    version: int | None = typer.Option(None, "--version", help="Only this version."),
    timeout: float = typer.Option(10.0, "--timeout", help="RPC deadline in seconds."),
) -> None:
    """Show GetModelStatus for a model: each version's state and error."""
    quiet_tensorflow()
    from rich.table import Table

    from tfsctl.client.rpc import get_model_status, parse_target
    from tfsctl.errors import ClientError

    try:
        target = parse_target(server)
        rows = get_model_status(target, model, version, timeout)
    except ClientError as e:
        fail(e.message)
    table = Table(title=f"model '{model}' on {target}")
    table.add_column("version", justify="right")
    table.add_column("state")
    table.add_column("error")
    for r in rows:
        colour = "green" if r.state == "AVAILABLE" else "yellow"
        error = "-" if r.error_code == "OK" and not r.error_message else f"{r.error_code}: {r.error_message}"
        table.add_row(str(r.version), f"[{colour}]{r.state}[/]", escape(error))
    console.print(table)


@app.command()
def reload(
    server: str = typer.Option("localhost:8500", "--server", "-s", help="gRPC HOST:PORT of the model server."),
    model_config_file: Path = typer.Option(..., "--model-config-file", help="ModelServerConfig text proto."),
    timeout: float = typer.Option(30.0, "--timeout", help="RPC deadline in seconds."),
) -> None:
    """Send a ModelServerConfig to the server (HandleReloadConfigRequest) and show the result."""
    quiet_tensorflow()
    from tfsctl.client.rpc import parse_target, reload_config
    from tfsctl.errors import ClientError

    try:
        target = parse_target(server)
        result = reload_config(target, model_config_file, timeout)
    except ClientError as e:
        fail(e.message)
    names = ", ".join(f"{name} ({path})" for name, path in result.models) or "no models"
    if not result.ok:
        fail(f"reload rejected by {target}: {result.error_code}: {result.error_message}")
    console.print(f"[green]reloaded[/] {target} with {len(result.models)} model(s): {escape(names)}")
    # A server answers once the new models loaded or its wait ran out: say which models serve nothing yet
    # (a mistyped base_path looks like success otherwise).
    from tfsctl.client.rpc import get_model_status

    for name, _path in result.models:
        try:
            rows = get_model_status(target, name, None, timeout)
        except ClientError as e:
            err_console.print(f"[yellow]warning:[/] model '{escape(name)}' has no version yet: {escape(e.message)}",
                              soft_wrap=True)
            continue
        available = [str(r.version) for r in rows if r.state == "AVAILABLE"]
        if available:
            console.print(f"  {escape(name)}: version(s) {', '.join(available)} AVAILABLE")
        else:
            states = ", ".join(f"{r.version} {r.state}" + (f" ({r.error_message})" if r.error_message else "")
                               for r in rows) or "the server reports no versions"
            err_console.print(f"[yellow]warning:[/] model '{escape(name)}' has no AVAILABLE version yet: "
                              f"{escape(states)}", soft_wrap=True)


# --- bench ---
# owner: tfsctl/client/bench.py


@app.command()
def bench(
    server: str | None = typer.Option(None, "--server", "-s", help="HOST:PORT (default localhost:8500 / :8501)."),
    protocol: str = typer.Option("grpc", "--protocol", help="grpc or rest."),
    model: str = typer.Option(..., "--model", "-m", help="Model name."),
    signature: str = typer.Option("", "--signature", help="Signature name (default serving_default)."),
    version: int | None = typer.Option(None, "--version", help="Model version."),
    label: str | None = typer.Option(None, "--label", help="Version label."),
    input_image: Path | None = typer.Option(None, "--input-image", help="Image sent as images/height/width."),
    input_shape: list[str] | None = typer.Option(
        None, "--input-shape", help="Random input NAME:D1xD2:DTYPE, e.g. x:1x4:float32 (repeatable). Without "
        "--input-image or --input-shape, inputs are shaped after the signature's metadata."
    ),
    batch_size: int = typer.Option(
        1, "--batch-size", help="Size of unknown first dims when inputs come from the model's metadata."
    ),
    concurrency: str = typer.Option("1,4,16,32", "--concurrency", "-c", help="Levels: 1,4,16,32 or 1:32."),
    warmup_seconds: float = typer.Option(2.0, "--warmup-seconds", help="Warm-up per level (not measured)."),
    measure_seconds: float = typer.Option(5.0, "--measure-seconds", help="Length of each measurement window."),
    windows: int = typer.Option(1, "--windows", help="Measurement windows per level."),
    max_requests: int | None = typer.Option(None, "--max-requests", help="Cap on requests per level."),
    timeout: float = typer.Option(10.0, "--timeout", help="Per-request deadline in seconds."),
    grpc_channels: str = typer.Option("shared", "--grpc-channels", help="shared or per-thread."),
    rest_format: str = typer.Option("inputs", "--rest-format", help="REST body: inputs (columnar) or instances."),
    output_filter: list[str] | None = typer.Option(
        None, "--output-filter", help="gRPC only: request just this output (repeatable)."
    ),
    json_out: Path | None = typer.Option(None, "--json", help="Write results as JSON."),
    csv_out: Path | None = typer.Option(None, "--csv", help="Write results as CSV."),
    plot_out: Path | None = typer.Option(None, "--plot", help="Write a PNG plot (throughput, latency)."),
) -> None:
    """Closed-loop load sweep over concurrency levels: throughput and p50/p90/p99 latency per level."""
    quiet_tensorflow()
    from rich.table import Table

    from tfsctl.client import bench as b
    from tfsctl.client.rpc import parse_target
    from tfsctl.errors import ClientError

    try:
        if protocol not in ("grpc", "rest"):
            raise ClientError(f"--protocol must be grpc or rest, got {protocol!r}")
        if input_image is not None and input_shape:
            raise ClientError("give either --input-image or --input-shape, not both")
        if version is not None and label is not None:
            raise ClientError("give either --version or --label, not both")
        target = parse_target(server or "localhost", 8500 if protocol == "grpc" else 8501)
        if input_image is not None:
            inputs = b.image_inputs(input_image)
        elif input_shape:
            inputs = b.synthetic_inputs(input_shape)
        else:  # like perf_analyzer: random data shaped after the signature's metadata
            inputs = b.inputs_from_metadata(
                target, model, protocol=protocol, signature=signature, version=version, label=label,
                batch=batch_size, timeout=timeout,
            )
        levels = b.parse_levels(concurrency)
        span = len(levels) * (warmup_seconds + windows * measure_seconds)
        console.print(
            f"bench {protocol}://{target} model '{model}': levels {levels}, about {span:.0f} s "
            f"({warmup_seconds:g} s warm-up + {windows} x {measure_seconds:g} s per level)"
        )

        def show(r: b.LevelResult) -> None:
            console.print(
                f"  c={r.concurrency}: {r.throughput:.1f} req/s, p50 {r.p50_ms:.2f} ms, p99 {r.p99_ms:.2f} ms, "
                f"{r.errors} errors"
            )

        results = b.run_sweep(
            target, levels, warmup_seconds, measure_seconds, inputs=inputs, model=model, protocol=protocol,
            signature=signature, version=version, label=label, windows=windows, timeout=timeout,
            grpc_channels=grpc_channels, rest_format=rest_format, max_requests=max_requests,
            output_filter=output_filter or (), on_level=show,
        )
        meta = {
            "target": target, "protocol": protocol, "model": model, "signature": signature, "version": version,
            "label": label, "warmup_s": warmup_seconds, "measure_s": measure_seconds, "windows": windows,
            "grpc_channels": grpc_channels if protocol == "grpc" else None,
            "rest_format": rest_format if protocol == "rest" else None,
            "output_filter": list(output_filter or ()),
            "inputs": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in inputs.items()},
        }
        written = []
        if json_out:
            written.append(b.write_json(json_out, results, meta))
        if csv_out:
            written.append(b.write_csv(csv_out, results))
        if plot_out:
            written.append(b.write_plot(plot_out, results, f"{model} over {protocol} ({target})"))
    except ClientError as e:
        fail(e.message)
    except KeyboardInterrupt:
        fail("interrupted", 130)
    table = Table(title=f"{model} over {protocol} ({target})")
    for col in ("concurrency", "req/s", "p50 ms", "p90 ms", "p99 ms", "requests", "errors", "stable"):
        table.add_column(col, justify="right")
    for r in results:
        kinds = ", ".join(f"{k}: {n}" for k, n in r.error_kinds.items())
        errs = f"{r.errors} ({kinds})" if kinds else str(r.errors)
        table.add_row(
            str(r.concurrency), f"{r.throughput:.1f}", f"{r.p50_ms:.2f}", f"{r.p90_ms:.2f}", f"{r.p99_ms:.2f}",
            str(r.requests), errs, "yes" if r.stable else "no",
        )
    console.print(table)
    for r in results:
        if r.requests == 0 and r.errors == 0:
            err_console.print(
                f"[yellow]warning:[/] c={r.concurrency}: no request completed inside the measurement window "
                f"({r.late_requests} finished later); use a longer --measure-seconds"
            )
    for path in written:
        console.print(f"wrote {path}")


def main() -> None:
    """Entry point for ``python -m tfsctl``."""
    app()
