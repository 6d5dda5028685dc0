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


def main() -> None:
    try:
        group.main(standalone_mode=False)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except click.exceptions.Abort:
        sys.exit(130)
    except VlbrError as err:
        click.echo(f"vlbr: error: {err}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
