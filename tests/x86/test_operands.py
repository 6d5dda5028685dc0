"""vlbr.x86.operands: the memory operand's linear address (SDM vol. 1 3.7.5, vol. 3A 3.4.4).
The KVM backend's copy used to ignore FS/GS overrides on XSAVES/XRSTORS."""

import pytest
from iced_x86 import Code, Decoder, Encoder, Instruction, MemoryOperand, Register as R

from vlbr.x86.operands import UnsupportedOperand, linear_address

GPRS = {R.RBX: 0x1000, R.RCX: 3, R.RSP: 0x8000}
BASES = {R.FS: 0x7000_0000, R.GS: 0xFFFF_8000_0000_0000}


def decoded(insn: Instruction, ip: int = 0x100000) -> Instruction:
    encoder = Encoder(64)
    encoder.encode(insn, ip)
    return Decoder(64, encoder.take_buffer(), ip=ip).decode()


def address(insn):
    return linear_address(insn, GPRS.__getitem__, BASES.__getitem__)


def test_base_index_scale_displacement():
    insn = decoded(Instruction.create_mem(Code.XSAVES64_MEM, MemoryOperand(R.RBX, R.RCX, 8, 0x40)))
    assert address(insn) == 0x1000 + 3 * 8 + 0x40


def test_fs_and_gs_overrides_add_their_base():
    for seg in (R.FS, R.GS):
        op = MemoryOperand(R.RBX, displ=0x10, seg=seg)
        insn = decoded(Instruction.create_mem(Code.XRSTORS64_MEM, op))
        assert address(insn) == (BASES[seg] + 0x1010) & (1 << 64) - 1


def test_rip_relative_and_a_32_bit_address_register():
    rel = decoded(Instruction.create_mem(Code.XSAVES64_MEM, MemoryOperand(R.RIP, displ=0x100200)))
    assert address(rel) == 0x100200
    short = decoded(Instruction.create_mem(Code.XSAVES64_MEM, MemoryOperand(R.EBX)))
    with pytest.raises(UnsupportedOperand):
        address(short)
