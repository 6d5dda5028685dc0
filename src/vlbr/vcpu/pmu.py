"""ArchPerfmon: an architectural PMU (CPUID leaf 0xA) that counts exactly in virtual time.

"SDM" is Vol. 3B, chapter "Performance Monitoring", section "Architectural Performance
Monitoring" (Version 1..4 subsections) and Vol. 4 table 2-2 (the MSRs). Rules (tests cite):

MSRs (#GP = GeneralProtection):
- P1 IA32_PMCx / IA32_PERFEVTSELx exist for x < the GP counter count, IA32_FIXED_CTRx for
  x < the fixed count (fixed counters from Version 2); IA32_A_PMCx only with full-width
  writes (`full_width_writes`, PERF_CAPABILITIES.FW_WRITE). Others of these blocks #GP.
- P2 a guest's legacy write to IA32_PMCx stores EAX[31:0] sign-extended (SDM "Full-Width
  Writes"; a host-initiated one is a full-width write, as in KVM's pmu_intel.c); an
  IA32_A_PMCx or IA32_FIXED_CTRx write with bits beyond the width #GPs; reads are the
  counter, masked to its width.
- P3 reserved bits #GP: IA32_PERFEVTSELx 63:32 and AnyThread (21) before Version 3;
  IA32_FIXED_CTR_CTRL fields of absent counters, AnyThread before Version 3;
  IA32_PERF_GLOBAL_CTRL bits of absent counters; STATUS_RESET / STATUS_SET bits that
  arch.perfmon does not list for the version.
- P4 IA32_PERF_GLOBAL_CTRL, _STATUS, _STATUS_RESET (OVF_CTRL) from Version 2 (as KVM; the
  Version 2 section introduces them); _STATUS_SET and _INUSE from Version 4. GLOBAL_STATUS
  is read-only for the guest (a host write may set status bits, for restore); INUSE is
  read-only; STATUS_RESET and STATUS_SET read 0. GLOBAL_CTRL resets to the GP counter bits
  (SDM Vol. 3A table 10-1: "Sets bits n-1:0 and clears the upper bits").

Counting (`retire(instructions, cpl)`, one cycle per instruction):
- A GP counter counts when EN (22), GLOBAL_CTRL bit i (Version 2+), not CTR_FRZ (Version 4)
  and USR (CPL > 0) / OS (CPL 0) match; fixed counter j with its GLOBAL_CTRL bit and field
  EN bits (1 = OS, 2 = USR).
- Counted events, one per instruction: instructions retired (0xC0/0x00, fixed 0), unhalted
  core cycles (0x3C/0x00, fixed 1), unhalted reference cycles (0x3C/0x01, fixed 2). Every
  other event, an event CPUID.0AH:EBX marks unavailable, a GP counter with E, INV or CMASK
  set, and fixed counters 3 and up count nothing. Halted time counts nothing (every
  counted event is "unhalted"), so there is no halt().
- Overflow: a counter that wraps past its width sets its GLOBAL_STATUS bit (GP i -> i, fixed
  j -> 32 + j); with INT (20) / the field's PMI bit a PMI is requested (`pmi_pending`).
  At the request: the attached ArchLbrVcpu gets pmi() (FREEZE_LBRS_ON_PMI: LBR_FRZ) and with
  `freeze_perfmon_on_pmi` (DEBUGCTL bit 12) Version 4 sets CTR_FRZ (59), earlier versions
  clear GLOBAL_CTRL (SDM Version 4: "replaces the legacy semantic behavior").
  STATUS_SET sets bits without a PMI (it exists to restore state).
- P5 RDPMC reads the same counters (`rdpmc`).
- LBR_FRZ (58) belongs to the ArchLbrVcpu when one is attached: GLOBAL_STATUS reads it from
  there and STATUS_RESET / STATUS_SET bit 58 write it there.
"""

from __future__ import annotations

from dataclasses import dataclass

