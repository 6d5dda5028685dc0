"""check_guest_cpuid(): one test per KVM_SET_CPUID2 rule, on a Raptor Lake P-core host.

The host is RaptorLake_01's P-core (INDEX.md: 0x1C 4000000B-7-7, XSS bit 15, 808 bytes); each
guest table starts from what v3 offers there and breaks one thing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from vlbr.arch.cpuid import CpuidTable, Registers
from vlbr.policy import HostDescription, check_guest_cpuid, emulated_guest_cpuid, supported_cpuid

from policy_corpus import instlat, types_of

RPL = "GenuineIntel00B0671_RaptorLake_01_CPUID.txt"
LBR = 1 << 15


@pytest.fixture(scope="module")
def host(corpus_dir) -> HostDescription:
    return HostDescription(types_of(instlat(RPL))[0].table)


@pytest.fixture(scope="module")
def offered(host) -> CpuidTable:
    return supported_cpuid(host, "v3").table


def with_rows(table: CpuidTable, **rows) -> CpuidTable:
    keys = {"l7": (0x7, 0), "l1c": (0x1C, 0), "d1": (0xD, 1), "d15": (0xD, 0xF), "l0": (0, 0)}
    return table.replace({keys[k]: v for k, v in rows.items()})


def edit(table: CpuidTable, key, **regs) -> Registers:
    r = table.regs(*key)
    return Registers(**{**dict(eax=r.eax, ebx=r.ebx, ecx=r.ecx, edx=r.edx), **regs})


def reasons(host, guest, variant="v3"):
    return check_guest_cpuid(host, guest, variant)


def test_what_v3_offers_is_accepted(host, offered):
    assert reasons(host, offered) == []
    assert reasons(host, supported_cpuid(host, "vlbr").table, "vlbr") == []


def test_empty_leaf_without_arch_lbr_is_accepted(host, offered):
    guest = with_rows(offered, l7=edit(offered, (7, 0), edx=offered.regs(7, 0).edx & ~(1 << 19)),
                      l1c=Registers(), d1=edit(offered, (0xD, 1), ecx=0x1800), d15=None)
    assert reasons(host, guest) == []


def test_other_depth_bit_is_rejected(host, offered):
    for bit in (0x1, 0x2, 0x4, 0x10, 0x0B):  # depths 8, 16, 24, 40, and all of the host's
        guest = with_rows(offered, l1c=edit(offered, (0x1C, 0), eax=0x40000000 | bit))
        assert any("differs from the only allowed one 0x8" in r for r in reasons(host, guest)), bit


def test_the_email_v2_table_is_rejected_by_v3_and_accepted_by_email_v2(host):
    email = supported_cpuid(host, "email-v2").table
    got = reasons(host, email)
    assert any("depth bitmap 0x10" in r for r in got)
    assert any("size 808 does not match depth 40" in r for r in got)
    assert check_guest_cpuid(host, email, "email-v2") == []  # the email validated nothing


def test_component_size_must_match_the_depth(host, offered):
    guest = with_rows(offered, d15=Registers(40 + 24 * 16, 0, 1, 0))
    assert reasons(host, guest) == ["CPUID.(0xD,0xF) size 424 does not match depth 32 "
                                    "(40 + 24 * 32 = 808)"]
    assert any("CPUID.(0xD,0xF) is missing" in r for r in reasons(host, with_rows(offered, d15=None)))


def test_arch_lbr_without_leaf_0x1c(host, offered):
    guest = with_rows(offered, l1c=Registers())
    assert any("leaf 0x1C enumerates no depth" in r for r in reasons(host, guest))
    short = with_rows(offered, l0=edit(offered, (0, 0), eax=0x16))  # CPUID.0:EAX below 0x1C
    assert any("leaf 0x1C enumerates no depth" in r for r in reasons(host, short))


def test_arch_lbr_where_kvm_does_not_offer_it(offered):
    amd = HostDescription(offered.replace({(0x7, 0): Registers(), (0x1C, 0): Registers()}))
    got = check_guest_cpuid(amd, offered, "v3")
    assert any("KVM does not offer Arch LBR" in r for r in got)
    assert any("Arch LBR state that KVM does not support" in r for r in got)


def test_capability_bits_and_lip(host, offered):
    more = with_rows(offered, l1c=edit(offered, (0x1C, 0), ecx=0x000F0007))
    assert any("ECX bits 0xf0000" in r for r in reasons(host, more))
    lip = with_rows(offered, l1c=edit(offered, (0x1C, 0), eax=0xC0000008))
    assert reasons(host, lip) == ["leaf 0x1C EAX[31] LIP=1 differs from the host's 0"]


def test_xss_bit_15_rules(host, offered):
    no_xsaves = with_rows(offered, d1=edit(offered, (0xD, 1), eax=0x7))
    assert any("without XSAVES" in r for r in reasons(host, no_xsaves))
    user = with_rows(offered, d15=Registers(808, 0, 0, 0))
    assert any("supervisor" in r for r in reasons(host, user))
    orphan = with_rows(offered, l7=edit(offered, (7, 0), edx=offered.regs(7, 0).edx & ~(1 << 19)),
                       l1c=Registers())
    assert any("without ARCH_LBR" in r for r in reasons(host, orphan))
    host_no_xss = HostDescription(host.table, host_xss=0x1800)
    assert any("KVM does not support" in r for r in check_guest_cpuid(host_no_xss, offered, "v3"))


@settings(max_examples=60, deadline=None)
@given(depth=st.sampled_from(range(8, 65, 8)))
def test_vlbr_accepts_any_emulated_depth_v3_only_the_hosts(host, depth):
    guest = supported_cpuid(host, "vlbr", depth).table
    assert check_guest_cpuid(host, guest, "vlbr") == []
    assert (check_guest_cpuid(host, guest, "v3") == []) == (depth == 32)


def test_mainline_and_email_v2_never_reject(host):
    guest = emulated_guest_cpuid(host.table, depth=24)
    assert check_guest_cpuid(host, guest, "mainline") == []
    assert check_guest_cpuid(host, guest, "email-v2") == []


# --- every rule has a guest that breaks exactly it ---------------------------------------------

from vlbr.policy.validate import RULES  # noqa: E402

BREAKS = {  # rule -> how to break the v3 table of the Raptor Lake P-core for that rule alone
    "arch_lbr_not_offered": None,  # needs a host without Arch LBR: test_arch_lbr_where_kvm...
    "arch_lbr_without_leaf": lambda t: with_rows(t, l1c=Registers()),
    "empty_leaf_1c": None,  # v12 only (v3 accepts an empty leaf): tests/policy/test_v12.py
    "depth_not_allowed": lambda t: with_rows(t, l1c=edit(t, (0x1C, 0), eax=0x40000004),
                                             d15=Registers(40 + 24 * 24, 0, 1, 0)),
    "capability_bits_not_offered": lambda t: with_rows(t, l1c=edit(t, (0x1C, 0), ebx=0xF)),
    "lip_differs": lambda t: with_rows(t, l1c=edit(t, (0x1C, 0), eax=0xC0000008)),
    "comp15_size_mismatch": lambda t: with_rows(t, d15=Registers(1000, 0, 1, 0)),
    "comp15_not_supervisor": lambda t: with_rows(t, d15=Registers(808, 0, 0, 0)),
    "xss_lbr_not_supported": None,  # needs a host IA32_XSS without bit 15: test_xss_bit_15_rules
    "xss_lbr_without_arch_lbr": lambda t: with_rows(
        t, l7=edit(t, (7, 0), edx=t.regs(7, 0).edx & ~(1 << 19)), l1c=Registers()),
    "xss_lbr_without_xsaves": lambda t: with_rows(t, d1=edit(t, (0xD, 1), eax=0x7)),
}


def test_every_rule_is_listed_here():
    assert set(BREAKS) == {rule.__name__ for rule in RULES}


@pytest.mark.parametrize("rule", [r for r in RULES if BREAKS[r.__name__]], ids=lambda r: r.__name__)
def test_one_break_one_reason(host, offered, rule):
    guest = BREAKS[rule.__name__](offered)
    got = reasons(host, guest)
    assert len(got) == 1, got
    assert got == [rule(supported_cpuid(host, "v3"), guest, variant_named("v3"), VLBR_EMULATION_CAPS)]


# --- properties over synthetic hosts ------------------------------------------------------------

from vlbr.policy import VLBR_EMULATION_CAPS, variant_named  # noqa: E402


def synthetic(eax: int, ebx: int, ecx: int, xss: int) -> CpuidTable:
    arch = eax & 0xFF != 0
    return CpuidTable({
        (0x0, 0): Registers(0x1C, 0, 0, 0), (0x7, 0): Registers(0, 0, 0, (1 << 19) if arch else 0),
        (0xD, 0): Registers(0x3, 576, 576, 0), (0xD, 1): Registers(0xF, 576, xss, 0),
        (0xD, 0xB): Registers(16, 0, 1, 0), (0xD, 0xC): Registers(24, 0, 1, 0),
        (0xD, 0xF): Registers(40 + 24 * 8 * (eax & 0xFF).bit_length(), 0, 1, 0),
        (0x1C, 0): Registers(eax, ebx, ecx, 0)})


hosts = st.builds(
    synthetic, eax=st.integers(0, 0xFF) | st.integers(0, 0xFF).map(lambda m: m | 0xC0000000),
    ebx=st.integers(0, 7), ecx=st.integers(0, 7) | st.just(0xF0007),
    xss=st.sampled_from([0, 0x8000, 0x1800, 0x9800]))


@settings(max_examples=150, deadline=None)
@given(table=hosts, vmx=st.booleans(), variant=st.sampled_from(["v3", "vlbr"]))
def test_v3_and_vlbr_accept_what_they_offer(table, vmx, variant):
    host = HostDescription(table, vmx_load_lbr_ctl=vmx)
    sup = supported_cpuid(host, variant)
    assert check_guest_cpuid(host, sup.table, variant) == []
    leaf = sup.table.regs(0x1C).eax & 0xFF
    mask = table.regs(0x1C).eax & 0xFF
    assert leaf == (1 << (mask.bit_length() - 1) if mask and vmx else 0)
    if sup.arch_lbr and sup.supported_xss & (1 << 15):
        assert sup.table.regs(0xD, 0xF).eax == 40 + 24 * sup.depth


@settings(max_examples=150, deadline=None)
@given(table=hosts)
def test_v3_rejects_what_email_v2_offers(table):
    host = HostDescription(table)
    email = supported_cpuid(host, "email-v2")
    if email.arch_lbr:  # 1 << fls(mask) is never the host's top bit
        assert check_guest_cpuid(host, email.table, "v3") != []
    else:
        assert email.table.regs(0x1C) == Registers() and not email.supported_xss & (1 << 15)
