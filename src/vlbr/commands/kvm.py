"""`vlbr kvm`: what KVM's Arch LBR policy offers on a host, and whether it accepts a guest CPUID."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from vlbr.arch.cpuid import CpuidTable
from vlbr.arch.msrs import msr_name
from vlbr.host import LogicalCpu, core_types, live_host_cpus, read_cpuid_file
from vlbr.policy import (VARIANT_NAMES, HostDescription, SupportedCpuid, UnsupportedDepth,
                         check_guest_cpuid, supported_cpuid)


class _Int(click.ParamType):
    """An integer in any base Python reads (0x1800, 0b..., 6144), within 0..2**bits-1."""

    name = "integer"

    def __init__(self, bits: int):
        self.bits = bits

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return self._in_range(value, param, ctx)
        try:
            number = int(str(value), 0)
        except ValueError:
            self.fail(f"{value!r} is not an integer (decimal or 0x hex)", param, ctx)
        return self._in_range(number, param, ctx)

    def _in_range(self, number: int, param, ctx) -> int:
        if not 0 <= number < 1 << self.bits:
            self.fail(f"{number:#x} is not a {self.bits}-bit unsigned value", param, ctx)
        return number


U64 = _Int(64)  # IA32_XSS is a 64-bit MSR
# Logical CPU numbers a source can name (readers accept 0..0xffffffff).
CPU_NUMBER = click.IntRange(0, 0xFFFF_FFFF)
# Arch LBR depths are 8..64 (CPUID.0x1C:EAX[7:0], bit n = depth 8*(n+1)); the policy says which.
DEPTH = click.IntRange(1, 64)


def host_options(fn):
    """The host facts a dump cannot tell; None keeps the architectural default."""
    for decorator in reversed((
        click.option("--variant", type=click.Choice(VARIANT_NAMES), default="vlbr",
                     show_default=True, help="which design of KVM's Arch LBR support"),
        click.option("--cpu", type=CPU_NUMBER, default=None,
                     help="use this logical CPU; default: what every core type supports"),
        click.option("--vmx-load-lbr-ctl/--no-vmx-load-lbr-ctl", default=None,
                     help="VM-entry control 'load guest IA32_LBR_CTL' (default: ARCH_LBR)"),
        click.option("--vmx-clear-lbr-ctl/--no-vmx-clear-lbr-ctl", default=None,
                     help="VM-exit control 'clear IA32_LBR_CTL' (default: ARCH_LBR)"),
        click.option("--host-xss", type=U64, default=None,
                     help="the host's IA32_XSS (default: what CPUID.(0xD,1):ECX/EDX enumerates)"),
    )):
        fn = decorator(fn)
    return fn


def kvm_supported_table() -> CpuidTable:
    from vlbr.host.kvm import Kvm

    with Kvm() as kvm:
        return kvm.supported_cpuid()


def load_source(file: Path | None, live: bool, kvm: bool) -> tuple[str, list[LogicalCpu]]:
    """The logical CPUs of exactly one CPUID source and its name."""
    if sum((file is not None, live, kvm)) != 1:
        raise click.UsageError("give exactly one of FILE, --host or --kvm")
    if live:
        return "/dev/cpu (live host)", live_host_cpus()
    if kvm:
        return "/dev/kvm KVM_GET_SUPPORTED_CPUID", [LogicalCpu(0, kvm_supported_table())]
    return str(file), read_cpuid_file(file)


def describe_host(cpus: list[LogicalCpu], cpu: int | None, vmx_load: bool | None,
                  vmx_clear: bool | None, host_xss: int | None) -> HostDescription:
    facts = dict(vmx_load_lbr_ctl=vmx_load, vmx_clear_lbr_ctl=vmx_clear, host_xss=host_xss)
    if cpu is None:
        return HostDescription.from_core_types(core_types(cpus), **facts)
    chosen = [c for c in cpus if c.index == cpu]
    if not chosen:
        raise click.BadParameter(f"no logical CPU {cpu} (the source has "
                                 f"{', '.join(str(c.index) for c in cpus)})", param_hint="--cpu")
    return HostDescription(chosen[0].table, **facts)


@click.group("kvm")
def command() -> None:
    """KVM's Arch LBR policy: email-v2, v3, mainline and vlbr side by side."""


