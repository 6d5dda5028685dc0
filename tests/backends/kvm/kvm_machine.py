"""The machine a KVM backend test runs: KVM_GET_SUPPORTED_CPUID plus the emulated Arch LBR."""

from __future__ import annotations

from vlbr.backends.base import MachineConfig
from vlbr.host.kvm import Kvm


def guest_cpuid(depth: int = 32):
    """The guest CPUID vlbr gives a KVM guest: KVM_GET_SUPPORTED_CPUID plus the emulated Arch
    LBR (policy.emulated_guest_cpuid)."""
    from vlbr.policy.emulated import emulated_guest_cpuid
    with Kvm() as kvm:
        return emulated_guest_cpuid(kvm.supported_cpuid(), depth=depth)


def machine_config(vcpus: int = 1, depth: int = 32, max_steps: int = 200_000) -> MachineConfig:
    from vlbr.vcpu.config import LbrConfig
    table = guest_cpuid(depth)
    return MachineConfig(cpuid=table, lbr=LbrConfig.from_cpuid(table), vcpus=vcpus,
                         max_steps=max_steps)
