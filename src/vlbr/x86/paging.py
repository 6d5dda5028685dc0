"""4-level page walks (SDM Vol. 3 4.5) from a linear address to a physical one, or the #PF
error code (SDM 4.7) a CPU would push: unicorn reads physical memory only, and its CR2 and
error code are not what the guest's handler must see."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Callable

from vlbr.arch.x86 import (CR0_WP, PF_FETCH, PF_PRESENT, PF_RESERVED, PF_USER, PF_WRITE,
                           PTE_ADDRESS, PTE_NX, PTE_P, PTE_PS, PTE_RW, PTE_US)

LEVELS = (39, 30, 21, 12)  # PML4, PDPT, PD, PT index shifts
PAGE_SIZE_AT = {30: 1 << 30, 21: 1 << 21}  # PS is allowed in a PDPTE and a PDE
RESERVED_LARGE = {30: ((1 << 30) - 1) & ~0x1FFF, 21: ((1 << 21) - 1) & ~0x1FFF}  # PAT at 12


@dataclass(frozen=True)
class Access:
    write: bool = False
    user: bool = False
    fetch: bool = False


class PageFault(Exception):
    """The #PF a CPU raises for this access: CR2 and the error code."""

    def __init__(self, linear: int, error_code: int):
        super().__init__(f"#PF at {linear:#x} (error code {error_code:#x})")
        self.linear = linear
        self.error_code = error_code


def translate(read_phys: Callable[[int, int], bytes], cr3: int, cr0: int, linear: int,
              access: Access = Access(), nx_enabled: bool = True, smep: bool = False) -> int:
    """The physical address of `linear`, or PageFault. Permissions combine over every level
    (SDM 4.6: writable/user only if every entry allows it); CR0.WP applies to supervisor
    writes; NX only with EFER.NXE (nx_enabled); CR4.SMEP (smep) denies supervisor fetches
    from user pages (SDM 4.6.1). The error code's I/D bit needs one of them (SDM 4.7)."""
    fetch_bit = nx_enabled or smep
    table = cr3 & PTE_ADDRESS
    writable = user = executable = True
    for shift in LEVELS:
        entry = struct.unpack("<Q", read_phys(table + 8 * (linear >> shift & 511), 8))[0]
        if not entry & PTE_P:
            raise PageFault(linear, _code(access, False, fetch_bit))
        if not nx_enabled and entry & PTE_NX:
            raise PageFault(linear, _code(access, True, fetch_bit) | PF_RESERVED)
        writable &= bool(entry & PTE_RW)
        user &= bool(entry & PTE_US)
        executable &= not (nx_enabled and entry & PTE_NX)
        if shift in PAGE_SIZE_AT and entry & PTE_PS:
            if entry & RESERVED_LARGE[shift]:
                raise PageFault(linear, _code(access, True, fetch_bit) | PF_RESERVED)
            size = PAGE_SIZE_AT[shift]
            _check(linear, access, (writable, user, executable), cr0, smep, fetch_bit)
            return (entry & PTE_ADDRESS & ~(size - 1)) | (linear & (size - 1))
        table = entry & PTE_ADDRESS
    _check(linear, access, (writable, user, executable), cr0, smep, fetch_bit)
    return table | (linear & 0xFFF)


def _check(linear: int, access: Access, rights: tuple[bool, bool, bool], cr0: int, smep: bool,
           fetch_bit: bool) -> None:
    writable, user, executable = rights
    denied = ((access.user and not user)
              or (access.write and not writable and (access.user or cr0 & CR0_WP))
              or (access.fetch and not executable)
              or (access.fetch and smep and user and not access.user))
    if denied:
        raise PageFault(linear, _code(access, True, fetch_bit))


def _code(access: Access, present: bool, fetch_bit: bool) -> int:
    return ((PF_PRESENT if present else 0) | (PF_WRITE if access.write else 0)
            | (PF_USER if access.user else 0) | (PF_FETCH if access.fetch and fetch_bit else 0))


def _pages(linear: int, size: int):
    """(linear, offset, length) pieces of [linear, linear+size) that stay within one page."""
    offset = 0
    while offset < size:
        chunk = min(size - offset, 0x1000 - ((linear + offset) & 0xFFF))
        yield linear + offset, offset, chunk
        offset += chunk


def read_linear(read_phys: Callable[[int, int], bytes], cr3: int, cr0: int, linear: int,
                size: int) -> bytes:
    """size bytes from linear memory, page by page (a read may cross a page boundary)."""
    return b"".join(read_phys(translate(read_phys, cr3, cr0, at), chunk)
                    for at, _, chunk in _pages(linear, size))


def write_linear(read_phys: Callable[[int, int], bytes], write_phys: Callable[[int, bytes], None],
                 cr3: int, cr0: int, linear: int, data: bytes) -> None:
    """Store data at linear, page by page; every page is checked for a supervisor write
    before any byte lands, so a faulting store leaves memory as it was."""
    pieces = [(translate(read_phys, cr3, cr0, at, Access(write=True)), offset, chunk)
              for at, offset, chunk in _pages(linear, len(data))]
    for physical, offset, chunk in pieces:
        write_phys(physical, data[offset:offset + chunk])