from vlbr.arch.cpuid import Registers
from vlbr.arch.leaves import PerfMon
from vlbr.arch.msrs import (DEBUGCTL_FREEZE_PERFMON_ON_PMI, GLOBAL_STATUS_LBR_FRZ,
                            IA32_A_PMC_BASE, IA32_FIXED_CTR_BASE, IA32_FIXED_CTR_CTRL,
                            IA32_PERF_GLOBAL_CTRL, IA32_PERF_GLOBAL_INUSE,
                            IA32_PERF_GLOBAL_STATUS, IA32_PERF_GLOBAL_STATUS_RESET,
                            IA32_PERF_GLOBAL_STATUS_SET, IA32_PERFEVTSEL_BASE, IA32_PMC_BASE,
                            PERF_CAP_FW_WRITE, PMU_MSR_BLOCK_SIZE, msr_name)
from vlbr.arch.perfmon import (ARCH_EVENTS, EVENT_UNAVAILABLE_BIT, EVTSEL_CMASK_SHIFT,
                               EVTSEL_EDGE, EVTSEL_EN, EVTSEL_INT, EVTSEL_INV, EVTSEL_OS,
                               EVTSEL_USR, FIXED_EN_OS, FIXED_EN_USR, FIXED_EVENTS, FIXED_PMI,
                               GLOBAL_FIXED_SHIFT, GLOBAL_INUSE_PMI, GLOBAL_STATUS_CTR_FRZ,
                               RDPMC_FIXED, RDPMC_INDEX_MASK, counter_bits, evtsel_event, evtsel_valid, fixed_ctrl_valid,
                               fixed_field, status_reset_valid, status_set_valid)

from .faults import GeneralProtection, NotOwnedMsr
from .lbr import ArchLbrVcpu
from .state import check_u64, read_msrs, write_msrs

__all__ = ["ArchPerfmon", "PmuDescription"]

_GLOBAL_MSRS = (IA32_FIXED_CTR_CTRL, IA32_PERF_GLOBAL_STATUS, IA32_PERF_GLOBAL_CTRL,
                IA32_PERF_GLOBAL_STATUS_RESET, IA32_PERF_GLOBAL_STATUS_SET, IA32_PERF_GLOBAL_INUSE)
_BLOCKS = (IA32_PMC_BASE, IA32_PERFEVTSEL_BASE, IA32_A_PMC_BASE, IA32_FIXED_CTR_BASE)
_NOT_COUNTED = EVTSEL_EDGE | EVTSEL_INV | 0xFF << EVTSEL_CMASK_SHIFT
_SIGN32 = 1 << 31


@dataclass(frozen=True)
class PmuDescription:
    """What CPUID leaf 0xA enumerates, plus PERF_CAPABILITIES.FW_WRITE (not in the leaf)."""

    version: int = 4
    gp_counters: int = 4
    gp_width: int = 48
    fixed_counters: int = 3
    fixed_width: int = 48
    unavailable_events: int = 0  # CPUID.0AH:EBX[6:0]: bit set = architectural event not available
    full_width_writes: bool = False  # IA32_A_PMCx exist (PERF_CAPABILITIES bit 13)

    def __post_init__(self) -> None:
        if not 0 <= self.version <= 0xFF:
            raise ValueError(f"PMU version {self.version} outside 0..255")
        if not 0 <= self.unavailable_events < 1 << ARCH_EVENTS:
            raise ValueError(f"unavailable events {self.unavailable_events:#x}: bits 6:0 only")
        for what, n in (("GP", self.gp_counters), ("fixed", self.fixed_counters)):
            if not 0 <= n <= PMU_MSR_BLOCK_SIZE:  # the architectural MSRs of each kind
                raise ValueError(f"{n} {what} counters: the model has at most {PMU_MSR_BLOCK_SIZE}")
        if (self.fixed_counters and self.version < 2) or (self.gp_counters and not self.version):
            raise ValueError("GP counters exist from PMU version 1, fixed counters from 2")
        for what, n, w in (("GP", self.gp_counters, self.gp_width),
                           ("fixed", self.fixed_counters, self.fixed_width)):
            if not (1 if n else 0) <= w <= 64:
                raise ValueError(f"{what} counter width {w} outside 1..64")

    def to_leaf(self) -> Registers:
        """CPUID.0AH: EAX version/#GP/width/EBX length, EBX, ECX (v5 fixed bitmap), EDX."""
        fixed_bitmap = (1 << self.fixed_counters) - 1 if self.version >= 5 else 0
        return PerfMon(self.version, self.gp_counters, self.gp_width, ARCH_EVENTS,
                       self.unavailable_events, fixed_bitmap,
                       self.fixed_counters, self.fixed_width, 0).encode()

    @classmethod
    def from_leaf(cls, regs: Registers, full_width_writes: bool = False) -> "PmuDescription":
        """The PMU a leaf 0xA describes; ValueError for what the model cannot be."""
        pm = PerfMon.decode(regs)
        fixed = pm.fixed_counters if pm.version >= 2 else 0
        if pm.version >= 5:  # fixed counter i exists if ECX[i] or EDX[4:0] > i
            present = pm.fixed_counters_bitmap | (1 << fixed) - 1
            if present & (present + 1):
                raise ValueError(f"fixed counters {present:#x} are not contiguous from 0")
            fixed = present.bit_length()
        events = (1 << ARCH_EVENTS) - 1  # EBX bits at or past EAX[31:24] are not available
        unavailable = (pm.events_unavailable | ~((1 << pm.ebx_length) - 1)) & events
        if not pm.version:
            return cls(0, 0, 0, 0, 0, unavailable, full_width_writes)
        return cls(pm.version, pm.gp_counters, pm.gp_width, fixed, pm.fixed_width if fixed else 0,
                   unavailable, full_width_writes)


