"""LbrConfig: everything the vCPU model needs to know from the guest's CPUID, decoded once."""

from __future__ import annotations

from dataclasses import dataclass

from vlbr.arch.bits import bit
from vlbr.arch.cpuid import CpuidTable, Registers
from vlbr.arch.leaves import (arch_lbr_leaf, perfmon, structured_features, xsave_component,
                              xsave_extended)
from vlbr.arch.msrs import LBR_CTL_BRANCH_BITS, PERF_CAP_LBR_FMT_ARCH, LbrCtl
from vlbr.arch.perfmon import status_reset_valid
from vlbr.arch.x86 import XFEATURES_LEGACY
from vlbr.arch.xsave import (ARCH_LBR_COMPONENT, XSS_ARCH_LBR, XsaveLayout, arch_lbr_depth_for_size,
                             arch_lbr_state_size)

PDCM_BIT = 15  # CPUID.1:ECX[15]: IA32_PERF_CAPABILITIES exists
LA57_BIT = 16  # CPUID.7.0:ECX[16]: 57-bit linear addresses


@dataclass(frozen=True)
class LbrConfig:
    """The guest's Arch LBR capabilities as its CPUID enumerates them.

    ``arch_lbr`` is CPUID.7.0:EDX[19]; without it every Arch LBR MSR is absent (#GP)
    whatever leaf 0x1C says. The remaining fields mirror leaf 0x1C, 0xA and 0xD.1."""

    arch_lbr: bool
    depths: tuple[int, ...]  # legal IA32_LBR_DEPTH values, ascending
    max_depth: int  # the reset value of IA32_LBR_DEPTH and the records a vCPU holds
    cpl_filtering: bool  # 0x1C EBX[0]: LBR_CTL.OS/USR
    branch_filtering: bool  # 0x1C EBX[1]: LBR_CTL bits 22:16
    call_stack: bool  # 0x1C EBX[2]: LBR_CTL.CALL_STACK
    mispredict: bool  # 0x1C ECX[0]: LBR_INFO.MISPRED
    timed_lbr: bool  # 0x1C ECX[1]: LBR_INFO.CYC_CNT and CYC_CNT_VALID
    branch_type: bool  # 0x1C ECX[2]: LBR_INFO.BR_TYPE
    lip: bool  # 0x1C EAX[31]: records hold linear (not effective) IPs
    pmu_version: int  # 0xA EAX[7:0]
    pmu_gp_counters: int  # 0xA EAX[15:8]
    pmu_fixed_counters: int  # 0xA EDX[4:0]
    pdcm: bool  # CPUID.1:ECX[15]: IA32_PERF_CAPABILITIES exists
    xsaves: bool  # 0xD.1 EAX[3]: XSAVES/XRSTORS and IA32_XSS exist
    supported_xss: int  # 0xD.1 EDX:ECX: the IA32_XSS bits the guest may set
    va_bits: int  # 48, or 57 with LA57: the canonical-address width for IP MSRs
    table: CpuidTable  # the guest CPUID itself, for XsaveLayout

    @classmethod
    def from_cpuid(cls, guest_table: CpuidTable) -> "LbrConfig":
        leaf = arch_lbr_leaf(guest_table)
        features = structured_features(guest_table)
        enabled = features.arch_lbr and bool(leaf.depths)
        pmu = perfmon(guest_table)
        ext = xsave_extended(guest_table)
        return cls(
            arch_lbr=enabled,
            depths=tuple(leaf.depths) if enabled else (),
            max_depth=leaf.max_depth if enabled else 0,
            cpl_filtering=enabled and leaf.cpl_filtering,
            branch_filtering=enabled and leaf.branch_filtering,
            call_stack=enabled and leaf.call_stack,
            mispredict=enabled and leaf.mispredict,
            timed_lbr=enabled and leaf.timed_lbr,
            branch_type=enabled and leaf.branch_type,
            lip=enabled and leaf.lip,
            pmu_version=pmu.version,
            pmu_gp_counters=pmu.gp_counters,
            pmu_fixed_counters=pmu.fixed_counters,
            pdcm=bit(guest_table.regs(1).ecx, PDCM_BIT),
            xsaves=ext.xsaves,
            supported_xss=ext.xss_supported if ext.xsaves else 0,
            va_bits=57 if bit(features.ecx, LA57_BIT) else 48,
            table=guest_table,
        )

    # -- derived values the vCPU checks against -------------------------------------------

    @property
    def lbr_ctl_writable(self) -> int:
        """The LBR_CTL bits a write may set: LBREn always, the rest as leaf 0x1C allows."""
        mask = int(LbrCtl.LBREN)
        if self.cpl_filtering:
            mask |= LbrCtl.OS | LbrCtl.USR
        if self.call_stack:
            mask |= LbrCtl.CALL_STACK
        if self.branch_filtering:
            mask |= LBR_CTL_BRANCH_BITS
        return mask

    @property
    def perf_capabilities(self) -> int:
        """IA32_PERF_CAPABILITIES as the guest reads it (only LBR_FMT is modelled)."""
        return PERF_CAP_LBR_FMT_ARCH if self.arch_lbr else 0

    @property
    def component_depth(self) -> int:
        """How many records XSAVES writes: from CPUID.(0xD,0xF).EAX when enumerated."""
        comp = xsave_component(self.table, ARCH_LBR_COMPONENT)
        if comp is not None:
            depth = arch_lbr_depth_for_size(comp.size)
            if depth is not None:
                return depth
        return self.max_depth

    @property
    def xsave_table(self) -> CpuidTable:
        """The guest table, with (0xD,0xF) filled in when the guest CPUID lacks it.

        The vCPU's own XSAVE buffer (put/load) needs component 15 even for a guest whose
        CPUID does not enumerate it, as KVM's fpstate holds every host-supported component."""
        if xsave_component(self.table, ARCH_LBR_COMPONENT) is not None:
            return self.table
        size = arch_lbr_state_size(self.max_depth)
        return self.table.replace({(0xD, ARCH_LBR_COMPONENT): Registers(size, 0, 1, 0)})

    def xsave_layout(self, xcr0: int, xss: int) -> XsaveLayout:
        """The compacted layout of XCR0|XSS for this guest's CPUID."""
        return XsaveLayout.for_mask(self.table, xcr0 | xss, compacted=True)

    @property
    def own_buffer_layout(self) -> XsaveLayout:
        """Layout of the vCPU's private XSAVE buffer: x87|SSE|Arch LBR, compacted."""
        return XsaveLayout.for_mask(self.xsave_table, XFEATURES_LEGACY | XSS_ARCH_LBR, compacted=True)

    @property
    def global_status_valid(self) -> int:
        """IA32_PERF_GLOBAL_STATUS_RESET (0x390) bits a write may set (arch.perfmon)."""
        return status_reset_valid(self.pmu_version, self.pmu_gp_counters, self.pmu_fixed_counters)

    def describe(self) -> str:
        if not self.arch_lbr:
            return "no Arch LBR"
        caps = [name for name, on in (("cpl", self.cpl_filtering), ("filter", self.branch_filtering),
                                      ("callstack", self.call_stack), ("mispred", self.mispredict),
                                      ("timed", self.timed_lbr), ("brtype", self.branch_type),
                                      ("lip", self.lip)) if on]
        return f"Arch LBR depths {list(self.depths)} ({', '.join(caps) or 'no caps'})"

