"""Each variant's answer on one host, side by side: the depth it offers against what the host
supports, the component-15 size against that depth, and XSS bit 15."""

from __future__ import annotations

from dataclasses import dataclass

from vlbr.arch.leaves import arch_lbr_leaf
from vlbr.arch.xsave import ARCH_LBR_COMPONENT, arch_lbr_state_size

from .host import HostDescription
from .rules import DEPTH_BITS, XFEATURE_MASK_LBR
from .supported import supported_cpuid
from .variants import VARIANT_NAMES


@dataclass(frozen=True)
class VariantView:
    variant: str
    arch_lbr: bool  # CPUID.7.0:EDX[19] offered
    depth_bits: int  # leaf 0x1C EAX[7:0] offered
    depth: int  # the maximum depth offered; 0 for none
    comp15_size: int | None  # CPUID.(0xD,0xF):EAX offered, None when absent
    xss_lbr: bool  # XSS bit 15 in the supported XSS
    host_depth_bits: int  # the host's leaf 0x1C EAX[7:0]

    @property
    def depth_supported(self) -> bool:
        """Every offered depth is one the host's hardware runs (an empty bitmap qualifies)."""
        return self.depth_bits & ~self.host_depth_bits == 0

    @property
    def size_matches_depth(self) -> bool:
        """Linux's perf uses XSAVES for the LBRs only when the size fits the depth."""
        return self.comp15_size is None or self.comp15_size == arch_lbr_state_size(self.depth)

    @property
    def problems(self) -> list[str]:
        out = []
        if self.arch_lbr and not self.depth:
            out.append("ARCH_LBR with no depth")
        if not self.depth_supported:
            out.append(f"depth {self.depth} is not one the host supports "
                       f"(host bitmap {self.host_depth_bits:#04x})")
        if not self.size_matches_depth:
            out.append(f"component 15 is {self.comp15_size} bytes, depth {self.depth} needs "
                       f"{arch_lbr_state_size(self.depth)}")
        return out

    def to_json(self) -> dict:
        return {"variant": self.variant, "arch_lbr": self.arch_lbr, "depth_bits": self.depth_bits,
                "depth": self.depth, "comp15_size": self.comp15_size, "xss_lbr": self.xss_lbr,
                "host_depth_bits": self.host_depth_bits, "depth_supported": self.depth_supported,
                "size_matches_depth": self.size_matches_depth, "problems": self.problems}


def variant_view(host: HostDescription, variant: str) -> VariantView:
    offered = supported_cpuid(host, variant)
    leaf = arch_lbr_leaf(offered.table)
    comp15 = offered.table.query(0xD, ARCH_LBR_COMPONENT) if offered.supported_xss & XFEATURE_MASK_LBR else None
    return VariantView(variant, offered.arch_lbr, leaf.depth_mask & DEPTH_BITS, leaf.max_depth,
                       comp15.eax if comp15 is not None else None,
                       bool(offered.supported_xss & XFEATURE_MASK_LBR),
                       arch_lbr_leaf(host.table).depth_mask)


def compare_variants(host: HostDescription, variants=VARIANT_NAMES) -> list[VariantView]:
    return [variant_view(host, v) for v in variants]
