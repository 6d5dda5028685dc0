"""Shared set-up for the KVM backend tests: skip without /dev/kvm; the policy's guest CPUID."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # guest_asm, kvm_machine

from vlbr.backends.kvm import KvmBackend  # noqa: E402

REASON = KvmBackend().unavailable_reason()


def pytest_collection_modifyitems(items):
    for item in items:
        if "backends/kvm" in str(item.fspath) and REASON is not None:
            item.add_marker(pytest.mark.skip(reason=f"KVM backend unavailable: {REASON}"))


@pytest.fixture
def backend():
    return KvmBackend()
