"""bzImage parsing and payload extraction (Documentation/arch/x86/boot.rst; the decompressors
of arch/x86/boot/compressed/misc.c), on synthetic images and on Debian's real cloud kernel."""

from __future__ import annotations

import gzip
import lzma
import struct

import lz4.block
import pytest

from vlbr.backends.pc.bzimage import (LZ4_LEGACY_MAGIC, KernelImageError, segments,
                                      setup_header, vmlinux)

FAKE_ELF = b"\x7fELF" + bytes(range(256)) * 64


def bzimage(payload: bytes, version: int = 0x020F, setup_sects: int = 1) -> bytes:
    """A minimal image: boot sector + one setup sector, then the protected-mode part."""
    image = bytearray((setup_sects + 1) * 512)
    image[0x1F1] = setup_sects
    struct.pack_into("<H", image, 0x1FE, 0xAA55)
    image[0x200:0x202] = bytes([0xEB, 0x6A])  # jmp to the end of a 2.15 header
    image[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", image, 0x206, version)
    struct.pack_into("<II", image, 0x248, 16, len(payload))
    return bytes(image) + bytes(16) + payload


def size_appended(data: bytes) -> bytes:
    return struct.pack("<I", len(FAKE_ELF))  # the build's size_append


def lz4_legacy(data: bytes) -> bytes:
    out = struct.pack("<I", LZ4_LEGACY_MAGIC)
    for at in range(0, len(data), 4096):
        block = lz4.block.compress(data[at:at + 4096], store_size=False)
        out += struct.pack("<I", len(block)) + block
    return out


@pytest.mark.parametrize("compress", [
    gzip.compress,
    lambda d: lzma.compress(d, format=lzma.FORMAT_XZ) + size_appended(d),
    lambda d: lzma.compress(d, format=lzma.FORMAT_ALONE) + size_appended(d),
    lambda d: lz4_legacy(d) + size_appended(d),
], ids=["gzip", "xz", "lzma", "lz4-legacy"])
def test_every_kernel_compression_vlbr_reads(compress):
    assert vmlinux(bzimage(compress(FAKE_ELF))) == FAKE_ELF


def test_lz4_checks_the_appended_size():
    payload = lz4_legacy(FAKE_ELF) + struct.pack("<I", len(FAKE_ELF) + 1)
    with pytest.raises(KernelImageError, match="size"):
        vmlinux(bzimage(payload))


@pytest.mark.parametrize("damage, message", [
    (lambda i: i[:0x202] + b"XXXX" + i[0x206:], "HdrS"),
    (lambda i: i[:0x1FE] + b"\0\0" + i[0x200:], "0xAA55"),
    (lambda i: i[:-10], "truncated"),
    (lambda i: i[:0x206] + struct.pack("<H", 0x020B) + i[0x208:], "older than 2.12"),
])
def test_damaged_images_say_what_is_wrong(damage, message):
    with pytest.raises(KernelImageError, match=message):
        vmlinux(damage(bzimage(gzip.compress(FAKE_ELF))))


def test_unknown_compression_and_non_elf_payloads():
    with pytest.raises(KernelImageError, match="not one vlbr reads"):
        vmlinux(bzimage(b"\x28\xb5\x2f\xfd" + bytes(64)))  # zstd
    with pytest.raises(KernelImageError, match="did not decompress to an ELF"):
        vmlinux(bzimage(gzip.compress(b"not an elf")))
    with pytest.raises(KernelImageError, match="does not decompress"):
        vmlinux(bzimage(b"\x1f\x8b" + bytes(64)))


def test_debian_cloud_kernel_unpacks_to_a_bootable_vmlinux(debian_image):
    header = setup_header(debian_image)
    assert header.version >= 0x020C
    assert header.raw[0x202 - 0x1F1:0x206 - 0x1F1] == b"HdrS"
    entry, loads = segments(vmlinux(debian_image))
    # startup_64 is at the physical load address the kernel was linked for (16 MiB).
    assert entry == 0x1000000 == loads[0].paddr
    # boot.rst: the kernel needs init_size bytes from its load address, and no more.
    end = max(s.paddr + s.memsz for s in loads)
    assert end - entry <= header.init_size
    assert all(len(s.data) <= s.memsz for s in loads)
