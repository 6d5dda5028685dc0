"""The unicorn adapter of x87/SSE state against unicorn's own FXSAVE64/FXRSTOR64 (and the
32-bit forms): the bytes QEMU stores must equal LegacyState.pack() of what the adapter
reads, and registers QEMU loads must read back as LegacyState.unpack() of the same bytes.
Layout: SDM Vol. 2 FXSAVE, "FXSAVE/FXRSTOR layout" tables (64-bit and 32-bit forms)."""

from __future__ import annotations

import struct
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from unicorn import UC_ARCH_X86, UC_MODE_64, Uc
from unicorn import x86_const as X

from vlbr.arch.cpuid import CpuidTable, Registers
from vlbr.backends.software.fpu import (QEMU_MXCSR_MASK, UnicornLegacy, abridged_tags, full_tags,
                                        uc_xrstors, uc_xsaves)
from vlbr.x86.legacy_xstate import LegacyState

CODE, AREA = 0x1000, 0x4000
FXSAVE64 = bytes.fromhex("480fae042500400000")   # fxsave64 [0x4000]
FXSAVE32 = bytes.fromhex("0fae042500400000")     # fxsave [0x4000] (no REX.W)
FXRSTOR64 = bytes.fromhex("480fae0c2500400000")  # fxrstor64 [0x4000]
FXRSTOR32 = bytes.fromhex("0fae0c2500400000")
DATA = 0x5000
FPU_WORK = bytes.fromhex(
    "dbe3"                  # fninit
    "d9e8d9ebd9ea"          # fld1; fldpi; fldl2e
    "dec1"                  # faddp: st1 += st0, pop
    "d9ee"                  # fldz
    "d9e8d9e0"              # fld1; fchs (a negative value)
    "f30f6f042500500000"    # movdqu xmm0, [DATA]
    "f3440f6f0c2510500000"  # movdqu xmm9, [DATA + 0x10]
    "0fae142520500000"      # ldmxcsr [DATA + 0x20]
    "dd042500500000")       # fld qword [DATA]: sets FDP
BUSY_MXCSR = 0x3F80  # round down, all exceptions masked
COMPARED = 416  # bytes FXSAVE defines; 511:416 are reserved / software-available
# Where QEMU's FX* differ from the SDM (measured below, so a new unicorn shows up): FXSAVE
# stores FOP and FDP as 0 and, without REX.W too, the 64-bit FIP (no FCS/FDS); FXRSTOR
# loads none of FOP/FIP/FDP/FCS/FDS. vlbr's XSAVES/XRSTORS follow the SDM there.
QEMU_FXSAVE_ZEROES = {True: ((6, 8), (16, 24)), False: ((6, 24),)}
POINTERS = dict(fop=0, fip=0, fdp=0, fcs=0, fds=0)


def comparable(image: bytes, wide: bool) -> bytes:
    out = bytearray(image[:COMPARED])
    for lo, hi in QEMU_FXSAVE_ZEROES[wide]:
        out[lo:hi] = bytes(hi - lo)
    return bytes(out)


def cpu() -> Uc:
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.ctl_set_cpu_model(X.UC_CPU_X86_HASWELL)
    uc.mem_map(0, 0x10000)
    return uc


def run(uc: Uc, code: bytes) -> None:
    uc.mem_write(CODE, code)
    uc.emu_start(CODE, CODE + len(code))


def fxsave(uc: Uc, wide: bool = True) -> bytes:
    uc.mem_write(AREA, bytes(512))
    run(uc, FXSAVE64 if wide else FXSAVE32)
    return bytes(uc.mem_read(AREA, 512))


def busy_cpu() -> Uc:
    uc = cpu()
    uc.mem_write(DATA, bytes(range(1, 33)) + struct.pack("<I", BUSY_MXCSR))
    run(uc, FPU_WORK)
    return uc


def test_qemu_reports_mxcsr_mask_ffff():
    # SDM 11.6.6: FXSAVE stores the CPU's MXCSR_MASK at bytes 31:28.
    assert struct.unpack_from("<I", fxsave(cpu()), 28)[0] == QEMU_MXCSR_MASK


@pytest.mark.parametrize("wide", [True, False])
def test_adapter_reads_what_fxsave_stores(wide):
    uc = busy_cpu()
    read = UnicornLegacy(uc).read_legacy()
    assert read.ftw and read.top != 0 and any(read.xmm)  # the guest really used x87 and SSE
    assert read.fip and read.fdp  # QEMU tracks both pointers (fld m64 sets FDP)
    assert comparable(read.pack(wide), wide) == comparable(fxsave(uc, wide), wide)


def test_qemu_fx_pointer_deviations_are_as_measured():
    uc = busy_cpu()
    read = UnicornLegacy(uc).read_legacy()
    image = fxsave(uc, wide=False)
    assert struct.unpack_from("<HQQ", image, 6) == (0, read.fip, 0)
    uc.mem_write(AREA, LegacyState(fip=0x1234, fdp=0x5678, fop=0x155).pack())
    run(uc, FXRSTOR64)
    got = UnicornLegacy(uc).read_legacy()
    assert (got.fip, got.fdp, got.fop) == (read.fip, read.fdp, read.fop)  # not loaded


def _legacy_bytes(draw_ftw, fields) -> bytes:
    fcw, fsw, fop, fip, fdp, mxcsr, sts, xmms = fields
    state = LegacyState(fcw=fcw, fsw=fsw, ftw=draw_ftw, fop=fop, fip=fip, fdp=fdp,
                        st=tuple(sts), mxcsr=mxcsr, xmm=tuple(xmms))
    return state.pack(True)


