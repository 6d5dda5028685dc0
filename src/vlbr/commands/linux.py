"""`vlbr linux`: boot a Linux kernel on vlbr's PC machine with a virtual Arch LBR, stream its
serial console, and end with the workload's exit status."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from vlbr.policy.variants import VARIANT_NAMES

from ._guest_output import escape_console

DEFAULT_TIMEOUT = 600.0
# Measured on this machine kind (issue 11), with QEMU -accel kvm on the nested KVM.
LINUX_ON_KVM = ("this nested KVM runs guest supervisor code at about 0.85 M instructions/s and "
                "its emulator fails on lock cmpxchg16b and the boot-time INT3 self-test")
KVM_CANNOT = f"--backend kvm cannot boot Linux here: {LINUX_ON_KVM}; use the software CPU"


def _read(path: str | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise click.BadParameter(f"cannot read {what} {path}: {err.strerror}") from None


@click.command("linux")
@click.option("--kernel", "kernel_path", metavar="FILE",
              help="a bzImage (default: Debian's cloud kernel, fetched into the cache)")
@click.option("--initrd", "initrd_path", metavar="FILE",
              help="an initramfs (default: vlbr's busybox one, running --run's program)")
@click.option("--cmdline", default=None, help="the kernel command line")
@click.option("--depth", type=int, default=32, show_default=True,
              help="the Arch LBR depth CPUID 0x1C enumerates")
@click.option("--variant", type=click.Choice(VARIANT_NAMES), default="vlbr",
              show_default=True, help="the design whose Arch LBR rules the guest sees")
@click.option("--backend", "backend_name", type=click.Choice(["auto", "software", "kvm"]),
              default="auto", show_default=True, help="auto: the software CPU (see --help)")
@click.option("--run", "program", metavar="PROGRAM",
              help="the workload: a C file (built statically with gcc), or an executable "
                   "file (a #!/bin/sh script, a static binary) taken as it is")
@click.option("--with-perf", is_flag=True,
              help="add Debian's perf tool and its libraries (/usr/bin/perf in the guest)")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True),
              default=DEFAULT_TIMEOUT, show_default=True, metavar="SECONDS",
              help="wall-clock limit of the run; it stops with reason 'timeout'")
@click.option("--verify-samples", is_flag=True,
              help="check every PMI's LBR and every `perf script -F ip,brstack` sample on the "
                   "console against vlbr's own record of the branches; exit 1 on a mismatch")
@click.option("--json", "as_json", is_flag=True,
              help="one JSON document (console, exit_status, stop_reason, boot_seconds)")
def command(kernel_path, initrd_path, cmdline, depth, variant, backend_name, program,
            with_perf, timeout, verify_samples, as_json) -> None:
    """Boot Linux on vlbr's software CPU and run a workload.

    The guest's console streams to stdout (with --json it is in the document instead). Exit
    status: the workload's own when the guest halted after it ran; 1 when the guest stopped
    otherwise (timeout, triple fault, ...: the stop reason says which) or when
    --verify-samples finds a mismatch; 2 on bad input."""
    from vlbr.backends.pc.cpu_model import guest_cpuid
    from vlbr.guest.linux import DEFAULT_CMDLINE, boot_linux, default_initrd
    if backend_name == "kvm":
        raise click.UsageError(KVM_CANNOT)
    if initrd_path is not None and (program is not None or with_perf):
        raise click.UsageError("--run and --with-perf build vlbr's initramfs; they cannot go "
                               "with --initrd")
    cpuid = guest_cpuid(variant, depth)
    image = _read(kernel_path, "kernel")
    initrd = _read(initrd_path, "initrd")
    workload = _workload(program) if program is not None else None
    if image is None:
        from vlbr.guest.debian import debian_kernel
        image = debian_kernel().read_bytes()
    if initrd is None:
        initrd = default_initrd(workload, with_perf)
    stream = None if as_json else ConsoleStream()
    result = boot_linux(image, initrd, cmdline or DEFAULT_CMDLINE, timeout, cpuid, stream,
                        ground_truth=verify_samples)
    check = _verify(result) if verify_samples else None
    if as_json:
        document = result.to_json()
        if check is not None:
            document["verify_samples"] = check.to_json()
        click.echo(json.dumps(document))
    else:
        _report(result, check)
    raise click.exceptions.Exit(_status(result, check))


def _verify(result):
    from vlbr.guest.perf_samples import check_samples
    return check_samples(result.console, result.pmis)


def _report(result, check) -> None:
    click.echo(f"\nvlbr: {result.stop_reason}: {result.stop_detail}; exit status "
               f"{result.exit_status if result.exit_status is not None else 'none'}", err=True)
    if check is not None:
        verdict = "ok" if check.ok else "FAILED"
        click.echo(f"vlbr: verify-samples {verdict}: {check.summary()}", err=True)
        for line in check.mismatches:
            click.echo(f"vlbr: verify-samples: {line}", err=True)


def _status(result, check) -> int:
    """The workload's status once the guest halted after it; else, or when the samples
    do not verify, 1."""
    if result.stop_reason != "halted" or result.exit_status is None:
        return 1
    if result.exit_status == 0 and check is not None and not check.ok:
        return 1
    return result.exit_status


def _workload(program: str) -> bytes:
    from vlbr.guest.linux import compile_workload
    if program.endswith(".c"):
        return compile_workload(Path(program))
    data = _read(program, "workload")
    if not (data.startswith(b"#!") or data.startswith(b"\x7fELF")):
        raise click.BadParameter(f"{program} is neither a C file, a #! script nor an ELF file")
    return data


class ConsoleStream:
    """Console bytes to the terminal as they come: the serial line's CR LF as newlines
    (a CR at a chunk's end waits for the next chunk), anything else escaped."""

    def __init__(self):
        self.held = b""

    def __call__(self, data: bytes) -> None:
        data, self.held = self.held + data, b""
        if data.endswith(b"\r"):
            data, self.held = data[:-1], b"\r"
        text = data.replace(b"\r\n", b"\n").decode(errors="replace")
        sys.stdout.write(escape_console(text))
        sys.stdout.flush()

