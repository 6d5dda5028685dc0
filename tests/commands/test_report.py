"""`vlbr report`: many hosts at once, unreadable files listed (exit 1), JSON and SVG output."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from vlbr import cli

from corpus import INSTLATX64, has_corpus

pytestmark = pytest.mark.skipif(not has_corpus(), reason="no CPUID corpus on this machine")
ALDER_LAKE = "GenuineIntel0090672_AlderLake_01_LC_BC_CPUID.txt"  # INDEX.md: P- and E-cores
SKYLAKE = "GenuineIntel0050654_SkylakeXeon_CPUID16.txt"  # INDEX.md: no Arch LBR


def invoke(*args):
    return CliRunner().invoke(cli.group, ["report", *args], catch_exceptions=False)


@pytest.fixture
def dumps(tmp_path):
    for name in (ALDER_LAKE, SKYLAKE):
        shutil.copy(INSTLATX64 / name, tmp_path / name)
    return tmp_path


def test_json_has_a_line_per_core_type(dumps):
    result = invoke(str(dumps), "--json")
    assert result.exit_code == 0, result.output
    docs = [json.loads(line) for line in result.output.splitlines()]
    alder = [d for d in docs if d["file"].endswith(ALDER_LAKE)]
    assert {d["core_type"] for d in alder} == {"Core (P-core)", "Atom (E-core)"}
    for doc in alder:
        by = {v["variant"]: v for v in doc["variants"]}
        assert by["email-v2"]["depth"] == 40 and not by["email-v2"]["depth_supported"]
        assert by["v3"]["depth"] == 32 and by["v3"]["comp15_size"] == 808  # INDEX.md: 808
    assert any(d["file"].endswith(SKYLAKE) for d in docs)


def test_unreadable_file_is_listed_and_fails_the_run(dumps):
    (dumps / "garbage.txt").write_text("CPUID 00000000: 0000001f-zzzz\n")
    result = invoke(str(dumps), "--json")
    assert result.exit_code == 1
    errors = [json.loads(line) for line in result.output.splitlines() if '"error"' in line]
    assert len(errors) == 1 and errors[0]["file"].endswith("garbage.txt")


def test_table_summarises_each_variant_and_saves_a_picture(dumps, tmp_path):
    svg = tmp_path / "report.svg"
    result = invoke(str(dumps), "--variant", "email-v2", "--variant", "v3", "--svg", str(svg))
    assert result.exit_code == 0, result.output
    assert "email-v2: a problem on 2 of 2" in result.output
    assert "v3: a problem on 0 of 2" in result.output
    text = svg.read_text()
    assert text.startswith("<svg") and "email-v2" in text
