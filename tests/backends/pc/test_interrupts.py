"""Which interrupt the PC machine's CPU takes (backends/pc/interrupts.py): NMI first whatever
IF says and blocked until IRET (SDM Vol. 3A 6.7.1), then the local APIC's fixed vectors
under its priority rules, then the 8259A's request only through the virtual wire (LINT0
ExtINT) or while the APIC is disabled (SDM 11.5.1; lapic.py's combination rule)."""

from vlbr.arch.x86 import VECTOR_NMI
from vlbr.backends.pc.interrupts import PcInterrupts, instructions_at, pit_tick
from vlbr.backends.pc.lapic import (DM_EXTINT, DM_NMI, LVT_LINT0, LVT_PERF, LVT_TIMER, SVR,
                                    TIMER_DIVIDE, TIMER_INITIAL)
from vlbr.backends.pc.pic import MASTER_CMD, MASTER_DATA

SVR_ENABLE = 1 << 8


def pic_ready(irq: PcInterrupts) -> None:
    irq.pic.out(MASTER_CMD, 0x11)
    for value in (0x30, 0x04, 0x01, 0x00):  # ICW2-4, then OCW1: nothing masked
        irq.pic.out(MASTER_DATA, value)


def test_time_conversions_round_trip():
    for tick in (0, 1, 4773, 10**6):
        assert pit_tick(instructions_at(tick)) == tick
        assert pit_tick(instructions_at(tick) - 1) == tick - 1 or tick == 0


def test_the_pic_reaches_the_cpu_while_the_apic_is_software_disabled():
    irq = PcInterrupts()
    pic_ready(irq)
    irq.pic.raise_irq(0)
    assert irq.waiting()
    assert irq.take(interrupts_enabled=False) is None
    assert irq.take(interrupts_enabled=True) == 0x30


def test_once_enabled_the_pic_needs_lint0_extint():
    irq = PcInterrupts()
    pic_ready(irq)
    irq.lapic.write(SVR, SVR_ENABLE | 0xFF, 0)
    irq.pic.raise_irq(0)
    assert not irq.waiting() and irq.take(True) is None  # LINT0 masked at reset
    irq.lapic.write(LVT_LINT0, DM_EXTINT, 0)
    assert irq.take(True) == 0x30


def test_an_apic_vector_goes_before_the_pic():
    irq = PcInterrupts()
    pic_ready(irq)
    irq.lapic.write(SVR, SVR_ENABLE | 0xFF, 0)
    irq.lapic.write(LVT_LINT0, DM_EXTINT, 0)
    irq.pic.raise_irq(0)
    irq.lapic.raise_vector(0xEC)
    assert irq.take(True) == 0xEC
    assert irq.take(True) == 0x30  # the PIC's request waited, ExtINT bypasses the APIC ISR


def test_a_pmi_in_nmi_mode_is_taken_with_if_clear_and_blocks_until_iret():
    irq = PcInterrupts()
    irq.lapic.write(SVR, SVR_ENABLE | 0xFF, 0)
    irq.lapic.write(LVT_PERF, DM_NMI, 0)
    irq.performance_interrupt()
    assert irq.take(interrupts_enabled=False) == VECTOR_NMI
    irq.lapic.write(LVT_PERF, DM_NMI, 0)  # Linux unmasks LVTPC in its handler
    irq.performance_interrupt()
    assert irq.waiting() and irq.take(False) is None  # the first NMI's handler runs
    irq.iret()
    assert irq.take(False) == VECTOR_NMI


def test_the_next_timer_is_the_earlier_of_the_pit_and_the_apic_timer():
    irq = PcInterrupts()
    irq.pit.out(0x43, 0x34, 0)
    irq.pit.out(0x40, 0x00, 0)
    irq.pit.out(0x40, 0x10, 0)  # 4096 ticks
    assert irq.next_timer(0) == instructions_at(4096)
    irq.lapic.write(SVR, SVR_ENABLE | 0xFF, 0)
    irq.lapic.write(TIMER_DIVIDE, 0xB, 0)  # divide by 1: one bus clock per instruction
    irq.lapic.write(LVT_TIMER, 0xEC, 0)
    irq.lapic.write(TIMER_INITIAL, 1000, 0)
    assert irq.next_timer(0) == 1000
    irq.advance(1000)
    assert irq.take(True) == 0xEC
    irq.advance(instructions_at(4096))
    assert irq.pic.master.irr & 1
