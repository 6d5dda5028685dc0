"""Linux boot to the workload's first line: vlbr's PC machine vs QEMU TCG, one JSON line per figure.

Both boot the same Debian cloud kernel and the same vlbr initramfs (busybox and a static C
workload that prints one known line) with vlbr's default command line; each time is the wall
clock from starting the runner to that line on its serial console. Also vlbr's instructions
retired per second over its whole run (to power-off). QEMU (Debian's qemu-system-x86) is
installed with apt-get when missing; where it cannot be, its lines say why. QEMU runs its
default CPU (qemu64: no XSAVE, no PMU), so its kernel takes fewer paths than vlbr's.

Measured on this machine kind (2 shared cores, main at 0425626, median of 3): vlbr 29.3 s to
the line (28.9 s to /init), QEMU TCG 2.3 s (2.2 s): ratio 12.6; vlbr retires 63 M
instructions/s (1,846,424,909 instructions, the same every boot).

Run: .venv/bin/python benchmarks/bench_linux.py [--timeout S] [--qemu-timeout S] [--repeat N]
"""

from __future__ import annotations

import os
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from figures import emit as emit_line, options, median_run, options
from vlbr.guest.linux import INIT_LINE

WORKLOAD_LINE = b"vlbr-bench-workload: first line"
WORKLOAD_C = ('#include <stdio.h>\n'
              f'int main(void) {{ puts("{WORKLOAD_LINE.decode()}"); return 0; }}\n')
QEMU = "qemu-system-x86_64"
QEMU_PACKAGE = "qemu-system-x86"
FIGURE = "linux_boot_to_workload_seconds"


class Unavailable(Exception):
    """A runner or its inputs cannot be had here; the message says why."""


@dataclass(frozen=True)
class Boot:
    seconds: float | None  # wall clock to the workload's line; None if it never appeared
    detail: str  # how the run ended
    init_seconds: float | None = None  # wall clock to the kernel's "Run /init"
    instructions: int | None = None  # vlbr only: retired over the whole run
    run_seconds: float | None = None  # vlbr only: the whole run


@dataclass(frozen=True)
class Guest:
    kernel: Path
    initrd: Path
    cmdline: str


# -- the runners ----------------------------------------------------------------------------
class Console:
    """A runner's output as it arrives, and when each of its marks first appeared."""

    MARKS = {"init": INIT_LINE, "line": WORKLOAD_LINE}

    def __init__(self):
        self.start, self.seen, self.at = time.monotonic(), bytearray(), {}

    def feed(self, data: bytes) -> None:
        self.seen.extend(data)  # a mark may straddle two pieces
        for name, text in self.MARKS.items():
            if name not in self.at and text in self.seen:
                self.at[name] = time.monotonic() - self.start

    def boot(self, detail: str, **extra) -> Boot:
        return Boot(self.at.get("line"), detail, self.at.get("init"), **extra)

    def tail(self) -> str:
        lines = self.seen.decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else "no output"


def boot_vlbr(guest: Guest, timeout: float) -> Boot:
    """vlbr's time is taken as the machine hands over console output (after each slice)."""
    from vlbr.guest.linux import boot_linux
    console = Console()
    result = boot_linux(guest.kernel.read_bytes(), guest.initrd.read_bytes(), guest.cmdline,
                        timeout, on_console=console.feed)
    return console.boot(f"{result.stop_reason}: {result.stop_detail}",
                        instructions=result.instructions, run_seconds=result.seconds)


def qemu_argv(binary: str, guest: Guest) -> list[str]:
    return [binary, "-accel", "tcg", "-m", "512", "-nographic", "-no-reboot",
            "-kernel", str(guest.kernel), "-initrd", str(guest.initrd), "-append", guest.cmdline]


def first_line_seconds(argv: list[str], timeout: float) -> Boot:
    """Run argv, reading its output as it comes; killed at the line, the time limit or EOF."""
    console = Console()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while (left := console.start + timeout - time.monotonic()) > 0:
                if not sel.select(left):
                    continue
                chunk = os.read(proc.stdout.fileno(), 1 << 16)
                if not chunk:
                    return console.boot(f"exited before the line: {console.tail()}")
                console.feed(chunk)
                if "line" in console.at:
                    return console.boot("killed at the line")
        return console.boot(f"no line within {timeout:g} s: {console.tail()}")
    finally:
        proc.kill()
        proc.wait()


