"""Guest-visible Arch LBR state and behaviour of one vCPU, independent of any backend."""

from .config import LbrConfig
from .faults import GeneralProtection, InvalidOpcode, NotOwnedMsr, VcpuStateError
from .lbr import ArchLbrVcpu, Branch, FilterState
from .perfmon_msrs import PerfmonMsrs
from .pmu import ArchPerfmon, PmuDescription

__all__ = ["LbrConfig", "ArchLbrVcpu", "Branch", "FilterState", "GeneralProtection",
           "InvalidOpcode", "NotOwnedMsr", "VcpuStateError", "ArchPerfmon", "PmuDescription",
           "PerfmonMsrs"]
