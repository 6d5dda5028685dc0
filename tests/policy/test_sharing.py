"""The host-sharing simulation (vlbr.policy.sharing) against the mechanism's sources and a
plain reference model of what mainline's guest LBR event loses.

Sources: arch/x86/kvm/vmx/pmu_intel.c (intel_pmu_handle_lbr_msrs_access: reads 0, writes
dropped while the guest LBR event is not active), arch/x86/events/intel/lbr.c
(intel_pmu_lbr_reset when the LBR gets a new user; task-context save/restore with XSAVES),
the v12 series 20220517154100.29983-*-weijiang.yang@intel.com (reuses the same event)."""

from __future__ import annotations

import pytest
from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from vlbr.policy.sharing import HOST, SHARING_VARIANTS, SharingSim
from vlbr.policy.sharing_scenarios import ScenarioError, load, shipped, simulate, simulate_all

DEPTHS = [32, 16]


def preempted_guest(variant: str, branches: int) -> SharingSim:
    """vCPU v recorded `branches` on CPU 0, then host perf took that CPU's LBR."""
    sim = SharingSim(variant, [32])
    sim.add_vcpu("v", 0)
    sim.run("v")
    sim.branches("v", branches)
    sim.host_perf(0, True)
    return sim


def test_host_takeover_guest_reads_zero_under_mainline():
    # pmu_intel.c: the event is not active while host perf holds the LBR -> reads return 0.
    sim = preempted_guest("mainline-mechanism", 5)
    assert sim.read("v") == []
    assert sim.result()["lost"] == 5


def test_vlbr_keeps_the_guest_image_across_a_takeover():
    sim = preempted_guest("vlbr", 5)
    sim.branches(HOST, 7, 0)
    sim.branches("v", 2)
    seen = sim.read("v")
    assert [owner for owner, _ in seen] == ["v"] * 7
    assert sim.read(HOST, 0) and all(o == HOST for o, _ in sim.read(HOST, 0))
    assert sim.result()["lost"] == 0


def test_a_new_owner_never_sees_the_last_ones_records():
    # lbr.c intel_pmu_lbr_reset on the first user: host perf after a guest starts clean.
    for variant in SHARING_VARIANTS:
        assert preempted_guest(variant, 9).read(HOST, 0) == []


def test_xrstors_at_another_depth_clears_the_records_unless_lossless():
    # A hybrid host's cores differ in leaf 0x1C; component 15 is 40 + 24 * depth bytes.
    lost = {}
    for variant in SHARING_VARIANTS:
        sim = SharingSim(variant, [32, 16])
        sim.add_vcpu("v", 0)
        sim.run("v")
        sim.branches("v", 20)
        sim.migrate("v", 1)
        sim.run("v")
        sim.read("v")
        lost[variant] = sim.result()["lost"]
    assert lost == {"mainline-mechanism": 16, "v12": 16, "vlbr": 0}


def test_xss_bit_15_is_set_only_around_saves_on_a_host_without_it():
    sim = SharingSim("vlbr", [32], host_xss_lbr=False)
    sim.add_vcpu("a", 0)
    sim.add_vcpu("b", 0)
    sim.run("a")
    sim.branches("a", 3)
    sim.run("b")
    assert sim.saves == 1 and sim.xss == 0 and sim.xss_restored


def test_preempt_scenario_meets_the_issue():
    scenario = next(s for s in shipped() if "preempt" in s.name)
    result = simulate_all(scenario)["variants"]
    assert set(result) == set(SHARING_VARIANTS)
    assert all(v["crossed"] == 0 for v in result.values())
    assert result["mainline-mechanism"]["lost"] > 0
    assert result["vlbr"]["lost"] == 0
    assert all(v["xss_restored"] for v in result.values())


@pytest.mark.parametrize("scenario", shipped(), ids=lambda s: s.name)
def test_every_shipped_scenario_crosses_nothing_and_vlbr_loses_nothing(scenario):
    for variant in SHARING_VARIANTS:
        figures = simulate(scenario, variant)
        assert figures["crossed"] == 0
    assert simulate(scenario, "vlbr")["lost"] == 0


def test_bad_scenarios_name_the_problem(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"cpu_depths": [32], "vcpus": {"v": 0}, "steps": [{"op": "fly"}]}')
    with pytest.raises(ScenarioError, match="step 0"):
        load(str(bad))
    bad.write_text('{"cpu_depths": [32], "vcpus": {"v": 3}, "steps": []}')
    with pytest.raises(ScenarioError, match="no physical CPU 3"):
        simulate(load(str(bad)), "vlbr")


