"""Guest state the PC machine keeps across its slices (each slice is one emu_start): a tiny
64-bit guest entered in the boot protocol's state, no kernel."""

from __future__ import annotations

import struct

import pytest
from unicorn import x86_const as X

from vlbr.backends.pc import machine as pc_machine
from vlbr.backends.pc.loader import BootPlan, boot_structures
from vlbr.backends.layout import flat_descriptor
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


def ring3_behind_vlbrs_back() -> bytes:
    """lgdt a GDT with ring-3 segments, then an IRETQ to ring 3 that is no trap site (there is
    no kernel to scan), so unicorn itself changes CPL inside a slice."""
    gdt_at, user_rip = CODE_AT + 0x800, CODE_AT + 0x400
    gdt = b"".join(d.to_bytes(8, "little") for d in (
        0, flat_descriptor(0xB, 0, long=True), flat_descriptor(0x3, 0, long=False),
        flat_descriptor(0x3, 3, long=False), flat_descriptor(0xB, 3, long=True)))
    code = b"".join([
        b"\x0f\x01\x14\x25" + struct.pack("<I", gdt_at + 0x100),  # lgdt [gdtr]
        b"\x48\xc7\xc4" + struct.pack("<I", 0x90000),             # mov rsp, 0x90000
        b"\x6a\x1b",                                              # push 0x1b (SS)
        b"\x68" + struct.pack("<I", 0x80000),                     # push 0x80000 (RSP)
        b"\x6a\x02",                                              # push 2 (RFLAGS)
        b"\x6a\x23",                                              # push 0x23 (CS)
        b"\x68" + struct.pack("<I", user_rip),                    # push user_rip
        b"\x48\xcf",                                              # iretq
    ])
    image = bytearray(0x900)  # code, the ring-3 loop at +0x400, the GDT at +0x800, GDTR
    image[:len(code)] = code
    image[0x400:0x402] = b"\xeb\xfe"                              # 1: jmp 1b
    image[0x800:0x800 + len(gdt)] = gdt
    gdtr = struct.pack("<HQ", len(gdt) - 1, gdt_at)
    return bytes(image) + gdtr


def test_a_cpl_change_inside_a_slice_stops_the_machine_with_the_reason(monkeypatch):
    # The PMU counts a slice's instructions at its one CPL and the recorder takes that CPL
    # for its branches: a change the machine did not make itself must not pass silently.
    monkeypatch.setattr(pc_machine, "SLICE", 50)
    plan = BootPlan(writes=[*boot_structures(), (CODE_AT, ring3_behind_vlbrs_back())],
                    entry=CODE_AT, rsi=0)
    run = PcMachine(plan, RAM).run(timeout=30)
    assert run.stop_reason == "error" and "CPL changed inside the slice" in run.stop_detail
