"""Isolation: a hypothesis state machine over MSR accesses, branches, events, context switches,
XSAVES/XRSTORS, save/restore and migration, on 3 vCPUs and a host context sharing one
physical CPU, checked after every step against a deliberately simple reference model.

The reference model below uses plain dicts and lists and is written from the rules in
../shared/docs/arch-lbr-reference.md ("ref N") and vlbr's choices in vlbr/vcpu/lbr.py."""

from __future__ import annotations

import json

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from vcpu_tables import alder_lake
from vlbr.vcpu import ArchLbrVcpu, Branch, GeneralProtection, LbrConfig

N_VCPUS = 3
HOST = N_VCPUS  # context index of the host (its own LBR use, e.g. host perf)
CONFIG = LbrConfig.from_cpuid(alder_lake())
MAX_DEPTH = 32

# MSR numbers and bits, written out from the reference doc (ref 2) rather than imported
LBR_CTL, LBR_DEPTH, DEBUGCTL, XSS, PERF_CAP = 0x14CE, 0x14CF, 0x1D9, 0xDA0, 0x345
LER = [0x1DD, 0x1DE, 0x1E0]
GSTATUS, GSTATUS_RESET = 0x38E, 0x390
FROM, TO, INFO = 0x1500, 0x1600, 0x1200
FRZ = 1 << 58
FREEZE_ON_PMI = 1 << 11
# BR_TYPE encodings (ref 2) and the LBR_CTL filter bit of each kind (ref 2: bits 16..22)
BR_TYPES = {"JCC": 0, "NEAR_IND_JMP": 1, "NEAR_REL_JMP": 2, "NEAR_IND_CALL": 3,
            "NEAR_REL_CALL": 4, "NEAR_RET": 5, "OTHER": 8}
FILTER_BIT = {0: 16, 2: 17, 1: 18, 4: 19, 3: 20, 5: 21, 8: 22}
INFO_RESERVED = ((1 << 56) - 1) & ~0xFFFF  # bits 55:16


def canonical(v: int) -> bool:
    return v < (1 << 47) or v >= (1 << 64) - (1 << 47)


def ip_base(ctx: int) -> int:
    return 0xFFFF_8000_0000_0000 if ctx == HOST else (ctx + 1) << 36


def owner_of(ip: int) -> int | None:
    for ctx in range(N_VCPUS + 1):
        if ip_base(ctx) <= ip < ip_base(ctx) + (1 << 36):
            return ctx
    return None


class Ref:
    """The reference model of one context: plain values, lists and a dict."""

    def __init__(self):
        self.ctl, self.depth, self.ler = 0, MAX_DEPTH, [0, 0, 0]
        self.rec = [[0, 0, 0] for _ in range(MAX_DEPTH)]
        self.debugctl = self.xss = self.gstatus = self.cyc = 0
        self.smm = None

    def lbr_msrs(self) -> dict:
        out = {DEBUGCTL: self.debugctl, PERF_CAP: 0x3F, XSS: self.xss, GSTATUS: self.gstatus,
               LBR_CTL: self.ctl, LBR_DEPTH: self.depth, LER[0]: self.ler[0], LER[1]: self.ler[1],
               LER[2]: self.ler[2]}
        for i in range(MAX_DEPTH):
            out[FROM + i], out[TO + i], out[INFO + i] = self.rec[i]
        return out

    def active(self) -> bool:
        return bool(self.ctl & 1 and not self.gstatus & FRZ and self.ctl & 6 and self.ctl >> 16 & 0x7F)

    def retire(self, frm, to, kind, cpl, mispred, cycles, is_return):
        if not self.active():
            return
        self.cyc += cycles
        if not self.ctl & (2 if cpl == 0 else 4) or not self.ctl >> FILTER_BIT[kind] & 1:
            return
        d = self.depth
        if self.ctl & 8 and (kind == 5 or is_return):  # call-stack pop
            self.rec = self.rec[1:d] + [[0, 0, 0]] + self.rec[d:]
            return
        info = kind << 56 | (1 << 63 if mispred else 0) | min(self.cyc, 0xFFFF) | 1 << 60
        self.cyc = 0
        self.rec = [[frm, to, info]] + self.rec[:d - 1] + self.rec[d:]

    def take_ler(self):
        if self.ctl & 1 and not self.gstatus & FRZ and self.rec[0] != [0, 0, 0]:
            self.ler = list(self.rec[0])

    def write(self, msr, v, host) -> bool:
        """Apply a WRMSR; False when it must #GP."""
        if msr == LBR_CTL:
            if v & ~0x7F000F:
                return False
            self.ctl = v
        elif msr == LBR_DEPTH:
            if v not in (8, 16, 32):
                return False
            self.depth = v
            self.rec = [[0, 0, 0] for _ in range(MAX_DEPTH)]
        elif msr in LER:
            i = LER.index(msr)
            if (i < 2 and not canonical(v)) or (i == 2 and v & INFO_RESERVED):
                return False
            self.ler[i] = v
        elif msr == DEBUGCTL:
            if v & ~(3 | FREEZE_ON_PMI):
                return False
            self.debugctl = v & FREEZE_ON_PMI
        elif msr == XSS:
            if v & ~0x19900:
                return False
            self.xss = v
        elif msr == GSTATUS:
            if not host or v & ~FRZ:
                return False
            self.gstatus = v
        elif msr == GSTATUS_RESET:
            if v & ~(0xFF | 0xF << 32 | 0xF << 58 | 3 << 62):
                return False
            self.gstatus &= ~v
        else:
            base = msr & ~0xFF
            idx = msr - base
            if idx >= (MAX_DEPTH if host else self.depth):
                return False
            f = [FROM, TO, INFO].index(base)
            if (f < 2 and not canonical(v)) or (f == 2 and v & INFO_RESERVED):
                return False
            self.rec[idx][f] = v
        return True

    def read(self, msr, host):
        """The RDMSR value, or None when it must #GP."""
        if msr == GSTATUS_RESET:
            return 0
        if msr & ~0xFF in (FROM, TO, INFO) and msr & 0xFF >= (MAX_DEPTH if host else self.depth):
            return None
        return self.lbr_msrs()[msr]

    def snapshot(self):
        init = (self.ctl == 0 and self.depth == MAX_DEPTH and self.ler == [0, 0, 0]
                and all(r == [0, 0, 0] for r in self.rec))
        return None if init else (self.ctl, self.depth, list(self.ler), [list(r) for r in self.rec])

    def restore_snapshot(self, snap):
        if snap is None:
            self.ctl, self.ler = 0, [0, 0, 0]
            self.rec = [[0, 0, 0] for _ in range(MAX_DEPTH)]
            return
        self.ctl, self.ler = snap[0], list(snap[2])
        same = snap[1] == self.depth
        self.rec = [list(r) for r in snap[3]] if same else [[0, 0, 0] for _ in range(MAX_DEPTH)]


