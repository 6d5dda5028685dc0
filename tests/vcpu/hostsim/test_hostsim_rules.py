"""Each sharing rule of the simulation, with its source."""

from __future__ import annotations

from dataclasses import replace

import pytest

from vlbr.vcpu.hostsim import MECHANISMS, MECHANISM_NAMES, load, parse, report, shipped, \
    simulate


def scenario(schedule, vcpus=None, host_xss=1 << 15, pcpus=1):
    return parse({"pcpus": pcpus, "host_depth": 32, "host_xss": host_xss,
                  "vcpus": vcpus or {"g": 32}, "host_events": {"perf": ""},
                  "schedule": schedule}, "t")


RECORDING = [["run", "g", 0], ["lbr", "g", True], ["branch", "g", 10]]


def test_preempt_scenario_is_shipped_and_behaves_as_issue_13_says():
    """Issue 13 'Must show': crossed 0 everywhere, mainline-mechanism loses, vlbr does not."""
    name = next(n for n in shipped() if "preempt" in n)
    assert "preempts a recording guest" in load(name).description
    r = {v: report(load(name), v) for v in MECHANISM_NAMES}
    assert all(x["crossed"] == 0 for x in r.values())
    assert r["mainline-mechanism"]["lost"] > 0 and r["vlbr"]["lost"] == 0


def test_host_perf_preempting_zeroes_reads_and_drops_branches_on_mainline():
    """pmu_intel.c intel_pmu_handle_lbr_msrs_access: event not active -> reads 0, writes
    dropped; perf resets the LBR for its own event, so the 10 records are gone too."""
    host = simulate(scenario(RECORDING + [["host-on", "perf", 0], ["branch", "g", 4],
                                          ["read", "g"]]), MECHANISMS["mainline-mechanism"])
    assert host.view("g") == [] and host.lost["g"] == 14 and host.crossed == 0


def test_host_perf_sees_only_its_own_records():
    host = simulate(scenario(RECORDING + [["host-on", "perf", 0], ["branch", "perf", 3]]),
                    MECHANISMS["mainline-mechanism"])
    assert host.view("perf") == [("perf", 3), ("perf", 2), ("perf", 1)]


def test_vlbr_saves_the_preempted_guest_and_records_it_meanwhile():
    host = simulate(scenario(RECORDING + [["host-on", "perf", 0], ["branch", "g", 4],
                                          ["host-off", "perf"]]), MECHANISMS["vlbr"])
    assert host.view("g") == [("g", n) for n in range(14, 0, -1)] and host.saves == 1


def test_sched_out_saves_component_15_and_puts_xss_back():
    """Section 7: perf saves the owner's LBR with XSAVES of component 15, IA32_XSS bit 15 set
    only around the save when the host does not enable it (Linux's independent features)."""
    s = scenario(RECORDING + [["stop", "g"], ["run", "g", 0]], host_xss=0)
    host = simulate(s, MECHANISMS["mainline-mechanism"])
    assert host.saves == 1 and host.xss_restored == 1 and host.cpus[0].xss == 0
    assert len(host.view("g")) == 10
    leaky = simulate(s, replace(MECHANISMS["mainline-mechanism"], restores_xss=False))
    assert leaky.xss_restored == 0  # the figure can fail: XSS left with bit 15 set


def test_v12_offers_no_arch_lbr_without_host_xss_bit_15():
    """v12 (reference section 6, IA32_XSS): supported_xss = host_xss & KVM_SUPPORTED_XSS."""
    host = simulate(scenario(RECORDING, host_xss=0), MECHANISMS["v12"])
    assert not host.offered and host.lost["g"] == 10
    assert simulate(scenario(RECORDING, host_xss=0), MECHANISMS["vlbr"]).lost["g"] == 0


def test_xrstors_under_another_depth_clears_the_records():
    """Reference section 2: XRSTORS of component 15 clears the records if the saved DEPTH
    differs from IA32_LBR_DEPTH; v12 pins the guest to the host's depth (section 6,
    KVM_SET_CPUID2 -EINVAL), vlbr writes the vCPU's depth first (Xen RFC v2,
    20250102084413.102-10-ngoc-tu.dinh@vates.tech)."""
    s = scenario(RECORDING + [["stop", "g"], ["run", "g", 0]], vcpus={"g": 16})
    assert simulate(s, MECHANISMS["mainline-mechanism"]).lost["g"] == 10
    assert simulate(s, MECHANISMS["v12"]).guests["g"].depth == 32
    assert len(simulate(s, MECHANISMS["vlbr"]).view("g")) == 10


def test_lazy_release_frees_an_unused_event_and_its_records():
    """pmu_intel.c intel_pmu_cleanup: at sched-in, free the event when the last time slice
    did not use it and LBR is off."""
    s = scenario(RECORDING + [["lbr", "g", False], ["tick", 0], ["tick", 0]])
    host = simulate(s, MECHANISMS["mainline-mechanism"])
    assert not host.guests["g"].event and host.lost["g"] == 10
    used = scenario(RECORDING + [["lbr", "g", False], ["tick", 0], ["read", "g"], ["tick", 0]])
    assert simulate(used, MECHANISMS["mainline-mechanism"]).lost["g"] == 0


@pytest.mark.parametrize("mech, keeps", [("v12", True), ("mainline-mechanism", False),
                                         ("vlbr", False)])
def test_debug_clears_lbren_only_while_the_event_is_in_use_on_v12(mech, keeps):
    """v12 14/16 (20220517154100.29983-15-weijiang.yang@intel.com): #DB clears LBREn only
    while the guest LBR event is in use; the architecture clears it always."""
    s = scenario(RECORDING + [["host-on", "perf", 0], ["debug", "g"]])
    assert simulate(s, MECHANISMS[mech]).guests["g"].lbr_en is keeps
    in_use = simulate(scenario(RECORDING + [["debug", "g"]]), MECHANISMS[mech])
    assert in_use.guests["g"].lbr_en is False


def test_migration_to_a_pcpu_held_by_host_perf():
    s = load("vcpu-migration")
    assert report(s, "mainline-mechanism")["lost"] == 3 and report(s, "vlbr")["lost"] == 0


def test_timeline_names_who_owns_each_pcpu():
    host = simulate(scenario(RECORDING + [["host-on", "perf", 0], ["host-off", "perf"]]),
                    MECHANISMS["mainline-mechanism"])
    assert host.timeline == [[None], ["g"], ["g"], ["perf"], ["g"]]


def test_every_shipped_scenario_crosses_nothing():
    for name in shipped():
        for v in MECHANISM_NAMES:
            assert report(load(name), v)["crossed"] == 0, (name, v)


def test_hybrid_migration_restores_records_in_another_ip_form_unless_translated():
    """Reference s.1 (CPUID.1C:EAX[31] LIP) and s.7: the Xen RFC v2
    (20250102084413.102-10-ngoc-tu.dinh@vates.tech) translates FROM/TO when LIP differs."""
    s = load("hybrid-lip-migration")
    assert s.lip_cpus == {1}
    assert report(s, "mainline-mechanism")["wrong_ip_form"] == 6
    assert report(s, "v12")["wrong_ip_form"] == 6
    assert report(s, "vlbr")["wrong_ip_form"] == 0
    same = parse({**{"pcpus": 2, "vcpus": {"g": 32}}, "schedule": RECORDING + [["run", "g", 1]]},
                 "t")
    assert report(same, "mainline-mechanism")["wrong_ip_form"] == 0
