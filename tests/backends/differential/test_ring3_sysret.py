"""Ring 3 after SYSRETQ is recorded on every run kind (ring3_sysret.c): 6 records under USR,
one of them the SYSRETQ itself. On KVM both recording modes recorded only the IRETQ before
the runner sent SYSRETQ to the ring-3 excursion (x86/syscall.sysret_exit)."""

from __future__ import annotations

from pathlib import Path

import pytest

from guest_runs import EVERY_RUN, run_guest

GUEST = Path(__file__).with_name("ring3_sysret.c")


@pytest.mark.parametrize("backend,changes", EVERY_RUN)
def test_ring3_after_sysret_is_recorded(backend, changes):
    result, _ = run_guest(backend, GUEST, **changes)
    assert result.lines() == ["vector 0x80 records 6 sysret 1"]
