"""`vlbr migrate-check A B`: what breaks when a guest moves from configuration A to B."""

from __future__ import annotations

from pathlib import Path

import click

from vlbr.host import core_types, read_cpuid_file

from .kvm import CPU_NUMBER, DEPTH
from vlbr.policy import VARIANT_NAMES, HostDescription, UnsupportedDepth, host_migration_check, \
    migration_check


def _guest_table(path: Path, cpu: int | None):
    cpus = read_cpuid_file(path)
    if cpu is not None:
        chosen = [c for c in cpus if c.index == cpu]
        if not chosen:
            raise click.BadParameter(f"{path} has no logical CPU {cpu}", param_hint="--cpu")
        return chosen[0].table
    types = core_types(cpus)
    if len(types) > 1:
        raise click.UsageError(f"{path} holds {len(types)} different vCPU configurations;"
                               " pick one with --cpu")
    return types[0].table


@click.command("migrate-check")
@click.argument("source", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("destination", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--hosts", is_flag=True,
              help="A and B are hosts: compare what KVM offers on each under --variant")
@click.option("--variant", type=click.Choice(VARIANT_NAMES), default="vlbr", show_default=True)
@click.option("--depth", type=DEPTH, default=None, help="with --hosts: the depth asked of both")
@click.option("--cpu", type=CPU_NUMBER, default=None, help="guest files: the vCPU to compare")
@click.pass_context
def command(ctx, source, destination, hosts, variant, depth, cpu) -> None:
    """Depth, LIP, XSS and XSAVE sizes that differ between A and B; exit 1 when any does."""
    _reject_options_without_effect(ctx, hosts)
    if hosts:
        a = HostDescription.from_core_types(core_types(read_cpuid_file(source)))
        b = HostDescription.from_core_types(core_types(read_cpuid_file(destination)))
        try:
            issues = host_migration_check(a, b, variant, depth)
        except UnsupportedDepth as err:
            raise click.BadParameter(str(err), param_hint="--depth") from None
    else:
        issues = migration_check(_guest_table(source, cpu), _guest_table(destination, cpu))
    if not issues:
        click.echo(f"compatible: a guest can move from {source} to {destination}")
        return
    for issue in issues:
        click.echo(str(issue))
    raise click.exceptions.Exit(1)


def _reject_options_without_effect(ctx: click.Context, hosts: bool) -> None:
    """--variant/--depth only shape the host comparison, --cpu only the guest one."""
    unused = ("cpu",) if hosts else ("variant", "depth")
    for name in unused:
        if ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT:
            other = "without --hosts" if name != "cpu" else "with --hosts"
            raise click.UsageError(f"--{name} has no effect {other}")
