"""The xAPIC as Linux 6.1 drives it (arch/x86/kernel/apic/apic.c: setup_local_APIC,
lapic_setup_esr, calibrate_APIC_clock, __setup_APIC_LVTT, lapic_next_event,
lapic_timer_shutdown; arch/x86/events/core.c perf_events_lapic_init; intel_pmu_handle_irq)
and the rules of SDM Vol. 3A chapter 11 each test names."""

from fractions import Fraction

import pytest
from hypothesis import assume, given, settings, strategies as st

from vlbr.backends.pc.lapic import (APR, DFR, EOI, ESR, ICR_HIGH, ICR_LOW, ID, IRR_BASE, ISR_BASE,
                                    LDR, LVT_ERROR, LVT_LINT0, LVT_LINT1, LVT_PERF, LVT_THERMAL,
                                    LVT_TIMER, PPR, SVR, TIMER_CURRENT, TIMER_DIVIDE,
                                    TIMER_INITIAL, TPR, VERSION, LocalApic, divisor)
from vlbr.vcpu import GeneralProtection

# Linux's arch/x86/include/asm/apicdef.h and irq_vectors.h values, as the guest writes them.
APIC_LVT_MASKED = 1 << 16
APIC_LVT_TIMER_PERIODIC = 1 << 17
APIC_DM_NMI, APIC_DM_EXTINT, APIC_DM_INIT = 0x400, 0x700, 0x500
APIC_SPIV_APIC_ENABLED = 1 << 8
APIC_DEST_SELF, APIC_DEST_ALLBUT, APIC_DEST_ALLINC = 0x40000, 0xC0000, 0x80000
APIC_ICR_BUSY = 1 << 12
APIC_TDR_DIV_1, APIC_TDR_DIV_TMBASE, APIC_TDR_DIV_16 = 0xB, 1 << 2, 0x3
APIC_DIVISOR = 16
LOCAL_TIMER_VECTOR, SPURIOUS_APIC_VECTOR, ERROR_APIC_VECTOR = 0xEC, 0xFF, 0xFE
CALL_FUNCTION_VECTOR = 0xFB
HZ, LAPIC_CAL_LOOPS = 250, 250 // 10
APIC_BASE_MSR_RESET = 0xFEE00900  # base | EN | BSP (SDM 11.4.4)


def setup_local_apic(apic: LocalApic, now: int = 0) -> None:
    """setup_local_APIC() and lapic_setup_esr() on the BSP with no MP table (virtual wire)."""
    apic.write(SVR, apic.read(SVR, now) & ~APIC_SPIV_APIC_ENABLED, now)  # soft-disable first
    apic.write(DFR, 0xFFFFFFFF, now)  # flat model (default_init_apic_ldr)
    apic.write(LDR, (apic.read(LDR, now) & ~0xFF000000) | 1 << 24, now)
    apic.write(TPR, (apic.read(TPR, now) & ~0xFF) | 0x10, now)
    for word in range(7, -1, -1):  # apic_pending_intr_clear(): EOI every stale ISR bit
        for _ in range(bin(apic.read(ISR_BASE + word * 0x10, now)).count("1")):
            apic.write(EOI, 0, now)
    value = apic.read(SVR, now) & ~0xFF | APIC_SPIV_APIC_ENABLED | SPURIOUS_APIC_VECTOR
    apic.write(SVR, value, now)
    apic.write(LVT_PERF, APIC_DM_NMI, now)  # perf_events_lapic_init()
    # LVT0 masked at power-up, but skip_ioapic_setup (no MP table): ExtINT on CPU 0.
    apic.write(LVT_LINT0, APIC_DM_EXTINT, now)
    apic.write(LVT_LINT1, APIC_DM_NMI, now)
    apic.write(ESR, 0, now)  # lapic_setup_esr(): maxlvt > 3
    apic.read(ESR, now)
    apic.write(LVT_ERROR, ERROR_APIC_VECTOR, now)
    apic.write(ESR, 0, now)
    apic.read(ESR, now)


