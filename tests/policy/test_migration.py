"""migration_check(): every difference between two guest configurations, with its consequence.

Configurations come from emulated_guest_cpuid() over the AMD EPYC dump of the corpus and from
what v3 offers on corpus hosts; the consequences are the reference doc's (sections 1, 4)."""

from __future__ import annotations

from vlbr.arch.cpuid import Registers
from vlbr.policy import (HostDescription, LbrEmulationCaps, emulated_guest_cpuid,
                         host_migration_check, migration_check)

from corpus import CPUID_RAW_DUMP
from policy_corpus import instlat, types_of


def base():
    return types_of(CPUID_RAW_DUMP)[0].table


def whats(issues):
    return [i.what for i in issues]


def test_same_configuration_migrates(corpus_dir):
    a = emulated_guest_cpuid(base(), 32)
    assert migration_check(a, a) == []
    assert migration_check(a, emulated_guest_cpuid(base(), 32)) == []


def test_depth_mismatch_clears_records(corpus_dir):
    issues = migration_check(emulated_guest_cpuid(base(), 32), emulated_guest_cpuid(base(), 16))
    assert whats(issues)[0] == "LBR depth"
    assert "XRSTORS" in issues[0].consequence and "clears every record" in issues[0].consequence
    assert issues[0].source == "32" and issues[0].destination == "16"
    # The component size follows the depth: 808 vs 424 bytes.
    sizes = [i for i in issues if i.what.startswith("XSAVE component 15")]
    assert sizes and (sizes[0].source, sizes[0].destination) == ("808", "424")


def test_lip_xss_and_capabilities(corpus_dir):
    a = emulated_guest_cpuid(base(), 32)
    b = emulated_guest_cpuid(base(), 32, LbrEmulationCaps(lip=False, call_stack=False))
    got = {i.what: i for i in migration_check(a, b)}
    assert "LIP (leaf 0x1C EAX[31])" in got and "CS.base" in got["LIP (leaf 0x1C EAX[31])"].consequence
    assert any("EBX" in w for w in got)
    assert migration_check(b, a) and not any("EBX" in w for w in whats(migration_check(b, a)))
    no_xss = a.replace({(0xD, 1): Registers(0xF, 576, 0x1800, 0)})  # CET kept, bit 15 gone
    lost = migration_check(a, no_xss)
    assert any("IA32_XSS" in i.consequence and "bits 0x8000 " in i.consequence for i in lost)


def test_arch_lbr_to_a_host_without_it(corpus_dir):
    spr = HostDescription.from_core_types(types_of(instlat("GenuineIntel00806F8_SapphireRapids_05_CPUID.txt")))
    amd = HostDescription.from_core_types(types_of(CPUID_RAW_DUMP))
    issues = host_migration_check(spr, amd, "v3")
    assert whats(issues)[0] == "ARCH_LBR" and "KVM_SET_MSRS" in issues[0].consequence
    assert host_migration_check(amd, spr, "v3") == []  # nothing to lose
    # Two Arch LBR hosts with the same P-core rows (SPR and Emerald Rapids) agree under v3.
    emr = HostDescription.from_core_types(types_of(instlat("GenuineIntel00C06F2_EmeraldRapids_02_CPUID.txt")))
    assert [i for i in host_migration_check(spr, emr, "v3") if "LBR" in i.what] == []


def test_hybrid_lip_between_core_types(corpus_dir):
    (p_core, e_core) = types_of(instlat("GenuineIntel00B0671_RaptorLake_01_CPUID.txt"))
    issues = host_migration_check(HostDescription(p_core.table), HostDescription(e_core.table), "v3")
    assert "LIP (leaf 0x1C EAX[31])" in whats(issues)
