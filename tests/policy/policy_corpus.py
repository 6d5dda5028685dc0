"""Corpus access for the policy tests: every Arch LBR dump and each of its core types."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from vlbr.host import CoreType, core_types, read_cpuid_file
from vlbr.policy import HostDescription

from corpus import INSTLATX64, has_corpus, index_rows


@lru_cache(maxsize=None)
def types_of(path: Path) -> tuple[CoreType, ...]:
    return tuple(core_types(read_cpuid_file(path)))


def arch_lbr_files() -> list[str]:
    """INDEX.md's dumps with Arch LBR (a file appears once per core type there)."""
    if not has_corpus():
        return []
    return sorted({r.file for r in index_rows() if r.arch_lbr})


def non_arch_lbr_files() -> list[str]:
    if not has_corpus():
        return []
    return sorted({r.file for r in index_rows() if not r.arch_lbr})


def host_of(core_type: CoreType) -> HostDescription:
    return HostDescription(core_type.table)


def instlat(name: str) -> Path:
    return INSTLATX64 / name
