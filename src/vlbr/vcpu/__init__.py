"""Guest-visible Arch LBR state and behaviour of one vCPU, independent of any backend."""

from .config import LbrConfig
from .faults import GeneralProtection, InvalidOpcode, NotOwnedMsr, VcpuStateError
from .lbr import ArchLbrVcpu, Branch, FilterState

__all__ = ["LbrConfig", "ArchLbrVcpu", "Branch", "FilterState", "GeneralProtection",
           "InvalidOpcode", "NotOwnedMsr", "VcpuStateError"]
