"""The CPU a Linux guest on the PC machine sees: a generic Intel x86-64 part limited to what
unicorn's TCG executes (no AVX: XCR0 is x87|SSE), with an architectural PMU, PDCM and
XSAVES, under which a policy variant puts (or withholds) Arch LBR.

The model number is one Linux has no tables for (arch/x86/events/intel/core.c
intel_pmu_init() then takes its "generic architected perfmon" path, and no legacy-LBR init
runs). Left out on purpose: RDRAND/RDSEED and the TSC-frequency leaves (randomness and host
time would make a boot irreproducible), x2APIC and TSC-deadline (the local APIC is an
xAPIC with one-shot and periodic timers), AVX and everything TCG cannot run."""

from __future__ import annotations

from vlbr.arch.cpuid import CpuidTable, Registers
from vlbr.arch.leaves import ARCH_LBR_LEAF, PerfMon
from vlbr.arch.x86 import (CPUID1_ECX_HYPERVISOR, CPUID1_ECX_PDCM, CPUID1_ECX_XSAVE,
                           XFEATURES_LEGACY)
from vlbr.policy.host import HostDescription
from vlbr.policy.supported import supported_cpuid

VENDOR = (0x756E6547, 0x6C65746E, 0x49656E69)  # "GenuineIntel" in EBX, ECX, EDX
SIGNATURE = 0x000F06F1  # family 6, model 0xFF (no Intel part), stepping 1
# CPUID.1:ECX: SSE3, PCLMULQDQ, SSSE3, CX16, SSE4.1, SSE4.2, MOVBE, POPCNT, AES (TCG runs them)
LEAF1_ECX_TCG = (1 << 0 | 1 << 1 | 1 << 9 | 1 << 13 | 1 << 19 | 1 << 20 | 1 << 22 | 1 << 23
                 | 1 << 25)
# CPUID.1:EDX: FPU DE PSE TSC MSR PAE CX8 APIC SEP PGE CMOV PAT PSE36 CLFSH MMX FXSR SSE SSE2
# (no MTRR or machine-check architecture: there is nothing behind them)
LEAF1_EDX = sum(1 << b for b in (0, 2, 3, 4, 5, 6, 8, 9, 11, 13, 15, 16, 17, 19, 23, 24, 25,
                                 26))
LEAF7_EBX = 1 << 0 | 1 << 3 | 1 << 7 | 1 << 8 | 1 << 9  # FSGSBASE BMI1 SMEP BMI2 ERMS
EXT1_ECX, EXT1_EDX = 1 << 0, 1 << 11 | 1 << 20 | 1 << 29  # LAHF; SYSCALL NX LM
PMU = PerfMon(version=4, gp_counters=8, gp_width=48, ebx_length=7, events_unavailable=0,
              fixed_counters_bitmap=0, fixed_counters=3, fixed_width=48, edx_rest=0)
LEGACY_AREA = 576  # legacy region and XSAVE header
DEFAULT_DEPTH = 32


def base_cpuid() -> CpuidTable:
    """The CPU without Arch LBR, before any policy variant."""
    rows = {
        (0x0, 0): Registers(ARCH_LBR_LEAF, *VENDOR),
        (0x1, 0): Registers(SIGNATURE, 0x0001_0800, LEAF1_ECX_TCG | CPUID1_ECX_PDCM
                            | CPUID1_ECX_XSAVE | CPUID1_ECX_HYPERVISOR, LEAF1_EDX),
        (0x7, 0): Registers(0, LEAF7_EBX, 0, 0),
        (0xA, 0): PMU.encode(),
        (0xD, 0): Registers(XFEATURES_LEGACY, LEGACY_AREA, LEGACY_AREA, 0),
        (0xD, 1): Registers(0, LEGACY_AREA, 0, 0),
        (0x8000_0000, 0): Registers(0x8000_0008, 0, 0, 0),
        (0x8000_0001, 0): Registers(0, 0, EXT1_ECX, EXT1_EDX),
        (0x8000_0008, 0): Registers(0x3028, 0, 0, 0),  # 40 physical, 48 linear address bits
    }
    return CpuidTable(rows)


def guest_cpuid(variant: str = "vlbr", depth: int | None = DEFAULT_DEPTH) -> CpuidTable:
    """The guest's table: the base as a host with Arch LBR, as `variant` exposes it."""
    from vlbr.policy.emulated import emulated_guest_cpuid
    with_lbr = emulated_guest_cpuid(base_cpuid(), DEFAULT_DEPTH if depth is None else depth)
    if variant == "vlbr":
        return with_lbr
    return supported_cpuid(HostDescription(with_lbr), variant).table
