"""The XSAVE area: component offsets and sizes (standard and compacted), the header, and Arch LBR state component 15."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from .cpuid import MASK32, CpuidTable
from .leaves import xsave_component, xsave_extended, xsave_main

LEGACY_AREA_SIZE = 512
HEADER_OFFSET = 512
HEADER_SIZE = 64
EXTENDED_AREA_START = HEADER_OFFSET + HEADER_SIZE  # 576
XCOMP_BV_COMPACTED = 1 << 63
ARCH_LBR_COMPONENT = 15
XSS_ARCH_LBR = 1 << ARCH_LBR_COMPONENT
ARCH_LBR_HEADER_SIZE = 40  # LBR_CTL, LBR_DEPTH, LER_FROM, LER_TO, LER_INFO
ARCH_LBR_RECORD_SIZE = 24  # FROM, TO, INFO


def arch_lbr_state_size(depth: int) -> int:
    """Size of component 15 for a depth: 40 + 24 * depth (808 at depth 32)."""
    return ARCH_LBR_HEADER_SIZE + ARCH_LBR_RECORD_SIZE * depth


def arch_lbr_depth_for_size(size: int) -> int | None:
    """The depth a component-15 size implies, or None when no depth fits."""
    rest = size - ARCH_LBR_HEADER_SIZE
    if rest <= 0 or rest % ARCH_LBR_RECORD_SIZE:
        return None
    return rest // ARCH_LBR_RECORD_SIZE


class XsaveLayoutError(ValueError):
    """The CPUID table does not enumerate a component the layout needs."""


class XsaveAreaTooLarge(XsaveLayoutError):
    """CPUID's offsets and sizes end a component past what the 32-bit size fields
    CPUID.(0xD,0):EBX/ECX and CPUID.(0xD,1):EBX can report; no CPU answers so."""

    def __init__(self, component: int, end: int):
        self.component = component
        super().__init__(f"component {component} ends at byte {end:#x}, past the 32-bit "
                         f"XSAVE area size fields")


def _bits(mask: int) -> list[int]:
    return [i for i in range(64) if mask >> i & 1]


@dataclass(frozen=True)
class XsaveLayout:
    """Where each component of XCR0|XSS lives in an XSAVE area, as XSAVES/XSAVEC lay it out."""

    mask: int
    compacted: bool
    offsets: dict[int, int] = field(default_factory=dict)
    sizes: dict[int, int] = field(default_factory=dict)
    size: int = EXTENDED_AREA_START

    @classmethod
    def for_mask(cls, table: CpuidTable, mask: int, compacted: bool = True) -> "XsaveLayout":
        """Mirror KVM's xstate_required_size(): components 0 and 1 live in the legacy area."""
        offsets: dict[int, int] = {}
        sizes: dict[int, int] = {}
        end = EXTENDED_AREA_START
        for index in _bits(mask):
            if index < 2:
                continue
            comp = xsave_component(table, index)
            if comp is None:
                raise XsaveLayoutError(f"CPUID.(0xD,{index:#x}) is missing for component {index}")
            if compacted:
                offset = (end + 63) & ~63 if comp.align64 else end
            else:
                offset = comp.offset
            if offset + comp.size > MASK32:
                raise XsaveAreaTooLarge(index, offset + comp.size)
            offsets[index], sizes[index] = offset, comp.size
            end = max(end, offset + comp.size) if not compacted else offset + comp.size
        return cls(mask, compacted, offsets, sizes, end)

    @classmethod
    def check_fits(cls, table: CpuidTable) -> None:
        """XsaveAreaTooLarge when the enumerated XCR0|XSS components overflow either format."""
        mask = xsave_main(table).xcr0_supported | xsave_extended(table).xss_supported
        present = sum(1 << i for i in _bits(mask) if i < 2 or xsave_component(table, i) is not None)
        for compacted in (False, True):
            cls.for_mask(table, present, compacted)

    def offset_of(self, index: int) -> int:
        try:
            return self.offsets[index]
        except KeyError:
            raise XsaveLayoutError(f"component {index} is not in mask {self.mask:#x}") from None


@dataclass(frozen=True, slots=True)
class XsaveHeader:
    """The 64-byte XSAVE header at offset 512."""

    xstate_bv: int
    xcomp_bv: int
    reserved: bytes = bytes(48)

    FORMAT = struct.Struct("<QQ48s")

    @classmethod
    def unpack(cls, area: bytes) -> "XsaveHeader":
        if len(area) < EXTENDED_AREA_START:
            raise ValueError(f"XSAVE area of {len(area)} bytes has no header (needs {EXTENDED_AREA_START})")
        return cls(*cls.FORMAT.unpack_from(area, HEADER_OFFSET))

    def pack(self) -> bytes:
        return self.FORMAT.pack(self.xstate_bv, self.xcomp_bv, self.reserved)

    @property
    def compacted(self) -> bool:
        return bool(self.xcomp_bv & XCOMP_BV_COMPACTED)


@dataclass(frozen=True, slots=True)
class ArchLbrXstate:
    """State component 15 as stored by XSAVES: all u64, records newest first."""

    lbr_ctl: int
    lbr_depth: int
    ler_from: int
    ler_to: int
    ler_info: int
    records: tuple[tuple[int, int, int], ...]  # (FROM, TO, INFO) per record index

    HEADER = struct.Struct("<5Q")
    RECORD = struct.Struct("<3Q")

    @property
    def size(self) -> int:
        return arch_lbr_state_size(len(self.records))

    def pack(self) -> bytes:
        out = bytearray(self.HEADER.pack(self.lbr_ctl, self.lbr_depth, self.ler_from,
                                         self.ler_to, self.ler_info))
        for rec in self.records:
            out += self.RECORD.pack(*rec)
        return bytes(out)

    @classmethod
    def unpack(cls, data: bytes, depth: int) -> "ArchLbrXstate":
        need = arch_lbr_state_size(depth)
        if len(data) < need:
            raise ValueError(f"Arch LBR state of {len(data)} bytes is shorter than {need} for depth {depth}")
        head = cls.HEADER.unpack_from(data, 0)
        records = tuple(cls.RECORD.unpack_from(data, ARCH_LBR_HEADER_SIZE + i * ARCH_LBR_RECORD_SIZE)
                        for i in range(depth))
        return cls(*head, records=records)
