"""Typed views of the CPUID leaves Arch LBR virtualization depends on: 0x7, 0xA, 0xD, 0x1C.

Each view decodes from Registers and encodes back exactly (reserved bits kept)."""

from __future__ import annotations

from dataclasses import dataclass

from .bits import bit, field, put
from .cpuid import CpuidTable, Registers

ARCH_LBR_LEAF = 0x1C
LBR_DEPTH_STEP = 8
LBR_MAX_DEPTH = 64


@dataclass(frozen=True, slots=True)
class StructuredFeatures:
    """CPUID.(7,0): the feature bits the Arch LBR policy looks at."""

    max_subleaf: int
    ebx: int
    ecx: int
    edx: int

    ARCH_LBR_BIT = 19  # EDX
    HYBRID_BIT = 15  # EDX
    IBT_BIT = 20  # EDX (CET supervisor state also lives in XSS)

    @classmethod
    def decode(cls, r: Registers) -> "StructuredFeatures":
        return cls(r.eax, r.ebx, r.ecx, r.edx)

    def encode(self) -> Registers:
        return Registers(self.max_subleaf, self.ebx, self.ecx, self.edx)

    @property
    def arch_lbr(self) -> bool:
        return bit(self.edx, self.ARCH_LBR_BIT)

    @property
    def hybrid(self) -> bool:
        return bit(self.edx, self.HYBRID_BIT)

    def with_arch_lbr(self, on: bool) -> "StructuredFeatures":
        mask = 1 << self.ARCH_LBR_BIT
        edx = (self.edx | mask) if on else (self.edx & ~mask)
        return StructuredFeatures(self.max_subleaf, self.ebx, self.ecx, edx)


@dataclass(frozen=True, slots=True)
class PerfMon:
    """CPUID.0xA: architectural performance monitoring."""

    version: int
    gp_counters: int
    gp_width: int
    ebx_length: int
    events_unavailable: int
    fixed_counters_bitmap: int  # ECX
    fixed_counters: int
    fixed_width: int
    edx_rest: int  # EDX bits 31:13 (AnyThread deprecation bit 15 and reserved)

    @classmethod
    def decode(cls, r: Registers) -> "PerfMon":
        return cls(
            version=field(r.eax, 0, 7),
            gp_counters=field(r.eax, 8, 15),
            gp_width=field(r.eax, 16, 23),
            ebx_length=field(r.eax, 24, 31),
            events_unavailable=r.ebx,
            fixed_counters_bitmap=r.ecx,
            fixed_counters=field(r.edx, 0, 4),
            fixed_width=field(r.edx, 5, 12),
            edx_rest=field(r.edx, 13, 31),
        )

    def encode(self) -> Registers:
        eax = (put(self.version, 0, 7) | put(self.gp_counters, 8, 15)
               | put(self.gp_width, 16, 23) | put(self.ebx_length, 24, 31))
        edx = put(self.fixed_counters, 0, 4) | put(self.fixed_width, 5, 12) | put(self.edx_rest, 13, 31)
        return Registers(eax, self.events_unavailable, self.fixed_counters_bitmap, edx)

    @property
    def freeze_on_pmi_ack_in_global_status(self) -> bool:
        """PMU v4+ unfreezes LBRs by clearing GLOBAL_STATUS bit 58."""
        return self.version >= 4


@dataclass(frozen=True, slots=True)
class XsaveMain:
    """CPUID.(0xD,0): user (XCR0) components and area sizes."""

    xcr0_supported: int
    size_enabled: int  # EBX: for the XCR0 currently set
    size_max: int  # ECX: for every supported XCR0 component

    @classmethod
    def decode(cls, r: Registers) -> "XsaveMain":
        return cls(r.eax | (r.edx << 32), r.ebx, r.ecx)

    def encode(self) -> Registers:
        return Registers(self.xcr0_supported & 0xFFFF_FFFF, self.size_enabled,
                         self.size_max, self.xcr0_supported >> 32)


@dataclass(frozen=True, slots=True)
class XsaveExtended:
    """CPUID.(0xD,1): XSAVE extensions and supervisor (IA32_XSS) components."""

    flags: int  # EAX: 0 XSAVEOPT, 1 XSAVEC, 2 XGETBV1, 3 XSAVES, 4 XFD
    size_in_use: int  # EBX: compacted size for XCR0 | IA32_XSS
    xss_supported: int

    XSAVES_BIT = 3

    @classmethod
    def decode(cls, r: Registers) -> "XsaveExtended":
        return cls(r.eax, r.ebx, r.ecx | (r.edx << 32))

    def encode(self) -> Registers:
        return Registers(self.flags, self.size_in_use, self.xss_supported & 0xFFFF_FFFF,
                         self.xss_supported >> 32)

    @property
    def xsaves(self) -> bool:
        return bit(self.flags, self.XSAVES_BIT)


