"""`vlbr host`: what this machine's KVM offers the KVM backend, each item probed for real."""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table

from vlbr.host.kvm import KVM_PATH, Kvm

from .linux import LINUX_ON_KVM


@click.command("host")
@click.option("--json", "as_json", is_flag=True, help="one JSON object instead of tables")
@click.option("--device", default=KVM_PATH, show_default=True, help="the KVM device to probe")
def command(as_json: bool, device: str) -> None:
    """Probe /dev/kvm: API version, the capabilities vlbr uses, KVM_GET_SUPPORTED_CPUID, user-space
    MSRs with a filter, guest-debug single-step, sync regs, XSAVES and IA32_XSS bit 15 in a
    guest, and what vlbr has to emulate because this KVM cannot (ioctl, exit or errno each)."""
    reason = Kvm.unavailable_reason(device)
    if reason is not None:
        if as_json:
            click.echo(json.dumps({"device": device, "available": False, "reason": reason}))
        else:
            click.echo(f"KVM unavailable: {reason}")
        raise SystemExit(1)
    from vlbr.backends.kvm.probe import host_report
    from vlbr.backends.kvm.quirks import probe_quirks
    from vlbr.backends.registry import auto_choice
    report = host_report(device)
    quirks = probe_quirks(device).active()
    auto, why = auto_choice()
    if as_json:
        click.echo(json.dumps({"device": device, "available": True, **report.to_json(),
                               "quirks": quirks, "auto_backend": auto, "auto_reason": why,
                               "linux_backend": "software", "linux_reason": LINUX_ON_KVM}))
        return
    console = Console()
    console.print(f"[bold]{device}[/]: KVM API version {report.api_version}; "
                  f"KVM_GET_SUPPORTED_CPUID {report.supported_cpuid_entries} entries; "
                  f"KVM_GET_MSR_INDEX_LIST {report.msr_index_list} MSRs")
    caps = Table("capability", "KVM_CHECK_EXTENSION", title="capabilities vlbr uses")
    for name, value in report.caps.items():
        caps.add_row(name, str(value) if value else "[red]0[/]")
    console.print(caps)
    probes = Table("probe", "result", "detail", title="probed with tiny guests")
    for probe in report.probes:
        probes.add_row(probe.name, "[green]yes[/]" if probe.ok else "[red]no[/]", probe.detail)
    console.print(probes)
    console.print(f"KVM quirks in force: {', '.join(quirks) or 'none'} (the probes above say "
                  f"what vlbr does about each)")
    console.print(f"--backend auto: {why}")
    console.print(f"vlbr linux: the software CPU ({LINUX_ON_KVM})")