KIND = st.sampled_from(sorted(BR_TYPES.values()))


def msr_value(data, ctx: int, msr: int) -> int:
    """A value for `msr`: mostly legal, sometimes one a #GP rule rejects."""
    base = ip_base(ctx)
    if msr == LBR_CTL:
        return data.draw(st.one_of(st.sampled_from([0, 1, 0x7F0007, 0x7F000F, 0x10003, 0x200007,
                                                    0x400005, 1 << 5, 1 << 23]),
                                   st.integers(0, 0x7F000F).map(lambda v: v | 1)))
    if msr == LBR_DEPTH:
        return data.draw(st.sampled_from([8, 16, 32, 0, 24, 64]))
    if msr in (DEBUGCTL,):
        return data.draw(st.sampled_from([0, FREEZE_ON_PMI, 3, 4]))
    if msr == XSS:
        return data.draw(st.sampled_from([0, 1 << 15, 2]))
    if msr == GSTATUS:
        return data.draw(st.sampled_from([0, FRZ, 1]))
    if msr == GSTATUS_RESET:
        return data.draw(st.sampled_from([FRZ, 1 << 57, 0]))
    if msr == LER[2] or msr & ~0xFF == INFO:
        return data.draw(st.sampled_from([0, 5 << 56 | 1 << 63 | 9, 1 << 20]))
    return data.draw(st.one_of(st.integers(0, (1 << 36) - 1).map(lambda o: base + o),
                               st.just(1 << 47)))


MSRS = [LBR_CTL, LBR_DEPTH, DEBUGCTL, XSS, GSTATUS, GSTATUS_RESET, *LER,
        FROM, FROM + 7, FROM + 20, TO + 3, INFO, INFO + 31]


class IsolationMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.lbr = [ArchLbrVcpu(CONFIG) for _ in range(N_VCPUS + 1)]
        self.ref = [Ref() for _ in range(N_VCPUS + 1)]
        self.current = HOST
        for ctx in range(N_VCPUS):
            self.lbr[ctx].put()
        self.areas: dict[tuple[int, int], tuple[bytearray, object]] = {}

    # -- the physical CPU: one context loaded at a time ----------------------------------

    @rule(to=st.integers(0, N_VCPUS))
    def switch(self, to):
        if to != self.current:
            self.lbr[self.current].put()
            self.lbr[to].load()
            self.current = to

    @rule(kind=KIND, cpl=st.sampled_from([0, 3]), mispred=st.booleans(),
          cycles=st.integers(0, 50), offs=st.tuples(st.integers(0, 1 << 20), st.integers(0, 1 << 20)),
          is_return=st.booleans())
    def branch(self, kind, cpl, mispred, cycles, offs, is_return):
        base = ip_base(self.current)
        frm, to = base + offs[0], base + offs[1]
        self.lbr[self.current].retire_branch(Branch(frm, to, kind, cpl, mispred, cycles,
                                                    is_return=is_return))
        self.ref[self.current].retire(frm, to, kind, cpl, mispred, cycles, is_return)

    @rule(trace=st.lists(st.tuples(KIND, st.sampled_from([0, 3]), st.integers(0, 1 << 20),
                                   st.integers(0, 30)), min_size=1, max_size=60))
    def batch(self, trace):
        base = ip_base(self.current)
        kinds, cpls, offs, cycles = (list(c) for c in zip(*trace))
        frm = [base + o for o in offs]
        to = [base + o + 2 for o in offs]
        self.lbr[self.current].record_batch(np.array(frm, np.uint64), np.array(to, np.uint64),
                                            np.array(kinds), np.array(cpls), cycles=np.array(cycles))
        for args in zip(frm, to, kinds, cpls, [False] * len(frm), cycles, [False] * len(frm)):
            self.ref[self.current].retire(*args)

    # -- MSRs ----------------------------------------------------------------------------

    def _wrmsr(self, ctx, msr, value, host):
        ok = self.ref[ctx].write(msr, value, host)
        try:
            self.lbr[ctx].wrmsr(msr, value, host_initiated=host)
            faulted = False
        except GeneralProtection:
            faulted = True
        assert faulted == (not ok), (hex(msr), hex(value), host)

    @rule(data=st.data(), msr=st.sampled_from(MSRS))
    def guest_wrmsr(self, data, msr):
        if self.current == HOST:
            return  # the host's own LBR MSRs are written by host perf: same rules, host=False
        self._wrmsr(self.current, msr, msr_value(data, self.current, msr), host=False)

    @rule(data=st.data(), ctx=st.integers(0, N_VCPUS - 1), msr=st.sampled_from(MSRS))
    def vmm_wrmsr(self, data, ctx, msr):
        self._wrmsr(ctx, msr, msr_value(data, ctx, msr), host=True)

    @rule(msr=st.sampled_from(MSRS + [PERF_CAP, FROM + 31]))
    def guest_rdmsr(self, msr):
        want = self.ref[self.current].read(msr, host=False)
        try:
            got = self.lbr[self.current].rdmsr(msr)
        except GeneralProtection:
            got = None
        assert got == want, hex(msr)

    # -- events --------------------------------------------------------------------------

    @rule(event=st.sampled_from(["db", "init", "smi", "rsm", "pmi", "exception"]),
          off=st.integers(0, 1 << 20))
    def event(self, event, off):
        v, m = self.lbr[self.current], self.ref[self.current]
        if event == "db":
            v.debug_exception()
            m.take_ler()
            m.ctl &= ~1
        elif event == "init":
            v.init()
            m.ctl &= ~1
            m.smm = None
        elif event == "smi":
            v.smi()
            if m.smm is None:
                m.smm, m.ctl = m.ctl & 1, m.ctl & ~1
        elif event == "rsm":
            v.rsm()
            if m.smm is not None:
                m.ctl, m.smm = (m.ctl & ~1) | m.smm, None
        elif event == "pmi":
            v.pmi()
            if m.debugctl & FREEZE_ON_PMI:
                m.gstatus |= FRZ
        else:
            base = ip_base(self.current)
            v.exception(base + off, base + 0x100, 0)
            m.take_ler()
            m.retire(base + off, base + 0x100, BR_TYPES["OTHER"], 0, False, 0, False)

    # -- XSAVES / XRSTORS by the guest, into its own memory --------------------------------

    @rule(slot=st.integers(0, 1))
    def xsaves(self, slot):
        area = bytearray(2048)
        self.lbr[self.current].xsaves(area, 0, (1 << 64) - 1, 0x3, 1 << 15)
        self.areas[(self.current, slot)] = (area, self.ref[self.current].snapshot())

    @precondition(lambda self: any(ctx == self.current for ctx, _ in self.areas))
    @rule(slot=st.integers(0, 1))
    def xrstors(self, slot):
        saved = self.areas.get((self.current, slot))
        if saved is None:
            return
        self.lbr[self.current].xrstors(saved[0], 0, (1 << 64) - 1, 0x3, 1 << 15)
        self.ref[self.current].restore_snapshot(saved[1])

    # -- migration: save -> JSON -> restore into a fresh vCPU ------------------------------

    @rule(ctx=st.integers(0, N_VCPUS - 1))
    def migrate(self, ctx):
        blob = json.dumps(self.lbr[ctx].save())
        fresh = ArchLbrVcpu(CONFIG)
        fresh.restore(json.loads(blob))
        if ctx != self.current:
            fresh.put()
        self.lbr[ctx] = fresh

    # -- checks --------------------------------------------------------------------------

    @invariant()
    def matches_reference(self):
        for ctx in range(N_VCPUS + 1):
            saved = self.lbr[ctx].save()
            assert dict(map(tuple, saved["msrs"])) == self.ref[ctx].lbr_msrs(), ctx
            assert saved["smm_lbren"] == self.ref[ctx].smm and saved["cycles"] == self.ref[ctx].cyc
            assert self.lbr[ctx].loaded == (ctx == self.current)

    @invariant()
    def no_ip_crosses_contexts(self):
        for ctx in range(N_VCPUS + 1):
            v = self.lbr[ctx]
            ips = [ip for rec in v.records() for ip in rec[:2]] + list(v.ler[:2])
            assert all(ip == 0 or ip == 1 << 47 or owner_of(ip) == ctx for ip in ips), ctx


IsolationMachine.TestCase.settings = settings(
    max_examples=80, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
TestIsolation = IsolationMachine.TestCase
