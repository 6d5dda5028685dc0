"""SYSCALL and SYSRET in 64-bit mode (SDM vol. 2B), once for all backends: the state each
enters, computed from the MSRs; each backend loads it into its CPU."""

from __future__ import annotations

from dataclasses import dataclass

from vlbr.arch.msrs import is_canonical
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


SYSRET_RFLAGS = 0x3C7FD7  # the R11 bits SYSRET loads into RFLAGS (SDM vol. 2B, SYSRET)


@dataclass(frozen=True)
class SysretExit:
    rip: int  # RCX
    rflags: int  # (R11 & 3C7FD7H) | 2
    cs: int  # STAR[63:48] + 16, RPL 3: flat 64-bit code, DPL 3 (not read from the GDT)
    ss: int  # STAR[63:48] + 8, RPL 3: flat data, DPL 3


def sysret_exit(rcx: int, r11: int, star: int) -> SysretExit | None:
    """The ring-3 state a 64-bit SYSRETQ enters; None where RCX is not canonical (#GP(0) on
    Intel, which the CPU raises itself)."""
    if not is_canonical(rcx):
        return None
    selector = (star >> 48) & 0xFFFF
    return SysretExit(rip=rcx, rflags=(r11 & SYSRET_RFLAGS) | RFLAGS_FIXED,
                      cs=(selector + 16) | 3, ss=(selector + 8) | 3)
