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


class VcpuStateError(VlbrError):
    """A backend used the vCPU in the wrong state (guest access or branch while put)."""
