"""XSAVES/XRSTORS emulated in user space: the KVM here cannot run them in a guest.

This KVM reports no XSAVES (KVM_GET_SUPPORTED_CPUID (0xD,1):EAX = 0) and a guest XSAVES ends
in KVM_EXIT_INTERNAL_ERROR (suberror 1, emulation failure). vlbr's guest CPUID enumerates
XSAVES for Arch LBR's supervisor component 15, so the VMM completes the instruction with
vlbr.x86.xstate (the software backend's XSAVES too): x87/SSE (components 0 and 1) through
KvmLegacy over the vCPU's own XSAVE image (KVM_GET_XSAVE / KVM_SET_XSAVE; the legacy region
is the same in the standard and compacted formats) and component 15 by the vCPU model.
Other components are not emulated: NotEmulated, and the runner stops the vCPU with that
reason.
"""

from __future__ import annotations

from iced_x86 import Code, Instruction, Register

from vlbr.arch.x86 import VECTOR_GP, VECTOR_UD, XFEATURES_LEGACY
from vlbr.arch.msrs import IA32_XSS
from vlbr.arch.xsave import HEADER_OFFSET, LEGACY_AREA_SIZE
from vlbr.backends.base import RAM_SIZE
from vlbr.vcpu.lbr import GeneralProtection, InvalidOpcode
from vlbr.vcpu.xsaves import read_xstate_bv
from vlbr.x86.legacy_xstate import LegacyState, store_components
from vlbr.x86.operands import UnsupportedOperand, linear_address
from vlbr.x86.xstate import UnmodelledXstate, xrstors, xsaves

SAVES = {Code.XSAVES_MEM, Code.XSAVES64_MEM}
RESTORES = {Code.XRSTORS_MEM, Code.XRSTORS64_MEM}
WIDE = {Code.XSAVES64_MEM, Code.XRSTORS64_MEM}  # REX.W: the 64-bit FIP/FDP form
WINDOW = 0x4000  # bytes of guest memory handed to the model: >= any layout of these components

_GPRS = {Register.RAX: "rax", Register.RBX: "rbx", Register.RCX: "rcx", Register.RDX: "rdx",
         Register.RSI: "rsi", Register.RDI: "rdi", Register.RSP: "rsp", Register.RBP: "rbp",
         **{getattr(Register, f"R{n}"): f"r{n}" for n in range(8, 16)}}


class NotEmulated(Exception):
    """The instruction uses something this emulation does not cover."""


def emulates(insn: Instruction) -> bool:
    return insn.code in SAVES or insn.code in RESTORES


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
    """Run the XSAVES/XRSTORS at regs.rip; None on success, else the vector to inject."""
    try:
        if not model.config.xsaves:
            raise InvalidOpcode("XSAVES/XRSTORS without CPUID.(0xD,1):EAX[3]")
        if cpl != 0:
            raise GeneralProtection("XSAVES/XRSTORS at CPL > 0")
        address = effective_address(insn, regs, vcpu.get_sregs())
        xcr0 = vcpu.get_xcrs().get(0, XFEATURES_LEGACY)
        xss = model.rdmsr(IA32_XSS)
        rfbm = (regs.rdx & 0xFFFFFFFF) << 32 | (regs.rax & 0xFFFFFFFF)
        base = address & ~63
        if not 0 <= base < RAM_SIZE:
            raise GeneralProtection(f"XSAVE area {address:#x} outside RAM")  # no #PF model
        area = bytearray(memory[base:min(base + WINDOW, RAM_SIZE)])
        op = xsaves if insn.code in SAVES else xrstors
        op(KvmLegacy(vcpu), model, model.config.table, area, address - base, rfbm, xcr0, xss,
           wide=insn.code in WIDE)
        memory[base:base + len(area)] = bytes(area)
    except UnmodelledXstate as err:
        raise NotEmulated(str(err)) from None
    except GeneralProtection:
        return VECTOR_GP
    except InvalidOpcode:
        return VECTOR_UD
    return None
