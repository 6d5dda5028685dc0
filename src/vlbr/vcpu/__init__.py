"""Guest-visible Arch LBR state and behaviour of one vCPU, independent of any backend."""

from .config import LbrConfig
from .faults import GeneralProtection, InvalidOpcode, VcpuStateError
from .lbr import ArchLbrVcpu, Branch

__all__ = ["LbrConfig", "ArchLbrVcpu", "Branch", "GeneralProtection", "InvalidOpcode",
           "VcpuStateError"]