def setup_apic_lvtt(apic: LocalApic, clocks: int, oneshot: bool, irqen: bool, now: int) -> None:
    """__setup_APIC_LVTT()."""
    value = LOCAL_TIMER_VECTOR
    if not oneshot:
        value |= APIC_LVT_TIMER_PERIODIC
    if not irqen:
        value |= APIC_LVT_MASKED
    apic.write(LVT_TIMER, value, now)
    divide = apic.read(TIMER_DIVIDE, now) & ~(APIC_TDR_DIV_1 | APIC_TDR_DIV_TMBASE)
    apic.write(TIMER_DIVIDE, divide | APIC_TDR_DIV_16, now)
    if not oneshot:
        apic.write(TIMER_INITIAL, clocks // APIC_DIVISOR, now)


def enabled_apic(**kwargs) -> LocalApic:
    apic = LocalApic(**kwargs)
    setup_local_apic(apic)
    return apic


# -- power-up and identification -------------------------------------------------------------
def test_power_up_state():
    # SDM 11.4.7.1: LVT masked, DFR all ones, SVR 0xFF, TPR 0; 11.4.4: base, BSP and EN set.
    apic = LocalApic(apic_id=3)
    assert apic.rdmsr_base() == APIC_BASE_MSR_RESET
    assert apic.read(ID, 0) == 3 << 24
    assert apic.read(SVR, 0) == 0xFF
    assert apic.read(DFR, 0) == 0xFFFFFFFF
    assert apic.read(TPR, 0) == 0 and apic.read(PPR, 0) == 0
    for lvt in (LVT_TIMER, LVT_THERMAL, LVT_PERF, LVT_LINT0, LVT_LINT1, LVT_ERROR):
        assert apic.read(lvt, 0) == APIC_LVT_MASKED


def test_version_is_an_integrated_apic_with_six_lvt_entries():
    # SDM 11.4.8: version 0x14, max LVT entry 5 (LVTPC and thermal, no CMCI): Linux's
    # lapic_get_maxlvt() reads 5, so it programs LVTPC (>= 4) and thermal (>= 5).
    apic = LocalApic()
    assert apic.read(VERSION, 0) == 0x00050014
    apic.write(VERSION, 0, 0)
    assert apic.read(VERSION, 0) == 0x00050014  # read-only


def test_cmci_and_reserved_offsets_read_zero_and_ignore_writes():
    # Table 11-1: 0x40-0x70 reserved; 0x2F0 (CMCI) is absent with max LVT 5; 0x384 is
    # inside the initial count's 16-byte slot but not a register.
    apic = enabled_apic()
    for offset in (0x40, 0x2F0, 0x3F0, 0x384):
        apic.write(offset, 0xFFFFFFFF, 0)
        assert apic.read(offset, 0) == 0
    assert apic.read(TIMER_INITIAL, 0) == 0


# -- setup_local_APIC, the virtual wire and the software enable -------------------------------
def test_setup_local_apic_programs_virtual_wire_through_lint0():
    apic = LocalApic()
    assert apic.passes_pic_intr()  # software-disabled at power-up: the PIC reaches the CPU
    setup_local_apic(apic)
    assert apic.read(SVR, 0) == APIC_SPIV_APIC_ENABLED | SPURIOUS_APIC_VECTOR
    assert apic.read(LDR, 0) == 1 << 24 and apic.read(DFR, 0) == 0xFFFFFFFF
    assert apic.read(PPR, 0) == 0x10  # TPR 0x10: "accept all except vectors 0-31"
    assert apic.read(LVT_LINT0, 0) == APIC_DM_EXTINT
    assert apic.read(LVT_LINT1, 0) == APIC_DM_NMI
    assert apic.read(LVT_ERROR, 0) == ERROR_APIC_VECTOR
    assert apic.read(ESR, 0) == 0
    assert apic.lint0_extint() and apic.passes_pic_intr()


def test_enabled_apic_with_lint0_masked_keeps_the_pic_away():
    # Between the SVR enable and the LVT0 write of setup_local_APIC, LINT0 is masked.
    apic = LocalApic()
    apic.write(SVR, APIC_SPIV_APIC_ENABLED | SPURIOUS_APIC_VECTOR, 0)
    assert not apic.lint0_extint() and not apic.passes_pic_intr()
    apic.write(LVT_LINT0, APIC_DM_EXTINT | APIC_LVT_MASKED, 0)  # what an AP gets
    assert not apic.passes_pic_intr()


def test_software_disable_masks_every_lvt_and_they_stay_masked():
    # SDM 11.4.7.2: software-disabled, the LVT mask bits are set and cannot be cleared; they
    # stay set when software enables the APIC again.
    apic = enabled_apic()
    apic.write(SVR, SPURIOUS_APIC_VECTOR, 0)
    assert apic.read(LVT_LINT0, 0) == APIC_DM_EXTINT | APIC_LVT_MASKED
    apic.write(LVT_PERF, APIC_DM_NMI, 0)
    assert apic.read(LVT_PERF, 0) == APIC_DM_NMI | APIC_LVT_MASKED
    assert apic.passes_pic_intr()  # software-disabled: the 8259A goes to the CPU directly
    apic.write(SVR, APIC_SPIV_APIC_ENABLED | SPURIOUS_APIC_VECTOR, 0)
    assert apic.read(LVT_LINT0, 0) & APIC_LVT_MASKED
    assert not apic.lint0_extint()


def test_software_disabled_apic_drops_fixed_interrupts_but_holds_irr():
    # SDM 11.4.7.2 holds pending IRR bits; new fixed interrupts are dropped (KVM's
    # __apic_accept_irq).
    apic = enabled_apic()
    apic.raise_vector(0x40)
    apic.write(SVR, SPURIOUS_APIC_VECTOR, 0)
    apic.raise_vector(0x50)
    assert apic.read(IRR_BASE + 0x20, 0) == 1 << 0  # vector 0x40 only
    assert apic.pending_vector() == 0x40


# -- the timer (SDM 11.5.4) ------------------------------------------------------------------
@pytest.mark.parametrize("code,expected", [(0x0, 2), (0x1, 4), (0x2, 8), (0x3, 16), (0x8, 32),
                                           (0x9, 64), (0xA, 128), (0xB, 1)])
def test_divide_configuration_encoding(code, expected):
    # SDM Figure 11-10: bits 3, 1, 0; 1011b divides by 1.
    assert divisor(code) == expected
    apic = enabled_apic()
    apic.write(TIMER_DIVIDE, code, 0)
    apic.write(TIMER_INITIAL, 1000, 100)
    assert apic.read(TIMER_CURRENT, 100 + 5 * expected) == 995
    assert apic.read(TIMER_CURRENT, 100 + 5 * expected - 1) == 996


@pytest.mark.parametrize("ticks_per_instruction", [1, Fraction(1, 10), 3])
def test_calibrate_apic_clock_measures_the_bus_clock(ticks_per_instruction):
    # calibrate_APIC_clock(): a masked periodic timer at 0xffffffff / 16, TMCCT read at the
    # first and the last of LAPIC_CAL_LOOPS PIT ticks; lapic_timer_period is bus clocks per
    # jiffy = delta * APIC_DIVISOR / LAPIC_CAL_LOOPS.
    apic = enabled_apic(ticks_per_instruction=ticks_per_instruction)
    setup_apic_lvtt(apic, 0xFFFFFFFF, oneshot=False, irqen=False, now=500)
    lvtt = LOCAL_TIMER_VECTOR | APIC_LVT_TIMER_PERIODIC | APIC_LVT_MASKED
    assert apic.read(LVT_TIMER, 500) == lvtt
    assert apic.read(TIMER_DIVIDE, 500) == APIC_TDR_DIV_16
    jiffy = 1_000_000_000 // HZ  # instructions: one per nanosecond
    t1 = apic.read(TIMER_CURRENT, 500 + jiffy)
    t2 = apic.read(TIMER_CURRENT, 500 + (LAPIC_CAL_LOOPS + 1) * jiffy)
    period = (t1 - t2) * APIC_DIVISOR // LAPIC_CAL_LOOPS
    assert period == jiffy * ticks_per_instruction
    assert period >= 1_000_000 // HZ  # not "APIC frequency too slow"
    assert apic.next_timer(600) is None  # masked: nothing to stop for
    apic.advance(500 + (LAPIC_CAL_LOOPS + 1) * jiffy)
    assert apic.pending_vector() is None


def test_periodic_timer_raises_its_vector_every_period():
    # lapic_timer_set_periodic(): __setup_APIC_LVTT(lapic_timer_period, 0, 1).
    apic = enabled_apic()
    period = 4_000_000
    setup_apic_lvtt(apic, period, oneshot=False, irqen=True, now=1000)
    assert apic.next_timer(1000) == 1000 + period
    apic.advance(1000 + period - 1)
    assert apic.pending_vector() is None
    assert apic.read(TIMER_CURRENT, 1000 + period - 1) == 1  # 16 instructions per count
    apic.advance(1000 + period)
    assert apic.read(TIMER_CURRENT, 1000 + period) == period // 16  # reloaded
    assert apic.acknowledge() == LOCAL_TIMER_VECTOR
    apic.write(EOI, 0, 1000 + period)
    assert apic.next_timer(1000 + period) == 1000 + 2 * period


@settings(max_examples=200, deadline=None)
@given(numerator=st.integers(1, 50), denominator=st.integers(1, 50),
       divide=st.sampled_from([0x0, 0x1, 0x2, 0x3, 0x8, 0x9, 0xA, 0xB]),
       initial=st.integers(1, 5000), start=st.integers(0, 10_000), periodic=st.booleans())
def test_next_timer_is_the_exact_instruction_of_each_expiry(numerator, denominator, divide,
                                                            initial, start, periodic):
    # SDM 11.5.4: the count drops by one every `divisor` bus clocks and the interrupt comes
    # when it reaches 0; next_timer is the first instruction count at which that has happened.
    apic = enabled_apic(ticks_per_instruction=Fraction(numerator, denominator))
    apic.write(TIMER_DIVIDE, divide, start)
    apic.write(LVT_TIMER, 0x40 | (APIC_LVT_TIMER_PERIODIC if periodic else 0), start)
    apic.write(TIMER_INITIAL, initial, start)
    rate = Fraction(numerator, denominator)
    assume(initial * divisor(divide) >= rate)  # else several expiries share an instruction
    for expiry in range(1, 4 if periodic else 2):
        due = apic.next_timer(start)
        needed = expiry * initial * divisor(divide)  # bus clocks to the expiry
        assert (due - 1 - start) * rate < needed <= (due - start) * rate
        apic.advance(due - 1)
        assert apic.pending_vector() is None
        apic.advance(due)
        assert apic.acknowledge() == 0x40
        apic.write(EOI, 0, due)
    assert (apic.next_timer(start) is None) == (not periodic)


def test_an_expiry_not_yet_advanced_is_due_now():
    apic = enabled_apic()
    apic.write(LVT_TIMER, 0x40, 0)
    apic.write(TIMER_INITIAL, 10, 0)
    assert apic.next_timer(500) == 500  # 160 is past: stop at once, then advance
    apic.advance(500)
    assert apic.pending_vector() == 0x40 and apic.next_timer(500) is None


def test_the_bus_clock_must_run():
    with pytest.raises(ValueError):
        LocalApic(ticks_per_instruction=0)


def test_expiries_collapse_in_one_irr_bit():
    apic = enabled_apic()
    setup_apic_lvtt(apic, 1600, oneshot=False, irqen=True, now=0)
    apic.advance(1600 * 3)
    assert apic.acknowledge() == LOCAL_TIMER_VECTOR
    assert apic.pending_vector() is None
    assert apic.next_timer(1600 * 3) == 1600 * 4


def test_one_shot_lapic_next_event():
    # lapic_timer_set_oneshot() then lapic_next_event(delta): TMICT = delta, divide 16.
    apic = enabled_apic()
    setup_apic_lvtt(apic, 4_000_000, oneshot=True, irqen=True, now=0)
    assert apic.read(TIMER_INITIAL, 0) == 0 and apic.next_timer(0) is None
    apic.write(TIMER_INITIAL, 100, 2000)
    assert apic.next_timer(2000) == 2000 + 1600
    apic.advance(3599)
    assert apic.pending_vector() is None
    apic.advance(3600)
    assert apic.pending_vector() == LOCAL_TIMER_VECTOR
    assert apic.read(TIMER_CURRENT, 10_000) == 0  # stays at 0 (SDM 11.5.4)
    assert apic.next_timer(10_000) is None


def test_lapic_timer_shutdown_stops_the_timer():
    # lapic_timer_shutdown(): LVTT |= MASKED | LOCAL_TIMER_VECTOR, TMICT = 0.
    apic = enabled_apic()
    setup_apic_lvtt(apic, 160_000, oneshot=False, irqen=True, now=0)
    apic.write(LVT_TIMER, apic.read(LVT_TIMER, 50) | APIC_LVT_MASKED | LOCAL_TIMER_VECTOR, 50)
    apic.write(TIMER_INITIAL, 0, 60)
    assert apic.next_timer(60) is None
    assert apic.read(TIMER_CURRENT, 1_000_000) == 0
    apic.advance(1_000_000)
    assert apic.pending_vector() is None


def test_expiries_while_masked_never_fire_after_unmasking():
    apic = enabled_apic()
    setup_apic_lvtt(apic, 1600, oneshot=False, irqen=False, now=0)  # 1600 instructions
    apic.write(LVT_TIMER, LOCAL_TIMER_VECTOR | APIC_LVT_TIMER_PERIODIC, 3500)  # 2 expiries ago
    assert apic.pending_vector() is None
    assert apic.next_timer(3500) == 4800


def test_tsc_deadline_mode_is_not_offered():
    # LVT timer bit 18 is reserved without CPUID.1:ECX.TSC_Deadline (SDM 11.5.4.1).
    apic = enabled_apic()
    apic.write(LVT_TIMER, LOCAL_TIMER_VECTOR | 2 << 17, 0)
    assert apic.read(LVT_TIMER, 0) == LOCAL_TIMER_VECTOR


def test_divide_change_while_counting_goes_on_at_the_new_rate():
    apic = enabled_apic()
    apic.write(TIMER_DIVIDE, APIC_TDR_DIV_1, 0)
    apic.write(LVT_TIMER, LOCAL_TIMER_VECTOR, 0)
    apic.write(TIMER_INITIAL, 100, 0)
    apic.write(TIMER_DIVIDE, APIC_TDR_DIV_16, 40)  # 60 counts left, 16 instructions each
    assert apic.read(TIMER_CURRENT, 40 + 16 * 10) == 50
    assert apic.next_timer(40) == 40 + 16 * 60


# -- priority, acceptance and EOI (SDM 11.8) -------------------------------------------------
def reference_ppr(tpr: int, isr: set[int]) -> int:
    """SDM 11.8.3.1 as written: PPR = TPR if TPR[7:4] >= ISRV[7:4], else ISRV[7:4] << 4."""
    isrv = max(isr, default=0)
    return tpr if tpr >> 4 >= isrv >> 4 else isrv & 0xF0


@settings(max_examples=300, deadline=None)
@given(tpr=st.integers(0, 255), vectors=st.lists(st.integers(16, 255), max_size=8),
       raised=st.integers(16, 255))
def test_ppr_and_acceptance_follow_the_sdm(tpr, vectors, raised):
    # SDM 11.8.4: the highest IRR vector is taken when its class is above PPR's class.
    apic = enabled_apic()
    in_service, requested = set(), set()
    for vector in vectors:  # each offered at TPR 0, taken at once when deliverable
        apic.write(TPR, 0, 0)
        apic.raise_vector(vector)
        requested.add(vector)
        top = max(requested)
        if top >> 4 > reference_ppr(0, in_service) >> 4:
            assert apic.acknowledge() == top
            requested.discard(top)
            in_service.add(top)
        else:
            assert apic.pending_vector() is None
    apic.write(TPR, tpr, 0)
    assert apic.read(PPR, 0) == reference_ppr(tpr, in_service)
    apic.raise_vector(raised)
    requested.add(raised)
    top = max(requested)
    assert apic.pending_vector() == (top if top >> 4 > reference_ppr(tpr, in_service) >> 4
                                     else None)


def test_tpr_blocks_its_class_and_below():
    apic = enabled_apic()
    apic.write(TPR, 0x50, 0)
    apic.raise_vector(0x5F)
    assert apic.pending_vector() is None  # class 5 is not above PPR class 5
    apic.raise_vector(0x61)
    assert apic.pending_vector() == 0x61
    apic.write(TPR, 0x10, 0)
    assert apic.acknowledge() == 0x61
    apic.write(EOI, 0, 0)
    assert apic.acknowledge() == 0x5F


def test_in_service_class_blocks_same_class_until_eoi():
    # SDM 11.8.3.1/11.8.5: an interrupt in service raises PPR to its class; EOI clears the
    # highest ISR bit, and a lower pending interrupt is then delivered.
    apic = enabled_apic()
    apic.raise_vector(0x80)
    assert apic.acknowledge() == 0x80
    assert apic.read(PPR, 0) == 0x80
    apic.raise_vector(0x85)
    apic.raise_vector(0x31)
    assert apic.pending_vector() is None
    apic.raise_vector(0x91)  # higher class nests
    assert apic.acknowledge() == 0x91
    assert apic.read(ISR_BASE + 0x40, 0) == 1 << 0 | 1 << 17  # 0x80 and 0x91 in service
    apic.write(EOI, 0, 0)
    assert apic.read(ISR_BASE + 0x40, 0) == 1 << 0
    apic.write(EOI, 0, 0)
    assert apic.acknowledge() == 0x85
    assert apic.pending_vector() is None  # 0x31 waits for the EOI of 0x85
    apic.write(EOI, 0, 0)
    assert apic.acknowledge() == 0x31


def test_acknowledge_with_nothing_deliverable_gives_the_spurious_vector():
    # SDM 11.9: the interrupt was masked by a TPR raise between INTR and INTA: the spurious
    # vector, which enters neither ISR nor leaves IRR.
    apic = enabled_apic()
    apic.raise_vector(0x40)
    apic.write(TPR, 0x40, 0)
    assert apic.acknowledge() == SPURIOUS_APIC_VECTOR
    assert apic.read(ISR_BASE + 0x20, 0) == 0 and apic.read(IRR_BASE + 0x20, 0) == 1


def test_apr_reports_the_arbitration_priority():
    # SDM Figure 11-15: TPR when it is at least IRRV's class and above ISRV's, else the
    # highest of the three classes.
    apic = enabled_apic()
    apic.write(TPR, 0x23, 0)
    assert apic.read(APR, 0) == 0x23
    apic.raise_vector(0x74)
    assert apic.read(APR, 0) == 0x70


# -- ICR and self IPIs (SDM 11.6) ------------------------------------------------------------
def test_self_ipi_by_shorthand():
    # __default_send_IPI_shortcut(APIC_DEST_SELF, vector): ICR = SELF | FIXED | vector.
    apic = enabled_apic()
    apic.write(ICR_LOW, APIC_DEST_SELF | CALL_FUNCTION_VECTOR, 0)
    assert apic.pending_vector() == CALL_FUNCTION_VECTOR
    assert not apic.read(ICR_LOW, 0) & APIC_ICR_BUSY  # native_apic_wait_icr_idle returns


def test_ipi_by_destination_reaches_only_this_apic():
    # __default_send_IPI_dest_field(): ICR2 = id << 24, then ICR = vector (physical, fixed).
    apic = enabled_apic(apic_id=2)
    apic.write(ICR_HIGH, 5 << 24, 0)
    apic.write(ICR_LOW, 0x41, 0)
    assert apic.pending_vector() is None
    apic.write(ICR_HIGH, 2 << 24, 0)
    apic.write(ICR_LOW, 0x42, 0)
    assert apic.acknowledge() == 0x42
    apic.write(EOI, 0, 0)
    apic.write(ICR_HIGH, 1 << 24, 0)  # logical flat: LDR is 1 << 24 after setup
    apic.write(ICR_LOW, 1 << 11 | 0x43, 0)
    assert apic.acknowledge() == 0x43


def test_all_but_self_and_init_to_others_do_nothing():
    apic = enabled_apic()
    apic.write(ICR_LOW, APIC_DEST_ALLBUT | CALL_FUNCTION_VECTOR, 0)
    apic.write(ICR_HIGH, 1 << 24, 0)
    apic.write(ICR_LOW, APIC_DM_INIT | 1 << 14, 0)  # wakeup_secondary_cpu_via_init
    assert apic.pending_vector() is None and not apic.take_nmi()
    apic.write(ICR_LOW, APIC_DEST_ALLINC | 0x44, 0)
    assert apic.pending_vector() == 0x44


def test_self_nmi_ipi_is_taken_once():
    apic = enabled_apic()
    apic.write(ICR_LOW, APIC_DEST_SELF | APIC_DM_NMI, 0)
    assert apic.take_nmi() and not apic.take_nmi()
    assert apic.pending_vector() is None


# -- ESR (SDM 11.5.3) ------------------------------------------------------------------------
def test_esr_shows_errors_only_after_a_write_and_the_next_write_clears_them():
    apic = enabled_apic()
    apic.write(ICR_LOW, APIC_DEST_SELF | 0x05, 0)  # illegal vector 5
    assert apic.read(ESR, 0) == 0  # logged, not yet visible
    apic.write(ESR, 0, 0)
    assert apic.read(ESR, 0) == 1 << 5  # send illegal vector
    apic.write(ESR, 0, 0)
    assert apic.read(ESR, 0) == 0


def test_apic_errors_raise_the_error_vector():
    # LVT error unmasked at ERROR_APIC_VECTOR (lapic_setup_esr): a reserved register access
    # logs "illegal register address" and interrupts.
    apic = enabled_apic()
    apic.read(0x40, 0)
    assert apic.acknowledge() == ERROR_APIC_VECTOR
    apic.write(ESR, 0, 0)
    assert apic.read(ESR, 0) == 1 << 7


def test_an_illegal_timer_vector_is_a_receive_error():
    apic = enabled_apic()
    apic.write(LVT_ERROR, ERROR_APIC_VECTOR | APIC_LVT_MASKED, 0)
    apic.write(TIMER_DIVIDE, APIC_TDR_DIV_1, 0)
    apic.write(LVT_TIMER, 0x0E, 0)
    apic.write(TIMER_INITIAL, 10, 0)
    apic.advance(10)
    assert apic.pending_vector() is None
    apic.write(ESR, 0, 10)
    assert apic.read(ESR, 10) == 1 << 6


# -- PMI through LVTPC -----------------------------------------------------------------------
def test_perf_lvtpc_nmi_pmi_sets_the_mask_and_the_handler_unmasks():
    # perf_events_lapic_init(): LVTPC = APIC_DM_NMI. A PMI is an NMI and sets the mask bit
    # (SDM 20.6.3); intel_pmu_handle_irq() writes APIC_DM_NMI again to unmask it.
    apic = enabled_apic()
    assert apic.performance_interrupt() == "nmi"
    assert apic.read(LVT_PERF, 0) == APIC_DM_NMI | APIC_LVT_MASKED
    assert apic.performance_interrupt() is None
    apic.write(LVT_PERF, APIC_DM_NMI, 0)
    assert apic.performance_interrupt() == "nmi"
    assert apic.pending_vector() is None


def test_fixed_lvtpc_pmi_enters_irr():
    apic = enabled_apic()
    apic.write(LVT_PERF, 0xF0, 0)
    assert apic.performance_interrupt() == "fixed"
    assert apic.read(LVT_PERF, 0) == 0xF0 | APIC_LVT_MASKED
    assert apic.acknowledge() == 0xF0


def test_masked_lvtpc_delivers_nothing():
    apic = LocalApic()  # power-up: masked, and software-disabled
    assert apic.performance_interrupt() is None
    apic = enabled_apic()
    apic.write(LVT_PERF, APIC_DM_NMI | APIC_LVT_MASKED, 0)
    assert apic.performance_interrupt() is None


# -- IA32_APIC_BASE (SDM 11.4.4) -------------------------------------------------------------
@pytest.mark.parametrize("bits", [1 << 0, 1 << 7, 1 << 9, 1 << 10, 1 << 40, 1 << 63])
def test_apic_base_reserved_bits_and_x2apic_gp(bits):
    # Bits 7:0 and 9 reserved, bit 10 (EXTD) without x2APIC, bits 63:MAXPHYADDR reserved.
    apic = LocalApic()
    with pytest.raises(GeneralProtection):
        apic.wrmsr_base(APIC_BASE_MSR_RESET | bits)
    assert apic.rdmsr_base() == APIC_BASE_MSR_RESET


def test_apic_base_cannot_move():
    apic = LocalApic()
    with pytest.raises(GeneralProtection):
        apic.wrmsr_base(0xFED00000 | 1 << 11 | 1 << 8)
    apic.wrmsr_base(APIC_BASE_MSR_RESET)
    assert apic.rdmsr_base() == APIC_BASE_MSR_RESET


def test_global_disable_hides_the_page_and_resets_the_apic():
    apic = enabled_apic()
    apic.raise_vector(0x40)
    apic.wrmsr_base(0xFEE00000 | 1 << 8)
    assert apic.rdmsr_base() == 0xFEE00000 | 1 << 8
    assert apic.read(VERSION, 0) == 0 and apic.pending_vector() is None
    assert apic.passes_pic_intr() and not apic.lint0_extint()
    apic.write(SVR, APIC_SPIV_APIC_ENABLED, 0)  # ignored: no APIC on the bus
    apic.wrmsr_base(APIC_BASE_MSR_RESET)
    assert apic.read(SVR, 0) == 0xFF and apic.read(IRR_BASE + 0x20, 0) == 0
