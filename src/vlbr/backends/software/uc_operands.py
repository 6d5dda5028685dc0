"""The linear address of an instruction's memory operand on a unicorn CPU (vlbr.x86.operands
over unicorn's registers), for the instructions vlbr performs itself."""

from __future__ import annotations

from iced_x86 import Instruction, Register
from unicorn import Uc
from unicorn import x86_const as X

from vlbr.x86.operands import linear_address

from .uc_registers import GPRS, ICED_GPRS

GPRS64 = {register: dict(GPRS)[name] for register, name in ICED_GPRS.items()}
SEGMENT_BASES = {Register.FS: X.UC_X86_REG_FS_BASE, Register.GS: X.UC_X86_REG_GS_BASE}


def operand_address(uc: Uc, insn: Instruction) -> int:
    """UnsupportedOperand (vlbr.x86.operands) for a form it does not compute."""
    return linear_address(insn, lambda r: uc.reg_read(GPRS64[r]),
                          lambda r: uc.reg_read(SEGMENT_BASES[r]))
