"""Reader of Firecracker CPU-template fingerprints: guest_cpu_config.cpuid_modifiers bitmaps."""

from __future__ import annotations

import re

from .builder import CpusBuilder
from .cpus import LogicalCpu

BITMAP = re.compile(r"^0b[01]{32}$")
HEX = re.compile(r"^0x[0-9a-fA-F]{1,8}$")
REGISTERS = ("eax", "ebx", "ecx", "edx")


def looks_like(doc: object) -> bool:
    return isinstance(doc, dict) and ("guest_cpu_config" in doc or "cpuid_modifiers" in doc)


def parse(doc: object, source: str) -> list[LogicalCpu]:
    """doc: the decoded JSON; the fingerprint is the CPUID one guest vCPU saw."""
    out = CpusBuilder(source)
    config = doc.get("guest_cpu_config", doc) if isinstance(doc, dict) else None
    modifiers = config.get("cpuid_modifiers") if isinstance(config, dict) else None
    if not isinstance(modifiers, list):
        raise out.error(None, "no guest_cpu_config.cpuid_modifiers list")
    out.rows()
    for n, entry in enumerate(modifiers):
        where = f"cpuid_modifiers[{n}]"
        if not isinstance(entry, dict):
            raise out.error(None, f"{where} is not an object")
        leaf, sub = (_hex(out, entry.get(key), f"{where}.{key}") for key in ("leaf", "subleaf"))
        regs = dict.fromkeys(REGISTERS, 0)
        mods = entry.get("modifiers")
        if not isinstance(mods, list) or not mods:
            raise out.error(None, f"{where}.modifiers is not a non-empty list")
        for m, mod in enumerate(mods):
            reg = mod.get("register") if isinstance(mod, dict) else None
            bitmap = mod.get("bitmap") if isinstance(mod, dict) else None
            if reg not in REGISTERS:
                raise out.error(None, f"{where}.modifiers[{m}].register={reg!r} is not eax/ebx/ecx/edx")
            if not isinstance(bitmap, str) or not BITMAP.match(bitmap):
                raise out.error(None, f"{where}.modifiers[{m}].bitmap={bitmap!r} is not '0b' and 32 "
                                      f"binary digits (templates with 'x' bits are not fingerprints)")
            regs[reg] = int(bitmap[2:], 2)
        out.add(leaf, sub, tuple(regs.values()), None)
    return out.build()


def _hex(out: CpusBuilder, value: object, where: str) -> int:
    if isinstance(value, str) and HEX.match(value):
        return int(value, 16)
    raise out.error(None, f"{where}={value!r} is not a 0x-prefixed 32-bit hex string")
