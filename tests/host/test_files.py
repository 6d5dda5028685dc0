"""read_cpuid_file: format detection over the whole corpus, and fuzzing every reader through it."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings, strategies as st

from vlbr.errors import CpuidFormatError
from vlbr.host import detect_format, parse_cpuid_bytes, read_cpuid_file, to_json, write_cpuid_raw

from corpus import CPUID_RAW_DUMP, FIRECRACKER, LIBVIRT, all_dumps, aida_dumps


def expected_kind(path) -> str:
    if path.parent == LIBVIRT:
        return "libvirt"
    if path.parent == FIRECRACKER:
        return "json"
    return "cpuid-raw" if path == CPUID_RAW_DUMP else "aida64"


@pytest.mark.parametrize("path", all_dumps(), ids=lambda p: p.name)
def test_detection_by_content(corpus_dir, path):
    assert detect_format(path.read_bytes().decode("utf-8", "replace")) == expected_kind(path)


def test_converted_forms_detect_and_read_back(corpus_dir, tmp_path):
    cpus = read_cpuid_file(aida_dumps()[0])
    for name, text in (("a.raw", write_cpuid_raw(cpus)), ("a.json", to_json(cpus))):
        (tmp_path / name).write_text(text)
        assert read_cpuid_file(tmp_path / name) == cpus


def test_unknown_json_kind_is_named():
    with pytest.raises(CpuidFormatError, match="neither vlbr"):
        parse_cpuid_bytes(b'{"a": 1}', "x.json")
    with pytest.raises(CpuidFormatError, match="malformed JSON"):
        parse_cpuid_bytes(b'{"a": ', "x.json")


def test_binary_garbage_is_a_format_error():
    with pytest.raises(CpuidFormatError):
        parse_cpuid_bytes(bytes(range(256)) * 4, "bin")


SEEDS = [b"<cpudata>", b"{\"cpus\": [", b"{\"guest_cpu_config\": {\"cpuid_modifiers\": [",
         b"CPU 0:\n   0x00000000 0x00: eax=", b"CPUID 00000000: ", b"", b"\x00\xff"]


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(SEEDS), st.binary(max_size=300))
def test_fuzz_every_reader_parses_or_raises_format_error(seed, tail):
    # The seed steers detection to each reader in turn; anything else is a bug.
    try:
        cpus = parse_cpuid_bytes(seed + tail, "fuzz")
    except CpuidFormatError:
        return
    assert cpus


@settings(max_examples=100, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(
                        st.sampled_from(["cpus", "index", "entries", "function", "eax", "ebx",
                                         "ecx", "edx", "guest_cpu_config", "cpuid_modifiers",
                                         "leaf", "subleaf", "modifiers", "register", "bitmap"]),
                        c, max_size=5), max_leaves=20))
def test_fuzz_json_shapes(doc):
    try:
        parse_cpuid_bytes(json.dumps(doc).encode(), "fuzz.json")
    except CpuidFormatError:
        pass
