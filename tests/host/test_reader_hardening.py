"""Readers under hostile inputs (issue 8): linear work, a size limit, lines that look like
CPUID data but do not parse, and values whose derived XSAVE sizes overflow 32 bits."""

from __future__ import annotations

import os
import threading

import pytest

from vlbr.errors import CpuidFormatError
from vlbr.host import builder, parse_cpuid_bytes, read_cpuid_file
from vlbr.host.files import MAX_DUMP_BYTES

from corpus import CPUID_RAW_DUMP, INSTLATX64

ALDER_LAKE = INSTLATX64 / "GenuineIntel0090672_AlderLake_01_LC_BC_CPUID.txt"
LEAF0 = "CPUID 00000000: 00000004-756E6547-6C65746E-49656E69\n"


class CountingDict(dict):
    """A dict that counts the keys every iteration over it visits; its values count too."""

    visited = 0

    def __setitem__(self, key, value):
        super().__setitem__(key, CountingDict(value) if type(value) is dict else value)

    def __iter__(self):
        for key in super().__iter__():
            CountingDict.visited += 1
            yield key


@pytest.fixture
def counted(monkeypatch):
    """Every CpusBuilder keeps its CPUs (and their rows) in CountingDicts."""
    original = builder.CpusBuilder.__init__

    def init(self, source):
        original(self, source)
        self._cpus = CountingDict()

    monkeypatch.setattr(builder.CpusBuilder, "__init__", init)
    CountingDict.visited = 0
    return CountingDict


@pytest.mark.parametrize("text", [
    LEAF0 * 4000,  # headerless AIDA64: each leaf-0 line starts the next logical CPU
    LEAF0 + "CPUID 00000004: 00000121-01C0003F-0000001F-00000000\n" * 4000,  # untagged subleaves
    "CPU:\n   0x00000000 0x00: eax=0x00000001 ebx=0x00000000 ecx=0x00000000 edx=0x00000000\n"
    * 4000,  # cpuid -r sections without CPU numbers
], ids=["aida64-cpus", "aida64-subleaves", "cpuid-raw-cpus"])
def test_reading_never_walks_all_cpus_or_rows_per_line(counted, text):
    # Before: next_index() took max() over every CPU and untagged subleaves scanned every row
    # per line (quadratic: 32k leaf-0 lines took 12 s). Now no line walks what was read.
    cpus = parse_cpuid_bytes(text.encode(), "big.txt")
    assert len(cpus) in (1, 4000)
    if len(cpus) == 1:
        assert cpus[0].table.subleaves(4) == list(range(4000))
    assert counted.visited <= 4000


def test_size_limit_applies_to_bytes_and_endless_files():
    with pytest.raises(CpuidFormatError, match=r"larger than 64 MiB"):
        parse_cpuid_bytes(b"\n" * (MAX_DUMP_BYTES + 1), "huge.txt")
    with pytest.raises(CpuidFormatError, match=r"/dev/zero: larger than 64 MiB"):
        read_cpuid_file("/dev/zero")


def test_a_fifo_is_read_up_to_its_end(tmp_path, corpus_dir):
    fifo = tmp_path / "dump.fifo"
    os.mkfifo(fifo)
    data = CPUID_RAW_DUMP.read_bytes()
    writer = threading.Thread(target=lambda: fifo.write_bytes(data))
    writer.start()
    try:
        assert read_cpuid_file(fifo) == read_cpuid_file(CPUID_RAW_DUMP)
    finally:
        writer.join()


@pytest.mark.parametrize("line, words", [
    ("CPUID 1C: 4000000B-00000007-00000007-00000000", "CPUID 1C: the leaf must be 8 hex digits"),
    ("CPUID 0000001C: 4000000B-00000007-00000007-00000000-00000000", "expected four"),
    ("CPUID 0000001C: 4000000B 00000007 00000007 00000000 00000000", "expected four"),
    ("CPUID 000000001C: 4000000B-00000007-00000007-00000000", "8 hex digits"),
])
def test_aida64_line_that_looks_like_data_is_an_error(line, words):
    # INDEX.md's AIDA64 form is 'CPUID LLLLLLLL: EAX-EBX-ECX-EDX [tags]'; anything else that
    # starts like it was skipped silently before.
    text = LEAF0 + line + "\n"
    with pytest.raises(CpuidFormatError, match=words) as err:
        parse_cpuid_bytes(text.encode(), "x.txt")
    assert err.value.line == 2


def test_aida64_text_lines_starting_with_cpuid_stay_text():
    text = "CPUID Manufacturer : GenuineIntel\nCPUID CPU Name : Intel(R) Core\n" + LEAF0
    assert len(parse_cpuid_bytes(text.encode(), "x.txt")) == 1


def test_cpuid_raw_fifth_register_is_an_error():
    text = "CPU 0:\n   0x00000000 0x00: eax=0x00000001 ebx=0x00000000 ecx=0x00000000 " \
           "edx=0x00000000 esi=0x00000000\n"
    with pytest.raises(CpuidFormatError) as err:
        parse_cpuid_bytes(text.encode(), "r.txt")
    assert err.value.line == 2


@pytest.mark.parametrize("subleaf", ["02", "0F"])
def test_xsave_size_past_32_bits_names_file_line_and_leaf(corpus_dir, subleaf):
    # CPUID.(0xD,1):EBX, the compacted size KVM derives (policy/supported.py), is 32 bits;
    # component 2 or 15 of 0xFFFFFFFF bytes made every policy command die with a ValueError.
    lines = ALDER_LAKE.read_text().splitlines()
    number = next(n for n, text in enumerate(lines, 1)
                  if text.startswith("CPUID 0000000D:") and f"[SL {subleaf}]" in text)
    lines[number - 1] = "CPUID 0000000D: FFFFFFFF" + lines[number - 1][len("CPUID 0000000D: 00000000"):]
    with pytest.raises(CpuidFormatError, match=rf"CPUID \(0xd, 0x{int(subleaf, 16):x}\)") as err:
        parse_cpuid_bytes("\n".join(lines).encode(), "ovf.txt")
    assert err.value.line == number and "32-bit" in str(err.value)


def test_libvirt_and_vlbr_json_extra_register_is_an_error():
    xml = ("<cpudata arch='x86'>\n<cpuid eax_in='0x00000000' ecx_in='0x00' eax='0x00000001' "
           "ebx='0x0' ecx='0x0' edx='0x0' esi='0x0'/>\n</cpudata>\n")
    with pytest.raises(CpuidFormatError, match="esi") as err:
        parse_cpuid_bytes(xml.encode(), "l.xml")
    assert err.value.line == 2
    doc = ('{"cpus": [{"index": 0, "entries": [{"function": 0, "index": 0, "eax": 1, "ebx": 0,'
           ' "ecx": 0, "edx": 0, "esi": 0}]}]}')
    with pytest.raises(CpuidFormatError, match=r"cpus\[0\]\.entries\[0\] has key 'esi'"):
        parse_cpuid_bytes(doc.encode(), "v.json")
