"""The errors the policy layer reports: a depth KVM cannot offer, an unknown variant, an IA32_XSS #GP."""

from __future__ import annotations

from vlbr.errors import VlbrError


class PolicyError(VlbrError):
    """A request the KVM Arch LBR policy cannot satisfy; the message says why."""


class UnknownVariant(PolicyError):
    def __init__(self, name: str, known: tuple[str, ...]):
        super().__init__(f"unknown policy variant {name!r}; choose one of {', '.join(known)}")


class UnsupportedDepth(PolicyError):
    """The user asked for an Arch LBR depth this variant cannot expose on this host."""


class XssWriteFault(PolicyError):
    """A guest WRMSR to IA32_XSS that the CPU answers with #GP.

    The policy layer may not import vlbr.vcpu, so it raises this; the vCPU model turns it
    into its architectural GeneralProtection (same `reason`)."""

    def __init__(self, value: int, reason: str):
        self.value = value
        self.reason = reason
        super().__init__(f"#GP: WRMSR IA32_XSS <- {value:#x}: {reason}")
