"""The zero page a 64-bit Linux entry reads (arch/x86/include/uapi/asm/bootparam.h,
Documentation/arch/x86/zero-page.rst): the setup header, command line, initrd and e820 map."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .bzimage import SetupHeader

ZERO_PAGE_SIZE = 0x1000
SETUP_HEADER_AT = 0x1F1
TYPE_OF_LOADER = 0x210  # 0xFF: a boot loader with no assigned id
LOADFLAGS = 0x211
LOADED_HIGH = 0x01
RAMDISK_IMAGE, RAMDISK_SIZE, CMD_LINE_PTR = 0x218, 0x21C, 0x228
EXT_RAMDISK_IMAGE, EXT_RAMDISK_SIZE, EXT_CMD_LINE_PTR = 0x0C0, 0x0C4, 0x0C8
E820_ENTRIES, E820_TABLE, E820_MAX = 0x1E8, 0x2D0, 128
E820_ENTRY = struct.Struct("<QQI")
E820_RAM, E820_RESERVED = 1, 2


@dataclass(frozen=True)
class E820Entry:
    addr: int
    size: int
    kind: int


def zero_page(header: SetupHeader, cmdline_at: int, initrd_at: int, initrd_size: int,
              e820: list[E820Entry]) -> bytes:
    """boot_params for the 64-bit entry: the image's own header, our loader's fields on top."""
    if len(e820) > E820_MAX:
        raise ValueError(f"{len(e820)} e820 entries; the zero page holds {E820_MAX}")
    page = bytearray(ZERO_PAGE_SIZE)
    page[SETUP_HEADER_AT:SETUP_HEADER_AT + len(header.raw)] = header.raw
    page[TYPE_OF_LOADER] = 0xFF
    page[LOADFLAGS] |= LOADED_HIGH
    _split(page, CMD_LINE_PTR, EXT_CMD_LINE_PTR, cmdline_at)
    _split(page, RAMDISK_IMAGE, EXT_RAMDISK_IMAGE, initrd_at)
    _split(page, RAMDISK_SIZE, EXT_RAMDISK_SIZE, initrd_size)
    page[E820_ENTRIES] = len(e820)
    for i, entry in enumerate(e820):
        E820_ENTRY.pack_into(page, E820_TABLE + i * E820_ENTRY.size, entry.addr, entry.size,
                             entry.kind)
    return bytes(page)


def _split(page: bytearray, low_at: int, high_at: int, value: int) -> None:
    """A 64-bit value as the header's 32-bit field plus its ext_ field's high half."""
    struct.pack_into("<I", page, low_at, value & 0xFFFFFFFF)
    struct.pack_into("<I", page, high_at, value >> 32)


def read_e820(page: bytes) -> list[E820Entry]:
    return [E820Entry(*E820_ENTRY.unpack_from(page, E820_TABLE + i * E820_ENTRY.size))
            for i in range(page[E820_ENTRIES])]
