"""benchmarks/bench_kvm_step.py on /dev/kvm (skipped with the reason where it is absent): the
minimal KVM_RUN single-step loop and vlbr's step path step through the same loop (the same
steps but vlbr's two WRMSRs), and the ratio line is there. No timing assertions."""

from __future__ import annotations

import json

import pytest
from benchmark_module import benchmark_module

from vlbr.backends.kvm import KvmBackend


def test_both_loops_step_the_same_guest_and_the_ratio_is_reported(capsys):
    reason = KvmBackend().unavailable_reason()
    if reason is not None:
        pytest.skip(f"no KVM here: {reason}")
    with benchmark_module("bench_kvm_step") as bench:
        assert bench.run(bench.parse(["--repeat", "1"])) == 0
    minimal, ours, ratio = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert minimal["figure"] == "minimal_kvm_run_single_steps_per_second"
    assert ours["figure"] == "vlbr_step_path_single_steps_per_second"
    assert abs(ours["steps"] - minimal["steps"]) <= 8  # the same loop, give or take the WRMSRs
    assert ratio["value"] > 0 and ratio["goal"] == 2.0
