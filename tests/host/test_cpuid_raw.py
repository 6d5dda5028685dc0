"""Debian `cpuid -r` text: reading the corpus dump, writing, round trips and bad input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from vlbr.arch.cpuid import CpuidTable, Registers
from vlbr.errors import CpuidFormatError
from vlbr.host import LogicalCpu, cpuid_raw, read_cpuid_file, write_cpuid_raw

from corpus import CPUID_RAW_DUMP, all_dumps


def test_corpus_dump_reads(corpus_dir):
    # cpuid-tool-raw-amd-epyc-kvm-guest.txt: "CPU 0:" and "CPU 1:", leaf 0 EAX 0x1c, AuthenticAMD.
    cpus = read_cpuid_file(CPUID_RAW_DUMP)
    assert [c.index for c in cpus] == [0, 1]
    t = cpus[0].table
    assert t.vendor == "AuthenticAMD" and t.max_basic_leaf == 0x1C
    assert t[(0xD, 1)] == Registers(0xF, 0x9A8, 0x1800, 0)  # line "0x0000000d 0x01"
    assert t.subleaves(0xD) == [0, 1, 2, 5, 6, 7, 0xB, 0xC]


def test_one_cpu_header_without_number():
    # `cpuid -r -1` prints "CPU:" with no number.
    text = "CPU:\n   0x00000000 0x00: eax=0x00000001 ebx=0x68747541 ecx=0x444d4163 edx=0x69746e65\n"
    (cpu,) = cpuid_raw.parse(text, "t")
    assert cpu.index == 0 and cpu.table.vendor == "AuthenticAMD"


@pytest.mark.parametrize("path", all_dumps(), ids=lambda p: p.name)
def test_write_then_read_is_identity_for_corpus(corpus_dir, path):
    cpus = read_cpuid_file(path)
    assert cpuid_raw.parse(write_cpuid_raw(cpus), "w") == cpus


def test_written_form_matches_cpuid_tool_layout(corpus_dir):
    # Byte-for-byte: the tool's own -r output, for the rows it printed.
    original = CPUID_RAW_DUMP.read_text().splitlines()
    written = write_cpuid_raw(read_cpuid_file(CPUID_RAW_DUMP)).splitlines()
    assert written == original


@pytest.mark.parametrize("text, line, words", [
    ("CPU 0:\n   0x00000000 0x00: eax=0x0000001c ebx=0x6874 ecx=0x444d4163 edx=0x69746e65\n", 2, "8 hex"),
    ("CPU 0:\n   0x00000000 0x00: eax=0x0000001c\n", 2, "not a `cpuid -r` line"),
    ("CPU 0:\n   0x00000000 0x00: eax=0x0000001c ebx=0x00000000 ecx=0x00000000 edx=0x00000000\n"
     "hello\n", 3, "not a `cpuid -r` line"),
    ("CPU 0:\n   0x00000007 0x00: eax=0x00000000 ebx=0x00000001 ecx=0x00000000 edx=0x00000000\n"
     "   0x00000007 0x00: eax=0x00000000 ebx=0x00000002 ecx=0x00000000 edx=0x00000000\n", 3,
     "different values"),
    ("CPU 0:\n   0x00000000 0x00: eax=0x0000001c ebx=0x00000000 ecx=0x00000000 edx=0x00000000\n"
     "CPU 0:\n", 3, "appears twice"),
    ("CPU 0:\nCPU 1:\n", None, "no CPUID data"),
])
def test_bad_input(text, line, words):
    with pytest.raises(CpuidFormatError) as err:
        cpuid_raw.parse(text, "raw.txt")
    assert err.value.line == line and words in err.value.problem


REGS = st.builds(Registers, *[st.integers(0, 0xFFFF_FFFF)] * 4)
KEYS = st.tuples(st.integers(0, 0xFFFF_FFFF), st.integers(0, 0xFF))
TABLES = st.dictionaries(KEYS, REGS, min_size=1, max_size=20).map(CpuidTable)
CPUS = st.lists(TABLES, min_size=1, max_size=3).map(
    lambda ts: [LogicalCpu(i, t) for i, t in enumerate(ts)])


@settings(max_examples=100, deadline=None)
@given(CPUS)
def test_property_read_write_round_trip(cpus):
    assert cpuid_raw.parse(write_cpuid_raw(cpus), "p") == cpus


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=400))
def test_fuzz_bytes_parse_or_raise(data):
    try:
        cpuid_raw.parse(data.decode("utf-8", "replace"), "fuzz")
    except CpuidFormatError:
        pass


RAW_PART = st.sampled_from(["CPU 0:\n", "CPU:\n", "   0x0000000d 0x0f: ", "eax=0x00000328 ",
                            "ebx=0x00000000 ", "ecx=0x00000001 ", "edx=0x00000000", "edx=0x0000",
                            "\n", " ", "0x"])


@settings(max_examples=150, deadline=None)
@given(st.lists(RAW_PART, max_size=30))
def test_fuzz_near_miss_parse_or_raise(parts):
    try:
        cpuid_raw.parse("".join(parts), "fuzz")
    except CpuidFormatError:
        pass
