"""Architectural performance monitoring: the bit fields of the PMU MSRs and which of them a
PMU version defines (SDM Vol. 3B "Performance Monitoring", section "Architectural
Performance Monitoring" and its Version 1..5 subsections; SDM Vol. 4 table 2-2)."""

from __future__ import annotations

from .msrs import GLOBAL_STATUS_LBR_FRZ

# IA32_PERFEVTSELx (Version 1, figure "Layout of IA32_PERFEVTSELx MSRs").
EVTSEL_EVENT_MASK = 0xFF
EVTSEL_UMASK_SHIFT = 8
EVTSEL_USR = 1 << 16  # count at CPL > 0
EVTSEL_OS = 1 << 17  # count at CPL 0
EVTSEL_EDGE = 1 << 18
EVTSEL_PC = 1 << 19
EVTSEL_INT = 1 << 20  # PMI on overflow
EVTSEL_ANY = 1 << 21  # AnyThread, Version 3+
EVTSEL_EN = 1 << 22
EVTSEL_INV = 1 << 23
EVTSEL_CMASK_SHIFT = 24
EVTSEL_DEFINED = 0xFFFF_FFFF  # bits 63:32 reserved (no TSX qualifiers here)

# IA32_FIXED_CTR_CTRL: one 4-bit field per fixed counter (Version 2, ANY from Version 3).
FIXED_FIELD_BITS = 4
FIXED_EN_OS, FIXED_EN_USR, FIXED_ANY, FIXED_PMI = 1 << 0, 1 << 1, 1 << 2, 1 << 3

# IA32_PERF_GLOBAL_STATUS / _CTRL: GP counter i is bit i, fixed counter j is bit 32 + j.
GLOBAL_FIXED_SHIFT = 32
GLOBAL_STATUS_CTR_FRZ = 1 << 59  # Version 4
GLOBAL_STATUS_ASCI = 1 << 60  # Version 4
GLOBAL_STATUS_OVF_UNCORE = 1 << 61  # Version 3
GLOBAL_STATUS_OVF_BUF = 1 << 62  # Version 2
GLOBAL_STATUS_COND_CHGD = 1 << 63  # Version 2
GLOBAL_INUSE_PMI = 1 << 63  # Version 4

# RDPMC's ECX with an architectural PMU (SDM Vol. 2B RDPMC): type in 31:16 (0 = GP counter,
# bit 30 = fixed counter; other types, e.g. Linux's bit-29 metrics, are absent), index in 15:0.
RDPMC_FIXED = 1 << 30
RDPMC_INDEX_MASK = 0xFFFF

# Architectural events as (event select, umask) (section "Pre-defined Architectural
# Performance Events"), each with its CPUID.0AH:EBX "not available" bit.
EVENT_CORE_CYCLES = (0x3C, 0x00)
EVENT_INSTRUCTIONS = (0xC0, 0x00)
EVENT_REF_CYCLES = (0x3C, 0x01)
EVENT_UNAVAILABLE_BIT = {EVENT_CORE_CYCLES: 0, EVENT_INSTRUCTIONS: 1, EVENT_REF_CYCLES: 2}
ARCH_EVENTS = 7  # EBX bits 0..6 (cycles .. branch mispredicts): Linux needs EAX[31:24] >= 7
# Fixed counter j counts this event (Version 2 table "Association of Fixed-Function
# Performance Counters with Architectural Performance Events"); 3 (TOPDOWN.SLOTS) and up: none.
FIXED_EVENTS = (EVENT_INSTRUCTIONS, EVENT_CORE_CYCLES, EVENT_REF_CYCLES)


def evtsel_event(value: int) -> tuple[int, int]:
    """(event select, umask) of an IA32_PERFEVTSELx value."""
    return value & EVTSEL_EVENT_MASK, value >> EVTSEL_UMASK_SHIFT & 0xFF


def evtsel(event: tuple[int, int], *flags: int, cmask: int = 0) -> int:
    """An IA32_PERFEVTSELx value: event, umask, flags ORed, counter mask."""
    value = event[0] | event[1] << EVTSEL_UMASK_SHIFT | cmask << EVTSEL_CMASK_SHIFT
    for flag in flags:
        value |= flag
    return value


def fixed_field(ctrl: int, index: int) -> int:
    """The 4-bit IA32_FIXED_CTR_CTRL field of fixed counter `index`."""
    return ctrl >> (FIXED_FIELD_BITS * index) & 0xF


def counter_bits(gp: int, fixed: int) -> int:
    """The GLOBAL_CTRL/STATUS bits of `gp` general-purpose and `fixed` fixed counters."""
    return (1 << gp) - 1 | ((1 << fixed) - 1) << GLOBAL_FIXED_SHIFT


def evtsel_valid(version: int) -> int:
    """IA32_PERFEVTSELx bits a write may set: AnyThread only from Version 3."""
    return EVTSEL_DEFINED & ~(0 if version >= 3 else EVTSEL_ANY)


def fixed_ctrl_valid(version: int, fixed: int) -> int:
    """IA32_FIXED_CTR_CTRL bits a write may set: EN and PMI per counter, ANY from Version 3."""
    field = FIXED_EN_OS | FIXED_EN_USR | FIXED_PMI | (FIXED_ANY if version >= 3 else 0)
    return sum(field << (FIXED_FIELD_BITS * j) for j in range(fixed))


def status_reset_valid(version: int, gp: int, fixed: int) -> int:
    """IA32_PERF_GLOBAL_STATUS_RESET (OVF_CTRL) bits: the counters, OvfBuf and CondChgd
    (Version 2), Ovf_Uncore (Version 3), LBR_FRZ, CTR_FRZ and ASCI (Version 4). Bit 55
    (Trace_ToPA_PMI) and 48 (PERF_METRICS) are absent: no Intel PT, no perf metrics here."""
    mask = counter_bits(gp, fixed) | GLOBAL_STATUS_OVF_BUF | GLOBAL_STATUS_COND_CHGD
    if version >= 3:
        mask |= GLOBAL_STATUS_OVF_UNCORE
    if version >= 4:
        mask |= GLOBAL_STATUS_LBR_FRZ | GLOBAL_STATUS_CTR_FRZ | GLOBAL_STATUS_ASCI
    return mask


def status_set_valid(version: int, gp: int, fixed: int) -> int:
    """IA32_PERF_GLOBAL_STATUS_SET (Version 4) bits: as STATUS_RESET but bit 63 (CondChgd)
    is reserved."""
    if version < 4:
        return 0
    return status_reset_valid(version, gp, fixed) & ~GLOBAL_STATUS_COND_CHGD
