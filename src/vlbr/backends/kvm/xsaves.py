"""The XSAVE feature set's save/restore instructions emulated in user space where this KVM
cannot run them in a guest.

This KVM reports no XSAVES (KVM_GET_SUPPORTED_CPUID (0xD,1):EAX = 0) and a guest XSAVES ends
in KVM_EXIT_INTERNAL_ERROR (suberror 1, emulation failure); so does a supervisor XSAVE or
XRSTOR (kvm_pvm). vlbr's guest CPUID enumerates XSAVES for Arch LBR's supervisor component 15,
so the VMM completes these instructions with vlbr.x86.xstate (the software backend's XSAVES
too): x87/SSE (components 0 and 1) through KvmLegacy over the vCPU's own XSAVE image
(KVM_GET_XSAVE / KVM_SET_XSAVE; the legacy region is the same in the standard and compacted
formats) and component 15 by the vCPU model. Other components are not emulated:
NotEmulated, and the runner stops the vCPU with that reason.
"""

from __future__ import annotations

from iced_x86 import Code, Instruction, Register

from vlbr.arch.x86 import CR4_OSXSAVE, VECTOR_GP, VECTOR_UD, XFEATURES_LEGACY
from vlbr.arch.msrs import IA32_XSS
from vlbr.arch.xsave import HEADER_OFFSET, LEGACY_AREA_SIZE
from vlbr.backends.base import RAM_SIZE
from vlbr.vcpu.lbr import GeneralProtection, InvalidOpcode
from vlbr.vcpu.xsaves import read_xstate_bv
from vlbr.x86.legacy_xstate import LegacyState, store_components
from vlbr.x86.operands import UnsupportedOperand, linear_address
from vlbr.x86.xstate import UnmodelledXstate, xrstor, xrstors, xsave, xsaves

SAVES = {Code.XSAVES_MEM, Code.XSAVES64_MEM}
RESTORES = {Code.XRSTORS_MEM, Code.XRSTORS64_MEM}
STANDARD_SAVES = {Code.XSAVE_MEM, Code.XSAVE64_MEM}
STANDARD_RESTORES = {Code.XRSTOR_MEM, Code.XRSTOR64_MEM}
EMULATED = SAVES | RESTORES | STANDARD_SAVES | STANDARD_RESTORES
# REX.W: the 64-bit FIP/FDP form of the legacy region
WIDE = {Code.XSAVES64_MEM, Code.XRSTORS64_MEM, Code.XSAVE64_MEM, Code.XRSTOR64_MEM}
WINDOW = 0x4000  # bytes of guest memory handed to the model: >= any layout of these components

_GPRS = {Register.RAX: "rax", Register.RBX: "rbx", Register.RCX: "rcx", Register.RDX: "rdx",
         Register.RSI: "rsi", Register.RDI: "rdi", Register.RSP: "rsp", Register.RBP: "rbp",
         **{getattr(Register, f"R{n}"): f"r{n}" for n in range(8, 16)}}


class NotEmulated(Exception):
    """The instruction uses something this emulation does not cover."""


def emulates(insn: Instruction) -> bool:
    return insn.code in EMULATED


def effective_address(insn: Instruction, regs, sregs) -> int:
    """The operand's linear address (x86.operands), FS/GS bases from KVM's sregs."""
    bases = {Register.FS: sregs.fs.base, Register.GS: sregs.gs.base}
    try:
        return linear_address(insn, lambda r: getattr(regs, _GPRS[r]), bases.__getitem__)
    except UnsupportedOperand as err:
        raise NotEmulated(str(err)) from None


class KvmLegacy:
    """vlbr.x86.xstate.LegacyCpu over the vCPU's XSAVE image (KVM_GET_XSAVE / KVM_SET_XSAVE:
    standard format, legacy region in the 64-bit form). A component whose XSTATE_BV bit is
    clear there is in its initial configuration, whatever its bytes say."""

    def __init__(self, vcpu):
        self.vcpu = vcpu

    def read_legacy(self) -> LegacyState:
        image = self.vcpu.get_xsave()
        state = LegacyState.unpack(bytes(image[:LEGACY_AREA_SIZE]))
        absent = XFEATURES_LEGACY & ~read_xstate_bv(image, 0)
        return state.take(LegacyState(), absent)

    def write_legacy(self, state: LegacyState, components: int) -> None:
        image = self.vcpu.get_xsave()
        store_components(image, 0, state, components)
        bv = read_xstate_bv(image, 0) | components
        image[HEADER_OFFSET:HEADER_OFFSET + 8] = bv.to_bytes(8, "little")
        self.vcpu.set_xsave(bytes(image))


def emulate(insn: Instruction, vcpu, model, memory, regs, cpl: int) -> int | None:
    """Run the instruction at regs.rip; None on success, else the vector to inject."""
    try:
        sregs = vcpu.get_sregs()
        _check_may_run(insn, model, sregs, cpl)
        address = effective_address(insn, regs, sregs)
        base = address & ~63
        if not 0 <= base < RAM_SIZE:
            raise GeneralProtection(f"XSAVE area {address:#x} outside RAM")  # no #PF model
        area = bytearray(memory[base:min(base + WINDOW, RAM_SIZE)])
        _run(insn, KvmLegacy(vcpu), model, vcpu.get_xcrs().get(0, XFEATURES_LEGACY), area,
             address - base, (regs.rdx & 0xFFFFFFFF) << 32 | (regs.rax & 0xFFFFFFFF))
        memory[base:base + len(area)] = bytes(area)
    except UnmodelledXstate as err:
        raise NotEmulated(str(err)) from None
    except GeneralProtection:
        return VECTOR_GP
    except InvalidOpcode:
        return VECTOR_UD
    return None


def _check_may_run(insn: Instruction, model, sregs, cpl: int) -> None:
    """#UD without CR4.OSXSAVE (SDM Vol. 2 XSAVE, XSAVES); XSAVES/XRSTORS also #UD without
    CPUID.(0xD,1):EAX[3] and #GP above CPL 0."""
    if not sregs.cr4 & CR4_OSXSAVE:
        raise InvalidOpcode("the XSAVE feature set with CR4.OSXSAVE clear")
    if insn.code in SAVES or insn.code in RESTORES:
        if not model.config.xsaves:
            raise InvalidOpcode("XSAVES/XRSTORS without CPUID.(0xD,1):EAX[3]")
        if cpl != 0:
            raise GeneralProtection("XSAVES/XRSTORS at CPL > 0")


def _run(insn: Instruction, legacy: KvmLegacy, model, xcr0: int, area: bytearray, offset: int,
         rfbm: int) -> None:
    wide, table = insn.code in WIDE, model.config.table
    if insn.code in STANDARD_SAVES:
        xsave(legacy, area, offset, rfbm, xcr0, wide)
    elif insn.code in STANDARD_RESTORES:
        xrstor(legacy, table, area, offset, rfbm, xcr0, wide)
    else:
        op = xsaves if insn.code in SAVES else xrstors
        op(legacy, model, table, area, offset, rfbm, xcr0, model.rdmsr(IA32_XSS), wide=wide)
