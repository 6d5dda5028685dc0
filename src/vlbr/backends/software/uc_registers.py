"""The general registers of a unicorn x86-64 CPU as a kvm_regs holds them: one table, and the
copies in and out that the KVM backend's hybrid and its ring-3 excursion both make (any object
with kvm_regs' field names works: rax..r15, rsp, rflags, rip)."""

from __future__ import annotations

from iced_x86 import Register
from unicorn import Uc
from unicorn import x86_const as X

from vlbr.arch.x86 import RFLAGS_FIXED, RFLAGS_TF

# kvm_regs' field names of the 16 general registers, RSP among them.
GPR_NAMES = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
             *(f"r{n}" for n in range(8, 16)))
GPRS = tuple((name, getattr(X, f"UC_X86_REG_{name.upper()}")) for name in GPR_NAMES)
ICED_GPRS = {getattr(Register, name.upper()): name for name in GPR_NAMES}  # 64-bit only


def load(uc: Uc, regs, *, rsp: int | None = None, rflags: int | None = None,
         rip: int | None = None) -> None:
    """regs' general registers, RFLAGS and RIP into unicorn; a keyword replaces one (an IRETQ
    frame's). TF is dropped: KVM's single-step owns it, and unicorn must not trap on it."""
    for name, reg in GPRS:
        uc.reg_write(reg, getattr(regs, name))
    if rsp is not None:
        uc.reg_write(X.UC_X86_REG_RSP, rsp)
    flags = regs.rflags if rflags is None else rflags
    uc.reg_write(X.UC_X86_REG_RFLAGS, (flags & ~RFLAGS_TF) | RFLAGS_FIXED)
    uc.reg_write(X.UC_X86_REG_RIP, regs.rip if rip is None else rip)


def store(uc: Uc, regs) -> None:
    """unicorn's general registers, RFLAGS and RIP into regs."""
    for name, reg in GPRS:
        setattr(regs, name, uc.reg_read(reg))
    regs.rflags = uc.reg_read(X.UC_X86_REG_RFLAGS)
    regs.rip = uc.reg_read(X.UC_X86_REG_RIP)
