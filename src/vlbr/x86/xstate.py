"""XSAVES / XRSTORS (compacted form) of x87, SSE and Arch LBR state, and XSAVE / XRSTOR
(standard form; XRSTOR's compacted form too) of x87 and SSE, written once against a small
CPU-state protocol (SDM Vol. 1 13.7, 13.8, 13.11, 13.12; Vol. 2 XSAVE, XRSTOR, XSAVES, XRSTORS).

Components 0 and 1 live in the legacy region (legacy_xstate), component 15 is the vCPU
model's (vcpu.xsaves); the area checks and the header are vcpu.xsaves's helpers, so every
#GP rule is written once. Every check runs before any byte or register changes.
XSAVES never uses the modified optimization (SDM 13.11 allows saving instead).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Protocol

from vlbr.arch.leaves import xsave_extended
from vlbr.arch.x86 import (CPUID_D1_EAX_XSAVEC, XFEATURE_AVX, XFEATURE_SSE, XFEATURE_X87,
                           XFEATURES_LEGACY)
from vlbr.arch.xsave import (EXTENDED_AREA_START, HEADER_OFFSET, LEGACY_AREA_SIZE, XSS_ARCH_LBR,
                             XsaveHeader, XsaveLayout, XsaveLayoutError)
from vlbr.vcpu.faults import GeneralProtection
from vlbr.vcpu.xsaves import (check_area, read_xstate_bv, requested, restore_header, save_layout,
                              write_header)

from .legacy_xstate import LegacyState, store_components



class LegacyCpu(Protocol):
    """Where a CPU keeps its x87 and SSE registers."""

    def read_legacy(self) -> LegacyState: ...

    def write_legacy(self, state: LegacyState, components: int) -> None:
        """Load the registers of `components` (x87/SSE bits of XCR0) from `state`."""


class ExtendedCpu(LegacyCpu, Protocol):
    """A CPU that also holds user components from 2 up (AVX, ...); `extended` is their mask."""

    extended: int

    def read_component(self, index: int) -> bytes | None:
        """The component's bytes; None while it is in its initial configuration."""

    def write_component(self, index: int, data: bytes | None) -> None:
        """Load the component from `data`; None puts it in its initial configuration."""


class UnmodelledXstate(ValueError):
    """RFBM requests a state component this emulation does not hold."""


def _held(cpu) -> int:
    """The user components from 2 up that `cpu` holds (an ExtendedCpu), else none."""
    return getattr(cpu, "extended", 0)


def _modelled(mask: int, lbr, cpu=None) -> None:
    have = XFEATURES_LEGACY | _held(cpu) | (XSS_ARCH_LBR if lbr is not None else 0)
    if mask & ~have:
        raise UnmodelledXstate(
            f"XSAVE of components {mask & ~have:#x}: emulated are x87, SSE, the CPU's "
            f"{_held(cpu):#x} and Arch LBR (with a vCPU model), RFBM {mask:#x}")


def _bits(mask: int) -> list[int]:
    return [i for i in range(64) if mask >> i & 1]


def _store_extended(cpu, area: bytearray, offset: int, layout: XsaveLayout, mask: int,
                    init_too: bool = False) -> int:
    """Write `mask`'s extended components at their layout offsets (one in its initial
    configuration only with init_too, as zeros); the XSTATE_BV bits of those in use."""
    in_use = 0
    for index in _bits(mask & _held(cpu)):
        data = cpu.read_component(index)
        if data is None and not init_too:
            continue
        start = offset + layout.offset_of(index)
        area[start: start + layout.sizes[index]] = data or bytes(layout.sizes[index])
        in_use |= 0 if data is None else 1 << index
    return in_use


def _extended_from(cpu, area: bytearray, offset: int, layout: XsaveLayout, mask: int,
                   xstate_bv: int) -> dict[int, bytes | None]:
    """What XRSTOR(S) loads into `mask`'s extended components: the area's bytes where
    XSTATE_BV is set, else None (initialize)."""
    out = {}
    for index in _bits(mask & _held(cpu)):
        if xstate_bv >> index & 1:
            start = offset + layout.offset_of(index)
            out[index] = bytes(area[start: start + layout.sizes[index]])
        else:
            out[index] = None
    return out


def _load_extended(cpu, components: dict[int, bytes | None]) -> None:
    for index, data in components.items():
        cpu.write_component(index, data)


