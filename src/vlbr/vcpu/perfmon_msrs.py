"""PerfmonMsrs: the one MSR entry point of a vCPU's Arch LBR and PMU models.

Each MSR is answered by exactly one object (`route`): the PMU MSRs, GLOBAL_STATUS and
STATUS_RESET included, by ArchPerfmon (which reads and writes LBR_FRZ in the ArchLbrVcpu);
the LBR MSRs, IA32_XSS by ArchLbrVcpu; IA32_DEBUGCTL and IA32_PERF_CAPABILITIES by this
class, which combines their fields: DEBUGCTL.FREEZE_PERFMON_ON_PMI (bit 12) is the PMU's,
every other DEBUGCTL bit the LBR model's rule G6; PERF_CAPABILITIES.FW_WRITE (bit 13) is
the PMU's, the rest (LBR_FMT) the LBR model's rule G7."""

from __future__ import annotations

from vlbr.arch.cpuid import CpuidTable
from vlbr.arch.msrs import (DEBUGCTL_FREEZE_PERFMON_ON_PMI, IA32_DEBUGCTL, IA32_PERF_CAPABILITIES,
                            PERF_CAP_FW_WRITE, msr_name)

from .config import LbrConfig
from .faults import GeneralProtection, NotOwnedMsr
from .lbr import ArchLbrVcpu
from .pmu import ArchPerfmon, PmuDescription
from .state import check_u64

__all__ = ["PerfmonMsrs"]

_SHARED = (IA32_DEBUGCTL, IA32_PERF_CAPABILITIES)


class PerfmonMsrs:
    """Routes RDMSR/WRMSR to the vCPU's ArchLbrVcpu and ArchPerfmon (module doc)."""

    def __init__(self, lbr: ArchLbrVcpu, pmu: ArchPerfmon):
        self.lbr = lbr
        self.pmu = pmu

    @classmethod
    def from_cpuid(cls, guest_table: CpuidTable, full_width_writes: bool = False) -> "PerfmonMsrs":
        """Both models of one vCPU from its guest CPUID (the PMU from leaf 0xA)."""
        lbr = ArchLbrVcpu(LbrConfig.from_cpuid(guest_table))
        desc = PmuDescription.from_leaf(guest_table.regs(0xA), full_width_writes)
        return cls(lbr, ArchPerfmon(desc, lbr))

    def route(self, msr: int) -> object:
        """The one object answering `msr`: self (shared MSRs), the PMU or the LBR model."""
        if msr in _SHARED:
            return self
        if self.pmu.owns(msr):
            return self.pmu
        if self.lbr.owns(msr):
            return self.lbr
        raise NotOwnedMsr(msr_name(msr))

    def owns(self, msr: int) -> bool:
        return msr in _SHARED or self.pmu.owns(msr) or self.lbr.owns(msr)

    def rdmsr(self, msr: int, host_initiated: bool = False) -> int:
        target = self.route(msr)
        if target is not self:
            return target.rdmsr(msr, host_initiated)
        value = self.lbr.rdmsr(msr, host_initiated)
        if msr == IA32_DEBUGCTL:
            return value | (DEBUGCTL_FREEZE_PERFMON_ON_PMI if self.pmu.freeze_perfmon_on_pmi else 0)
        return value | self.pmu.perf_capabilities

    def wrmsr(self, msr: int, value: int, host_initiated: bool = False) -> None:
        target = self.route(msr)
        if target is not self:
            target.wrmsr(msr, value, host_initiated)
            return
        check_u64(value, msr_name(msr))
        if msr == IA32_DEBUGCTL:
            self._write_debugctl(value, host_initiated)
            return
        if host_initiated and value & PERF_CAP_FW_WRITE != self.pmu.perf_capabilities:
            raise GeneralProtection("IA32_PERF_CAPABILITIES.FW_WRITE differs from this vCPU's")
        self.lbr.wrmsr(msr, value & ~PERF_CAP_FW_WRITE, host_initiated)  # guest: G7 #GP

    def _write_debugctl(self, value: int, host_initiated: bool) -> None:
        freeze = value & DEBUGCTL_FREEZE_PERFMON_ON_PMI
        if freeze & ~self.pmu.debugctl_bits:
            raise GeneralProtection("IA32_DEBUGCTL.FREEZE_PERFMON_ON_PMI needs PMU version 2")
        self.lbr.wrmsr(IA32_DEBUGCTL, value & ~freeze, host_initiated)  # G6 for the rest
        self.pmu.freeze_perfmon_on_pmi = bool(freeze)
