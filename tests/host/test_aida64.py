"""The AIDA64/InstLatx64 reader: every quirk INDEX.md lists, errors, and fuzzing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from vlbr.arch.cpuid import Registers
from vlbr.errors import CpuidFormatError
from vlbr.host import aida64, parse_cpuid_bytes, read_cpuid_file

from corpus import INSTLATX64, aida_dumps


def parse(text: str):
    return aida64.parse(text, "test.txt")


def test_separators_dash_space_colon_tab():
    # INDEX.md: registers separated by '-' or spaces, with or without ':'; one corpus file uses a tab.
    text = ("CPUID 00000000: 00000001-756E6547-6C65746E-49656E69 [GenuineIntel]\n"
            "CPUID 00000001 : 00000F65 00010800 0000E41D BFEBFBFF\n"
            "CPUID 80000000  \t80000008-00000000-00000000-00000000\n"
            "CPUID 80000001 :00000000-00000000-00000001-20100000\n")
    (cpu,) = parse(text)
    assert cpu.table.vendor == "GenuineIntel"
    assert cpu.table[(1, 0)] == Registers(0xF65, 0x10800, 0xE41D, 0xBFEBFBFF)
    assert cpu.table[(0x80000000, 0)].eax == 0x80000008
    assert cpu.table[(0x80000001, 0)].ecx == 1


def test_subleaf_tags_and_skipped_subleaves_absent():
    text = ("CPUID 00000000: 0000000D-756E6547-6C65746E-49656E69\n"
            "CPUID 0000000D: 00000207-00000340-00000A88-00000000 [SL 00] [x87]\n"
            "CPUID 0000000D: 00000328-00000000-00000001-00000000 [SL 0F] [LBR]\n")
    (cpu,) = parse(text)
    assert cpu.table.subleaves(0xD) == [0, 0xF]
    assert cpu.table.query(0xD, 2) is None
    assert cpu.table[(0xD, 0xF)].eax == 0x328


def test_untagged_repeats_are_consecutive_subleaves():
    text = ("CPUID 00000000: 00000004-756E6547-6C65746E-49656E69\n"
            "CPUID 00000004: 00000121-01C0003F-0000001F-00000000\n"
            "CPUID 00000004: 00000143-01C0103F-000001FF-00000000\n")
    (cpu,) = parse(text)
    assert cpu.table[(4, 0)].eax == 0x121 and cpu.table[(4, 1)].eax == 0x143


@pytest.mark.parametrize("header", ["------[ CPUID Registers / Logical CPU #{n} ]------",
                                    "------[ Logical CPU #{n} ]------",
                                    "CPUID Registers (CPU #{n} Virtual):", "CPU {n}:"])
def test_headers_name_cpus(header):
    body = "CPUID 00000000: 00000001-756E6547-6C65746E-49656E69\n"
    text = "\n".join(header.format(n=n) + "\n" + body for n in (3, 5))
    assert [c.index for c in parse(text)] == [3, 5]


def test_headerless_cpus_split_on_leaf_zero_and_other_sections_ignored():
    text = ("------[ Versions ]------\nProgram Version : AIDA64\n"
            "CPUID 00000000: 00000001-756E6547-6C65746E-49656E69\n"
            "CPUID 00000001: 00000001-00000000-00000000-00000000\n"
            "CPUID 00000000: 00000001-756E6547-6C65746E-49656E69\n"
            "CPUID 00000001: 00000002-00000000-00000000-00000000\n"
            "------[ MSR Registers / Logical CPU #0 ]------\nMSR 00000017: 0004-0000-0000-0000\n")
    cpus = parse(text)
    assert [c.index for c in cpus] == [0, 1]
    assert [c.table[(1, 0)].eax for c in cpus] == [1, 2]


@pytest.mark.parametrize("text, line, words", [
    ("CPUID 00000000: 00000001-756E6547-6C65746E-49656E6\n", 1, "four 8-digit"),
    ("CPUID 00000000: 00000001-756E6547\n", 1, "four 8-digit"),
    ("CPUID 00000000: 00000001-756E6547-6C65746E-49656E69\nCPUID 00000001: zzzz\n", 2, "four"),
    ("CPUID 00000000: 00000001-756E6547-6C65746E-49656E69\n"
     "CPUID 00000007: 00000000-00000001-00000000-00000000 [SL 00]\n"
     "CPUID 00000007: 00000000-00000002-00000000-00000000 [SL 00]\n", 3, "different values"),
    ("just some words\nno cpuid at all\n", None, "no CPUID data"),
])
def test_bad_input_names_line_and_problem(text, line, words):
    with pytest.raises(CpuidFormatError) as err:
        parse(text)
    assert err.value.line == line and words in err.value.problem
    assert err.value.source == "test.txt"


def test_same_row_twice_with_same_values_is_accepted():
    row = "CPUID 00000007: 00000000-00000001-00000000-00000000 [SL 00]\n"
    (cpu,) = parse("CPUID 00000000: 00000007-756E6547-6C65746E-49656E69\n" + row + row)
    assert cpu.table[(7, 0)].ebx == 1


def test_empty_and_missing_files(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(CpuidFormatError, match="empty"):
        read_cpuid_file(empty)
    with pytest.raises(CpuidFormatError, match="cannot read") as err:
        read_cpuid_file(tmp_path / "missing.txt")
    assert "missing.txt" in str(err.value)


@pytest.mark.parametrize("path", aida_dumps(), ids=lambda p: p.name)
def test_every_instlatx64_dump_reads(corpus_dir, path):
    cpus = read_cpuid_file(path)
    assert cpus and all(cpu.table.query(0) is not None for cpu in cpus)
    assert len({cpu.index for cpu in cpus}) == len(cpus)


def test_skylake_xeon_cpu_n_headers(corpus_dir):
    # GenuineIntel0050654_SkylakeXeon_CPUID16.txt has 24 "CPU n:" sections with distinct
    # initial APIC IDs in CPUID.1:EBX[31:24] (INDEX.md's row says 1 CPU: see test_index.py).
    cpus = read_cpuid_file(INSTLATX64 / "GenuineIntel0050654_SkylakeXeon_CPUID16.txt")
    assert [c.index for c in cpus] == list(range(24))
    assert len({c.table[(1, 0)].ebx >> 24 for c in cpus}) == 24


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_any_bytes_parse_or_raise_format_error(data):
    try:
        cpus = parse_cpuid_bytes(data, "fuzz")
    except CpuidFormatError:
        return
    assert cpus


LINE = st.sampled_from(["CPUID 00000000: ", "CPUID 0000000D: ", "CPU 1:\n", "[SL 0F]", "-",
                        "00000328", "0000000", " ", "\n", ":", "------[ Logical CPU #2 ]------\n"])


@settings(max_examples=150, deadline=None)
@given(st.lists(LINE, max_size=40))
def test_fuzz_near_miss_dumps_parse_or_raise_format_error(parts):
    try:
        aida64.parse("".join(parts), "fuzz")
    except CpuidFormatError:
        pass
