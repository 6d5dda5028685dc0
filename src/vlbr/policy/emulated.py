"""The guest CPUID the backends give a guest whose Arch LBR is vlbr's own emulation.

The base (KVM_GET_SUPPORTED_CPUID here, or the host's table for the software CPU) has no Arch
LBR of its own; this adds exactly the rows a guest needs to find and use the emulated one."""

from __future__ import annotations

from vlbr.arch.cpuid import CpuidTable, Registers
from vlbr.arch.leaves import ARCH_LBR_LEAF, PerfMon, depth_bit, perfmon, xsave_extended
from vlbr.arch.xsave import ARCH_LBR_COMPONENT, XsaveLayout

from . import rules
from .caps import VLBR_EMULATION_CAPS, LbrEmulationCaps
from .errors import UnsupportedDepth
from vlbr.arch.x86 import CPUID1_ECX_PDCM, CPUID1_ECX_XSAVE, XFEATURES_LEGACY

from .supported import XSAVES

EMULATED_SUPPORTED_XSS = 1 << ARCH_LBR_COMPONENT  # the supervisor states the backends provide
XCR0_INITIAL = XFEATURES_LEGACY  # the Guest ABI's entry XCR0 (docs/design.md)
XSS_INITIAL = 0  # IA32_XSS resets to 0


def emulated_guest_cpuid(base: CpuidTable, depth: int | None = 32,
                         caps: LbrEmulationCaps | None = None) -> CpuidTable:
    """The full guest CPUID: `base` plus Arch LBR as vlbr's emulation provides it.

    depth: the one depth leaf 0x1C enumerates (KVM's rule: one depth, so XSAVES sizes and
    migration stay fixed); None enumerates every depth `caps` implements (up to 64), and
    component 15 is then sized for the largest. UnsupportedDepth for any other depth.
    caps: what the backend's model implements (default: vlbr's vcpu model, all of it).
    The vendor and every other row stay the base's (a guest finds Arch LBR by CPUID bits),
    except the base's other supervisor (IA32_XSS) states: no backend saves them, so they are
    dropped and CPUID.(0xD,1):ECX/EDX is EMULATED_SUPPORTED_XSS, the mask to hand to
    guest_xss_write()."""
    caps = caps or VLBR_EMULATION_CAPS
    mask = _depth_mask(depth, caps)
    leaf = caps.leaf(mask)
    rows = {
        (0x0, 0): _max_basic_leaf(base),
        (0x1, 0): _feature_bits(base),
        (0x7, 0): rules.leaf_7_0(base, True),
        (0xA, 0): _perfmon(base, caps),
        (ARCH_LBR_LEAF, 0): leaf.encode(),
        (0xD, 0): _xsave_main(base),
        (0xD, ARCH_LBR_COMPONENT): rules.comp15_for_depth(CpuidTable(), leaf.max_depth),
    }
    rows.update(_other_supervisor_states(base))
    table = base.replace(rows)
    return table.replace({(0xD, 1): _xsave_extended(table)})


def _depth_mask(depth: int | None, caps: LbrEmulationCaps) -> int:
    if depth is None:
        if not caps.depth_mask:
            raise UnsupportedDepth("the emulation implements no Arch LBR depth")
        return caps.depth_mask
    try:
        bit = depth_bit(depth)
    except ValueError as err:
        raise UnsupportedDepth(str(err)) from None
    if not caps.depth_mask & bit:
        raise UnsupportedDepth(f"depth {depth} is not one the emulation implements "
                               f"({', '.join(map(str, caps.depths))})")
    return bit


def _max_basic_leaf(base: CpuidTable) -> Registers:
    """CPUID.0:EAX must reach leaf 0x1C or the guest never reads it."""
    r = base.regs(0x0)
    return Registers(max(r.eax, ARCH_LBR_LEAF), r.ebx, r.ecx, r.edx)


def _feature_bits(base: CpuidTable) -> Registers:
    """XSAVE, because XSAVES (component 15) is part of the XSAVE feature set and the Guest ABI
    enters with CR4.OSXSAVE (KVM refuses that CR4 bit without it); PDCM, because Arch LBR
    parts report LBR_FMT 0x3F in IA32_PERF_CAPABILITIES and the model answers that MSR."""
    r = base.regs(0x1)
    return Registers(r.eax, r.ebx, r.ecx | CPUID1_ECX_XSAVE | CPUID1_ECX_PDCM, r.edx)


def _perfmon(base: CpuidTable, caps: LbrEmulationCaps) -> Registers:
    """Version >= 4 when the model acknowledges LBR freezes in GLOBAL_STATUS (PMU v4 semantics
    of DEBUGCTL.FREEZE_LBRS_ON_PMI). Counter numbers and widths stay the base's: on this
    machine's KVM that is 0 counters, so the version promises only the global-status protocol
    the model emulates, not counters that do not exist."""
    pm = perfmon(base)
    if pm.version >= caps.pmu_version:
        return pm.encode()
    return PerfMon(caps.pmu_version, pm.gp_counters, pm.gp_width, pm.ebx_length,
                   pm.events_unavailable, pm.fixed_counters_bitmap, pm.fixed_counters,
                   pm.fixed_width, pm.edx_rest).encode()


def _xsave_main(base: CpuidTable) -> Registers:
    """CPUID.(0xD,0) is about user (XCR0) states: kept, or x87|SSE in a 576-byte area when the
    base has no XSAVE leaf at all."""
    r = base.query(0xD, 0)
    return r if r is not None else Registers(XCR0_INITIAL, 576, 576, 0)


def _other_supervisor_states(base: CpuidTable) -> dict[tuple[int, int], None]:
    """CET, PT and the other XSS states of the base: enumerated there, emulated by nobody."""
    xss = xsave_extended(base).xss_supported & ~EMULATED_SUPPORTED_XSS
    return {(0xD, i): None for i in range(64) if xss >> i & 1}


def _xsave_extended(table: CpuidTable) -> Registers:
    """CPUID.(0xD,1): XSAVES, XSS bit 15 (Arch LBR is a supervisor state), and EBX = the
    compacted size of the initial XCR0|IA32_XSS (KVM refreshes it on each XSS/XCR0 write;
    see policy.xss.guest_xss_write)."""
    r = table.regs(0xD, 1)
    ebx = XsaveLayout.for_mask(table, XCR0_INITIAL | XSS_INITIAL).size
    return Registers(r.eax | XSAVES, ebx, EMULATED_SUPPORTED_XSS & 0xFFFF_FFFF,
                     EMULATED_SUPPORTED_XSS >> 32)
