"""IRETQ to ring 3 nulls the kernel's data segment selectors on every run kind
(ring3_segments.c). A recorded excursion on KVM kept DS = ES = 0x10 before vlbr applied the
SDM's IRET rule (usermode.null_below_user)."""

from __future__ import annotations

from pathlib import Path

import pytest

from guest_runs import EVERY_RUN, run_guest

GUEST = Path(__file__).with_name("ring3_segments.c")
EXPECTED = [f"recording {r} ds 0x0 es 0x0" for r in (0, 1)]


@pytest.mark.parametrize("backend,changes", EVERY_RUN)
def test_iretq_to_ring3_nulls_kernel_data_selectors(backend, changes):
    result, _ = run_guest(backend, GUEST, **changes)
    assert result.lines() == EXPECTED
