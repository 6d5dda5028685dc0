"""backends.kvm.gaps and guest_code: the pieces of the KVM completions that need no vCPU.

- keep_trap_flag: POPFQ pops RFLAGS at RSP, IRETQ at RSP+16 (SDM vol. 2 IRET: RIP, CS,
  RFLAGS, RSP, SS); TF is bit 8 (vol. 1 3.4.3.3). An IRETQ to CPL3 is left alone (this KVM
  #UDs it with TF set, measured in usermode.py's docstring).
- GuestCode: code the guest rewrites is decoded again; reads stop where RAM ends."""

from __future__ import annotations

import struct

from iced_x86 import Code, Decoder

from vlbr.arch.x86 import RFLAGS_IF, RFLAGS_TF
from vlbr.backends.base import RAM_SIZE
from vlbr.backends.kvm.gaps import enters_user, iret_to_user, keep_trap_flag
from vlbr.backends.kvm.guest_code import GuestCode

STACK = 0x8000
POPFQ, IRETQ, NOP, SYSRETQ = b"\x9d", b"\x48\xcf", b"\x90", b"\x48\x0f\x07"


class Regs:
    rsp = STACK


def insn(raw: bytes):
    return Decoder(64, raw, ip=0x1000).decode()


def code_with_frame(*qwords: int) -> GuestCode:
    memory = bytearray(RAM_SIZE)
    struct.pack_into(f"<{len(qwords)}Q", memory, STACK, *qwords)
    return GuestCode(memory)


def qword(code: GuestCode, at: int) -> int:
    return struct.unpack_from("<Q", code.memory, at)[0]


def test_popfq_gets_tf_and_says_whether_the_guest_had_set_it():
    code = code_with_frame(RFLAGS_IF)
    assert insn(POPFQ).code == Code.POPFQ
    assert keep_trap_flag(insn(POPFQ), Regs, code) is False
    assert qword(code, STACK) == RFLAGS_IF | RFLAGS_TF
    assert keep_trap_flag(insn(POPFQ), Regs, code) is True  # now the image has TF


def test_iretq_to_ring0_gets_tf_in_the_rflags_slot_only():
    code = code_with_frame(0x2000, 0x08, RFLAGS_IF, 0x9000, 0x10)
    assert insn(IRETQ).code == Code.IRETQ and not iret_to_user(Regs, code)
    assert keep_trap_flag(insn(IRETQ), Regs, code) is False
    assert [qword(code, STACK + 8 * i) for i in range(5)] == [
        0x2000, 0x08, RFLAGS_IF | RFLAGS_TF, 0x9000, 0x10]


def test_iretq_to_ring3_is_left_alone():
    code = code_with_frame(0x2000, 0x2B, RFLAGS_IF | RFLAGS_TF, 0x9000, 0x33)
    assert iret_to_user(Regs, code)
    assert keep_trap_flag(insn(IRETQ), Regs, code) is False
    assert qword(code, STACK + 16) == RFLAGS_IF | RFLAGS_TF


def test_other_instructions_and_a_stack_outside_ram_change_nothing():
    code = code_with_frame(RFLAGS_IF)
    assert keep_trap_flag(insn(NOP), Regs, code) is False

    class Top:
        rsp = RAM_SIZE - 4  # the 8-byte image would cross the end of RAM
    assert keep_trap_flag(insn(POPFQ), Top, code) is False
    assert code.memory[RAM_SIZE - 4:] == bytes(4)


def test_guest_code_decodes_again_after_a_rewrite_and_reads_stop_at_the_end_of_ram():
    code = GuestCode(bytearray(RAM_SIZE))
    code.memory[0x1000:0x1002] = b"\xeb\xfe"  # jmp $
    first = code.decode(0x1000)
    assert first.insn.code == Code.JMP_REL8_64 and first.cls is not None
    assert code.decode(0x1000) is first  # unchanged bytes: the cached decode
    code.memory[0x1000:0x1002] = NOP * 2
    again = code.decode(0x1000)
    assert again.insn.code == Code.NOPD and again.cls is None
    assert code.read(RAM_SIZE - 2, 8) == bytes(2) and code.read(RAM_SIZE, 1) == b""
    assert code.read(-1, 1) == b""


def test_iretq_to_ring3_and_sysretq_to_a_canonical_rcx_enter_user_mode():
    # SDM vol. 2B SYSRET: always to CPL 3, unless RCX is not canonical (#GP(0) at CPL 0).
    to_user = code_with_frame(0x2000, 0x2B, RFLAGS_IF, 0x9000, 0x33)
    to_kernel = code_with_frame(0x2000, 0x08, RFLAGS_IF, 0x9000, 0x10)

    class Rcx:
        rsp, rcx = STACK, 0x40_1000

    class BadRcx:
        rsp, rcx = STACK, 0x8000_0000_0000_0000
    assert enters_user(insn(IRETQ), Regs, to_user) and not enters_user(insn(IRETQ), Regs, to_kernel)
    assert enters_user(insn(SYSRETQ), Rcx, to_kernel)
    assert not enters_user(insn(SYSRETQ), BadRcx, to_kernel)
    assert not enters_user(insn(POPFQ), Rcx, to_user)
