"""vlbr.x86.legacy_xstate against SDM Vol. 1 13.4.1 (legacy region), 13.5.1/13.5.2 (x87 and
SSE state), 13.6 (initial configuration, XINUSE) and Vol. 2 FXSAVE's 64-bit and 32-bit
"FXSAVE/FXRSTOR layout" tables."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vlbr.vcpu import GeneralProtection
from vlbr.x86.legacy_xstate import LegacyState, store_components

u = lambda bits: st.integers(0, (1 << bits) - 1)  # noqa: E731
states = st.builds(LegacyState, fcw=u(16), fsw=u(16), ftw=u(8), fop=u(11), fip=u(64), fdp=u(64),
                   st=st.tuples(*[u(80)] * 8), mxcsr=u(32), mxcsr_mask=u(32),
                   xmm=st.tuples(*[u(128)] * 16))


@given(states)
def test_64_bit_form_round_trips(state):
    packed = state.pack()
    assert len(packed) == 512 and packed[416:] == bytes(96)
    assert LegacyState.unpack(packed) == state


def test_64_bit_layout_offsets():
    # Vol. 2 FXSAVE 64-bit layout: FCW 0, FSW 2, FTW 4, FOP 6, FIP 8, FDP 16, MXCSR 24,
    # MXCSR_MASK 28, ST0 at 32 (16-byte slots, 10 bytes used), XMM0 at 160, XMM15 at 400.
    s = LegacyState(fcw=0x1234, fsw=0x5678, ftw=0x9A, fop=0x7BC, fip=0x1122334455667788,
                    fdp=0x99AABBCCDDEEFF00, mxcsr=0x1FA0, mxcsr_mask=0xFFBF,
                    st=tuple((0x8000 + i) << 64 | i for i in range(8)),
                    xmm=tuple(i << 120 | i for i in range(16)))
    b = s.pack()
    assert struct.unpack_from("<HHBBHQQII", b) == (0x1234, 0x5678, 0x9A, 0, 0x7BC,
                                                  0x1122334455667788, 0x99AABBCCDDEEFF00,
                                                  0x1FA0, 0xFFBF)
    assert int.from_bytes(b[32 + 16 * 3: 42 + 16 * 3], "little") == s.st[3]
    assert b[42:48] == bytes(6)  # reserved bytes of the ST0 slot
    assert int.from_bytes(b[400:416], "little") == s.xmm[15]


def test_32_bit_form_keeps_low_pointers_and_selectors():
    s = LegacyState(fip=0xAB_1234_5678, fcs=0x10, fdp=0xCD_9ABC_DEF0, fds=0x18)
    b = s.pack(wide=False)
    assert struct.unpack_from("<IHHIHH", b, 8) == (0x1234_5678, 0x10, 0, 0x9ABC_DEF0, 0x18, 0)
    back = LegacyState.unpack(b, wide=False)
    assert (back.fip, back.fcs, back.fdp, back.fds) == (0x1234_5678, 0x10, 0x9ABC_DEF0, 0x18)


def test_defaults_are_the_initial_configuration():
    # SDM 13.6: FCW 037FH, FSW 0, FTW all empty, pointers and ST0-7 0; XMM 0, MXCSR 1F80H.
    init = LegacyState()
    assert (init.fcw, init.fsw, init.ftw, init.fip, init.fdp, init.fop) == (0x37F, 0, 0, 0, 0, 0)
    assert init.st == (0,) * 8 and init.xmm == (0,) * 16 and init.mxcsr == 0x1F80
    assert init.xinuse == 0


@pytest.mark.parametrize("change,xinuse", [
    (dict(fcw=0x27F), 0b01), (dict(fsw=0x3800), 0b01), (dict(ftw=0x80), 0b01),
    (dict(fip=4), 0b01), (dict(st=(0,) * 7 + (1,)), 0b01),
    (dict(xmm=(0,) * 15 + (1,)), 0b10), (dict(mxcsr=0x1FC0), 0b00),
    (dict(fcw=0, xmm=(1,) + (0,) * 15), 0b11)])
def test_xinuse_tracks_each_component(change, xinuse):
    # SDM 13.6: XINUSE[i] = 0 only in the initial configuration; MXCSR is outside SSE's
    # init tracking.
    assert LegacyState(**change).xinuse == xinuse


def test_to_be_saved_includes_sse_when_mxcsr_is_not_1f80():
    # Vol. 2 XSAVES/XSAVEC Operation: IF MXCSR != 1F80H AND RFBM[1] THEN TO_BE_SAVED[1] = 1.
    assert LegacyState(mxcsr=0x1FC0).to_be_saved(0b11) == 0b10
    assert LegacyState(mxcsr=0x1FC0).to_be_saved(0b01) == 0
    assert LegacyState().to_be_saved(0b11) == 0
    assert LegacyState(fcw=0x27F).to_be_saved(0b10) == 0


def test_take_copies_only_the_named_component():
    busy = LegacyState(fcw=0x27F, st=(5,) * 8, mxcsr=0x1FC0, xmm=(7,) * 16, mxcsr_mask=0xFFBF)
    x87 = LegacyState().take(busy, 0b01)
    assert x87.fcw == 0x27F and x87.st == (5,) * 8 and x87.xmm == (0,) * 16 and x87.mxcsr == 0x1F80
    sse = LegacyState().take(busy, 0b10)
    assert sse.fcw == 0x37F and sse.xmm == (7,) * 16 and sse.mxcsr == 0x1FC0
    assert sse.mxcsr_mask == LegacyState().mxcsr_mask  # the CPU's, never taken from an image


def test_reserved_mxcsr_bits_are_gp():
    # SDM 11.6.6 / 13.8.1: loading MXCSR with a bit MXCSR_MASK clears raises #GP.
    LegacyState(mxcsr=0xFFFF).check_mxcsr(0xFFFF)
    with pytest.raises(GeneralProtection, match="reserved"):
        LegacyState(mxcsr=0x1_0000).check_mxcsr(0xFFFF)
    with pytest.raises(GeneralProtection):
        LegacyState(mxcsr=0x40).check_mxcsr(0xFFBF)  # DAZ on a CPU without it


def test_store_components_writes_only_their_bytes():
    # SDM 13.4.1: x87 owns bytes 23:0 and 159:32, SSE 31:24 and 415:160.
    s = LegacyState(fcw=0x1111, st=(2,) * 8, mxcsr=0x3333, xmm=(4,) * 16)
    for components, owned in ((0b01, [(0, 24), (32, 160)]), (0b10, [(24, 32), (160, 416)])):
        area = bytearray(b"\xAA" * 520)
        store_components(area, 8, s, components)
        for i in range(512):
            inside = any(lo <= i < hi for lo, hi in owned)
            assert (area[8 + i] == s.pack()[i]) if inside else area[8 + i] == 0xAA, i
        assert area[:8] == b"\xAA" * 8


def test_an_mxcsr_mask_of_zero_means_ffbf():
    # SDM 11.6.6: an FXSAVE image's MXCSR_MASK of 0 stands for the default 0000FFBFH.
    assert LegacyState(mxcsr_mask=0).mxcsr_bits == 0xFFBF
    assert LegacyState(mxcsr_mask=0x2FFFF).mxcsr_bits == 0x2FFFF
