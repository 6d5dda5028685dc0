"""What every backend offers: run a guest image on vCPUs whose Arch LBR is vlbr's model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from vlbr.arch.cpuid import CpuidTable
from vlbr.backends.image import GuestImage

if TYPE_CHECKING:  # annotations only: importing the model here would cost every backend import
    from vlbr.vcpu.config import LbrConfig
    from vlbr.vcpu.lbr import ArchLbrVcpu

RAM_SIZE = 8 << 20
IMAGE_BASE = 0x100000
PORT_CONSOLE = 0xE9
PORT_EXIT = 0xF4
PORT_YIELD = 0xF5


@dataclass(frozen=True)
class MachineConfig:
    """The guest-visible machine: its CPUID, its Arch LBR and how many vCPUs run it."""

    cpuid: CpuidTable
    lbr: "LbrConfig"
    vcpus: int = 1
    max_steps: int = 5_000_000  # instructions (software) or exits (kvm) before giving up


@dataclass
class RunResult:
    console: list[str]  # one string per vCPU: everything it wrote to port 0xE9
    exit_status: list[int | None]  # per vCPU; None when it never wrote port 0xF4
    vcpus: list["ArchLbrVcpu"]  # the Arch LBR state each vCPU ended with
    stats: dict[str, Any] = field(default_factory=dict)

    def lines(self, vcpu: int = 0) -> list[str]:
        return self.console[vcpu].splitlines()


class BackendUnavailable(Exception):
    """The backend cannot run here; the message names the missing feature."""


class Backend(Protocol):
    name: str

    def unavailable_reason(self) -> str | None:
        """None when this backend can run guests here, else why not (ioctl and errno)."""

    def run(self, image: GuestImage, machine: MachineConfig) -> RunResult:
        """Run every vCPU until all exited or max_steps; raises BackendUnavailable."""
