"""The sharing mechanisms compared: what each does when host perf and a guest want one LBR."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from vlbr.policy.variants import EMAIL_V2, V12


@dataclass(frozen=True)
class Mechanism:
    name: str
    summary: str
    supported_xss: Callable[[int, bool], int]  # the policy variant's XSS rule
    any_depth: bool  # the guest keeps its own LBR_DEPTH (else the host's maximum)
    writes_depth: bool  # LBR_DEPTH written to the vCPU's before XRSTORS (Xen RFC v2)
    perf_event: bool  # a guest LBR event must exist for the LBR to be passed through
    saves_on_preempt: bool  # the guest's records are saved when host perf takes the LBR
    emulates: bool  # branches while host perf holds the LBR go to the vCPU model
    lazy_release_drops: bool  # freeing an unused guest LBR event drops its saved records
    db_clears_only_in_use: bool  # #DB clears LBREn only while the event is in use
    translates_lip: bool = False  # FROM/TO translated by the CS base across core types
    restores_xss: bool = True


MECHANISMS = {m.name: m for m in (
    Mechanism(
        "mainline-mechanism",
        "mainline's guest LBR event (pmu_intel.c): zeros and dropped writes when host perf "
        "holds the LBR; any guest depth, XRSTORS with another depth clears the records",
        # bit 15 offered even when the host's XSS lacks it: perf sets it around each save
        supported_xss=EMAIL_V2.supported_xss,
        any_depth=True, writes_depth=False, perf_event=True, saves_on_preempt=False,
        emulates=False, lazy_release_drops=True, db_clears_only_in_use=False),
    Mechanism(
        "v12", "the last posted series on the same event: host-max depth only, "
        "supported_xss = host_xss & KVM_SUPPORTED_XSS, #DB clears LBREn only while in use",
        supported_xss=V12.supported_xss, any_depth=False, writes_depth=False, perf_event=True,
        saves_on_preempt=False, emulates=False, lazy_release_drops=True,
        db_clears_only_in_use=True),
    Mechanism(
        "vlbr", "lossless: the guest's LBR is saved when host perf preempts it, recorded by "
        "the vCPU model meanwhile, restored with the vCPU's depth; never released; "
        "component 15 offered without host XSS bit 15 (XSAVES emulated)",
        supported_xss=EMAIL_V2.supported_xss, any_depth=True, writes_depth=True, perf_event=False,
        saves_on_preempt=True, emulates=True, lazy_release_drops=False,
        db_clears_only_in_use=False, translates_lip=True),  # as the Xen RFC v2 does
)}
MECHANISM_NAMES = tuple(MECHANISMS)
