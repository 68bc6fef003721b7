"""CLI errors as a user sees them in a real process: one line on stderr, exit code 1, no traceback, no TF chatter.

In-process CliRunner tests cannot see what TensorFlow's C++ runtime writes to file descriptor 2, nor rich's
wrapping at a non-terminal's 80 columns; these run the installed ``tfsctl`` in a subprocess.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tfsctl.testing import free_port

TFSCTL = [sys.executable, "-m", "tfsctl"]


def _run(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "COLUMNS": "80"}
    return subprocess.run(TFSCTL + args, capture_output=True, text=True, timeout=120, env=env)


def _cases(tmp: Path) -> dict[str, tuple[list[str], list[str]]]:
    # A long path holding "[/...]" and "[b]": rich would read them as markup (and raise on the closing tag).
    odd = tmp / ("a-rather-long-directory-name-so-the-message-passes-eighty-columns[" ) / "b]" / "[b]missing"
    bad_config = tmp / "models.config"
    bad_config.write_text('model_config_list { config { name: "m" base_path: "/x" \n')
    image = tmp / "image.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)  # PNG signature, no image: fails before any RPC
    return {
        "inspect missing path": (["inspect", str(odd)], [str(odd), "does not exist"]),
        "serve bad config": (["serve", "--port", "0", "--rest-api-port", "0", "--model-config-file", str(bad_config)],
                             [str(bad_config), "Expected"]),
        "status unreachable": (["status", "--server", f"127.0.0.1:{free_port()}", "--model", "m", "--timeout", "5"],
                               ["cannot reach server", "UNAVAILABLE"]),
        "predict bad image": (["predict", str(image), "--server", f"127.0.0.1:{free_port()}", "--model", "m"],
                              [str(image)]),
    }


@pytest.mark.parametrize("case", ["inspect missing path", "serve bad config", "status unreachable",
                                  "predict bad image"])
def test_cli_error_is_one_clear_line(tmp_path: Path, case: str) -> None:
    args, words = _cases(tmp_path)[case]
    res = _run(args)
    assert res.returncode == 1, (res.returncode, res.stderr)
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: "), res.stderr
    for word in words:
        assert word in lines[0], (word, res.stderr)


def test_reload_warns_about_a_model_without_versions(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from tfsctl.cli import app
    from tfsctl.serving.testing import served
    from tfsctl.testing import write_toy_model

    base = tmp_path / "toy"
    write_toy_model(base, 1)
    with served(ready_timeout=60, grace=1, model_name="toy", model_base_path=str(base),
                file_system_poll_wait_seconds=0.1) as server:
        typo = tmp_path / "tyop"
        cfg = tmp_path / "models.config"
        cfg.write_text("model_config_list {\n"
                       f'  config {{ name: "toy" base_path: "{base}" model_platform: "tensorflow" }}\n'
                       f'  config {{ name: "other" base_path: "{typo}" model_platform: "tensorflow" }}\n'
                       "}\n")
        res = CliRunner().invoke(app, ["reload", "--server", f"127.0.0.1:{server.grpc_port}",
                                       "--model-config-file", str(cfg), "--timeout", "3"])
        assert res.exit_code == 0, res.output
        assert "toy: version(s) 1 AVAILABLE" in res.stdout
        warning = " ".join(res.stderr.split())
        assert "model 'other' has no version yet" in warning and f"{typo} does not exist" in warning, warning
        assert "toy" not in warning


@pytest.mark.parametrize("command", [["status", "--model", "m"], ["reload", "--model-config-file", "unused.config"]])
def test_non_positive_timeout_is_refused_before_any_rpc(command: list[str]) -> None:
    from typer.testing import CliRunner

    from tfsctl.cli import app

    for value in ("0", "-1"):
        res = CliRunner().invoke(app, [*command, "--server", f"127.0.0.1:{free_port()}", "--timeout", value])
        assert res.exit_code == 1, res.output
        assert f"--timeout must be positive, got {value}" in res.stderr, res.stderr


def test_status_shows_load_errors_verbatim(tmp_path: Path) -> None:
    """Load errors quote paths; '[b]' in one must reach the table, not be taken for rich's bold markup."""
    from typer.testing import CliRunner

    from tfsctl.cli import app
    from tfsctl.serving.testing import served
    from tfsctl.testing import wait_until

    base = tmp_path / "m[b]"
    base.mkdir()  # no version yet: a start whose every model failed stops, as tensorflow_model_server
    with served(ready_timeout=None, grace=1, model_name="m", model_base_path=str(base),
                file_system_poll_wait_seconds=0.1, max_num_load_retries=0) as server:
        staged = tmp_path / "staged"
        staged.mkdir()
        (staged / "saved_model.pb").write_bytes(b"not a SavedModel")
        staged.rename(base / "2")  # a corrupt version arrives once the server runs
        wait_until(lambda: any(s.error for s in server.manager.version_states("m")), 60, "a load error of m",
                   every=0.05, explain=lambda: server.manager.version_states("m"))
        res = CliRunner().invoke(app, ["status", "--server", f"127.0.0.1:{server.grpc_port}", "--model", "m"],
                                 env={"COLUMNS": "400"})
        assert res.exit_code == 0, res.output
        row = next(line for line in res.stdout.splitlines() if "END" in line)
        assert f"{base}/2" in row, res.stdout


