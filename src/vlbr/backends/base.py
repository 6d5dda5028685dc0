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
DEFAULT_TIMEOUT = 30.0
KVM_HYBRID, KVM_STEP = "hybrid", "step"  # MachineConfig.kvm_recording
KVM_RECORDING_MODES = (KVM_HYBRID, KVM_STEP)
CONSOLE_LIMIT = 1 << 20


class StopReason:
    """Why a vCPU stopped: the words `vlbr run` prints and writes as `stop_reason`."""

    EXIT = "exit"  # it wrote its status to port 0xF4
    TIMEOUT = "timeout"  # the run's wall-clock limit
    STEP_BUDGET = "step-budget"  # max_steps or max_exits
    CONSOLE_LIMIT = "console-limit"
    SHUTDOWN = "shutdown"  # triple fault: an exception could not be delivered
    HALTED = "halted"  # HLT with interrupts off: nothing can wake it
    UNSUPPORTED = "unsupported"  # an instruction or state the backend cannot run
    ERROR = "error"  # the backend failed (a KVM exit or an emulator error it cannot handle)


@dataclass(frozen=True)
class VcpuStop:
    reason: str  # a StopReason word
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}" if self.detail else self.reason


@dataclass(frozen=True)
class MachineConfig:
    """The guest-visible machine: its CPUID, its Arch LBR and how many vCPUs run it."""

    cpuid: CpuidTable
    lbr: "LbrConfig"
    vcpus: int = 1
    # Budgets: a run that reaches one stops with that reason (a runaway guest ends in seconds).
    # software: instructions per stretch, at least (block bytes / MAX_INSN); kvm: single-steps
    # and the instructions hybrid recording ran on unicorn
    max_steps: int = 5_000_000
    max_exits: int = 100_000  # exits to the VMM: MSR/port/emulation exits, vCPU switches
    timeout: float = DEFAULT_TIMEOUT  # wall-clock seconds for the whole run
    console_limit: int = CONSOLE_LIMIT  # bytes of console per vCPU
    native_recording: bool = True  # software backend: the native block ring where exact
    kvm_recording: str = KVM_HYBRID  # kvm backend while LBREn is set: unicorn, or KVM_STEP


@dataclass
class RunResult:
    console: list[str]  # one string per vCPU: everything it wrote to port 0xE9
    exit_status: list[int | None]  # per vCPU; None when it never wrote port 0xF4
    vcpus: list["ArchLbrVcpu"]  # the Arch LBR state each vCPU ended with
    stats: dict[str, Any] = field(default_factory=dict)
    stops: list[VcpuStop] = field(default_factory=list)  # per vCPU, why it stopped

    def __post_init__(self) -> None:
        # A backend that reports only exit statuses: the statuses are its stops.
        if not self.stops:
            self.stops = [VcpuStop(StopReason.EXIT, f"status {s}") if s is not None
                          else VcpuStop(StopReason.ERROR, "the backend gave no stop reason")
                          for s in self.exit_status]

    @property
    def ok(self) -> bool:
        """Every vCPU exited through port 0xF4 with status 0."""
        return all(s.reason == StopReason.EXIT for s in self.stops) and \
            all(status == 0 for status in self.exit_status)

    def lines(self, vcpu: int = 0) -> list[str]:
        return self.console[vcpu].splitlines()


class BackendUnavailable(Exception):
    """The backend cannot run here; the message names the missing feature."""


class Backend(Protocol):
    name: str

    def unavailable_reason(self) -> str | None:
        """None when this backend can run guests here, else why not (ioctl and errno)."""

    def run(self, image: GuestImage, machine: MachineConfig) -> RunResult:
        """Run every vCPU until all exited or a budget or the timeout ends the run (each
        vCPU's reason in RunResult.stops); raises BackendUnavailable, and KeyboardInterrupt
        on SIGINT."""
