"""The KVM backend: guests run on /dev/kvm, their Arch LBR MSRs and branches go to vlbr's model."""

from __future__ import annotations

import signal
import threading

from vlbr.backends.base import (KVM_RECORDING_MODES, BackendUnavailable, MachineConfig,
                                RunResult, StopReason, VcpuStop)
from vlbr.backends.kvm.ioctls import Vm
from vlbr.backends.kvm.machine import create_machine
from vlbr.backends.kvm.quirks import KvmQuirks, probe_quirks
from vlbr.backends.kvm.runner import Budget, VcpuRunner
from vlbr.backends.watch import TIMEOUT, RunWatch
from vlbr.errors import VlbrError
from vlbr.host import kvm as k
from vlbr.host.kvm import Kvm, KvmError
from vlbr.vcpu.lbr import ArchLbrVcpu

MSR_SCAN_BLOCKS = (0x0000_0000, 0xC000_0000)  # the MSR ranges KVM's filter commonly covers
MSR_BLOCK = 0x2000

# Capabilities run() cannot do without, each with what vlbr uses it for.
REQUIRED_CAPS = {
    k.KVM_CAP_X86_USER_SPACE_MSR: "KVM_CAP_X86_USER_SPACE_MSR (Arch LBR MSRs to user space)",
    k.KVM_CAP_X86_MSR_FILTER: "KVM_CAP_X86_MSR_FILTER (deny the model's MSRs to KVM)",
    k.KVM_CAP_SET_GUEST_DEBUG: "KVM_CAP_SET_GUEST_DEBUG (single-step while recording)",
    k.KVM_CAP_XCRS: "KVM_CAP_XCRS (XCR0 of the entry state)",
}


_OWNED: dict = {}  # LbrConfig -> owned MSRs: the scan costs ~50 ms, runs repeat configs


def owned_msrs(model: ArchLbrVcpu) -> frozenset[int]:
    """Every MSR the model owns in the ranges the filter covers: exactly the ones denied."""
    try:
        return _OWNED[model.config]
    except (KeyError, TypeError):
        pass
    owned = frozenset(msr for base in MSR_SCAN_BLOCKS for msr in range(base, base + MSR_BLOCK)
                      if model.owns(msr))
    try:
        _OWNED[model.config] = owned
    except TypeError:  # an unhashable config: scan every time
        pass
    return owned