def test_error_with_line_breaks_prints_as_one_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from tfsctl.cli import app

    odd = tmp_path / "first\n\tsecond"  # stands for a server message with TF's "\n\t [[{{node ...}}]]" tail
    res = CliRunner().invoke(app, ["inspect", str(odd)])
    assert res.exit_code == 1, res.output
    assert res.stderr.splitlines() == [f"error: {tmp_path}/first second does not exist"], res.stderr


# --- one grammar across commands ---

COMMANDS = ["export", "inspect", "serve", "predict", "status", "reload", "bench"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_takes_h_and_reads_in_80_columns(command: str) -> None:
    from typer.testing import CliRunner

    from tfsctl.cli import app

    res = CliRunner().invoke(app, [command, "-h"], env={"COLUMNS": "80"})
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("Usage: ") and "-h, --help" in res.stdout
    assert "{" not in res.stdout.splitlines()[0] and not re.search(r"<[a-z_]+>", res.stdout), res.stdout  # SOURCE
    long = [line for line in res.stdout.splitlines() if len(line) > 80]
    assert not long, long


def test_plain_options_are_coerced_without_pydantic() -> None:
    """Typer coerces through a pydantic TypeAdapter per option (0.15 s of CPU at every start); str, int, float,
    Path and bool options (and lists of them) are coerced by their constructor instead, with click's messages."""
    code = ("import sys\nfrom tfsctl.cli import app\n"
            "try:\n    app(['bench', '-m', 'toy', '--timeout', '2.5', '--batch-size', 'x'], prog_name='tfsctl')\n"
            "except SystemExit as e:\n    print('exit', e.code, 'pydantic', 'pydantic' in sys.modules)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "COLUMNS": "80"})
    assert res.stdout.strip() == "exit 2 pydantic False", (res.stdout, res.stderr)
    assert "Invalid value for '--batch-size': 'x' is not a valid integer." in res.stderr, res.stderr


def test_shared_options_mean_the_same_everywhere() -> None:
    """--json is a switch; --server/-s, --model/-m (required), --timeout, --ssl-* and --output-key are shared."""
    import typer.main

    from tfsctl.cli import app

    group = typer.main.get_command(app)
    by_command = {name: {opt: p for p in cmd.params for opt in p.opts}
                  for name, cmd in group.commands.items()}  # type: ignore[attr-defined]
    for name in ("export", "inspect", "predict", "status", "reload", "bench"):
        assert by_command[name]["--json"].is_flag, name
    for name in ("predict", "status", "reload", "bench"):
        opts = by_command[name]
        for flag in ("--server", "-s", "--timeout", "--ssl-ca", "--ssl-cert", "--ssl-key"):
            assert flag in opts, (name, flag)
        assert opts["--server"].metavar == "TARGET" and opts["--timeout"].metavar == "SECONDS"
    for name in ("predict", "status", "bench"):
        assert by_command[name]["--model"].required and "-m" in by_command[name]
        assert "--label" in by_command[name] and "--version" in by_command[name]
    for name in ("predict", "bench"):
        assert "--output-key" in by_command[name] and "--signature" in by_command[name]
        assert by_command[name]["--signature"].default == ""
    assert "--output-filter" not in by_command["bench"] and "--json-out" in by_command["bench"]