@command.command("supported")
@click.argument("file", required=False, type=click.Path(path_type=Path, dir_okay=False))
@click.option("--host", "live", is_flag=True, help="the live host's CPUID (/dev/cpu)")
@click.option("--kvm", is_flag=True, help="this machine's KVM_GET_SUPPORTED_CPUID")
@host_options
@click.option("--depth", type=DEPTH, default=None, help="the Arch LBR depth to offer")
@click.option("--all", "all_rows", is_flag=True,
              help="every row of the supported view, not only those the design changes")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def supported(file, live, kvm, variant, cpu, vmx_load_lbr_ctl, vmx_clear_lbr_ctl, host_xss,
              depth, all_rows, as_json) -> None:
    """The KVM_GET_SUPPORTED_CPUID entries, supported XSS and MSRs to save a variant gives."""
    name, cpus = load_source(file, live, kvm)
    host = describe_host(cpus, cpu, vmx_load_lbr_ctl, vmx_clear_lbr_ctl, host_xss)
    try:
        result = supported_cpuid(host, variant, depth)
    except UnsupportedDepth as err:
        raise click.BadParameter(str(err), param_hint="--depth") from None
    if as_json:
        doc = result.to_json()
        if all_rows:
            doc["entries"] = [_entry_json(e) for e in result.table.entries()]
        click.echo(json.dumps(doc, indent=1))
        return
    _print_supported(name, host, result, all_rows)


def _entry_json(e) -> dict:
    return {"function": e.function, "index": e.index, "eax": e.regs.eax, "ebx": e.regs.ebx,
            "ecx": e.regs.ecx, "edx": e.regs.edx}


def _print_supported(name: str, host: HostDescription, result: SupportedCpuid, all_rows: bool) -> None:
    console = Console(highlight=False)
    table = Table(title=f"{result.variant}: KVM_GET_SUPPORTED_CPUID on {name}")
    for col in ("leaf", "subleaf", "EAX", "EBX", "ECX", "EDX", "vs source"):
        table.add_column(col, justify="right" if col in ("leaf", "subleaf") else "left")
    rows = result.table.entries() if all_rows else result.entries()
    for e in rows:
        was = host.table.query(e.function, e.index)
        change = "added" if was is None else ("changed" if was != e.regs else "")
        table.add_row(f"{e.function:#x}", str(e.index), *(f"{r:08X}" for r in e.regs.as_tuple()),
                      change)
    for key in sorted(result.touched):
        if key not in result.table and host.table.query(*key) is not None:
            table.add_row(f"{key[0]:#x}", str(key[1]), "", "", "", "", "dropped")
    console.print(table)
    console.print(f"ARCH_LBR offered: {'yes, depth ' + str(result.depth) if result.arch_lbr else 'no'}")
    console.print(f"supported XSS: {result.supported_xss:#x}")
    console.print(f"MSRs to save ({len(result.msrs_to_save)}): {_msr_summary(result.msrs_to_save)}")
    for note in result.notes:
        console.print(f"note: {note}")


def _msr_summary(msrs: tuple[int, ...]) -> str:
    names = [msr_name(m) for m in msrs]
    if len(names) > 8:
        return ", ".join(names[:6]) + f", ... {names[-1]}"
    return ", ".join(names) or "none"


@command.command("check")
@click.argument("guest", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--host", "host_file", type=click.Path(path_type=Path, dir_okay=False),
              help="the host's CPUID dump")
@click.option("--kvm", is_flag=True, help="use this machine's KVM_GET_SUPPORTED_CPUID as the host")
@click.option("--live", is_flag=True, help="use the live host's CPUID (/dev/cpu)")
@host_options
def check(guest, host_file, kvm, live, variant, cpu, vmx_load_lbr_ctl, vmx_clear_lbr_ctl,
          host_xss) -> None:
    """Would KVM_SET_CPUID2 accept GUEST (vlbr JSON or any CPUID file)? Exit 1 with reasons."""
    _, host_cpus = load_source(host_file, live, kvm)
    host = describe_host(host_cpus, cpu, vmx_load_lbr_ctl, vmx_clear_lbr_ctl, host_xss)
    reasons = []
    types = core_types(read_cpuid_file(guest))
    for t in types:
        prefix = f"vCPUs {','.join(map(str, t.cpus))}: " if len(types) > 1 else ""
        reasons += [prefix + r for r in check_guest_cpuid(host, t.table, variant)]
    if not reasons:
        click.echo(f"accepted: KVM_SET_CPUID2 ({variant}) takes {guest}")
        return
    for reason in reasons:
        click.echo(f"-EINVAL: {reason}")
    raise click.exceptions.Exit(1)
