"""ArchLbrVcpu: the Arch LBR a guest observes on one vCPU: MSRs, recording, events, XSAVES.

Facts come from ../shared/docs/arch-lbr-reference.md ("ref" below). Where the reference
leaves a case open, vlbr decides as follows (tests cite these rules):

MSR access (#GP = GeneralProtection; the VMM sees it as -EINVAL):
- G1 LBR_CTL: reserved bits (outside 0x7F000F) #GP; OS/USR without 0x1C EBX[0], CALL_STACK
  without EBX[2], bits 22:16 without EBX[1] #GP (ref 2). Same for host writes.
- G2 LBR_DEPTH: a value not enumerated in 0x1C EAX[7:0] (0, not a multiple of 8, > 64, a
  clear bit) #GP; a legal write (guest or host) clears every record, LER is kept (ref 2).
- G3 records FROM/TO/INFO x: guest access with x >= LBR_DEPTH #GP (ref 2, Xen patch). Host
  access may reach every slot the vCPU holds (x < max depth); x >= max depth #GP for both.
- G4 record and LER writes are allowed (guest and host): FROM/TO must be canonical for
  the guest's linear-address width (48, or 57 with CPUID.7.0:ECX[16] LA57); INFO and
  LER_INFO must not set reserved bits 55:16. Capability-dependent INFO fields (CYC_CNT,
  MISPRED, BR_TYPE) are stored as written.
- G5 without CPUID.7.0:EDX[19] (or no depth in leaf 0x1C) every Arch LBR MSR #GPs.
- G6 DEBUGCTL: bits 0 (LBR) and 1 (BTF) are accepted and read 0 (as KVM drops them); bit 11
  FREEZE_LBRS_ON_PMI is stored when Arch LBR is enumerated; any other bit #GP.
- G7 PERF_CAPABILITIES: exists when CPUID.1:ECX[15] PDCM (guest); reads LBR_FMT 0x3F with
  Arch LBR; a guest write #GPs (read-only); a host write must equal the value read.
- G8 IA32_XSS: the guest needs CPUID.(0xD,1):EAX[3] XSAVES; bits outside CPUID.(0xD,1)
  EDX:ECX #GP (guest and host).
- G9 PERF_GLOBAL_STATUS (PMU version >= 2, as KVM): read-only for the guest; a host write may
  set only bit 58 (and only with Arch LBR and PMU v4). GLOBAL_STATUS_RESET 0x390
  (PMU >= 2): bits outside the counters and 58..63 (58..61 only from v4) #GP; reads 0;
  writing bit 58 unfreezes.
- G10 a value wider than 64 bits #GPs. MSRs the vCPU does not own raise NotOwnedMsr.

Recording:
- A branch is recorded while LBREn=1, not frozen (GLOBAL_STATUS bit 58), and the filters pass:
  CPL filter on `Branch.cpl`, the CPL the branch *ends* at (legacy LBR_SELECT wording,
  "branches ending in ring 0"), only when 0x1C EBX[0]; type filter bits 22:16 only when
  EBX[1]. Without a capability its filter is off (every CPL / type is recorded).
- Record 0 is the newest; a push drops the oldest live record (index DEPTH-1).
- Call-stack mode: a recorded NEAR_RET (or a branch with is_return) pops record 0 (the rest
  shift towards 0, slot DEPTH-1 reads 0) instead of being recorded; other branches push.
- INFO: BR_TYPE (kind, 8 for OTHER) only with ECX[2]; MISPRED only with ECX[0]; CYC_CNT
  (saturating at 0xFFFF) with CYC_CNT_VALID only with ECX[1]. CYC_CNT counts the `cycles`
  of every branch retired while recording since the last pushed record.
- IPs: effective (RIP) unless 0x1C EAX[31] LIP, then linear = RIP + `cs_base` (mod 2^64).
  With the flat segments of the Guest ABI, cs_base is 0 and both are equal.

Events: `debug_exception()` updates LER then clears LBREn; `init()` clears LBREn and keeps
every record; `smi()` saves and clears LBREn, `rsm()` restores it; `pmi()` with
DEBUGCTL.FREEZE_LBRS_ON_PMI and PMU >= 4 sets GLOBAL_STATUS bit 58 (frozen) until the guest
writes bit 58 to 0x390 (or the host clears it). `exception(from, to, cpl)` (also
`interrupt`): while LBREn and not frozen, LER := record 0 (the last recorded branch, when
there is one), then the delivery is retired as an OTHER branch through the filters.

State location: `put()` moves component-15 state (LBR_CTL, DEPTH, LER, records) into the
vCPU's own compacted XSAVE buffer, as KVM does on sched-out; host-initiated accesses then
read and write that buffer; guest accesses and branches while put are a backend bug
(VcpuStateError). `load()` brings it back.
"""

