"""The instructions of a Linux guest that QEMU's TCG does not perform as this machine needs
and vlbr does: RDMSR/WRMSR (pc/msrs.py), RDTSC(P), RDPMC, XSAVES/XRSTORS (with the Arch LBR
component 15), and the XCR0 that XSETBV sets. Each either retires or raises the fault the
CPU would (GeneralProtection, InvalidOpcode, PageFault); the machine delivers it."""

from __future__ import annotations

from typing import Callable

from iced_x86 import Instruction, Mnemonic
from unicorn import Uc
from unicorn import x86_const as X

from vlbr.arch.cpuid import CpuidTable
from vlbr.arch.msrs import IA32_LBR_DEPTH, decode_record_msr
from vlbr.arch.xsave import XSS_ARCH_LBR, XsaveLayout
from vlbr.arch.x86 import CR4_OSXSAVE, CR4_PCE, CR4_TSD, XFEATURE_X87
from vlbr.backends.pc.ground_truth import GroundTruth
from vlbr.backends.pc.msrs import IA32_TSC, PcMsrs
from vlbr.backends.software.fpu import uc_xrstors, uc_xsaves
from vlbr.backends.software.uc_operands import operand_address
from vlbr.policy.supported import XSAVES
from vlbr.vcpu import GeneralProtection, InvalidOpcode
from vlbr.vcpu.perfmon_msrs import PerfmonMsrs

XSTATE_MNEMONICS = frozenset([Mnemonic.XSAVES, Mnemonic.XSAVES64, Mnemonic.XRSTORS,
                              Mnemonic.XRSTORS64])
PERFORMED = frozenset([Mnemonic.RDMSR, Mnemonic.WRMSR, Mnemonic.RDTSC, Mnemonic.RDTSCP,
                       Mnemonic.RDPMC, *XSTATE_MNEMONICS])


class KernelInstructions:
    """Performs PERFORMED instructions on one unicorn vCPU; `linear_read/linear_write` reach
    memory through the guest's page tables (PageFault as the CPU's #PF)."""

    def __init__(self, uc: Uc, cpuid: CpuidTable, perfmon: PerfmonMsrs, msrs: PcMsrs,
                 linear_read: Callable[[int, int], bytes],
                 linear_write: Callable[[int, bytes], None], truth: GroundTruth | None):
        self.uc, self.cpuid, self.msrs, self.truth = uc, cpuid, msrs, truth
        self.lbr, self.pmu = perfmon.lbr, perfmon.pmu
        self.linear_read, self.linear_write = linear_read, linear_write
        self.xcr0 = XFEATURE_X87  # unicorn cannot read it back: noted at each XSETBV
        self._handlers = {Mnemonic.RDMSR: self._rdmsr, Mnemonic.WRMSR: self._wrmsr,
                          Mnemonic.RDTSC: self._rdtsc, Mnemonic.RDTSCP: self._rdtsc,
                          Mnemonic.RDPMC: self._rdpmc,
                          **{m: self._xstate for m in XSTATE_MNEMONICS}}

    def perform(self, insn: Instruction) -> None:
        """Perform `insn` (one of PERFORMED); RIP is the caller's to move past it."""
        self._handlers[insn.mnemonic](insn)

    def xsetbv(self) -> None:
        """Note the XCR0 an XSETBV at the current RIP sets (QEMU performs it; if it #GPs on
        the value instead, the guest does not survive it)."""
        if self._reg(X.UC_X86_REG_RCX) & 0xFFFFFFFF == 0:
            self.xcr0 = self._edx_eax()

    # --- registers --------------------------------------------------------------------------
    def _reg(self, reg: int) -> int:
        return self.uc.reg_read(reg)

    def _cpl(self) -> int:
        return self._reg(X.UC_X86_REG_CS) & 3

    def _cpl0(self, what: str) -> None:
        if self._cpl():
            raise GeneralProtection(f"{what} at CPL > 0")

    def _edx_eax(self) -> int:
        return ((self._reg(X.UC_X86_REG_RDX) & 0xFFFFFFFF) << 32
                | self._reg(X.UC_X86_REG_RAX) & 0xFFFFFFFF)

    def _set_edx_eax(self, value: int) -> None:
        self.uc.reg_write(X.UC_X86_REG_RAX, value & 0xFFFFFFFF)
        self.uc.reg_write(X.UC_X86_REG_RDX, value >> 32 & 0xFFFFFFFF)

    # --- the instructions -----------------------------------------------------------------
    def _rdmsr(self, insn: Instruction) -> None:
        self._cpl0("RDMSR")
        self._set_edx_eax(self.msrs.read(self._reg(X.UC_X86_REG_RCX) & 0xFFFFFFFF))

    def _wrmsr(self, insn: Instruction) -> None:
        self._cpl0("WRMSR")
        msr = self._reg(X.UC_X86_REG_RCX) & 0xFFFFFFFF
        self.msrs.write(msr, self._edx_eax())
        if self.truth is not None and (msr == IA32_LBR_DEPTH or decode_record_msr(msr)):
            self.truth.written(self.lbr.records())  # DEPTH zeroes them (intel/lbr.c)

    def _rdtsc(self, insn: Instruction) -> None:
        if self._reg(X.UC_X86_REG_CR4) & CR4_TSD:
            self._cpl0("RDTSC with CR4.TSD")
        self._set_edx_eax(self.msrs.read(IA32_TSC))
        if insn.mnemonic == Mnemonic.RDTSCP:
            self.uc.reg_write(X.UC_X86_REG_RCX, 0)  # IA32_TSC_AUX: the only CPU is 0

    def _rdpmc(self, insn: Instruction) -> None:
        pce = bool(self._reg(X.UC_X86_REG_CR4) & CR4_PCE)
        self._set_edx_eax(self.pmu.rdpmc(self._reg(X.UC_X86_REG_RCX) & 0xFFFFFFFF,
                                         self._cpl(), pce))

    def _xstate(self, insn: Instruction) -> None:
        """XSAVES/XRSTORS (SDM Vol. 2): #UD without CR4.OSXSAVE or CPUID XSAVES, #GP at CPL > 0;
        the area is read and written through the guest's page tables."""
        if not self._reg(X.UC_X86_REG_CR4) & CR4_OSXSAVE or not self._has_xsaves:
            raise InvalidOpcode(f"{insn} without CR4.OSXSAVE and CPUID.(0xD,1):EAX[3]")
        self._cpl0(str(insn))
        xss = self.lbr.xss
        address = operand_address(self.uc, insn)
        misalign = address & 63
        size = XsaveLayout.for_mask(self.cpuid, self.xcr0 | xss, compacted=True).size
        start = address - misalign
        area = bytearray(self.linear_read(start, size + misalign))
        wide = insn.mnemonic in (Mnemonic.XSAVES64, Mnemonic.XRSTORS64)
        if insn.mnemonic in (Mnemonic.XRSTORS, Mnemonic.XRSTORS64):
            uc_xrstors(self.uc, self.lbr, self.cpuid, self.xcr0, xss, self._edx_eax(), area,
                       misalign, wide)
            if self.truth is not None and self._edx_eax() & xss & XSS_ARCH_LBR:
                self.truth.written(self.lbr.records())  # a task's own records, restored
            return
        before = bytes(area)
        uc_xsaves(self.uc, self.lbr, self.cpuid, self.xcr0, xss, self._edx_eax(), area,
                  misalign, wide)
        if area != before:
            self.linear_write(start, bytes(area))

    @property
    def _has_xsaves(self) -> bool:
        return bool(self.cpuid.regs(0xD, 1).eax & XSAVES)
