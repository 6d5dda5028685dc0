"""Shared set-up for the KVM backend tests: skip without /dev/kvm; the policy's guest CPUID."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # guest_asm

from vlbr.backends.base import MachineConfig  # noqa: E402
from vlbr.backends.kvm import KvmBackend  # noqa: E402
from vlbr.host.kvm import Kvm  # noqa: E402

REASON = KvmBackend().unavailable_reason()


def pytest_collection_modifyitems(items):
    for item in items:
        if "backends/kvm" in str(item.fspath) and REASON is not None:
            item.add_marker(pytest.mark.skip(reason=f"KVM backend unavailable: {REASON}"))


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


@pytest.fixture
def backend():
    return KvmBackend()
