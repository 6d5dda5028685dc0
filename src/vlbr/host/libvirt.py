"""Reader of libvirt's cputestdata XML: `<cpudata><cpuid eax_in ecx_in eax ebx ecx edx/>...`."""

from __future__ import annotations

import re
from xml.parsers import expat

from .builder import CpusBuilder
from .cpus import LogicalCpu

HEX32 = re.compile(r"^0x[0-9a-fA-F]{1,8}$")
ATTRS = ("eax_in", "ecx_in", "eax", "ebx", "ecx", "edx")


def looks_like(text: str) -> bool:
    return text.lstrip().startswith("<")


def parse(text: str, source: str) -> list[LogicalCpu]:
    out = CpusBuilder(source)
    parser = expat.ParserCreate()
    seen_root: list[str] = []

    def forbid_entities(*_args) -> None:  # no DTD tricks in CPUID data
        raise _Stop(parser.CurrentLineNumber, "XML entity declarations are not allowed")

    def start(name: str, attrs: dict[str, str]) -> None:
        line = parser.CurrentLineNumber
        if not seen_root:
            seen_root.append(name)
            if name != "cpudata":
                raise _Stop(line, f"root element is <{name}>, expected <cpudata>")
            return
        if name != "cpuid":
            return  # <msr> and others carry no CPUID
        extra = sorted(set(attrs) - set(ATTRS))
        if extra:  # a fifth register or a typo: not silently dropped
            raise _Stop(line, f"<cpuid> attribute {extra[0]}= is not one of {', '.join(ATTRS)}")
        values = []
        for attr in ATTRS:
            value = attrs.get(attr)
            if value is None or not HEX32.match(value):
                raise _Stop(line, f"<cpuid> attribute {attr}={value!r} is not a 0x-prefixed 32-bit hex value")
            values.append(int(value, 16))
        out.rows()
        out.add(values[0], values[1], tuple(values[2:]), line)

    parser.StartElementHandler = start
    parser.EntityDeclHandler = forbid_entities
    try:
        parser.Parse(text, True)
    except expat.ExpatError as err:
        raise out.error(err.lineno, f"malformed XML: {expat.errors.messages.get(err.code, err)}") from None
    except _Stop as stop:
        raise out.error(stop.line, stop.problem) from None
    return out.build()


class _Stop(Exception):
    def __init__(self, line: int, problem: str):
        self.line, self.problem = line, problem
