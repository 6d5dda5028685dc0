"""The kernel addresses the PC machine traps: every RDMSR/WRMSR/RDTSC/RDTSCP start in the
text, and the sites alternatives may patch such an instruction into (struct alt_instr in
arch/x86/include/asm/alternative.h: s32 instr_offset, s32 repl_offset, u16 cpuid, u8
instrlen, u8 replacementlen, each offset relative to its own field)."""

import io

import pytest
from iced_x86 import Decoder, Mnemonic

from vlbr.backends.pc.bzimage import vmlinux
from vlbr.backends.pc.kernel_sites import (ALT_INSTR, _alternative_sites, patched_sites,
                                           text_sites, trap_sites)

TRAPPED = {Mnemonic.RDMSR, Mnemonic.WRMSR, Mnemonic.RDTSC, Mnemonic.RDTSCP}


class FakeSection(dict):
    def __init__(self, address: int, data: bytes):
        super().__init__(sh_addr=address)
        self._data = data

    def data(self) -> bytes:
        return self._data


def test_a_replacement_counts_at_the_site_it_is_copied_to():
    # ALTERNATIVE("rdtsc", "lfence; rdtsc", X86_FEATURE_LFENCE_RDTSC): the RDTSC lands 3
    # bytes into the original site, where the unpatched text has no RDTSC at all.
    table_at, site, repl_at = 0x5000, 0x1000, 0x9000
    replacement = b"\x0f\xae\xe8\x0f\x31"
    entry = ALT_INSTR.pack(site - table_at, repl_at - (table_at + 4), 0x1234, 5, 5)
    sites = _alternative_sites(FakeSection(table_at, entry), FakeSection(repl_at, replacement))
    assert site + 3 in sites and site not in sites


@pytest.fixture(scope="module")
def kernel(debian_image):
    return vmlinux(debian_image)


@pytest.fixture(scope="module")
def sites(kernel):
    return trap_sites(kernel)


def test_every_trapped_instruction_of_a_linear_disassembly_of_text_is_a_site(kernel, sites):
    from elftools.elf.elffile import ELFFile
    text = ELFFile(io.BytesIO(kernel)).get_section_by_name(".text")
    found = [i.ip for i in Decoder(64, text.data(), ip=text["sh_addr"]) if i.mnemonic in TRAPPED]
    assert len(found) > 100  # native_read_msr, the MSR-heavy drivers, rdtsc users
    assert set(found) <= sites


def test_alternatives_add_sites_the_loaded_text_does_not_have(kernel, sites):
    from elftools.elf.elffile import ELFFile
    f = ELFFile(io.BytesIO(kernel))
    new = patched_sites(f) - text_sites(f)
    assert new and new <= sites
