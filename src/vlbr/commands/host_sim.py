"""`vlbr host-sim`: host perf and guests sharing one LBR, simulated under each design."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.table import Table
from rich.text import Text

from vlbr.policy.sharing import SHARING_VARIANTS
from vlbr.policy.sharing_scenarios import load, shipped, simulate_all

from ._picture import console, svg_option

_COLOURS = ("green", "cyan", "magenta", "yellow", "blue")


@click.command("host-sim")
@click.argument("scenario", required=False)
@click.option("--list", "list_only", is_flag=True, help="print the shipped scenarios")
@click.option("--variant", type=click.Choice(SHARING_VARIANTS), default=None,
              help="only this design (default: every one)")
@click.option("--json", "as_json", is_flag=True, help="print the figures as JSON")
@svg_option
def command(scenario: str | None, list_only: bool, variant: str | None, as_json: bool,
            svg: Path | None) -> None:
    """Who owns each physical CPU's LBR, and what each guest and host context lost or saw of
    another's records, under mainline-mechanism, v12 and vlbr."""
    if list_only:
        for s in shipped():
            click.echo(f"{s.name}  {s.description}")
        return
    if scenario is None:
        raise click.UsageError("give a SCENARIO (a shipped name or a JSON file), or --list")
    if as_json and svg:
        raise click.UsageError("--json and --svg do not go together")
    loaded = load(scenario)
    result = simulate_all(loaded, (variant,) if variant else SHARING_VARIANTS)
    if as_json:
        click.echo(json.dumps(result))
        return
    with console(svg, f"vlbr host-sim {loaded.name}") as out:
        out.print(f"{loaded.name}: {loaded.description}")
        out.print(_figures(result))
        for name, figures in result["variants"].items():
            out.print(_timeline(name, figures["timeline"], _clock_end(figures)))


def _figures(result: dict) -> Table:
    table = Table("variant", "lost", "crossed", "saves", "XSS restored", "per context")
    for name, f in result["variants"].items():
        per = ", ".join(f"{c} lost {v['lost']}" for c, v in f["contexts"].items())
        table.add_row(name, str(f["lost"]), str(f["crossed"]), str(f["saves"]),
                      "yes" if f["xss_restored"] else "NO", per)
    return table


def _clock_end(figures: dict) -> int:
    ends = [t for cpu in figures["timeline"].values() for t, _ in cpu]
    return max(ends, default=0) + 1


def _timeline(variant: str, timeline: dict, end: int, width: int = 60) -> Table:
    """One row a CPU: a bar coloured by who owned its LBR at each branch serial."""
    owners = sorted({o for cpu in timeline.values() for _, o in cpu if o})
    colour = {o: _COLOURS[i % len(_COLOURS)] for i, o in enumerate(owners)}
    table = Table(title=f"{variant}: LBR owner over time (branches)", show_header=False)
    for cpu, changes in timeline.items():
        bar = Text()
        for i, (start, owner) in enumerate(changes):
            stop = changes[i + 1][0] if i + 1 < len(changes) else end
            cells = max(1, round((stop - start) * width / end)) if stop > start else 0
            bar.append("█" * cells if owner else "·" * cells, style=colour.get(owner, "dim"))
        table.add_row(cpu, bar)
    legend = Text("  ".join(owners) or "nobody")
    for o in owners:
        legend.highlight_words([o], style=colour[o])
    table.add_row("", legend)
    return table
