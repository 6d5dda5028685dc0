"""Linux as a vlbr guest: Debian's kernel (or the user's) booted on the PC machine with
vlbr's initramfs, a workload compiled from C, and the result as data (console, the
workload's exit status, why the run stopped)."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from vlbr.errors import VlbrError

from .initramfs import EXIT_MARK, busybox_initramfs

RAM = 512 << 20
# The boot delay loop is preset; a panic reboots at once (a triple fault ends the run)
# instead of spinning until the time limit. No acpi=off: there are no ACPI tables (Linux
# finds no RSDP and goes on), but with acpi=off a kernel without CONFIG_X86_MPPARSE (Debian's
# cloud kernel) also drops the local APIC (arch/x86/kernel/acpi/boot.c acpi_mps_check()).
DEFAULT_CMDLINE = "console=ttyS0 nokaslr lpj=1000000 panic=-1 reboot=t"
INIT_LINE = b"Run /init as init process"
_STATUS = re.compile(re.escape(EXIT_MARK) + r" (\d+)")


class WorkloadBuildError(VlbrError):
    """A --run program that gcc cannot compile statically."""


@dataclass(frozen=True)
class LinuxResult:
    console: str
    exit_status: int | None  # the workload's, as /init printed it; None if it never did
    stop_reason: str
    stop_detail: str
    boot_seconds: float | None  # wall clock until the kernel ran /init
    seconds: float
    instructions: int  # virtual time: instructions the guest retired
    pmis: list | None = None  # ground-truth PmiSnapshots, when asked for

    def to_json(self) -> dict:
        return {"console": self.console, "exit_status": self.exit_status,
                "stop_reason": self.stop_reason, "stop_detail": self.stop_detail,
                "boot_seconds": self.boot_seconds, "seconds": round(self.seconds, 3),
                "instructions": self.instructions}


def compile_workload(source: Path) -> bytes:
    """A C file as a static x86-64 Linux executable (glibc's libc.a)."""
    gcc = shutil.which("gcc")
    if gcc is None:
        raise WorkloadBuildError("gcc is not installed: --run needs it to build the workload")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "workload"
        done = subprocess.run([gcc, "-static", "-O2", "-o", str(out), str(source)],
                              capture_output=True, text=True)
        if done.returncode:
            first = (done.stderr.strip().splitlines() or ["no message"])[0]
            raise WorkloadBuildError(f"gcc cannot build {source} statically: {first}")
        return out.read_bytes()


def exit_status(console: str) -> int | None:
    found = _STATUS.findall(console)
    return int(found[-1]) if found else None


def boot_linux(image: bytes, initrd: bytes, cmdline: str, timeout: float, cpuid=None,
               on_console: Callable[[bytes], None] | None = None,
               ground_truth: bool = False) -> LinuxResult:
    """Boot and run until the guest halts, the time limit, or a stop (the machine says why);
    with ground_truth, vlbr's own account of the LBR at every PMI comes back too."""
    from vlbr.backends.pc.loader import plan
    from vlbr.backends.pc.machine import PcMachine
    marks: dict[str, float] = {}
    start = time.monotonic()

    def seen(data: bytes) -> None:
        if "init" not in marks and INIT_LINE in machine.run_state.console:
            marks["init"] = time.monotonic() - start
        if on_console is not None:
            on_console(data)

    machine = PcMachine(plan(image, initrd, cmdline, RAM), RAM, cpuid=cpuid, on_console=seen,
                        ground_truth=ground_truth)
    run = machine.run(timeout)
    console = run.console.replace(b"\r\n", b"\n").decode(errors="replace")
    return LinuxResult(console, exit_status(console), run.stop_reason, run.stop_detail,
                       marks.get("init"), time.monotonic() - start, run.instructions,
                       machine.truth.snapshots if machine.truth is not None else None)


def default_initrd(workload: bytes | None = None, with_perf: bool = False) -> bytes:
    """vlbr's initramfs; with_perf adds Debian's perf tool and its libraries."""
    from .debian import debian_busybox
    extra = None
    if with_perf:
        from .perf_tool import perf_files
        extra = perf_files()
    return busybox_initramfs(debian_busybox().read_bytes(), workload, extra)
