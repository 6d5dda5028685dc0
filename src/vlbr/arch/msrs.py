"""Arch LBR and architectural PMU MSR addresses, and the codecs of the LBR bit fields
(the PMU's fields are in arch/perfmon.py)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .bits import bit, field

IA32_LBR_CTL = 0x14CE
IA32_LBR_DEPTH = 0x14CF
IA32_LBR_FROM_IP_BASE = 0x1500
IA32_LBR_TO_IP_BASE = 0x1600
IA32_LBR_INFO_BASE = 0x1200
IA32_LER_FROM_IP = 0x1DD
IA32_LER_TO_IP = 0x1DE
IA32_LER_INFO = 0x1E0
IA32_XSS = 0xDA0
IA32_DEBUGCTL = 0x1D9
IA32_PERF_CAPABILITIES = 0x345
IA32_PERF_GLOBAL_STATUS = 0x38E
IA32_PERF_GLOBAL_STATUS_RESET = 0x390  # writing 1s clears GLOBAL_STATUS bits (OVF_CTRL before v4)
# Architectural performance monitoring (SDM Vol. 4 table 2-2; Vol. 3B "Performance Monitoring").
IA32_PMC_BASE = 0xC1  # IA32_PMCx: legacy 32-bit writes, sign-extended
IA32_PERFEVTSEL_BASE = 0x186
IA32_A_PMC_BASE = 0x4C1  # full-width writes (PERF_CAPABILITIES.FW_WRITE)
IA32_FIXED_CTR_BASE = 0x309
IA32_FIXED_CTR_CTRL = 0x38D
IA32_PERF_GLOBAL_CTRL = 0x38F
IA32_PERF_GLOBAL_STATUS_SET = 0x391  # PMU v4+
IA32_PERF_GLOBAL_INUSE = 0x392  # PMU v4+

LBR_RECORD_MSRS = 64  # FROM/TO/INFO x for x in 0..63
DEBUGCTL_LBR = 1 << 0  # legacy LBR enable: reads 0 with Arch LBR
DEBUGCTL_FREEZE_LBRS_ON_PMI = 1 << 11
DEBUGCTL_FREEZE_PERFMON_ON_PMI = 1 << 12
GLOBAL_STATUS_LBR_FRZ = 1 << 58
PERF_CAP_LBR_FMT_ARCH = 0x3F
PERF_CAP_LBR_FMT_MASK = 0x3F
PERF_CAP_FW_WRITE = 1 << 13  # IA32_A_PMCx exist


class RecordKind(enum.Enum):
    FROM = IA32_LBR_FROM_IP_BASE
    TO = IA32_LBR_TO_IP_BASE
    INFO = IA32_LBR_INFO_BASE


def record_msr(kind: RecordKind, index: int) -> int:
    if not 0 <= index < LBR_RECORD_MSRS:
        raise ValueError(f"LBR record index {index} outside 0..63")
    return kind.value + index


def decode_record_msr(msr: int) -> tuple[RecordKind, int] | None:
    """(kind, index) for an IA32_LBR_x_{FROM,TO,INFO} address, else None."""
    for kind in RecordKind:
        if kind.value <= msr < kind.value + LBR_RECORD_MSRS:
            return kind, msr - kind.value
    return None


def arch_lbr_msrs(depth: int) -> list[int]:
    """LBR_CTL, LBR_DEPTH, LER and the record MSRs of a depth, in save order."""
    msrs = [IA32_LBR_CTL, IA32_LBR_DEPTH, IA32_LER_FROM_IP, IA32_LER_TO_IP, IA32_LER_INFO]
    for kind in RecordKind:
        msrs.extend(record_msr(kind, i) for i in range(depth))
    return msrs


class LbrCtl(enum.IntFlag):
    """IA32_LBR_CTL bits."""

    LBREN = 1 << 0
    OS = 1 << 1
    USR = 1 << 2
    CALL_STACK = 1 << 3
    COND = 1 << 16
    NEAR_REL_JMP = 1 << 17
    NEAR_IND_JMP = 1 << 18
    NEAR_REL_CALL = 1 << 19
    NEAR_IND_CALL = 1 << 20
    NEAR_RET = 1 << 21
    OTHER_BRANCH = 1 << 22


LBR_CTL_VALID = 0x7F000F
LBR_CTL_CPL_BITS = LbrCtl.OS | LbrCtl.USR
LBR_CTL_BRANCH_BITS = 0x7F0000


class BranchType(enum.IntEnum):
    """IA32_LBR_x_INFO.BR_TYPE encodings (6-7 reserved; 8-15 'other')."""

    JCC = 0
    NEAR_IND_JMP = 1
    NEAR_REL_JMP = 2
    NEAR_IND_CALL = 3
    NEAR_REL_CALL = 4
    NEAR_RET = 5
    OTHER = 8

    @property
    def filter_bit(self) -> LbrCtl:
        """The LBR_CTL bit that lets this kind of branch be recorded."""
        return _FILTER_BITS[self]


_FILTER_BITS = {
    BranchType.JCC: LbrCtl.COND,
    BranchType.NEAR_IND_JMP: LbrCtl.NEAR_IND_JMP,
    BranchType.NEAR_REL_JMP: LbrCtl.NEAR_REL_JMP,
    BranchType.NEAR_IND_CALL: LbrCtl.NEAR_IND_CALL,
    BranchType.NEAR_REL_CALL: LbrCtl.NEAR_REL_CALL,
    BranchType.NEAR_RET: LbrCtl.NEAR_RET,
    BranchType.OTHER: LbrCtl.OTHER_BRANCH,
}

INFO_CYC_CNT_MASK = 0xFFFF
INFO_BR_TYPE_SHIFT = 56
INFO_CYC_CNT_VALID = 1 << 60
INFO_TSX_ABORT = 1 << 61
INFO_IN_TSX = 1 << 62
INFO_MISPRED = 1 << 63
INFO_VALID_MASK = INFO_CYC_CNT_MASK | (0xF << INFO_BR_TYPE_SHIFT) | (0xF << 60)


@dataclass(frozen=True, slots=True)
class LbrInfo:
    """IA32_LBR_x_INFO fields."""

    cyc_cnt: int = 0
    br_type: int = 0
    cyc_cnt_valid: bool = False
    tsx_abort: bool = False
    in_tsx: bool = False
    mispred: bool = False

    @classmethod
    def decode(cls, value: int) -> "LbrInfo":
        return cls(field(value, 0, 15), field(value, 56, 59), bit(value, 60),
                   bit(value, 61), bit(value, 62), bit(value, 63))

    def encode(self) -> int:
        return (self.cyc_cnt & INFO_CYC_CNT_MASK | (self.br_type & 0xF) << INFO_BR_TYPE_SHIFT
                | int(self.cyc_cnt_valid) << 60 | int(self.tsx_abort) << 61
                | int(self.in_tsx) << 62 | int(self.mispred) << 63)


def is_canonical(address: int, va_bits: int = 48) -> bool:
    """True when bits 63:va_bits-1 are all equal (a canonical linear address)."""
    top = address >> (va_bits - 1)
    return top == 0 or top == (1 << (65 - va_bits)) - 1


MSR_NAMES = {
    IA32_LBR_CTL: "IA32_LBR_CTL", IA32_LBR_DEPTH: "IA32_LBR_DEPTH",
    IA32_LER_FROM_IP: "IA32_LER_FROM_IP", IA32_LER_TO_IP: "IA32_LER_TO_IP",
    IA32_LER_INFO: "IA32_LER_INFO", IA32_XSS: "IA32_XSS", IA32_DEBUGCTL: "IA32_DEBUGCTL",
    IA32_PERF_CAPABILITIES: "IA32_PERF_CAPABILITIES",
    IA32_PERF_GLOBAL_STATUS: "IA32_PERF_GLOBAL_STATUS",
    IA32_PERF_GLOBAL_STATUS_RESET: "IA32_PERF_GLOBAL_STATUS_RESET",
    IA32_FIXED_CTR_CTRL: "IA32_FIXED_CTR_CTRL", IA32_PERF_GLOBAL_CTRL: "IA32_PERF_GLOBAL_CTRL",
    IA32_PERF_GLOBAL_STATUS_SET: "IA32_PERF_GLOBAL_STATUS_SET",
    IA32_PERF_GLOBAL_INUSE: "IA32_PERF_GLOBAL_INUSE",
}
# Numbered PMU MSRs (base, name): 8 of each, the architectural MSRs of SDM Vol. 4 table 2-2.
PMU_MSR_BLOCKS = ((IA32_PMC_BASE, "IA32_PMC"), (IA32_PERFEVTSEL_BASE, "IA32_PERFEVTSEL"),
                  (IA32_A_PMC_BASE, "IA32_A_PMC"), (IA32_FIXED_CTR_BASE, "IA32_FIXED_CTR"))
PMU_MSR_BLOCK_SIZE = 8


def msr_name(msr: int) -> str:
    rec = decode_record_msr(msr)
    if rec is not None:
        return f"IA32_LBR_{rec[1]}_{rec[0].name}" + ("_IP" if rec[0] is not RecordKind.INFO else "")
    for base, name in PMU_MSR_BLOCKS:
        if base <= msr < base + PMU_MSR_BLOCK_SIZE and msr not in MSR_NAMES:
            return f"{name}{msr - base}"
    return MSR_NAMES.get(msr, f"MSR {msr:#x}")
