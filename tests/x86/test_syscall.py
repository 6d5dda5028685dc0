"""vlbr.x86.syscall against SDM vol. 2B SYSCALL (64-bit mode)."""

from vlbr.arch.x86 import EFER_SCE, RFLAGS_IF, RFLAGS_RF, RFLAGS_TF
from vlbr.x86.syscall import syscall_entry, sysret_exit


def test_syscall_state_comes_from_star_lstar_fmask():
    star = (0x10 << 48) | (0x0B << 32)  # RPL bits of STAR[47:32] are ignored for CS
    e = syscall_entry(0x4000, 0x2 | RFLAGS_IF | RFLAGS_TF | RFLAGS_RF, EFER_SCE, star,
                      0xFFFF_8000_0000_1000, RFLAGS_IF)
    assert (e.rip, e.rcx, e.cs, e.ss) == (0xFFFF_8000_0000_1000, 0x4002, 0x08, 0x10)
    assert e.rflags == 0x2 | RFLAGS_TF  # IF masked by FMASK, RF cleared
    assert e.r11 == 0x2 | RFLAGS_IF | RFLAGS_TF


def test_syscall_without_efer_sce_is_ud():
    assert syscall_entry(0x4000, 0x2, 0, 0, 0x1000, 0) is None


def test_sysret_state_comes_from_rcx_r11_and_star():
    # SDM vol. 2B SYSRET (64-bit): RIP = RCX; RFLAGS = (R11 & 3C7FD7H) | 2; CS = STAR[63:48]
    # + 16 and SS = STAR[63:48] + 8, both with RPL 3.
    star = (0x10 << 48) | (0x08 << 32)
    r11 = 0xFFFF_FFFF_FFFF_FFFF
    e = sysret_exit(0x40_1000, r11, star)
    assert (e.rip, e.cs, e.ss) == (0x40_1000, 0x23, 0x1B)
    assert e.rflags == 0x3C7FD7 | 0x2  # VM (17), RF (16) and the reserved bits stay clear
    assert sysret_exit(0x40_1000, 0x202, star).rflags == 0x202


def test_sysret_to_a_non_canonical_rcx_is_left_to_the_cpu():
    # Intel raises #GP(0) at CPL 0 for a non-canonical RCX: no ring-3 state to enter.
    assert sysret_exit(0x8000_0000_0000_0000, 0x202, 0) is None
    assert sysret_exit(0xFFFF_8000_0000_0000, 0x202, 0) is not None
