"""backends/software/cpu_features: the software guest's CPUID offers only what unicorn runs
(its own CPUID answer, probed) and XSAVE of x87|SSE, over any host - the live one and real
dumps (the corpus's Sapphire Rapids: AVX-512, AMX). SDM vol. 2A CPUID (feature words) and
vol. 1 13.2 (leaf 0xD: a component's row exists only for an XCR0 bit it supports)."""

from __future__ import annotations

import pytest

from corpus import INSTLATX64
from vlbr.arch.x86 import XFEATURES_LEGACY
from vlbr.backends.registry import guest_cpuid
from vlbr.backends.software.cpu_features import (FEATURE_WORDS, unicorn_cpuid,
                                                 unicorn_limited)
from vlbr.host import read_cpuid_file

SAPPHIRE = INSTLATX64 / "GenuineIntel00806F8_SapphireRapids_05_CPUID.txt"
AVX, AVX2, AVX512F = (0x1, 0, 2, 28), (0x7, 0, 1, 5), (0x7, 0, 1, 16)  # leaf, sub, reg, bit
# what vlbr itself provides on top of unicorn (policy.emulated): XSAVE and PDCM in leaf 1
# ECX, Arch LBR in leaf 7 EDX[19], XSAVES in 0xD.1 EAX[3]; OSXSAVE follows CR4 at run time
PROVIDED = {(0x1, 0, 2): 1 << 26 | 1 << 15 | 1 << 27, (0x7, 0, 3): 1 << 19,
            (0xD, 1, 0): 1 << 3}


@pytest.fixture(scope="module")
def sapphire():
    if not SAPPHIRE.exists():
        pytest.skip(f"corpus file {SAPPHIRE} missing")
    return read_cpuid_file(SAPPHIRE)[0].table


def bit(table, leaf, sub, reg, n) -> bool:
    return bool(table.regs(leaf, sub).as_tuple()[reg] >> n & 1)


def test_the_software_guest_offers_no_feature_unicorn_lacks():
    table = guest_cpuid("software")
    for (leaf, sub), masked in FEATURE_WORDS.items():
        can = unicorn_cpuid(leaf, sub).as_tuple()
        for reg, is_feature in enumerate(masked):
            extra = table.regs(leaf, sub).as_tuple()[reg] & ~can[reg]
            if is_feature:
                assert extra & ~PROVIDED.get((leaf, sub, reg), 0) == 0, (hex(leaf), reg)
    assert not bit(table, *AVX) and (table.regs(0xD, 0).eax, table.regs(0xD, 0).edx) == (3, 0)


def test_unicorn_enumerates_xcr0_avx_yet_cannot_run_it():
    # Why XSAVE is limited beyond unicorn's own answer: its 0xD.0 claims AVX state.
    from unicorn import UC_ARCH_X86, UC_ERR_INSN_INVALID, UC_MODE_64, Uc, UcError
    from vlbr.backends.software.cpu_features import CPU_MODEL
    assert unicorn_cpuid(0xD, 0).eax & 0b100 and not unicorn_cpuid(0x1).ecx >> 28 & 1
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.ctl_set_cpu_model(CPU_MODEL)
    uc.mem_map(0x1000, 0x1000)
    uc.mem_write(0x1000, bytes.fromhex("c5f458c2"))  # vaddps ymm0, ymm1, ymm2
    with pytest.raises(UcError) as raised:
        uc.emu_start(0x1000, 0x1004)
    assert raised.value.errno == UC_ERR_INSN_INVALID


def test_a_host_with_avx512_keeps_only_legacy_xsave_and_its_other_leaves(sapphire):
    assert bit(sapphire, *AVX512F) and sapphire.query(0xD, 5) is not None
    limited = unicorn_limited(sapphire)
    assert not any(bit(limited, *f) for f in (AVX, AVX2, AVX512F))
    main = limited.regs(0xD, 0)
    assert (main.eax, main.edx, main.ebx, main.ecx) == (XFEATURES_LEGACY, 0, 576, 576)
    host_xcr0 = sapphire.regs(0xD, 0).edx << 32 | sapphire.regs(0xD, 0).eax
    user = [i for i in range(2, 64) if host_xcr0 >> i & 1]
    assert 17 in user and 18 in user  # AMX
    assert all(limited.query(0xD, i) is None for i in user)  # AVX .. AMX rows gone
    assert limited.query(0xD, 15) is not None  # supervisor rows: the policy's to drop
    for leaf in (0x0, 0x4, 0xA, 0x8000_0008):  # vendor, caches, PMU, address sizes: the host's
        assert limited.regs(leaf) == sapphire.regs(leaf)
    assert limited.regs(0x1).eax == sapphire.regs(0x1).eax  # the signature stays
