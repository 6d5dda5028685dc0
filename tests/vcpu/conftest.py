"""Fixtures of the vCPU tests: an Alder Lake guest (see vcpu_tables.py for the sources)."""

from __future__ import annotations

import pytest

from vcpu_tables import alder_lake
from vlbr.vcpu import ArchLbrVcpu, LbrConfig


@pytest.fixture
def config() -> LbrConfig:
    return LbrConfig.from_cpuid(alder_lake())


@pytest.fixture
def vcpu(config) -> ArchLbrVcpu:
    return ArchLbrVcpu(config)
