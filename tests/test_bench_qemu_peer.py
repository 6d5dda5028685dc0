"""benchmarks/bench_qemu_peer.py: the multiboot kernel of bench_software's loop, built with
gcc and ld and run on QEMU TCG to the Guest ABI's exit port (Debian's qemu-system-x86 is
installed when missing; the QEMU tests skip with the reason where it cannot be). No timing
assertions."""

from __future__ import annotations

import json
import shutil
import struct

import pytest
from benchmark_module import benchmark_module
from elftools.elf.elffile import ELFFile

MULTIBOOT_MAGIC = 0x1BADB002  # Multiboot Specification 0.6.96, 3.1.1
MULTIBOOT_SEARCH = 8192  # the header lies in the first 8 KiB of the file, 4-byte aligned


@pytest.fixture(scope="module")
def bench():
    with benchmark_module("bench_qemu_peer") as module:
        yield module


@pytest.fixture(scope="module")
def qemu(bench):
    try:
        return bench.qemu_binary(install=True)
    except bench.Unavailable as reason:
        pytest.skip(f"QEMU cannot be had here: {reason}")


@pytest.fixture
def kernel(bench, tmp_path):
    if shutil.which("gcc") is None or shutil.which("ld") is None:
        pytest.skip("gcc and binutils are not installed (make test installs them)")
    return bench.multiboot_kernel(tmp_path, 1000)


def test_the_kernel_is_a_multiboot_elf32_carrying_the_loop(bench, kernel):
    raw = kernel.read_bytes()
    offsets = [o for o in range(0, MULTIBOOT_SEARCH, 4)
               if struct.unpack_from("<I", raw, o)[0] == MULTIBOOT_MAGIC]
    assert offsets, "no multiboot header in the first 8 KiB"
    magic, flags, checksum = struct.unpack_from("<3I", raw, offsets[0])
    assert (magic + flags + checksum) & 0xFFFFFFFF == 0
    with kernel.open("rb") as f:
        elf = ELFFile(f)
        assert elf.elfclass == 32 and elf["e_machine"] == "EM_386"
        assert elf["e_entry"] >= bench.STUB_ADDRESS
    image, _ = bench.loop_guest(1000, 0)
    assert image.data in raw  # bench_software's very bytes, copied into place at boot


def test_qemu_runs_the_loop_to_the_exit_port(bench, qemu, kernel):
    assert bench.qemu_seconds(qemu, kernel) > 0


def test_a_kernel_that_never_reaches_the_exit_port_is_reported(bench, qemu, tmp_path,
                                                               monkeypatch):
    broken = dict(bench.defines(), ENTRY=1 << 63)  # non-canonical: #GP, no IDT: triple fault
    monkeypatch.setattr(bench, "defines", lambda: broken)
    with pytest.raises(bench.Unavailable, match="not at the exit port"):
        bench.qemu_seconds(qemu, bench.multiboot_kernel(tmp_path, 1000))


def test_without_qemu_the_one_line_says_why(bench, capsys, monkeypatch):
    def no_qemu(install):
        raise bench.Unavailable("qemu-system-x86_64 is not installed (and --no-install)")
    monkeypatch.setattr(bench, "qemu_binary", no_qemu)
    assert bench.run(bench.parse(["--no-install"])) == 0
    (only,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert only["value"] is None and "--no-install" in only["skipped"]
