"""Reads a CPUID file of any supported format, detecting the format from its content."""

from __future__ import annotations

from pathlib import Path

from vlbr.errors import CpuidFormatError

from . import aida64
from .cpus import LogicalCpu


def read_cpuid_file(path: str | Path) -> list[LogicalCpu]:
    """Every logical CPU in the file; CpuidFormatError for anything unreadable."""
    source = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise CpuidFormatError(source, None, f"cannot read: {err.strerror or err}") from None
    return parse_cpuid_bytes(data, source)


def parse_cpuid_bytes(data: bytes, source: str = "<bytes>") -> list[LogicalCpu]:
    if not data.strip():
        raise CpuidFormatError(source, None, "empty file")
    text = data.decode("utf-8", errors="replace")
    return detect(text).parse(text, source)


def detect(text: str):
    """The reader module for this text; AIDA64 is the lenient fallback."""
    return aida64
