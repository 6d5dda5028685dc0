"""supported_cpuid(): the issue's "Must show" on the corpus, variant by variant.

Sources: INDEX.md rows (per dump and core type), the reference doc section 4 (the depth rules
and the size formula of section 1), the dumps' own CPUID.(0xD,0xF)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from vlbr.arch.cpuid import CpuidTable, Registers
from vlbr.arch.leaves import arch_lbr_leaf, structured_features, xsave_extended
from vlbr.arch.msrs import IA32_LBR_CTL, IA32_XSS, arch_lbr_msrs
from vlbr.policy import (VARIANT_NAMES, HostDescription, UnknownVariant, UnsupportedDepth,
                         supported_cpuid)

from corpus import index_rows
from policy_corpus import arch_lbr_files, host_of, instlat, non_arch_lbr_files, types_of

LBR = 1 << 15


def fls(x: int) -> int:  # Linux's fls, written out here from the reference doc section 1
    n = 0
    while x:
        n, x = n + 1, x >> 1
    return n


def leaf_1c(table: CpuidTable) -> Registers:
    return table.regs(0x1C, 0)


@pytest.mark.parametrize("name", arch_lbr_files())
def test_email_v2_and_v3_depth_bits_on_every_arch_lbr_dump(corpus_dir, name):
    rows = [r for r in index_rows() if r.file == name]
    types = types_of(instlat(name))
    # INDEX.md lists one row per core type, with that type's leaf 0x1C EAX.
    assert sorted(t.table.regs(0x1C).eax for t in types) == sorted(r.leaf_0x1c[0] for r in rows)
    for t in types:
        mask = t.table.regs(0x1C).eax & 0xFF
        host = host_of(t)
        email = leaf_1c(supported_cpuid(host, "email-v2").table).eax & 0xFF
        v3 = leaf_1c(supported_cpuid(host, "v3").table).eax & 0xFF
        # Reference doc section 4: the email computes 1 << fls(mask), v3 1 << (fls(mask) - 1).
        assert email == (1 << fls(mask)) & 0xFF, t.name
        assert v3 == 1 << (fls(mask) - 1), t.name
        if mask == 0x0B:  # the literal values for the Alder Lake-style bitmap
            assert (email, v3) == (0x10, 0x08)
            assert not mask & email  # depth 40: the host does not support it


@pytest.mark.parametrize("name", arch_lbr_files())
def test_component_15_size_is_40_plus_24_depth_and_the_hosts(corpus_dir, name):
    rows = {r.leaf_0x1c[0]: r for r in index_rows() if r.file == name}
    for t in types_of(instlat(name)):
        row = rows[t.table.regs(0x1C).eax]
        for variant in ("v3", "vlbr"):
            sup = supported_cpuid(host_of(t), variant)
            size = sup.table.regs(0xD, 0xF).eax
            assert size == 40 + 24 * arch_lbr_leaf(sup.table).max_depth == 40 + 24 * sup.depth
            if row.comp15_size is None:  # INDEX.md '-': the dump lacks CPUID.(0xD,0xF)
                assert t.table.query(0xD, 0xF) is None
            else:
                assert size == row.comp15_size == t.table.regs(0xD, 0xF).eax
        # email-v2 passes the host's CPUID.(0xD,0xF) through, whatever depth it names.
        email = supported_cpuid(host_of(t), "email-v2")
        assert email.table.regs(0xD, 0xF).eax == 808
        assert any("does not match the exposed depth 40" in n for n in email.notes)


@settings(max_examples=60, deadline=None)
@given(depth=st.sampled_from(range(8, 65, 8)))
def test_vlbr_any_legal_depth_sizes_component_15(depth):
    # A synthetic Arch LBR host (the Alder Lake P-core values of INDEX.md).
    host = HostDescription(_synthetic_host(0x4000000B))
    sup = supported_cpuid(host, "vlbr", depth)
    assert arch_lbr_leaf(sup.table).depths == [depth]
    assert sup.table.regs(0xD, 0xF).eax == 40 + 24 * depth
    assert sup.msrs_to_save == (IA32_XSS, *arch_lbr_msrs(depth))


def test_email_v2_gives_no_depth_when_bit_7_is_on_top():
    # Reference doc section 4: 1 << fls(mask) leaves EAX[7:0] when bit 7 is the top bit.
    host = HostDescription(_synthetic_host(0x4000008B))
    email = supported_cpuid(host, "email-v2")
    assert leaf_1c(email.table).eax & 0xFF == 0
    assert any("no depth at all" in n for n in email.notes)
    assert leaf_1c(supported_cpuid(host, "v3").table).eax & 0xFF == 0x80  # depth 64


@pytest.mark.parametrize("name", non_arch_lbr_files())
def test_no_arch_lbr_dumps_expose_nothing_under_any_variant(corpus_dir, name):
    for t in types_of(instlat(name)):
        for variant in VARIANT_NAMES:
            _assert_nothing_exposed(supported_cpuid(host_of(t), variant))


def test_amd_epyc_kvm_guest_dump_exposes_nothing(corpus_dir):
    from corpus import CPUID_RAW_DUMP

    for t in types_of(CPUID_RAW_DUMP):
        for variant in VARIANT_NAMES:
            _assert_nothing_exposed(supported_cpuid(host_of(t), variant))


def _assert_nothing_exposed(sup):
    assert sup.table.regs(0x1C, 0) == Registers()
    assert not structured_features(sup.table).arch_lbr
    assert not sup.supported_xss & LBR
    assert not xsave_extended(sup.table).xss_supported & LBR
    assert sup.table.query(0xD, 0xF) is None
    assert IA32_LBR_CTL not in sup.msrs_to_save
    assert sup.entries()[-1].function == 0x1C and sup.entries()[-1].regs == Registers()


def test_v3_rules_on_a_raptor_lake_p_core(corpus_dir):
    # RaptorLake_01: INDEX.md says 0x1C 4000000B-7-7, XSS bit 15, 808 bytes.
    (p_core, _) = types_of(instlat("GenuineIntel00B0671_RaptorLake_01_CPUID.txt"))
    sup = supported_cpuid(host_of(p_core), "v3")
    assert leaf_1c(sup.table) == Registers(0x40000008, 7, 7, 0)
    assert sup.supported_xss & LBR and sup.arch_lbr and sup.depth == 32
    assert sup.msrs_to_save[0] == IA32_XSS and sup.msrs_to_save[1:] == tuple(arch_lbr_msrs(32))
    # Without the VMX controls v3 clears ARCH_LBR and bit 15.
    no_vmx = supported_cpuid(HostDescription(p_core.table, vmx_clear_lbr_ctl=False), "v3")
    _assert_nothing_exposed(no_vmx)
    # host_xss without bit 15: v3 keeps ARCH_LBR but offers no XSS bit 15, email-v2 ORs it in.
    host = HostDescription(p_core.table, host_xss=0x1800)
    assert not supported_cpuid(host, "v3").supported_xss & LBR
    assert supported_cpuid(host, "email-v2").supported_xss & LBR


def test_depth_requests():
    host = HostDescription(_synthetic_host(0x4000000B))
    assert supported_cpuid(host, "v3", 32).depth == 32
    for variant, depth in (("v3", 16), ("email-v2", 8), ("mainline", 32), ("vlbr", 12),
                           ("vlbr", 72), ("vlbr", 0)):
        with pytest.raises(UnsupportedDepth):
            supported_cpuid(host, variant, depth)
    with pytest.raises(UnsupportedDepth, match="no Arch LBR"):
        supported_cpuid(HostDescription(_synthetic_host(0)), "vlbr", 32)
    with pytest.raises(UnknownVariant):
        supported_cpuid(host, "v4")


def _synthetic_host(leaf_1c_eax: int) -> CpuidTable:
    """A minimal Arch LBR host: ARCH_LBR, XSAVES with XSS bit 15, 808-byte component 15."""
    arch = leaf_1c_eax & 0xFF != 0
    return CpuidTable({
        (0x0, 0): Registers(0x1C, 0x756E6547, 0x6C65746E, 0x49656E69),
        (0x7, 0): Registers(0, 0, 0, (1 << 19) if arch else 0),
        (0xD, 0): Registers(0x3, 576, 576, 0),
        (0xD, 1): Registers(0xF, 576, LBR if arch else 0, 0),
        **({(0xD, 0xF): Registers(808, 0, 1, 0)} if arch else {}),
        (0x1C, 0): Registers(leaf_1c_eax, 7 if arch else 0, 7 if arch else 0, 0),
    })


def test_event_logging_passes_through_v3_but_not_vlbr(corpus_dir):
    # INDEX.md: Lunar Lake's leaf 0x1C ECX is 0x000F0007 (event-logging bitmap in 19:16).
    (p_core, _) = types_of(instlat("GenuineIntel00B06D1_LunarLake_04_CPUID.txt"))
    assert p_core.table.regs(0x1C).ecx == 0x000F0007
    v3 = supported_cpuid(host_of(p_core), "v3")
    assert v3.table.regs(0x1C).ecx == 0x000F0007
    assert any("event logging" in n for n in v3.notes)
    vlbr = supported_cpuid(host_of(p_core), "vlbr")
    assert vlbr.table.regs(0x1C).ecx == 0x7  # the emulation logs no branch counters
    from vlbr.policy import LbrEmulationCaps

    no_stack = supported_cpuid(host_of(p_core), "vlbr", caps=LbrEmulationCaps(call_stack=False))
    assert no_stack.table.regs(0x1C).ebx == 0x3
