"""Host perf and guests sharing one LBR per physical CPU: who owns it, what each context sees.

A pure simulation of the host side (reference doc sections 6-7). Each physical CPU has one LBR
whose records are tagged with the context that took the branch; a context reading its LBR
must see only its own records (`crossed` counts the others) and, ideally, its last `depth`
branches (`lost` counts the shortfall). Variants:

* mainline-mechanism (arch/x86/kvm/vmx/pmu_intel.c, reused by the Arch LBR series): the guest
  LBR event is pinned and exclude_host; while host perf holds the LBR the event is not active,
  the guest's reads return 0 and its branches are not recorded; when it is active again perf
  resets the LBR (arch/x86/events/intel/lbr.c, intel_pmu_lbr_reset on first user). A vCPU
  thread's sched-out/in saves and restores its records (perf's task context, XSAVES of
  component 15); an XRSTORS at another depth clears them.
* v12: the 2022 series (20220517154100.29983-*-weijiang.yang@intel.com) reuses that event
  unchanged, so its losses are mainline-mechanism's; it differs in policy, not here.
* vlbr: lossless. Host takeover saves the guest's image, the guest's branches keep being
  recorded into it (vlbr records in software), and it is restored with the guest's own depth.
Every save is XSAVES of component 15; when the host's IA32_XSS lacks bit 15 it is set only
around the save (Linux's independent features) and `xss_restored` says it always came back.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

from vlbr.arch.xsave import ARCH_LBR_COMPONENT

XSS_LBR = 1 << ARCH_LBR_COMPONENT

SHARING_VARIANTS = ("mainline-mechanism", "v12", "vlbr")
HOST = "host"  # the owner tag of host perf's records on a CPU
LOSSLESS = frozenset({"vlbr"})


@dataclass
class Context:
    """One LBR user: a vCPU, or host perf on one CPU. records: newest last."""
    name: str
    records: list[tuple[str, int]] = field(default_factory=list)  # (owner, branch serial)
    taken: int = 0  # branches this context took while it wanted recording
    lost: int = 0
    crossed: int = 0
    reads: int = 0


@dataclass
class Cpu:
    """One physical CPU's LBR: its depth, the records in it, who is loaded on it."""
    index: int
    depth: int
    lbr: list[tuple[str, int]] = field(default_factory=list)
    current: str | None = None  # the vCPU whose thread runs here
    host_perf: bool = False
    owner: str | None = None  # whose records the LBR holds now
    timeline: list[tuple[int, str | None]] = field(default_factory=list)


