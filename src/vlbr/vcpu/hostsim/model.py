"""One simulated host: physical CPUs whose single LBR is shared by host perf events and vCPUs.

Every record is tagged with the context that took the branch, so a record that a context
sees but did not take (crossed) and a record a context took but was discarded before its
own newer branches aged it out (lost) are counted, not guessed.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from vlbr.policy.rules import XFEATURE_MASK_LBR

from .scenario import Scenario
from .variants import Mechanism


@dataclass
class Lbr:
    """One LBR stack: newest record first, tags are (context, sequence number)."""
    depth: int
    records: list = field(default_factory=list)
    lip: bool = False  # FROM/TO are linear addresses (CPUID.1C:EAX[31]), else offsets from CS

    def push(self, owner: str, last: int, n: int) -> None:
        """The owner's branches last-n+1 .. last; older ones age out, which is not a loss."""
        newest = [(owner, seq) for seq in range(last, max(last - n, last - self.depth), -1)]
        self.records[:0] = newest
        del self.records[self.depth:]


@dataclass
class Guest:
    name: str
    depth: int
    lbr_en: bool = False
    event: bool = False  # KVM's guest LBR event exists (pmu_intel.c)
    used: bool = False  # an LBR access in the current time slice (lazy release)
    cpu: int | None = None
    saved: Lbr | None = None  # component 15 as XSAVES left it
    seq: int = 0


@dataclass
class Pcpu:
    index: int
    hw: Lbr | None = None  # whose records the hardware holds
    owner: str | None = None
    guest: str | None = None
    host: str | None = None
    xss: int = 0
    lip: bool = False


