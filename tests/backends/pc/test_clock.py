"""The PC machine's instruction clock: native (insn_clock.c) and pure-Python hooks count the
same instructions, stop before the instruction that would pass a deadline, and stop before
an instruction at a trap address without counting it."""

import pytest
from unicorn import UC_ARCH_X86, UC_MODE_64, Uc
from unicorn import x86_const as X

from vlbr.backends.pc.clock import InstructionClock, Stop
from vlbr.backends.software import native

CODE_AT = 0x1000
INC_RAX = b"\x48\xff\xc0"
LOOP = b"\xb9\x10\x00\x00\x00" + INC_RAX + b"\xe2\xfb" + b"\xf4"  # mov ecx,16; inc; loop; hlt

KINDS = [False] + ([True] if native.load("insn_clock") is not None else [])


def cpu(code: bytes, use_native: bool, traps=frozenset()) -> tuple[Uc, InstructionClock]:
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0, 0x10000)
    uc.mem_write(CODE_AT, code)
    clock = InstructionClock(uc, use_native, traps)
    assert clock.native == use_native
    return uc, clock


def test_the_native_clock_is_built_here():
    assert native.load("insn_clock") is not None, "gcc is installed: the native hook must build"


@pytest.mark.parametrize("use_native", KINDS)
def test_counts_every_instruction_retired(use_native):
    uc, clock = cpu(LOOP, use_native)
    uc.emu_start(CODE_AT, -1)
    assert uc.reg_read(X.UC_X86_REG_RAX) == 16
    assert clock.now == 1 + 16 * 2 + 1 and clock.stopped == Stop.NONE


@pytest.mark.parametrize("use_native", KINDS)
@pytest.mark.parametrize("deadline", [0, 1, 2, 7, 20])
def test_a_deadline_stops_before_the_instruction_that_would_pass_it(use_native, deadline):
    uc, clock = cpu(INC_RAX * 30 + b"\xf4", use_native)
    clock.arm(deadline)
    uc.emu_start(CODE_AT, -1)
    assert clock.stopped == Stop.DEADLINE
    assert clock.now == deadline == uc.reg_read(X.UC_X86_REG_RAX)
    assert uc.reg_read(X.UC_X86_REG_RIP) == CODE_AT + 3 * deadline
    clock.arm(10**9)  # resuming counts the stopped instruction once
    uc.emu_start(uc.reg_read(X.UC_X86_REG_RIP), -1)
    assert clock.now == 31 and uc.reg_read(X.UC_X86_REG_RAX) == 30


@pytest.mark.parametrize("use_native", KINDS)
def test_a_trap_address_stops_before_it_and_run_through_lets_it_run_once(use_native):
    trap = CODE_AT + 3 * 4
    uc, clock = cpu(INC_RAX * 8 + b"\xf4", use_native, {trap})
    uc.emu_start(CODE_AT, -1)
    assert clock.stopped == Stop.TRAP and clock.trapped_at == trap and clock.now == 4
    assert uc.reg_read(X.UC_X86_REG_RIP) == trap
    clock.run_through(trap)
    clock.arm(10**9)
    uc.emu_start(trap, -1)
    assert clock.stopped == Stop.NONE and clock.now == 9 and uc.reg_read(X.UC_X86_REG_RAX) == 8


def test_native_and_python_clocks_agree_on_a_branchy_guest():
    code = (b"\xb9\x40\x00\x00\x00"  # mov ecx, 64
            b"\x48\x89\xc8\x48\x83\xe0\x03\x74\x03\x48\xff\xc2\xe2\xf3"  # mov/and/jz/inc/loop
            b"\xf4")
    counts = []
    for use_native in KINDS:
        uc, clock = cpu(code, use_native)
        uc.emu_start(CODE_AT, -1)
        counts.append((clock.now, uc.reg_read(X.UC_X86_REG_RDX)))
    assert len(set(counts)) == 1