class SharingSim:
    """Runs a schedule of steps under one variant; `result()` gives the per-variant figures."""

    def __init__(self, variant: str, cpu_depths: list[int], host_xss_lbr: bool = False):
        if variant not in SHARING_VARIANTS:
            raise ValueError(f"unknown sharing variant {variant!r}")
        self.variant = variant
        self.cpus = [Cpu(i, d) for i, d in enumerate(cpu_depths)]
        self.host_xss = XSS_LBR if host_xss_lbr else 0  # the host's IA32_XSS between saves
        self.xss = self.host_xss
        self.contexts: dict[str, Context] = {}
        self.home: dict[str, int] = {}  # vCPU -> the CPU its thread is on
        self.saved: dict[str, tuple[int, list]] = {}  # vCPU -> (depth, component-15 image)
        self.guest_depth: dict[str, int] = {}
        self.saves = 0
        self.xss_restored = True
        self.clock = 0

    # -- set-up -----------------------------------------------------------------------------
    def add_vcpu(self, name: str, cpu: int) -> None:
        self._cpu(cpu)
        if name in self.contexts or name == HOST:
            raise ValueError(f"vCPU {name!r} given twice")
        self.contexts[name] = Context(name)
        self.home[name] = cpu
        self.guest_depth[name] = self.cpus[cpu].depth  # what its leaf 0x1C enumerates
        self.saved[name] = (self.cpus[cpu].depth, [])

    # -- steps ------------------------------------------------------------------------------
    def run(self, vcpu: str) -> None:
        """Schedule vcpu's thread in on its CPU (the previous vCPU there is scheduled out)."""
        cpu = self.cpus[self.home[self._vcpu(vcpu)]]
        if cpu.current != vcpu:
            self._sched_out(cpu)
            cpu.current = vcpu
            self._settle(cpu)

    def migrate(self, vcpu: str, to: int) -> None:
        cpu = self.cpus[self.home[self._vcpu(vcpu)]]
        if cpu.current == vcpu:
            self._sched_out(cpu)
            self._settle(cpu)
        self.home[vcpu] = self._cpu(to).index

    def host_perf(self, cpu: int, on: bool) -> None:
        c = self._cpu(cpu)
        c.host_perf = on
        self._host_context(cpu)
        self._settle(c)

    def branches(self, who: str, count: int, cpu: int | None = None) -> None:
        """count branches taken by vCPU `who` (on its CPU, which must run it) or by host code
        on `cpu` (recorded only while host perf is on there)."""
        if who == HOST:
            c = self._cpu(cpu)
            if c.host_perf:
                self._take(c, self._host_context(c.index), count)
            return
        c = self.cpus[self.home[self._vcpu(who)]]
        if c.current != who:
            raise ValueError(f"{who} branches while its thread is not running")
        self._take(c, self.contexts[who], count)

    def read(self, who: str, cpu: int | None = None) -> list[tuple[str, int]]:
        """What `who` sees in its LBR now (newest last); counts crossed and lost records."""
        if who == HOST:
            c = self._cpu(cpu)
            ctx = self._host_context(c.index)
            seen = c.lbr if c.owner == HOST else []
        else:
            c = self.cpus[self.home[self._vcpu(who)]]
            ctx = self.contexts[who]
            if c.current != who:
                raise ValueError(f"{who} reads while its thread is not running")
            seen = self._guest_view(c, who)
        ctx.reads += 1
        ctx.crossed += sum(1 for owner, _ in seen if owner != ctx.name)
        want = min(ctx.taken, self._depth_of(who, c))
        ctx.lost += max(0, want - sum(1 for owner, _ in seen if owner == ctx.name))
        return list(seen)

    # -- the mechanism ------------------------------------------------------------------------
    def _guest_view(self, cpu: Cpu, vcpu: str) -> list:
        if cpu.owner == vcpu:
            return cpu.lbr
        if self.variant in LOSSLESS:
            return self.saved[vcpu][1]
        return []  # the guest LBR event is not active: reads return 0

    def _take(self, cpu: Cpu, ctx: Context, count: int) -> None:
        for _ in range(count):
            self.clock += 1
            ctx.taken += 1
            if cpu.owner == ctx.name:
                self._push(cpu.lbr, (ctx.name, self.clock), self._depth_of(ctx.name, cpu))
            elif self.variant in LOSSLESS and ctx.name != HOST:
                self._push(self.saved[ctx.name][1], (ctx.name, self.clock),
                           self.guest_depth[ctx.name])

    @staticmethod
    def _push(records: list, record: tuple, depth: int) -> None:
        records.append(record)
        del records[:-depth]

    def _wanted_owner(self, cpu: Cpu) -> str | None:
        """Host perf's pinned event wins the LBR; else the running vCPU's guest event."""
        if cpu.host_perf:
            return HOST
        return cpu.current

    def _settle(self, cpu: Cpu) -> None:
        """Hand the LBR to whoever should own it now, saving and restoring as the variant does."""
        new = self._wanted_owner(cpu)
        if new == cpu.owner:
            return
        old = cpu.owner
        if old is not None and old != HOST:
            if self.variant in LOSSLESS:
                self._save(cpu, old)
            else:  # the event goes inactive unsaved; perf restarts it on a reset LBR
                self.saved[old] = (cpu.depth, [])
        cpu.lbr = []  # intel_pmu_lbr_reset: a new user never sees the last one's records
        cpu.owner = new
        if new is not None and new != HOST:
            self._restore(cpu, new)
        cpu.timeline.append((self.clock, new))

    def _sched_out(self, cpu: Cpu) -> None:
        vcpu = cpu.current
        if vcpu is None:
            return
        if cpu.owner == vcpu:
            self._save(cpu, vcpu)
            cpu.lbr, cpu.owner = [], None
            cpu.timeline.append((self.clock, None))
        cpu.current = None

    def _save(self, cpu: Cpu, vcpu: str) -> None:
        """XSAVES of component 15, with IA32_XSS bit 15 set around it if the host lacks it."""
        self.saves += 1
        with self._xss_with_lbr():
            self.saved[vcpu] = (cpu.depth, list(cpu.lbr))

    @contextmanager
    def _xss_with_lbr(self):
        """XSAVES/XRSTORS touch component 15 only with IA32_XSS bit 15 set; a host without it
        sets it around the instruction and must put its own value back."""
        before = self.xss
        self.xss |= XSS_LBR
        yield
        self.xss = before
        self.xss_restored &= self.xss == self.host_xss

    def _restore(self, cpu: Cpu, vcpu: str) -> None:
        """XRSTORS of the saved image. At another depth (a hybrid host's other core type)
        the records are cleared, unless the variant keeps the guest's own depth."""
        depth, image = self.saved[vcpu]
        keep = depth == cpu.depth or self.variant in LOSSLESS
        with self._xss_with_lbr():
            cpu.lbr = list(image) if keep else []

    def _depth_of(self, who: str, cpu: Cpu) -> int:
        """The depth who's records live at: the guest's own under a lossless variant."""
        if who != HOST and self.variant in LOSSLESS:
            return self.guest_depth[who]
        return cpu.depth

    # -- helpers ------------------------------------------------------------------------------
    def _host_context(self, cpu: int) -> Context:
        return self.contexts.setdefault(f"{HOST}@cpu{cpu}", Context(HOST))

    def _cpu(self, index: int | None) -> Cpu:
        if not isinstance(index, int) or not 0 <= index < len(self.cpus):
            raise ValueError(f"no physical CPU {index!r} (the scenario has {len(self.cpus)})")
        return self.cpus[index]

    def _vcpu(self, name: str) -> str:
        if name not in self.home:
            raise ValueError(f"no vCPU {name!r}")
        return name

    def result(self) -> dict:
        per = {name: {"lost": c.lost, "crossed": c.crossed, "reads": c.reads}
               for name, c in sorted(self.contexts.items())}
        return {"lost": sum(c.lost for c in self.contexts.values()),
                "crossed": sum(c.crossed for c in self.contexts.values()),
                "saves": self.saves, "xss_restored": self.xss_restored, "contexts": per,
                "timeline": {f"cpu{c.index}": [[t, o] for t, o in c.timeline] for c in self.cpus}}
