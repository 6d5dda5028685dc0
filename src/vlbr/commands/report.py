"""`vlbr report`: every KVM variant's Arch LBR answer on many hosts at once, as a table,
JSON or a picture; unreadable files are listed, never dropped."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import click
from rich.table import Table

from vlbr.errors import CpuidFormatError, VlbrError
from vlbr.host import core_types, read_cpuid_file
from vlbr.policy import VARIANT_NAMES, HostDescription
from vlbr.policy.compare import VariantView, compare_variants

from ._picture import console, svg_option

DUMP_SUFFIXES = (".txt", ".xml", ".json")


@dataclass(frozen=True)
class HostRow:
    file: Path
    core_type: str
    cpus: int
    views: list[VariantView]

    def to_json(self) -> dict:
        return {"file": str(self.file), "core_type": self.core_type, "cpus": self.cpus,
                "variants": [v.to_json() for v in self.views]}


def dump_files(paths: tuple[Path, ...]) -> list[Path]:
    """Files as given; directories expand to the dumps below them (INDEX.md etc. left out)."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in DUMP_SUFFIXES)
        else:
            _readable(path)
            files.append(path)
    return files


def _readable(path: Path) -> None:
    """A file the user named that cannot be read is bad input (exit 2); one that reads
    but does not parse is listed as not read."""
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as err:
        raise CpuidFormatError(str(path), None, f"cannot read: {err.strerror or err}") from None


def host_rows(path: Path, variants) -> list[HostRow]:
    cpus = read_cpuid_file(path)
    return [HostRow(path, t.name, len(t.cpus), compare_variants(HostDescription(t.table), variants))
            for t in core_types(cpus)]


def collect(files: list[Path], variants) -> tuple[list[HostRow], list[tuple[Path, str]]]:
    rows: list[HostRow] = []
    unreadable: list[tuple[Path, str]] = []
    for path in files:
        try:
            rows += host_rows(path, variants)
        except VlbrError as err:
            unreadable.append((path, str(err)))
    return rows, unreadable


def _cell(view: VariantView) -> str:
    if not view.arch_lbr:
        return "[dim]-[/]"
    problems = view.problems
    text = f"{view.depth or 'none'}"
    return f"[red]{text} ✗[/]" if problems else f"[green]{text} ✓[/]"


def _depths(bits: int) -> str:
    return ",".join(str(8 * (n + 1)) for n in range(8) if bits >> n & 1) or "-"


def render(out, rows: list[HostRow], unreadable, variants, only_arch_lbr: bool) -> None:
    table = Table(title="Arch LBR depth each KVM variant offers (✗: unsupported depth, no depth, "
                        "or component-15 size ≠ 40 + 24·depth)")
    for col in ("host dump", "core type", "host depths", *variants):
        table.add_column(col)
    shown = [r for r in rows if not only_arch_lbr or r.views[0].host_depth_bits]
    for row in shown:
        table.add_row(row.file.name, row.core_type, _depths(row.views[0].host_depth_bits),
                      *(_cell(v) for v in row.views))
    out.print(table)
    arch = [r for r in rows if r.views[0].host_depth_bits]
    out.print(f"{len(rows)} core types in {len({r.file for r in rows})} dumps; "
              f"{len(arch)} with Arch LBR depths" + (" (only those shown)" if only_arch_lbr else ""))
    for n, variant in enumerate(variants):
        bad = [r for r in arch if r.views[n].problems]
        out.print(f"  {variant}: a problem on {len(bad)} of {len(arch)}"
                  + (f", e.g. {bad[0].file.name}: {bad[0].views[n].problems[0]}" if bad else ""))
    for path, why in unreadable:
        out.print(f"[yellow]not read[/] {path}: {why}", highlight=False, soft_wrap=True)


@click.command("report")
@click.argument("paths", nargs=-1, required=True,
                type=click.Path(exists=True, path_type=Path))
@click.option("--variant", "variants", multiple=True, type=click.Choice(VARIANT_NAMES),
              help="variants to compare (repeat; default: all)")
@click.option("--arch-lbr-only", is_flag=True, help="show only hosts with Arch LBR depths")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per core type, per line")
@svg_option
def command(paths, variants, arch_lbr_only, as_json, svg) -> None:
    """What every KVM variant offers on each host in PATHS (dump files or directories of them).

    Exit status 1 when a dump could not be read (each is listed as "not read" with its
    reason, the others are still reported); 2 when a named path cannot be opened."""
    variants = variants or VARIANT_NAMES
    rows, unreadable = collect(dump_files(paths), variants)
    if as_json:
        for row in rows:
            click.echo(json.dumps(row.to_json()))
        for path, why in unreadable:
            click.echo(json.dumps({"file": str(path), "error": why}))
    else:
        with console(svg, "vlbr report", width=140 if svg else None) as out:
            render(out, rows, unreadable, variants, arch_lbr_only)
    if unreadable:
        raise SystemExit(1)
