"""The zero page (arch/x86/include/uapi/asm/bootparam.h; Documentation/arch/x86/boot.rst,
zero-page.rst): the image's header at 0x1F1 and the loader's fields where Linux reads them."""

from __future__ import annotations

import gzip
import struct

import pytest

from vlbr.backends.pc.boot_params import (E820_MAX, E820_RAM, E820_RESERVED, E820Entry,
                                          read_e820, zero_page)
from vlbr.backends.pc.bzimage import setup_header

from test_bzimage import FAKE_ELF, bzimage

HEADER = setup_header(bzimage(gzip.compress(FAKE_ELF)))
MAP = [E820Entry(0, 0x9FC00, E820_RAM), E820Entry(0xF0000, 0x10000, E820_RESERVED),
       E820Entry(0x100000, 0x1FF00000, E820_RAM)]


def test_loader_fields_land_at_bootparam_h_offsets():
    page = zero_page(HEADER, cmdline_at=0x20000, initrd_at=0x1_2000_0000, initrd_size=0x1234,
                     e820=MAP)
    assert len(page) == 4096
    assert page[0x202:0x206] == b"HdrS"  # setup_header copied at 0x1F1
    assert page[0x210] == 0xFF and page[0x211] & 0x01  # type_of_loader, LOADED_HIGH
    assert struct.unpack_from("<I", page, 0x228)[0] == 0x20000  # cmd_line_ptr
    # A ramdisk above 4 GiB: the low half in ramdisk_image, the high in ext_ramdisk_image.
    assert struct.unpack_from("<I", page, 0x218)[0] == 0x2000_0000
    assert struct.unpack_from("<I", page, 0x0C0)[0] == 1
    assert struct.unpack_from("<I", page, 0x21C)[0] == 0x1234
    assert page[0x1E8] == 3 and read_e820(page) == MAP


def test_e820_beyond_the_table_is_refused():
    with pytest.raises(ValueError, match="128"):
        zero_page(HEADER, 0, 0, 0, [E820Entry(i << 20, 1 << 20, E820_RAM)
                                    for i in range(E820_MAX + 1)])
