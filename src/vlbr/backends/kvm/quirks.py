"""KvmQuirks: what the KVM at hand does not do as the SDM says, each probed; the KVM backend
works around all but user_int3_skips_gate_dpl, which no patch can reach.

In the spirit of KVM_X86_QUIRK_*: a workaround is applied only when its quirk was measured
(probe.py runs tiny unpatched guests), so the same code runs unchanged on a KVM without them.
Workarounds that only react to a failure (an emulation-failure exit for ICEBP or XSAVES) need
no quirk: they act when KVM reports the failure.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields

from vlbr.backends.kvm.cpuid import CPUID_PATCH
from vlbr.backends.kvm.traps import TRAP_PATCHES
from vlbr.host import kvm as k


@dataclass(frozen=True)
class KvmQuirks:
    # KVM_SET_CPUID2 rows come back rewritten: CPUID is patched to HLT and vlbr answers it.
    cpuid_rewritten: bool = True
    # INT n does not reach the guest IDT: INT n (and SYSCALL) are patched to a port exit.
    int_n_fails: bool = True
    # SYSCALL at CPL3 does not reach IA32_LSTAR: patched with INT n (one mechanism, traps.py).
    user_syscall_fails: bool = True
    # Guest-debug single-step gives no exit at CPL3: ring 3 runs on unicorn while recording.
    user_single_step_fails: bool = True
    # INT3 at CPL3 through a DPL-0 gate reaches the handler instead of #GP. No workaround:
    # nothing of INT3's one byte exits from CPL3; recorded ring 3 (on unicorn) is right.
    user_int3_skips_gate_dpl: bool = True

    @classmethod
    def none(cls) -> "KvmQuirks":
        """A KVM that runs everything itself."""
        return cls(**{f.name: False for f in fields(cls)})

    def patches(self) -> dict:
        """The instruction patches (patching.py) these quirks call for."""
        out = dict(CPUID_PATCH) if self.cpuid_rewritten else {}
        if self.int_n_fails or self.user_syscall_fails:
            out.update(TRAP_PATCHES)
        return out

    def active(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name)]


@functools.cache
def probe_quirks(path: str = k.KVM_PATH) -> KvmQuirks:
    """The quirks of the KVM at `path`, measured once per process."""
    from vlbr.backends.kvm.probe import quirk_probes
    from vlbr.host.kvm import Kvm
    with Kvm(path) as kvm:
        probes = quirk_probes(kvm)
    return KvmQuirks(**{name: not probe.ok for name, probe in probes.items()})