from __future__ import annotations

from typing import NamedTuple

from vlbr.arch.msrs import (DEBUGCTL_FREEZE_LBRS_ON_PMI, GLOBAL_STATUS_LBR_FRZ, IA32_DEBUGCTL,
                            IA32_LBR_CTL, IA32_LBR_DEPTH, IA32_LER_FROM_IP, IA32_LER_INFO,
                            IA32_LER_TO_IP, IA32_PERF_CAPABILITIES, IA32_PERF_GLOBAL_STATUS,
                            IA32_PERF_GLOBAL_STATUS_RESET, IA32_XSS, INFO_BR_TYPE_SHIFT,
                            INFO_CYC_CNT_MASK, INFO_CYC_CNT_VALID, INFO_MISPRED,
                            BranchType, LbrCtl, RecordKind,
                            decode_record_msr, msr_name, record_msr)
from vlbr.arch.x86 import XFEATURES_LEGACY
from vlbr.arch.xsave import XSS_ARCH_LBR

from . import xsaves as _xs
from .config import LbrConfig
from .faults import GeneralProtection, InvalidOpcode, NotOwnedMsr, VcpuStateError
from .state import (MASK64, ZERO_RECORD, LbrState, check_depth, check_info, check_ip,
                    check_lbr_ctl, check_u64, read_msrs, write_msrs)

__all__ = ["ArchLbrVcpu", "Branch", "FilterState", "GeneralProtection", "InvalidOpcode",
           "NotOwnedMsr", "VcpuStateError"]

_LER_MSRS = (IA32_LER_FROM_IP, IA32_LER_TO_IP, IA32_LER_INFO)
_OTHER_MSRS = frozenset({IA32_LBR_CTL, IA32_LBR_DEPTH, *_LER_MSRS, IA32_DEBUGCTL,
                         IA32_PERF_CAPABILITIES, IA32_XSS, IA32_PERF_GLOBAL_STATUS,
                         IA32_PERF_GLOBAL_STATUS_RESET})
_COMPONENT_MSRS = frozenset({IA32_LBR_CTL, IA32_LBR_DEPTH, *_LER_MSRS})
_DEBUGCTL_DROPPED = 0b11  # LBR, BTF: accepted and ignored
_NEAR_RET = int(BranchType.NEAR_RET)
_OWN_MASK = XFEATURES_LEGACY | XSS_ARCH_LBR  # the vCPU's own buffer


class Branch(NamedTuple):
    """One retired taken branch, as a backend reports it (cpl: the CPL at the target)."""

    from_ip: int
    to_ip: int
    kind: BranchType
    cpl: int
    mispredicted: bool = False
    cycles: int = 0
    is_call: bool = False
    is_return: bool = False


class FilterState(NamedTuple):
    """What decides whether a retired branch changes the records (module doc: Recording),
    as of the last change of LBR_CTL, GLOBAL_STATUS or the state's location."""

    recording: bool
    cpl_ok: tuple[bool, ...]  # by the CPL a branch ends at, 0..3
    kind_ok: tuple[bool, ...]  # by BR_TYPE, 0..15
    call_stack: bool
    info_kind: tuple[int, ...]  # the INFO bits of each BR_TYPE (0 without ECX[2])