class Host:
    """The state of every pCPU and context under one sharing mechanism."""

    def __init__(self, scenario: Scenario, mech: Mechanism):
        self.s, self.m = scenario, mech
        self.cpus = [Pcpu(i, xss=scenario.host_xss, lip=i in scenario.lip_cpus)
                     for i in range(scenario.pcpus)]
        self.guests = {n: Guest(n, self._guest_depth(d)) for n, d in scenario.vcpus.items()}
        self.host_seq: Counter = Counter()
        self.lost: Counter = Counter()
        self.crossed = 0
        self.saves = self.xss_restored = self.wrong_ip_form = 0
        self.timeline: list[list[str | None]] = []
        self.offered = bool(mech.supported_xss(scenario.host_xss, True) & XFEATURE_MASK_LBR)

    def _guest_depth(self, asked: int) -> int:
        # v3/v12 accept only the host's maximum depth at KVM_SET_CPUID2 (reference s.4, s.6)
        return asked if self.m.any_depth else self.s.host_depth

    # --- owning the hardware ---------------------------------------------------------
    def _discard(self, lbr: Lbr | None) -> None:
        for owner, _ in lbr.records if lbr else ():
            self.lost[owner] += 1

    @staticmethod
    def _give(cpu: Pcpu, owner: str | None, lbr: Lbr | None) -> None:
        cpu.owner, cpu.hw = owner, lbr

    def _xsaves(self, g: Guest, cpu: Pcpu) -> None:
        """Sched-out: component 15 saved with IA32_XSS bit 15 set just around it if needed."""
        cpu.xss = self.s.host_xss | XFEATURE_MASK_LBR  # XSAVES saves only what XSS enables
        g.saved = Lbr(g.depth, list(cpu.hw.records), cpu.lip)
        self.saves += 1
        if self.m.restores_xss:
            cpu.xss = self.s.host_xss  # Linux's independent supervisor features: put back
        self.xss_restored += cpu.xss == self.s.host_xss
        cpu.owner, cpu.hw = None, None

    def _xrstors(self, g: Guest, cpu: Pcpu) -> None:
        saved, g.saved = g.saved or Lbr(g.depth, lip=cpu.lip), None
        if saved.lip != cpu.lip and not self.m.translates_lip:
            self.wrong_ip_form += len(saved.records)  # hybrid: another core type's LIP
        saved.lip = cpu.lip
        if not self.m.any_depth or g.depth == self.s.host_depth or self.m.writes_depth:
            self._give(cpu, g.name, saved)
            return
        self._discard(saved)  # XRSTORS under another DEPTH clears records (reference s.2)
        self._give(cpu, g.name, Lbr(g.depth))

    def _active(self, g: Guest) -> bool:
        """The guest's LBR is in hardware: its event runs and host perf does not hold the CPU."""
        return g.cpu is not None and self.cpus[g.cpu].owner == g.name

    def _activate(self, g: Guest) -> None:
        cpu = self.cpus[g.cpu]
        if cpu.host is None and (g.event or not self.m.perf_event) and self.offered:
            self._xrstors(g, cpu)

    def _deactivate(self, g: Guest) -> None:
        cpu = self.cpus[g.cpu]
        if cpu.owner != g.name:
            return
        if self.m.saves_on_preempt or cpu.host is None:  # sched-out, or vlbr's preemption
            self._xsaves(g, cpu)
        else:
            self._discard(cpu.hw)  # perf resets the LBR for the new user, unsaved
            cpu.owner, cpu.hw = None, None

    # --- the schedule ------------------------------------------------------------------
    def run(self, vcpu: str, index: int) -> None:
        g, cpu = self.guests[vcpu], self.cpus[index]
        if cpu.guest is not None and cpu.guest != vcpu:
            self.stop(cpu.guest)
        if g.cpu is not None and g.cpu != index:
            self.stop(vcpu)
        if g.cpu == index:
            return
        cpu.guest, g.cpu = vcpu, index
        self._activate(g)

    def stop(self, vcpu: str) -> None:
        g = self.guests[vcpu]
        if g.cpu is None:
            return
        self._deactivate(g)
        self.cpus[g.cpu].guest, g.cpu = None, None

    def lbr(self, vcpu: str, on: bool) -> None:
        g = self.guests[vcpu]
        g.lbr_en, g.used = on, True
        if on and not g.event and self.m.perf_event:
            g.event = True  # intel_pmu_create_guest_lbr_event on LBREn=1
            if g.cpu is not None:
                self._activate(g)

    def branch(self, who: str, n: int) -> None:
        self._branch(who, n) if who in self.guests else self._host_branch(who, n)

    def _branch(self, vcpu: str, n: int) -> None:
        g = self.guests[vcpu]
        if g.cpu is None or not g.lbr_en:
            return
        g.seq += n
        if self._active(g):
            self.cpus[g.cpu].hw.push(vcpu, g.seq, n)
        elif self.m.emulates and self.offered:
            (g.saved or self._new_saved(g)).push(vcpu, g.seq, n)  # the vCPU model records them
        else:
            self.lost[vcpu] += n  # event not active: the branches are never recorded

    def _new_saved(self, g: Guest) -> Lbr:
        g.saved = Lbr(g.depth, lip=self.cpus[g.cpu].lip)
        return g.saved

    def _host_branch(self, event: str, n: int) -> None:
        cpu = next((c for c in self.cpus if c.host == event), None)
        if cpu is not None:
            self.host_seq[event] += n
            cpu.hw.push(event, self.host_seq[event], n)

    def host_on(self, event: str, index: int) -> None:
        self.host_off(event)  # a per-task event follows its task to this pCPU
        cpu = self.cpus[index]
        if cpu.host is not None:
            return  # one LBR host event per pCPU at a time; a second one waits (flexible)
        cpu.host = event
        if cpu.guest is not None:
            self._deactivate(self.guests[cpu.guest])
        self._give(cpu, event, Lbr(self.s.host_depth))  # perf resets the LBR for its event

    def host_off(self, event: str) -> None:
        cpu = next((c for c in self.cpus if c.host == event), None)
        if cpu is None:
            return
        cpu.host, cpu.owner, cpu.hw = None, None, None  # perf read its records at stop
        if cpu.guest is not None:
            self._activate(self.guests[cpu.guest])

    def debug(self, vcpu: str) -> None:
        """#DB injection: the architecture clears LBREn; v12 only while the event is in use."""
        g = self.guests[vcpu]
        if not self.m.db_clears_only_in_use or self._active(g):
            g.lbr_en = False

    def tick(self, index: int) -> None:
        """End of a time slice: lazy release of an unused guest LBR event (intel_pmu_cleanup)."""
        name = self.cpus[index].guest
        g = self.guests.get(name) if name else None
        if g is None:
            return
        if self.m.lazy_release_drops and g.event and not g.used and not g.lbr_en:
            if self._active(g):
                self._discard(self.cpus[index].hw)
                self.cpus[index].owner = self.cpus[index].hw = None
            self._discard(g.saved)
            g.saved, g.event = None, False
        g.used = False

    def read(self, who: str) -> None:
        """The context reads its LBR; a record it did not take has crossed a boundary."""
        self.crossed += sum(owner != who for owner, _ in self.view(who))
        if who in self.guests:
            self.guests[who].used = True

    def view(self, who: str) -> list:
        if who in self.guests:
            g = self.guests[who]
            if self._active(g):
                return self.cpus[g.cpu].hw.records
            return g.saved.records if self.m.emulates and g.saved else []  # mainline: zeros
        cpu = next((c for c in self.cpus if c.host == who), None)
        return cpu.hw.records if cpu is not None and cpu.owner == who else []

    def snapshot(self) -> None:
        self.timeline.append([c.owner for c in self.cpus])


def simulate(scenario: Scenario, mech: Mechanism) -> Host:
    host = Host(scenario, mech)
    for op, *args in scenario.schedule:
        getattr(host, op.replace("-", "_"))(*args)
        host.snapshot()
    for name in host.guests:
        host.read(name)
    return host
