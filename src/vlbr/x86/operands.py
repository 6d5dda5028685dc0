"""The linear address of an instruction's memory operand in 64-bit mode (SDM vol. 1, 3.7.5;
vol. 3A 3.4.4: only FS and GS have a base in 64-bit mode), once for both backends."""

from __future__ import annotations

from typing import Callable

from iced_x86 import Instruction, Register

MASK64 = (1 << 64) - 1


class UnsupportedOperand(Exception):
    """An addressing form this emulation does not cover (e.g. 32-bit address registers)."""


def linear_address(insn: Instruction, gpr: Callable[[Register], int],
                   segment_base: Callable[[Register], int]) -> int:
    """`gpr(register)` reads a 64-bit GPR; `segment_base(FS or GS)` the segment's base."""
    if insn.is_ip_rel_memory_operand:
        address = insn.ip_rel_memory_address
    else:
        address = insn.memory_displacement
        for reg, scale in ((insn.memory_base, 1), (insn.memory_index, insn.memory_index_scale)):
            if reg == Register.NONE:
                continue
            if not Register.RAX <= reg <= Register.R15:
                raise UnsupportedOperand(f"address register {reg}")
            address += scale * gpr(reg)
    if insn.segment_prefix in (Register.FS, Register.GS):
        address += segment_base(insn.segment_prefix)
    return address & MASK64
