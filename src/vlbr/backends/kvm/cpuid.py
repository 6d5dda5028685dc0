"""Guest CPUID answered by vlbr, when quirk cpuid_rewritten (quirks.py) holds.

Measured on kvm_pvm: after KVM_SET_CPUID2, KVM_GET_CPUID2 returns the host's
values for leaves 1, 7.0, 7.1, 0xD.0, 0xD.1 and 0xD.15 instead of the ones set, so a guest
CPUID never shows CPUID.7.0:EDX[19] (Arch LBR), PDCM, XSAVES or XSS bit 15. KVM offers no
user-space CPUID exit, so before loading the image vlbr replaces each CPUID instruction
(0F A2) with HLT; NOP (F4 90): with no in-kernel irqchip a HLT exits to user space
(KVM_EXIT_HLT), where the runner answers (policy.runtime_cpuid) and skips both bytes.
Found by the sweep of patching.py over the executable sections; a guest's own HLT elsewhere still stops
its vCPU.
"""

from __future__ import annotations

from iced_x86 import Code

from vlbr.arch.cpuid import CpuidTable
from vlbr.backends.kvm.patching import patch_instructions

HLT_NOP = b"\xf4\x90"
CPUID = b"\x0f\xa2"


def rewritten_leaves(table_set: CpuidTable, table_got: CpuidTable) -> list[tuple[int, int]]:
    """(leaf, subleaf) rows KVM did not keep as set (KVM_SET_CPUID2 vs KVM_GET_CPUID2)."""
    return [key for key in sorted(set(table_set) | set(table_got))
            if table_set.query(*key) != table_got.query(*key)]


# CPUID (0F A2) -> HLT; NOP
CPUID_PATCH = {Code.CPUID: (CPUID[0], HLT_NOP)}


def patch_cpuid(data: bytes, base: int) -> tuple[bytes, frozenset[int]]:
    """The image with every CPUID instruction replaced by HLT; NOP, and the patched addresses."""
    out, sites = patch_instructions(data, base, [(base, base + len(data))], CPUID_PATCH)
    return out, frozenset(sites)
