"""Typed views of the descriptors a 64-bit CPU reads from guest memory (SDM vol. 3A 3.4.5,
6.14.1, 7.7): code/data and system segment descriptors, IDT gates and the 64-bit TSS."""

from __future__ import annotations

import struct
from dataclasses import dataclass

GATE_INTERRUPT, GATE_TRAP = 0xE, 0xF  # 64-bit gate types (SDM table 3-2, IA-32e mode)
TSS64_RSP0, TSS64_IST1 = 4, 0x24  # byte offsets of RSP0 and IST1 in the 64-bit TSS
DESCRIPTOR_SIZE, GATE_SIZE = 8, 16


@dataclass(frozen=True)
class SegmentDescriptor:
    """A GDT/LDT entry; `high` is its upper dword as read (QEMU caches exactly that)."""

    base: int
    limit: int  # in bytes: scaled by G
    type: int
    s: int  # 1 code/data, 0 system
    dpl: int
    present: int
    l: int  # 64-bit code
    db: int
    g: int
    high: int

    @classmethod
    def decode(cls, raw: bytes) -> "SegmentDescriptor":
        """8 bytes; a system descriptor (S=0) may pass 16 for its base bits 63:32."""
        low, high = struct.unpack_from("<II", raw)
        base = (low >> 16) | (high & 0xFF) << 16 | (high & 0xFF00_0000)
        limit = (low & 0xFFFF) | (high & 0xF_0000)
        s, g = (high >> 12) & 1, (high >> 23) & 1
        if not s and len(raw) >= 12:
            base |= struct.unpack_from("<I", raw, 8)[0] << 32
        return cls(base=base, limit=(limit << 12 | 0xFFF) if g else limit, type=(high >> 8) & 0xF,
                   s=s, dpl=(high >> 13) & 3, present=(high >> 15) & 1, l=(high >> 21) & 1,
                   db=(high >> 22) & 1, g=g, high=high)

    @property
    def is_code(self) -> bool:
        return bool(self.s and self.type & 0x8)

    @property
    def is_long_code(self) -> bool:
        return bool(self.present and self.is_code and self.l)


@dataclass(frozen=True)
class Gate:
    """A 16-byte IA-32e interrupt or trap gate."""

    offset: int
    selector: int
    ist: int
    type: int
    dpl: int
    present: bool

    @classmethod
    def decode(cls, raw: bytes) -> "Gate":
        lo, sel, ist, attr, mid, hi, _ = struct.unpack("<HHBBHII", raw[:GATE_SIZE])
        return cls(lo | mid << 16 | hi << 32, sel, ist & 7, attr & 0xF, (attr >> 5) & 3,
                   bool(attr & 0x80))

    def encode(self) -> bytes:
        attr = self.type | self.dpl << 5 | (0x80 if self.present else 0)
        return struct.pack("<HHBBHII", self.offset & 0xFFFF, self.selector, self.ist, attr,
                           self.offset >> 16 & 0xFFFF, self.offset >> 32, 0)

    @property
    def usable(self) -> bool:
        return self.present and self.interrupt_or_trap

    @property
    def interrupt_or_trap(self) -> bool:
        """An IA-32e interrupt or trap gate type; any other type #GPs (SDM INT n)."""
        return self.type in (GATE_INTERRUPT, GATE_TRAP)


def tss_stack_slot(tss_base: int, *, cpl: int | None = None, ist: int | None = None) -> int:
    """Where the 64-bit TSS keeps RSP<cpl> or IST<ist> (1..7)."""
    if ist:
        return tss_base + TSS64_IST1 + 8 * (ist - 1)
    return tss_base + TSS64_RSP0 + 8 * (cpl or 0)
