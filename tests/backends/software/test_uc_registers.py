"""The one unicorn register adapter (software/uc_registers.py): every general register of a
kvm_regs goes into a unicorn CPU and back unchanged; TF is dropped and RFLAGS bit 1 kept set
(SDM vol. 1 3.4.3: bit 1 is reserved, always 1); the operand adapter reads the same table."""

from __future__ import annotations

from iced_x86 import Code, Instruction, MemoryOperand, Register
from unicorn import x86_const as X

from vlbr.arch.x86 import RFLAGS_FIXED, RFLAGS_IF, RFLAGS_TF
from vlbr.backends.software import uc_registers
from vlbr.backends.software.uc_cpu import x86_64_cpu
from vlbr.backends.software.uc_operands import operand_address
from vlbr.host.kvm import kvm_regs

FIELDS = [name for name, _ in kvm_regs._fields_]


def distinct_regs() -> kvm_regs:
    """Every field a different value, RFLAGS with TF set and bit 1 clear."""
    regs = kvm_regs(**{name: 0x0123_4567_0000_0000 + (i << 8) for i, name in enumerate(FIELDS)})
    regs.rflags = RFLAGS_IF | RFLAGS_TF
    return regs


def test_the_table_is_kvm_regs_general_registers():
    assert set(uc_registers.GPR_NAMES) == set(FIELDS) - {"rip", "rflags"}
    assert len({reg for _, reg in uc_registers.GPRS}) == 16


def test_every_general_register_round_trips():
    uc, regs = x86_64_cpu(), distinct_regs()
    uc_registers.load(uc, regs)
    for name in uc_registers.GPR_NAMES:
        assert uc.reg_read(getattr(X, f"UC_X86_REG_{name.upper()}")) == getattr(regs, name), name
    back = kvm_regs()
    uc_registers.store(uc, back)
    for name in FIELDS:
        want = getattr(regs, name)
        if name == "rflags":
            want = (want & ~RFLAGS_TF) | RFLAGS_FIXED
        assert getattr(back, name) == want, name


def test_keywords_replace_rsp_rflags_and_rip():
    # the ring-3 excursion loads RSP, RFLAGS and RIP from the IRETQ frame, not from regs
    uc, regs = x86_64_cpu(), distinct_regs()
    uc_registers.load(uc, regs, rsp=0x7000, rflags=RFLAGS_TF, rip=0x100000)
    back = kvm_regs()
    uc_registers.store(uc, back)
    assert (back.rsp, back.rflags, back.rip) == (0x7000, RFLAGS_FIXED, 0x100000)
    assert back.r15 == regs.r15


def test_operand_addresses_read_the_same_table():
    uc, regs = x86_64_cpu(), distinct_regs()
    uc_registers.load(uc, regs)
    cases = ((MemoryOperand(Register.RSP, displ=8), regs.rsp + 8),
             (MemoryOperand(Register.R13, Register.R9, 4), regs.r13 + 4 * regs.r9),
             (MemoryOperand(Register.RBP, Register.RAX, 2), regs.rbp + 2 * regs.rax))
    for operand, want in cases:
        insn = Instruction.create_mem(Code.INC_RM64, operand)
        assert operand_address(uc, insn) == want & (1 << 64) - 1
