"""`vlbr host` and the KVM probes, against KVM's own answers on /dev/kvm."""

from __future__ import annotations

import json

from click.testing import CliRunner

from vlbr.cli import group
from vlbr.host import kvm as k
from vlbr.host.kvm import Kvm


def test_vlbr_host_json_matches_kvm():
    result = CliRunner().invoke(group, ["host", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    with Kvm() as kvm:
        assert report["api_version"] == kvm.api_version() == 12
        assert report["supported_cpuid_entries"] == len(kvm.supported_cpuid_entries())
        assert report["caps"]["KVM_CAP_X86_USER_SPACE_MSR"] == kvm.check_extension(
            k.KVM_CAP_X86_USER_SPACE_MSR)
    probes = {p["name"]: p for p in report["probes"]}
    # kvm-on-these-machines.md: the MSR filter exit and single-step work here.
    assert probes["user-space MSR + filter"]["ok"]
    assert probes["guest debug single-step"]["ok"] and probes["guest debug single-step"]["value"] > 0
    for probe in report["probes"]:
        assert probe["detail"]
        if not probe["ok"]:  # a missing feature names its ioctl, exit or capability
            assert "KVM_" in probe["detail"]


def test_vlbr_host_table_output():
    result = CliRunner().invoke(group, ["host"])
    assert result.exit_code == 0, result.output
    assert "KVM API version 12" in result.output
    assert "KVM_CAP_X86_MSR_FILTER" in result.output


def test_vlbr_host_without_kvm_names_the_errno(tmp_path):
    result = CliRunner().invoke(group, ["host", "--json", "--device", str(tmp_path / "none")])
    assert result.exit_code == 1
    report = json.loads(result.output)
    assert report["available"] is False and "ENOENT" in report["reason"]


def test_unavailable_features_name_their_capability():
    from vlbr.backends.kvm import KvmBackend
    features = KvmBackend().unavailable_features()
    with Kvm() as kvm:
        has_pmu = kvm.check_extension(k.KVM_CAP_PMU_CAPABILITY) != 0
    assert ("pmu-counters" in features) == (not has_pmu)
    assert all("KVM_" in reason for reason in features.values())
