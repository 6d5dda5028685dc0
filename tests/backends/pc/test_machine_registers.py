"""Guest state the PC machine keeps across its slices (each slice is one emu_start): a tiny
64-bit guest entered in the boot protocol's state, no kernel."""

from __future__ import annotations

import struct

import pytest
from unicorn import x86_const as X

from vlbr.backends.pc import machine as pc_machine
from vlbr.backends.pc.loader import BootPlan, boot_structures
from vlbr.backends.pc.machine import PcMachine

RAM, CODE_AT = 4 << 20, 0x100000
GUEST_CR2 = 0x5A1CDC


def cr2_guest(iterations: int) -> bytes:
    return b"".join([
        b"\x48\xb8" + struct.pack("<Q", GUEST_CR2),  # mov rax, GUEST_CR2
        b"\x0f\x22\xd0",                              # mov cr2, rax
        b"\xb9" + struct.pack("<I", iterations),      # mov ecx, iterations
        b"\xff\xc9\x75\xfc",                          # 1: dec ecx; jnz 1b
        b"\x0f\x20\xd3",                              # mov rbx, cr2
        b"\xfa\xf4",                                  # cli; hlt
    ])


@pytest.mark.parametrize("native_clock", [True, False], ids=["native-clock", "python-clock"])
def test_cr2_survives_every_slice_stop(monkeypatch, native_clock):
    """CR2 is the guest's until its next #PF (SDM Vol. 3A 4.7): a #PF handler that a slice
    stop (a deadline, a timer, an NMI) interrupts before read_cr2() must still read its own
    fault's address. unicorn leaves CR2 at -2 after every stop; this guest stops ~100 times.
    Found as a busybox sh 'segfault at fffffffffffffffe' under perf in the Linux guest."""
    monkeypatch.setattr(pc_machine, "SLICE", 50)
    plan = BootPlan(writes=[*boot_structures(), (CODE_AT, cr2_guest(2_500))], entry=CODE_AT,
                    rsi=0)
    machine = PcMachine(plan, RAM, native_clock=native_clock)
    run = machine.run(timeout=30)
    assert run.stop_reason == "halted", run.stop_detail
    assert run.instructions > 100 * 50
    assert machine.uc.reg_read(X.UC_X86_REG_RBX) == GUEST_CR2