def qemu_binary(install: bool) -> str:
    """QEMU's path, installing Debian's package first when it is missing."""
    from vlbr.guest.debian import PackageUnavailable, apt_install
    found = shutil.which(QEMU)
    if found or not install:
        return found or _raise(f"{QEMU} is not installed (and --no-install)")
    try:
        apt_install(QEMU_PACKAGE)
    except PackageUnavailable as err:
        _raise(f"{QEMU} is not installed and cannot be: {err}")
    return shutil.which(QEMU) or _raise(f"{QEMU_PACKAGE} installed no {QEMU}")


def _raise(reason: str):
    raise Unavailable(reason)


# -- the guest ------------------------------------------------------------------------------
def prepare_guest(where: Path) -> Guest:
    """Debian's kernel and vlbr's initramfs with the workload, as files both runners read."""
    from vlbr.errors import VlbrError
    from vlbr.guest.debian import debian_kernel
    from vlbr.guest.linux import DEFAULT_CMDLINE, compile_workload, default_initrd
    source = where / "workload.c"
    source.write_text(WORKLOAD_C)
    try:
        kernel = debian_kernel()
        initrd = default_initrd(compile_workload(source))
    except VlbrError as err:  # the package cannot be fetched, gcc cannot build
        raise Unavailable(str(err)) from None
    (where / "initrd.cpio").write_bytes(initrd)
    return Guest(kernel, where / "initrd.cpio", DEFAULT_CMDLINE)


# -- the figures ----------------------------------------------------------------------------
def emit(figure: str, value, unit: str, **extra) -> None:
    emit_line("linux", figure, value, unit, **extra)


def median_boot(run: Callable[[], Boot], repeat: int) -> Boot:
    """The boot with the median time to the line (any boot that missed it is returned at once)."""
    return median_run(run, repeat, lambda boot: boot.seconds)


def report(vlbr: Boot, qemu: Boot | str, kernel: str, repeat: int) -> None:
    """The figures; `qemu` is the reason when QEMU could not run."""
    common = {"kernel": kernel, "repeat": repeat}
    emit(FIGURE, vlbr.seconds, "s", runner="vlbr", init_seconds=vlbr.init_seconds,
         detail=vlbr.detail, **common)
    if isinstance(qemu, str):
        emit(FIGURE, None, "s", runner="qemu-tcg", skipped=qemu, **common)
    else:
        emit(FIGURE, qemu.seconds, "s", runner="qemu-tcg", init_seconds=qemu.init_seconds,
             detail=qemu.detail, **common)
    both = not isinstance(qemu, str) and None not in (vlbr.seconds, qemu.seconds)
    ratio = vlbr.seconds / qemu.seconds if both else None
    emit("linux_boot_to_workload_ratio", ratio, "ratio", runner="vlbr", vs="qemu-tcg",
         **({} if both else {"skipped": "a runner has no time"}))
    rate = round(vlbr.instructions / vlbr.run_seconds) if vlbr.run_seconds else None
    emit("linux_instructions_retired_per_second", rate, "instructions/s", runner="vlbr",
         instructions=vlbr.instructions, seconds=vlbr.run_seconds, over="the whole run")


def run(args, prepare=None, vlbr=None, qemu=None) -> int:
    """Both runners on one guest; prepare, vlbr and qemu are replaceable (the tests' fakes)."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            guest = (prepare or prepare_guest)(Path(tmp))
        except Unavailable as reason:
            emit(FIGURE, None, "s", runner="vlbr", skipped=str(reason))
            return 0
        try:
            qemu = qemu or _qemu_runner(qemu_binary(args.install), args.qemu_timeout)
            qemu_boot = median_boot(lambda: qemu(guest), args.repeat)
        except (Unavailable, OSError) as reason:  # not installable, or it cannot start
            qemu_boot = str(reason)
        vlbr_boot = median_boot(lambda: (vlbr or boot_vlbr)(guest, args.timeout), args.repeat)
        report(vlbr_boot, qemu_boot, guest.kernel.name, args.repeat)
    return 0 if vlbr_boot.seconds is not None else 1


def _qemu_runner(binary: str, timeout: float) -> Callable[[Guest], Boot]:
    return lambda guest: first_line_seconds(qemu_argv(binary, guest), timeout)


def parse(argv: list[str] | None = None):
    return options(__doc__, argv, install=True,
                   timeout=(300.0, "vlbr's wall-clock limit per boot"),
                   qemu_timeout=(120.0, "QEMU's wall-clock limit per boot"),
                   repeat=(1, "boots per runner; the median is reported"))


if __name__ == "__main__":
    sys.exit(run(parse()))
