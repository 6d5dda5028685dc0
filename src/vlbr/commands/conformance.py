"""`vlbr conformance`: run the Arch LBR conformance suite on the backends."""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table

from vlbr.backends.registry import BACKEND_NAMES, pick_backend
from vlbr.guest.conformance import DEFAULT_DEPTH, ConformanceReport, run_conformance

from ._guest_output import timeout_option

_STYLE = {"pass": "green", "fail": "bold red", "skip": "yellow"}


@click.command("conformance")
@click.option("--backend", "backend_name", type=click.Choice([*BACKEND_NAMES, "all", "auto"]),
              default="all", show_default=True,
              help="auto: the fastest backend that can run here (as `vlbr run` picks)")
@click.option("--depth", type=int, default=DEFAULT_DEPTH, show_default=True,
              help="the LBR depth the guest's CPUID 0x1C enumerates")
@click.option("--json", "as_json", is_flag=True,
              help="one JSON object per backend, one per line")
@click.option("--summary", is_flag=True, help="only the totals and the checks that did not pass")
@timeout_option
def command(backend_name: str, depth: int, as_json: bool, summary: bool, timeout: float) -> None:
    """Run the Arch LBR conformance checks; exit status 1 when any check fails."""
    if as_json and summary:
        raise click.UsageError("--summary shortens the table; JSON always has every result")
    if backend_name == "auto":
        names: tuple[str, ...] = (pick_backend("auto").name,)
    else:
        names = BACKEND_NAMES if backend_name == "all" else (backend_name,)
    reports = []
    for name in names:
        report = run_conformance(name, depth=depth, timeout=timeout)
        reports.append(report)
        if as_json:
            click.echo(json.dumps(report.to_json()))
        else:
            show(report, summary=summary)
    if any(not r.ok for r in reports):
        raise click.exceptions.Exit(1)


def show(report: ConformanceReport, console: Console | None = None, summary: bool = False) -> None:
    console = console or Console()
    rows = [r for r in report.results if not summary or r.status != "pass"]
    table = Table(title=f"Arch LBR conformance on {report.backend}")
    table.add_column("check")
    table.add_column("status")
    table.add_column("detail", overflow="fold")
    for r in rows:
        style = _STYLE.get(r.status, "")
        table.add_row(r.name, f"[{style}]{r.status.upper()}[/]", r.detail)
    if rows:
        console.print(table)
    console.print(f"{report.backend}: [green]{report.passed} passed[/], "
                  f"[red]{report.failed} failed[/], [yellow]{report.skipped} skipped[/]")
