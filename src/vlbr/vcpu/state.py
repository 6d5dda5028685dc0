"""LbrState: the XSAVES-managed part of a vCPU's Arch LBR (component 15), and its MSR checks."""

from __future__ import annotations

from vlbr.arch.msrs import INFO_VALID_MASK, LBR_CTL_VALID, LbrCtl, is_canonical
from vlbr.arch.xsave import ArchLbrXstate

from .config import LbrConfig
from .faults import GeneralProtection

ZERO_RECORD = (0, 0, 0)
MASK64 = (1 << 64) - 1


class LbrState:
    """LBR_CTL, LBR_DEPTH, LER (from, to, info) and one (from, to, info) per record slot.

    A vCPU holds `max_depth` slots; only the first `depth` are live for the guest."""

    __slots__ = ("ctl", "depth", "ler", "rec")

    def __init__(self, depth: int, slots: int):
        self.ctl = 0
        self.depth = depth
        self.ler = ZERO_RECORD
        self.rec = [ZERO_RECORD] * slots

    def copy(self) -> "LbrState":
        new = LbrState(self.depth, 0)
        new.ctl, new.ler, new.rec = self.ctl, self.ler, list(self.rec)
        return new

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, LbrState) and self.ctl == other.ctl and self.depth == other.depth
                and self.ler == other.ler and self.rec == other.rec)

    def is_init(self, max_depth: int) -> bool:
        """The init configuration (XSAVES writes nothing): all zero at the reset depth."""
        return (self.ctl == 0 and self.depth == max_depth and self.ler == ZERO_RECORD
                and not any(r != ZERO_RECORD for r in self.rec))

    def clear_records(self) -> None:
        self.rec = [ZERO_RECORD] * len(self.rec)

    def to_xstate(self, records: int) -> ArchLbrXstate:
        """Component-15 contents holding `records` record slots (zero-padded)."""
        recs = list(self.rec[:records]) + [ZERO_RECORD] * max(0, records - len(self.rec))
        return ArchLbrXstate(self.ctl, self.depth, *self.ler, records=tuple(recs))


# -- value checks shared by WRMSR, XRSTORS and host-initiated writes ------------------------

def check_u64(value: int, what: str) -> None:
    if not isinstance(value, int) or not 0 <= value <= MASK64:
        raise GeneralProtection(f"{what}: {value!r} is not a 64-bit value")


def check_lbr_ctl(config: LbrConfig, value: int) -> None:
    """Reference doc section 2: reserved bits, then bits leaf 0x1C does not enumerate."""
    if value & ~LBR_CTL_VALID:
        raise GeneralProtection(f"IA32_LBR_CTL reserved bits {value & ~LBR_CTL_VALID:#x} set")
    extra = value & ~config.lbr_ctl_writable
    if extra & (LbrCtl.OS | LbrCtl.USR):
        raise GeneralProtection("IA32_LBR_CTL.OS/USR set without CPUID.(0x1C,0):EBX[0] CPL filtering")
    if extra & LbrCtl.CALL_STACK:
        raise GeneralProtection("IA32_LBR_CTL.CALL_STACK set without CPUID.(0x1C,0):EBX[2]")
    if extra:
        raise GeneralProtection(
            f"IA32_LBR_CTL branch-type bits {extra:#x} set without CPUID.(0x1C,0):EBX[1]")


def check_depth(config: LbrConfig, value: int) -> None:
    if value not in config.depths:
        raise GeneralProtection(
            f"IA32_LBR_DEPTH {value} is not an enumerated depth {list(config.depths)}")


def check_ip(config: LbrConfig, value: int, what: str) -> None:
    if not is_canonical(value, config.va_bits):
        raise GeneralProtection(f"{what} {value:#x} is not canonical ({config.va_bits}-bit)")


def check_info(value: int, what: str) -> None:
    if value & ~INFO_VALID_MASK:
        raise GeneralProtection(f"{what} reserved bits {value & ~INFO_VALID_MASK:#x} (55:16) set")


def check_record(config: LbrConfig, rec: tuple[int, int, int], what: str) -> None:
    check_ip(config, rec[0], f"{what} FROM")
    check_ip(config, rec[1], f"{what} TO")
    check_info(rec[2], f"{what} INFO")


# -- save() / restore() of any vCPU model with host-initiated rdmsr/wrmsr ------------------

def read_msrs(model, msrs: list[int]) -> list[list[int]]:
    """[msr, value] pairs of host-initiated reads, as a save() stores them."""
    return [[msr, model.rdmsr(msr, host_initiated=True)] for msr in msrs]


def write_msrs(model, pairs) -> None:
    """Host-initiated writes of saved pairs (an MSR may be a string after a JSON trip)."""
    for msr, value in pairs:
        model.wrmsr(int(msr, 0) if isinstance(msr, str) else msr, value, host_initiated=True)
