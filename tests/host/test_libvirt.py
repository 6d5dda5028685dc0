"""libvirt cputestdata XML reader."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from vlbr.arch.cpuid import Registers
from vlbr.arch.leaves import arch_lbr_leaf, structured_features
from vlbr.errors import CpuidFormatError
from vlbr.host import libvirt, read_cpuid_file

from corpus import LIBVIRT

ROW = "<cpuid eax_in='0x{:08x}' ecx_in='0x{:02x}' eax='0x0000000f' ebx='0x00000001' ecx='0x00000002' edx='0x00000003'/>"


def test_granite_rapids_host_has_arch_lbr(corpus_dir):
    # x86_64-cpuid-Xeon-6788P.xml (Granite Rapids): its 0x1C line and 0x7.0 EDX bit 19.
    (cpu,) = read_cpuid_file(LIBVIRT / "x86_64-cpuid-Xeon-6788P.xml")
    assert cpu.index == 0 and cpu.table.vendor == "GenuineIntel"
    assert structured_features(cpu.table).arch_lbr
    assert arch_lbr_leaf(cpu.table).depth_mask == 0x0B


def test_enabled_file_is_a_partial_table(corpus_dir):
    # x86_64-cpuid-Xeon-6731E-enabled.xml: 8 <cpuid> lines (features QEMU enabled), no leaf 0.
    (cpu,) = read_cpuid_file(LIBVIRT / "x86_64-cpuid-Xeon-6731E-enabled.xml")
    assert len(cpu.table) == 8 and cpu.table.query(0) is None
    assert cpu.table[(7, 2)] == Registers(0, 0, 0, 0x37)


def test_rows_and_msr_elements():
    text = f"<cpudata arch='x86'>\n  {ROW.format(0xD, 1)}\n  <msr index='0x10a' edx='0' eax='0'/>\n</cpudata>"
    (cpu,) = libvirt.parse(text, "x.xml")
    assert cpu.table[(0xD, 1)] == Registers(0xF, 1, 2, 3)


@pytest.mark.parametrize("text, line, words", [
    ("<cpudata>\n<cpuid eax_in='0x1' ecx_in='0x0' eax='0x1' ebx='0x2' ecx='0x3'/>\n</cpudata>", 2, "edx=None"),
    ("<cpudata>\n<cpuid eax_in='0x1' ecx_in='0x0' eax='12' ebx='0x2' ecx='0x3' edx='0x4'/>\n</cpudata>", 2, "eax='12'"),
    ("<cpudata>\n<cpuid eax_in='0x1' ecx_in='0x0' eax='0x123456789' ebx='0x2' ecx='0x3' edx='0x4'/>\n</cpudata>", 2, "32-bit"),
    ("<cpudata>\n<cpuid eax_in='0x1'\n", 2, "malformed XML"),
    ("<other/>", 1, "expected <cpudata>"),
    ("<cpudata>\n" + ROW.format(7, 0) + "\n" + ROW.format(7, 0).replace("0x00000003", "0x00000004") + "\n</cpudata>", 3, "different values"),
    ("<cpudata></cpudata>", None, "no CPUID data"),
    ("<!DOCTYPE x [<!ENTITY a 'b'>]><cpudata>&a;</cpudata>", 1, "entity"),
])
def test_bad_input(text, line, words):
    with pytest.raises(CpuidFormatError) as err:
        libvirt.parse(text, "bad.xml")
    assert err.value.line == line and words in err.value.problem


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(["<cpudata>", "</cpudata>", ROW.format(1, 0), "<cpuid eax_in='0x1'",
                                 " ecx_in='0x0'/>", "<msr/>", "&", "<!DOCTYPE", "'", "\n"]), max_size=20))
def test_fuzz_parse_or_raise(parts):
    try:
        libvirt.parse("".join(parts), "fuzz")
    except CpuidFormatError:
        pass


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=300))
def test_fuzz_any_text_parse_or_raise(text):
    try:
        libvirt.parse("<cpudata>" + text, "fuzz")
    except CpuidFormatError:
        pass
