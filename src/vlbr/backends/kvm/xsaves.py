"""The XSAVE feature set's save/restore instructions emulated in user space where this KVM
cannot run them in a guest.

This KVM reports no XSAVES (KVM_GET_SUPPORTED_CPUID (0xD,1):EAX = 0) and a guest XSAVES ends
in KVM_EXIT_INTERNAL_ERROR (suberror 1, emulation failure); so does a supervisor XSAVE or
XRSTOR (kvm_pvm). vlbr's guest CPUID enumerates XSAVES for Arch LBR's supervisor component 15,
so the VMM completes these instructions with vlbr.x86.xstate (the software backend's XSAVES
too): x87/SSE and the user components (AVX, ...) through KvmXstate over the vCPU's own XSAVE
image (KVM_GET_XSAVE / KVM_SET_XSAVE, standard format), component 15 by the vCPU model.
Components beyond the 4 KiB image (AMX) are not emulated: NotEmulated, and the runner stops
the vCPU with that reason.
"""

from __future__ import annotations

from iced_x86 import Code, Instruction, Register

from vlbr.arch.x86 import CR4_OSXSAVE, VECTOR_GP, VECTOR_UD, XFEATURES_LEGACY
from vlbr.arch.leaves import xsave_component, xsave_main
from vlbr.arch.xsave import HEADER_OFFSET, LEGACY_AREA_SIZE, XsaveLayout
from vlbr.backends.base import RAM_SIZE
from vlbr.backends.software.uc_registers import ICED_GPRS
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



class NotEmulated(Exception):
    """The instruction uses something this emulation does not cover."""


def emulates(insn: Instruction) -> bool:
    return insn.code in EMULATED


def effective_address(insn: Instruction, regs, sregs) -> int:
    """The operand's linear address (x86.operands), FS/GS bases from KVM's sregs."""
    bases = {Register.FS: sregs.fs.base, Register.GS: sregs.gs.base}
    try:
        return linear_address(insn, lambda r: getattr(regs, ICED_GPRS[r]), bases.__getitem__)
    except UnsupportedOperand as err:
        raise NotEmulated(str(err)) from None


class KvmXstate:
    """vlbr.x86.xstate.ExtendedCpu over the vCPU's XSAVE image (KVM_GET_XSAVE / KVM_SET_XSAVE:
    standard format, legacy region in the 64-bit form): x87, SSE and every user component
    the guest CPUID enumerates within the image (AVX, AVX-512's three), at its CPUID offset.
    A component whose XSTATE_BV bit is clear there is in its initial configuration."""

    def __init__(self, vcpu, table):
        self.vcpu = vcpu
        self.layout = XsaveLayout.for_mask(table, _user_components(table), compacted=False)
        image = len(vcpu.get_xsave())
        self.extended = sum(1 << i for i, o in self.layout.offsets.items()
                            if o + self.layout.sizes[i] <= image)

    def read_legacy(self) -> LegacyState:
        image = self.vcpu.get_xsave()
        state = LegacyState.unpack(bytes(image[:LEGACY_AREA_SIZE]))
        absent = XFEATURES_LEGACY & ~read_xstate_bv(image, 0)
        return state.take(LegacyState(), absent)

    def write_legacy(self, state: LegacyState, components: int) -> None:
        image = self.vcpu.get_xsave()
        store_components(image, 0, state, components)
        self._put(image, components, components)

    def read_component(self, index: int) -> bytes | None:
        image = self.vcpu.get_xsave()
        if not read_xstate_bv(image, 0) >> index & 1:
            return None
        start = self.layout.offset_of(index)
        return bytes(image[start: start + self.layout.sizes[index]])

    def write_component(self, index: int, data: bytes | None) -> None:
        image = self.vcpu.get_xsave()
        start = self.layout.offset_of(index)
        image[start: start + self.layout.sizes[index]] = data or bytes(self.layout.sizes[index])
        self._put(image, 1 << index, 0 if data is None else 1 << index)

    def _put(self, image: bytearray, components: int, in_use: int) -> None:
        bv = read_xstate_bv(image, 0) & ~components | in_use
        image[HEADER_OFFSET:HEADER_OFFSET + 8] = bv.to_bytes(8, "little")
        self.vcpu.set_xsave(bytes(image))


def _user_components(table) -> int:
    """XCR0's components from 2 up that CPUID.(0xD,0) supports and CPUID.(0xD,i) describes."""
    main = xsave_main(table)
    return sum(1 << i for i in range(2, 64)
               if main.xcr0_supported >> i & 1 and xsave_component(table, i) is not None)


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
        _run(insn, KvmXstate(vcpu, model.config.table), model,
             vcpu.get_xcrs().get(0, XFEATURES_LEGACY), area,
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


def _run(insn: Instruction, state: KvmXstate, model, xcr0: int, area: bytearray, offset: int,
         rfbm: int) -> None:
    wide, table = insn.code in WIDE, model.config.table
    if insn.code in STANDARD_SAVES:
        xsave(state, table, area, offset, rfbm, xcr0, wide)
    elif insn.code in STANDARD_RESTORES:
        xrstor(state, table, area, offset, rfbm, xcr0, wide)
    else:
        op = xsaves if insn.code in SAVES else xrstors
        op(state, model, table, area, offset, rfbm, xcr0, model.xss, wide=wide)
