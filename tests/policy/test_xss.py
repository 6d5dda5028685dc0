"""guest_xss_write(): #GP for unsupported bits, else the new CPUID.(0xD,1):EBX.

Sizes come from the reference doc: the legacy area and header take 576 bytes, component 15 is
40 + 24 * depth (808 at 32, INDEX.md); CET user/kernel are 16 and 24 bytes in the Raptor Lake
dump's CPUID.(0xD,11) and (0xD,12)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from vlbr.arch.cpuid import CpuidTable, Registers
from vlbr.arch.xsave import XsaveLayout
from vlbr.errors import VlbrError
from vlbr.policy import (HostDescription, XssWriteFault, emulated_guest_cpuid, guest_xss_write,
                         supported_cpuid)

from policy_corpus import instlat, types_of

LBR, CET = 1 << 15, (1 << 11) | (1 << 12)


@pytest.fixture(scope="module")
def rpl(corpus_dir):
    host = HostDescription(types_of(instlat("GenuineIntel00B0671_RaptorLake_01_CPUID.txt"))[0].table)
    sup = supported_cpuid(host, "v3")
    return sup.table, sup.supported_xss


def test_bit_15_gives_the_compacted_size(rpl):
    guest, xss = rpl
    assert xss == LBR | CET
    assert guest_xss_write(guest, xss, 0) == 576
    assert guest_xss_write(guest, xss, LBR) == 576 + 808
    assert guest_xss_write(guest, xss, LBR | CET) == 576 + 16 + 24 + 808
    # With AVX (XCR0 bit 2, 256 bytes at CPUID.(0xD,2)) in XCR0 as well.
    assert guest_xss_write(guest, xss, LBR, xcr0=0x7) == 576 + 256 + 808


def test_unsupported_bits_gp(rpl):
    guest, xss = rpl
    for value in (1 << 8, 1 << 14, 1 << 16, 1 << 63, LBR | 1):  # PT, HDC..., bit 0 is user
        with pytest.raises(XssWriteFault) as err:
            guest_xss_write(guest, xss, value)
        assert err.value.value == value and "outside the supported XSS mask" in err.value.reason
    # A bit KVM supports but the guest's CPUID does not enumerate.
    no_lbr = guest.replace({(0xD, 1): Registers(0xF, 0, 0x1800, 0)})
    with pytest.raises(XssWriteFault):
        guest_xss_write(no_lbr, xss, LBR)
    # And one the guest enumerates but KVM does not support (email-v2 with a host lacking it).
    with pytest.raises(XssWriteFault):
        guest_xss_write(guest, CET, LBR)


def test_no_xsaves_gp_for_the_guest_not_for_the_host(rpl):
    guest, xss = rpl
    plain = guest.replace({(0xD, 1): Registers(0x7, 0, LBR, 0)})
    with pytest.raises(XssWriteFault, match="lacks XSAVES"):
        guest_xss_write(plain, xss, 0)
    assert guest_xss_write(plain, xss, LBR, host_initiated=True) == 576 + 808
    assert issubclass(XssWriteFault, VlbrError)


@settings(max_examples=100, deadline=None)
@given(value=st.integers(0, (1 << 64) - 1))
def test_write_is_gp_exactly_outside_the_mask(rpl, value):
    guest, xss = rpl
    try:
        size = guest_xss_write(guest, xss, value)
    except XssWriteFault:
        assert value & ~xss
    else:
        assert not value & ~xss
        assert size == XsaveLayout.for_mask(guest, 0x3 | value).size


def test_emulated_guest_on_a_table_without_xss(corpus_dir):
    from corpus import CPUID_RAW_DUMP

    base = types_of(CPUID_RAW_DUMP)[0].table
    guest = emulated_guest_cpuid(base, depth=16)
    assert guest_xss_write(guest, LBR, LBR) == 576 + 40 + 24 * 16
