"""`vlbr cpuid`: show the Arch LBR capability of a CPUID source, convert between formats."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from vlbr.arch.cpuid import CpuidTable
from vlbr.arch.leaves import arch_lbr_leaf, perfmon, structured_features, xsave_component, \
    xsave_extended, xsave_main
from vlbr.arch.xsave import ARCH_LBR_COMPONENT, XsaveLayout, XsaveLayoutError, arch_lbr_depth_for_size
from vlbr.host import LogicalCpu, core_type_name, core_types, live_host_cpus, read_cpuid_file, \
    to_json, write_cpuid_raw

LBR_FLAGS = (  # (json key, label) for every CPUID.0x1C flag in the reference table
    ("deep_cstate_reset", "EAX[30] LBRs may clear in deep C-states"),
    ("lip", "EAX[31] linear IPs (LIP)"),
    ("cpl_filtering", "EBX[0] CPL filtering"),
    ("branch_filtering", "EBX[1] branch-type filtering"),
    ("call_stack", "EBX[2] call-stack mode"),
    ("mispredict", "ECX[0] LBR_INFO.MISPRED"),
    ("timed_lbr", "ECX[1] timed LBRs (CYC_CNT)"),
    ("branch_type", "ECX[2] LBR_INFO.BR_TYPE"),
)


@click.group("cpuid")
def command() -> None:
    """CPUID sources: dump files, the live host (/dev/cpu) and KVM (/dev/kvm)."""


def load_cpus(file: Path | None, host: bool, kvm: bool) -> tuple[str, list[LogicalCpu]]:
    """The logical CPUs of exactly one source, and the source's name."""
    if sum((file is not None, host, kvm)) != 1:
        raise click.UsageError("give exactly one of FILE, --host or --kvm")
    if host:
        return "/dev/cpu (live host)", live_host_cpus()
    if kvm:
        return "/dev/kvm KVM_GET_SUPPORTED_CPUID", [LogicalCpu(0, _kvm_supported_cpuid())]
    return str(file), read_cpuid_file(file)


def _kvm_supported_cpuid() -> CpuidTable:
    try:
        from vlbr.host.kvm import Kvm
    except ImportError as err:  # host/kvm.py is another module; keep --host and FILE usable
        raise click.ClickException(f"KVM support is not available: {err}") from None
    kvm = Kvm()
    try:
        return kvm.supported_cpuid()
    finally:
        kvm.close()


def cpu_summary(cpu: LogicalCpu) -> dict:
    """Everything `show` reports about one logical CPU, as JSON-ready values."""
    t = cpu.table
    sig = t.signature
    arch_lbr = structured_features(t).arch_lbr
    leaf = arch_lbr_leaf(t)
    comp15 = xsave_component(t, ARCH_LBR_COMPONENT)
    size = comp15.size if comp15 is not None else None
    return {
        "index": cpu.index,
        "vendor": t.vendor,
        "brand": t.brand,
        "family": sig.family, "model": sig.model, "stepping": sig.stepping,
        "core_type": core_type_name(t),
        "arch_lbr": arch_lbr,
        "leaf_0x1c": list(t.regs(0x1C, 0).as_tuple()),
        "lbr_depths": leaf.depths if arch_lbr else [],
        "lbr_max_depth": leaf.max_depth if arch_lbr else 0,
        "lbr_flags": {key: getattr(leaf, key) for key, _ in LBR_FLAGS},
        "event_logging": leaf.event_logging,
        "pmu_version": perfmon(t).version,
        "xsaves": xsave_extended(t).xsaves,
        "xss_supported": xsave_extended(t).xss_supported,
        "xss_lbr": bool(xsave_extended(t).xss_supported >> ARCH_LBR_COMPONENT & 1),
        "xsave_lbr_size": size,
        "xsave_lbr_depth": arch_lbr_depth_for_size(size) if size else None,
        "xsave_lbr_supervisor": comp15.supervisor if comp15 is not None else None,
        "xsave_lbr_offset": compacted_lbr_offset(t),
    }


def compacted_lbr_offset(table: CpuidTable) -> int | None:
    """Component 15's offset in the compacted area for every supported XCR0|XSS component."""
    mask = xsave_main(table).xcr0_supported | xsave_extended(table).xss_supported
    if not mask >> ARCH_LBR_COMPONENT & 1:
        return None
    try:
        return XsaveLayout.for_mask(table, mask, compacted=True).offset_of(ARCH_LBR_COMPONENT)
    except XsaveLayoutError:
        return None  # the source lacks a component's subleaf


