"""The 64-bit boot protocol layout (Documentation/arch/x86/boot.rst): with Debian's real
kernel, every piece lands in RAM without overlap, the entry is identity-mapped long-mode code
and the zero page points at the command line and initrd."""

from __future__ import annotations

import struct

import pytest

from vlbr.backends.layout import decode_descriptor
from vlbr.backends.pc.boot_params import read_e820
from vlbr.backends.pc.loader import (BOOT_CS, BOOT_DS, BootLayoutError, e820_map, plan)

RAM = 512 << 20


@pytest.fixture(scope="module")
def boot(debian_image):
    return plan(debian_image, b"initrd" * 1000, "console=ttyS0 acpi=off", RAM)


def read(boot, address: int, size: int) -> bytes:
    for at, data in boot.writes:
        if at <= address and address + size <= at + len(data):
            return data[address - at:address - at + size]
    raise AssertionError(f"nothing written at {address:#x}")


def test_writes_fit_ram_and_never_overlap(boot):
    spans = sorted((at, at + len(data)) for at, data in boot.writes)
    assert all(end <= RAM for _, end in spans)
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:]))


def test_entry_is_identity_mapped_long_mode_code(boot):
    entry = boot.entry
    pml4e = struct.unpack("<Q", read(boot, boot.cr3 + 8 * (entry >> 39 & 511), 8))[0]
    pdpte = struct.unpack("<Q", read(boot, (pml4e & ~0xFFF) + 8 * (entry >> 30 & 511), 8))[0]
    pde = struct.unpack("<Q", read(boot, (pdpte & ~0xFFF) + 8 * (entry >> 21 & 511), 8))[0]
    assert pde & 0x81 == 0x81 and (pde & ~0x1FFFFF & ((1 << 52) - 1)) == entry & ~0x1FFFFF
    gdt = read(boot, boot.gdt[0], boot.gdt[1] + 1)
    cs, ds = decode_descriptor(gdt, BOOT_CS), decode_descriptor(gdt, BOOT_DS)
    assert cs.l == 1 and cs.present and cs.type & 0x8  # 64-bit code
    assert ds.s == 1 and not ds.type & 0x8 and ds.type & 0x2  # writable data
    assert read(boot, entry, 4) != bytes(4)  # startup_64's code is there


def test_zero_page_points_at_cmdline_initrd_and_e820(boot):
    page = read(boot, boot.rsi, 4096)
    cmdline_at = struct.unpack_from("<I", page, 0x228)[0]
    assert read(boot, cmdline_at, 23) == b"console=ttyS0 acpi=off\0"
    initrd_at, initrd_size = struct.unpack_from("<II", page, 0x218)
    assert read(boot, initrd_at, initrd_size) == b"initrd" * 1000
    assert initrd_at % 4096 == 0
    assert read_e820(page) == e820_map(RAM)


def test_too_little_ram_is_an_error(debian_image):
    with pytest.raises(BootLayoutError, match="MiB of RAM"):
        plan(debian_image, bytes(1 << 20), "", 64 << 20)
