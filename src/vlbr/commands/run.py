"""`vlbr run`: run a guest program on a backend and show its CPUID 0x1C, console and LBR stack."""

from __future__ import annotations

import json

import click
from rich.table import Table

from vlbr.arch.leaves import arch_lbr_leaf
from vlbr.backends.base import KVM_HYBRID, KVM_RECORDING_MODES, BackendUnavailable
from vlbr.guest.build import build_guest
from vlbr.backends.registry import pick_backend
from vlbr.guest.conformance import DEFAULT_DEPTH, SUITE_GUESTS, machine_for
from vlbr.guest.records import lbr_stack

from ._guest_output import escape_console, stop_text, timeout_option
from ._picture import console, svg_option


def _int(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not an integer (e.g. 0x7f0007)") from None
    if not 0 <= value < 1 << 64:
        raise click.BadParameter(f"{text} does not fit in 64 bits")
    return value


def _cpuid_1c(table) -> dict:
    regs = table.regs(0x1C, 0)
    leaf = arch_lbr_leaf(table)
    return {"eax": regs.eax, "ebx": regs.ebx, "ecx": regs.ecx, "edx": regs.edx,
            "depths": leaf.depths, "cpl_filtering": leaf.cpl_filtering,
            "branch_filtering": leaf.branch_filtering, "call_stack": leaf.call_stack,
            "branch_type": leaf.branch_type, "lip": leaf.lip}


@click.command("run")
@click.argument("guest")
@click.option("--backend", "backend_name", type=click.Choice(["auto", "kvm", "software"]),
              default="auto", show_default=True, help="auto: the fastest backend that can run here (vlbr host says which and why)")
@click.option("--depth", type=int, default=DEFAULT_DEPTH, show_default=True,
              help="the LBR depth the guest's CPUID 0x1C enumerates")
@click.option("--lbr-ctl", "lbr_ctl", default=None,
              help="IA32_LBR_CTL the guest uses (its vlbr_lbr_ctl variable), e.g. 0x7f0007")
@click.option("--vcpus", type=click.IntRange(1, 8), default=None,
              help="vCPUs to run (default: what the suite runs the guest with, else 1)")
@click.option("--kvm-recording", "kvm_recording", type=click.Choice(KVM_RECORDING_MODES),
              default=KVM_HYBRID, show_default=True,
              help="KVM while LBREn is set: hybrid (unicorn between the instructions KVM must "
                   "run) or step (KVM single-steps every instruction)")
@timeout_option
@click.option("--json", "as_json", is_flag=True, help="one JSON document for tools")
@svg_option
def command(guest: str, backend_name: str, depth: int, lbr_ctl: str | None,
            vcpus: int | None, kvm_recording: str, timeout: float, as_json: bool, svg) -> None:
    """Run GUEST: a built-in guest (hello, conformance, smp) or a path to a C file.

    A C file is linked with the guest runtime: it includes "runtime.h" and defines
    `int guest_main(int cpu, int ncpus)`, whose return value is the exit status; it may read
    `vlbr_lbr_ctl` (set by --lbr-ctl).

    Exit status 0 when every vCPU exited with status 0; 1 when a guest exited non-zero or
    stopped otherwise (timeout, budget, shutdown, ...: the stop reason says which)."""
    if as_json and svg is not None:
        raise click.UsageError("--svg saves the text output; it has no effect with --json")
    image = build_guest(guest)
    if lbr_ctl is not None:
        image = image.with_u64("vlbr_lbr_ctl", _int(lbr_ctl))
    backend = pick_backend(backend_name)
    reason = backend.unavailable_reason()
    if reason is not None:
        raise click.ClickException(f"backend {backend.name} is unavailable: {reason}")
    if vcpus is None:
        vcpus = SUITE_GUESTS.get(guest, 1)
    machine = machine_for(backend.name, vcpus=vcpus, depth=depth, timeout=timeout,
                          kvm_recording=kvm_recording)
    try:
        result = backend.run(image, machine)
    except BackendUnavailable as err:
        raise click.ClickException(f"backend {backend.name} is unavailable: {err}") from None
    stacks = [lbr_stack(v.records(), image) for v in result.vcpus]
    if as_json:
        click.echo(json.dumps({
            "backend": backend.name, "guest": image.name, "cpuid_0x1c": _cpuid_1c(machine.cpuid),
            "lbr_ctl": image.read_u64("vlbr_lbr_ctl"),
            "vcpus": [{"index": n, "console": result.console[n], "exit_status": result.exit_status[n],
                       "stop_reason": result.stops[n].reason, "stop_detail": result.stops[n].detail,
                       "records": [r.to_json() for r in stacks[n]] if n < len(stacks) else []}
                      for n in range(len(result.console))],
            "ok": result.ok,
            "stats": {k: v for k, v in result.stats.items()
                      if isinstance(v, (int, float, str, bool))},
        }))
    else:
        with console(svg, f"vlbr run {image.name}") as out:
            _show(out, backend.name, image, machine, result, stacks)
    if not result.ok:
        raise click.exceptions.Exit(1)


def _show(out, backend_name, image, machine, result, stacks) -> None:
    c = _cpuid_1c(machine.cpuid)
    out.print(f"[bold]{image.name}[/] on [bold]{backend_name}[/] "
              f"({machine.vcpus} vCPU{'s' if machine.vcpus > 1 else ''})")
    out.print(f"guest CPUID.(0x1C,0): EAX={c['eax']:08x} EBX={c['ebx']:08x} ECX={c['ecx']:08x} "
              f"EDX={c['edx']:08x}  depths {c['depths']}")
    for n, text in enumerate(result.console):
        out.print(f"[bold]vCPU {n} console[/] ({stop_text(result, n)}):", highlight=False)
        out.print(escape_console(text).rstrip("\n") or "(nothing)", markup=False,
                  highlight=False)
        if n >= len(stacks):
            continue
        table = Table(title=f"vCPU {n} LBR stack (record 0 = newest)")
        for col in ("#", "from", "from symbol", "to", "to symbol", "type"):
            table.add_column(col, justify="right" if col == "#" else "left")
        for r in stacks[n]:
            table.add_row(str(r.index), f"{r.from_ip:#x}", r.from_symbol or "", f"{r.to_ip:#x}",
                          r.to_symbol or "", r.type_name)
        if not stacks[n]:
            table.caption = "no records"
        out.print(table)