@dataclass(frozen=True, slots=True)
class XsaveComponent:
    """CPUID.(0xD,i) for i >= 2: one state component."""

    index: int
    size: int
    offset: int  # standard-format offset; 0 for supervisor components
    supervisor: bool
    align64: bool
    xfd: bool
    ecx_rest: int  # ECX bits 31:3, reserved
    edx: int

    @classmethod
    def decode(cls, index: int, r: Registers) -> "XsaveComponent":
        return cls(index, r.eax, r.ebx, bit(r.ecx, 0), bit(r.ecx, 1), bit(r.ecx, 2),
                   r.ecx >> 3, r.edx)

    def encode(self) -> Registers:
        ecx = int(self.supervisor) | int(self.align64) << 1 | int(self.xfd) << 2 | self.ecx_rest << 3
        return Registers(self.size, self.offset, ecx, self.edx)


@dataclass(frozen=True, slots=True)
class ArchLbrLeaf:
    """CPUID.(0x1C,0): Arch LBR capabilities."""

    depth_mask: int  # EAX 7:0: bit n => depth 8*(n+1)
    eax_reserved: int  # EAX 29:8
    deep_cstate_reset: bool  # EAX 30
    lip: bool  # EAX 31: records hold linear IPs
    cpl_filtering: bool  # EBX 0
    branch_filtering: bool  # EBX 1
    call_stack: bool  # EBX 2
    ebx_reserved: int  # EBX 31:3
    mispredict: bool  # ECX 0
    timed_lbr: bool  # ECX 1
    branch_type: bool  # ECX 2
    ecx_reserved_low: int  # ECX 15:3
    event_logging: int  # ECX 19:16: bitmap of counters that can be logged
    ecx_reserved_high: int  # ECX 31:20
    edx: int

    @classmethod
    def decode(cls, r: Registers) -> "ArchLbrLeaf":
        return cls(
            depth_mask=field(r.eax, 0, 7), eax_reserved=field(r.eax, 8, 29),
            deep_cstate_reset=bit(r.eax, 30), lip=bit(r.eax, 31),
            cpl_filtering=bit(r.ebx, 0), branch_filtering=bit(r.ebx, 1),
            call_stack=bit(r.ebx, 2), ebx_reserved=r.ebx >> 3,
            mispredict=bit(r.ecx, 0), timed_lbr=bit(r.ecx, 1), branch_type=bit(r.ecx, 2),
            ecx_reserved_low=field(r.ecx, 3, 15), event_logging=field(r.ecx, 16, 19),
            ecx_reserved_high=field(r.ecx, 20, 31), edx=r.edx,
        )

    def encode(self) -> Registers:
        eax = (put(self.depth_mask, 0, 7) | put(self.eax_reserved, 8, 29)
               | int(self.deep_cstate_reset) << 30 | int(self.lip) << 31)
        ebx = (int(self.cpl_filtering) | int(self.branch_filtering) << 1
               | int(self.call_stack) << 2 | put(self.ebx_reserved, 3, 31))
        ecx = (int(self.mispredict) | int(self.timed_lbr) << 1 | int(self.branch_type) << 2
               | put(self.ecx_reserved_low, 3, 15) | put(self.event_logging, 16, 19)
               | put(self.ecx_reserved_high, 20, 31))
        return Registers(eax, ebx, ecx, self.edx)

    @property
    def depths(self) -> list[int]:
        return [LBR_DEPTH_STEP * (n + 1) for n in range(8) if self.depth_mask >> n & 1]

    @property
    def max_depth(self) -> int:
        """8 * fls(mask); 0 when no depth is enumerated."""
        return LBR_DEPTH_STEP * self.depth_mask.bit_length()

    def supports_depth(self, depth: int) -> bool:
        return depth in self.depths

    @property
    def empty(self) -> bool:
        return self.encode() == Registers()


def depth_bit(depth: int) -> int:
    """The EAX[7:0] bit that enumerates a depth; ValueError for an illegal depth."""
    if depth <= 0 or depth > LBR_MAX_DEPTH or depth % LBR_DEPTH_STEP:
        raise ValueError(f"LBR depth {depth} is not a multiple of 8 in 8..64")
    return 1 << (depth // LBR_DEPTH_STEP - 1)


def structured_features(table: CpuidTable) -> StructuredFeatures:
    return StructuredFeatures.decode(table.regs(0x7, 0))


def perfmon(table: CpuidTable) -> PerfMon:
    return PerfMon.decode(table.regs(0xA))


def arch_lbr_leaf(table: CpuidTable) -> ArchLbrLeaf:
    return ArchLbrLeaf.decode(table.regs(ARCH_LBR_LEAF, 0))


def xsave_main(table: CpuidTable) -> XsaveMain:
    return XsaveMain.decode(table.regs(0xD, 0))


def xsave_extended(table: CpuidTable) -> XsaveExtended:
    return XsaveExtended.decode(table.regs(0xD, 1))


def xsave_component(table: CpuidTable, index: int) -> XsaveComponent | None:
    """The component's enumeration, or None when the source lacks that subleaf."""
    r = table.query(0xD, index)
    return None if r is None else XsaveComponent.decode(index, r)
