"""The Guest ABI's low memory and entry state (docs/design.md "Guest ABI")."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from vlbr.backends import layout as L
from vlbr.backends.base import RAM_SIZE


def _memory(vcpus: int) -> bytearray:
    mem = bytearray(0x10000)
    L.write_low_memory(mem, vcpus)
    return mem


def _q(mem, addr: int) -> int:
    return int.from_bytes(mem[addr:addr + 8], "little")


def _walk(mem, va: int) -> tuple[int, bool, bool]:
    """4-level walk (SDM vol. 3A 4.5) -> (physical, user, writable); 2 MiB leaf at the PD."""
    pml4e = _q(mem, L.PML4_ADDR + ((va >> 39) & 511) * 8)
    pdpte = _q(mem, (pml4e & ~0xFFF) + ((va >> 30) & 511) * 8)
    pde = _q(mem, (pdpte & ~0xFFF) + ((va >> 21) & 511) * 8)
    for e in (pml4e, pdpte, pde):
        assert e & 1, f"not present at {va:#x}"
    assert pde & L.PTE_PS
    user = all(e & L.PTE_US for e in (pml4e, pdpte, pde))
    rw = all(e & L.PTE_RW for e in (pml4e, pdpte, pde))
    return (pde & ~0x1FFFFF & ((1 << 52) - 1)) | (va & 0x1FFFFF), user, rw


@settings(max_examples=100)
@given(st.integers(0, RAM_SIZE - 1))
def test_ram_is_identity_mapped_user_writable(va):
    mem = _memory(1)
    assert _walk(mem, va) == (va, True, True)


def test_design_doc_addresses_and_selectors():
    # docs/design.md Guest ABI: PML4 0x1000, PDPT 0x2000, PD 0x3000; GDT 0x4000 + n*0x200,
    # TSS 0x4100 + n*0x200; selectors 0x08/0x10/0x1B/0x23/0x28; RSP 0x700000 - n*0x10000.
    assert [a for a, _ in L.page_tables()] == [0x1000, 0x2000, 0x3000]
    assert (L.gdt_address(2), L.tss_address(2), L.stack_top(2)) == (0x4400, 0x4500, 0x6E0000)
    e = L.entry_state(1, 3, 0x100123)
    assert (e.cs.selector, e.ss.selector, e.ds.selector, e.tr.selector) == (0x08, 0x10, 0x10, 0x28)
    assert (e.rip, e.rsp, e.rdi, e.rsi, e.rflags) == (0x100123, 0x6F0000, 1, 3, 0x2)
    assert e.gdt.base == 0x4200 and e.cr3 == 0x1000


def test_gdt_matches_linux_flat_descriptors():
    # Linux arch/x86/kernel/cpu/common.c gdt_page (GDT_ENTRY_INIT of DESC_CODE64 etc, accessed
    # bit set): __KERNEL_CS 0x00af9b000000ffff, __KERNEL_DS 0x00cf93000000ffff,
    # __USER_DS 0x00cff3000000ffff, __USER_CS 0x00affb000000ffff.
    gdt = L.gdt_bytes(0)
    words = [int.from_bytes(gdt[i:i + 8], "little") for i in range(0, 40, 8)]
    assert words == [0, 0x00AF9B000000FFFF, 0x00CF93000000FFFF, 0x00CFF3000000FFFF,
                     0x00AFFB000000FFFF]
    assert len(gdt) == L.GDT_LIMIT + 1


def test_entry_control_registers():
    # SDM vol. 3A 2.5: CR0 PE=0 MP=1 ET=4 NE=5 WP=16 PG=31; CR4 PAE=5 OSFXSR=9 OSXMMEXCPT=10
    # OSXSAVE=18; EFER SCE=0 LME=8 LMA=10.
    e = L.entry_state(0, 1, L.IMAGE_BASE)
    assert e.cr0 == (1 | 2 | 1 << 4 | 1 << 5 | 1 << 16 | 1 << 31)
    assert e.cr4 == (1 << 5 | 1 << 9 | 1 << 10 | 1 << 18)
    assert e.efer == (1 | 1 << 8 | 1 << 10) and e.xcr0 == 3


@pytest.mark.parametrize("n", [0, 1, 5])
def test_hidden_state_is_what_the_gdt_gives(n):
    e = L.entry_state(n, 6, L.IMAGE_BASE)
    assert (e.cs.l, e.cs.db, e.cs.dpl, e.cs.s, e.cs.present, e.cs.type) == (1, 0, 0, 1, 1, 0xB)
    assert (e.ss.db, e.ss.dpl, e.ss.type, e.ss.limit) == (1, 0, 0x3, 0xFFFFFFFF)
    # TR: busy 64-bit TSS at this vCPU's TSS, limit covering the I/O bitmap's terminator.
    assert (e.tr.base, e.tr.type, e.tr.s, e.tr.limit) == (L.tss_address(n), 0xB, 0, 104 + 32)
    user = L.decode_descriptor(L.gdt_bytes(n), L.SEL_USER_CODE)
    assert (user.dpl, user.l, user.selector & 3) == (3, 1, 3)


@settings(max_examples=50)
@given(st.integers(0, L.MAX_VCPUS - 1))
def test_tss_rsp0_and_io_bitmap(n):
    mem = _memory(n + 1)
    tss = L.tss_address(n)
    assert _q(mem, tss + 4) == L.stack_top(n)  # RSP0 (SDM vol. 3A 8.7, 64-bit TSS)
    iopb = tss + int.from_bytes(mem[tss + 102:tss + 104], "little")
    allowed = {p for p in range(256) if not mem[iopb + p // 8] >> (p % 8) & 1}
    # Guest ABI ports: 0xE9 (byte), 0xF4 (dword: 0xF4-0xF7, SDM vol. 1 19.5.2), 0xF5.
    assert allowed == {0xE9, 0xF4, 0xF5, 0xF6, 0xF7}
    assert iopb + 32 - tss <= L.entry_state(n, n + 1, 0).tr.limit


def test_per_vcpu_areas_do_not_overlap():
    spans = sorted((a, a + len(d)) for a, d in L.low_memory(L.MAX_VCPUS))
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert end <= start
    assert spans[-1][1] <= L.IMAGE_BASE
    assert L.stack_top(L.MAX_VCPUS - 1) - L.STACK_STRIDE >= 0x200000


@pytest.mark.parametrize("bad", [0, L.MAX_VCPUS + 1])
def test_bad_vcpu_counts_are_rejected(bad):
    with pytest.raises(ValueError):
        L.low_memory(bad)
