"""The live host's CPUID through /dev/cpu/N/cpuid (pread 16 bytes at leaf | subleaf << 32)."""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path

from vlbr.arch.cpuid import CpuidTable, Registers
from vlbr.errors import CpuidFormatError

from .cpus import LogicalCpu

DEV_CPU = Path("/dev/cpu")
# Ranges past the basic one, as the cpuid tool walks them: Xeon Phi, two hypervisor
# ranges, extended, Transmeta, Centaur. A range whose base answers a maximum outside it
# is read at its base only.
RANGE_BASES = (0x20000000, 0x40000000, 0x40000100, 0x80000000, 0x80860000, 0xC0000000)
RANGE_LIMIT = 0xFF  # leaves per range read at most (guards against garbage maxima)
SUBLEAF_LIMIT = 64


def live_host_cpus(root: str | Path = DEV_CPU) -> list[LogicalCpu]:
    """Every online logical CPU's CPUID, enumerated like the Debian cpuid tool does."""
    root = Path(root)
    try:
        numbers = sorted(int(p.name) for p in root.iterdir() if re.fullmatch(r"\d+", p.name))
    except OSError as err:
        raise CpuidFormatError(str(root), None, f"cannot list CPUs: {err.strerror or err}") from None
    if not numbers:
        raise CpuidFormatError(str(root), None, "no N/cpuid devices (is the cpuid module loaded?)")
    return [LogicalCpu(n, read_device(root / str(n) / "cpuid")) for n in numbers]


def read_device(path: str | Path) -> CpuidTable:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as err:
        raise CpuidFormatError(str(path), None, f"cannot open: {err.strerror or err}") from None
    try:
        return enumerate_cpuid(lambda leaf, sub: _pread(fd, str(path), leaf, sub))
    finally:
        os.close(fd)


def _pread(fd: int, source: str, leaf: int, subleaf: int) -> Registers:
    try:
        data = os.pread(fd, 16, leaf | subleaf << 32)
    except OSError as err:
        raise CpuidFormatError(source, None, f"CPUID ({leaf:#x}, {subleaf:#x}): "
                                             f"{err.strerror or err}") from None
    if len(data) != 16:
        raise CpuidFormatError(source, None, f"CPUID ({leaf:#x}, {subleaf:#x}): read {len(data)} "
                                             f"bytes, expected 16")
    return Registers(*struct.unpack("<4I", data))


def enumerate_cpuid(cpuid) -> CpuidTable:
    """Query every leaf and the subleaves each indexed leaf enumerates; cpuid(leaf, sub) -> Registers."""
    rows: dict[tuple[int, int], Registers] = {}
    top = cpuid(0, 0).eax
    for leaf in range(0, min(top, RANGE_LIMIT) + 1):
        for sub in _subleaves(leaf, cpuid):
            rows[(leaf, sub)] = cpuid(leaf, sub)
    for base in RANGE_BASES:
        top = cpuid(base, 0).eax
        last = top if base <= top <= base + RANGE_LIMIT else base
        for leaf in range(base, last + 1):
            for sub in _subleaves(leaf, cpuid):
                rows[(leaf, sub)] = cpuid(leaf, sub)
    return CpuidTable(rows)


def _subleaves(leaf: int, cpuid) -> list[int]:
    """Subleaf numbers worth asking, from what subleaf 0 (or a main leaf) says."""
    first = cpuid(leaf, 0)
    if leaf in (0x7, 0x14, 0x17, 0x18, 0x1D, 0x20, 0x23, 0x24):
        return list(range(0, min(first.eax, SUBLEAF_LIMIT - 1) + 1))  # EAX: max subleaf
    if leaf == 0xD:
        xss = cpuid(0xD, 1)
        mask = first.eax | first.edx << 32 | xss.ecx | xss.edx << 32
        return [0, 1] + [i for i in range(2, SUBLEAF_LIMIT) if mask >> i & 1]
    if leaf in (0xF, 0x10):  # bitmap of valid resource IDs: EDX for 0xF, EBX for 0x10
        bits = first.edx if leaf == 0xF else first.ebx
        return [0] + [i for i in range(1, 32) if bits >> i & 1]
    # Cache descriptors until type 0 (SDM: leaf 4 "no more caches"). Debian's `cpuid -r`, whose
    # rows this enumeration reproduces, lists leaf 4's all-zero terminator (as for 0xB/0x1F)
    # and stops before AMD's 0x8000001D terminator; an AMD CPU without leaf 4 data answers
    # subleaf 0 with zeros, which both list alone.
    if leaf == 0x4:
        return _until(leaf, cpuid, lambda r: r.eax & 0x1F == 0, include_last=True)
    if leaf == 0x8000001D:
        return _until(leaf, cpuid, lambda r: r.eax & 0x1F == 0, include_last=False)
    if leaf in (0xB, 0x1F):  # topology levels until level type 0 (that one included)
        return _until(leaf, cpuid, lambda r: (r.ecx >> 8) & 0xFF == 0, include_last=True)
    if leaf == 0x1B:  # PCONFIG: 0, then targets until type 0 (that one included)
        return [0] + _until(0x1B, cpuid, lambda r: r.eax & 0xFFF == 0, include_last=True, start=1)
    if leaf == 0x12:  # SGX: 0, 1, then EPC sections until type 0
        return [0, 1] + _until(0x12, cpuid, lambda r: r.eax & 0xF == 0, include_last=True, start=2)
    return [0]


def _until(leaf, cpuid, done, include_last: bool, start: int = 0) -> list[int]:
    subs = []
    for sub in range(start, start + SUBLEAF_LIMIT):
        r = cpuid(leaf, sub)
        if done(r):
            if include_last or sub == start == 0:
                subs.append(sub)
            break
        subs.append(sub)
    return subs
