"""Reader and writer of Debian `cpuid -r` raw output (`0xLLLLLLLL 0xSS: eax=0x... ...`)."""

from __future__ import annotations

import re

from .builder import CpusBuilder
from .cpus import LogicalCpu

HEADER = re.compile(r"^CPU(?:\s+(\d+))?:\s*$")
ROW = re.compile(r"^\s*0x([0-9a-fA-F]{1,8})\s+0x([0-9a-fA-F]{1,8}):"
                 r"\s*eax=0x([0-9a-fA-F]{8})\s+ebx=0x([0-9a-fA-F]{8})"
                 r"\s+ecx=0x([0-9a-fA-F]{8})\s+edx=0x([0-9a-fA-F]{8})\s*$")
# Enough of a row to tell this format from others.
ROW_START = re.compile(r"^\s*0x[0-9a-fA-F]{1,8}\s+0x[0-9a-fA-F]{1,8}:\s*eax=", re.MULTILINE)


def looks_like(text: str) -> bool:
    return ROW_START.search(text[:20000]) is not None


def parse(text: str, source: str) -> list[LogicalCpu]:
    out = CpusBuilder(source)
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        header = HEADER.match(line.strip())
        if header:
            index = int(header.group(1)) if header.group(1) is not None else out.next_index()
            out.start_cpu(index, number)
            continue
        row = ROW.match(line)
        if row is None:
            raise out.error(number, f"not a `cpuid -r` line (want '0xLEAF 0xSUB: eax=0x... ebx=0x... "
                                    f"ecx=0x... edx=0x...' with 8 hex digits each): {line.strip()[:60]!r}")
        leaf, sub, *regs = (int(g, 16) for g in row.groups())
        out.add(leaf, sub, tuple(regs), number)
    return out.build()


def write_cpuid_raw(cpus: list[LogicalCpu]) -> str:
    """`cpuid -r` text for these CPUs, readable by `cpuid -f FILE` and by parse()."""
    lines = []
    for cpu in cpus:
        lines.append(f"CPU {cpu.index}:")
        for (leaf, sub), r in cpu.table.items():
            lines.append(f"   0x{leaf:08x} 0x{sub:02x}: eax=0x{r.eax:08x} ebx=0x{r.ebx:08x} "
                         f"ecx=0x{r.ecx:08x} edx=0x{r.edx:08x}")
    return "\n".join(lines) + "\n"
