"""The `v12` policy variant: the last posted KVM Arch LBR series (v12, May 2022, message ids
20220517154100.29983-(N+1)-weijiang.yang@intel.com; v2 restart Nov 2022,
20221125040604.5051-N-weijiang.yang@intel.com), ../shared/docs/arch-lbr-reference.md
section 6, beside v3 and vlbr's own choice."""

from __future__ import annotations

import json

import pytest

from vlbr.arch.cpuid import Registers
from vlbr.arch.msrs import IA32_LBR_CTL, IA32_LBR_DEPTH, IA32_XSS
from vlbr.policy import VARIANT_NAMES, HostDescription, check_guest_cpuid, supported_cpuid
from vlbr_script import vlbr

from policy_corpus import instlat, types_of

RPL = "GenuineIntel00B0671_RaptorLake_01_CPUID.txt"  # P-core 0x1C 4000000B-7-7, XSS bit 15


@pytest.fixture(scope="module")
def host(corpus_dir) -> HostDescription:
    return HostDescription(types_of(instlat(RPL))[0].table)


def test_v12_is_a_variant_beside_v3():
    assert VARIANT_NAMES.index("v12") == VARIANT_NAMES.index("v3") + 1


def test_leaf_1c_and_xss_as_v3(host):
    # Section 6: EAX[7:0] = 1 << (fls(mask) - 1); supported_xss = host_xss & XFEATURE_MASK_LBR.
    v12, v3 = supported_cpuid(host, "v12"), supported_cpuid(host, "v3")
    assert v12.table.regs(0x1C) == v3.table.regs(0x1C) and v12.supported_xss == v3.supported_xss
    assert v12.depth == v3.depth == 32


def test_msrs_to_save_leave_the_records_out(host):
    # v12 16/16 (20220517154100.29983-17-weijiang.yang@intel.com): IA32_XSS, LBR_CTL, LBR_DEPTH.
    assert supported_cpuid(host, "v12").msrs_to_save == (IA32_XSS, IA32_LBR_CTL, IA32_LBR_DEPTH)
    assert len(supported_cpuid(host, "v3").msrs_to_save) > 3 * 32


def test_a_present_all_zero_leaf_1c_is_rejected(host):
    # Section 6: "A present all-zero leaf 0x1C is rejected too (the check is skipped only when
    # the host mask is 0)"; v3 accepted an empty leaf with ARCH_LBR clear.
    offered = supported_cpuid(host, "v12").table
    r7, d1 = offered.regs(7), offered.regs(0xD, 1)
    guest = offered.replace({(7, 0): Registers(r7.eax, r7.ebx, r7.ecx, r7.edx & ~(1 << 19)),
                             (0x1C, 0): Registers(),
                             (0xD, 1): Registers(d1.eax, d1.ebx, d1.ecx & ~(1 << 15), d1.edx)})
    assert check_guest_cpuid(host, offered, "v12") == []
    assert check_guest_cpuid(host, guest, "v3") == []
    assert check_guest_cpuid(host, guest, "v12") == [
        "leaf 0x1C is present but all zero while the host enumerates a depth"]
    no_depth = HostDescription(host.table.replace({(0x1C, 0): Registers()}))
    assert check_guest_cpuid(no_depth, guest, "v12") == []  # skipped when the host mask is 0


def test_every_difference_from_vlbr_is_named(host):
    notes = supported_cpuid(host, "v12").notes
    for topic in ("record MSRs", "guest LBR event", "maximum depth", "all-zero leaf 0x1C",
                  "host-initiated"):
        assert any(topic in n for n in notes), topic


def test_kvm_supported_and_report_show_v12(corpus_dir):
    dump = corpus_dir / "instlatx64" / RPL
    done = vlbr("kvm", "supported", dump, "--variant", "v12", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["variant"] == "v12"
    report = vlbr("report", dump, "--json")
    assert report.returncode == 0, report.stderr
    assert "v12" in report.stdout
