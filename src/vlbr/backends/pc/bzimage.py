"""A Linux/x86 bzImage: its setup header (Documentation/arch/x86/boot.rst) and the vmlinux ELF
inside it, decompressed as the payload's magic says (the kernel's own decompressors,
arch/x86/boot/compressed/misc.c; legacy LZ4 is lib/decompress_unlz4.c's framing)."""

from __future__ import annotations

import lzma
import struct
import zlib
from dataclasses import dataclass

from vlbr.errors import VlbrError

HEADER_MAGIC = b"HdrS"
BOOT_FLAG = 0xAA55
MIN_VERSION = 0x020C  # payload_offset/length and the 64-bit entry exist from 2.12 on
LZ4_LEGACY_MAGIC = 0x184C2102
LZ4_LEGACY_BLOCK = 8 << 20  # each legacy block decompresses to at most 8 MiB
ELF_MAGIC = b"\x7fELF"


class KernelImageError(VlbrError):
    """Not a bzImage vlbr can boot, or its payload does not decompress."""


@dataclass(frozen=True)
class SetupHeader:
    """The fields of the setup header a boot loader reads (offsets from boot.rst)."""
    setup_sects: int
    version: int
    loadflags: int
    cmdline_size: int
    payload_offset: int
    payload_length: int
    init_size: int
    pref_address: int
    xloadflags: int
    raw: bytes  # the header bytes from 0x1F1 to its end, copied into boot_params

    @property
    def protected_mode_offset(self) -> int:
        return (self.setup_sects + 1) * 512


def setup_header(image: bytes) -> SetupHeader:
    """The header of a bzImage; KernelImageError when it is not one (or too old)."""
    if len(image) < 0x270 or image[0x202:0x206] != HEADER_MAGIC:
        raise KernelImageError("not a bzImage (no HdrS setup header at 0x202)")
    if struct.unpack_from("<H", image, 0x1FE)[0] != BOOT_FLAG:
        raise KernelImageError("not a bzImage (boot_flag is not 0xAA55)")
    version = struct.unpack_from("<H", image, 0x206)[0]
    if version < MIN_VERSION:
        raise KernelImageError(f"boot protocol {version >> 8}.{version & 0xFF} is older than 2.12")
    end = 0x202 + image[0x201] + 2  # the jump at 0x200 skips to the end of the header
    return SetupHeader(setup_sects=image[0x1F1] or 4, version=version, loadflags=image[0x211],
                       cmdline_size=struct.unpack_from("<I", image, 0x238)[0],
                       payload_offset=struct.unpack_from("<I", image, 0x248)[0],
                       payload_length=struct.unpack_from("<I", image, 0x24C)[0],
                       init_size=struct.unpack_from("<I", image, 0x260)[0],
                       pref_address=struct.unpack_from("<Q", image, 0x258)[0],
                       xloadflags=struct.unpack_from("<H", image, 0x236)[0],
                       raw=bytes(image[0x1F1:end]))


def vmlinux(image: bytes) -> bytes:
    """The uncompressed kernel ELF inside a bzImage."""
    header = setup_header(image)
    start = header.protected_mode_offset + header.payload_offset
    payload = image[start:start + header.payload_length]
    if len(payload) != header.payload_length:
        raise KernelImageError(f"payload truncated ({len(payload)} of {header.payload_length} bytes)")
    elf = _decompress(payload)
    if not elf.startswith(ELF_MAGIC):
        raise KernelImageError("the payload did not decompress to an ELF file")
    return elf


def _decompress(payload: bytes) -> bytes:
    try:
        # The build appends the uncompressed size (size_append): a decompressor object leaves
        # it in unused_data instead of calling it trailing garbage.
        if payload.startswith(b"\x1f\x8b"):
            return zlib.decompressobj(wbits=31).decompress(payload)
        if payload.startswith(b"\xfd7zXZ\x00"):
            return lzma.LZMADecompressor(lzma.FORMAT_XZ).decompress(payload)
        if payload.startswith(b"\x5d\x00\x00"):
            return lzma.LZMADecompressor(lzma.FORMAT_ALONE).decompress(payload)
        if payload[:4] == struct.pack("<I", LZ4_LEGACY_MAGIC):
            return _unlz4_legacy(payload)
    except (zlib.error, EOFError, lzma.LZMAError, ValueError) as err:
        raise KernelImageError(f"payload does not decompress: {err}") from None
    raise KernelImageError(f"payload compression {payload[:6].hex()} is not one vlbr reads "
                           "(gzip, xz, lzma, lz4)")


def _unlz4_legacy(payload: bytes) -> bytes:
    """Legacy LZ4 framing: a magic, then (le32 size, block) pairs; the kernel's build appends
    the uncompressed size as a final le32 (arch/x86/boot/compressed/Makefile, size_append)."""
    import lz4.block

    out = bytearray()
    at = 4
    while len(payload) - at > 4:
        size = struct.unpack_from("<I", payload, at)[0]
        at += 4
        if size == LZ4_LEGACY_MAGIC:  # concatenated streams restart with the magic
            continue
        block = payload[at:at + size]
        if len(block) != size:
            raise ValueError(f"lz4 block at {at - 4} truncated")
        out += lz4.block.decompress(block, uncompressed_size=LZ4_LEGACY_BLOCK)
        at += size
    if len(payload) - at == 4 and struct.unpack_from("<I", payload, at)[0] != len(out):
        raise ValueError("decompressed size differs from the size the image records")
    return bytes(out)


@dataclass(frozen=True)
class Segment:
    """A PT_LOAD segment of vmlinux at its physical address (memsz beyond data is zeroed)."""
    paddr: int
    data: bytes
    memsz: int


def segments(elf: bytes) -> tuple[int, list[Segment]]:
    """vmlinux's physical entry point (startup_64) and its loadable segments."""
    import io

    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    try:
        f = ELFFile(io.BytesIO(elf))
        if f["e_machine"] != "EM_X86_64":
            raise KernelImageError(f"vmlinux is for {f['e_machine']}, not x86-64")
        loads = [Segment(s["p_paddr"], s.data(), s["p_memsz"])
                 for s in f.iter_segments() if s["p_type"] == "PT_LOAD"]
    except ELFError as err:
        raise KernelImageError(f"vmlinux is not a readable ELF file: {err}") from None
    return f["e_entry"], loads
