"""Where a Linux guest's pieces go in RAM for the 64-bit boot protocol
(Documentation/arch/x86/boot.rst, "64-bit Boot Protocol"), and the CPU state at the entry:
long mode, an identity map of low RAM, __BOOT_CS/__BOOT_DS flat, RSI = the zero page."""

from __future__ import annotations

from dataclasses import dataclass

from vlbr.arch.x86 import (CR0_ET, CR0_PE, CR0_PG, CR4_PAE, EFER_LMA, EFER_LME, PTE_P,
                           PTE_PS, PTE_RW)
from vlbr.backends.layout import flat_descriptor

from .boot_params import E820_RAM, E820_RESERVED, E820Entry, zero_page
from .bzimage import segments, setup_header, vmlinux

PAGE, PAGE_2M, GIB = 0x1000, 0x200000, 1 << 30
GDT_AT, ZERO_PAGE_AT, PML4_AT, PDPT_AT, PD_AT = 0x1000, 0x7000, 0x9000, 0xA000, 0xB000
CMDLINE_AT = 0x20000
BOOT_CS, BOOT_DS = 0x10, 0x18  # boot.rst: the 64-bit entry's selectors
IDENTITY_GIB = 4  # PDs at PD_AT.. map the first 4 GiB with 2 MiB pages
LOW_RAM_END, BIOS_END = 0x9FC00, 0x100000  # the PC's conventional memory and its ROM hole
INITRD_ADDR_MAX_AT = 0x22C - 0x1F1  # in SetupHeader.raw


class BootLayoutError(ValueError):
    """The kernel, initrd and command line do not fit the RAM given."""


@dataclass(frozen=True)
class BootPlan:
    writes: list[tuple[int, bytes]]  # (guest-physical address, bytes)
    entry: int
    rsi: int
    cr0: int = CR0_PE | CR0_ET | CR0_PG
    cr3: int = PML4_AT
    cr4: int = CR4_PAE
    efer: int = EFER_LME | EFER_LMA
    gdt: tuple[int, int] = (GDT_AT, 4 * 8 - 1)
    cs: int = BOOT_CS
    ds: int = BOOT_DS
    kernel: bytes = b""  # the vmlinux ELF (the machine finds the sites it traps in its text)


def e820_map(ram_size: int) -> list[E820Entry]:
    return [E820Entry(0, LOW_RAM_END, E820_RAM),
            E820Entry(LOW_RAM_END, BIOS_END - LOW_RAM_END, E820_RESERVED),
            E820Entry(BIOS_END, ram_size - BIOS_END, E820_RAM)]


def plan(image: bytes, initrd: bytes, cmdline: str, ram_size: int) -> BootPlan:
    """Every write that puts kernel, initrd, command line and boot structures in RAM."""
    header = setup_header(image)
    elf = vmlinux(image)
    entry, loads = segments(elf)
    kernel_end = max(s.paddr + s.memsz for s in loads)
    line = cmdline.encode() + b"\0"
    if header.cmdline_size and len(line) - 1 > header.cmdline_size:
        raise BootLayoutError(f"command line of {len(line) - 1} bytes; the kernel takes "
                              f"{header.cmdline_size}")
    limit = min(ram_size, int.from_bytes(header.raw[INITRD_ADDR_MAX_AT:INITRD_ADDR_MAX_AT + 4],
                                         "little") + 1 or ram_size, IDENTITY_GIB * GIB)
    initrd_at = (limit - len(initrd)) & ~(PAGE - 1)
    if initrd_at < entry + header.init_size or kernel_end > ram_size:
        raise BootLayoutError(f"{ram_size >> 20} MiB of RAM cannot hold the kernel "
                              f"({header.init_size >> 20} MiB from {entry:#x}) and an initrd "
                              f"of {len(initrd) >> 20} MiB")
    writes = [(s.paddr, s.data + bytes(s.memsz - len(s.data))) for s in loads]
    writes += [*boot_structures(), (CMDLINE_AT, line), (initrd_at, initrd),
               (ZERO_PAGE_AT, zero_page(header, CMDLINE_AT, initrd_at, len(initrd),
                                        e820_map(ram_size)))]
    return BootPlan(writes=writes, entry=entry, rsi=ZERO_PAGE_AT, kernel=elf)


def boot_structures() -> list[tuple[int, bytes]]:
    """The GDT and identity page tables the 64-bit entry state (BootPlan's defaults) uses."""
    return [(GDT_AT, _gdt()), *_page_tables()]


def _gdt() -> bytes:
    descriptors = [0, 0, flat_descriptor(0xB, 0, long=True), flat_descriptor(0x3, 0, long=False)]
    return b"".join(d.to_bytes(8, "little") for d in descriptors)


def _page_tables() -> list[tuple[int, bytes]]:
    flags = PTE_P | PTE_RW
    pml4 = (PDPT_AT | flags).to_bytes(8, "little")
    pdpt = b"".join((PD_AT + i * PAGE | flags).to_bytes(8, "little") for i in range(IDENTITY_GIB))
    pds = b"".join((i * PAGE_2M | flags | PTE_PS).to_bytes(8, "little")
                   for i in range(IDENTITY_GIB * GIB // PAGE_2M))
    return [(PML4_AT, pml4), (PDPT_AT, pdpt), (PD_AT, pds)]
