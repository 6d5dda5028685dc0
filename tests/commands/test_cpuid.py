"""`vlbr cpuid show` and `convert`: INDEX.md rows, the live host, KVM, and usage errors."""

from __future__ import annotations

import json
import os
from collections import Counter

import pytest
from click.testing import CliRunner

from vlbr.commands.cpuid import command
from vlbr.host import read_cpuid_file

from corpus import CPUID_RAW_DUMP, INSTLATX64, LIBVIRT, index_rows

ROWS = index_rows()
BY_FILE: dict[str, list] = {}
for _row in ROWS:
    BY_FILE.setdefault(_row.file, []).append(_row)

# INDEX.md rows we checked by hand and believe wrong; the test asserts our reading instead.
INDEX_ERRATA = {
    # The file holds 24 "CPU n:" sections (n = 0..23) with distinct initial APIC IDs in
    # CPUID.1:EBX[31:24]; INDEX.md counts 1.
    "GenuineIntel0050654_SkylakeXeon_CPUID16.txt": 24,
}


def show_json(*args: str) -> dict:
    result = CliRunner().invoke(command, ["show", *args, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def row_key(cpu: dict):
    """The INDEX.md columns a logical CPU falls under."""
    leaf = tuple(cpu["leaf_0x1c"][:3]) if cpu["arch_lbr"] else None
    return cpu["arch_lbr"], leaf, cpu["xss_lbr"], cpu["xsave_lbr_size"]


@pytest.mark.parametrize("row", ROWS, ids=lambda r: f"{r.file}:{r.leaf_0x1c and hex(r.leaf_0x1c[0])}")
def test_index_row(corpus_dir, row):
    doc = show_json(str(INSTLATX64 / row.file))
    counts = Counter(row_key(cpu) for cpu in doc["cpus"])
    key = (row.arch_lbr, row.leaf_0x1c, row.xss_lbr, row.comp15_size)
    expected = INDEX_ERRATA.get(row.file, row.cpus)
    assert counts[key] == expected
    # The file's rows together cover every logical CPU read.
    assert len(doc["cpus"]) == sum(INDEX_ERRATA.get(r.file, r.cpus) for r in BY_FILE[row.file])
    if row.cpu:  # INDEX.md's CPU column: the brand string, spaces collapsed, cut at 40
        assert all(" ".join(c["brand"].split())[:40].strip() == row.cpu for c in doc["cpus"])
    if row.arch_lbr:
        cpu = next(c for c in doc["cpus"] if row_key(c) == key)
        # INDEX.md: bitmap 0x0B means depths 8, 16, 32; 808 = 40 + 24 * 32 (reference section 1).
        assert cpu["lbr_depths"] == [8, 16, 32] and cpu["lbr_max_depth"] == 32
        assert cpu["lbr_flags"]["lip"] == bool(row.leaf_0x1c[0] >> 31)
        assert cpu["event_logging"] == (row.leaf_0x1c[2] >> 16) & 0xF
        if row.comp15_size is not None:
            assert cpu["xsave_lbr_depth"] == 32 and cpu["xsave_lbr_supervisor"] is True


def test_hybrid_json_lists_core_types(corpus_dir):
    # INDEX.md: LunarLake_04 has 4 P-cores (0x4000000B) and 4 E-cores (0xC000000B), ECX 0x000F0007.
    doc = show_json(str(INSTLATX64 / "GenuineIntel00B06D1_LunarLake_04_CPUID.txt"))
    assert sorted(len(ct["cpus"]) for ct in doc["core_types"]) == [4, 4]
    assert {c["core_type"] for c in doc["cpus"]} == {"Core (P-core)", "Atom (E-core)"}
    assert all(c["event_logging"] == 0xF for c in doc["cpus"])


def test_cpu_option_selects_one(corpus_dir):
    doc = show_json(str(CPUID_RAW_DUMP), "--cpu", "1")
    assert [c["index"] for c in doc["cpus"]] == [1]
    result = CliRunner().invoke(command, ["show", str(CPUID_RAW_DUMP), "--cpu", "7"])
    assert result.exit_code == 2 and "no logical CPU 7" in result.output and "0-1" in result.output


def test_exactly_one_source():
    for args in ([], ["x.txt", "--host"], ["--host", "--kvm"]):
        result = CliRunner().invoke(command, ["show", *args])
        assert result.exit_code == 2 and "exactly one of FILE, --host or --kvm" in result.output


def test_rich_tables_one_per_core_type(corpus_dir):
    # INDEX.md: AlderLake_01_LC_BC is hybrid, 16 + 8 logical CPUs.
    result = CliRunner().invoke(command, ["show", str(INSTLATX64 / "GenuineIntel0090672_AlderLake_01_LC_BC_CPUID.txt")],
                                catch_exceptions=False)
    assert result.exit_code == 0
    assert "logical CPUs 0-15 (16)" in result.output and "logical CPUs 16-23 (8)" in result.output
    assert result.output.count("4000000B-00000007-00000007-00000000") == 1
    assert result.output.count("C000000B-00000007-00000007-00000000") == 1
    assert "808 bytes (depth 32)" in result.output


@pytest.mark.skipif(not os.access("/dev/cpu/0/cpuid", os.R_OK), reason="/dev/cpu/0/cpuid not readable")
def test_show_host_matches_cpuid_device():
    doc = show_json("--host")
    assert [c["index"] for c in doc["cpus"]] == sorted(int(n) for n in os.listdir("/dev/cpu") if n.isdigit())
    # This machine (docs/kvm-on-these-machines.md) is an AMD EPYC guest: no Arch LBR.
    with open("/dev/cpu/0/cpuid", "rb") as dev:
        dev.seek(7)
        edx7 = int.from_bytes(dev.read(16)[12:16], "little")
    assert doc["cpus"][0]["arch_lbr"] == bool(edx7 >> 19 & 1)
    result = CliRunner().invoke(command, ["show", "--host"], catch_exceptions=False)
    assert result.exit_code == 0 and "/dev/cpu (live host)" in result.output


@pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="/dev/kvm not accessible")
def test_show_kvm_reports_supported_cpuid():
    from vlbr.host.kvm import Kvm

    doc = show_json("--kvm")
    (cpu,) = doc["cpus"]
    with Kvm() as kvm:
        table = kvm.supported_cpuid()
    assert cpu["index"] == 0
    assert cpu["leaf_0x1c"] == list(table.regs(0x1C).as_tuple())
    assert cpu["xss_supported"] == table.regs(0xD, 1).ecx | table.regs(0xD, 1).edx << 32


def test_bad_file_is_a_one_line_vlbr_error(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("CPUID 00000000: 0000001C-756E6547\n")
    result = CliRunner().invoke(command, ["show", str(bad)])
    assert result.exit_code != 0 and "bad.txt:1" in str(result.exception)


@pytest.mark.parametrize("to", ["raw", "json"])
def test_convert_round_trips(corpus_dir, tmp_path, to):
    src = LIBVIRT / "x86_64-cpuid-Xeon-6788P.xml"
    out = tmp_path / f"out.{to}"
    result = CliRunner().invoke(command, ["convert", str(src), "--to", to, "-o", str(out)],
                                catch_exceptions=False)
    assert result.exit_code == 0
    assert read_cpuid_file(out) == read_cpuid_file(src)


@pytest.mark.skipif(not os.access("/dev/cpu/0/cpuid", os.R_OK), reason="/dev/cpu/0/cpuid not readable")
def test_vlbr_cpuid_show_host_end_to_end():
    # What `make run` executes: the real entry point in a fresh process.
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "vlbr.cli", "cpuid", "show", "--host", "--json"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["cpus"] and all(isinstance(c["lbr_depths"], list) for c in doc["cpus"])
    bad = subprocess.run([sys.executable, "-m", "vlbr.cli", "cpuid", "show", "/nonexistent/dump.txt"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "/nonexistent/dump.txt" in bad.stderr and "cannot read" in bad.stderr
