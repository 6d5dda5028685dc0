"""The peer for emulator speed: QEMU TCG (Debian's qemu-system-x86) running the very loop of
bench_software.py, as a multiboot kernel, against vlbr's software backend (and unicorn with no
hooks, the emulator under it). One JSON line per figure.

The loop's bytes are bench_software's (`call f; dec ecx; jnz`, then the ABI's exit port) from
just after its LBR_CTL write (QEMU's CPU has no Arch LBR); multiboot_loop.S sets up the Guest
ABI's page tables and GDT and enters long mode, and QEMU's isa-debug-exit device at the ABI's
exit port ends the run. QEMU's time is the difference between a run of the loop and a run of
one iteration (its start-up and firmware cancel out), the median of --repeat pairs.

Run: .venv/bin/python benchmarks/bench_qemu_peer.py [--iterations N] [--qemu-iterations N]
"""

from __future__ import annotations

import dataclasses
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_linux import Unavailable, qemu_binary
from bench_software import (BRANCHES_PER_ITERATION, RECORD_ALL, backend, loop_guest,
                            unhooked_unicorn)
from figures import emit as emit_line, options

from vlbr.arch import x86
from vlbr.backends import layout
from vlbr.backends.base import IMAGE_BASE, PORT_EXIT

STUB = Path(__file__).with_name("multiboot_loop.S")
STUB_ADDRESS = 0x200000  # above the guest image, inside the ABI's identity map
LBR_CTL_WRITE = 17  # bench_software's loop starts with 3 x `mov r32, imm32` and WRMSR
QEMU_EXIT_STATUS = 1  # isa-debug-exit: the value 0 written makes QEMU exit (0 << 1) | 1
QEMU_TIMEOUT = 300


def low_memory_blob() -> tuple[int, bytes]:
    """The ABI's low memory for one vCPU as one span: (start, bytes)."""
    writes = layout.low_memory(1)
    start = min(a for a, _ in writes)
    blob = bytearray(max(a + len(d) for a, d in writes) - start)
    for address, data in writes:
        blob[address - start:address - start + len(data)] = data
    return start, bytes(blob)


def defines() -> dict[str, int]:
    lowmem, _ = low_memory_blob()
    return {"LOWMEM_ADDR": lowmem, "IMAGE_ADDR": IMAGE_BASE, "PML4_ADDR": layout.PML4_ADDR,
            "CR4_PAE": x86.CR4_PAE, "MSR_EFER": x86.MSR_EFER, "EFER_LME": x86.EFER_LME,
            "CR0_PE": x86.CR0_PE, "CR0_PG": x86.CR0_PG, "SEL_CODE": layout.SEL_KERNEL_CODE,
            "SEL_DATA": layout.SEL_KERNEL_DATA, "GDT_BASE": layout.gdt_address(0),
            "GDT_LIMIT": layout.GDT_LIMIT, "STACK_TOP": layout.stack_top(0),
            "ENTRY": IMAGE_BASE + LBR_CTL_WRITE}


def multiboot_kernel(where: Path, iterations: int) -> Path:
    """bench_software's loop of `iterations` as a multiboot ELF, built with gcc and ld."""
    image, _ = loop_guest(iterations, 0)
    assert image.data[LBR_CTL_WRITE - 2:LBR_CTL_WRITE] == b"\x0f\x30"  # the loop follows WRMSR
    (where / "image.bin").write_bytes(image.data)
    (where / "lowmem.bin").write_bytes(low_memory_blob()[1])
    gcc, ld = shutil.which("gcc"), shutil.which("ld")
    if gcc is None or ld is None:
        raise Unavailable("gcc and ld (binutils) are needed to build the multiboot kernel")
    obj, kernel = where / "stub.o", where / f"loop-{iterations}.elf"
    flags = [f"-D{name}={value:#x}" for name, value in defines().items()]
    _tool([gcc, "-m32", "-c", *flags, f"-Wa,-I,{where}", "-o", str(obj), str(STUB)])
    _tool([ld, "-m", "elf_i386", "-nostdlib", "-static", f"-Ttext={STUB_ADDRESS:#x}",
           "-e", "_start", "-o", str(kernel), str(obj)])
    return kernel


