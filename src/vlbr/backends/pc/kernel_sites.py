"""Where in a vmlinux the instructions vlbr performs for the guest can start: RDMSR, WRMSR
(routed to vlbr's MSR models), RDTSC, RDTSCP (virtual time), RDPMC (vlbr's PMU), XSETBV (vlbr
tracks XCR0, which unicorn cannot read back), IRET and SYSRET (CPL changes). unicorn cannot hook them,
so the machine traps these addresses. Linux patches its text at boot (alternatives), so the
replacements in .altinstructions count at the sites they may be copied to
(arch/x86/include/asm/alternative.h struct alt_instr; arch/x86/kernel/alternative.c)."""

from __future__ import annotations

import io
import struct

from vlbr.backends.software.codewatch import candidate_starts, pattern_offsets

RDMSR, WRMSR, RDTSC, RDTSCP = b"\x0f\x32", b"\x0f\x30", b"\x0f\x31", b"\x0f\x01\xf9"
XSETBV, RDPMC = b"\x0f\x01\xd1", b"\x0f\x33"
IRET, SYSRET = b"\xcf", b"\x0f\x07"  # CPL changes QEMU performs: the PMU counts per CPL
TRAPPED = (RDMSR, WRMSR, RDTSC, RDTSCP, XSETBV, RDPMC, IRET, SYSRET)
SHF_EXECINSTR = 0x4
ALT_INSTR = struct.Struct("<iiHBB")  # instr_offset, repl_offset, cpuid, instrlen, replacementlen


def _starts(data: bytes, base: int) -> set[int]:
    return candidate_starts(data, base, pattern_offsets(data, TRAPPED))


def trap_sites(elf: bytes) -> set[int]:
    """Virtual addresses where a trapped instruction may start in the running kernel."""
    from elftools.elf.elffile import ELFFile
    f = ELFFile(io.BytesIO(elf))
    return text_sites(f) | patched_sites(f)


def text_sites(f) -> set[int]:
    """Sites in the executable sections as loaded (an elftools ELFFile)."""
    sites: set[int] = set()
    for section in f.iter_sections():
        if section["sh_flags"] & SHF_EXECINSTR and section["sh_type"] == "SHT_PROGBITS":
            sites |= _starts(section.data(), section["sh_addr"])
    return sites


def patched_sites(f) -> set[int]:
    """Sites that alternatives may create when Linux patches its text."""
    alternatives = f.get_section_by_name(".altinstructions")
    replacements = f.get_section_by_name(".altinstr_replacement")
    if alternatives is None or replacements is None:
        return set()
    return _alternative_sites(alternatives, replacements)


def _alternative_sites(alternatives, replacements) -> set[int]:
    table, base = alternatives.data(), alternatives["sh_addr"]
    code, code_base = replacements.data(), replacements["sh_addr"]
    sites: set[int] = set()
    for at in range(0, len(table) - ALT_INSTR.size + 1, ALT_INSTR.size):
        instr, repl, _, _, length = ALT_INSTR.unpack_from(table, at)
        site, source = base + at + instr, base + at + 4 + repl - code_base
        if 0 <= source and source + length <= len(code):
            sites |= _starts(code[source:source + length], site)
    return sites
