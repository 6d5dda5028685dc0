"""vlbr.x86.syscall against SDM vol. 2B SYSCALL (64-bit mode)."""

from vlbr.arch.x86 import EFER_SCE, RFLAGS_IF, RFLAGS_RF, RFLAGS_TF
from vlbr.x86.syscall import syscall_entry


def test_syscall_state_comes_from_star_lstar_fmask():
    star = (0x10 << 48) | (0x0B << 32)  # RPL bits of STAR[47:32] are ignored for CS
    e = syscall_entry(0x4000, 0x2 | RFLAGS_IF | RFLAGS_TF | RFLAGS_RF, EFER_SCE, star,
                      0xFFFF_8000_0000_1000, RFLAGS_IF)
    assert (e.rip, e.rcx, e.cs, e.ss) == (0xFFFF_8000_0000_1000, 0x4002, 0x08, 0x10)
    assert e.rflags == 0x2 | RFLAGS_TF  # IF masked by FMASK, RF cleared
    assert e.r11 == 0x2 | RFLAGS_IF | RFLAGS_TF


def test_syscall_without_efer_sce_is_ud():
    assert syscall_entry(0x4000, 0x2, 0, 0, 0x1000, 0) is None
