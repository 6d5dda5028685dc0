"""The mainline variant against real KVM answers: Firecracker's guest views (corpus
firecracker-guest-views/, mainline KVM on Sapphire Rapids, Granite Rapids, Ice Lake and Genoa
hosts) paired with a corpus dump of the same host CPU."""

from __future__ import annotations

import pytest

from vlbr.arch.leaves import structured_features, xsave_extended
from vlbr.host import read_cpuid_file
from vlbr.policy import HostDescription, supported_cpuid

from corpus import FIRECRACKER, LIBVIRT
from policy_corpus import instlat, types_of

PAIRS = [  # (Firecracker view, host dump of that CPU)
    ("fingerprint_INTEL_SAPPHIRE_RAPIDS_5.10host.json", "GenuineIntel00806F8_SapphireRapids_05_CPUID.txt"),
    ("fingerprint_INTEL_SAPPHIRE_RAPIDS_6.1host.json", "GenuineIntel00806F8_SapphireRapids_05_CPUID.txt"),
    ("fingerprint_INTEL_GRANITE_RAPIDS_6.18host.json", "GenuineIntel00A06D1_GraniteRapids_03_CPUID.txt"),
    ("fingerprint_INTEL_GRANITE_RAPIDS_6.18host.json", "libvirt:x86_64-cpuid-Xeon-6788P.xml"),
    ("fingerprint_INTEL_ICELAKE_6.1host.json", "GenuineIntel00606A6_ICX_CPUID2.txt"),
    ("fingerprint_AMD_GENOA_6.18host.json", "AuthenticAMD0A10F11_K19_Genoa_01_CPUID.txt"),
]


def host_table(name: str):
    path = LIBVIRT / name.split(":", 1)[1] if name.startswith("libvirt:") else instlat(name)
    (only,) = types_of(path)
    return only.table


def supervisor_subleaves(table) -> set[int]:
    return {i for i in table.subleaves(0xD) if i >= 2 and table.regs(0xD, i).ecx & 1}


@pytest.mark.parametrize("view,dump", PAIRS, ids=[f"{v}~{d}" for v, d in PAIRS])
def test_mainline_matches_the_guest_view(corpus_dir, view, dump):
    (guest,) = read_cpuid_file(FIRECRACKER / view)
    g = guest.table
    host = HostDescription(host_table(dump))
    sup = supported_cpuid(host, "mainline").table
    assert structured_features(sup).arch_lbr == structured_features(g).arch_lbr == False
    assert sup.regs(0x1C) == g.regs(0x1C)  # zero in both (absent in some views)
    assert not xsave_extended(sup).xss_supported & (1 << 15)
    assert not xsave_extended(g).xss_supported & (1 << 15)
    assert sup.query(0xD, 0xF) is None and g.query(0xD, 0xF) is None
    if "6.18host" in view:  # mainline is modelled as Linux 6.18 (CET is its only XSS state)
        assert xsave_extended(sup).xss_supported == xsave_extended(g).xss_supported
        assert supervisor_subleaves(sup) == supervisor_subleaves(g)
    if host.arch_lbr:  # the same host under v3 would differ from what mainline answered
        v3 = supported_cpuid(host, "v3").table
        assert structured_features(v3).arch_lbr and v3.regs(0x1C) != g.regs(0x1C)
