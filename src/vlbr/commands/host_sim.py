"""`vlbr host-sim SCENARIO`: host perf and vCPUs sharing one LBR, under each mechanism."""

from __future__ import annotations

import json

import click
from rich.text import Text

from vlbr.vcpu.hostsim import MECHANISM_NAMES, MECHANISMS, load, report, shipped

from ._picture import console, svg_option

_COLOURS = ("cyan", "magenta", "green", "yellow", "blue", "red", "bright_cyan", "bright_magenta")


@click.command("host-sim")
@click.argument("scenario", required=False)
@click.option("--list", "listing", is_flag=True, help="print the shipped scenarios and exit")
@click.option("--variant", type=click.Choice(MECHANISM_NAMES), default=None,
              help="only this mechanism (default: every one)")
@click.option("--json", "as_json", is_flag=True, help="print the numbers as JSON")
@svg_option
def command(scenario, listing, variant, as_json, svg) -> None:
    """Records each context lost, records that crossed a boundary, XSS after each save."""
    if listing:
        for name in shipped():
            click.echo(f"{name}\t{load(name).description}")
        return
    if scenario is None:
        raise click.UsageError("give a SCENARIO (a shipped name or a file), or --list")
    s = load(scenario)
    results = {v: report(s, v) for v in ([variant] if variant else MECHANISM_NAMES)}
    if as_json:
        click.echo(json.dumps({"scenario": s.name, "variants": results}))
        if svg is None:
            return
    with console(svg, f"vlbr host-sim {s.name}", width=100 if svg else None,
                 quiet=as_json) as out:
        _print(out, s, results)


def _print(out, s, results: dict) -> None:
    out.print(f"{s.name}: {s.description}", markup=False, highlight=False)
    contexts = [*s.vcpus, *s.host_events]
    colour = {c: _COLOURS[i % len(_COLOURS)] for i, c in enumerate(contexts)}
    for name, r in results.items():
        out.print(f"\n{name}: {MECHANISMS[name].summary}", markup=False, highlight=False)
        out.print(f"  lost {r['lost']}  crossed {r['crossed']}  saves {r['saves']}  "
                  f"XSS restored after {r['xss_restored']} of {r['saves']}  "
                  f"records in another IP form {r['wrong_ip_form']}"
                  + ("" if r["guest_offered_arch_lbr"] else "  (guest not offered Arch LBR)"),
                  markup=False, highlight=False)
        lost = ", ".join(f"{c} {n}" for c, n in r["lost_by_context"].items() if n)
        out.print(f"  lost by context: {lost or 'none'}", markup=False, highlight=False)
        for cpu in range(s.pcpus):
            out.print(_row(cpu, r["timeline"], colour))
    legend = Text("  ").join(Text(f"█ {c}", style=colour[c]) for c in contexts)
    out.print(Text("\nowner: ") + legend + Text("  · free"))


def _row(cpu: int, timeline: list, colour: dict) -> Text:
    row = Text(f"  pCPU {cpu} ")
    for step in timeline:
        owner = step[cpu]
        row.append("█" if owner else "·", style=colour.get(owner, "dim"))
    return row
