"""XSAVES/XRSTORS emulated in user space: the KVM here cannot run them in a guest.

This KVM reports no XSAVES (KVM_GET_SUPPORTED_CPUID (0xD,1):EAX = 0) and a guest XSAVES ends
in KVM_EXIT_INTERNAL_ERROR (suberror 1, emulation failure). vlbr's guest CPUID enumerates
XSAVES for Arch LBR's supervisor component 15, so the VMM completes the instruction: x87/SSE
(components 0 and 1) from the vCPU's own XSAVE image (KVM_GET_XSAVE / KVM_SET_XSAVE; the
legacy region is the same in the standard and compacted formats) and component 15 by the
vCPU model. Other components are not emulated: NotEmulated, and the runner stops the vCPU
with that reason.
"""

from __future__ import annotations

from iced_x86 import Code, Instruction, Register

from vlbr.arch.x86 import VECTOR_GP, VECTOR_UD, XFEATURES_LEGACY
from vlbr.arch.msrs import IA32_XSS
from vlbr.arch.xsave import LEGACY_AREA_SIZE, XCOMP_BV_COMPACTED, XSS_ARCH_LBR
from vlbr.backends.base import RAM_SIZE
from vlbr.vcpu.lbr import GeneralProtection, InvalidOpcode
from vlbr.x86.operands import UnsupportedOperand, linear_address

SAVES = {Code.XSAVES_MEM, Code.XSAVES64_MEM}
RESTORES = {Code.XRSTORS_MEM, Code.XRSTORS64_MEM}
EMULATED = XFEATURES_LEGACY | XSS_ARCH_LBR
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


def emulate(insn: Instruction, vcpu, model, memory, regs, cpl: int) -> int | None:
    """Run the XSAVES/XRSTORS at regs.rip; None on success, else the vector to inject."""
    try:
        if cpl != 0:
            raise GeneralProtection("XSAVES/XRSTORS at CPL > 0")
        address = effective_address(insn, regs, vcpu.get_sregs())
        xcr0 = vcpu.get_xcrs().get(0, XFEATURES_LEGACY)
        xss = model.rdmsr(IA32_XSS)
        rfbm = ((regs.rdx & 0xFFFFFFFF) << 32 | (regs.rax & 0xFFFFFFFF)) & (xcr0 | xss)
        if rfbm & ~EMULATED:
            raise NotEmulated(f"XSAVE components {rfbm & ~EMULATED:#x}")
        base = address & ~63
        if not 0 <= base < RAM_SIZE:
            raise GeneralProtection(f"XSAVE area {address:#x} outside RAM")  # no #PF model
        area = bytearray(memory[base:min(base + WINDOW, RAM_SIZE)])
        offset = address - base
        if insn.code in SAVES:
            _save_legacy(vcpu, area, offset, rfbm)
            model.xsaves(area, offset, rfbm, xcr0, xss)
        else:
            model.xrstors(area, offset, rfbm, xcr0, xss)
            _restore_legacy(vcpu, area, offset, rfbm)
        memory[base:base + len(area)] = bytes(area)
    except GeneralProtection:
        return VECTOR_GP
    except InvalidOpcode:
        return VECTOR_UD
    return None


def _save_legacy(vcpu, area: bytearray, offset: int, rfbm: int) -> None:
    if offset % 64:
        raise GeneralProtection("XSAVES area not 64-byte aligned")
    if not rfbm & XFEATURES_LEGACY or len(area) < offset + LEGACY_AREA_SIZE + 64:
        return
    image = vcpu.get_xsave()
    xstate_bv = int.from_bytes(image[LEGACY_AREA_SIZE:LEGACY_AREA_SIZE + 8], "little")
    in_use = xstate_bv & XFEATURES_LEGACY & rfbm
    if rfbm & 1:
        area[offset:offset + 160] = image[0:160]  # FCW..FOP, FIP/FDP and ST0-7
    if rfbm & 2:
        area[offset + 24:offset + 32] = image[24:32]  # MXCSR, MXCSR_MASK
        area[offset + 160:offset + 416] = image[160:416]  # XMM0-15
    bv_at = offset + LEGACY_AREA_SIZE
    old = int.from_bytes(area[bv_at:bv_at + 8], "little")
    area[bv_at:bv_at + 8] = ((old & ~XFEATURES_LEGACY) | in_use).to_bytes(8, "little")


def _restore_legacy(vcpu, area: bytearray, offset: int, rfbm: int) -> None:
    if not rfbm & XFEATURES_LEGACY:
        return
    header = area[offset + LEGACY_AREA_SIZE:offset + LEGACY_AREA_SIZE + 16]
    xstate_bv = int.from_bytes(header[:8], "little")
    if not int.from_bytes(header[8:16], "little") & XCOMP_BV_COMPACTED:
        raise GeneralProtection("XRSTORS of a standard-format area")
    image = vcpu.get_xsave()
    if rfbm & 1:
        if xstate_bv & 1:
            image[0:24] = area[offset:offset + 24]
            image[32:160] = area[offset + 32:offset + 160]
        else:  # init configuration (SDM 13.6): FCW 0x37F, everything else 0
            image[0:24] = (0x37F).to_bytes(2, "little") + bytes(22)
            image[32:160] = bytes(128)
    if rfbm & 2:
        if xstate_bv & 2:
            image[160:416] = area[offset + 160:offset + 416]
        else:
            image[160:416] = bytes(256)
    if rfbm & 2:  # MXCSR is loaded with RFBM[1] whatever XSTATE_BV says (SDM 13.8.1)
        image[24:28] = area[offset + 24:offset + 28]
    bv = int.from_bytes(image[LEGACY_AREA_SIZE:LEGACY_AREA_SIZE + 8], "little")
    image[LEGACY_AREA_SIZE:LEGACY_AREA_SIZE + 8] = ((bv & ~(rfbm & XFEATURES_LEGACY)) | (xstate_bv & rfbm & XFEATURES_LEGACY)
                                ).to_bytes(8, "little")
    vcpu.set_xsave(bytes(image))
