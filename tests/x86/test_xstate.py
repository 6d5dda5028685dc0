"""vlbr.x86.xstate: XSAVES/XRSTORS of x87|SSE|Arch LBR in the compacted form, per SDM Vol. 1
13.11 (XSAVES), 13.12 (XRSTORS), 13.8.2 (compacted XRSTOR: init of components whose
XSTATE_BV bit is clear, MXCSR 1F80H), 13.6 (init optimization) and Vol. 2 XSAVES/XRSTORS
Operation. The guest CPUID is vlbr's emulated one over the corpus KVM guest (component 15
at depth 32, 808 bytes, right after the 576-byte legacy region and header)."""

from __future__ import annotations

import struct
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corpus import CPUID_RAW_DUMP
from vlbr.arch.msrs import IA32_LBR_CTL, IA32_XSS, BranchType
from vlbr.host import read_cpuid_file
from vlbr.policy import emulated_guest_cpuid
from vlbr.vcpu import ArchLbrVcpu, Branch, GeneralProtection, LbrConfig
from vlbr.x86.legacy_xstate import COMPONENT_BYTES, LegacyState
from vlbr.x86.xstate import UnmodelledXstate, xrstors, xsaves

XCR0, XSS = 0b11, 1 << 15
LBR = 1 << 15
AREA = 576 + 808
FILL = 0xAA
BUSY = LegacyState(fcw=0x27F, fsw=0x3000, ftw=0xC0, fop=0x1D9, fip=0x401000, fdp=0x602000,
                   st=(0x3FFF_8000_0000_0000_0000, 0x4000_C90F_DAA2_2168_C235) + (0,) * 6,
                   mxcsr=0x3F80, xmm=tuple(range(1, 17)))


class Cpu:
    """A LegacyCpu holding its registers as one LegacyState."""

    def __init__(self, state=LegacyState()):
        self.state, self.writes = state, []

    def read_legacy(self):
        return self.state

    def write_legacy(self, state, components):
        self.writes.append(components)
        self.state = self.state.take(state, components)


@pytest.fixture(scope="module")
def table():
    if not CPUID_RAW_DUMP.exists():
        pytest.skip(f"corpus file {CPUID_RAW_DUMP} missing")
    return emulated_guest_cpuid(read_cpuid_file(CPUID_RAW_DUMP)[0].table, 32)


@pytest.fixture
def lbr(table):
    v = ArchLbrVcpu(LbrConfig.from_cpuid(table))
    v.wrmsr(IA32_XSS, XSS)
    v.wrmsr(IA32_LBR_CTL, 0x7F0007)
    v.retire_branch(Branch(0x401000, 0x402000, BranchType.JCC, 0))
    return v


def area():
    return bytearray([FILL] * 512 + [0] * 64 + [FILL] * 808)


def header(a, offset=0):
    return struct.unpack_from("<QQ", a, offset + 512)


def test_xsaves_writes_both_legacy_components_and_the_header(table):
    # SDM 13.11: XSTATE_BV = RFBM & XINUSE, XCOMP_BV = RFBM | bit 63; legacy region in the
    # REX.W (64-bit) form.
    a = area()
    xsaves(Cpu(BUSY), None, table, a, 0, 0b11, XCR0, 0)
    assert header(a) == (0b11, 1 << 63 | 0b11)
    assert a[:416] == BUSY.pack()[:416] and a[416:512] == bytes([FILL]) * 96  # 511:416 untouched


def test_xsaves_init_optimization_leaves_init_components_unwritten(table):
    # SDM 13.6/13.11: a component in its initial configuration is not saved, its bit is 0.
    a = area()
    xsaves(Cpu(LegacyState(xmm=(0,) * 15 + (9,))), None, table, a, 0, 0b11, XCR0, 0)
    assert header(a) == (0b10, 1 << 63 | 0b11)
    assert a[:24] == bytes([FILL]) * 24 and a[32:160] == bytes([FILL]) * 128  # x87 bytes
    assert int.from_bytes(a[400:416], "little") == 9


