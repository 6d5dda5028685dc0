"""The shared CPUID corpus (../shared/corpus) and its INDEX.md expectations, for every test."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# $VLBR_CORPUS, else beside the checkout as the project lays it out (../shared/corpus).
def _find_corpus() -> Path:
    if os.environ.get("VLBR_CORPUS"):
        return Path(os.environ["VLBR_CORPUS"]).resolve()
    return (REPO.parent / "shared" / "corpus").resolve()


CORPUS = _find_corpus()
INSTLATX64 = CORPUS / "instlatx64"
LIBVIRT = CORPUS / "libvirt"
FIRECRACKER = CORPUS / "firecracker-guest-views"
CPUID_RAW_DUMP = CORPUS / "cpuid-tool-raw-amd-epyc-kvm-guest.txt"
INDEX = CORPUS / "INDEX.md"


@dataclass(frozen=True)
class IndexRow:
    """One row of INDEX.md: a kind of logical CPU in one instlatx64 dump."""

    file: str
    cpu: str
    cpus: int
    arch_lbr: bool
    leaf_0x1c: tuple[int, int, int] | None  # EAX, EBX, ECX; None for '-'
    xss_lbr: bool
    comp15_size: int | None

    @property
    def path(self) -> Path:
        return INSTLATX64 / self.file


def index_rows() -> list[IndexRow]:
    """The rows of INDEX.md; none without a corpus (the tests that need it then skip)."""
    if not INDEX.is_file():
        return []
    rows = []
    for line in INDEX.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 7 or not cells[0].endswith(".txt"):
            continue
        name, cpu, cpus, arch, leaf, xss, size = cells
        rows.append(IndexRow(
            name, cpu, int(cpus), arch == "yes",
            None if leaf == "-" else tuple(int(x, 16) for x in leaf.split("-")),
            xss == "yes", None if size == "-" else int(size)))
    return rows


def all_dumps() -> list[Path]:
    """Every CPUID file in the corpus (instlatx64, libvirt, firecracker, cpuid -r)."""
    files = sorted(INSTLATX64.glob("*.txt")) + sorted(LIBVIRT.glob("*.xml"))
    files += sorted(FIRECRACKER.glob("*.json")) + [CPUID_RAW_DUMP]
    return files


def aida_dumps() -> list[Path]:
    return sorted(INSTLATX64.glob("*.txt"))


def has_corpus() -> bool:
    return INDEX.is_file()
