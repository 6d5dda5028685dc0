"""vlbr's JSON form: to_json/from_json round trips and strict validation."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings, strategies as st

from vlbr.arch.cpuid import CpuidTable, Registers
from vlbr.errors import CpuidFormatError
from vlbr.host import LogicalCpu, from_json, read_cpuid_file, to_json

from corpus import all_dumps

REGS = st.builds(Registers, *[st.integers(0, 0xFFFF_FFFF)] * 4)
KEYS = st.tuples(st.integers(0, 0xFFFF_FFFF), st.integers(0, 0xFFFF_FFFF))
CPUS = st.lists(st.dictionaries(KEYS, REGS, min_size=1, max_size=12).map(CpuidTable),
                min_size=1, max_size=3).map(lambda ts: [LogicalCpu(i * 2, t) for i, t in enumerate(ts)])


@settings(max_examples=100, deadline=None)
@given(CPUS)
def test_round_trip(cpus):
    assert from_json(to_json(cpus)) == cpus


def test_shape_is_kvm_cpuid_entry2_like():
    cpus = [LogicalCpu(3, CpuidTable({(0xD, 0xF): Registers(0x328, 0, 1, 0)}))]
    doc = json.loads(to_json(cpus))
    assert doc["cpus"] == [{"index": 3, "entries": [
        {"function": 0xD, "index": 0xF, "eax": 0x328, "ebx": 0, "ecx": 1, "edx": 0}]}]


@pytest.mark.parametrize("path", all_dumps()[::9], ids=lambda p: p.name)
def test_corpus_round_trip_through_files(corpus_dir, tmp_path, path):
    cpus = read_cpuid_file(path)
    out = tmp_path / "t.json"
    out.write_text(to_json(cpus))
    assert read_cpuid_file(out) == cpus


GOOD = {"function": 0, "index": 0, "eax": 1, "ebx": 2, "ecx": 3, "edx": 4}


@pytest.mark.parametrize("doc, words", [
    ({"cpus": [{"index": 0, "entries": [{**GOOD, "eax": -1}]}]}, "eax=-1"),
    ({"cpus": [{"index": 0, "entries": [{**GOOD, "eax": True}]}]}, "eax=True"),
    ({"cpus": [{"index": 0, "entries": [{**GOOD, "edx": 1 << 32}]}]}, "0..0xffffffff"),
    ({"cpus": [{"index": 0, "entries": [{k: v for k, v in GOOD.items() if k != "ecx"}]}]}, "ecx=None"),
    ({"cpus": [{"index": 0, "entries": [GOOD]}, {"index": 0, "entries": [GOOD]}]}, "appears twice"),
    ({"cpus": [{"index": 0, "entries": [GOOD, {**GOOD, "eax": 9}]}]}, "different values"),
    ({"cpus": []}, "no CPUID data"),
    ({"cpus": {}}, "list 'cpus'"),
    ({"format": "other", "cpus": []}, "format"),
])
def test_bad_input(doc, words):
    with pytest.raises(CpuidFormatError) as err:
        from_json(json.dumps(doc), "v.json")
    assert words in err.value.problem and err.value.source == "v.json"


def test_malformed_json_names_line():
    with pytest.raises(CpuidFormatError) as err:
        from_json('{\n"cpus": [\n', "v.json")
    assert err.value.line == 3