@pytest.mark.parametrize("mxcsr,saved", [(0x1F80, 0), (0x1FC0, 0b10)])
def test_xsaves_saves_sse_when_mxcsr_is_not_its_reset_value(table, mxcsr, saved):
    # Vol. 2 XSAVES Operation: IF MXCSR != 1F80H AND RFBM[1] THEN TO_BE_SAVED[1] = 1 (and the
    # XSTATE_BV bit); otherwise nothing of SSE, MXCSR included, is written.
    a = area()
    xsaves(Cpu(LegacyState(mxcsr=mxcsr)), None, table, a, 0, 0b11, XCR0, 0)
    assert header(a)[0] == saved
    stored = struct.unpack_from("<I", a, 24)[0]
    assert stored == (mxcsr if saved else int.from_bytes(bytes([FILL]) * 4, "little"))


def test_xsaves_rfbm_limits_what_is_written(table):
    a = area()
    xsaves(Cpu(BUSY), None, table, a, 0, 0b01, XCR0, 0)
    assert header(a) == (0b01, 1 << 63 | 0b01)
    assert a[24:32] == bytes([FILL]) * 8 and a[160:416] == bytes([FILL]) * 256  # SSE bytes


def test_xsaves_composes_component_15(table, lbr):
    # RFBM x87|SSE|LBR (Linux's): one header with all three bits, component 15 at 576.
    a = area()
    xsaves(Cpu(BUSY), lbr, table, a, 0, 0x8003, XCR0, XSS)
    assert header(a) == (0x8003, 1 << 63 | 0x8003)
    ctl, depth = struct.unpack_from("<QQ", a, 576)
    assert (ctl, depth) == (0x7F0007, 32)
    assert struct.unpack_from("<2Q", a, 576 + 40) == (0x401000, 0x402000)


def test_xsaves_misaligned_is_gp_and_writes_nothing(table):
    a = area() + bytearray(64)
    before = bytes(a)
    with pytest.raises(GeneralProtection, match="aligned"):
        xsaves(Cpu(BUSY), None, table, a, 8, 0b11, XCR0, 0)
    assert a == before


def test_round_trip_restores_every_register(table, lbr):
    a = area()
    xsaves(Cpu(BUSY), lbr, table, a, 0, 0x8003, XCR0, XSS)
    cpu = Cpu(LegacyState(fcw=0x7F, xmm=(5,) * 16))
    lbr.wrmsr(IA32_LBR_CTL, 0)
    xrstors(cpu, lbr, table, a, 0, 0x8003, XCR0, XSS)
    assert cpu.state == BUSY
    assert lbr.lbr_ctl == 0x7F0007 and lbr.records()[0][:2] == (0x401000, 0x402000)


@pytest.mark.parametrize("wide", [True, False])
def test_round_trip_in_either_form(table, wide):
    # SDM 13.5.1: REX.W selects the 64-bit FIP/FDP form; without it 32-bit offsets and the
    # FCS/FDS selectors.
    state = replace(BUSY, fcs=0 if wide else 0x33, fds=0 if wide else 0x2B)
    a = area()
    xsaves(Cpu(state), None, table, a, 0, 0b11, XCR0, 0, wide=wide)
    cpu = Cpu()
    xrstors(cpu, None, table, a, 0, 0b11, XCR0, 0, wide=wide)
    assert cpu.state == state


def test_xrstors_initialises_components_whose_xstate_bv_bit_is_clear(table):
    # SDM 13.8.2/13.12: RFBM[i] = 1 and XSTATE_BV[i] = 0 puts component i in its initial
    # configuration; for SSE that sets MXCSR to 1F80H. The area's bytes are not read.
    a = area()
    a[:512] = BUSY.pack()
    a[512:528] = struct.pack("<QQ", 0, 1 << 63 | 0b11)
    cpu = Cpu(BUSY)
    xrstors(cpu, None, table, a, 0, 0b11, XCR0, 0)
    assert cpu.state == LegacyState()


def test_xrstors_leaves_components_outside_rfbm(table):
    a = area()
    a[:512] = LegacyState().pack()
    a[512:528] = struct.pack("<QQ", 0b11, 1 << 63 | 0b11)
    cpu = Cpu(BUSY)
    xrstors(cpu, None, table, a, 0, 0b10, XCR0, 0)  # SSE only
    assert cpu.state == BUSY.take(LegacyState(), 0b10) and cpu.writes == [0b10]


