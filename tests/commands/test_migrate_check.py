"""`vlbr migrate-check A B`: exit 0 when a guest can move, 1 with each difference otherwise."""

from __future__ import annotations

from click.testing import CliRunner

from vlbr import cli
from vlbr.host import LogicalCpu, read_cpuid_file, to_json
from vlbr.policy import emulated_guest_cpuid

from corpus import CPUID_RAW_DUMP, INSTLATX64

SPR = str(INSTLATX64 / "GenuineIntel00806F8_SapphireRapids_05_CPUID.txt")
RPL = str(INSTLATX64 / "GenuineIntel00B0671_RaptorLake_01_CPUID.txt")


def run(*args):
    return CliRunner().invoke(cli.group, ["migrate-check", *map(str, args)], catch_exceptions=False)


def guest_file(tmp_path, name, depth):
    base = read_cpuid_file(CPUID_RAW_DUMP)[0].table
    path = tmp_path / name
    path.write_text(to_json([LogicalCpu(0, emulated_guest_cpuid(base, depth))]))
    return path


def test_same_guest_configuration(corpus_dir, tmp_path):
    a, b = guest_file(tmp_path, "a.json", 32), guest_file(tmp_path, "b.json", 32)
    done = run(a, b)
    assert done.exit_code == 0 and "compatible" in done.output


def test_depth_mismatch_names_the_consequence(corpus_dir, tmp_path):
    a, b = guest_file(tmp_path, "a.json", 32), guest_file(tmp_path, "b.json", 16)
    done = run(a, b)
    assert done.exit_code == 1
    assert "LBR depth: source 32, destination 16" in done.output and "XRSTORS" in done.output
    assert "XSAVE component 15 size" in done.output


def test_hosts(corpus_dir):
    done = run("--hosts", "--variant", "v3", SPR, CPUID_RAW_DUMP)
    assert done.exit_code == 1 and "ARCH_LBR: source on, destination off" in done.output
    assert run("--hosts", "--variant", "v3", CPUID_RAW_DUMP, SPR).exit_code == 0
    # vlbr at one depth on both hosts of Arch LBR: nothing about the LBRs differs.
    emr = str(INSTLATX64 / "GenuineIntel00C06F2_EmeraldRapids_02_CPUID.txt")
    done = run("--hosts", "--depth", "16", SPR, emr)
    assert "LBR" not in done.output
    assert run("--hosts", "--variant", "v3", "--depth", "16", SPR, emr).exit_code == 2


def test_hybrid_guest_file_needs_a_cpu(corpus_dir):
    done = run(RPL, RPL)
    assert done.exit_code == 2 and "--cpu" in done.output
    assert run("--cpu", "0", RPL, RPL).exit_code == 0