def xsaves(cpu: LegacyCpu, lbr, table, area: bytearray, offset: int, rfbm: int, xcr0: int,
           xss: int, wide: bool = True) -> None:
    """XSAVES into `area` at `offset`; `lbr` is the vCPU's ArchLbrVcpu or None, `wide` the
    REX.W form. Raises GeneralProtection (nothing written) or UnmodelledXstate."""
    mask = requested(rfbm, xcr0, xss)
    _modelled(mask, lbr, cpu)
    layout = save_layout(table, area, offset, mask)
    legacy = cpu.read_legacy()
    saved = legacy.to_be_saved(mask & XFEATURES_LEGACY)
    lbr_bv = 0
    if mask & XSS_ARCH_LBR:
        lbr.xsaves(area, offset, rfbm, xcr0, xss)
        lbr_bv = read_xstate_bv(area, offset) & XSS_ARCH_LBR
    store_components(area, offset, legacy, saved, wide)
    saved |= _store_extended(cpu, area, offset, layout, mask)
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
    _modelled(mask, lbr, cpu)
    header, layout = restore_header(table, area, offset, xcr0, xss)
    legacy = mask & XFEATURES_LEGACY
    new = restored_legacy(cpu.read_legacy(), area, offset, header.xstate_bv, legacy, wide)
    extended = _extended_from(cpu, area, offset, layout, mask, header.xstate_bv)
    if mask & XSS_ARCH_LBR:
        lbr.xrstors(area, offset, rfbm, xcr0, xss)
    if legacy:
        cpu.write_legacy(new, legacy)
    _load_extended(cpu, extended)


def xsave(cpu: LegacyCpu, table, area: bytearray, offset: int, rfbm: int, xcr0: int,
          wide: bool = True) -> None:
    """XSAVE, the standard form (SDM Vol. 1 13.7): every component RFBM = EDX:EAX & XCR0
    asks for, x87 and SSE (MXCSR with it) in the legacy region, the others at their CPUID
    offsets; XSTATE_BV[i] = XINUSE[i] for each requested i, every other header bit and byte
    as it was. Raises GeneralProtection (nothing written) or UnmodelledXstate."""
    mask = rfbm & xcr0
    _modelled(mask, None, cpu)
    layout = _standard_layout(table, mask)
    check_area(area, offset, layout.size)
    legacy = cpu.read_legacy()
    store_components(area, offset, legacy, mask, wide)
    in_use = legacy.xinuse | _store_extended(cpu, area, offset, layout, mask, init_too=True)
    xstate_bv = read_xstate_bv(area, offset) & ~mask | in_use & mask
    area[offset + HEADER_OFFSET: offset + HEADER_OFFSET + 8] = xstate_bv.to_bytes(8, "little")


def xrstor(cpu: LegacyCpu, table, area: bytearray, offset: int, rfbm: int, xcr0: int,
           wide: bool = True) -> None:
    """XRSTOR (SDM Vol. 1 13.8): the standard form, or the compacted one when XCOMP_BV[63] is
    set (XRSTORS's rules without supervisor state). Raises GeneralProtection (no state
    changed) or UnmodelledXstate."""
    check_area(area, offset, EXTENDED_AREA_START)
    header = XsaveHeader.unpack(bytes(area[offset: offset + EXTENDED_AREA_START]))
    if header.compacted:
        if not xsave_extended(table).flags & CPUID_D1_EAX_XSAVEC:
            raise GeneralProtection("XRSTOR: XCOMP_BV[63] set without XSAVEC (CPUID.(0xD,1))")
        xrstors(cpu, None, table, area, offset, rfbm, xcr0, 0, wide)
        return
    mask = rfbm & xcr0
    _modelled(mask, None, cpu)
    if header.xstate_bv & ~xcr0:
        raise GeneralProtection(f"XRSTOR: XSTATE_BV {header.xstate_bv:#x} names components "
                                f"outside XCR0 {xcr0:#x}")
    if header.xcomp_bv or any(header.reserved[:8]):
        raise GeneralProtection("XRSTOR: XSAVE header bytes 23:8 are not zero (standard form)")
    layout = _standard_layout(table, mask)
    check_area(area, offset, layout.size)
    current = cpu.read_legacy()
    new = restored_legacy(current, area, offset, header.xstate_bv, mask & XFEATURES_LEGACY, wide)
    if mask & (XFEATURE_SSE | XFEATURE_AVX):  # the standard form loads MXCSR from memory
        saved = LegacyState.unpack(bytes(area[offset: offset + LEGACY_AREA_SIZE]), wide)
        saved.check_mxcsr(current.mxcsr_bits)
        new = replace(new, mxcsr=saved.mxcsr)
    extended = _extended_from(cpu, area, offset, layout, mask, header.xstate_bv)
    loaded = mask & XFEATURES_LEGACY | (XFEATURE_SSE if mask & XFEATURE_AVX else 0)  # MXCSR
    if loaded:
        cpu.write_legacy(new, loaded)
    _load_extended(cpu, extended)


def _standard_layout(table, mask: int) -> XsaveLayout:
    try:
        return XsaveLayout.for_mask(table, mask, compacted=False)
    except XsaveLayoutError as err:
        raise GeneralProtection(f"XSAVE component not enumerated: {err}") from None
