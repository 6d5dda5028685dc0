"""Commands that can save what they print as a picture (SVG, through rich's recorder)."""

from __future__ import annotations

import io
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import click
from rich.console import Console

svg_option = click.option("--svg", "svg", type=click.Path(dir_okay=False, writable=True, path_type=Path),
                          default=None, help="also save the output as an SVG picture")


@contextmanager
def console(svg: Path | None, title: str, width: int | None = None,
            quiet: bool = False) -> Iterator[Console]:
    """A console for the command's output; with svg, what it printed is saved there too.
    quiet: only the picture (stdout carries something else, e.g. JSON)."""
    out = Console(record=svg is not None, width=width, file=io.StringIO() if quiet else None)
    yield out
    if svg is not None:
        try:
            out.save_svg(str(svg), title=title)
        except OSError as err:
            raise click.ClickException(f"cannot write {svg}: {err.strerror}") from None
        click.echo(f"picture: {svg}", err=True)
