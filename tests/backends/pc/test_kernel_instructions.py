"""backends/pc/kernel_instructions.py: the rules of the instructions vlbr performs for a Linux
guest, on a plain register file (the machine's Linux boots exercise them on unicorn).

SDM vol. 2: RDMSR/WRMSR #GP(0) at CPL > 0; RDTSC/RDTSCP #GP(0) at CPL > 0 with CR4.TSD,
RDTSCP loads ECX with IA32_TSC_AUX; XSAVES/XRSTORS #UD with CR4.OSXSAVE clear or without
CPUID.(0xD,1):EAX[3], #GP(0) at CPL > 0; EDX:EAX is the 64-bit value of each."""

from __future__ import annotations

import pytest
from iced_x86 import Decoder, Mnemonic
from unicorn import x86_const as X

from vlbr.arch.msrs import IA32_LBR_CTL
from vlbr.arch.x86 import CR4_OSXSAVE, CR4_TSD, XFEATURE_X87
from vlbr.backends.pc.cpu_model import guest_cpuid
from vlbr.backends.pc.kernel_instructions import KernelInstructions
from vlbr.backends.pc.msrs import PcMsrs
from vlbr.vcpu import GeneralProtection, InvalidOpcode
from vlbr.vcpu.perfmon_msrs import PerfmonMsrs

TSC = 0x1234_5678_9ABC
RDMSR, WRMSR, RDTSCP, XSAVES = b"\x0f\x32", b"\x0f\x30", b"\x0f\x01\xf9", b"\x0f\xc7\x2f"
IA32_TSC = 0x10


class RegisterFile:
    """The part of a Uc KernelInstructions uses: register reads and writes."""

    def __init__(self, **regs: int):
        self.regs = {getattr(X, f"UC_X86_REG_{k.upper()}"): v for k, v in regs.items()}

    def reg_read(self, reg: int) -> int:
        return self.regs.get(reg, 0)

    def reg_write(self, reg: int, value: int) -> None:
        self.regs[reg] = value


def kernel(cs: int = 0x10, cr4: int = 0, **regs: int) -> tuple[KernelInstructions, RegisterFile]:
    uc = RegisterFile(cs=cs, cr4=cr4, **regs)
    table = guest_cpuid()
    perfmon = PerfmonMsrs.from_cpuid(table)
    msrs = PcMsrs(uc, perfmon, lambda: TSC)
    k = KernelInstructions(uc, table, perfmon, msrs, lambda a, n: bytes(n),
                           lambda a, d: None, None)
    return k, uc


def insn(raw: bytes):
    return Decoder(64, raw, ip=0x1000).decode()


def edx_eax(uc: RegisterFile) -> int:
    return uc.reg_read(X.UC_X86_REG_RDX) << 32 | uc.reg_read(X.UC_X86_REG_RAX)


def test_rdmsr_gives_edx_eax_at_cpl0_and_gp_at_cpl3():
    k, uc = kernel(rcx=IA32_TSC)
    k.perform(insn(RDMSR))
    assert edx_eax(uc) == TSC
    k, uc = kernel(cs=0x33, rcx=IA32_TSC)
    with pytest.raises(GeneralProtection):
        k.perform(insn(RDMSR))


def test_wrmsr_reaches_the_arch_lbr_model():
    k, _ = kernel(rcx=IA32_LBR_CTL, rax=0x7F0003, rdx=0)
    k.perform(insn(WRMSR))
    assert k.lbr.lbr_ctl == 0x7F0003


def test_rdtscp_loads_ecx_and_tsd_faults_only_outside_ring0():
    k, uc = kernel(cs=0x33, rcx=0xFFFF)
    k.perform(insn(RDTSCP))
    assert edx_eax(uc) == TSC and uc.reg_read(X.UC_X86_REG_RCX) == 0
    k, _ = kernel(cs=0x33, cr4=CR4_TSD)
    with pytest.raises(GeneralProtection, match="TSD"):
        k.perform(insn(RDTSCP))
    k, uc = kernel(cr4=CR4_TSD)
    k.perform(insn(RDTSCP))
    assert edx_eax(uc) == TSC


def test_xsaves_is_ud_without_osxsave_and_gp_at_cpl3():
    assert insn(XSAVES).mnemonic == Mnemonic.XSAVES
    k, _ = kernel()
    with pytest.raises(InvalidOpcode, match="OSXSAVE"):
        k.perform(insn(XSAVES))
    k, _ = kernel(cs=0x33, cr4=CR4_OSXSAVE)
    with pytest.raises(GeneralProtection):
        k.perform(insn(XSAVES))


def test_xsetbv_notes_xcr0_only_for_ecx_0():
    k, _ = kernel(rcx=1, rax=0x7)
    k.xsetbv()
    assert k.xcr0 == XFEATURE_X87  # XCR1 is not XCR0
    k.uc.reg_write(X.UC_X86_REG_RCX, 0)
    k.xsetbv()
    assert k.xcr0 == 0x7