class KvmBackend:
    """Backend "kvm": one VM per run, its vCPUs interleaved on this thread."""

    name = "kvm"

    def __init__(self, path: str = k.KVM_PATH, msr_filter: bool = True):
        self.path = path
        self.msr_filter = msr_filter  # False only for the benchmark's no-filter baseline

    def unavailable_reason(self) -> str | None:
        reason = Kvm.unavailable_reason(self.path)
        if reason is not None:
            return reason
        with Kvm(self.path) as kvm:
            for cap, what in REQUIRED_CAPS.items():
                if not kvm.check_extension(cap):
                    return f"KVM_CHECK_EXTENSION({cap}): 0, no {what}"
        return None

    def unavailable_features(self) -> dict[str, str]:
        """Guest features this KVM cannot provide, name -> reason (the ioctl/exit and errno)."""
        from vlbr.backends.kvm.probe import unavailable_features
        return unavailable_features(self.path)

    def run(self, image, machine: MachineConfig) -> RunResult:
        if machine.kvm_recording not in KVM_RECORDING_MODES:
            raise VlbrError(f"kvm_recording {machine.kvm_recording!r}: one of "
                            f"{', '.join(KVM_RECORDING_MODES)}")
        reason = self.unavailable_reason()
        if reason is not None:
            raise BackendUnavailable(reason)
        with Kvm(self.path) as kvm:
            quirks = probe_quirks(self.path)
            vm, memory, sites, vcpus = create_machine(kvm, image, machine.cpuid, machine.vcpus,
                                                      quirks.patches())
            try:
                return self._run(kvm, vm, memory, sites, vcpus, machine, quirks)
            finally:
                for vcpu in vcpus:
                    vcpu.close()
                vm.close()
                try:
                    memory.close()
                except BufferError:  # unicorn's ring-3 CPU still maps it; GC frees both
                    pass

    def _run(self, kvm: Kvm, vm: Vm, memory, sites, vcpus, machine: MachineConfig,
             quirks: KvmQuirks) -> RunResult:
        models = [ArchLbrVcpu(machine.lbr) for _ in vcpus]
        if self.msr_filter:
            self._route_msrs(vm, models[0])
        sync = bool(kvm.check_extension(k.KVM_CAP_SYNC_REGS) & k.KVM_SYNC_X86_SREGS)
        runners = [VcpuRunner(vcpu, model, memory, sync, machine.cpuid, sites,
                              machine.console_limit, quirks, machine.kvm_recording)
                   for vcpu, model in zip(vcpus, models)]
        for model in models:
            model.put()  # every vCPU starts scheduled out, as KVM's vCPU threads would
        budget = Budget(machine.max_steps, machine.max_exits)
        with _Kicker(runners) as kicker, RunWatch(machine.timeout, kicker.kick) as watch:
            switches = self._schedule(runners, budget, watch)
        watch.check()
        self._stop_the_rest(runners, budget, watch, machine)
        for model in models:
            model.load()  # results are read with the state in registers
        return RunResult(
            console=[r.console.decode("latin-1") for r in runners],
            exit_status=[r.exit_status for r in runners],
            vcpus=models,
            stops=[r.stop for r in runners],
            stats={
                "backend": self.name,
                "exits": sum(r.exits for r in runners),
                "steps": sum(r.steps for r in runners),
                # step: every taken branch; hybrid: those its drains retired (the newest)
                "branches": sum(r.branches for r in runners),
                "msr_exits": sum(r.msr_exits for r in runners),
                "emulated": sum(r.emulated for r in runners),
                "cpuid_exits": sum(r.cpuid_exits for r in runners),
                "ring3_excursions": sum(r.excursions for r in runners),
                "ring3_instructions": sum(r.user_instructions for r in runners),
                "switches": switches,
                "seconds": watch.elapsed,
                "out_of_budget": any(not r.exited for r in runners),
                "stop_reasons": [r.stop_reason for r in runners],
                "msr_filter": self.msr_filter,
                "sync_regs": sync,
                "quirks": ",".join(quirks.active()),
                **self._recording_stats(runners),
            },
        )

    @staticmethod
    def _recording_stats(runners: list[VcpuRunner]) -> dict:
        """How recording ran (runner.recorder), and what the hybrid's unicorn CPU did."""
        cpus = [r.hybrid_cpu for r in runners if r.hybrid_cpu is not None]
        fallback = next((r.hybrid_unavailable for r in runners if r.hybrid_unavailable), None)
        return {"kvm_recording": ",".join(sorted({r.recorder for r in runners})),
                "hybrid_unavailable": fallback or "",
                "hybrid_stretches": sum(c.stretches for c in cpus),
                "hybrid_blocks": sum(c.blocks for c in cpus),
                "hybrid_instructions": sum(r.hybrid_instructions for r in runners)}

    @staticmethod
    def _schedule(runners: list[VcpuRunner], budget: Budget, watch: RunWatch) -> int:
        """Round-robin slices until every vCPU exited or the run stops; returns the switches."""
        switches = 0
        stopped = lambda: watch.reason is not None or budget.limit_hit is not None  # noqa: E731
        while not stopped() and not all(r.exited for r in runners):
            for runner in runners:
                if runner.exited or stopped():
                    continue
                runner.model.load()  # sched-in
                runner.run_slice(budget, stopped)
                runner.model.put()  # sched-out
                switches += 1
        return switches

    @staticmethod
    def _stop_the_rest(runners: list[VcpuRunner], budget: Budget, watch: RunWatch,
                       machine: MachineConfig) -> None:
        if watch.reason is not None:
            stop = VcpuStop(StopReason.TIMEOUT if watch.reason == TIMEOUT else watch.reason,
                            f"{watch.reason} after {watch.elapsed:.1f} s "
                            f"(limit {machine.timeout:g} s)")
        elif budget.limit_hit is not None:
            stop = VcpuStop(StopReason.STEP_BUDGET, f"{budget.limit_hit}="
                            f"{getattr(machine, budget.limit_hit)} reached before every vCPU exited")
        else:
            return
        for runner in runners:
            if not runner.exited:
                runner.stop = stop

    @staticmethod
    def _route_msrs(vm: Vm, model: ArchLbrVcpu) -> None:
        try:
            vm.enable_cap(k.KVM_CAP_X86_USER_SPACE_MSR, k.KVM_MSR_EXIT_REASON_FILTER)
            vm.set_msr_filter(owned_msrs(model))
        except KvmError as err:
            raise BackendUnavailable(str(err)) from None


def _ignore(signum, frame) -> None:
    """SIGUSR1 only interrupts KVM_RUN (it returns EINTR); there is nothing else to do."""


class _Kicker:
    """Makes a vCPU thread's KVM_RUN return: immediate_exit, then SIGUSR1 to that thread."""

    def __init__(self, runners: list[VcpuRunner]):
        self.runners = runners
        self.thread = threading.get_ident()
        self.signals = threading.current_thread() is threading.main_thread()

    def __enter__(self) -> "_Kicker":
        if self.signals:  # the default action of SIGUSR1 would end the process
            self.old = signal.signal(signal.SIGUSR1, _ignore)
        return self

    def __exit__(self, *exc) -> None:
        if self.signals:
            signal.signal(signal.SIGUSR1, self.old)

    def kick(self) -> None:
        for runner in self.runners:
            runner.kick()
        if self.signals:
            signal.pthread_kill(self.thread, signal.SIGUSR1)
