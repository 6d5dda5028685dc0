"""vlbr's own JSON form of CPUID tables, shaped like struct kvm_cpuid_entry2 per logical CPU."""

from __future__ import annotations

import json

from vlbr.arch.cpuid import MASK32

from .builder import CpusBuilder
from .cpus import LogicalCpu

FORMAT = "vlbr-cpuid"
VERSION = 1
FIELDS = ("function", "index", "eax", "ebx", "ecx", "edx")


def to_json(cpus: list[LogicalCpu]) -> str:
    doc = {"format": FORMAT, "version": VERSION, "cpus": [
        {"index": cpu.index, "entries": [
            {"function": e.function, "index": e.index, "eax": e.regs.eax, "ebx": e.regs.ebx,
             "ecx": e.regs.ecx, "edx": e.regs.edx} for e in cpu.table.entries()]}
        for cpu in cpus]}
    return json.dumps(doc, indent=1) + "\n"


def from_json(text: str | bytes, source: str = "<json>") -> list[LogicalCpu]:
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise CpusBuilder(source).error(getattr(err, "lineno", None), f"malformed JSON: {err}") from None
    return parse(doc, source)


def looks_like(doc: object) -> bool:
    return isinstance(doc, dict) and "cpus" in doc


def parse(doc: object, source: str) -> list[LogicalCpu]:
    out = CpusBuilder(source)
    if not isinstance(doc, dict) or not isinstance(doc.get("cpus"), list):
        raise out.error(None, "expected an object with a list 'cpus'")
    if doc.get("format", FORMAT) != FORMAT or doc.get("version", VERSION) != VERSION:
        raise out.error(None, f"format {doc.get('format')!r} version {doc.get('version')!r} "
                              f"is not {FORMAT!r} version {VERSION}")
    for n, cpu in enumerate(doc["cpus"]):
        where = f"cpus[{n}]"
        if not isinstance(cpu, dict) or not isinstance(cpu.get("entries"), list):
            raise out.error(None, f"{where} needs 'index' and a list 'entries'")
        out.start_cpu(_u32(out, cpu.get("index"), f"{where}.index"), None)
        for m, entry in enumerate(cpu["entries"]):
            if not isinstance(entry, dict):
                raise out.error(None, f"{where}.entries[{m}] is not an object")
            extra = sorted(set(entry) - set(FIELDS), key=str)
            if extra:  # a fifth register or a typo: not silently dropped
                raise out.error(None, f"{where}.entries[{m}] has key {extra[0]!r}, not one of "
                                      f"{', '.join(FIELDS)}")
            values = [_u32(out, entry.get(k), f"{where}.entries[{m}].{k}") for k in FIELDS]
            out.add(values[0], values[1], tuple(values[2:]), None)
    return out.build()


def _u32(out: CpusBuilder, value: object, where: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MASK32:
        return value
    raise out.error(None, f"{where}={value!r} is not an integer in 0..0xffffffff")