def _tool(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise Unavailable(f"{Path(argv[0]).name} cannot build the multiboot kernel: {last}")


def qemu_seconds(binary: str, kernel: Path) -> float:
    """One QEMU run of the kernel to its exit port, wall clock."""
    argv = [binary, "-accel", "tcg", "-m", "64", "-display", "none", "-no-reboot",
            "-serial", "none", "-monitor", "none", "-kernel", str(kernel),
            "-device", f"isa-debug-exit,iobase={PORT_EXIT:#x},iosize=4"]
    start = time.perf_counter()
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=QEMU_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise Unavailable(f"QEMU did not reach the exit port within {QEMU_TIMEOUT} s") from None
    seconds = time.perf_counter() - start
    if done.returncode != QEMU_EXIT_STATUS:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise Unavailable(f"QEMU exited {done.returncode}, not at the exit port: {last}")
    return seconds


def qemu_loop_seconds(binary: str, where: Path, iterations: int, repeat: int) -> float:
    """The loop's own time under QEMU: a run minus a one-iteration run, the median pair."""
    full, empty = multiboot_kernel(where, iterations), multiboot_kernel(where, 1)
    pairs = [qemu_seconds(binary, full) - qemu_seconds(binary, empty) for _ in range(repeat)]
    return statistics.median(pairs)


def software_seconds(iterations: int, lbr_ctl: int) -> float:
    from vlbr.backends.registry import machine_for
    machine = machine_for("software", max_steps=50 * iterations)
    image, _ = loop_guest(iterations, lbr_ctl)
    return backend(image, machine)[0]


def branches(iterations: int) -> int:
    return BRANCHES_PER_ITERATION * iterations - 1  # the last jnz falls through


def emit(figure: str, value, unit: str, **extra) -> None:
    emit_line("qemu_peer", figure, value, unit, **extra)


def run(args) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            binary = qemu_binary(args.install)
            qemu = qemu_loop_seconds(binary, Path(tmp), args.qemu_iterations, args.repeat)
        except Unavailable as reason:
            emit("qemu_tcg_branches_per_second", None, "branches/s", skipped=str(reason))
            return 0
    if qemu <= 0:
        emit("qemu_tcg_branches_per_second", None, "branches/s",
             skipped=f"the loop took no measurable time ({qemu:.4f} s): raise --qemu-iterations")
        return 1
    qemu_rate = branches(args.qemu_iterations) / qemu
    emit("qemu_tcg_branches_per_second", round(qemu_rate), "branches/s",
         iterations=args.qemu_iterations, seconds=qemu, repeat=args.repeat)
    loop = args.iterations
    peers = (("unhooked_unicorn_vs_qemu_tcg", lambda: unhooked_unicorn(*loop_guest(loop, 0))),
             ("software_lbren_clear_vs_qemu_tcg", lambda: software_seconds(loop, 0)),
             ("software_recording_native_vs_qemu_tcg",
              lambda: software_seconds(loop, RECORD_ALL)))
    for figure, seconds_of in peers:
        rate = branches(args.iterations) / min(seconds_of() for _ in range(args.repeat))
        emit(figure, rate / qemu_rate, "ratio", vs="qemu_tcg",
             branches_per_second=round(rate), iterations=args.iterations)
    return 0


def parse(argv: list[str] | None = None):
    return options(__doc__, argv, install=True,
                   iterations=(2_000_000, "the software backend's loop iterations"),
                   qemu_iterations=(50_000_000, "QEMU's loop iterations"),
                   repeat=(3, "runs per figure"))


if __name__ == "__main__":
    sys.exit(run(parse()))
