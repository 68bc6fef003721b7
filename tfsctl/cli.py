"""The ``tfsctl`` command line: parse flags, call a module, render with rich. No logic beyond that.

Heavy imports (tensorflow, grpc) happen inside each command so ``tfsctl --help`` stays fast.
Each command's body is owned by the module it calls; keep them thin.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import typer
import typer.core
from rich.console import Console
from rich.markup import escape

from tfsctl.model_layout import DEFAULT_SIGNATURE

if TYPE_CHECKING:
    from tfsctl.serving.server import ModelServer

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

class _PlainCoercion:
    """Value coercion for str/int/float/Path options (and lists of them) without pydantic.

    Typer 0.29 builds a pydantic TypeAdapter per parameter on first use, and importing pydantic costs about 0.3 s of
    CPU on every command start (half of a ``tfsctl predict``). These types need only their constructor; every other
    annotation keeps Typer's own coercion.
    """

    KINDS = {int: "integer", float: "float", str: "text", Path: "path", bool: "boolean"}
    _BOOLS = {"true": True, "1": True, "yes": True, "y": True, "on": True, "t": True,
              "false": False, "0": False, "no": False, "n": False, "off": False, "f": False}

    def __init__(self, kind: type) -> None:
        self.kind = kind

    def coerce(self, value, param, ctx):  # noqa: ANN001, ANN201 - typer's RuntimeParam.coerce
        multi = param.multiple or param.nargs == -1
        if value is None:
            return () if multi else None
        if multi:
            if isinstance(value, str):
                raise typer.BadParameter("Value must be an iterable.", ctx=ctx, param=param)
            return [self._one(v, param, ctx) for v in value]
        return self._one(value, param, ctx)

    def _one(self, value, param, ctx):  # noqa: ANN001, ANN202
        if self.kind is bool:
            if isinstance(value, bool):
                return value
            if str(value).strip().lower() in self._BOOLS:
                return self._BOOLS[str(value).strip().lower()]
            raise typer.BadParameter(f"{value!r} is not a valid boolean.", ctx=ctx, param=param)
        if isinstance(value, self.kind) and not isinstance(value, bool):
            return value
        try:
            return self.kind(value)
        except (TypeError, ValueError):
            raise typer.BadParameter(f"{value!r} is not a valid {self.KINDS[self.kind]}.", ctx=ctx,
                                     param=param) from None

    @classmethod
    def install(cls, param) -> None:  # noqa: ANN001
        """Give ``param`` this coercion when its annotation is a plain type (else leave Typer's): its public
        ``get_runtime_param`` (what Typer's ``process_value`` coerces through) answers with it. Idempotent."""
        desc = getattr(param, "type_descriptor", None)
        if desc is None or desc.file_annotation is not None:
            return
        info = desc.parameter_info
        if getattr(info, "min", None) is not None or getattr(info, "max", None) is not None:
            return
        kind = desc.annotation
        args = getattr(kind, "__args__", ())
        if getattr(kind, "__origin__", None) is list and len(args) == 1:
            kind = args[0]
        if kind in cls.KINDS:
            coercion = cls(kind)
            param.get_runtime_param = lambda: coercion


class _Grammar(typer.core.TyperGroup):
    """One help grammar for every command: classic metavars (SOURCE, PATH, INTEGER) where a command gives none.

    Typer would print ``{source}`` in usage lines and ``<list[str]>`` after options; explicit metavars win.
    Plain option types are coerced without pydantic (:class:`_PlainCoercion`).
    """

    def parse_args(self, ctx, args):  # noqa: ANN001, ANN201 - click's signature
        for param in self.get_params(ctx):  # with the help option
            _PlainCoercion.install(param)
        return super().parse_args(ctx, args)

    _CLASSIC = {"int": "INTEGER", "float": "FLOAT", "str": "TEXT", "path": "PATH", "bool": "BOOLEAN"}

    def get_command(self, ctx, cmd_name):  # noqa: ANN001, ANN201 - click's signature
        cmd = super().get_command(ctx, cmd_name)
        for param in cmd.get_params(ctx) if cmd is not None else ():
            _PlainCoercion.install(param)
        for param in getattr(cmd, "params", []):
            if param.param_type_name == "argument":
                name = param.metavar or (param.name or "").upper()
                param.metavar = name
                param.get_usage_pieces = lambda ctx, name=name: [name]  # "SOURCE", not typer's "{source}"
                param.display_type_rich = lambda ctx: None  # "SOURCE  help", not "SOURCE <path>  help"
            elif param.metavar is None and not getattr(param, "is_flag", False):
                shown = str(param.display_type(ctx) or "").strip("<>")
                shown = shown[5:-1] if shown.startswith("list[") else shown
                param.metavar = self._CLASSIC.get(shown, shown.upper() or "VALUE")
        return cmd


app = typer.Typer(
    cls=_Grammar,
    help="TensorFlow Serving's toolchain as one CLI: export, inspect, serve, predict, status, reload, bench.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
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
# owner: tfsctl/export/


def _quiet_tf_python_logs() -> None:
    """Keep TF's Python deprecation notices (the TF1 loader and Builder are what TF Serving itself uses) off the
    terminal, unless ``TF_CPP_MIN_LOG_LEVEL`` 0/1 asks for TensorFlow's logs."""
    import logging

    if os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2") not in ("0", "1"):
        logging.getLogger("tensorflow").setLevel(logging.ERROR)


def _parse_size(text: str) -> tuple[int, int]:
    """``WIDTHxHEIGHT`` (as image sizes are usually written, e.g. 320x240) -> (height, width)."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts) or min(int(p) for p in parts) < 1:
        raise typer.BadParameter(f"{text!r} is not WIDTHxHEIGHT with positive integers (e.g. 320x240)")
    return int(parts[1]), int(parts[0])


def _tag_set(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


@app.command()
def export(
    source: Path = typer.Argument(..., help="DeepLab checkpoint dir (model.json), TF1 checkpoint (prefix, dir or "
                                  ".meta), frozen graph (.pb/.pbtxt), TF2 checkpoint (with --model-factory), "
                                  ".keras/.h5 file, or a SavedModel dir."),
    out: Path = typer.Argument(..., help="Model base path (the next integer version is used) or BASE/VERSION."),
    force: bool = typer.Option(False, "--force", help="Replace an existing version (swapped in atomically)."),
    source_kind: str = typer.Option(None, "--source-kind", help="Force the source kind: deeplab, tf1-checkpoint, "
                                    "frozen-graph, tf2-checkpoint, keras, saved-model."),
    input_: list[str] = typer.Option(None, "--input", help="KEY=TENSOR signature input (graph sources); "
                                     "repeatable."),
    output: list[str] = typer.Option(None, "--output", help="KEY=TENSOR signature output (graph sources); "
                                     "repeatable."),
    signature: str = typer.Option(None, "--signature", help="Name of the signature --input/--output describe "
                                  f"(default {DEFAULT_SIGNATURE})."),
    method: str = typer.Option(None, "--method", help="predict (default), classify or regress."),
    signatures_file: Path = typer.Option(None, "--signatures", help="JSON file of several signatures "
                                         "(docs/EXPORT.md)."),
    replace_signatures: bool = typer.Option(False, "--replace-signatures", help="SavedModel source: drop its "
                                            "signatures, keep only the ones given."),
    tag_set: str = typer.Option(None, "--tag-set", help="Tags of the meta graph to write / re-export "
                                "(comma-separated; default serve)."),
    model_factory: str = typer.Option(None, "--model-factory", help="module:callable returning the built model "
                                      "a TF2 checkpoint restores into."),
    model_factory_path: Path = typer.Option(None, "--model-factory-path", help="Directory the factory module "
                                            "is imported from."),
    warmup_size: list[str] = typer.Option(
        None, "--warmup-size", help="WIDTHxHEIGHT of a predict_images warmup request (DeepLab); repeatable "
        "(default 256x256; 'none' for no warmup file)."),
    warmup_shape: list[str] = typer.Option(None, "--warmup-shape", help="KEY=1x224x224x3: shape of input KEY in "
                                           "the generated warmup requests; repeatable."),
    warmup_request: Path = typer.Option(None, "--warmup-request", help="File of TF Serving REST JSON bodies to "
                                        "record as warmup requests."),
    warmup_from: Path = typer.Option(None, "--warmup-from", help="A server's request log (a model config's "
                                     "logging_config: .tfrecord file, directory or prefix): its first 1000 logged "
                                     "requests become the warmup records."),
    no_warmup: bool = typer.Option(False, "--no-warmup", help="Write no warmup file."),
    max_image_pixels: int = typer.Option(
        2048 * 2048, "--max-image-pixels", help="Largest image (pixels) the DeepLab signatures accept."),
    to_tflite: bool = typer.Option(False, "--to-tflite", help="Also write model.tflite (TFLite builtin ops) into "
                                   "the version, served with --prefer_tflite_model."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Export a checkpoint, graph, Keras file or SavedModel as a versioned SavedModel a model server can load."""
    quiet_tensorflow(devices=True)
    _quiet_tf_python_logs()
    import json
    import time

    from rich.table import Table

    from tfsctl.errors import ExportError

    if warmup_size and any(s.lower() == "none" for s in warmup_size):
        sizes: list[tuple[int, int]] = []
    else:
        sizes = [_parse_size(s) for s in (warmup_size or ["256x256"])]
    kwargs = dict(force=force, warmup_sizes=sizes, max_image_pixels=max_image_pixels, source_kind=source_kind,
                  inputs=input_, outputs=output, signature=signature, method=method, signatures_file=signatures_file,
                  model_factory=model_factory, model_factory_path=model_factory_path, warmup_shapes=warmup_shape,
                  warmup_request=warmup_request, warmup=not no_warmup, tags=_tag_set(tag_set) or ["serve"],
                  replace_signatures=replace_signatures, to_tflite=to_tflite, warmup_from=warmup_from)
    started = time.perf_counter()
    try:
        from tfsctl.export import export_model

        if as_json:
            result = export_model(source, out, **kwargs)
        else:
            with err_console.status(f"Exporting {source} ..."):
                result = export_model(source, out, **kwargs)
    except ExportError as e:
        fail(str(e))
    except KeyboardInterrupt:
        fail("cancelled; nothing was written", 130)
    elapsed = time.perf_counter() - started
    if as_json:
        typer.echo(json.dumps({**result.to_dict(), "seconds": round(elapsed, 2)}))
        return
    from tfsctl.inspection import inspect_saved_model

    done = "replaced" if result.replaced else "exported"
    table = Table(title=f"{done} version {result.version}: {escape(str(result.path))}")
    table.add_column("signature")
    table.add_column("method", overflow="fold")
    table.add_column("inputs")
    table.add_column("outputs")
    info = inspect_saved_model(result.path)
    mg = info.meta_graph(set(_tag_set(tag_set) or ["serve"])) or info.meta_graphs[0]
    for sig in mg.signatures:
        if sig.name in result.signatures:
            table.add_row(sig.name, sig.method_name,
                          "\n".join(f"{t.key} {t.dtype} {t.shape_str}" for t in sig.inputs),
                          "\n".join(f"{t.key} {t.dtype} {t.shape_str}" for t in sig.outputs))
    console.print(table)
    for warning in result.warnings:
        err_console.print(f"[yellow]warning:[/] {escape(warning)}", soft_wrap=True)
    if result.tflite_signatures is not None:
        console.print(f"model.tflite signatures: {escape(', '.join(result.tflite_signatures))}")
    console.print(f"source {escape(str(result.source))} ({result.kind}); warmup records: {result.warmup_records}; "
                  f"{elapsed:.1f} s")


# --- inspect ---
# owner: tfsctl/inspection.py


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _variables_table(title: str, variables) -> None:  # noqa: ANN001 - list[VariableInfo]
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("variable", overflow="fold")
    table.add_column("dtype")
    table.add_column("shape", no_wrap=True)
    table.add_column("size", justify="right")
    for v in variables:
        table.add_row(escape(v.name), v.dtype, str(tuple(v.shape)), _size(v.size))
    console.print(table)


def _signature_table(sig) -> None:  # noqa: ANN001 - SignatureInfo
    from rich.table import Table

    table = Table(title=f"signature {sig.name!r} ({sig.method_name or 'no method'})", title_justify="left")
    table.add_column("")
    table.add_column("key")
    table.add_column("dtype")
    table.add_column("shape", no_wrap=True)
    table.add_column("tensor", overflow="fold")
    for role, tensors in (("input", sig.inputs), ("output", sig.outputs)):
        for t in tensors:
            name = t.name if t.encoding == "dense" else f"{t.name} ({t.encoding})"  # sparse/composite say so
            table.add_row(role, t.key, t.dtype, t.shape_str, name)
    console.print(table)


def _render_tflite(info) -> None:  # noqa: ANN001 - TfLiteInfo
    version = f" (version {info.version})" if info.version is not None else ""
    console.print(f"[bold]TFLite model[/] {escape(info.path)}{version}: {_size(info.size)}; signatures from "
                  f"{escape(info.signature_source)}")
    if info.signature_runners:
        console.print(f"LiteRT signatures (served by name with --tflite_signature_runners): "
                      f"{escape(', '.join(info.signature_runners))}")
    if info.warmup_records is not None:
        console.print(f"warmup records: {info.warmup_records}")
    for sig in info.signatures:
        _signature_table(sig)


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
            _signature_table(sig)
    console.print(f"variables: {len(info.variables)} ({_size(info.variables_bytes)} on disk)")
    if info.variables and len(info.variables) <= 50:
        _variables_table("variables", info.variables)
    if info.assets:
        console.print("assets: " + ", ".join(f"{escape(a.path)} ({_size(a.size)})" for a in info.assets))
    if info.tflite is not None:
        _render_tflite(info.tflite)


def _render_graph(info) -> None:  # noqa: ANN001 - GraphInfo
    from rich.table import Table

    console.print(f"[bold]{'meta graph' if info.kind == 'meta_graph' else 'GraphDef'}[/] {escape(info.path)}: "
                  f"{info.num_nodes} nodes")
    for title, tensors in (("candidate inputs (placeholders)", info.inputs),
                           ("candidate outputs (ops nothing consumes)", info.outputs)):
        table = Table(title=title, title_justify="left")
        table.add_column("tensor", overflow="fold")
        table.add_column("dtype")
        table.add_column("shape", no_wrap=True)
        for t in tensors:
            table.add_row(escape(t.name), t.dtype, t.shape_str)
        console.print(table)
    if info.variables:
        console.print(f"variables: {len(info.variables)}")
    for sig in info.signatures:
        console.print(f"stored signature {sig.name!r} ({sig.method_name}): "
                      + ", ".join(f"{t.key}={t.name}" for t in sig.inputs) + " -> "
                      + ", ".join(f"{t.key}={t.name}" for t in sig.outputs))


@app.command()
def inspect(
    path: Path = typer.Argument(..., help="A SavedModel, a model base path, a checkpoint, a graph "
                                "(.pb/.pbtxt/.meta), a TFLite model (.tflite or a version dir with one), or a "
                                "request log (.tfrecord, a directory or a logging_config filename_prefix)."),
    tag_set: str = typer.Option(None, "--tag-set", help="Only the meta graph with these tags (comma-separated)."),
    signature: str = typer.Option(None, "--signature", help="Only this signature."),
    as_json: bool = typer.Option(False, "--json", help="Print everything as JSON."),
) -> None:
    """Show what a model holds: signatures of a SavedModel or TFLite model, variables of a checkpoint, tensors of a
    graph."""
    quiet_tensorflow()
    import json

    from rich.table import Table

    from tfsctl.errors import InspectError
    from tfsctl.inspection import BasePathInfo, CheckpointInfo, GraphInfo, RequestLogInfo, TfLiteInfo, inspect_path

    try:
        tags = _tag_set(tag_set)
        info = inspect_path(path, tag_set=set(tags) if tags else None, signature=signature)
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
        if isinstance(info.latest, TfLiteInfo):
            _render_tflite(info.latest)
        else:
            _render_saved_model(info.latest)
    elif isinstance(info, CheckpointInfo):
        meta = "with" if info.has_meta_graph else "without"
        _variables_table(f"checkpoint {escape(info.prefix)} ({meta} a .meta graph): {len(info.variables)} "
                         f"variables, {_size(info.total_bytes)}", info.variables)
    elif isinstance(info, GraphInfo):
        _render_graph(info)
    elif isinstance(info, TfLiteInfo):
        _render_tflite(info)
    elif isinstance(info, RequestLogInfo):
        _render_request_log(info)
    else:
        _render_saved_model(info)


def _render_request_log(info) -> None:  # noqa: ANN001 - RequestLogInfo
    from rich.table import Table

    span = f", {info.first} .. {info.last}" if info.first else ""
    table = Table(title=f"request log {escape(info.path)}: {info.records} records in {info.files} file(s), "
                        f"{_size(info.bytes)}{span}")
    for col in ("model", "records", "versions", "signatures", "APIs", "request bytes min/mean/max"):
        table.add_column(col)

    def counts(d: dict) -> str:
        return ", ".join(f"{k}: {n}" for k, n in sorted(d.items()))

    for name, m in sorted(info.models.items()):
        sizes = m["request_bytes"]
        mean = sizes["total"] // max(1, m["records"])
        table.add_row(escape(name), str(m["records"]), counts(m["versions"]), escape(counts(m["signatures"])),
                      counts(m["apis"]), f"{sizes['min']}/{mean}/{sizes['max']}")
    console.print(table)


# --- run ---
# owner: tfsctl/run.py


@app.command()
def run(
    path: Path = typer.Argument(..., help="A SavedModel directory."),
    signature: str = typer.Option(DEFAULT_SIGNATURE, "--signature", help="Signature to run."),
    input_: list[str] = typer.Option(None, "--input", help="KEY=VALUE: file.npy, file.npz[key], @image.png or a "
                                     "JSON literal; repeatable."),
    input_examples: list[str] = typer.Option(None, "--input-examples", help='KEY=[{"feature": [values]}, ...]: '
                                             "serialized tf.Examples for KEY; repeatable."),
    tag_set: str = typer.Option("serve", "--tag-set", help="Tags of the meta graph to load (comma-separated)."),
    output_dir: Path = typer.Option(None, "--output-dir", help="Write each output as KEY.npy here."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing .npy files in --output-dir."),
    as_json: bool = typer.Option(False, "--json", help="Print the outputs as JSON."),
) -> None:
    """Run one signature of a SavedModel on given inputs (like saved_model_cli run)."""
    quiet_tensorflow(devices=True)
    _quiet_tf_python_logs()
    import json

    import numpy as np
    from rich.table import Table

    from tfsctl.errors import RunError
    from tfsctl.run import parse_inputs, run_signature

    try:
        result = run_signature(path, signature, parse_inputs(input_ or []), tags=set(_tag_set(tag_set) or []),
                               output_dir=output_dir, overwrite=overwrite,
                               examples=parse_inputs(input_examples or [], "--input-examples"))
    except RunError as e:
        fail(str(e))
    if as_json:
        typer.echo(json.dumps(result.to_dict()))
        return
    table = Table(title=f"{escape(result.path)} signature {result.signature!r}")
    table.add_column("output")
    table.add_column("dtype")
    table.add_column("shape", no_wrap=True)
    table.add_column("value", overflow="fold")
    for key, value in result.outputs.items():
        with np.printoptions(threshold=20, edgeitems=3, precision=6):
            table.add_row(key, str(value.dtype), str(tuple(value.shape)), escape(str(value)))
    console.print(table)
    for written in result.written:
        console.print(f"wrote {escape(written)}")


# --- serve / status / reload ---
# owner: tfsctl/serving/server.py


@app.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []},
    add_help_option=False,
)
def serve(ctx: typer.Context) -> None:
    """Serve SavedModels over TF Serving's gRPC and REST APIs (tensorflow_model_server's flags; see --help)."""
    from tfsctl.serving.flags import FlagError, help_text, parse_args

    try:
        parsed = parse_args(list(ctx.args))
    except FlagError as e:
        fail(str(e), code=2)
    if parsed.help:
        typer.echo(help_text())
        raise typer.Exit(0)
    if parsed.version:
        from importlib import metadata

        from tfsctl import __version__

        try:  # the installed distribution's version: importing TensorFlow just to print it would take seconds
            tf_version = metadata.version("tensorflow")
        except metadata.PackageNotFoundError:
            tf_version = "not installed"
        # tensorflow_model_server's two lines: its own version, then TensorFlow's
        typer.echo(f"TensorFlow ModelServer: tfsctl-{__version__}\nTensorFlow Library: {tf_version}")
        raise typer.Exit(0)

    from tfsctl.errors import ConfigError, ServingError
    from tfsctl.serving.options import ServerOptions  # no TensorFlow: flag mistakes are reported first

    options = ServerOptions(**parsed.values)
    try:
        options.validate()  # flag mistakes before TensorFlow loads: usage errors, exit code 2
    except FlagError as e:
        fail(str(e), code=2)
    except ConfigError as e:
        fail(str(e))
    if options.workers == 1:  # with --workers the supervisor never runs a model: each worker imports TensorFlow
        quiet_tensorflow(devices=True)
    import logging
    import sys

    from rich.panel import Panel

    from tfsctl.serving.logs import configure_logging

    configure_logging(options.log_format)  # --log_format=json: every log line a JSON object

    def banner(server: ModelServer) -> None:
        models = ", ".join(server.manager.model_names()) or "none"
        rest = f"{options.host}:{server.rest_port}" if server.rest_port else "off"
        grpc_at = f"{options.host}:{server.grpc_port}" if server.grpc_port else "off"
        if options.grpc_socket_path:
            grpc_at += f" + unix:{options.grpc_socket_path}"
        console.print(Panel.fit(
            f"[bold]gRPC[/] {escape(grpc_at)}{' (TLS)' if options.ssl_config_file else ''}   [bold]REST[/] {rest}\n"
            f"[bold]models[/] {escape(models)}   [bold]batching[/] {'on' if server.batcher is not None else 'off'}\n"
            "SIGTERM / Ctrl-C stops gracefully", title="tfsctl serve", border_style="green"))

    try:
        # The process exits right after: leaving gRPC's listener to the exit means a call arriving at the very end
        # sees its connection close (UNAVAILABLE) rather than gRPC's shutdown cancelling it (CANCELLED).
        if options.workers > 1:
            from tfsctl.serving.supervisor import serve_workers

            code = serve_workers(options, options.workers, on_started=lambda sup: console.print(
                f"tfsctl serve: {options.workers} workers on gRPC {options.host}:{sup.grpc_port}, REST "
                f"{f'{options.host}:{sup.rest_port}' if sup.rest_port else 'off'} (pids {sup.pids})"))
        else:
            from tfsctl.serving.server import ModelServer  # loads TensorFlow (after quiet_tensorflow above)

            code = ModelServer(options).serve_forever(on_started=banner, close_grpc=False)
    except FlagError as e:
        fail(str(e), code=2)
    except (ConfigError, OSError, ServingError) as e:  # ServingError: an initial model did not become available
        fail(str(e))
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # no interpreter teardown: it would shut the gRPC server down after all


# --- client commands: predict, status, reload, bench ---
# owner: tfsctl/client/. One grammar: --server/-s TARGET, --ssl-ca/--ssl-cert/--ssl-key, --timeout SECONDS,
# --model/-m (required), --version or --label, --signature ('' = serving_default unless the model has another
# single signature), --output-key, --json (print JSON on stdout); files written are named by *-out or --output.
# These commands never import the TensorFlow runtime (tfsctl.client.apis loads the protos without it).

_TARGET_HELP = "gRPC target: HOST:PORT, dns:///HOST:PORT, unix:PATH, ipv4:A:P,B:P."


def _server_opt(default: str | None = "localhost:8500", help: str = _TARGET_HELP):  # noqa: A002
    return typer.Option(default, "--server", "-s", metavar="TARGET", help=help)


def _model_opt():
    return typer.Option(..., "--model", "-m", metavar="NAME", help="Model name.")


def _version_opt(help: str = "Model version (default: the latest).") -> typer.models.OptionInfo:  # noqa: A002
    return typer.Option(None, "--version", metavar="N", help=help)


def _label_opt():
    return typer.Option(None, "--label", metavar="LABEL", help="Version label (e.g. stable, canary).")


def _timeout_opt(default: float = 30.0, help: str = "RPC deadline in seconds."):  # noqa: A002
    return typer.Option(default, "--timeout", metavar="SECONDS", help=help)


def _ssl_opts():
    return (
        typer.Option(None, "--ssl-ca", metavar="FILE", help="PEM CA that signed the server (turns TLS on)."),
        typer.Option(None, "--ssl-cert", metavar="FILE", help="PEM client certificate (mutual TLS)."),
        typer.Option(None, "--ssl-key", metavar="FILE", help="PEM key of --ssl-cert."),
    )


_SSL_CA, _SSL_CERT, _SSL_KEY = _ssl_opts()


def _json_opt():
    return typer.Option(False, "--json", help="Print the result as JSON on stdout.")


def _protocol_opt():
    return typer.Option("v1", "--protocol", metavar="v1|v2",
                        help="v1: TF Serving's API; v2: the Open Inference Protocol (KServe v2) over gRPC.")


def _signature_opt():
    return typer.Option("", "--signature", metavar="NAME",
                        help=f"Signature (default: {DEFAULT_SIGNATURE}, or the model's only one).")


@app.command()
def predict(
    image: Path = typer.Argument(..., metavar="IMAGE", help="JPEG, PNG, WebP, ... (EXIF orientation applied)."),
    server: str = _server_opt(),
    model: str = _model_opt(),
    version: int | None = _version_opt(),
    label: str | None = _label_opt(),
    signature: str = _signature_opt(),
    output: Path = typer.Option(Path("mask.png"), "--output", "-o", metavar="FILE", help="PNG picture to write."),
    overlay_only: bool = typer.Option(False, "--overlay-only", help="Only the overlay panel (no image, no mask)."),
    save_labels: Path | None = typer.Option(
        None, "--save-labels", metavar="FILE", help="Also write the class map as a palette PNG (values = ids)."),
    labels: Path | None = typer.Option(
        None, "--labels", metavar="FILE", help="Class names, one per line (line i = id i); default VOC."),
    alpha: float = typer.Option(0.5, "--alpha", metavar="0..1", help="Mask opacity in the overlay."),
    max_side: int = typer.Option(
        513, "--max-side", metavar="PX", help="Scale larger images down to this before sending (0 = never)."),
    input_key: str | None = typer.Option(
        None, "--input-key", metavar="KEY", help="Image input (default: the 4-D [N,H,W,3] input)."),
    output_key: str | None = typer.Option(
        None, "--output-key", metavar="KEY", help="Output to read (default: the class map or scores)."),
    scale: str = typer.Option("0-255", "--scale", metavar="RANGE", help="Float pixel range: 0-255, 0-1, -1-1."),
    top_k: int = typer.Option(5, "--top-k", metavar="K", help="Rows shown for a classification."),
    timeout: float = _timeout_opt(),
    use_async: bool = typer.Option(False, "--async", help="Send with the gRPC future API, live progress."),
    protocol: str = _protocol_opt(),
    ssl_ca: Path | None = _SSL_CA,
    ssl_cert: Path | None = _SSL_CERT,
    ssl_key: Path | None = _SSL_KEY,
    as_json: bool = _json_opt(),
) -> None:
    """Send IMAGE to an image model; draw the segmentation or list the top classes."""
    import json

    from rich.table import Table

    from tfsctl.client.predict import predict_image
    from tfsctl.client.rpc import endpoint
    from tfsctl.errors import ClientError

    def run(on_wait=None):  # noqa: ANN001, ANN202
        return predict_image(
            image, server=ep, model=model, version=version, label=label, signature=signature, output=output,
            alpha=alpha, timeout=timeout, use_async=use_async, input_key=input_key, output_key=output_key,
            scale=scale, max_side=max_side, labels=labels, save_labels=save_labels, overlay_only=overlay_only,
            k=top_k, on_wait=on_wait, protocol=protocol,
        )

    try:
        ep = endpoint(server, ssl_ca=ssl_ca, ssl_cert=ssl_cert, ssl_key=ssl_key)
        if use_async and not as_json:
            with err_console.status(f"Predict on {ep} ...") as spinner:
                result = run(lambda s: spinner.update(f"Predict on {ep}: waiting {s:.1f} s"))
        else:
            result = run()
    except ClientError as e:
        fail(e.message)
    except KeyboardInterrupt:
        fail("cancelled", 130)
    if as_json:
        typer.echo(json.dumps(result.to_dict()))
        return
    served = f"{result.model} v{result.version}" if result.version is not None else result.model
    size = f"{result.image_size[1]}x{result.image_size[0]}"
    if result.sent_size != result.image_size:
        size += f", sent as {result.sent_size[1]}x{result.sent_size[0]}"
    console.print(f"{escape(image.name)} ({size}) on {escape(served)}, {escape(result.signature)}", soft_wrap=True)
    table = Table()
    if result.kind == "segmentation":
        for col, just in (("id", "right"), ("class", "left"), ("pixels", "right"), ("share", "right")):
            table.add_column(col, justify=just)  # type: ignore[arg-type]
        for s in result.shares:
            table.add_row(str(s.class_id), escape(s.name), f"{s.pixels:,}", f"{s.share * 100:.1f}%")
    else:
        for col, just in (("#", "right"), ("id", "right"), ("class", "left"), ("score", "right")):
            table.add_column(col, justify=just)  # type: ignore[arg-type]
        for t in result.top:
            table.add_row(str(t.rank), "-" if t.class_id is None else str(t.class_id), escape(t.name),
                          f"{t.score:.4f}")
    console.print(table)
    t = result.timings_ms
    console.print(
        f"latency: request round trip {result.rpc_ms:.1f} ms, total {result.total_ms:.1f} ms "
        f"(decode {t['decode']:.1f}, metadata {t['metadata']:.1f}, encode {t['encode']:.1f}, "
        f"render {t['render']:.1f})"
    )
    for path in (result.output, result.labels_output):
        if path is not None:
            console.print(f"wrote {escape(str(path))}", soft_wrap=True)


@app.command()
def status(
    server: str = _server_opt(),
    model: str = _model_opt(),
    version: int | None = _version_opt("Only this version."),
    label: str | None = typer.Option(None, "--label", metavar="LABEL", help="Only the version of this label."),
    timeout: float = _timeout_opt(),
    protocol: str = _protocol_opt(),
    ssl_ca: Path | None = _SSL_CA,
    ssl_cert: Path | None = _SSL_CERT,
    ssl_key: Path | None = _SSL_KEY,
    as_json: bool = _json_opt(),
) -> None:
    """Show GetModelStatus for a model: each version's state and error (v2: each version's readiness)."""
    import json

    from rich.table import Table

    from tfsctl.client import v2
    from tfsctl.client.rpc import endpoint, get_model_status
    from tfsctl.errors import ClientError

    try:
        v2.check_protocol(protocol, label=label)
        ep = endpoint(server, ssl_ca=ssl_ca, ssl_cert=ssl_cert, ssl_key=ssl_key)
        if protocol == "v2":
            rows = v2.model_status(ep, model, version, timeout)
        else:
            rows = get_model_status(ep, model, version, timeout, label=label)
    except ClientError as e:
        fail(e.message)
    if as_json:
        typer.echo(json.dumps({"model": model, "versions": [r.to_dict() for r in rows]}))
        return
    table = Table(title=escape(f"model '{model}' on {ep}"))
    table.add_column("version", justify="right")
    table.add_column("state")
    table.add_column("error")
    for r in rows:
        colour = "green" if r.state in ("AVAILABLE", "READY") else "yellow"
        error = "-" if r.error_code == "OK" and not r.error_message else f"{r.error_code}: {r.error_message}"
        table.add_row(str(r.version), f"[{colour}]{r.state}[/]", escape(error))
    console.print(table)


@app.command()
def reload(
    server: str = _server_opt(),
    model_config_file: Path = typer.Option(
        ..., "--model-config-file", metavar="FILE", help="ModelServerConfig text proto."),
    timeout: float = _timeout_opt(),
    ssl_ca: Path | None = _SSL_CA,
    ssl_cert: Path | None = _SSL_CERT,
    ssl_key: Path | None = _SSL_KEY,
    as_json: bool = _json_opt(),
) -> None:
    """Send a ModelServerConfig to the server (HandleReloadConfigRequest)."""
    import json

    from tfsctl.client.rpc import endpoint, get_model_status, reload_config
    from tfsctl.errors import ClientError

    try:
        ep = endpoint(server, ssl_ca=ssl_ca, ssl_cert=ssl_cert, ssl_key=ssl_key)
        result = reload_config(ep, model_config_file, timeout)
    except ClientError as e:
        fail(e.message)
    names = ", ".join(f"{name} ({path})" for name, path in result.models) or "no models"
    if not result.ok:
        fail(f"reload rejected by {ep}: {result.error_code}: {result.error_message}")
    if not as_json:
        console.print(f"[green]reloaded[/] {escape(str(ep))} with {len(result.models)} model(s): {escape(names)}")
    # A server answers once the new models loaded or its wait ran out: say which models serve nothing yet
    # (a mistyped base_path looks like success otherwise).
    report = {**result.to_dict(), "available": {}}
    for name, _path in result.models:
        try:
            rows = get_model_status(ep, name, None, timeout)
        except ClientError as e:
            err_console.print(f"[yellow]warning:[/] model '{escape(name)}' has no version yet: {escape(e.message)}",
                              soft_wrap=True)
            report["available"][name] = []
            continue
        available = [r.version for r in rows if r.state == "AVAILABLE"]
        report["available"][name] = available
        if available:
            if not as_json:
                console.print(f"  {escape(name)}: version(s) {', '.join(map(str, available))} AVAILABLE")
        else:
            states = ", ".join(f"{r.version} {r.state}" + (f" ({r.error_message})" if r.error_message else "")
                               for r in rows) or "the server reports no versions"
            err_console.print(f"[yellow]warning:[/] model '{escape(name)}' has no AVAILABLE version yet: "
                              f"{escape(states)}", soft_wrap=True)
    if as_json:
        typer.echo(json.dumps(report))


@app.command()
def bench(
    server: str | None = _server_opt(None, "Target (default localhost:8500; REST: localhost:8501)."),
    protocol: str = typer.Option(
        "grpc", "--protocol", metavar="PROTO",
        help="grpc or rest (TF Serving's API, v1), v2-grpc or v2-rest (the Open Inference Protocol); v1 and v2 "
        "alone mean gRPC."),
    model: str = _model_opt(),
    signature: str = _signature_opt(),
    version: int | None = _version_opt(),
    label: str | None = _label_opt(),
    input_image: Path | None = typer.Option(
        None, "--input-image", metavar="FILE", help="Send this image, prepared as tfsctl predict does."),
    input_shape: list[str] | None = typer.Option(
        None, "--input-shape", metavar="SPEC",
        help="Random input NAME:D1xD2:DTYPE, e.g. x:1x4:float32 (repeatable). Default: random inputs shaped "
        "after the signature's metadata."),
    batch_size: int = typer.Option(1, "--batch-size", metavar="N", help="Unknown first dims (metadata inputs)."),
    max_side: int = typer.Option(513, "--max-side", metavar="PX", help="As predict's, for --input-image."),
    concurrency: str = typer.Option("1,4,16,32", "--concurrency", "-c", metavar="LEVELS",
                                    help="Levels: 1,4,16,32 or 1:32."),
    warmup_seconds: float = typer.Option(2.0, "--warmup-seconds", metavar="SECONDS", help="Warm-up per level."),
    measure_seconds: float = typer.Option(5.0, "--measure-seconds", metavar="SECONDS", help="Measurement window."),
    windows: int = typer.Option(1, "--windows", metavar="N", help="Measurement windows per level."),
    max_requests: int | None = typer.Option(None, "--max-requests", metavar="N", help="Cap on requests per level."),
    timeout: float = _timeout_opt(30.0, "Per-request deadline in seconds."),
    grpc_channels: str = typer.Option("shared", "--grpc-channels", metavar="MODE", help="shared or per-thread."),
    rest_format: str = typer.Option("inputs", "--rest-format", metavar="FMT", help="REST body: inputs or instances."),
    output_key: list[str] | None = typer.Option(
        None, "--output-key", metavar="KEY", help="gRPC: ask only for this output (repeatable)."),
    ssl_ca: Path | None = _SSL_CA,
    ssl_cert: Path | None = _SSL_CERT,
    ssl_key: Path | None = _SSL_KEY,
    as_json: bool = _json_opt(),
    json_out: Path | None = typer.Option(None, "--json-out", metavar="FILE", help="Write results as JSON."),
    csv_out: Path | None = typer.Option(None, "--csv-out", metavar="FILE", help="Write results as CSV."),
    plot_out: Path | None = typer.Option(None, "--plot-out", metavar="FILE", help="Write a PNG plot."),
    compare: str | None = typer.Option(
        None, "--compare", metavar="PROTO",
        help="Then sweep this protocol too, on the same port (grpc with v2-grpc, rest with v2-rest), same inputs, "
        "and print the two side by side."),
    requests_from: Path | None = typer.Option(
        None, "--requests-from", metavar="LOG", help="Replay a server's request log (a model config's "
        "logging_config: .tfrecord file, directory or prefix) instead of synthetic inputs: the real traffic mix "
        "of --model, each record with its own signature and API."),
) -> None:
    """Closed-loop load sweep: throughput and p50/p90/p99 latency per concurrency level."""
    import json

    from rich.table import Table

    from tfsctl.client import bench as b
    from tfsctl.client.rpc import check_version_or_label, endpoint
    from tfsctl.errors import ClientError

    say = err_console if as_json else console  # with --json, stdout carries only the JSON document
    try:
        protocol = b.wire_protocol(protocol)
        if protocol.startswith("v2-"):
            from tfsctl.client.v2 import check_protocol

            check_protocol("v2", signature=signature, label=label)
        if input_image is not None and input_shape:
            raise ClientError("give either --input-image or --input-shape, not both")
        check_version_or_label(version, label)
        if batch_size < 1:
            raise ClientError(f"--batch-size must be >= 1, got {batch_size}")
        rest = protocol in ("rest", "v2-rest")
        if rest and (ssl_ca or ssl_cert or ssl_key):
            raise ClientError("--ssl-* apply to gRPC only; bench's REST client speaks plain HTTP")
        ep = endpoint(server or "localhost", ssl_ca=ssl_ca, ssl_cert=ssl_cert, ssl_key=ssl_key,
                      default_port=8501 if rest else 8500)
        replay = None
        if requests_from is not None:
            if input_image is not None or input_shape:
                raise ClientError("--requests-from replays logged requests: no --input-image or --input-shape")
            from tfsctl.client.replay import load_requests

            replay = [r for r in load_requests(str(requests_from)) if r.model == model]
            if not replay:
                raise ClientError(f"--requests-from {requests_from}: no logged request of model '{model}'")
            inputs = {}
        elif input_shape:
            inputs = b.synthetic_inputs(input_shape)
        else:
            sigs = b.signature_defs(ep, model, protocol=protocol, version=version, label=label, timeout=timeout)
            if input_image is not None:
                inputs = b.image_inputs(input_image, sigs, signature=signature, model=model, max_side=max_side)
            else:  # like perf_analyzer: random data shaped after the signature's metadata
                inputs = b.inputs_from_signature(sigs, signature, model, batch=batch_size)
        levels = b.parse_levels(concurrency)
        span = len(levels) * (warmup_seconds + windows * measure_seconds)
        what = f"{len(replay)} logged requests of model '{model}'" if replay else f"model '{model}'"
        say.print(
            f"bench {protocol}://{escape(str(ep))} {escape(what)}: levels {levels}, about {span:.0f} s "
            f"({warmup_seconds:g} s warm-up + {windows} x {measure_seconds:g} s per level)", soft_wrap=True,
        )

        def show(r: b.LevelResult) -> None:
            say.print(
                f"  c={r.concurrency}: {r.throughput:.1f} req/s, p50 {r.p50_ms:.2f} ms, p99 {r.p99_ms:.2f} ms, "
                f"{r.errors} errors"
            )

        other = b.compared_protocol(protocol, compare) if compare else None
        results = b.run_sweep(
            ep, levels, warmup_seconds, measure_seconds, inputs=inputs, model=model, protocol=protocol,
            signature=signature, version=version, label=label, windows=windows, timeout=timeout,
            grpc_channels=grpc_channels, rest_format=rest_format, max_requests=max_requests,
            output_filter=output_key or (), on_level=show, replay=replay,
        )
        compared = None
        if other is not None:
            say.print(f"bench {other}://{escape(str(ep))} model '{escape(model)}' (--compare)", soft_wrap=True)
            compared = b.run_sweep(
                ep, levels, warmup_seconds, measure_seconds, inputs=inputs, model=model, protocol=other,
                signature=signature, version=version, label=label, windows=windows, timeout=timeout,
                grpc_channels=grpc_channels, rest_format=rest_format, max_requests=max_requests,
                output_filter=output_key or (), on_level=show,
            )
        meta = {
            "target": str(ep), "protocol": protocol, "model": model, "signature": signature, "version": version,
            "label": label, "warmup_s": warmup_seconds, "measure_s": measure_seconds, "windows": windows,
            "grpc_channels": grpc_channels if not rest else None,
            "rest_format": rest_format if protocol == "rest" else None,
            "output_key": list(output_key or ()),
            "inputs": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in inputs.items()},
            "requests_from": str(requests_from) if requests_from is not None else None,
            "replayed_records": len(replay) if replay else None,
        }
        written = []
        if json_out:
            written.append(b.write_json(json_out, results, meta))
        if csv_out:
            written.append(b.write_csv(csv_out, results))
        if plot_out:
            written.append(b.write_plot(plot_out, results, f"{model} over {protocol} ({ep})"))
    except ClientError as e:
        fail(e.message)
    except KeyboardInterrupt:
        fail("interrupted", 130)
    if as_json:
        document = b.report_document(results, meta)
        if compared is not None:
            document["compare"] = {**b.report_document(compared, {**meta, "protocol": other}),
                                   "ratios": b.compare_levels(results, compared)}
        typer.echo(json.dumps(document))
    else:
        if compared is not None:
            ratios = Table(title=escape(f"{model}: {other} / {protocol} ({ep})"))
            for col in ("concurrency", f"{other} req/s", f"{protocol} req/s", "req/s ratio", "p50 ratio"):
                ratios.add_column(col, justify="right")
            for row in b.compare_levels(results, compared):
                ratios.add_row(str(row["concurrency"]), f"{row['compared_rps']:.1f}", f"{row['rps']:.1f}",
                               *("-" if row[k] is None else f"{row[k]:.3f}" for k in ("throughput_ratio", "p50_ratio")))
            console.print(ratios)
        table = Table(title=escape(f"{model} over {protocol} ({ep})"))
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
        say.print(f"wrote {escape(str(path))}", soft_wrap=True)


def main() -> None:
    """Entry point for ``python -m tfsctl``."""
    app()
