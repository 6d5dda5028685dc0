"""The `vlbr` entry point: command discovery and how errors reach a user."""

import subprocess
import sys

import click
from click.testing import CliRunner

from vlbr import cli
from vlbr.errors import CpuidFormatError


def test_every_command_module_is_registered():
    from vlbr import commands
    import pkgutil

    modules = [m.name for m in pkgutil.iter_modules(commands.__path__) if not m.name.startswith("_")]
    registered = set(cli.group.commands)
    for name in modules:
        module = __import__(f"vlbr.commands.{name}", fromlist=["command"])
        assert module.command.name in registered, name


def test_vlbr_error_is_one_line_without_traceback(monkeypatch, capsys):
    @click.command("explode")
    def explode():
        raise CpuidFormatError("dump.txt", 7, "truncated register 'ebx'")

    monkeypatch.setitem(cli.group.commands, "explode", explode)
    monkeypatch.setattr(sys, "argv", ["vlbr", "explode"])
    try:
        cli.main()
    except SystemExit as done:
        assert done.code == 2
    err = capsys.readouterr().err
    assert err.strip() == "vlbr: error: dump.txt:7: truncated register 'ebx'"
    assert "Traceback" not in err


def test_help_lists_commands():
    result = CliRunner().invoke(cli.group, ["--help"])
    assert result.exit_code == 0
    assert "Arch LBR" in result.output or "Architectural LBR" in result.output


def test_console_script_runs():
    done = subprocess.run([sys.executable, "-m", "vlbr.cli", "--help"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
