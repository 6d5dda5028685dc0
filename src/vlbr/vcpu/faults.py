"""The architectural faults the vCPU model raises, and the error for misuse by a backend."""

from __future__ import annotations

from vlbr.errors import VlbrError


class GeneralProtection(Exception):
    """#GP(0): what the guest (or -EINVAL what the VMM) gets; `reason` says which rule fired."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(f"#GP: {reason}")


class InvalidOpcode(Exception):
    """#UD: e.g. XSAVES/XRSTORS on a guest whose CPUID does not enumerate them."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(f"#UD: {reason}")


class NotOwnedMsr(KeyError):
    """An MSR the vCPU model does not own (not Arch LBR state): the backend's, not a #GP (G10)."""

    def __init__(self, msr_name: str):
        self.msr_name = msr_name
        super().__init__(msr_name)

    def __str__(self) -> str:
        return f"{self.msr_name} is not an MSR of the Arch LBR model"


class VcpuStateError(VlbrError):
    """A backend used the vCPU in the wrong state (guest access or branch while put)."""
