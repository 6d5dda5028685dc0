"""Reader of AIDA64 / InstLatx64 CPUID dumps (`CPUID LLLLLLLL: EAX-EBX-ECX-EDX [SL nn]`)."""

from __future__ import annotations

import re

from .builder import CpusBuilder
from .cpus import LogicalCpu

HEX8 = r"[0-9A-Fa-f]{8}"
# A data line: "CPUID", a hex leaf, then ':' or registers. "CPUID CPU Name : ..." and
# "CPUID Revision : ..." are not (no hex word before the colon).
DATA = re.compile(r"^\s*CPUID\s+([0-9A-Fa-f]+)(?=\s*:|\s+[0-9A-Fa-f])\s*:?\s*(.*)$")
# Four registers, then nothing or "[...]" decorations: a fifth value is no AIDA64 line.
REGS = re.compile(rf"^({HEX8})[-\s]+({HEX8})[-\s]+({HEX8})[-\s]+({HEX8})\s*(\[.*)?$")
SUBLEAF = re.compile(r"\[SL\s+([0-9A-Fa-f]{1,8})\]")
# Headers that start one logical CPU's CPUID section.
CPU_HEADER = re.compile(r"^\s*-*\[\s*(?:CPUID Registers\s*/\s*)?Logical CPU #(\d+)\s*\]"
                        r"|^\s*CPUID Registers \(CPU #(\d+)[^)]*\)"
                        r"|^\s*CPU (\d+):\s*$")
# Any other "------[ Name ]------" header ends the CPUID section.
OTHER_HEADER = re.compile(r"^\s*-+\[.*\]-+\s*$")


def parse(text: str, source: str) -> list[LogicalCpu]:
    out = CpusBuilder(source)
    for number, line in enumerate(text.splitlines(), start=1):
        header = CPU_HEADER.match(line)
        if header:
            out.start_cpu(int(next(g for g in header.groups() if g is not None)), number)
            continue
        if OTHER_HEADER.match(line):
            out.current = None
            continue
        data = DATA.match(line)
        if data is None:
            continue
        if len(data.group(1)) != 8:
            raise out.error(number, f"CPUID {data.group(1)}: the leaf must be 8 hex digits")
        regs = REGS.match(data.group(2))
        if regs is None:
            raise out.error(number, f"CPUID {data.group(1)}: expected four 8-digit hex registers "
                                    f"and optional [tags], got {data.group(2)[:60]!r}")
        leaf = int(data.group(1), 16)
        _add_line(out, leaf, tuple(int(regs.group(i), 16) for i in range(1, 5)),
                  regs.group(5) or "", number)
    return out.build()


def _add_line(out: CpusBuilder, leaf: int, regs: tuple[int, int, int, int],
              decorations: str, number: int) -> None:
    tag = SUBLEAF.search(decorations)
    rows = out.rows() if out.current is not None else None
    # Without a header per CPU, leaf 0 starting again means the next logical CPU.
    if rows is None or (leaf == 0 and tag is None and (0, 0) in rows):
        out.start_cpu(out.next_index(), None)
        rows = out.rows()
    if tag is not None:
        subleaf = int(tag.group(1), 16)
    else:
        # Untagged repeats of one leaf are its subleaves 0, 1, 2... in order.
        subleaf = out.next_subleaf(leaf)
    out.add(leaf, subleaf, regs, number)