class MainlineReference:
    """Counts only: what mainline's guest event shows a vCPU, with no records kept."""

    def __init__(self, homes: dict[str, int]):
        self.home = dict(homes)
        self.running = {c: None for c in range(len(DEPTHS))}
        self.host = {c: False for c in range(len(DEPTHS))}
        self.taken = {v: 0 for v in homes}
        self.since = {v: 0 for v in homes}
        self.saved_depth = {v: DEPTHS[c] for v, c in homes.items()}
        self.lost = 0

    def owner(self, v):
        c = self.home[v]
        return self.running[c] == v and not self.host[c]

    def _becomes_owner(self, v):
        if self.saved_depth[v] != DEPTHS[self.home[v]]:
            self.since[v] = 0

    def _leaves(self, v):
        self.saved_depth[v] = DEPTHS[self.home[v]]

    def run(self, v):
        c = self.home[v]
        old = self.running[c]
        if old == v:
            return
        if old is not None and self.owner(old):
            self._leaves(old)
        self.running[c] = v
        if self.owner(v):
            self._becomes_owner(v)

    def migrate(self, v, to):
        c = self.home[v]
        if self.running[c] == v:
            if self.owner(v):
                self._leaves(v)
            self.running[c] = None
        self.home[v] = to

    def host_perf(self, c, on):
        v = self.running[c]
        if on and not self.host[c] and v is not None:
            self.since[v] = 0
            self.saved_depth[v] = DEPTHS[c]
        was = self.host[c]
        self.host[c] = on
        if was and not on and v is not None:
            self._becomes_owner(v)

    def branches(self, v, n):
        self.taken[v] += n
        if self.owner(v):
            self.since[v] += n

    def read(self, v):
        depth = DEPTHS[self.home[v]]
        seen = min(self.since[v], depth) if self.owner(v) else 0
        self.lost += min(self.taken[v], depth) - seen


VCPUS = ("v0", "v1", "v2")
HOMES = {"v0": 0, "v1": 0, "v2": 1}


class SharingMachine(RuleBasedStateMachine):
    """Random schedules: nothing crosses under any variant, vlbr loses nothing, mainline's
    losses are the reference's."""

    def __init__(self):
        super().__init__()
        self.sims = {v: SharingSim(v, DEPTHS) for v in SHARING_VARIANTS}
        for sim in self.sims.values():
            for name, cpu in HOMES.items():
                sim.add_vcpu(name, cpu)
        self.ref = MainlineReference(HOMES)

    def _all(self, method, *args):
        for sim in self.sims.values():
            getattr(sim, method)(*args)
        getattr(self.ref, method)(*args)

    def _running(self, v):
        return self.ref.running[self.ref.home[v]] == v

    @rule(v=st.sampled_from(VCPUS))
    def run(self, v):
        self._all("run", v)

    @rule(v=st.sampled_from(VCPUS), to=st.sampled_from(range(len(DEPTHS))))
    def migrate(self, v, to):
        self._all("migrate", v, to)

    @rule(c=st.sampled_from(range(len(DEPTHS))), on=st.booleans())
    def host_perf(self, c, on):
        self._all("host_perf", c, on)

    @rule(v=st.sampled_from(VCPUS), n=st.integers(0, 40))
    def branches(self, v, n):
        if self._running(v):
            self._all("branches", v, n)

    @rule(c=st.sampled_from(range(len(DEPTHS))), n=st.integers(0, 40))
    def host_branches(self, c, n):
        for sim in self.sims.values():
            sim.branches(HOST, n, c)

    @rule(v=st.sampled_from(VCPUS))
    def read(self, v):
        if self._running(v):
            self._all("read", v)

    @rule(c=st.sampled_from(range(len(DEPTHS))))
    def host_read(self, c):
        for sim in self.sims.values():
            sim.read(HOST, c)

    @invariant()
    def nothing_crosses_and_losses_are_predicted(self):
        figures = {v: s.result() for v, s in self.sims.items()}
        assert all(f["crossed"] == 0 for f in figures.values())
        assert all(f["xss_restored"] for f in figures.values())
        vcpu_lost = {v: sum(c["lost"] for n, c in f["contexts"].items() if n in HOMES)
                     for v, f in figures.items()}
        assert vcpu_lost["vlbr"] == 0
        assert vcpu_lost["mainline-mechanism"] == self.ref.lost
        assert vcpu_lost["v12"] == vcpu_lost["mainline-mechanism"]


TestSharingMachine = SharingMachine.TestCase


def test_takeover_forgets_an_older_saved_image_under_mainline():
    # The event goes inactive without a save: when it is active again perf starts it on a
    # reset LBR, not on what the vCPU's last sched-out saved (pmu_intel.c, lbr.c).
    sim, ref = SharingSim("mainline-mechanism", DEPTHS), MainlineReference(HOMES)
    for name, cpu in HOMES.items():
        sim.add_vcpu(name, cpu)
    for step in (("run", "v0"), ("branches", "v0", 10), ("run", "v1"), ("run", "v0"),
                 ("host_perf", 0, True), ("host_perf", 0, False), ("read", "v0")):
        getattr(sim, step[0])(*step[1:])
        getattr(ref, step[0])(*step[1:])
    assert sim.result()["lost"] == ref.lost == 10


TestSharingMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
