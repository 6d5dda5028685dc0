"""SYSCALL in 64-bit mode (SDM vol. 2B, SYSCALL), once for both backends: the state it
enters, computed from the MSRs; each backend loads it into its CPU."""

from __future__ import annotations

from dataclasses import dataclass

from vlbr.arch.x86 import EFER_SCE, RFLAGS_FIXED, RFLAGS_RF

SYSCALL_LENGTH = 2  # 0F 05


@dataclass(frozen=True)
class SyscallEntry:
    rip: int  # IA32_LSTAR
    rflags: int  # RFLAGS & ~IA32_FMASK, RF clear
    rcx: int  # the return RIP
    r11: int  # the RFLAGS to return with
    cs: int  # STAR[47:32] & ~3: flat 64-bit code, DPL 0 (not read from the GDT)
    ss: int  # STAR[47:32] + 8: flat data, DPL 0


def syscall_entry(syscall_ip: int, rflags: int, efer: int, star: int, lstar: int,
                  fmask: int) -> SyscallEntry | None:
    """The state after the SYSCALL at syscall_ip; None when EFER.SCE is clear (#UD)."""
    if not efer & EFER_SCE:
        return None
    selector = (star >> 32) & 0xFFFC
    return SyscallEntry(rip=lstar, rflags=(rflags & ~fmask & ~RFLAGS_RF) | RFLAGS_FIXED,
                        rcx=syscall_ip + SYSCALL_LENGTH, r11=rflags & ~RFLAGS_RF,
                        cs=selector, ss=selector + 8)
