"""Reads a CPUID file of any supported format, detecting the format from its content."""

from __future__ import annotations

import json
from pathlib import Path

from vlbr.errors import CpuidFormatError

from . import aida64, cpuid_raw, firecracker, libvirt, vlbr_json
from .cpus import LogicalCpu

FORMATS = ("aida64", "cpuid-raw", "libvirt", "firecracker", "vlbr-json")
# 25 times the largest real dump (a 384-CPU Turin, 2.6 MB): enough for any host, and a
# bound on memory when the path is /dev/zero, a FIFO or a runaway generator.
MAX_DUMP_BYTES = 64 << 20


def read_cpuid_file(path: str | Path) -> list[LogicalCpu]:
    """Every logical CPU in the file; CpuidFormatError for anything unreadable."""
    source = str(path)
    try:
        with open(path, "rb") as f:
            # One byte past the limit tells "too large" from "exactly the limit".
            data = f.read(MAX_DUMP_BYTES + 1)
    except OSError as err:
        raise CpuidFormatError(source, None, f"cannot read: {err.strerror or err}") from None
    return parse_cpuid_bytes(data, source)


def parse_cpuid_bytes(data: bytes, source: str = "<bytes>") -> list[LogicalCpu]:
    if len(data) > MAX_DUMP_BYTES:
        raise CpuidFormatError(source, None, f"larger than {MAX_DUMP_BYTES >> 20} MiB; "
                                             f"not a CPUID dump")
    if not data.strip():
        raise CpuidFormatError(source, None, "empty file")
    text = data.decode("utf-8", errors="replace")
    kind = detect_format(text)
    if kind == "libvirt":
        return libvirt.parse(text, source)
    if kind == "cpuid-raw":
        return cpuid_raw.parse(text, source)
    if kind == "aida64":
        return aida64.parse(text, source)
    doc = _load_json(text, source)
    if vlbr_json.looks_like(doc):
        return vlbr_json.parse(doc, source)
    if firecracker.looks_like(doc):
        return firecracker.parse(doc, source)
    raise CpuidFormatError(source, None, "JSON is neither vlbr's {'cpus': [...]} nor a Firecracker "
                                         "fingerprint (guest_cpu_config.cpuid_modifiers)")


def detect_format(text: str) -> str:
    """'libvirt', 'json', 'cpuid-raw' or 'aida64' (the lenient fallback) from the content."""
    if libvirt.looks_like(text):
        return "libvirt"
    if text.lstrip().startswith(("{", "[")):
        return "json"
    if cpuid_raw.looks_like(text):
        return "cpuid-raw"
    return "aida64"


def _load_json(text: str, source: str) -> object:
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as err:
        raise CpuidFormatError(source, getattr(err, "lineno", None), f"malformed JSON: {err}") from None
