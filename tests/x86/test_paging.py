"""4-level page walks and #PF error codes (SDM Vol. 3 4.5 walk, 4.6 access rights combined
over levels, 4.7 the error code: P=bit 0, W/R=1, U/S=2, RSVD=3, I/D=4)."""

from __future__ import annotations

import struct

import pytest

from vlbr.arch.x86 import CR0_WP, PTE_NX, PTE_P, PTE_PS, PTE_RW, PTE_US
from vlbr.x86.paging import Access, PageFault, read_linear, translate, write_linear

MEM = 1 << 20
PML4, PDPT, PD, PT = 0x1000, 0x2000, 0x3000, 0x4000
ALL = PTE_P | PTE_RW | PTE_US


def tables(pte_flags=ALL, pde_flags=ALL, large_pde: int | None = None) -> bytearray:
    mem = bytearray(MEM)

    def put(table, index, value):
        struct.pack_into("<Q", mem, table + 8 * index, value)

    put(PML4, 0, PDPT | ALL)
    put(PDPT, 0, PD | ALL)
    put(PDPT, 1, 0x4000_0000 | ALL | PTE_PS)  # 1 GiB page at 1 GiB
    put(PD, 0, PT | pde_flags)
    if large_pde is not None:
        put(PD, 1, large_pde)
    put(PT, 5, 0x80000 | pte_flags)
    return mem


def walk(mem, linear, cr0=CR0_WP, **access):
    return translate(lambda a, n: bytes(mem[a:a + n]), PML4, cr0, linear, Access(**access))


def fault(mem, linear, cr0=CR0_WP, **access) -> int:
    with pytest.raises(PageFault) as caught:
        walk(mem, linear, cr0, **access)
    assert caught.value.linear == linear  # CR2 is the linear address
    return caught.value.error_code


def test_4k_2m_and_1g_pages_translate():
    mem = tables(large_pde=0x200000 | ALL | PTE_PS)
    assert walk(mem, 0x5123) == 0x80123
    assert walk(mem, 0x2ABCDE) == 0x2ABCDE
    assert walk(mem, 0x4123_4567) == 0x4123_4567


@pytest.mark.parametrize("access, code", [
    ({}, 0x0), ({"write": True}, 0x2), ({"user": True}, 0x4),
    ({"user": True, "write": True}, 0x6), ({"fetch": True}, 0x10),
])
def test_not_present_error_codes(access, code):
    assert fault(tables(), 0x6000, **access) == code


def test_rights_combine_over_levels():
    # SDM 4.6: the PDE clears U/S, so the user page below it is supervisor-only.
    mem = tables(pde_flags=PTE_P | PTE_RW)
    assert fault(mem, 0x5000, user=True) == 0x5
    assert walk(mem, 0x5000) == 0x80000


def test_read_only_pages_and_cr0_wp():
    mem = tables(pte_flags=PTE_P | PTE_US)
    assert fault(mem, 0x5000, user=True, write=True) == 0x7
    assert fault(mem, 0x5000, write=True) == 0x3  # supervisor write, CR0.WP=1
    assert walk(mem, 0x5000, cr0=0, write=True) == 0x80000  # CR0.WP=0 lets it through


def test_nx_fetch_and_reserved_bits():
    assert fault(tables(pte_flags=ALL | PTE_NX), 0x5000, fetch=True) == 0x11
    assert fault(tables(large_pde=0x202000 | ALL | PTE_PS), 0x200000) == 0x9  # bit 13 of a 2M PDE
    assert walk(tables(large_pde=0x201000 | ALL | PTE_PS), 0x200000) == 0x200000  # 12 is PAT
    mem = tables(pte_flags=ALL | PTE_NX)
    with pytest.raises(PageFault) as caught:
        translate(lambda a, n: bytes(mem[a:a + n]), PML4, CR0_WP, 0x5000, Access(),
                  nx_enabled=False)
    assert caught.value.error_code == 0x9  # bit 63 is reserved without EFER.NXE


def fetch_fault(mem, linear, nx_enabled, smep, user=True) -> int:
    with pytest.raises(PageFault) as caught:
        translate(lambda a, n: bytes(mem[a:a + n]), PML4, CR0_WP, linear,
                  Access(user=user, fetch=True), nx_enabled=nx_enabled, smep=smep)
    return caught.value.error_code


@pytest.mark.parametrize("nx_enabled, smep, code", [
    (False, False, 0x4), (True, False, 0x14), (False, True, 0x14)])
def test_the_fetch_bit_needs_nxe_or_smep(nx_enabled, smep, code):
    # SDM 4.7: I/D is 1 for a fetch only with CR4.SMEP or (PAE paging and) EFER.NXE set
    assert fetch_fault(tables(), 0x6000, nx_enabled, smep) == code


def test_smep_denies_supervisor_fetches_from_user_pages():
    # SDM 4.6.1: with CR4.SMEP, a supervisor fetch from a page user-accessible at every level
    assert fetch_fault(tables(), 0x5000, False, True, user=False) == 0x11
    assert walk(tables(), 0x5000, fetch=True) == 0x80000  # no SMEP: allowed


def test_reads_cross_pages():
    mem = tables()
    read = lambda a, n: bytes(mem[a:a + n])  # noqa: E731
    struct.pack_into("<Q", mem, PT + 8 * 6, 0x90000 | ALL)
    mem[0x80FFE:0x81000] = b"xy"
    mem[0x90000:0x90002] = b"zw"
    assert read_linear(read, PML4, CR0_WP, 0x5FFE, 4) == b"xyzw"


def test_writes_cross_pages_and_fault_before_any_byte_lands():
    mem = tables()
    read = lambda a, n: bytes(mem[a:a + n])  # noqa: E731

    def write(a, d):
        mem[a:a + len(d)] = d

    struct.pack_into("<Q", mem, PT + 8 * 6, 0x90000 | ALL)
    write_linear(read, write, PML4, CR0_WP, 0x5FFE, b"1234")
    assert mem[0x80FFE:0x81000] == b"12" and mem[0x90000:0x90002] == b"34"
    struct.pack_into("<Q", mem, PT + 8 * 6, 0x90000 | PTE_P)  # the second page read-only
    with pytest.raises(PageFault) as caught:
        write_linear(read, write, PML4, CR0_WP, 0x5FFE, b"abcd")
    assert caught.value.linear == 0x6000 and caught.value.error_code == 0x3
    assert mem[0x80FFE:0x81000] == b"12"  # nothing of the store landed