def summarize(source: str, cpus: list[LogicalCpu]) -> dict:
    """The `show --json` document."""
    return {"source": source,
            "cpus": [cpu_summary(cpu) for cpu in cpus],
            "core_types": [{"name": ct.name, "cpus": list(ct.cpus)} for ct in core_types(cpus)]}


def select_cpu(cpus: list[LogicalCpu], index: int | None) -> list[LogicalCpu]:
    if index is None:
        return cpus
    chosen = [c for c in cpus if c.index == index]
    if not chosen:
        raise click.BadParameter(f"no logical CPU {index} (the source has {_ranges([c.index for c in cpus])})",
                                 param_hint="--cpu")
    return chosen


@command.command("show")
@click.argument("file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--host", is_flag=True, help="The live host through /dev/cpu/N/cpuid.")
@click.option("--kvm", is_flag=True, help="KVM_GET_SUPPORTED_CPUID on /dev/kvm.")
@click.option("--cpu", "cpu_index", type=click.IntRange(0, 0xFFFF_FFFF), help="Only this logical CPU.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object with a list `cpus`.")
def show(file: Path | None, host: bool, kvm: bool, cpu_index: int | None, as_json: bool) -> None:
    """Arch LBR capability per distinct core type: depths, 0x1C flags, XSS bit 15, component 15."""
    source, cpus = load_cpus(file, host, kvm)
    cpus = select_cpu(cpus, cpu_index)
    if as_json:
        click.echo(json.dumps(summarize(source, cpus), indent=1))
        return
    console = Console()
    for ct in core_types(cpus):
        console.print(core_type_table(source, ct.name, ct.cpus, cpu_summary(LogicalCpu(ct.cpus[0], ct.table))))


def core_type_table(source: str, name: str, indices: tuple[int, ...], s: dict) -> Table:
    title = (f"{source}: {name}, logical CPUs {_ranges(list(indices))} ({len(indices)})\n"
             f"{s['vendor'] or '?'} {s['brand']} family {s['family']:#x} model {s['model']:#x} "
             f"stepping {s['stepping']}")
    table = Table(title=title, title_justify="left", show_header=True)
    table.add_column("CPUID field")
    table.add_column("value")
    yes = lambda b: "[green]yes[/]" if b else "[red]no[/]"  # noqa: E731
    table.add_row("Arch LBR, CPUID.7.0:EDX[19]", yes(s["arch_lbr"]))
    table.add_row("leaf 0x1C EAX-EBX-ECX-EDX", "-".join(f"{r:08X}" for r in s["leaf_0x1c"]))
    table.add_row("supported depths, EAX[7:0]", ", ".join(map(str, s["lbr_depths"])) or "-")
    table.add_row("maximum depth", str(s["lbr_max_depth"] or "-"))
    for key, label in LBR_FLAGS:
        table.add_row(label, yes(s["lbr_flags"][key]))
    counters = [str(i) for i in range(4) if s["event_logging"] >> i & 1]
    table.add_row("ECX[19:16] event logging (counters)",
                  f"{s['event_logging']:#x}" + (f" ({', '.join(counters)})" if counters else ""))
    table.add_row("architectural PMU version, 0xA EAX[7:0]", str(s["pmu_version"]))
    table.add_row("XSAVES, CPUID.(0xD,1):EAX[3]", yes(s["xsaves"]))
    table.add_row("IA32_XSS bit 15, CPUID.(0xD,1):ECX[15]", yes(s["xss_lbr"]))
    size = s["xsave_lbr_size"]
    table.add_row("component 15 size, CPUID.(0xD,0xF):EAX",
                  "-" if size is None else f"{size} bytes" + (
                      f" (depth {s['xsave_lbr_depth']})" if s["xsave_lbr_depth"] else ""))
    offset = s["xsave_lbr_offset"]
    table.add_row("component 15 compacted offset (all XCR0|XSS)", "-" if offset is None else str(offset))
    return table


def _ranges(indices: list[int]) -> str:
    """'0-15, 20' for [0..15, 20]."""
    parts, start = [], None
    for i, n in enumerate(indices):
        if start is None:
            start = n
        if i + 1 == len(indices) or indices[i + 1] != n + 1:
            parts.append(f"{start}" if start == n else f"{start}-{n}")
            start = None
    return ", ".join(parts)


@command.command("convert")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--to", "to", type=click.Choice(["raw", "json"]), required=True,
              help="raw: Debian `cpuid -r` text (for `cpuid -f`); json: vlbr's JSON form.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write here instead of standard output.")
def convert(file: Path, to: str, output: Path | None) -> None:
    """Convert any CPUID file vlbr reads to `cpuid -r` text or vlbr JSON."""
    cpus = read_cpuid_file(file)
    text = write_cpuid_raw(cpus) if to == "raw" else to_json(cpus)
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text)