class ArchLbrVcpu:
    """The guest-visible Arch LBR of one vCPU, backend-independent (see module doc)."""

    def __init__(self, config: LbrConfig):
        self.config = config
        self.cs_base = 0  # CS base for LIP; 0 with the Guest ABI's flat segments
        self._slots = config.max_depth
        self._s: LbrState | None = LbrState(config.max_depth, config.max_depth)
        self._buffer: bytearray | None = None  # the own XSAVE buffer, while put
        self._debugctl = 0
        self._xss = 0
        self._global_status = 0
        self._smm_lbren: int | None = None  # LBREn saved by SMI, None outside SMM
        self._cyc = 0  # cycles since the last pushed record
        self._own_layout = None
        self._recording = False
        self._update()

    # -- cached filter state (recomputed on every change of what recording depends on) ----

    def _update(self) -> None:
        cfg, s = self.config, self._s
        ctl = s.ctl if s is not None else 0
        frozen = bool(self._global_status & GLOBAL_STATUS_LBR_FRZ)
        if cfg.cpl_filtering:
            self._cpl_ok = [bool(ctl & LbrCtl.OS)] + [bool(ctl & LbrCtl.USR)] * 3
        else:
            self._cpl_ok = [True] * 4
        kinds = [True] * 16
        if cfg.branch_filtering:
            for kind in BranchType:
                allowed = bool(ctl & kind.filter_bit)
                if kind is BranchType.OTHER:
                    kinds[8:16] = [allowed] * 8
                else:
                    kinds[kind] = allowed
            for reserved in (6, 7):
                kinds[reserved] = False
        self._kind_ok = kinds
        self._callstack = bool(ctl & LbrCtl.CALL_STACK)
        self._recording = bool(s is not None and cfg.arch_lbr and ctl & LbrCtl.LBREN
                               and not frozen and any(self._cpl_ok) and any(kinds))
        self._info_kind = [(k << INFO_BR_TYPE_SHIFT) if cfg.branch_type else 0 for k in range(16)]

    @property
    def filters(self) -> FilterState:
        """A snapshot of the recording filters, for recorders that batch branches."""
        return FilterState(self._recording, tuple(self._cpl_ok), tuple(self._kind_ok),
                           self._callstack, tuple(self._info_kind))

    def guest_state(self) -> LbrState:
        """The loaded component-15 state that branches change (VcpuStateError while put)."""
        return self._guest_state()

    @property
    def pending_cycles(self) -> int:
        """Cycles retired while recording since the last pushed record (the next CYC_CNT)."""
        return self._cyc

    @pending_cycles.setter
    def pending_cycles(self, value: int) -> None:
        self._cyc = value

    @property
    def recording(self) -> bool:
        """True when a retired branch can change the records: backends step only then."""
        return self._recording

    @property
    def loaded(self) -> bool:
        return self._s is not None

    @property
    def frozen(self) -> bool:
        return bool(self._global_status & GLOBAL_STATUS_LBR_FRZ)

    @frozen.setter
    def frozen(self, value: bool) -> None:
        """LBR_FRZ as a PMU's STATUS_SET / STATUS_RESET bit 58 writes it (vcpu.pmu)."""
        self._global_status = GLOBAL_STATUS_LBR_FRZ if value else 0
        self._update()

    @property
    def in_smm(self) -> bool:
        return self._smm_lbren is not None

    # -- recording ----------------------------------------------------------------------

    def retire_branch(self, b: Branch) -> None:
        """Record one retired branch as the hardware would (module doc: Recording)."""
        if not self._recording:
            if self._s is None:
                raise VcpuStateError("retire_branch on a vCPU whose LBR state is put")
            return
        cyc = self._cyc + b.cycles
        if not (self._cpl_ok[b.cpl] and self._kind_ok[b.kind]):
            self._cyc = cyc
            return
        s = self._s
        rec = s.rec
        if self._callstack and (b.kind == _NEAR_RET or b.is_return):
            self._cyc = cyc
            del rec[0]
            rec.insert(s.depth - 1, ZERO_RECORD)
            return
        cfg = self.config
        info = self._info_kind[b.kind]
        if b.mispredicted and cfg.mispredict:
            info |= INFO_MISPRED
        if cfg.timed_lbr:
            info |= (cyc if cyc < INFO_CYC_CNT_MASK else INFO_CYC_CNT_MASK) | INFO_CYC_CNT_VALID
        self._cyc = 0
        frm, to = b.from_ip, b.to_ip
        if cfg.lip and self.cs_base:
            frm, to = (frm + self.cs_base) & MASK64, (to + self.cs_base) & MASK64
        rec.insert(0, (frm, to, info))
        del rec[s.depth]

    def record_batch(self, from_ips, to_ips, kinds, cpls, mispred=None, cycles=None,
                     is_return=None) -> None:
        """retire_branch for each element of the numpy arrays, in order (same result)."""
        from .batch import record_batch
        record_batch(self, from_ips, to_ips, kinds, cpls, mispred, cycles, is_return)

    def records(self) -> list[tuple[int, int, int]]:
        """The live records (from, to, info), record 0 (newest) first."""
        s = self._state_for_host()
        return list(s.rec[:s.depth])

    # -- events -------------------------------------------------------------------------

    def _guest_state(self) -> LbrState:
        if self._s is None:
            raise VcpuStateError("guest event or access on a vCPU whose LBR state is put")
        return self._s

    def _update_ler(self) -> None:
        s = self._guest_state()
        if s.ctl & LbrCtl.LBREN and not self.frozen and s.rec and s.rec[0] != ZERO_RECORD:
            s.ler = s.rec[0]

    def exception(self, from_ip: int, to_ip: int, cpl: int) -> None:
        """An exception or interrupt delivered from `from_ip` to the handler `to_ip` at `cpl`."""
        if not self.config.arch_lbr:
            return
        self._update_ler()
        self.retire_branch(Branch(from_ip, to_ip, BranchType.OTHER, cpl))

    interrupt = exception

    def debug_exception(self) -> None:
        """#DB: LER is updated and LBREn cleared, so the records end at the #DB (ref 2)."""
        if not self.config.arch_lbr:
            return
        self._update_ler()
        self._s.ctl &= ~LbrCtl.LBREN
        self._update()

    def init(self) -> None:
        """INIT: every LBR MSR kept, LBREn cleared; leaves SMM (ref 2)."""
        s = self._guest_state()
        s.ctl &= ~LbrCtl.LBREN
        self._smm_lbren = None
        self._update()

    def smi(self) -> None:
        """SMI: LBREn saved and cleared (ref 2); an SMI inside SMM is latched, no effect."""
        s = self._guest_state()
        if self._smm_lbren is None:
            self._smm_lbren = s.ctl & LbrCtl.LBREN
            s.ctl &= ~LbrCtl.LBREN
            self._update()

    def rsm(self) -> None:
        """RSM: LBREn restored to its value at the SMI."""
        s = self._guest_state()
        if self._smm_lbren is not None:
            s.ctl = (s.ctl & ~LbrCtl.LBREN) | self._smm_lbren
            self._smm_lbren = None
            self._update()

    def pmi(self) -> None:
        """A PMI: with FREEZE_LBRS_ON_PMI and PMU v4+, freeze and set GLOBAL_STATUS bit 58."""
        self._guest_state()
        if (self.config.arch_lbr and self.config.pmu_version >= 4
                and self._debugctl & DEBUGCTL_FREEZE_LBRS_ON_PMI):
            self._global_status |= GLOBAL_STATUS_LBR_FRZ
            self._update()

    # -- MSRs ---------------------------------------------------------------------------

    def owns(self, msr: int) -> bool:
        return msr in _OTHER_MSRS or decode_record_msr(msr) is not None

    def _state_for_host(self) -> LbrState:
        if self._s is not None:
            return self._s
        return self._xrstors_own()

    def _check_access(self, msr: int, host_initiated: bool) -> None:
        if not self.owns(msr):  # G10: the backend's MSR, not the model's
            raise NotOwnedMsr(msr_name(msr))
        if not host_initiated and self._s is None:
            raise VcpuStateError(f"guest access to {msr_name(msr)} while the LBR state is put")

    @property
    def xss(self) -> int:
        """IA32_XSS as XSAVES and CPUID.(0xD,1) use it (0 until the guest writes it)."""
        return self._xss

    def rdmsr(self, msr: int, host_initiated: bool = False) -> int:
        self._check_access(msr, host_initiated)
        cfg = self.config
        if msr in _COMPONENT_MSRS or decode_record_msr(msr) is not None:
            self._need_arch_lbr(msr)  # G5
            return self._read_component(self._state_for_host(), msr, host_initiated)
        if msr == IA32_DEBUGCTL:
            return self._debugctl
        if msr == IA32_PERF_CAPABILITIES:  # G7
            if not (cfg.pdcm or host_initiated):
                raise GeneralProtection("IA32_PERF_CAPABILITIES without CPUID.1:ECX[15] PDCM")
            return cfg.perf_capabilities
        if msr == IA32_XSS:  # G8
            if not (cfg.xsaves or host_initiated):
                raise GeneralProtection("IA32_XSS without CPUID.(0xD,1):EAX[3] XSAVES")
            return self._xss
        self._need_pmu(msr)  # G9
        return self._global_status if msr == IA32_PERF_GLOBAL_STATUS else 0

    def wrmsr(self, msr: int, value: int, host_initiated: bool = False) -> None:
        self._check_access(msr, host_initiated)
        check_u64(value, msr_name(msr))  # G10
        cfg = self.config
        if msr in _COMPONENT_MSRS or decode_record_msr(msr) is not None:
            self._need_arch_lbr(msr)  # G5
            if self._s is not None:
                self._write_component(self._s, msr, value, host_initiated)
                self._update()
            else:  # KVM loads the guest fpstate for XSAVES-managed MSRs: the buffer is the truth
                state = self._xrstors_own()
                self._write_component(state, msr, value, host_initiated)
                self._xsaves_own(state)
            return
        if msr == IA32_DEBUGCTL:  # G6
            allowed = _DEBUGCTL_DROPPED | (DEBUGCTL_FREEZE_LBRS_ON_PMI if cfg.arch_lbr else 0)
            if value & ~allowed:
                raise GeneralProtection(f"IA32_DEBUGCTL bits {value & ~allowed:#x} not supported")
            self._debugctl = value & DEBUGCTL_FREEZE_LBRS_ON_PMI
        elif msr == IA32_PERF_CAPABILITIES:  # G7
            if not host_initiated:
                raise GeneralProtection("IA32_PERF_CAPABILITIES is read-only for the guest")
            if value != cfg.perf_capabilities:
                raise GeneralProtection(
                    f"IA32_PERF_CAPABILITIES {value:#x} differs from this vCPU's {cfg.perf_capabilities:#x}")
        elif msr == IA32_XSS:  # G8
            if not (cfg.xsaves or host_initiated):
                raise GeneralProtection("IA32_XSS without CPUID.(0xD,1):EAX[3] XSAVES")
            if value & ~cfg.supported_xss:
                raise GeneralProtection(
                    f"IA32_XSS bits {value & ~cfg.supported_xss:#x} not in CPUID.(0xD,1) EDX:ECX")
            self._xss = value
        elif msr == IA32_PERF_GLOBAL_STATUS:  # G9
            self._need_pmu(msr)
            if not host_initiated:
                raise GeneralProtection("IA32_PERF_GLOBAL_STATUS is read-only for the guest")
            allowed = GLOBAL_STATUS_LBR_FRZ if cfg.arch_lbr and cfg.pmu_version >= 4 else 0
            if value & ~allowed:
                raise GeneralProtection(f"IA32_PERF_GLOBAL_STATUS bits {value & ~allowed:#x} not modelled")
            self._global_status = value
            self._update()
        else:  # IA32_PERF_GLOBAL_STATUS_RESET, G9
            self._need_pmu(msr)
            if value & ~cfg.global_status_valid:
                raise GeneralProtection(
                    f"IA32_PERF_GLOBAL_STATUS_RESET reserved bits {value & ~cfg.global_status_valid:#x}")
            self._global_status &= ~value
            self._update()

    def _need_arch_lbr(self, msr: int) -> None:
        if not self.config.arch_lbr:
            raise GeneralProtection(f"{msr_name(msr)} without CPUID.7.0:EDX[19] Arch LBR")

    def _need_pmu(self, msr: int) -> None:
        if self.config.pmu_version < 2:
            raise GeneralProtection(f"{msr_name(msr)} needs PMU version 2 (CPUID.0xA)")

    def _record_index(self, state: LbrState, msr: int, host: bool) -> tuple[RecordKind, int]:
        """G3: guest accesses stop at LBR_DEPTH, host accesses at the max depth."""
        kind, index = decode_record_msr(msr)
        limit = self._slots if host else state.depth
        if index >= limit:
            raise GeneralProtection(
                f"{msr_name(msr)}: index {index} >= {'max depth' if host else 'IA32_LBR_DEPTH'} {limit}")
        return kind, index

    _FIELD = {RecordKind.FROM: 0, RecordKind.TO: 1, RecordKind.INFO: 2}

    def _read_component(self, s: LbrState, msr: int, host: bool) -> int:
        if msr == IA32_LBR_CTL:
            return s.ctl
        if msr == IA32_LBR_DEPTH:
            return s.depth
        if msr in _LER_MSRS:
            return s.ler[_LER_MSRS.index(msr)]
        kind, index = self._record_index(s, msr, host)
        return s.rec[index][self._FIELD[kind]]

    def _write_component(self, s: LbrState, msr: int, value: int, host: bool) -> None:
        cfg = self.config
        if msr == IA32_LBR_CTL:
            check_lbr_ctl(cfg, value)  # G1
            s.ctl = value
        elif msr == IA32_LBR_DEPTH:
            check_depth(cfg, value)  # G2
            s.depth = value
            s.clear_records()
        elif msr in _LER_MSRS:
            i = _LER_MSRS.index(msr)  # G4
            (check_info if i == 2 else lambda v, w: check_ip(cfg, v, w))(value, msr_name(msr))
            ler = list(s.ler)
            ler[i] = value
            s.ler = tuple(ler)
        else:
            kind, index = self._record_index(s, msr, host)
            f = self._FIELD[kind]
            if f == 2:  # G4
                check_info(value, msr_name(msr))
            else:
                check_ip(cfg, value, msr_name(msr))
            rec = list(s.rec[index])
            rec[f] = value
            s.rec[index] = tuple(rec)

    # -- XSAVES / XRSTORS and the state's location ----------------------------------------

    def _need_xsaves(self) -> None:
        if not self.config.xsaves:
            raise InvalidOpcode("XSAVES/XRSTORS without CPUID.(0xD,1):EAX[3]")

    def xsaves(self, area: bytearray, offset: int, rfbm: int, xcr0: int, xss: int) -> None:
        """The guest's XSAVES of component 15 into `area` at `offset` (see vcpu.xsaves)."""
        self._need_xsaves()
        _xs.xsaves(self._guest_state(), self.config, area, offset, rfbm, xcr0, xss)

    def xrstors(self, area: bytearray, offset: int, rfbm: int, xcr0: int, xss: int) -> None:
        """The guest's XRSTORS of component 15 from `area` at `offset` (see vcpu.xsaves)."""
        self._need_xsaves()
        self._s = _xs.xrstors(self._guest_state(), self.config, area, offset, rfbm, xcr0, xss)
        self._update()

    def _own_table(self):
        if self._own_layout is None:
            self._own_layout = self.config.xsave_table
        return self._own_layout

    def _xsaves_own(self, state: LbrState) -> None:
        _xs.xsaves(state, self.config, self._buffer, 0, _OWN_MASK, XFEATURES_LEGACY, XSS_ARCH_LBR,
                   table=self._own_table())

    def _xrstors_own(self) -> LbrState:
        blank = LbrState(self.config.max_depth, self._slots)
        return _xs.xrstors(blank, self.config, self._buffer, 0, _OWN_MASK, XFEATURES_LEGACY, XSS_ARCH_LBR,
                           verbatim=True, table=self._own_table())

    def put(self) -> None:
        """Sched-out: the state moves into the vCPU's own XSAVE buffer; registers are gone."""
        s = self._guest_state()
        if self._buffer is None:
            self._buffer = bytearray(self.config.own_buffer_layout.size)
        self._xsaves_own(s)
        self._s = None
        self._update()

    def load(self) -> None:
        """Sched-in: the state comes back from the own XSAVE buffer."""
        if self._s is not None:
            raise VcpuStateError("load() on a vCPU whose LBR state is already loaded")
        self._s = self._xrstors_own()
        self._update()

    @property
    def xsave_buffer(self) -> bytes | None:
        """The own XSAVE buffer's bytes (meaningful while put)."""
        return None if self._buffer is None else bytes(self._buffer)

    # -- migration ----------------------------------------------------------------------

    def msr_list(self) -> list[int]:
        """Every MSR save() covers, in restore order (DEPTH before the records)."""
        cfg = self.config
        msrs = [IA32_DEBUGCTL, IA32_PERF_CAPABILITIES, IA32_XSS]
        if cfg.pmu_version >= 2:
            msrs.append(IA32_PERF_GLOBAL_STATUS)
        if cfg.arch_lbr:
            msrs += [IA32_LBR_DEPTH, IA32_LBR_CTL, *_LER_MSRS]
            for kind in RecordKind:
                msrs += [record_msr(kind, i) for i in range(self._slots)]
        return msrs

    def save(self) -> dict:
        """Every guest-visible MSR (host-initiated reads) plus the hidden SMM/cycle state."""
        return {"msrs": read_msrs(self, self.msr_list()), "smm_lbren": self._smm_lbren,
                "cycles": self._cyc}

    def restore(self, saved: dict) -> None:
        """Host-initiated writes of a save() (also after a JSON round trip)."""
        write_msrs(self, saved["msrs"])
        self._smm_lbren = saved.get("smm_lbren")
        self._cyc = int(saved.get("cycles", 0))

    # -- convenience for tools ----------------------------------------------------------

    @property
    def lbr_ctl(self) -> int:
        return self._state_for_host().ctl

    @property
    def depth(self) -> int:
        return self._state_for_host().depth

    @property
    def ler(self) -> tuple[int, int, int]:
        return self._state_for_host().ler

    def __repr__(self) -> str:
        where = "loaded" if self._s is not None else "put"
        return f"ArchLbrVcpu({self.config.describe()}, {where})"

