"""`vlbr kvm supported` and `vlbr kvm check`, on corpus dumps, the live host and /dev/kvm."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from vlbr import cli
from vlbr.arch.cpuid import CpuidTable, Registers
from vlbr.arch.msrs import IA32_LBR_CTL, IA32_XSS
from vlbr.host import LogicalCpu, to_json
from vlbr.policy import emulated_guest_cpuid

from corpus import CPUID_RAW_DUMP, INSTLATX64

RPL = str(INSTLATX64 / "GenuineIntel00B0671_RaptorLake_01_CPUID.txt")
TOUCHED_LEAVES = {0x7, 0xD, 0x1C}  # the rows the design may change (and 0xD's subleaves)


def run(*args):
    return CliRunner().invoke(cli.group, list(args), catch_exceptions=False)


def rows(doc) -> dict[tuple[int, int], tuple[int, int, int, int]]:
    return {(e["function"], e["index"]): (e["eax"], e["ebx"], e["ecx"], e["edx"])
            for e in doc["entries"]}


def test_supported_json_on_a_raptor_lake_dump(corpus_dir):
    done = run("kvm", "supported", RPL, "--cpu", "0", "--variant", "v3", "--json")
    assert done.exit_code == 0, done.output
    doc = json.loads(done.output)
    got = rows(doc)
    # INDEX.md: RaptorLake_01 P-cores report 0x1C 4000000B-7-7 and 808 bytes; v3 keeps bit 3.
    assert got[(0x1C, 0)] == (0x40000008, 7, 7, 0)
    assert got[(0xD, 0xF)][0] == 808
    assert set(got) >= {(0x7, 0), (0xD, 0), (0xD, 1), (0xD, 0xF), (0x1C, 0)}
    assert {f for f, _ in got} == TOUCHED_LEAVES
    assert doc["supported_xss"] & (1 << 15) and doc["msrs_to_save"][:2] == [IA32_XSS, IA32_LBR_CTL]
    assert len(doc["msrs_to_save"]) == 1 + 5 + 3 * 32


def test_supported_email_v2_and_depth_errors(corpus_dir):
    doc = json.loads(run("kvm", "supported", RPL, "--variant", "email-v2", "--json").output)
    assert rows(doc)[(0x1C, 0)][0] & 0xFF == 0x10
    bad = run("kvm", "supported", RPL, "--variant", "v3", "--depth", "16")
    assert bad.exit_code == 2 and "maximum depth 32" in bad.output and "--depth" in bad.output
    ok = run("kvm", "supported", RPL, "--depth", "24", "--json")  # vlbr emulates depth 24
    assert rows(json.loads(ok.output))[(0xD, 0xF)][0] == 40 + 24 * 24
    amd = run("kvm", "supported", str(CPUID_RAW_DUMP), "--depth", "32")
    assert amd.exit_code == 2 and "no Arch LBR" in amd.output


def test_vmx_and_xss_overrides(corpus_dir):
    doc = json.loads(run("kvm", "supported", RPL, "--no-vmx-load-lbr-ctl", "--json").output)
    assert rows(doc)[(0x1C, 0)] == (0, 0, 0, 0) and not doc["supported_xss"] & (1 << 15)
    doc = json.loads(run("kvm", "supported", RPL, "--host-xss", "0x1800", "--variant",
                         "email-v2", "--json").output)
    assert doc["supported_xss"] == 0x9800  # the email ORs bit 15 in regardless


def test_supported_table_output(corpus_dir):
    done = run("kvm", "supported", RPL, "--variant", "email-v2")
    assert done.exit_code == 0
    assert "40000010" in done.output and "does not support" in done.output


def test_supported_needs_exactly_one_source():
    assert run("kvm", "supported").exit_code == 2
    assert run("kvm", "supported", "x.txt", "--host").exit_code == 2


def test_supported_host_on_this_machine():
    # This machine is an AMD EPYC KVM guest (docs/kvm-on-these-machines.md): no Arch LBR.
    done = run("kvm", "supported", "--host", "--json")
    assert done.exit_code == 0, done.output
    doc = json.loads(done.output)
    assert rows(doc)[(0x1C, 0)] == (0, 0, 0, 0)
    assert not doc["supported_xss"] & (1 << 15) and IA32_LBR_CTL not in doc["msrs_to_save"]


def kvm_supported() -> CpuidTable:
    from vlbr.host.kvm import Kvm

    reason = Kvm.unavailable_reason()
    if reason:
        pytest.skip(f"/dev/kvm: {reason}")
    with Kvm() as kvm:
        return kvm.supported_cpuid()


@pytest.mark.parametrize("variant", ["email-v2", "v3", "mainline", "vlbr"])
def test_supported_kvm_keeps_every_row_kvm_returned(variant):
    kvm = kvm_supported()
    done = run("kvm", "supported", "--kvm", "--variant", variant, "--all", "--json")
    assert done.exit_code == 0, done.output
    got = rows(json.loads(done.output))
    # Rows the design does not touch: exactly KVM_GET_SUPPORTED_CPUID's answer.
    untouched = {k: r.as_tuple() for k, r in kvm.items() if k[0] not in TOUCHED_LEAVES}
    assert {k: v for k, v in got.items() if k[0] not in TOUCHED_LEAVES} == untouched
    # KVM here offers no Arch LBR, so the touched rows are KVM's too (0xD.1 EBX recomputed
    # as KVM does: 0 without XSAVES/XSAVEC).
    assert {k: v for k, v in got.items() if k[0] in TOUCHED_LEAVES} == \
        {k: r.as_tuple() for k, r in kvm.items() if k[0] in TOUCHED_LEAVES}
    assert got[(0x1C, 0)] == (0, 0, 0, 0)


def test_check_accepts_and_rejects(corpus_dir, tmp_path):
    from vlbr.host import read_cpuid_file
    from vlbr.policy import HostDescription, supported_cpuid

    p_core = read_cpuid_file(RPL)[0].table
    good = tmp_path / "good.json"
    good.write_text(to_json([LogicalCpu(0, supported_cpuid(HostDescription(p_core), "v3").table)]))
    done = run("kvm", "check", str(good), "--host", RPL, "--cpu", "0", "--variant", "v3")
    assert done.exit_code == 0 and "accepted" in done.output
    bad = tmp_path / "bad.json"
    email = supported_cpuid(HostDescription(p_core), "email-v2").table
    bad.write_text(to_json([LogicalCpu(0, email)]))
    done = run("kvm", "check", str(bad), "--host", RPL, "--cpu", "0", "--variant", "v3")
    assert done.exit_code == 1
    assert "-EINVAL: leaf 0x1C depth bitmap 0x10" in done.output
    assert run("kvm", "check", str(bad), "--host", RPL, "--variant", "email-v2").exit_code == 0


def test_check_emulated_guest_against_this_machines_kvm(tmp_path):
    kvm = kvm_supported()
    guest = tmp_path / "guest.json"
    guest.write_text(to_json([LogicalCpu(0, emulated_guest_cpuid(kvm))]))
    done = run("kvm", "check", str(guest), "--kvm")
    # KVM here has no Arch LBR: as a KVM_SET_CPUID2 policy, v3/vlbr refuse the emulated table.
    assert done.exit_code == 1 and "does not offer Arch LBR" in done.output
    plain = tmp_path / "plain.json"
    plain.write_text(to_json([LogicalCpu(0, kvm)]))
    assert run("kvm", "check", str(plain), "--kvm").exit_code == 0


def test_bad_inputs_are_clear_errors(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(Exception) as err:
        run("kvm", "supported", str(missing))
    assert "nope.json" in str(err.value) and "cannot read" in str(err.value)
    bad = run("kvm", "supported", "--host", "--cpu", "999")
    assert bad.exit_code == 2 and "no logical CPU 999" in bad.output
    assert run("kvm", "supported", "--host", "--host-xss", "zz").exit_code == 2
