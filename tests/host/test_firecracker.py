"""Firecracker fingerprint JSON reader (the CPUID guests saw under mainline KVM)."""

from __future__ import annotations

import json

import pytest

from vlbr.arch.leaves import arch_lbr_leaf, structured_features
from vlbr.errors import CpuidFormatError
from vlbr.host import firecracker, read_cpuid_file

from corpus import FIRECRACKER


@pytest.mark.parametrize("path", sorted(FIRECRACKER.glob("*.json")), ids=lambda p: p.name)
def test_guest_views_hide_arch_lbr(corpus_dir, path):
    # INDEX.md: on every fingerprint CPUID.7.0:EDX[19] is 0 and leaf 0x1C is all zero.
    (cpu,) = read_cpuid_file(path)
    assert not structured_features(cpu.table).arch_lbr
    assert arch_lbr_leaf(cpu.table).empty
    doc = json.loads(path.read_text())
    assert len(cpu.table) == len(doc["guest_cpu_config"]["cpuid_modifiers"])


def test_bitmap_bits_are_msb_first(corpus_dir):
    # fingerprint_INTEL_SAPPHIRE_RAPIDS_6.1host.json leaf 0 EBX bitmap spells "Genu".
    (cpu,) = read_cpuid_file(FIRECRACKER / "fingerprint_INTEL_SAPPHIRE_RAPIDS_6.1host.json")
    assert cpu.table.vendor == "GenuineIntel"


def entry(leaf="0x1c", sub="0x0", bitmap="0b" + "0" * 32, reg="eax"):
    return {"leaf": leaf, "subleaf": sub, "flags": 0,
            "modifiers": [{"register": reg, "bitmap": bitmap}]}


@pytest.mark.parametrize("doc, words", [
    ({"guest_cpu_config": {}}, "cpuid_modifiers"),
    ({"guest_cpu_config": {"cpuid_modifiers": [entry(bitmap="0b0101")]}}, "32 binary digits"),
    ({"guest_cpu_config": {"cpuid_modifiers": [entry(bitmap="0b" + "x" * 32)]}}, "templates"),
    ({"guest_cpu_config": {"cpuid_modifiers": [entry(leaf=28)]}}, "leaf=28"),
    ({"guest_cpu_config": {"cpuid_modifiers": [entry(reg="rax")]}}, "register='rax'"),
    ({"guest_cpu_config": {"cpuid_modifiers": [entry(), entry(bitmap="0b" + "1" * 32)]}}, "different values"),
    ({"guest_cpu_config": {"cpuid_modifiers": []}}, "no CPUID data"),
    ({"guest_cpu_config": {"cpuid_modifiers": [3]}}, "not an object"),
])
def test_bad_input(doc, words):
    with pytest.raises(CpuidFormatError) as err:
        firecracker.parse(doc, "fp.json")
    assert words in err.value.problem
