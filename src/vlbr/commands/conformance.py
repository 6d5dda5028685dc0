"""`vlbr conformance`: run the Arch LBR conformance suite on the backends."""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table

from vlbr.guest.conformance import BACKEND_NAMES, DEFAULT_DEPTH, ConformanceReport, run_conformance

_STYLE = {"pass": "green", "fail": "bold red", "skip": "yellow"}


@click.command("conformance")
@click.option("--backend", "backend_name", type=click.Choice([*BACKEND_NAMES, "all"]),
              default="all", show_default=True)
@click.option("--depth", type=int, default=DEFAULT_DEPTH, show_default=True,
              help="the LBR depth the guest's CPUID 0x1C enumerates")
@click.option("--json", "as_json", is_flag=True,
              help="one JSON object per backend, one per line")
def command(backend_name: str, depth: int, as_json: bool) -> None:
    """Run the Arch LBR conformance checks; exit status 1 when any check fails."""
    names = BACKEND_NAMES if backend_name == "all" else (backend_name,)
    reports = []
    for name in names:
        report = run_conformance(name, depth=depth)
        reports.append(report)
        if as_json:
            click.echo(json.dumps(report.to_json()))
        else:
            show(report)
    if any(not r.ok for r in reports):
        raise click.exceptions.Exit(1)


def show(report: ConformanceReport, console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title=f"Arch LBR conformance on {report.backend}")
    table.add_column("check")
    table.add_column("status")
    table.add_column("detail", overflow="fold")
    for r in report.results:
        style = _STYLE.get(r.status, "")
        table.add_row(r.name, f"[{style}]{r.status.upper()}[/]", r.detail)
    console.print(table)
    console.print(f"{report.backend}: [green]{report.passed} passed[/], "
                  f"[red]{report.failed} failed[/], [yellow]{report.skipped} skipped[/]")
