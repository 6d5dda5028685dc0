"""XSAVES / XRSTORS of state component 15 into real compacted-format XSAVE-area bytes.

Only component 15 is modelled: data of other components, and their XSTATE_BV bits, are
the caller's (XSAVES keeps the XSTATE_BV bits of other requested components as found);
vlbr.x86.xstate composes it with x87/SSE using the area and header helpers here.

Rules (SDM XSAVES/XRSTORS as summarised in the reference doc, section 1 and 2):
- the area must be 64-byte aligned (offset % 64), else #GP;
- XSAVES writes XSTATE_BV = (RFBM & XINUSE) and XCOMP_BV = RFBM | bit 63, where
  RFBM = rfbm & (XCR0 | XSS), and the component at its compacted offset for RFBM; it writes
  nothing else of the header, and nothing of component 15 when it is in its init
  configuration (LBR_CTL, LER and every record 0, DEPTH at its reset value max_depth);
- XRSTORS #GP: XCOMP_BV[63] clear (not compacted); XCOMP_BV naming a component outside
  XCR0|XSS; XSTATE_BV not a subset of XCOMP_BV; header bytes 63:16 non-zero; area too
  short for the layout XCOMP_BV implies; saved MSR values a WRMSR would reject
  (reserved LBR_CTL bits or bits CPUID does not allow, non-canonical IPs, reserved INFO bits);
- XRSTORS never writes IA32_LBR_DEPTH: it restores LBR_CTL and LER, and the records only
  when the saved DEPTH equals the current one, else it clears every record (reference
  doc section 2). Restoring the init configuration zeroes LBR_CTL, LER and the records.
  This makes the init optimisation invisible: restoring an init-optimised image gives the
  same state as restoring the full image it stands for.
- `verbatim=True` is the VMM's own restore (KVM loading its guest fpstate): DEPTH is taken
  from the buffer too and must be an enumerated depth.
"""

from __future__ import annotations

from vlbr.arch.xsave import (ARCH_LBR_COMPONENT, EXTENDED_AREA_START, HEADER_OFFSET,
                             XCOMP_BV_COMPACTED, XSS_ARCH_LBR, ArchLbrXstate, XsaveHeader,
                             XsaveLayout, XsaveLayoutError, arch_lbr_depth_for_size)

from .config import LbrConfig
from .faults import GeneralProtection
from .state import LbrState, check_depth, check_info, check_ip, check_lbr_ctl, check_record

ALIGN = 64
_HEADER_BV = HEADER_OFFSET  # XSTATE_BV at +512, XCOMP_BV at +520


def _layout(table, mask: int) -> XsaveLayout:
    try:
        return XsaveLayout.for_mask(table, mask, compacted=True)
    except XsaveLayoutError as exc:
        raise GeneralProtection(f"XSAVE component not enumerated: {exc}") from None


def check_area(area: bytearray, offset: int, need: int) -> None:
    if offset < 0 or offset % ALIGN:
        raise GeneralProtection(f"XSAVE area at offset {offset} is not 64-byte aligned")
    if len(area) < offset + need:
        raise GeneralProtection(
            f"XSAVE area of {len(area) - offset} bytes is too short (needs {need})")


def requested(rfbm: int, xcr0: int, xss: int) -> int:
    """XSAVES/XRSTORS's RFBM: EDX:EAX & (XCR0 | IA32_XSS), bits 62:0."""
    return rfbm & (xcr0 | xss) & ~XCOMP_BV_COMPACTED


def save_layout(table, area: bytearray, offset: int, mask: int) -> XsaveLayout:
    """XSAVES's #GP checks (alignment, enumerated components, room): the layout of `mask`."""
    if offset < 0 or offset % ALIGN:
        raise GeneralProtection(f"XSAVE area at offset {offset} is not 64-byte aligned")
    layout = _layout(table, mask)
    check_area(area, offset, layout.size)
    return layout


def read_xstate_bv(area: bytearray, offset: int) -> int:
    return int.from_bytes(area[offset + _HEADER_BV: offset + _HEADER_BV + 8], "little")


def write_header(area: bytearray, offset: int, xstate_bv: int, mask: int) -> None:
    """XSAVES's header: XSTATE_BV and XCOMP_BV = mask | bit 63, nothing else of it."""
    area[offset + _HEADER_BV: offset + _HEADER_BV + 16] = (
        xstate_bv.to_bytes(8, "little") + (mask | XCOMP_BV_COMPACTED).to_bytes(8, "little"))


