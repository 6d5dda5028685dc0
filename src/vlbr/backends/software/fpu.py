"""x87 and SSE registers of a unicorn CPU as vlbr.x86's LegacyState, and XSAVES/XRSTORS on
it (the PC machine and the software backend both call `uc_xsaves` / `uc_xrstors`).

What unicorn 2.1.4 (QEMU TCG) gives, measured against its own FXSAVE64/FXRSTOR64 in
tests/backends/software/test_fpu.py:
- FP0-FP7 are the *physical* registers, read and written as (significand, sign|exponent);
  ST(i) is FP[(TOP + i) & 7]. (reg_read(ST0) returns the significand only.)
- FPSW carries TOP in bits 13:11 both ways; FPTAG is the full 16-bit tag word (2 bits per
  physical register, 11 = empty) and QEMU keeps only empty / not empty of it.
- FIP, FDP, FOP, FCS, FDS exist; MXCSR and XMM0-15 as plain integers.
- QEMU's MXCSR_MASK is 0x0000FFFF (what its FXSAVE stores).
"""

from __future__ import annotations

from unicorn import Uc
from unicorn import x86_const as X

from vlbr.arch.x86 import XFEATURE_SSE, XFEATURE_X87
from vlbr.x86.legacy_xstate import MXCSR_MASK_ALL, X87_REGISTERS, XMM_REGISTERS, LegacyState
from vlbr.x86.xstate import xrstors, xsaves

_FP = [getattr(X, f"UC_X86_REG_FP{i}") for i in range(X87_REGISTERS)]
_XMM = [getattr(X, f"UC_X86_REG_XMM{i}") for i in range(XMM_REGISTERS)]
_POINTERS = (("fop", X.UC_X86_REG_FOP), ("fip", X.UC_X86_REG_FIP), ("fdp", X.UC_X86_REG_FDP),
             ("fcs", X.UC_X86_REG_FCS), ("fds", X.UC_X86_REG_FDS))
_TAG_EMPTY = 0b11
QEMU_MXCSR_MASK = MXCSR_MASK_ALL


def abridged_tags(tag_word: int) -> int:
    """FXSAVE's abridged FTW: bit i set when physical register i is not empty."""
    return sum(1 << i for i in range(X87_REGISTERS) if tag_word >> 2 * i & 3 != _TAG_EMPTY)


def full_tags(abridged: int) -> int:
    """A tag word for QEMU from an abridged one (QEMU keeps empty / not empty only)."""
    return sum(_TAG_EMPTY << 2 * i for i in range(X87_REGISTERS) if not abridged >> i & 1)


class UnicornLegacy:
    """vlbr.x86.xstate.LegacyCpu over a unicorn CPU."""

    def __init__(self, uc: Uc):
        self.uc = uc

    def read_legacy(self) -> LegacyState:
        r = self.uc.reg_read
        fsw = r(X.UC_X86_REG_FPSW)
        top = fsw >> 11 & 7
        physical = [r(reg) for reg in _FP]
        st = tuple(exp << 64 | mant for mant, exp in
                   (physical[(top + i) & 7] for i in range(X87_REGISTERS)))
        return LegacyState(fcw=r(X.UC_X86_REG_FPCW), fsw=fsw,
                           ftw=abridged_tags(r(X.UC_X86_REG_FPTAG)), st=st,
                           mxcsr=r(X.UC_X86_REG_MXCSR), mxcsr_mask=QEMU_MXCSR_MASK,
                           xmm=tuple(r(reg) for reg in _XMM),
                           **{name: r(reg) for name, reg in _POINTERS})

    def write_legacy(self, state: LegacyState, components: int) -> None:
        if components & XFEATURE_X87:
            self._write_x87(state)
        if components & XFEATURE_SSE:
            self.uc.reg_write(X.UC_X86_REG_MXCSR, state.mxcsr)
            for reg, value in zip(_XMM, state.xmm):
                self.uc.reg_write(reg, value)

    def _write_x87(self, s: LegacyState) -> None:
        w = self.uc.reg_write
        w(X.UC_X86_REG_FPCW, s.fcw)
        w(X.UC_X86_REG_FPSW, s.fsw)
        w(X.UC_X86_REG_FPTAG, full_tags(s.ftw))
        for i, value in enumerate(s.st):
            w(_FP[(s.top + i) & 7], (value & (1 << 64) - 1, value >> 64))
        for name, reg in _POINTERS:
            w(reg, getattr(s, name))


def uc_xsaves(uc: Uc, lbr, cpuid, xcr0: int, xss: int, rfbm: int, area: bytearray,
              offset: int, wide: bool = True) -> None:
    """XSAVES of the unicorn CPU's x87/SSE and `lbr`'s component 15 (ArchLbrVcpu or None)
    into `area` at `offset` (the area's start: offset % 64 must be 0, else #GP); the caller
    writes `area` back to guest memory. Raises vlbr.vcpu.GeneralProtection or
    vlbr.x86.xstate.UnmodelledXstate."""
    xsaves(UnicornLegacy(uc), lbr, cpuid, area, offset, rfbm, xcr0, xss, wide)


def uc_xrstors(uc: Uc, lbr, cpuid, xcr0: int, xss: int, rfbm: int, area: bytearray,
               offset: int, wide: bool = True) -> None:
    """XRSTORS from `area` at `offset` into the unicorn CPU and `lbr` (as `uc_xsaves`)."""
    xrstors(UnicornLegacy(uc), lbr, cpuid, area, offset, rfbm, xcr0, xss, wide)
