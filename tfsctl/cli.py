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


# --- predict ---
# owner: tfsctl/client/predict.py


# --- bench ---
# owner: tfsctl/client/bench.py


def main() -> None:
    """Entry point for ``python -m tfsctl``."""
    app()
