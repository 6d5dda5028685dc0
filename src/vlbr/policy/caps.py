"""What vlbr's own Arch LBR emulation (the vcpu model) implements, as leaf 0x1C bits.

The vcpu layer sits above policy, so the facts live here and the vcpu model imports them."""

from __future__ import annotations

from dataclasses import dataclass

from vlbr.arch.leaves import LBR_DEPTH_STEP, ArchLbrLeaf


@dataclass(frozen=True)
class LbrEmulationCaps:
    """Capabilities an emulating backend honours; leaf 0x1C offers no more than these."""

    depth_mask: int = 0xFF  # every legal depth 8..64: the model keeps records in a list
    cpl_filtering: bool = True  # LBR_CTL.OS/USR against Branch.cpl
    branch_filtering: bool = True  # LBR_CTL[22:16] against Branch.kind
    call_stack: bool = True  # LBR_CTL.CALL_STACK with Branch.is_call / is_return
    mispredict: bool = True  # LBR_INFO.MISPRED from Branch.mispredicted
    timed_lbr: bool = True  # LBR_INFO.CYC_CNT from Branch.cycles
    branch_type: bool = True  # LBR_INFO.BR_TYPE from Branch.kind
    lip: bool = True  # records hold linear IPs (CS.base is 0 in the Guest ABI's 64-bit mode)
    pmu_version: int = 4  # GLOBAL_STATUS.LBR_FRZ acknowledged through GLOBAL_STATUS_RESET

    @property
    def depths(self) -> list[int]:
        return [LBR_DEPTH_STEP * (n + 1) for n in range(8) if self.depth_mask >> n & 1]

    def leaf(self, depth_mask: int) -> ArchLbrLeaf:
        """Leaf 0x1C for these capabilities and a depth bitmap (deep C-states never clear it)."""
        return ArchLbrLeaf(
            depth_mask=depth_mask, eax_reserved=0, deep_cstate_reset=False, lip=self.lip,
            cpl_filtering=self.cpl_filtering, branch_filtering=self.branch_filtering,
            call_stack=self.call_stack, ebx_reserved=0, mispredict=self.mispredict,
            timed_lbr=self.timed_lbr, branch_type=self.branch_type, ecx_reserved_low=0,
            event_logging=0, ecx_reserved_high=0, edx=0)

    @property
    def ebx_mask(self) -> int:
        return self.leaf(0).encode().ebx

    @property
    def ecx_mask(self) -> int:
        return self.leaf(0).encode().ecx


VLBR_EMULATION_CAPS = LbrEmulationCaps()
