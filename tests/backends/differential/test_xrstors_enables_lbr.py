"""An XRSTORS that sets LBREn records the very next branch, on both backends and both KVM
recording modes (xrstors_enables_lbr.c; SDM vol. 3 18.1.2, vol. 1 13.12). On KVM the XRSTORS
is vlbr's (backends/kvm/xsaves.py), so stepping starts at the instruction after it."""

from __future__ import annotations

from pathlib import Path

import pytest

from guest_runs import run_guest
from vlbr.backends.base import KVM_RECORDING_MODES

GUEST = Path(__file__).with_name("xrstors_enables_lbr.c")
EXPECTED = ["enabled xsaves -1 newest_is_the_jmp 1 older_empty 1",
            "disabled xsaves -1 newest_is_the_jmp 0 older_empty 1"]
RUNS = [("software", None)] + [("kvm", mode) for mode in KVM_RECORDING_MODES]


@pytest.mark.parametrize("backend,recording", RUNS)
def test_the_branch_right_after_xrstors_is_recorded(backend, recording):
    changes = {} if recording is None else {"kvm_recording": recording}
    result, _ = run_guest(backend, GUEST, **changes)
    assert result.lines() == EXPECTED
