"""vlbr.x86.xstate with a CPU that holds AVX state (an ExtendedCpu, as KVM's adapter is):
XSAVES stores component 2 only in use (init optimization, SDM vol. 1 13.11) at its compacted
offset, XSAVE always at its CPUID offset (13.7), XRSTORS/XRSTOR load it or initialize it by
XSTATE_BV (13.8, 13.12), and a component the CPU does not hold stays UnmodelledXstate."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from test_xstate import BUSY, Cpu, table  # noqa: F401 (the fixture)
from vlbr.arch.leaves import xsave_component
from vlbr.x86.xstate import UnmodelledXstate, xrstor, xrstors, xsave, xsaves

AVX, XCR0 = 1 << 2, 0b111
AVX_SIZE = 256


class AvxCpu(Cpu):
    """x87/SSE as a LegacyState and component 2 as bytes (None: initial configuration)."""

    extended = AVX

    def __init__(self, state=BUSY, avx: bytes | None = None):
        super().__init__(state)
        self.avx = avx

    def read_component(self, index):
        assert index == 2
        return self.avx

    def write_component(self, index, data):
        assert index == 2
        self.avx = data


@pytest.fixture(scope="module")
def avx_offset(table):
    comp = xsave_component(table, 2)
    if comp is None or comp.size != AVX_SIZE:
        pytest.skip("the corpus table enumerates no AVX component")
    return comp.offset


def area() -> bytearray:
    return bytearray(4096)


def xstate_bv(a) -> int:
    return struct.unpack_from("<Q", a, 512)[0]


@settings(max_examples=40)
@given(avx=st.none() | st.binary(min_size=AVX_SIZE, max_size=AVX_SIZE),
       other=st.none() | st.binary(min_size=AVX_SIZE, max_size=AVX_SIZE))
def test_xsaves_and_xrstors_round_trip_avx(table, avx, other):
    a = area()
    xsaves(AvxCpu(avx=avx), None, table, a, 0, XCR0, XCR0, 0)
    assert bool(xstate_bv(a) & AVX) == (avx is not None)
    if avx is not None:
        assert bytes(a[576:576 + AVX_SIZE]) == avx  # compacted: right after the header
    cpu = AvxCpu(avx=other)
    xrstors(cpu, None, table, a, 0, XCR0, XCR0, 0)
    assert cpu.avx == avx


def test_xsave_writes_avx_at_its_standard_offset_even_when_init(table, avx_offset):
    a = bytearray([0xAA] * 4096)
    a[512:576] = bytes(64)
    xsave(AvxCpu(avx=None), table, a, 0, XCR0, XCR0)
    assert xstate_bv(a) & AVX == 0 and a[avx_offset:avx_offset + AVX_SIZE] == bytes(AVX_SIZE)
    pattern = bytes(range(AVX_SIZE))
    xsave(AvxCpu(avx=pattern), table, a, 0, XCR0, XCR0)
    assert xstate_bv(a) & AVX and a[avx_offset:avx_offset + AVX_SIZE] == pattern
    cpu = AvxCpu(avx=None)
    xrstor(cpu, table, a, 0, XCR0, XCR0)
    assert cpu.avx == pattern
    a[512:520] = (xstate_bv(a) & ~AVX).to_bytes(8, "little")
    xrstor(cpu, table, a, 0, AVX, XCR0)
    assert cpu.avx is None  # XSTATE_BV[2] clear: initialized


def test_a_cpu_without_avx_state_names_it(table):
    with pytest.raises(UnmodelledXstate, match="0x4"):
        xsaves(Cpu(), None, table, area(), 0, XCR0, XCR0, 0)
