"""Guests on the software backend using XSAVES/XRSTORS of x87|SSE|Arch LBR as Linux does
(RFBM = XCR0 | XSS). Registers are observed through unicorn's own FXSAVE64 (QEMU's view),
compared where QEMU's FXSAVE follows the SDM (test_fpu.comparable). Rules: SDM Vol. 1 13.11
(XSAVES), 13.12 (XRSTORS), 13.8.2 (init of a component whose XSTATE_BV bit is clear,
MXCSR 1F80H), 13.6 (init optimization)."""

from __future__ import annotations

import struct

from iced_x86 import Code
from iced_x86 import Register as R
from sw_guests import DATA, Asm, mem
from test_fpu import comparable
from test_software_backend import gp_guest, run, table  # noqa: F401 - the fixture

from vlbr.arch.msrs import IA32_XSS
from vlbr.x86.legacy_xstate import LegacyState

AREA = 0x200000       # XSAVES area (64-byte aligned)
BEFORE = 0x201000     # FXSAVE64 of the registers before XSAVES
AFTER = 0x201200      # ... and after XRSTORS
VALUES = DATA + 0x600  # XMM value and MXCSR the guest loads
BUSY_MXCSR = 0x3F80


LINUX_RFBM = 0x8003  # XCR0 | XSS: x87 | SSE | Arch LBR


def xstate_op(a: Asm, code, address: int, label: str | None = None) -> None:
    """XSAVES64/XRSTORS64 at `address` with Linux's RFBM in EDX:EAX."""
    a.raw(Code.MOV_R32_IMM32, R.EAX, LINUX_RFBM, kinds="ri")
    a.raw(Code.XOR_R32_RM32, R.EDX, R.EDX, kinds="rr")
    if label:
        a.label(label)
    a.raw(code, mem(address), kinds="m")


def exits_zero(a: Asm, table):
    a.exit(0)
    sm, result = run(a, table)
    assert result.exit_status == [0], result.stats
    return sm


def busy_fpu(a: Asm) -> None:
    a.raw(Code.FNINIT)
    a.raw(Code.FLD1)
    a.raw(Code.FLDPI)
    a.raw(Code.MOVDQU_XMM_XMMM128, R.XMM3, mem(VALUES), kinds="rm")
    a.raw(Code.MOVDQU_XMM_XMMM128, R.XMM12, mem(VALUES), kinds="rm")
    a.raw(Code.LDMXCSR_M32, mem(VALUES + 16), kinds="m")
    a.data[VALUES - DATA] = bytes(range(0x11, 0x21)) + struct.pack("<I", BUSY_MXCSR)


def clobber(a: Asm) -> None:
    a.raw(Code.FNINIT)
    a.raw(Code.FLDPI)
    a.raw(Code.PXOR_XMM_XMMM128, R.XMM3, R.XMM3, kinds="rr")
    a.raw(Code.LDMXCSR_M32, mem(VALUES + 20), kinds="m")  # 0: all exceptions unmasked


def fxsave(a: Asm, address: int) -> None:
    a.raw(Code.FXSAVE64_M512BYTE, mem(address), kinds="m")


def read(sm, address: int, size: int = 512) -> bytes:
    return bytes(sm.uc.mem_read(address, size))


def test_xsaves_then_xrstors_round_trips_x87_and_sse(table):
    a = Asm()
    a.wrmsr(IA32_XSS, 1 << 15)
    busy_fpu(a)
    fxsave(a, BEFORE)
    xstate_op(a, Code.XSAVES64_MEM, AREA)
    clobber(a)
    xstate_op(a, Code.XRSTORS64_MEM, AREA)
    fxsave(a, AFTER)
    sm = exits_zero(a, table)
    before, after, area = read(sm, BEFORE), read(sm, AFTER), read(sm, AREA, 576)
    # XSTATE_BV: x87 and SSE in use, component 15 in its init configuration (LBR never on).
    assert struct.unpack_from("<QQ", area, 512) == (0b11, 1 << 63 | LINUX_RFBM)
    assert comparable(area, True) == comparable(before, True)
    assert after[:416] == before[:416]  # FIP included: XRSTORS loaded it
    state = LegacyState.unpack(after)
    assert state.mxcsr == BUSY_MXCSR and state.xmm[3] == state.xmm[12] != 0
    assert state.top == 6 and state.ftw == 0xC0


def test_xrstors_with_xstate_bv_clear_initialises_the_registers(table):
    a = Asm()
    a.wrmsr(IA32_XSS, 1 << 15)
    busy_fpu(a)
    a.data[0] = b"\xFF" * 512 + struct.pack("<QQ", 0, 1 << 63 | LINUX_RFBM)  # bytes are not read
    xstate_op(a, Code.XRSTORS64_MEM, DATA)
    fxsave(a, AFTER)
    sm = exits_zero(a, table)
    init = LegacyState.unpack(read(sm, AFTER))
    assert init.pack()[:416] == LegacyState().pack()[:416]  # FCW 037FH, MXCSR 1F80H, all else 0


def test_xsaves_of_init_state_writes_only_the_header(table):
    a = Asm()
    a.wrmsr(IA32_XSS, 1 << 15)
    a.raw(Code.FNINIT)  # x87 init; SSE as the Guest ABI enters: XMM 0, MXCSR 1F80H
    xstate_op(a, Code.XSAVES64_MEM, AREA)
    sm = exits_zero(a, table)
    area = read(sm, AREA, 576)
    assert struct.unpack_from("<QQ", area, 512) == (0, 1 << 63 | LINUX_RFBM)
    assert area[:512] == bytes(512)  # untouched guest RAM


def _xrstors_gp(table, image: bytes):
    a = gp_guest(0)
    a.ops = []
    a.handler(13, "gp")
    a.lidt()
    a.wrmsr(IA32_XSS, 1 << 15)
    busy_fpu(a)
    a.data[0] = image
    xstate_op(a, Code.XRSTORS64_MEM, DATA, label="faulting")
    a.exit(0)
    a.label("gp")
    a.raw(Code.POP_R64, R.RAX, kinds="r")  # error code
    a.raw(Code.POP_R64, R.RAX, kinds="r")
    a.store(0x700)
    fxsave(a, AFTER)
    a.exit(13)
    sm, result = run(a, table)
    assert result.exit_status == [13], result.stats
    assert struct.unpack_from("<Q", read(sm, DATA + 0x700, 8))[0] == a.assemble().symbols["faulting"]
    return LegacyState.unpack(read(sm, AFTER))


def test_xrstors_of_reserved_mxcsr_bits_is_gp_and_changes_nothing(table):
    image = bytearray(LegacyState().pack() + struct.pack("<QQ", 0b11, 1 << 63 | LINUX_RFBM))
    struct.pack_into("<I", image, 24, 0x1_0000)  # above MXCSR_MASK 0xFFFF
    state = _xrstors_gp(table, bytes(image))
    assert state.mxcsr == BUSY_MXCSR and state.top == 6


def test_xrstors_of_a_standard_format_header_is_gp(table):
    state = _xrstors_gp(table, LegacyState().pack() + struct.pack("<QQ", 0b11, 0b11))
    assert state.mxcsr == BUSY_MXCSR and state.ftw == 0xC0