def restore_header(table, area: bytearray, offset: int, xcr0: int,
                   xss: int) -> tuple[XsaveHeader, XsaveLayout]:
    """XRSTORS's #GP checks on the header and the area; the header and XCOMP_BV's layout."""
    check_area(area, offset, EXTENDED_AREA_START)
    header = XsaveHeader.unpack(bytes(area[offset: offset + EXTENDED_AREA_START]))
    if not header.compacted:
        raise GeneralProtection("XRSTORS: XCOMP_BV[63] is clear (standard format)")
    comp_bv = header.xcomp_bv & ~XCOMP_BV_COMPACTED
    if comp_bv & ~(xcr0 | xss):
        raise GeneralProtection(
            f"XRSTORS: XCOMP_BV {comp_bv:#x} names components outside XCR0|XSS {xcr0 | xss:#x}")
    if header.xstate_bv & ~comp_bv:
        raise GeneralProtection(
            f"XRSTORS: XSTATE_BV {header.xstate_bv:#x} is not a subset of XCOMP_BV {comp_bv:#x}")
    if any(header.reserved):
        raise GeneralProtection("XRSTORS: XSAVE header bytes 63:16 are not zero")
    layout = _layout(table, comp_bv)
    check_area(area, offset, layout.size)
    return header, layout


def _component_records(layout: XsaveLayout) -> int:
    size = layout.sizes[ARCH_LBR_COMPONENT]
    depth = arch_lbr_depth_for_size(size)
    if depth is None:
        raise GeneralProtection(f"component 15 size {size} is not 40 + 24 * depth")
    return depth


def xsaves(state: LbrState, config: LbrConfig, area: bytearray, offset: int, rfbm: int,
           xcr0: int, xss: int, table=None) -> None:
    """XSAVES: store component 15 of `state` (and the header) into `area` at `offset`."""
    mask = requested(rfbm, xcr0, xss)
    layout = save_layout(table or config.table, area, offset, mask)
    saving = bool(mask & XSS_ARCH_LBR)
    in_use = saving and not state.is_init(config.max_depth)
    old_bv = read_xstate_bv(area, offset)
    write_header(area, offset, (old_bv & mask & ~XSS_ARCH_LBR) | (XSS_ARCH_LBR if in_use else 0),
                 mask)
    if in_use:
        start = offset + layout.offset_of(ARCH_LBR_COMPONENT)
        data = state.to_xstate(_component_records(layout)).pack()
        area[start: start + len(data)] = data


def xrstors(state: LbrState, config: LbrConfig, area: bytearray, offset: int, rfbm: int,
            xcr0: int, xss: int, verbatim: bool = False, table=None) -> LbrState:
    """XRSTORS: the state after restoring component 15 from `area`; `state` is not modified."""
    header, layout = restore_header(table or config.table, area, offset, xcr0, xss)
    new = state.copy()
    if not requested(rfbm, xcr0, xss) & XSS_ARCH_LBR:
        return new
    if not header.xstate_bv & XSS_ARCH_LBR:  # init configuration
        new.ctl, new.ler = 0, (0, 0, 0)
        new.clear_records()
        if verbatim:
            new.depth = config.max_depth
        return new
    start = offset + layout.offset_of(ARCH_LBR_COMPONENT)
    count = _component_records(layout)
    saved = ArchLbrXstate.unpack(bytes(area[start: start + layout.sizes[ARCH_LBR_COMPONENT]]), count)
    check_lbr_ctl(config, saved.lbr_ctl)
    check_ip(config, saved.ler_from, "XRSTORS LER_FROM")
    check_ip(config, saved.ler_to, "XRSTORS LER_TO")
    check_info(saved.ler_info, "XRSTORS LER_INFO")
    if verbatim:
        check_depth(config, saved.lbr_depth)
        new.depth = saved.lbr_depth
    new.ctl, new.ler = saved.lbr_ctl, (saved.ler_from, saved.ler_to, saved.ler_info)
    if saved.lbr_depth == new.depth:
        for i, rec in enumerate(saved.records):
            check_record(config, rec, f"XRSTORS record {i}")
        slots = len(new.rec)
        recs = list(saved.records[:slots])
        new.rec = recs + [(0, 0, 0)] * (slots - len(recs))
    else:
        new.clear_records()
    return new
