"""The Guest ABI's machine set-up as plain data: low-memory bytes and each vCPU's entry state.

Both backends build the same machine from this (docs/design.md, "Guest ABI"): identity-mapped
8 MiB with 2 MiB user-accessible pages, a GDT and a 64-bit TSS per vCPU, and the long-mode
entry registers. Segment hidden state is decoded from the very GDT bytes the guest sees, so
what a backend loads into its segment caches is what a reload from the GDT would give.
"""

from __future__ import annotations

from dataclasses import dataclass

from vlbr.arch.x86 import (CR0_ET, CR0_MP, CR0_NE, CR0_PE, CR0_PG, CR0_WP, CR4_OSFXSR,
                           CR4_OSXMMEXCPT, CR4_OSXSAVE, CR4_PAE, EFER_LMA, EFER_LME, EFER_SCE,
                           PTE_P, PTE_PS, PTE_RW, PTE_US, XFEATURES_LEGACY)
from vlbr.backends.base import IMAGE_BASE, PORT_CONSOLE, PORT_EXIT, PORT_YIELD, RAM_SIZE
from vlbr.x86.descriptors import SegmentDescriptor

PAGE_2M = 2 << 20
PML4_ADDR, PDPT_ADDR, PD_ADDR = 0x1000, 0x2000, 0x3000
GDT_BASE, TSS_BASE, PER_VCPU_STRIDE = 0x4000, 0x4100, 0x200
STACK_TOP, STACK_STRIDE = 0x700000, 0x10000
MAX_VCPUS = 32  # stacks of 64 KiB below 0x700000 stay above the image area's first 2 MiB

SEL_NULL = 0x00
SEL_KERNEL_CODE = 0x08
SEL_KERNEL_DATA = 0x10
SEL_USER_DATA = 0x1B  # GDT slot 3, RPL 3
SEL_USER_CODE = 0x23  # GDT slot 4, RPL 3
SEL_TSS = 0x28  # slots 5-6 (a 16-byte system descriptor)
GDT_ENTRIES = 7
GDT_LIMIT = GDT_ENTRIES * 8 - 1

# Control registers at entry (Intel SDM vol. 3A 2.5, 2.2.1).
ENTRY_CR0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG
ENTRY_CR4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT | CR4_OSXSAVE
ENTRY_EFER = EFER_LME | EFER_LMA | EFER_SCE
ENTRY_XCR0 = XFEATURES_LEGACY
ENTRY_RFLAGS = 0x2

# Page-table entry bits.

# The TSS: 104 bytes, then an I/O permission bitmap for ports 0-255 and its 0xFF terminator.
# The bitmap lets ring 3 use the ABI's ports: the console byte, the exit status (`out dx, eax`
# needs ports 0xF4-0xF7 all open, SDM vol. 1 19.5.2) and yield; every other port #GPs.
TSS_SIZE = 104
IOPB_OFFSET = TSS_SIZE
IOPB_PORTS = 256
USER_PORTS = (PORT_CONSOLE, *range(PORT_EXIT, PORT_EXIT + 4), PORT_YIELD)
TSS_LIMIT = TSS_SIZE + IOPB_PORTS // 8 + 1 - 1  # the terminator byte is inside the limit
TSS_TYPE_AVAILABLE, TSS_TYPE_BUSY = 0x9, 0xB


@dataclass(frozen=True)
class Segment:
    """A segment register with its hidden part, field names as in struct kvm_segment."""

    selector: int
    base: int
    limit: int  # in bytes (already scaled by G)
    type: int  # the 4-bit descriptor type
    present: int
    dpl: int
    db: int
    s: int  # 1 code/data, 0 system
    l: int  # 64-bit code
    g: int
    unusable: int = 0

    @property
    def access_rights(self) -> int:
        """VMX/QEMU-style attribute word: type | S<<4 | DPL<<5 | P<<7 | L<<13 | DB<<14 | G<<15."""
        return (self.type | self.s << 4 | self.dpl << 5 | self.present << 7 | self.l << 13
                | self.db << 14 | self.g << 15 | self.unusable << 16)


@dataclass(frozen=True)
class DescriptorTable:
    base: int
    limit: int


@dataclass(frozen=True)
class VcpuEntry:
    """Everything a backend loads into vCPU `index` before its first instruction."""

    index: int
    rip: int
    rsp: int
    rdi: int
    rsi: int
    rflags: int
    cr0: int
    cr3: int
    cr4: int
    efer: int
    xcr0: int
    gdt: DescriptorTable
    idt: DescriptorTable
    cs: Segment
    ds: Segment
    es: Segment
    fs: Segment
    gs: Segment
    ss: Segment
    tr: Segment
    ldt: Segment

    @property
    def kernel_stack_top(self) -> int:
        return self.rsp


def gdt_address(n: int) -> int:
    _check_index(n)
    return GDT_BASE + n * PER_VCPU_STRIDE


def tss_address(n: int) -> int:
    _check_index(n)
    return TSS_BASE + n * PER_VCPU_STRIDE


def stack_top(n: int) -> int:
    _check_index(n)
    return STACK_TOP - n * STACK_STRIDE


def _check_index(n: int) -> None:
    if not 0 <= n < MAX_VCPUS:
        raise ValueError(f"vCPU index {n} outside 0..{MAX_VCPUS - 1}")


def flat_descriptor(type_: int, dpl: int, long: bool) -> int:
    """A flat code/data descriptor: base 0, limit 0xFFFFF pages, accessed bit already set."""
    access = 0x80 | dpl << 5 | 0x10 | type_  # P | DPL | S | type
    flags = 0x8 | (0x2 if long else 0x4)  # G | (L for 64-bit code, else D/B)
    return 0xFFFF | access << 40 | 0xF << 48 | flags << 52


