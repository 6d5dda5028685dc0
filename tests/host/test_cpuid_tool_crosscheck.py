"""Field-by-field agreement with Debian's `cpuid -f FILE` on leaf 0x1C and leaf 0xD.

The real tool decodes the corpus `cpuid -r` dump and corpus dumps converted by
write_cpuid_raw(); vlbr's arch decoders must say the same for every logical CPU."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from vlbr.arch.leaves import arch_lbr_leaf, structured_features, xsave_component, xsave_extended, \
    xsave_main
from vlbr.host import read_cpuid_file, write_cpuid_raw

from corpus import CPUID_RAW_DUMP, FIRECRACKER, INSTLATX64, LIBVIRT

pytestmark = pytest.mark.skipif(shutil.which("cpuid") is None,
                                reason="Debian `cpuid` binary absent (make system-deps installs it)")

CONVERTED = [
    INSTLATX64 / "GenuineIntel00B06D1_LunarLake_04_CPUID.txt",     # hybrid, event logging
    INSTLATX64 / "GenuineIntel0090672_AlderLake_01_LC_BC_CPUID.txt",  # hybrid P/E, LIP differs
    INSTLATX64 / "GenuineIntel0090675_AlderLake_00_CPUID.txt",     # CPUID.(0xD,0xF) missing
    INSTLATX64 / "GenuineIntel00806F8_SapphireRapids_05_CPUID.txt",  # AMX: 64-byte aligned comps
    INSTLATX64 / "GenuineIntel00A06D1_GraniteRapids_03_CPUID.txt",
    INSTLATX64 / "AuthenticAMD0A10F81_K19_StormPeak_03_CPUID.txt",
    INSTLATX64 / "GenuineIntel00206E6_Beckton_CPUID.txt",          # 1-based CPU numbers
    LIBVIRT / "x86_64-cpuid-Xeon-6788P.xml",
    FIRECRACKER / "fingerprint_INTEL_SAPPHIRE_RAPIDS_6.1host.json",  # KVM guest view, 0x1C zero
]

SECTION = re.compile(r"^   (\S.*?)(?: \((0x[0-9a-f]+|\d+)(?:/(0x[0-9a-f]+|\d+))?\))?:\s*$")
FIELD = re.compile(r"^\s+(\S.*?)\s+= (.*)$")


def run_tool(raw_path) -> dict[int, dict]:
    """`cpuid -f` output -> {cpu: {(section title, leaf, sub): {field: [values]}, 'all': {...}}}."""
    out = subprocess.run(["cpuid", "-f", str(raw_path)], capture_output=True, text=True,
                         check=True).stdout
    cpus: dict[int, dict] = {}
    cpu = section = None
    for line in out.splitlines():
        head = re.match(r"^CPU (\d+):$", line)
        if head:
            cpu = cpus.setdefault(int(head.group(1)), {"all": {}})
            section = None
            continue
        sec = SECTION.match(line)
        if sec and cpu is not None:
            leaf = int(sec.group(2), 0) if sec.group(2) else None
            sub = int(sec.group(3), 0) if sec.group(3) else None
            section = cpu.setdefault((leaf, sub), {})
            continue
        field = FIELD.match(line)
        if field and cpu is not None:
            key, value = field.group(1).strip(), field.group(2).strip()
            cpu["all"].setdefault(key, []).append(value)
            if section is not None:
                section.setdefault(key, []).append(value)
    return cpus


def flag(values: list[str]) -> bool:
    assert values[0] in ("true", "false"), values
    return values[0] == "true"


def number(values: list[str]) -> int:
    return int(values[0].split()[0], 0)


def check_cpu(table, tool: dict) -> int:
    """Compare every field the tool decodes for 0x7.EDX[19], 0x1C and 0xD; count them."""
    checked = 0
    sf = structured_features(table)
    if table.query(7, 0) is not None:
        assert flag(tool["all"]["LBR: architectural last branch records"]) == sf.arch_lbr
        checked += 1
    if table.query(0x1C, 0) is not None and table.max_basic_leaf >= 0x1C:
        leaf = arch_lbr_leaf(table)
        sec = tool[(0x1C, 0)]
        for depth in range(8, 72, 8):
            assert flag(sec[f"IA32_LBR_DEPTH.DEPTH {depth:2d} supported"]) == leaf.supports_depth(depth)
        assert flag(sec["deep C-state reset supported"]) == leaf.deep_cstate_reset
        assert sec["LBR IP values contain"][0].endswith(f"({int(leaf.lip)})")
        assert flag(sec["CPL filtering supported"]) == leaf.cpl_filtering
        assert flag(sec["branch filtering supported"]) == leaf.branch_filtering
        assert flag(sec["call-stack mode supported"]) == leaf.call_stack
        assert flag(sec["mispredict bit supported"]) == leaf.mispredict
        assert flag(sec["timed LBRs supported"]) == leaf.timed_lbr
        assert flag(sec["branch type field supported"]) == leaf.branch_type
        checked += 15
    if table.query(0xD, 0) is not None and table.max_basic_leaf >= 0xD:
        sec = tool[(0xD, 0)]
        main = xsave_main(table)
        assert number(sec["XCR0 valid bit field mask"]) == main.xcr0_supported
        assert number(sec["bytes required by fields in XCR0"]) == main.size_enabled
        assert number(sec["bytes required by XSAVE/XRSTOR area"]) == main.size_max
        checked += 3
        if table.query(0xD, 1) is not None:
            ext = xsave_extended(table)
            assert flag(sec["XSAVES/XRSTORS instructions"]) == ext.xsaves
            assert number(sec["SAVE area size in bytes"]) == ext.size_in_use
            assert number(sec["IA32_XSS valid bit field mask"]) == ext.xss_supported
            assert flag(sec["LBR state"]) == bool(ext.xss_supported >> 15 & 1)
            checked += 4
        for sub in table.subleaves(0xD):
            comp = xsave_component(table, sub)
            if sub < 2 or (0xD, sub) not in tool:
                continue
            comp_sec = tool[(0xD, sub)]
            size_key = next(k for k in comp_sec if k.endswith("save state byte size"))
            off_key = next(k for k in comp_sec if k.endswith("save state byte offset"))
            assert number(comp_sec[size_key]) == comp.size
            assert number(comp_sec[off_key]) == comp.offset
            kind = comp_sec["supported in IA32_XSS or XCR0"][0]
            assert kind.startswith("IA32_XSS" if comp.supervisor else "XCR0")
            assert flag(comp_sec["64-byte alignment in compacted XSAVE"]) == comp.align64
            assert flag(comp_sec["XFD faulting supported"]) == comp.xfd
            checked += 5
    return checked


def crosscheck(cpus, raw_path) -> int:
    tool = run_tool(raw_path)
    assert sorted(tool) == [c.index for c in cpus]
    return sum(check_cpu(cpu.table, tool[cpu.index]) for cpu in cpus)


def test_corpus_cpuid_raw_dump(corpus_dir):
    # The tool reads its own -r output; vlbr reads the same file.
    cpus = read_cpuid_file(CPUID_RAW_DUMP)
    assert crosscheck(cpus, CPUID_RAW_DUMP) > 0


@pytest.mark.parametrize("path", CONVERTED, ids=lambda p: p.name)
def test_converted_dump(corpus_dir, tmp_path, path):
    cpus = read_cpuid_file(path)
    raw = tmp_path / "dump.raw"
    raw.write_text(write_cpuid_raw(cpus))
    checked = crosscheck(cpus, raw)
    if structured_features(cpus[0].table).arch_lbr:
        assert checked >= 20 * len(cpus)  # 0x1C and 0xD fields were really compared


def test_every_component_subleaf_is_decoded_by_the_tool(corpus_dir, tmp_path):
    # Guard against a silent pass: the tool shows a section for each 0xD component we wrote.
    cpus = read_cpuid_file(INSTLATX64 / "GenuineIntel00806F8_SapphireRapids_05_CPUID.txt")[:1]
    raw = tmp_path / "spr.raw"
    raw.write_text(write_cpuid_raw(cpus))
    tool = run_tool(raw)[cpus[0].index]
    assert {s for s in cpus[0].table.subleaves(0xD) if s >= 2} <= {k[1] for k in tool if k != "all" and k[0] == 0xD}
