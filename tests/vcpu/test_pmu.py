"""The architectural PMU model (rules P1..P4 and Counting in vlbr/vcpu/pmu.py's docstring).

"SDM" is Vol. 3B, chapter "Performance Monitoring", section "Architectural Performance
Monitoring" (its Version 1..4 subsections); "SDM Vol. 4" is table 2-2 (architectural MSRs);
"CPUID 0AH" is SDM Vol. 2A, CPUID, leaf 0AH."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from vlbr.arch.cpuid import Registers
from vlbr.arch.leaves import PerfMon
from vlbr.arch.msrs import (GLOBAL_STATUS_LBR_FRZ, IA32_A_PMC_BASE, IA32_DEBUGCTL,
                            IA32_FIXED_CTR_BASE, IA32_FIXED_CTR_CTRL, IA32_LBR_CTL,
                            IA32_PERF_CAPABILITIES, IA32_PERF_GLOBAL_CTRL, IA32_PERF_GLOBAL_INUSE,
                            IA32_PERF_GLOBAL_STATUS, IA32_PERF_GLOBAL_STATUS_RESET,
                            IA32_PERF_GLOBAL_STATUS_SET, IA32_PERFEVTSEL_BASE, IA32_PMC_BASE,
                            IA32_XSS, BranchType, RecordKind, record_msr)
from vlbr.arch.perfmon import (EVENT_CORE_CYCLES, EVENT_INSTRUCTIONS, EVENT_REF_CYCLES,
                               EVTSEL_ANY, EVTSEL_EN, EVTSEL_INT, EVTSEL_INV, EVTSEL_OS,
                               EVTSEL_USR, GLOBAL_STATUS_CTR_FRZ, counter_bits, evtsel)
from vlbr.vcpu import Branch, GeneralProtection, NotOwnedMsr
from vlbr.vcpu.perfmon_msrs import PerfmonMsrs
from vlbr.vcpu.pmu import ArchPerfmon, PmuDescription

from vcpu_tables import alder_lake

FREEZE_LBRS, FREEZE_PERFMON = 1 << 11, 1 << 12  # SDM Vol. 4 IA32_DEBUGCTL bits 11, 12
FIXED_ALL_PMI = 0b1011  # one IA32_FIXED_CTR_CTRL field: EN = 3 (all rings), PMI
INSTR_ANY_RING = evtsel(EVENT_INSTRUCTIONS, EVTSEL_EN, EVTSEL_USR, EVTSEL_OS)
LBR_ON = 0x7F0007  # LBREn, OS, USR, every branch type (ref 2)


def pmu(**kw) -> ArchPerfmon:
    return ArchPerfmon(PmuDescription(**kw))


def alder_lake_pair(**kw) -> PerfmonMsrs:
    return PerfmonMsrs.from_cpuid(alder_lake(), **kw)


# -- CPUID leaf 0AH ---------------------------------------------------------------------

DESCRIPTIONS = st.builds(
    lambda v, n, w, m, fw, ebx, full: PmuDescription(v, n if v else 0, w if n and v else 0,
                                                     m if v >= 2 else 0, fw if m and v >= 2 else 0,
                                                     ebx, full),
    st.integers(0, 6), st.integers(0, 8), st.integers(1, 64), st.integers(0, 8),
    st.integers(1, 64), st.integers(0, 0x7F), st.booleans())


def test_leaf_layout():
    # CPUID 0AH: EAX version[7:0], #GP[15:8], width[23:16], EBX length[31:24]; EBX bit set =
    # event unavailable; EDX fixed count[4:0], fixed width[12:5]; ECX fixed bitmap (v5)
    r = PmuDescription(4, 6, 40, 3, 44, unavailable_events=0b100).to_leaf()
    assert r.eax == 4 | 6 << 8 | 40 << 16 | 7 << 24
    assert r.ebx == 0b100 and r.ecx == 0 and r.edx == 3 | 44 << 5
    r5 = PmuDescription(5, 8, 48, 4, 48).to_leaf()
    assert r5.ecx == 0xF  # Linux 6.1 intel_pmu_init: v5 num_counters_fixed = fls(ECX)


@settings(max_examples=200, deadline=None)
@given(DESCRIPTIONS)
def test_leaf_round_trip(desc):
    leaf = desc.to_leaf()
    assert PmuDescription.from_leaf(leaf, desc.full_width_writes) == desc
    assert PmuDescription.from_leaf(leaf).to_leaf() == leaf


def test_alder_lake_leaf():
    # ../shared/corpus Alder Lake: 0xA = 08300805-00000000-0000000F-00008604
    d = PmuDescription.from_leaf(alder_lake().regs(0xA))
    assert (d.version, d.gp_counters, d.gp_width) == (5, 8, 48)
    assert (d.fixed_counters, d.fixed_width) == (4, 48)
    assert d.unavailable_events == 0 and not d.full_width_writes


def test_leaf_short_event_vector_and_gaps():
    # CPUID 0AH: EBX bit i is meaningful only for i < EAX[31:24]; the rest are unavailable
    d = PmuDescription.from_leaf(Registers(2 | 2 << 8 | 48 << 16 | 2 << 24, 0, 0, 3 | 48 << 5))
    assert d.unavailable_events == 0x7C
    with pytest.raises(ValueError, match="contiguous"):  # v5: fixed i if ECX[i] or EDX[4:0] > i
        PmuDescription.from_leaf(Registers(5 | 2 << 8 | 48 << 16 | 7 << 24, 0, 0b101, 1 | 48 << 5))
    assert PmuDescription.from_leaf(Registers()) == PmuDescription(0, 0, 0, 0, 0, 0x7F)


# -- P1: which MSRs exist -----------------------------------------------------------------

def test_p1_msrs_beyond_the_enumerated_counters():
    p = pmu(gp_counters=2, fixed_counters=3)
    for ok in (IA32_PMC_BASE + 1, IA32_PERFEVTSEL_BASE + 1, IA32_FIXED_CTR_BASE + 2):
        p.wrmsr(ok, 0)
    for bad in (IA32_PMC_BASE + 2, IA32_PERFEVTSEL_BASE + 7, IA32_FIXED_CTR_BASE + 3,
                IA32_A_PMC_BASE):  # no full-width writes: IA32_A_PMCx absent (SDM Vol. 4)
        with pytest.raises(GeneralProtection, match="not enumerated"):
            p.rdmsr(bad)
        with pytest.raises(GeneralProtection, match="not enumerated"):
            p.wrmsr(bad, 0)
    with pytest.raises(NotOwnedMsr):
        p.rdmsr(IA32_LBR_CTL)


@pytest.mark.parametrize("version, present", [
    (1, ()), (2, (IA32_FIXED_CTR_CTRL, IA32_PERF_GLOBAL_CTRL, IA32_PERF_GLOBAL_STATUS,
                  IA32_PERF_GLOBAL_STATUS_RESET)),
    (4, (IA32_FIXED_CTR_CTRL, IA32_PERF_GLOBAL_CTRL, IA32_PERF_GLOBAL_STATUS,
         IA32_PERF_GLOBAL_STATUS_RESET, IA32_PERF_GLOBAL_STATUS_SET, IA32_PERF_GLOBAL_INUSE))])
def test_p4_global_msrs_by_version(version, present):
    # SDM Version 2 introduces GLOBAL_CTRL/STATUS/OVF_CTRL, Version 4 STATUS_SET and INUSE
    p = pmu(version=version, fixed_counters=0 if version < 2 else 3)
    for msr in range(IA32_FIXED_CTR_CTRL, IA32_PERF_GLOBAL_INUSE + 1):
        if msr in present:
            p.rdmsr(msr)
        else:
            with pytest.raises(GeneralProtection, match="needs PMU version"):
                p.rdmsr(msr)


# -- P2: counter writes -------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(st.integers(0, (1 << 64) - 1), st.sampled_from([32, 40, 48, 64]))
def test_p2_legacy_write_sign_extends_eax(value, width):
    # SDM "Full-Width Writes": IA32_PMCx gets the sign-extended EAX[31:0]; EDX is ignored
    p = pmu(gp_counters=1, gp_width=width)
    p.wrmsr(IA32_PMC_BASE, value)
    low = value & 0xFFFF_FFFF
    expected = (low | (((1 << 64) - 1) ^ 0xFFFF_FFFF if low >> 31 else 0)) & ((1 << width) - 1)
    assert p.rdmsr(IA32_PMC_BASE) == expected


@settings(max_examples=200, deadline=None)
@given(st.integers(0, (1 << 64) - 1))
def test_p2_full_width_and_fixed_writes(value):
    # SDM "Full-Width Writes" (IA32_A_PMCx) and Version 2 (fixed counters): bits beyond the
    # width are reserved; in range, the value reads back whole through both aliases
    p = pmu(gp_width=48, fixed_width=40, full_width_writes=True)
    for msr, width in ((IA32_A_PMC_BASE + 1, 48), (IA32_FIXED_CTR_BASE, 40)):
        if value >> width:
            with pytest.raises(GeneralProtection, match="reserved"):
                p.wrmsr(msr, value)
        else:
            p.wrmsr(msr, value)
            assert p.rdmsr(msr) == value
    if not value >> 48:
        assert p.rdmsr(IA32_PMC_BASE + 1) == value  # one counter, two addresses


@pytest.mark.parametrize("full_width", [False, True])
@pytest.mark.parametrize("pattern", ["xor-ffff", "abcd"])
def test_check_hw_exists_probe(full_width, pattern):
    # arch/x86/events/core.c check_hw_exists(): event selects and fixed ctrl enable bits read
    # clear, then a counter (x86_pmu_event_addr: IA32_A_PMC0 with FW_WRITE, intel/core.c) is
    # written (val ^ 0xffff; older kernels 0xabcd) and must read back unchanged
    msrs = alder_lake_pair(full_width_writes=full_width)
    p = msrs.pmu
    assert all(not msrs.rdmsr(IA32_PERFEVTSEL_BASE + i) & EVTSEL_EN for i in range(8))
    ctrl = msrs.rdmsr(IA32_FIXED_CTR_CTRL)
    assert all(not ctrl & 0x3 << 4 * i for i in range(4))
    counter = IA32_A_PMC_BASE if full_width else IA32_PMC_BASE
    val = msrs.rdmsr(counter)
    val = val ^ 0xFFFF if pattern == "xor-ffff" else 0xABCD
    msrs.wrmsr(counter, val)
    assert msrs.rdmsr(counter) == val
    assert bool(msrs.rdmsr(IA32_PERF_CAPABILITIES) & 1 << 13) == full_width == p.full_width_writes
    # intel_pmu_init (intel/core.c): version >= 2 and EBX length >= ARCH_PERFMON_EVENTS_COUNT (7)
    eax = p.desc.to_leaf().eax
    assert eax & 0xFF >= 2 and eax >> 24 >= 7


# -- P3: reserved bits --------------------------------------------------------------------

@pytest.mark.parametrize("version", [2, 3, 4])
def test_p3_evtsel_reserved_bits(version):
    # SDM Vol. 4 IA32_PERFEVTSELx: 63:32 reserved; AnyThread (21) defined from Version 3
    p = pmu(version=version)
    for bit in range(64):
        valid = bit < 32 and (bit != 21 or version >= 3)
        if valid:
            p.wrmsr(IA32_PERFEVTSEL_BASE, 1 << bit)
            assert p.rdmsr(IA32_PERFEVTSEL_BASE) == 1 << bit
        else:
            with pytest.raises(GeneralProtection, match="reserved"):
                p.wrmsr(IA32_PERFEVTSEL_BASE, 1 << bit)


@pytest.mark.parametrize("version", [2, 4])
def test_p3_fixed_ctrl_and_global_ctrl_reserved_bits(version):
    # SDM Version 2/3: a 4-bit field per fixed counter (EN 1:0, ANY 2 from v3, PMI 3);
    # GLOBAL_CTRL: EN_PMCn for n < #GP, EN_FIXED_CTRn for n < #fixed, the rest reserved
    p = pmu(version=version, gp_counters=3, fixed_counters=2)
    for bit in range(64):
        fixed_ok = bit < 8 and (bit % 4 != 2 or version >= 3)
        global_ok = bool(counter_bits(3, 2) >> bit & 1)
        for msr, ok in ((IA32_FIXED_CTR_CTRL, fixed_ok), (IA32_PERF_GLOBAL_CTRL, global_ok)):
            if ok:
                p.wrmsr(msr, 1 << bit)
            else:
                with pytest.raises(GeneralProtection, match="reserved"):
                    p.wrmsr(msr, 1 << bit)


@pytest.mark.parametrize("version", [2, 3, 4])
def test_p3_status_reset_and_set_bits(version):
    # SDM Vol. 4 IA32_PERF_GLOBAL_STATUS_RESET (OVF_CTRL before v4): counters, 61 (v3),
    # 58-60 (v4), 62, 63; 55 (Trace_ToPA, no PT here) reserved. STATUS_SET (v4): the same
    # without 63 (reserved)
    p = pmu(version=version, gp_counters=2, fixed_counters=3)
    reset = {0, 1, 32, 33, 34, 62, 63} | ({61} if version >= 3 else set()) | (
        {58, 59, 60} if version >= 4 else set())
    for bit in range(64):
        if bit in reset:
            p.wrmsr(IA32_PERF_GLOBAL_STATUS_RESET, 1 << bit)
        else:
            with pytest.raises(GeneralProtection, match="reserved"):
                p.wrmsr(IA32_PERF_GLOBAL_STATUS_RESET, 1 << bit)
        if version >= 4 and bit in reset - {63}:
            p.wrmsr(IA32_PERF_GLOBAL_STATUS_SET, 1 << bit)
        elif version >= 4:
            with pytest.raises(GeneralProtection, match="reserved"):
                p.wrmsr(IA32_PERF_GLOBAL_STATUS_SET, 1 << bit)


def test_p4_read_only_and_reset_values():
    p = pmu(gp_counters=4)
    for msr in (IA32_PERF_GLOBAL_STATUS, IA32_PERF_GLOBAL_INUSE):
        with pytest.raises(GeneralProtection, match="read-only"):
            p.wrmsr(msr, 0)
    # SDM Vol. 3A table 10-1: GLOBAL_CTRL "Sets bits n-1:0 and clears the upper bits"
    assert p.rdmsr(IA32_PERF_GLOBAL_CTRL) == 0xF
    assert p.rdmsr(IA32_PERF_GLOBAL_STATUS) == 0 and p.rdmsr(IA32_PERF_GLOBAL_STATUS_RESET) == 0
    p.wrmsr(IA32_PERF_GLOBAL_STATUS, 1 << 2 | 1 << 62, host_initiated=True)  # a VMM restore
    assert p.rdmsr(IA32_PERF_GLOBAL_STATUS) == 1 << 2 | 1 << 62
    with pytest.raises(GeneralProtection, match="64-bit"):
        p.wrmsr(IA32_PERFEVTSEL_BASE, 1 << 64)


def test_p4_inuse():
    # SDM Version 4: INUSE bit n = PERFEVTSELn[7:0] != 0, bit 32+i = fixed field EN != 0,
    # bit 63 = any PERFEVTSELn.INT or fixed PMI bit
    p = pmu()
    assert p.rdmsr(IA32_PERF_GLOBAL_INUSE) == 0
    p.wrmsr(IA32_PERFEVTSEL_BASE + 2, 0x3C)
    p.wrmsr(IA32_PERFEVTSEL_BASE + 1, EVTSEL_USR)  # event 0: not in use
    p.wrmsr(IA32_FIXED_CTR_CTRL, 0x2 << 4)
    assert p.rdmsr(IA32_PERF_GLOBAL_INUSE) == 1 << 2 | 1 << 33
    p.wrmsr(IA32_FIXED_CTR_CTRL, 0x8 << 8)  # PMI bit alone: PMI in use, counter not
    assert p.rdmsr(IA32_PERF_GLOBAL_INUSE) == 1 << 2 | 1 << 63


# -- Counting -----------------------------------------------------------------------------

EVENTS = [EVENT_INSTRUCTIONS, EVENT_CORE_CYCLES, EVENT_REF_CYCLES, (0xC4, 0x00), (0x2E, 0x4F)]
MASK48 = (1 << 48) - 1
STARTS = st.one_of(st.integers(0, MASK48), st.integers(MASK48 - 200_000, MASK48))
GP_SETUP = st.tuples(st.sampled_from(EVENTS), st.booleans(), st.booleans(), st.booleans(), STARTS)
RETIRES = st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 3)), max_size=30)


def reference_count(retires, counts_at) -> int:
    """The architectural events counted here are one per instruction: a plain sum."""
    return sum(n for n, cpl in retires if counts_at(cpl))


def program(p: ArchPerfmon, gp, fixed, global_ctrl, pmi: int = 0, host: bool = False) -> None:
    """Event selects, starts (A_PMCx, or host-initiated IA32_PMCx), fixed fields, GLOBAL_CTRL;
    `pmi`: GLOBAL_CTRL-style bits of the counters that get INT / the PMI bit."""
    for i, (event, en, usr, os_, start) in enumerate(gp):
        flags = [EVTSEL_EN * en, EVTSEL_USR * usr, EVTSEL_OS * os_, EVTSEL_INT * (pmi >> i & 1)]
        p.wrmsr(IA32_PERFEVTSEL_BASE + i, evtsel(event, *flags))
        p.wrmsr((IA32_PMC_BASE if host else IA32_A_PMC_BASE) + i, start, host_initiated=host)
    ctrl = 0
    for j, (en, start) in enumerate(fixed):
        p.wrmsr(IA32_FIXED_CTR_BASE + j, start)
        ctrl |= (en | (FIXED_ALL_PMI & 8 if pmi >> (32 + j) & 1 else 0)) << 4 * j
    p.wrmsr(IA32_FIXED_CTR_CTRL, ctrl)
    p.wrmsr(IA32_PERF_GLOBAL_CTRL, global_ctrl)


@settings(max_examples=150, deadline=None)
@given(st.lists(GP_SETUP, min_size=4, max_size=4),
       st.lists(st.tuples(st.integers(0, 3), STARTS), min_size=3, max_size=3),
       st.integers(0, counter_bits(4, 3)).map(lambda v: v & counter_bits(4, 3)),
       st.integers(0, 0x7), RETIRES)
def test_counting_equals_reference_sum(gp, fixed, global_ctrl, unavailable, retires):
    # SDM Version 1/2: a counter counts while GLOBAL_CTRL bit AND EN AND the ring's USR
    # (CPL > 0) / OS (CPL 0) bit; fixed field EN 1 = OS, 2 = USR; 0xC0/0, 0x3C/0, 0x3C/1 (and
    # fixed 0, 1, 2) count one per instruction; CPUID.0AH:EBX-unavailable events count
    # nothing; a wrap sets the counter's GLOBAL_STATUS bit (no INT: no PMI)
    p = pmu(unavailable_events=unavailable, full_width_writes=True)
    program(p, gp, fixed, global_ctrl)
    for n, cpl in retires:
        p.retire(n, cpl)
    gone = {e for e, b in ((EVENT_CORE_CYCLES, 0), (EVENT_INSTRUCTIONS, 1),
                           (EVENT_REF_CYCLES, 2)) if unavailable >> b & 1}
    expected_status = 0
    for i, (event, en, usr, os_, start) in enumerate(gp):
        counted = en and global_ctrl >> i & 1 and event in EVENTS[:3] and event not in gone
        end = start + reference_count(retires, lambda c: counted and (usr if c else os_))
        assert p.rdmsr(IA32_PMC_BASE + i) == end & MASK48
        expected_status |= (end > MASK48) << i
    for j, (en, start) in enumerate(fixed):
        on = global_ctrl >> (32 + j) & 1
        end = start + reference_count(retires, lambda c: on and en >> (1 if c else 0) & 1)
        assert p.rdmsr(IA32_FIXED_CTR_BASE + j) == end & MASK48
        expected_status |= (end > MASK48) << (32 + j)
    assert p.rdmsr(IA32_PERF_GLOBAL_STATUS) == expected_status and not p.pmi_pending


def test_version_1_has_no_global_ctrl_gate():
    # SDM Version 1: PERFEVTSELx.EN alone starts the counter
    p = pmu(version=1, gp_counters=2, fixed_counters=0)
    p.wrmsr(IA32_PERFEVTSEL_BASE + 1, INSTR_ANY_RING)
    p.retire(7, 3)
    assert p.rdmsr(IA32_PMC_BASE + 1) == 7 and p.rdmsr(IA32_PMC_BASE) == 0


def test_edge_inv_cmask_and_slots_count_nothing():
    # module doc, Counting: E/INV/CMASK qualifiers and fixed counter 3 are not modelled
    p = pmu(fixed_counters=4)
    p.wrmsr(IA32_PERFEVTSEL_BASE, INSTR_ANY_RING | EVTSEL_INV)
    p.wrmsr(IA32_PERFEVTSEL_BASE + 1, evtsel(EVENT_INSTRUCTIONS, EVTSEL_EN, EVTSEL_OS, cmask=1))
    p.wrmsr(IA32_FIXED_CTR_CTRL, 0x3 << 12)
    p.wrmsr(IA32_PERF_GLOBAL_CTRL, counter_bits(4, 4))
    p.retire(100, 0)
    assert [p.rdmsr(IA32_PMC_BASE + i) for i in range(2)] == [0, 0]
    assert p.rdmsr(IA32_FIXED_CTR_BASE + 3) == 0


# -- Overflow, PMI, instructions_until_overflow --------------------------------------------

def armed(version=4, width=48, start_gap=10, **kw) -> ArchPerfmon:
    """PMC0 counts instructions at every CPL with PMI, `start_gap` below its wrap."""
    p = pmu(version=version, gp_width=width, full_width_writes=True, **kw)
    p.wrmsr(IA32_PERFEVTSEL_BASE, INSTR_ANY_RING | EVTSEL_INT)
    p.wrmsr(IA32_A_PMC_BASE, (1 << width) - start_gap)
    return p


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 10_000), st.integers(0, 3), st.sampled_from([32, 48]))
def test_instructions_until_overflow_is_exact(gap, cpl, width):
    # SDM: a counter that overflows sets its GLOBAL_STATUS bit and with INT requests a PMI
    p = armed(width=width, start_gap=gap)
    assert p.instructions_until_overflow(cpl) == gap
    p.retire(gap - 1, cpl)
    assert not p.pmi_pending and p.rdmsr(IA32_PERF_GLOBAL_STATUS) == 0
    assert p.instructions_until_overflow(cpl) == 1
    p.retire(1, cpl)
    assert p.pmi_pending and p.rdmsr(IA32_PERF_GLOBAL_STATUS) == 1
    assert p.rdmsr(IA32_PMC_BASE) == 0 and p.instructions_until_overflow(cpl) == 1 << width
    assert p.take_pmi() and not p.pmi_pending and not p.take_pmi()


def test_until_overflow_respects_cpl_and_pmi_bits():
    p = armed(start_gap=50)
    p.wrmsr(IA32_PERFEVTSEL_BASE, evtsel(EVENT_INSTRUCTIONS, EVTSEL_EN, EVTSEL_USR, EVTSEL_INT))
    assert p.instructions_until_overflow(0) is None and p.instructions_until_overflow(3) == 50
    p.wrmsr(IA32_FIXED_CTR_BASE + 1, (1 << 48) - 20)
    p.wrmsr(IA32_FIXED_CTR_CTRL, FIXED_ALL_PMI << 4)
    p.wrmsr(IA32_PERF_GLOBAL_CTRL, counter_bits(4, 3))
    assert p.instructions_until_overflow(0) == 20 and p.instructions_until_overflow(2) == 20
    p.wrmsr(IA32_FIXED_CTR_CTRL, 0x3 << 4)  # no PMI bit: it overflows, but does not stop us
    assert p.instructions_until_overflow(0) is None
    p.retire(25, 0)
    assert p.rdmsr(IA32_PERF_GLOBAL_STATUS) == 1 << 33 and not p.pmi_pending
    assert p.rdmsr(IA32_FIXED_CTR_BASE + 1) == 5


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 300), st.integers(0, 600), st.integers(0, 3), st.sampled_from([2, 4]))
def test_freeze_perfmon_on_pmi_stops_exactly_at_the_overflow(gap, extra, cpl, version):
    # SDM DEBUGCTL.FREEZE_PERFMON_ON_PMI: v2/v3 clear GLOBAL_CTRL on the PMI; SDM Version 4
    # sets CTR_FRZ instead and counting needs !CTR_FRZ. One retire() call past the overflow
    # must equal stopping there: counters hold what they had at the overflowing instruction
    p = armed(version=version, start_gap=gap)
    p.wrmsr(IA32_FIXED_CTR_CTRL, 0x3)  # fixed 0 counts alongside, without PMI
    p.wrmsr(IA32_PERF_GLOBAL_CTRL, counter_bits(4, 3))
    p.freeze_perfmon_on_pmi = True
    p.retire(gap + extra, cpl)
    assert p.pmi_pending and p.rdmsr(IA32_PMC_BASE) == 0
    assert p.rdmsr(IA32_FIXED_CTR_BASE) == gap
    status = p.rdmsr(IA32_PERF_GLOBAL_STATUS)
    if version >= 4:
        assert status == 1 | GLOBAL_STATUS_CTR_FRZ
        assert p.rdmsr(IA32_PERF_GLOBAL_CTRL) == counter_bits(4, 3)
        p.wrmsr(IA32_PERF_GLOBAL_STATUS_RESET, 1 | GLOBAL_STATUS_CTR_FRZ)  # unfreeze
    else:
        assert status == 1 and p.rdmsr(IA32_PERF_GLOBAL_CTRL) == 0
        p.wrmsr(IA32_PERF_GLOBAL_CTRL, counter_bits(4, 3))
    p.retire(3, cpl)
    assert p.rdmsr(IA32_PMC_BASE) == 3 and p.rdmsr(IA32_FIXED_CTR_BASE) == gap + 3


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 300), st.integers(0, 600))
def test_without_freeze_counting_continues_past_the_pmi(gap, extra):
    p = armed(start_gap=gap)
    p.retire(gap + extra, 0)
    assert p.pmi_pending and p.rdmsr(IA32_PMC_BASE) == extra
    assert p.rdmsr(IA32_PERF_GLOBAL_STATUS) == 1


def test_status_set_and_reset():
    # SDM Version 4: STATUS_SET sets GLOBAL_STATUS bits (no PMI: it is for restoring state),
    # STATUS_RESET clears them; SET CTR_FRZ stops counting like a freeze does
    p = armed(start_gap=5)
    p.wrmsr(IA32_PERF_GLOBAL_STATUS_SET, 1 << 1 | 1 << 34 | 1 << 62 | GLOBAL_STATUS_CTR_FRZ)
    assert p.rdmsr(IA32_PERF_GLOBAL_STATUS) == 1 << 1 | 1 << 34 | 1 << 62 | GLOBAL_STATUS_CTR_FRZ
    assert not p.pmi_pending and p.instructions_until_overflow(0) is None
    p.retire(10, 0)
    assert p.rdmsr(IA32_PMC_BASE) == (1 << 48) - 5
    p.wrmsr(IA32_PERF_GLOBAL_STATUS_RESET, 1 << 34 | GLOBAL_STATUS_CTR_FRZ)
    assert p.rdmsr(IA32_PERF_GLOBAL_STATUS) == 1 << 1 | 1 << 62
    p.retire(10, 0)
    assert p.rdmsr(IA32_PMC_BASE) == 5 and p.pmi_pending


# -- The seam with ArchLbrVcpu ------------------------------------------------------------

def test_each_msr_has_one_answer():
    # vcpu/perfmon_msrs.py: GLOBAL_STATUS/RESET are the PMU's, LBR MSRs the LBR model's
    msrs = alder_lake_pair()
    assert msrs.route(IA32_PERF_GLOBAL_STATUS) is msrs.pmu
    assert msrs.route(IA32_PERF_GLOBAL_STATUS_RESET) is msrs.pmu
    assert msrs.route(IA32_DEBUGCTL) is msrs and msrs.route(IA32_PERF_CAPABILITIES) is msrs
    for msr in (IA32_LBR_CTL, IA32_XSS, record_msr(RecordKind.INFO, 3)):
        assert msrs.route(msr) is msrs.lbr
    both = {msr for msr in range(0x10000) if msrs.pmu.owns(msr) and msrs.lbr.owns(msr)}
    assert both == {IA32_PERF_GLOBAL_STATUS, IA32_PERF_GLOBAL_STATUS_RESET}  # route: the PMU
    assert all(msrs.owns(m) for m in range(IA32_PMC_BASE, IA32_PMC_BASE + 8))
    with pytest.raises(NotOwnedMsr):
        msrs.rdmsr(0x10)


def test_debugctl_and_perf_capabilities_are_combined():
    # SDM Vol. 4 IA32_DEBUGCTL bits 11, 12 (PMU version > 1); PERF_CAPABILITIES bit 13 FW_WRITE
    msrs = alder_lake_pair(full_width_writes=True)
    msrs.wrmsr(IA32_DEBUGCTL, FREEZE_LBRS | FREEZE_PERFMON)
    assert msrs.rdmsr(IA32_DEBUGCTL) == FREEZE_LBRS | FREEZE_PERFMON
    assert msrs.lbr.rdmsr(IA32_DEBUGCTL) == FREEZE_LBRS and msrs.pmu.freeze_perfmon_on_pmi
    with pytest.raises(GeneralProtection, match="DEBUGCTL"):
        msrs.wrmsr(IA32_DEBUGCTL, FREEZE_PERFMON | 1 << 13)  # G6 rejects the rest: no change
    assert msrs.rdmsr(IA32_DEBUGCTL) == FREEZE_LBRS | FREEZE_PERFMON
    with pytest.raises(GeneralProtection, match="DEBUGCTL"):
        msrs.lbr.wrmsr(IA32_DEBUGCTL, FREEZE_PERFMON)  # the LBR model alone keeps rule G6
    assert msrs.rdmsr(IA32_PERF_CAPABILITIES) == 1 << 13 | 0x3F
    with pytest.raises(GeneralProtection, match="read-only"):
        msrs.wrmsr(IA32_PERF_CAPABILITIES, 1 << 13 | 0x3F)
    msrs.wrmsr(IA32_PERF_CAPABILITIES, 1 << 13 | 0x3F, host_initiated=True)
    with pytest.raises(GeneralProtection, match="FW_WRITE"):
        msrs.wrmsr(IA32_PERF_CAPABILITIES, 0x3F, host_initiated=True)
    v1 = PerfmonMsrs(msrs.lbr, pmu(version=1, fixed_counters=0))
    with pytest.raises(GeneralProtection, match="version 2"):
        v1.wrmsr(IA32_DEBUGCTL, FREEZE_PERFMON)


def test_pmi_freezes_lbr_and_counters_and_reset_unfreezes():
    # SDM Version 4: with FREEZE_LBRS_ON_PMI and FREEZE_PERFMON_ON_PMI a PMI sets LBR_FRZ
    # (58) and CTR_FRZ (59); the LBR stops recording (ref 2) until STATUS_RESET clears 58
    msrs = alder_lake_pair(full_width_writes=True)
    lbr, p = msrs.lbr, msrs.pmu
    msrs.wrmsr(IA32_LBR_CTL, LBR_ON)
    msrs.wrmsr(IA32_DEBUGCTL, FREEZE_LBRS | FREEZE_PERFMON)
    msrs.wrmsr(IA32_PERFEVTSEL_BASE + 3, INSTR_ANY_RING | EVTSEL_INT)
    msrs.wrmsr(IA32_A_PMC_BASE + 3, (1 << 48) - 4)
    p.retire(100, 3)
    frozen = 1 << 3 | GLOBAL_STATUS_LBR_FRZ | GLOBAL_STATUS_CTR_FRZ
    assert msrs.rdmsr(IA32_PERF_GLOBAL_STATUS) == frozen and p.pmi_pending
    assert lbr.frozen and not lbr.recording
    lbr.retire_branch(Branch(0x1000, 0x2000, BranchType.JCC, 3))
    assert lbr.records()[0] == (0, 0, 0)
    msrs.wrmsr(IA32_PERF_GLOBAL_STATUS_RESET, frozen)
    assert msrs.rdmsr(IA32_PERF_GLOBAL_STATUS) == 0 and lbr.recording
    lbr.retire_branch(Branch(0x1000, 0x2000, BranchType.JCC, 3))
    assert lbr.records()[0][:2] == (0x1000, 0x2000)
    p.retire(2, 0)
    assert msrs.rdmsr(IA32_PMC_BASE + 3) == 2


def test_status_set_bit_58_freezes_the_lbr():
    # SDM Version 4 STATUS_SET bit 58 sets LBR_FRZ: the frozen state is the LBR model's
    msrs = alder_lake_pair()
    msrs.wrmsr(IA32_LBR_CTL, LBR_ON)
    msrs.wrmsr(IA32_PERF_GLOBAL_STATUS_SET, GLOBAL_STATUS_LBR_FRZ)
    assert msrs.lbr.frozen and not msrs.lbr.recording
    assert msrs.rdmsr(IA32_PERF_GLOBAL_STATUS) == GLOBAL_STATUS_LBR_FRZ
    msrs.wrmsr(IA32_PERF_GLOBAL_STATUS_RESET, GLOBAL_STATUS_LBR_FRZ)
    assert not msrs.lbr.frozen and msrs.lbr.recording


def test_pmi_without_freeze_bits_changes_nothing_else():
    msrs = alder_lake_pair()
    msrs.wrmsr(IA32_LBR_CTL, LBR_ON)
    msrs.wrmsr(IA32_PERFEVTSEL_BASE, INSTR_ANY_RING | EVTSEL_INT)
    msrs.wrmsr(IA32_PMC_BASE, 0xFFFF_FFFF)  # sign-extended: one below the 48-bit wrap
    msrs.pmu.retire(3, 0)
    assert msrs.pmu.pmi_pending and msrs.rdmsr(IA32_PERF_GLOBAL_STATUS) == 1
    assert msrs.lbr.recording and msrs.rdmsr(IA32_PMC_BASE) == 2


def test_anythread_accepted_from_version_3():
    # SDM Version 3: AnyThread in PERFEVTSELx (21) and each fixed field (bit 2)
    p = pmu(version=3)
    p.wrmsr(IA32_PERFEVTSEL_BASE, INSTR_ANY_RING | EVTSEL_ANY)
    p.wrmsr(IA32_FIXED_CTR_CTRL, 0x7)
    p.retire(9, 1)
    assert p.rdmsr(IA32_PMC_BASE) == 9


def test_from_the_policy_guest_cpuid():
    # the backends' guest CPUID (policy.emulated_guest_cpuid) keeps the base's leaf 0xA
    from vlbr.policy.emulated import emulated_guest_cpuid
    from vlbr.arch.cpuid import CpuidTable
    msrs = PerfmonMsrs.from_cpuid(emulated_guest_cpuid(CpuidTable(alder_lake()), depth=None))
    assert msrs.pmu.desc.version >= 4 and msrs.pmu.desc.gp_counters == 8
    msrs.wrmsr(IA32_DEBUGCTL, FREEZE_LBRS)
    msrs.wrmsr(IA32_LBR_CTL, LBR_ON)
    msrs.wrmsr(IA32_FIXED_CTR_CTRL, FIXED_ALL_PMI)
    msrs.wrmsr(IA32_PERF_GLOBAL_CTRL, 1 << 32)
    msrs.wrmsr(IA32_FIXED_CTR_BASE, (1 << 48) - 1)
    msrs.pmu.retire(1, 0)
    assert msrs.pmu.take_pmi() and msrs.lbr.frozen  # lbr.pmi(): v4+ with FREEZE_LBRS_ON_PMI


def test_p5_rdpmc():
    # SDM Vol. 2B RDPMC: ECX[30] selects the fixed counters, ECX[15:0] the index; #GP for an
    # absent counter or at CPL > 0 with CR4.PCE clear. Linux: hwc->event_base_rdpmc is idx,
    # or INTEL_PMC_FIXED_RDPMC_BASE (1 << 30) | idx (arch/x86/events/intel/core.c)
    p = pmu(gp_counters=2, fixed_counters=3, full_width_writes=True)
    p.wrmsr(IA32_A_PMC_BASE + 1, 0x1234_5678_9ABC)
    p.wrmsr(IA32_FIXED_CTR_BASE + 2, 77)
    assert p.rdpmc(1) == 0x1234_5678_9ABC and p.rdpmc(1 << 30 | 2) == 77
    assert p.rdpmc(1, cpl=3, pce=True) == 0x1234_5678_9ABC
    for bad in (2, 1 << 30 | 3, 1 << 29, 1 << 31 | 1, 1 << 16):
        with pytest.raises(GeneralProtection, match="names no counter"):
            p.rdpmc(bad)
    with pytest.raises(GeneralProtection, match="PCE"):
        p.rdpmc(0, cpl=3)


def test_linux_accepts_the_default_leaf():
    # arch/x86/kernel/cpu/intel.c: X86_FEATURE_ARCH_PERFMON needs version != 0 and more than
    # one GP counter; arch/x86/events/intel/core.c intel_pmu_init: EAX[31:24] (mask_length) >=
    # ARCH_PERFMON_EVENTS_COUNT (7), version >= 2 for the fixed counters and GLOBAL_CTRL
    pm = PerfMon.decode(PmuDescription().to_leaf())
    assert pm.version >= 2 and pm.gp_counters > 1 and pm.ebx_length >= 7
    assert pm.events_unavailable == 0 and pm.fixed_counters == 3 and pm.gp_width == pm.fixed_width


@settings(max_examples=100, deadline=None)
@given(st.lists(GP_SETUP, min_size=4, max_size=4),
       st.lists(st.tuples(st.integers(0, 3), STARTS), min_size=3, max_size=3),
       st.integers(0, counter_bits(4, 3)).map(lambda v: v & counter_bits(4, 3)), RETIRES, RETIRES,
       st.booleans())
def test_save_restore_round_trip(gp, fixed, global_ctrl, before, after, freeze):
    # KVM pmu_intel.c: host-initiated IA32_PMCx writes are full width, so a migrated PMU
    # continues exactly where the source stopped
    import json
    src = pmu(full_width_writes=True)
    program(src, gp, fixed, global_ctrl, pmi=counter_bits(4, 3))
    src.freeze_perfmon_on_pmi = freeze
    for n, cpl in before:
        src.retire(n, cpl)
    dst = pmu(full_width_writes=True)
    dst.restore(json.loads(json.dumps(src.save())))
    assert visible(dst) == visible(src)
    for n, cpl in after:
        for p in (src, dst):
            p.retire(n, cpl)
        assert dst.instructions_until_overflow(cpl) == src.instructions_until_overflow(cpl)
    assert visible(dst) == visible(src)


PMU_MSRS = [b + i for b in (IA32_PMC_BASE, IA32_PERFEVTSEL_BASE, IA32_A_PMC_BASE,
                            IA32_FIXED_CTR_BASE) for i in range(8)] + list(range(0x38D, 0x393))


def visible(p: ArchPerfmon) -> dict:
    """Every PMU MSR the guest can read, and the hidden PMI and freeze state."""
    seen = {"pmi": p.pmi_pending, "freeze": p.freeze_perfmon_on_pmi}
    for msr in PMU_MSRS:
        try:
            seen[msr] = p.rdmsr(msr)
        except GeneralProtection:
            pass
    return seen


def test_restore_keeps_a_pending_pmi_and_a_frozen_pmu():
    src = armed(start_gap=1)
    src.freeze_perfmon_on_pmi = True
    src.retire(1, 0)
    dst = pmu(full_width_writes=True)
    dst.restore(src.save())
    assert visible(dst) == visible(src) and dst.pmi_pending
    assert dst.rdmsr(IA32_PERF_GLOBAL_STATUS) == 1 | GLOBAL_STATUS_CTR_FRZ
