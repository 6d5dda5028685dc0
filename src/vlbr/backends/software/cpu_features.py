"""The features the software CPU can offer a guest: the host's CPUID limited to what unicorn
executes, so a guest never finds a feature whose instructions would #UD.

Unicorn's own CPUID answer (its TCG masks what it cannot run) is probed once for the feature
words; XSAVE is limited to the components vlbr's XSAVES holds (x87 and SSE; the policy adds
Arch LBR's component 15): unicorn enumerates XCR0 AVX, yet runs no AVX instruction (measured,
unicorn 2.1.4: `vaddps ymm` is #UD)."""

from __future__ import annotations

import functools

from unicorn import UC_ARCH_X86, UC_MODE_64, Uc
from unicorn import x86_const as X

from vlbr.arch.cpuid import CpuidTable, Registers
from vlbr.arch.x86 import XFEATURES_LEGACY
from vlbr.arch.xsave import EXTENDED_AREA_START

CPU_MODEL = X.UC_CPU_X86_HASWELL  # an Intel model: SYSCALL and XSAVE as on the KVM hosts
CPUID = b"\x0f\xa2"
SCRATCH = 0x1000
# (leaf, subleaf): which of EAX, EBX, ECX, EDX are feature bits unicorn may lack
FEATURE_WORDS = {(0x1, 0): (False, False, True, True), (0x7, 0): (False, True, True, True),
                 (0x7, 1): (True, True, True, True), (0x8000_0001, 0): (False, False, True, True),
                 (0xD, 1): (True, False, False, False)}
XSAVE_COMPONENTS = 64


@functools.cache
def unicorn_cpuid(leaf: int, subleaf: int = 0, model: int | None = CPU_MODEL) -> Registers:
    """What CPUID returns on a unicorn CPU model (None: unicorn's default, the PC machine's)."""
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    if model is not None:
        uc.ctl_set_cpu_model(model)
    uc.mem_map(SCRATCH, 0x1000)
    uc.mem_write(SCRATCH, CPUID)
    uc.reg_write(X.UC_X86_REG_RAX, leaf)
    uc.reg_write(X.UC_X86_REG_RCX, subleaf)
    uc.emu_start(SCRATCH, SCRATCH + len(CPUID))
    return Registers(*(uc.reg_read(r) for r in (X.UC_X86_REG_RAX, X.UC_X86_REG_RBX,
                                                X.UC_X86_REG_RCX, X.UC_X86_REG_RDX)))


def unicorn_limited(host: CpuidTable) -> CpuidTable:
    """The host's table with only the features unicorn runs, and XSAVE of x87|SSE only."""
    rows: dict = {}
    for key, masked in FEATURE_WORDS.items():
        if host.query(*key) is not None:
            have, can = host.regs(*key).as_tuple(), unicorn_cpuid(*key).as_tuple()
            rows[key] = Registers(*(h & c if m else h for h, c, m in zip(have, can, masked)))
    rows.update(_legacy_xsave(host))
    return host.replace(rows)


def _legacy_xsave(host: CpuidTable) -> dict:
    """CPUID.(0xD,0) for XCR0 x87|SSE (both areas 576 bytes), the user components' rows gone."""
    main = host.query(0xD, 0)
    if main is None:
        return {}
    xcr0 = (main.edx << 32 | main.eax) & XFEATURES_LEGACY
    rows: dict = {(0xD, 0): Registers(xcr0, EXTENDED_AREA_START, EXTENDED_AREA_START, 0)}
    for component in range(2, XSAVE_COMPONENTS):
        if (main.edx << 32 | main.eax) >> component & 1:
            rows[(0xD, component)] = None  # a row of a component XCR0 can no longer enable
    return rows
