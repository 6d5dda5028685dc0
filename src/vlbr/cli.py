"""The `vlbr` command line: a click group that gathers every module in vlbr.commands."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import click

from vlbr import commands
from vlbr.errors import VlbrError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vlbr")
def group() -> None:
    """Virtualized Intel Architectural LBR: CPUID, KVM policy, vCPU model, guests."""


def _register() -> None:
    # Each command module exposes `command`; discovery keeps this file free of edits per feature.
    # Modules named _x are helpers shared by commands, not commands.
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"vlbr.commands.{info.name}")
        group.add_command(module.command)


_register()


def error_line(problem: str) -> str:
    """The one line every usage and input error ends with."""
    return f"vlbr: error: {problem}"


def _fail(problem: str) -> None:
    click.echo(error_line(problem), err=True)
    sys.exit(2)


def main() -> None:
    """Exit status: 0 success, 1 a check failed, 2 bad input or usage, 130 interrupted."""
    try:
        status = group.main(standalone_mode=False)
    except click.exceptions.Exit as done:
        status = done.exit_code
    except click.UsageError as err:
        where = f"{err.ctx.command_path}: " if err.ctx is not None else ""
        _fail(f"{where}{err.format_message()}")
    except click.ClickException as err:
        _fail(err.format_message())
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("vlbr: interrupted", err=True)
        sys.exit(130)
    except VlbrError as err:
        _fail(str(err))
    except OSError as err:
        # A path the user named that cannot be read or written.
        _fail(f"{err.filename}: {err.strerror}" if err.filename else str(err))
    # standalone_mode=False returns a command's exit code instead of exiting with it.
    sys.exit(status if isinstance(status, int) else 0)


if __name__ == "__main__":
    main()
