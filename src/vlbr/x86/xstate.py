"""XSAVES / XRSTORS (compacted form) of x87, SSE and Arch LBR state, written once against a
small CPU-state protocol (SDM Vol. 1 13.11, 13.12; Vol. 2 XSAVES, XRSTORS).

Components 0 and 1 live in the legacy region (legacy_xstate), component 15 is the vCPU
model's (vcpu.xsaves); the area checks and the header are vcpu.xsaves's helpers, so every
#GP rule is written once. Every check runs before any byte or register changes.
XSAVES never uses the modified optimization (SDM 13.11 allows saving instead).
"""

from __future__ import annotations

from typing import Protocol

from vlbr.arch.x86 import XFEATURE_SSE, XFEATURE_X87, XFEATURES_LEGACY
from vlbr.arch.xsave import LEGACY_AREA_SIZE, XSS_ARCH_LBR
from vlbr.vcpu.xsaves import read_xstate_bv, requested, restore_header, save_layout, write_header

from .legacy_xstate import LegacyState, store_components

MODELLED = XFEATURES_LEGACY | XSS_ARCH_LBR


class LegacyCpu(Protocol):
    """Where a CPU keeps its x87 and SSE registers."""

    def read_legacy(self) -> LegacyState: ...

    def write_legacy(self, state: LegacyState, components: int) -> None:
        """Load the registers of `components` (x87/SSE bits of XCR0) from `state`."""


class UnmodelledXstate(ValueError):
    """RFBM requests a state component this emulation does not hold."""


def _modelled(mask: int, lbr) -> None:
    have = MODELLED if lbr is not None else XFEATURES_LEGACY
    if mask & ~have:
        raise UnmodelledXstate(
            f"XSAVES/XRSTORS of components {mask & ~have:#x}: emulated are x87, SSE and "
            f"Arch LBR (with a vCPU model), RFBM {mask:#x}")


def xsaves(cpu: LegacyCpu, lbr, table, area: bytearray, offset: int, rfbm: int, xcr0: int,
           xss: int, wide: bool = True) -> None:
    """XSAVES into `area` at `offset`; `lbr` is the vCPU's ArchLbrVcpu or None, `wide` the
    REX.W form. Raises GeneralProtection (nothing written) or UnmodelledXstate."""
    mask = requested(rfbm, xcr0, xss)
    _modelled(mask, lbr)
    save_layout(table, area, offset, mask)
    legacy = cpu.read_legacy()
    saved = legacy.to_be_saved(mask & XFEATURES_LEGACY)
    lbr_bv = 0
    if mask & XSS_ARCH_LBR:
        lbr.xsaves(area, offset, rfbm, xcr0, xss)
        lbr_bv = read_xstate_bv(area, offset) & XSS_ARCH_LBR
    store_components(area, offset, legacy, saved, wide)
    write_header(area, offset, saved | lbr_bv, mask)


def restored_legacy(current: LegacyState, area: bytearray, offset: int, xstate_bv: int,
                    components: int, wide: bool = True) -> LegacyState:
    """x87/SSE after XRSTORS: a component whose XSTATE_BV bit is set comes from the area,
    else its initial configuration (MXCSR 1F80H with SSE; SDM 13.8.2, 13.12). #GP on an
    MXCSR with bits MXCSR_MASK reserves."""
    saved = LegacyState.unpack(bytes(area[offset: offset + LEGACY_AREA_SIZE]), wide)
    if components & xstate_bv & XFEATURE_SSE:
        saved.check_mxcsr(current.mxcsr_bits)
    new = current
    for component in (XFEATURE_X87, XFEATURE_SSE):
        if components & component:
            new = new.take(saved if xstate_bv & component else LegacyState(), component)
    return new


def xrstors(cpu: LegacyCpu, lbr, table, area: bytearray, offset: int, rfbm: int, xcr0: int,
            xss: int, wide: bool = True) -> None:
    """XRSTORS from `area` at `offset` (arguments as `xsaves`). Raises GeneralProtection
    (no state changed) or UnmodelledXstate."""
    mask = requested(rfbm, xcr0, xss)
    _modelled(mask, lbr)
    header, _ = restore_header(table, area, offset, xcr0, xss)
    legacy = mask & XFEATURES_LEGACY
    new = restored_legacy(cpu.read_legacy(), area, offset, header.xstate_bv, legacy, wide)
    if mask & XSS_ARCH_LBR:
        lbr.xrstors(area, offset, rfbm, xcr0, xss)
    if legacy:
        cpu.write_legacy(new, legacy)