u16 = st.integers(0, 0xFFFF)
legacy_fields = st.tuples(
    st.integers(0, 0x1F3F) | st.just(0x37F),  # FCW: reserved bits 15:13, 7:6 clear
    u16.map(lambda w: w & 0x7FFF | (w & 0x80) << 8),  # FSW: B mirrors ES (SDM 8.1.3.1)
    st.integers(0, 0x7FF), st.integers(0, (1 << 48) - 1), st.integers(0, (1 << 48) - 1),
    st.integers(0, 0xFFFF),
    st.lists(st.integers(0, (1 << 80) - 1), min_size=8, max_size=8),
    st.lists(st.integers(0, (1 << 128) - 1), min_size=16, max_size=16))


@settings(max_examples=25, deadline=None)
@given(ftw=st.integers(0, 0xFF), fields=legacy_fields)
def test_fxrstor64_then_adapter_read_equals_unpack(ftw, fields):
    """Registers QEMU's FXRSTOR64 loads read back through the adapter as the bytes say."""
    image = _legacy_bytes(ftw, fields)
    uc = cpu()
    uc.mem_write(AREA, image)
    run(uc, FXRSTOR64)
    expected = LegacyState.unpack(image)
    got = UnicornLegacy(uc).read_legacy()
    assert replace(got, **POINTERS) == replace(expected, **POINTERS, mxcsr_mask=QEMU_MXCSR_MASK)


@settings(max_examples=25, deadline=None)
@given(ftw=st.integers(0, 0xFF), fields=legacy_fields)
def test_adapter_write_then_fxsave64_equals_pack(ftw, fields):
    """What the adapter writes is what QEMU's FXSAVE64 then stores."""
    state = LegacyState.unpack(_legacy_bytes(ftw, fields))
    uc = cpu()
    UnicornLegacy(uc).write_legacy(state, 0b11)
    assert comparable(fxsave(uc), True) == comparable(state.pack(), True)
    assert UnicornLegacy(uc).read_legacy() == replace(state, mxcsr_mask=QEMU_MXCSR_MASK)


def test_adapter_writes_only_the_named_component():
    uc = busy_cpu()
    before = UnicornLegacy(uc).read_legacy()
    UnicornLegacy(uc).write_legacy(LegacyState(), 0b10)  # SSE only
    after = UnicornLegacy(uc).read_legacy()
    assert after.st == before.st and after.ftw == before.ftw and after.fsw == before.fsw
    assert after.xmm == (0,) * 16 and after.mxcsr == 0x1F80


def test_adapter_round_trips_the_pointers_qemu_fx_ignores():
    state = LegacyState(fip=0x7FFF_1234_5678, fcs=0x33, fdp=0x9ABC_DEF0, fds=0x2B, fop=0x1D9)
    uc = cpu()
    UnicornLegacy(uc).write_legacy(state, 0b11)
    assert UnicornLegacy(uc).read_legacy() == state


def test_32_bit_form_packs_selectors_and_low_pointers():
    # SDM FXSAVE 32-bit layout: FIP[31:0] at 8, FCS at 12, FDP[31:0] at 16, FDS at 20.
    image = LegacyState(fip=0x7F_1234_5678, fcs=0x33, fdp=0x9ABC_DEF0, fds=0x2B).pack(False)
    assert struct.unpack_from("<IHxxIH", image, 8) == (0x1234_5678, 0x33, 0x9ABC_DEF0, 0x2B)
    back = LegacyState.unpack(image, wide=False)
    assert (back.fip, back.fcs, back.fdp, back.fds) == (0x1234_5678, 0x33, 0x9ABC_DEF0, 0x2B)


def test_tag_word_conversions():
    # FPTAG is 2 bits per physical register, 11 = empty; FXSAVE's abridged form 1 bit (valid).
    assert abridged_tags(0xFFFF) == 0 and abridged_tags(0x0FFF) == 0xC0
    assert abridged_tags(0xFF00 | 0b01_10_00_11) == 0b1110  # zero, special, valid, empty
    assert full_tags(0) == 0xFFFF and full_tags(0xC0) == 0x0FFF


def test_uc_xsaves_then_uc_xrstors_moves_the_state_between_cpus():
    """The PC machine's entry points: XSAVES of one CPU restores into another (SDM 13.11,
    13.12), and an area saved with the CPU in its init state initialises (13.8.2)."""
    table = CpuidTable({(0xD, 0): Registers(0x3, 0x240, 0x240, 0), (0xD, 1): Registers(0x8)})
    source, target, area = busy_cpu(), cpu(), bytearray(576)
    uc_xsaves(source, None, table, 0b11, 0, 0b11, area, 0)
    assert struct.unpack_from("<QQ", area, 512) == (0b11, 1 << 63 | 0b11)
    uc_xrstors(target, None, table, 0b11, 0, 0b11, area, 0)
    assert UnicornLegacy(target).read_legacy() == UnicornLegacy(source).read_legacy()
    fresh = cpu()
    UnicornLegacy(fresh).write_legacy(LegacyState(), 0b11)
    uc_xsaves(fresh, None, table, 0b11, 0, 0b11, area, 0)
    uc_xrstors(target, None, table, 0b11, 0, 0b11, area, 0)
    assert UnicornLegacy(target).read_legacy() == LegacyState()