class ArchPerfmon:
    """The architectural PMU of one vCPU (module doc: P1..P5, Counting)."""

    def __init__(self, desc: PmuDescription, lbr: ArchLbrVcpu | None = None):
        self.desc = desc
        self._lbr = lbr
        n, m = desc.gp_counters, desc.fixed_counters
        self._bits = [1 << i for i in range(n)] + [1 << GLOBAL_FIXED_SHIFT + j for j in range(m)]
        self._masks = [(1 << desc.gp_width) - 1] * n + [(1 << desc.fixed_width) - 1] * m
        self._values = [0] * (n + m)
        self._evtsel = [0] * n
        self._fixed_ctrl = 0
        self._global_ctrl = (1 << n) - 1 if desc.version >= 2 else 0
        self._status = 0  # LBR_FRZ lives in the ArchLbrVcpu when one is attached
        self._pmi = False
        self._freeze_perfmon = False
        self._refresh()

    # -- what counts (recomputed on every control change) --------------------------------

    def _refresh(self) -> None:
        counting = [[], []]  # slots counting at CPL 0, at CPL > 0
        armed = [[], []]  # of those, the ones with PMI on overflow
        for slot in range(len(self._values)):
            for ring, (counts, pmi) in enumerate(self._slot_controls(slot)):
                if counts:
                    counting[ring].append(slot)
                    if pmi:
                        armed[ring].append(slot)
        self._counting = (tuple(counting[0]), tuple(counting[1]))
        self._armed = (tuple(armed[0]), tuple(armed[1]))
        self._armed_set = frozenset(armed[0] + armed[1])

    def _slot_controls(self, slot: int) -> tuple[tuple[bool, bool], tuple[bool, bool]]:
        """(counts, PMI) at CPL 0 and at CPL > 0."""
        if not self._globally_enabled(slot):
            return (False, False), (False, False)
        n = self.desc.gp_counters
        if slot < n:
            sel = self._evtsel[slot]
            counts = bool(sel & EVTSEL_EN) and self._gp_event_counted(sel)
            pmi = bool(sel & EVTSEL_INT)
            os_, usr = bool(sel & EVTSEL_OS), bool(sel & EVTSEL_USR)
        else:
            field = fixed_field(self._fixed_ctrl, slot - n)
            counts = slot - n < len(FIXED_EVENTS)
            pmi = bool(field & FIXED_PMI)
            os_, usr = bool(field & FIXED_EN_OS), bool(field & FIXED_EN_USR)
        return (counts and os_, pmi), (counts and usr, pmi)

    def _globally_enabled(self, slot: int) -> bool:
        if self.desc.version < 2:
            return True
        frozen = self._status & GLOBAL_STATUS_CTR_FRZ
        return bool(self._global_ctrl & self._bits[slot]) and not frozen

    def _gp_event_counted(self, sel: int) -> bool:
        bit = EVENT_UNAVAILABLE_BIT.get(evtsel_event(sel))
        if bit is None or self.desc.unavailable_events >> bit & 1:
            return False
        return not sel & _NOT_COUNTED

    # -- counting and overflow ------------------------------------------------------------

    def retire(self, instructions: int, cpl: int) -> None:
        """`instructions` retired at `cpl` (one cycle each); exact across overflows."""
        if instructions < 0 or not 0 <= cpl <= 3:
            raise ValueError(f"retire({instructions}, cpl={cpl})")
        ring = 1 if cpl else 0
        while instructions:
            until = self.instructions_until_overflow(cpl)
            step = instructions if until is None else min(instructions, until)
            self._advance(self._counting[ring], step)
            instructions -= step

    def _advance(self, slots: tuple[int, ...], step: int) -> None:
        pmi = False
        for slot in slots:
            value = self._values[slot] + step
            if value > self._masks[slot]:
                self._status |= self._bits[slot]
                value &= self._masks[slot]
                pmi = pmi or slot in self._armed_set
            self._values[slot] = value
        if pmi:
            self._request_pmi()

    def instructions_until_overflow(self, cpl: int) -> int | None:
        """Instructions at `cpl` until the first counting counter with PMI enabled overflows
        (the PMI is pending right after that many); None when no such counter counts."""
        armed = self._armed[1 if cpl else 0]
        if not armed:
            return None
        return min(self._masks[s] - self._values[s] + 1 for s in armed)

    def _request_pmi(self) -> None:
        self._pmi = True
        if self._lbr is not None:
            self._lbr.pmi()  # LBR_FRZ with DEBUGCTL.FREEZE_LBRS_ON_PMI (vcpu.lbr)
        if self._freeze_perfmon:
            if self.desc.version >= 4:
                self._status |= GLOBAL_STATUS_CTR_FRZ
            else:
                self._global_ctrl = 0
            self._refresh()

    @property
    def pmi_pending(self) -> bool:
        return self._pmi

    def take_pmi(self) -> bool:
        """Deliver the pending PMI (LAPIC LVTPC): True when one was pending, now cleared."""
        pending, self._pmi = self._pmi, False
        return pending

    # -- DEBUGCTL bit 12 and PERF_CAPABILITIES (answered by vcpu.perfmon_msrs) ----------------

    @property
    def freeze_perfmon_on_pmi(self) -> bool:
        """IA32_DEBUGCTL.FREEZE_PERFMON_ON_PMI (bit 12), which exists from Version 2."""
        return self._freeze_perfmon

    @freeze_perfmon_on_pmi.setter
    def freeze_perfmon_on_pmi(self, value: bool) -> None:
        if value and not self.debugctl_bits:
            raise ValueError("IA32_DEBUGCTL.FREEZE_PERFMON_ON_PMI needs PMU version 2")
        self._freeze_perfmon = bool(value)

    @property
    def debugctl_bits(self) -> int:
        """The IA32_DEBUGCTL bits this PMU defines (SDM Vol. 4: bit 12 if version > 1)."""
        return DEBUGCTL_FREEZE_PERFMON_ON_PMI if self.desc.version >= 2 else 0

    @property
    def full_width_writes(self) -> bool:
        """True when IA32_A_PMCx exist, i.e. PERF_CAPABILITIES.FW_WRITE (bit 13) reads 1."""
        return self.desc.full_width_writes

    @property
    def perf_capabilities(self) -> int:
        """The IA32_PERF_CAPABILITIES bits this PMU contributes (FW_WRITE or 0)."""
        return PERF_CAP_FW_WRITE if self.desc.full_width_writes else 0

    # -- migration -----------------------------------------------------------------------

    def msr_list(self) -> list[int]:
        """Every MSR save() covers, in restore order (GLOBAL_STATUS last: it may freeze)."""
        d = self.desc
        msrs = [IA32_PERFEVTSEL_BASE + i for i in range(d.gp_counters)]
        msrs += [IA32_PMC_BASE + i for i in range(d.gp_counters)]
        msrs += [IA32_FIXED_CTR_BASE + j for j in range(d.fixed_counters)]
        if d.version >= 2:
            msrs += [IA32_FIXED_CTR_CTRL, IA32_PERF_GLOBAL_CTRL, IA32_PERF_GLOBAL_STATUS]
        return msrs

    def save(self) -> dict:
        """Every guest-visible MSR (host-initiated reads), DEBUGCTL bit 12 and a pending PMI."""
        return {"msrs": read_msrs(self, self.msr_list()),
                "freeze_perfmon_on_pmi": self._freeze_perfmon, "pmi_pending": self._pmi}

    def restore(self, saved: dict) -> None:
        """Host-initiated writes of a save() (also after a JSON round trip)."""
        write_msrs(self, saved["msrs"])
        self.freeze_perfmon_on_pmi = bool(saved.get("freeze_perfmon_on_pmi"))
        self._pmi = bool(saved.get("pmi_pending"))

    # -- RDPMC ---------------------------------------------------------------------------

    def rdpmc(self, ecx: int, cpl: int = 0, pce: bool = False) -> int:
        """RDPMC (Linux reads counters with it: arch/x86/events/core.c x86_perf_event_update):
        #GP at CPL > 0 without CR4.PCE, for a type other than GP (0) / fixed (bit 30) in
        ECX[31:16], or an index ECX[15:0] past the counters (SDM Vol. 2B RDPMC)."""
        if cpl and not pce:
            raise GeneralProtection("RDPMC at CPL > 0 with CR4.PCE clear")
        kind, index = ecx & ~RDPMC_INDEX_MASK & 0xFFFF_FFFF, ecx & RDPMC_INDEX_MASK
        d = self.desc
        if kind not in (0, RDPMC_FIXED) or index >= (d.fixed_counters if kind else d.gp_counters):
            raise GeneralProtection(f"RDPMC ECX {ecx:#x} names no counter")
        return self._values[index + (d.gp_counters if kind else 0)]

    # -- MSRs ----------------------------------------------------------------------------

    def owns(self, msr: int) -> bool:
        return msr in _GLOBAL_MSRS or any(b <= msr < b + PMU_MSR_BLOCK_SIZE for b in _BLOCKS)

    def rdmsr(self, msr: int, host_initiated: bool = False) -> int:
        """The guest's (or the VMM's, same rules) RDMSR; GeneralProtection per P1/P4."""
        kind, index = self._locate(msr)
        if kind == "counter":
            return self._values[index]
        if kind == "evtsel":
            return self._evtsel[index]
        return self._read_global(msr)

    def wrmsr(self, msr: int, value: int, host_initiated: bool = False) -> None:
        """The guest's WRMSR (host_initiated: the VMM's, which may write GLOBAL_STATUS)."""
        check_u64(value, msr_name(msr))
        kind, index = self._locate(msr)
        if kind == "counter":
            self._write_counter(msr, index, value, host_initiated)
            return
        if kind == "evtsel":
            self._check_reserved(msr, value, evtsel_valid(self.desc.version))
            self._evtsel[index] = value
        else:
            self._write_global(msr, value, host_initiated)
        self._refresh()

    def _locate(self, msr: int) -> tuple[str, int]:
        """("counter", slot), ("evtsel", i) or ("global", 0); #GP where P1/P4 say so."""
        if not self.owns(msr):
            raise NotOwnedMsr(msr_name(msr))
        d = self.desc
        if msr in _GLOBAL_MSRS:
            need = 4 if msr in (IA32_PERF_GLOBAL_STATUS_SET, IA32_PERF_GLOBAL_INUSE) else 2
            if d.version < need:
                raise GeneralProtection(f"{msr_name(msr)} needs PMU version {need}")
            return "global", 0
        base = max(b for b in _BLOCKS if b <= msr)
        index = msr - base
        limit = d.fixed_counters if base == IA32_FIXED_CTR_BASE else d.gp_counters
        if index >= limit or (base == IA32_A_PMC_BASE and not d.full_width_writes):
            raise GeneralProtection(f"{msr_name(msr)} is not enumerated (P1)")
        if base == IA32_PERFEVTSEL_BASE:
            return "evtsel", index
        return "counter", index + (d.gp_counters if base == IA32_FIXED_CTR_BASE else 0)

    def _write_counter(self, msr: int, slot: int, value: int, host_initiated: bool) -> None:
        legacy = IA32_PMC_BASE <= msr < IA32_PMC_BASE + PMU_MSR_BLOCK_SIZE
        if legacy and not host_initiated:  # the VMM writes whole values (KVM pmu_intel.c)
            low = value & 0xFFFF_FFFF  # legacy: EAX sign-extended (SDM "Full-Width Writes")
            value = low - (1 << 32) if low & _SIGN32 else low
            self._values[slot] = value & self._masks[slot]
            return
        self._check_reserved(msr, value, self._masks[slot])
        self._values[slot] = value

    @staticmethod
    def _check_reserved(msr: int, value: int, valid: int) -> None:
        if value & ~valid:
            raise GeneralProtection(f"{msr_name(msr)} reserved bits {value & ~valid:#x}")

    def _read_global(self, msr: int) -> int:
        if msr == IA32_FIXED_CTR_CTRL:
            return self._fixed_ctrl
        if msr == IA32_PERF_GLOBAL_CTRL:
            return self._global_ctrl
        if msr == IA32_PERF_GLOBAL_STATUS:
            return self.global_status
        if msr == IA32_PERF_GLOBAL_INUSE:
            return self._inuse()
        return 0  # STATUS_RESET, STATUS_SET: write-1 controls

    def _write_global(self, msr: int, value: int, host_initiated: bool) -> None:
        d = self.desc
        if msr == IA32_FIXED_CTR_CTRL:
            self._check_reserved(msr, value, fixed_ctrl_valid(d.version, d.fixed_counters))
            self._fixed_ctrl = value
        elif msr == IA32_PERF_GLOBAL_CTRL:
            self._check_reserved(msr, value, counter_bits(d.gp_counters, d.fixed_counters))
            self._global_ctrl = value
        elif msr == IA32_PERF_GLOBAL_STATUS_RESET:
            self._check_reserved(msr, value, self._reset_valid)
            self._set_status(self.global_status & ~value)
        elif msr == IA32_PERF_GLOBAL_STATUS_SET:
            valid = status_set_valid(d.version, d.gp_counters, d.fixed_counters)
            self._check_reserved(msr, value, valid)
            self._set_status(self.global_status | value)
        elif msr == IA32_PERF_GLOBAL_STATUS and host_initiated:
            self._check_reserved(msr, value, self._reset_valid)
            self._set_status(value)
        else:
            raise GeneralProtection(f"{msr_name(msr)} is read-only")

    @property
    def _reset_valid(self) -> int:
        d = self.desc
        return status_reset_valid(d.version, d.gp_counters, d.fixed_counters)

    @property
    def global_status(self) -> int:
        """IA32_PERF_GLOBAL_STATUS as the guest reads it (LBR_FRZ from the ArchLbrVcpu)."""
        if self._lbr is not None and self._lbr.frozen:
            return self._status | GLOBAL_STATUS_LBR_FRZ
        return self._status

    def _set_status(self, value: int) -> None:
        if self._lbr is not None:
            if bool(value & GLOBAL_STATUS_LBR_FRZ) != self._lbr.frozen:
                self._lbr.frozen = bool(value & GLOBAL_STATUS_LBR_FRZ)
            value &= ~GLOBAL_STATUS_LBR_FRZ
        self._status = value

    def _inuse(self) -> int:
        """SDM Version 4: PERFEVTSELn[7:0] != 0, FIXED_CTR_CTRL EN bits != 0, any PMI bit."""
        d, inuse, pmi = self.desc, 0, False
        for i, sel in enumerate(self._evtsel):
            inuse |= (1 << i) if sel & 0xFF else 0
            pmi = pmi or bool(sel & EVTSEL_INT)
        for j in range(d.fixed_counters):
            field = fixed_field(self._fixed_ctrl, j)
            inuse |= (1 << GLOBAL_FIXED_SHIFT + j) if field & (FIXED_EN_OS | FIXED_EN_USR) else 0
            pmi = pmi or bool(field & FIXED_PMI)
        return inuse | (GLOBAL_INUSE_PMI if pmi else 0)

    def __repr__(self) -> str:
        d = self.desc
        return (f"ArchPerfmon(v{d.version}, {d.gp_counters}x{d.gp_width}-bit GP, "
                f"{d.fixed_counters}x{d.fixed_width}-bit fixed)")
