"""The MSRs of the PC machine's vCPU, by owner: the Arch LBR and PMU models (PerfmonMsrs),
virtual time (IA32_TSC), the local APIC (IA32_APIC_BASE), the registers QEMU keeps because unicorn needs them (EFER,
the SYSCALL and segment-base MSRs, PAT), and a few plain registers Linux reads on an Intel
part. Any other MSR #GPs, as on a CPU without it (QEMU itself would read 0)."""

from __future__ import annotations

from typing import Callable

from unicorn import Uc

from vlbr.arch.x86 import IA32_APIC_BASE
from vlbr.backends.software.backend import QEMU_MSRS
from vlbr.vcpu import GeneralProtection
from vlbr.vcpu.perfmon_msrs import PerfmonMsrs

IA32_TSC = 0x10
IA32_BIOS_SIGN_ID = 0x8B  # the microcode revision: Linux writes 0, runs CPUID, reads it
IA32_MISC_ENABLE = 0x1A0
MISC_ENABLE_FAST_STRINGS = 1 << 0
PLAIN_RESET = {IA32_MISC_ENABLE: MISC_ENABLE_FAST_STRINGS, IA32_BIOS_SIGN_ID: 0}


class PcMsrs:
    """RDMSR/WRMSR of the guest, routed to the model that owns each MSR."""

    def __init__(self, uc: Uc, perfmon: PerfmonMsrs, tsc: Callable[[], int], lapic=None):
        self.uc, self.perfmon, self._tsc, self.lapic = uc, perfmon, tsc, lapic
        self.tsc_offset = 0
        self.plain = dict(PLAIN_RESET)
        self.faults: list[tuple[str, int]] = []  # (RDMSR|WRMSR, msr) that #GPed, for reports

    def _model(self, msr: int):
        return self.perfmon if self.perfmon.owns(msr) else None

    def read(self, msr: int) -> int:
        model = self._model(msr)
        if model is not None:
            return model.rdmsr(msr)
        if msr == IA32_TSC:
            return (self._tsc() + self.tsc_offset) & (1 << 64) - 1
        if msr == IA32_APIC_BASE and self.lapic is not None:
            return self.lapic.rdmsr_base()
        if msr in self.plain:
            return self.plain[msr]
        if msr in QEMU_MSRS:
            return self.uc.msr_read(msr)
        self.faults.append(("RDMSR", msr))
        raise GeneralProtection(f"RDMSR {msr:#x}: no such MSR on this vCPU")

    def write(self, msr: int, value: int) -> None:
        model = self._model(msr)
        if model is not None:
            model.wrmsr(msr, value)
        elif msr == IA32_TSC:
            self.tsc_offset = value - self._tsc()
        elif msr == IA32_APIC_BASE and self.lapic is not None:
            self.lapic.wrmsr_base(value)
        elif msr in self.plain:
            self.plain[msr] = value
        elif msr in QEMU_MSRS:
            self.uc.msr_write(msr, value)
        else:
            self.faults.append(("WRMSR", msr))
            raise GeneralProtection(f"WRMSR {msr:#x}: no such MSR on this vCPU")
