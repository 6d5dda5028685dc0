"""One iced-x86 sweep over a guest's executable sections that swaps the instructions this KVM
cannot run (cpuid.py, traps.py) for 2-byte ones that exit to vlbr; data is never touched."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from iced_x86 import Decoder, Instruction

# Code -> (first byte of the 2-byte original, replacement): the first byte rules out prefixed forms.
Replacements = Mapping[int, tuple[int, bytes]]


def patch_instructions(data: bytes, base: int, ranges: Iterable[tuple[int, int]],
                       replacements: Replacements) -> tuple[bytes, dict[int, Instruction]]:
    """data (loaded at base) with every replaced instruction inside ranges swapped; the
    originals by guest address."""
    out = bytearray(data)
    sites: dict[int, Instruction] = {}
    for start, end in ranges:
        lo, hi = max(start, base) - base, min(end, base + len(data)) - base
        if lo >= hi:
            continue
        for insn in Decoder(64, data[lo:hi], ip=base + lo):
            swap = replacements.get(insn.code)
            at = insn.ip - base
            if swap is not None and insn.len == 2 and data[at] == swap[0]:
                out[at:at + 2] = swap[1]
                sites[insn.ip] = insn
    return bytes(out), sites