def _system_descriptor(base: int, limit: int, type_: int) -> bytes:
    """A 16-byte long-mode system descriptor (TSS)."""
    low = ((limit & 0xFFFF) | (base & 0xFFFFFF) << 16 | (0x80 | type_) << 40
           | ((limit >> 16) & 0xF) << 48 | ((base >> 24) & 0xFF) << 56)
    return low.to_bytes(8, "little") + (base >> 32).to_bytes(8, "little")


def gdt_bytes(n: int) -> bytes:
    """vCPU n's GDT: null, kernel code64, kernel data, user data, user code64, busy TSS."""
    descriptors = [
        0,
        flat_descriptor(0xB, 0, long=True),   # 0x08: execute/read, accessed
        flat_descriptor(0x3, 0, long=False),  # 0x10: read/write, accessed
        flat_descriptor(0x3, 3, long=False),  # 0x18 (0x1B)
        flat_descriptor(0xB, 3, long=True),   # 0x20 (0x23)
    ]
    raw = b"".join(d.to_bytes(8, "little") for d in descriptors)
    # Busy: the entry state has TR loaded, as after LTR (VM entry requires a busy TSS type).
    return raw + _system_descriptor(tss_address(n), TSS_LIMIT, TSS_TYPE_BUSY)


def tss_bytes(n: int) -> bytes:
    """vCPU n's 64-bit TSS: RSP0 = its kernel stack top, I/O bitmap opening the ABI ports."""
    tss = bytearray(TSS_SIZE + IOPB_PORTS // 8 + 1)
    tss[4:12] = stack_top(n).to_bytes(8, "little")  # RSP0
    tss[102:104] = IOPB_OFFSET.to_bytes(2, "little")
    bitmap = bytearray(b"\xff" * (IOPB_PORTS // 8))  # a set bit denies the port
    for port in USER_PORTS:
        bitmap[port // 8] &= ~(1 << (port % 8)) & 0xFF
    tss[IOPB_OFFSET:IOPB_OFFSET + len(bitmap)] = bitmap
    tss[-1] = 0xFF
    return bytes(tss)


def page_tables() -> list[tuple[int, bytes]]:
    """(address, bytes) of PML4, PDPT and PD: RAM identity-mapped with 2 MiB U/S, R/W pages."""
    flags = PTE_P | PTE_RW | PTE_US
    pml4 = (PDPT_ADDR | flags).to_bytes(8, "little")
    pdpt = (PD_ADDR | flags).to_bytes(8, "little")
    pd = b"".join((i * PAGE_2M | flags | PTE_PS).to_bytes(8, "little")
                  for i in range(RAM_SIZE // PAGE_2M))
    return [(PML4_ADDR, pml4), (PDPT_ADDR, pdpt), (PD_ADDR, pd)]


def low_memory(vcpus: int) -> list[tuple[int, bytes]]:
    """Every (address, bytes) write of the ABI's low memory for `vcpus` vCPUs."""
    if not 1 <= vcpus <= MAX_VCPUS:
        raise ValueError(f"{vcpus} vCPUs: the Guest ABI lays out 1..{MAX_VCPUS}")
    writes = page_tables()
    for n in range(vcpus):
        writes.append((gdt_address(n), gdt_bytes(n)))
        writes.append((tss_address(n), tss_bytes(n)))
    return writes


def write_low_memory(memory, vcpus: int) -> None:
    """Apply low_memory() to a writable buffer indexed by guest-physical address."""
    for address, data in low_memory(vcpus):
        memory[address:address + len(data)] = data


def decode_descriptor(gdt: bytes, selector: int) -> Segment:
    """The hidden segment state that loading `selector` from `gdt` produces (SDM 3.4.5)."""
    slot = selector & ~7
    d = SegmentDescriptor.decode(gdt[slot:slot + 16])  # system descriptors are 16 bytes
    return Segment(selector=selector, base=d.base, limit=d.limit, type=d.type,
                   present=d.present, dpl=d.dpl, db=d.db, s=d.s, l=d.l, g=d.g)


def entry_state(n: int, vcpus: int, entry: int) -> VcpuEntry:
    """vCPU n's registers at entry: CPL0 long mode at `entry`, RDI = n, RSI = vcpus."""
    if not 0 <= n < vcpus:
        raise ValueError(f"vCPU index {n} outside 0..{vcpus - 1}")
    gdt = gdt_bytes(n)
    data = decode_descriptor(gdt, SEL_KERNEL_DATA)
    return VcpuEntry(
        index=n, rip=entry, rsp=stack_top(n), rdi=n, rsi=vcpus, rflags=ENTRY_RFLAGS,
        cr0=ENTRY_CR0, cr3=PML4_ADDR, cr4=ENTRY_CR4, efer=ENTRY_EFER, xcr0=ENTRY_XCR0,
        gdt=DescriptorTable(gdt_address(n), GDT_LIMIT), idt=DescriptorTable(0, 0),
        cs=decode_descriptor(gdt, SEL_KERNEL_CODE), ds=data, es=data, fs=data, gs=data, ss=data,
        tr=decode_descriptor(gdt, SEL_TSS),
        ldt=Segment(selector=0, base=0, limit=0, type=0x2, present=0, dpl=0, db=0, s=0, l=0,
                    g=0, unusable=1),
    )


__all__ = [
    "IMAGE_BASE", "RAM_SIZE", "Segment", "DescriptorTable", "VcpuEntry", "entry_state",
    "low_memory", "write_low_memory", "gdt_bytes", "tss_bytes", "page_tables",
    "decode_descriptor", "gdt_address", "tss_address", "stack_top",
]