def test_xrstors_mxcsr_with_reserved_bits_is_gp_before_any_change(table, lbr):
    # SDM 13.12: XRSTORS #GPs if it would load MXCSR with an illegal value (against
    # MXCSR_MASK); nothing is restored, not even component 15.
    a = area()
    xsaves(Cpu(BUSY), lbr, table, a, 0, 0x8003, XCR0, XSS)
    struct.pack_into("<I", a, 24, 0x1_1F80)
    lbr.wrmsr(IA32_LBR_CTL, 0)
    cpu = Cpu()
    with pytest.raises(GeneralProtection, match="MXCSR"):
        xrstors(cpu, lbr, table, a, 0, 0x8003, XCR0, XSS)
    assert cpu.writes == [] and lbr.lbr_ctl == 0


def test_xrstors_ignores_mxcsr_bytes_when_sse_is_initialised(table):
    a = area()
    struct.pack_into("<I", a, 24, 0xFFFF_FFFF)
    a[512:528] = struct.pack("<QQ", 0, 1 << 63 | 0b11)
    cpu = Cpu(BUSY)
    xrstors(cpu, None, table, a, 0, 0b11, XCR0, 0)
    assert cpu.state.mxcsr == 0x1F80


@pytest.mark.parametrize("xstate_bv,xcomp_bv,reserved,why", [
    (0b11, 0b11, 0, "standard format"),              # XCOMP_BV[63] clear
    (0b111, 1 << 63 | 0b11, 0, "not a subset"),      # XSTATE_BV outside XCOMP_BV
    (0b11, 1 << 63 | 0b111, 0, "outside XCR0"),      # XCOMP_BV names AVX, not in XCR0|XSS
    (0b11, 1 << 63 | 0b11, 1, "63:16"),              # reserved header bytes
])
def test_xrstors_header_gp(table, xstate_bv, xcomp_bv, reserved, why):
    # SDM 13.12: the #GP conditions XRSTORS checks on the XSAVE header.
    a = area()
    a[:512] = LegacyState().pack()
    a[512:528] = struct.pack("<QQ", xstate_bv, xcomp_bv)
    a[528] = reserved
    cpu = Cpu(BUSY)
    with pytest.raises(GeneralProtection, match=why):
        xrstors(cpu, None, table, a, 0, 0b11, XCR0, 0)
    assert cpu.state == BUSY


def test_unmodelled_components_are_named(table):
    with pytest.raises(UnmodelledXstate, match="0x4"):
        xsaves(Cpu(), None, table, area(), 0, 0b111, 0b111, 0)  # AVX in XCR0
    with pytest.raises(UnmodelledXstate, match="0x8000"):
        xrstors(Cpu(), None, table, area(), 0, 0x8003, XCR0, XSS)  # LBR without a model


u = lambda bits: st.integers(0, (1 << bits) - 1)  # noqa: E731
guest_states = st.builds(LegacyState, fcw=u(16), fsw=u(16), ftw=u(8), fop=u(11), fip=u(64),
                         fdp=u(64), st=st.tuples(*[u(80)] * 8), mxcsr=u(16),
                         xmm=st.tuples(*[u(128) | st.just(0)] * 16))


@settings(max_examples=60)
@given(saved=guest_states, other=guest_states, rfbm=st.sampled_from([0b01, 0b10, 0b11]))
def test_any_state_round_trips_and_init_components_are_not_written(table, saved, other, rfbm):
    # SDM 13.11 then 13.12: XRSTORS of what XSAVES stored gives back every register of the
    # RFBM components (an init-optimized one through its initial configuration) and leaves
    # the others; XSAVES writes no byte of a component whose XSTATE_BV bit it clears.
    a = area()
    xsaves(Cpu(saved), None, table, a, 0, rfbm, XCR0, 0)
    bv = header(a)[0]
    assert bv == saved.to_be_saved(rfbm)
    for component, ranges in COMPONENT_BYTES.items():
        if not bv & component:
            assert all(a[lo:hi] == bytes([FILL]) * (hi - lo) for lo, hi in ranges)
    cpu = Cpu(other)
    xrstors(cpu, None, table, a, 0, rfbm, XCR0, 0)
    assert cpu.state == other.take(saved, rfbm)
