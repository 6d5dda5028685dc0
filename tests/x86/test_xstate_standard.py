"""vlbr.x86.xstate's XSAVE and XRSTOR: the standard form of x87|SSE (SDM Vol. 1 13.7 XSAVE:
every requested component written, XSTATE_BV[i] = XINUSE[i] for requested i, the rest of the
header untouched; 13.8.1 standard XRSTOR: #GP(0) on XSTATE_BV outside XCR0 or header bytes
23:8 set, components with XSTATE_BV clear initialized, MXCSR loaded from the area whenever
RFBM[1]), and XRSTOR's compacted form only with XSAVEC (Vol. 2 XRSTOR, Protected Mode
Exceptions)."""

from __future__ import annotations

import struct
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from test_xstate import BUSY, XCR0, Cpu, guest_states, table  # noqa: F401 (the fixture)
from vlbr.arch.cpuid import CpuidTable, Registers
from vlbr.arch.x86 import CPUID_D1_EAX_XSAVEC
from vlbr.vcpu import GeneralProtection
from vlbr.x86.legacy_xstate import LegacyState
from vlbr.x86.xstate import UnmodelledXstate, xrstor, xsave, xsaves

FILL = 0xAA


def area() -> bytearray:
    return bytearray([FILL] * 512 + [0] * 64 + [FILL] * 1024)


def xstate_bv(a) -> int:
    return struct.unpack_from("<Q", a, 512)[0]


def test_xsave_writes_every_requested_component_even_in_init_state(table):
    a = area()
    xsave(Cpu(LegacyState()), table, a, 0, 0b11, XCR0)
    assert a[:416] == LegacyState().pack()[:416]  # written, not skipped as XSAVES would
    assert xstate_bv(a) == 0  # nothing in use


def test_xsave_keeps_the_header_bits_it_was_not_asked_for(table):
    a = area()
    a[512:528] = struct.pack("<QQ", 0b01, 0x1234)  # an x87 bit from before; XCOMP_BV
    xsave(Cpu(BUSY), table, a, 0, 0b10, XCR0)  # SSE only
    assert xstate_bv(a) == 0b11 and struct.unpack_from("<Q", a, 520)[0] == 0x1234
    assert a[32:160] == bytes([FILL]) * 128  # x87 registers not touched


def test_xsave_misaligned_is_gp_and_writes_nothing(table):
    a = area()
    before = bytes(a)
    with pytest.raises(GeneralProtection, match="aligned"):
        xsave(Cpu(BUSY), table, a, 16, 0b11, XCR0)
    assert bytes(a) == before


@pytest.mark.parametrize("offset,value,why", [
    (512, 0b111, "outside XCR0"),     # XSTATE_BV names AVX, XCR0 is x87|SSE
    (520, 0b1, "23:8"),               # XCOMP_BV bit 0, bit 63 clear
    (528, 0b1, "23:8"),               # header bytes 23:16
])
def test_xrstor_standard_header_gp_before_any_change(table, offset, value, why):
    a = area()
    xsave(Cpu(LegacyState()), table, a, 0, 0b11, XCR0)
    a[offset:offset + 8] = value.to_bytes(8, "little")
    cpu = Cpu(BUSY)
    with pytest.raises(GeneralProtection, match=why):
        xrstor(cpu, table, a, 0, 0b11, XCR0)
    assert cpu.state == BUSY and cpu.writes == []


def test_xrstor_standard_form_loads_mxcsr_even_when_sse_is_initialized(table):
    a = area()
    xsave(Cpu(replace(BUSY, mxcsr=0x1FA0)), table, a, 0, 0b11, XCR0)
    a[512:520] = bytes(8)  # XSTATE_BV: both components to their initial configuration
    cpu = Cpu(BUSY)
    xrstor(cpu, table, a, 0, 0b11, XCR0)
    assert cpu.state == replace(LegacyState(), mxcsr=0x1FA0)


def test_xrstor_mxcsr_with_reserved_bits_is_gp(table):
    a = area()
    xsave(Cpu(BUSY), table, a, 0, 0b11, XCR0)
    a[24:28] = (0x10000).to_bytes(4, "little")
    with pytest.raises(GeneralProtection, match="MXCSR"):
        xrstor(Cpu(BUSY), table, a, 0, 0b10, XCR0)


def with_xsavec(table: CpuidTable, on: bool) -> CpuidTable:
    regs = table.regs(0xD, 1)
    flags = regs.eax | CPUID_D1_EAX_XSAVEC if on else regs.eax & ~CPUID_D1_EAX_XSAVEC
    return table.replace({(0xD, 1): Registers(flags, regs.ebx, regs.ecx, regs.edx)})


@pytest.mark.parametrize("enumerated", [True, False])
def test_xrstor_compacted_form_needs_xsavec(table, enumerated):
    a = area()
    xsaves(Cpu(BUSY), None, table, a, 0, 0b11, XCR0, 0)  # a compacted image of x87|SSE
    cpu = Cpu(LegacyState())
    if enumerated:
        xrstor(cpu, with_xsavec(table, True), a, 0, 0b11, XCR0)
        assert cpu.state == BUSY
    else:
        with pytest.raises(GeneralProtection, match="XSAVEC"):
            xrstor(cpu, with_xsavec(table, False), a, 0, 0b11, XCR0)


def test_avx_is_named_as_not_modelled(table):
    with pytest.raises(UnmodelledXstate, match="0x4"):
        xsave(Cpu(), table, area(), 0, 0b111, 0b111)


@settings(max_examples=60)
@given(saved=guest_states, other=guest_states, rfbm=st.sampled_from([0b01, 0b10, 0b11]),
       wide=st.booleans())
def test_any_state_round_trips_through_the_standard_form(table, saved, other, rfbm, wide):
    a = area()
    xsave(Cpu(saved), table, a, 0, rfbm, XCR0, wide)
    assert xstate_bv(a) == saved.xinuse & rfbm
    cpu = Cpu(other)
    xrstor(cpu, table, a, 0, rfbm, XCR0, wide)
    expected = other.take(saved, rfbm)
    if not wide:  # the 32-bit form keeps FIP/FDP's low 32 bits and the selectors
        expected = replace(expected, fip=cpu.state.fip, fdp=cpu.state.fdp,
                           fcs=cpu.state.fcs, fds=cpu.state.fds)
    assert cpu.state == expected
