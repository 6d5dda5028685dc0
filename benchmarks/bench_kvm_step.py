"""The KVM step path's own cost: vlbr single-stepping a recorded loop (`--kvm-recording step`)
against the least a Python VMM can do per step - KVM_RUN with KVM_GUESTDBG_SINGLESTEP and
nothing else - on the same loop in the same VM set-up. One JSON line per figure; the goal
(issue 10) is vlbr within 2x of the minimal loop.

Both run bench_kvm's recorded loop (`call f; dec rcx; jnz`): vlbr with LBR_CTL written first
(so it steps), the minimal loop without the two WRMSRs (KVM here has no Arch LBR MSRs); the
minimal loop only counts KVM_EXIT_DEBUG exits until the guest's exit port. Medians of
--repeat runs, interleaved.

Run: .venv/bin/python benchmarks/bench_kvm_step.py [--repeat N]
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import time

from bench_kvm import RECORDED_ITERATIONS, machine, recorded_loop
from figures import emit as emit_line, options

from iced_x86 import BlockEncoder, Code, Instruction
from iced_x86 import Register as R

from vlbr.backends.base import IMAGE_BASE, PORT_EXIT
from vlbr.backends.image import GuestImage
from vlbr.backends.kvm import KvmBackend
from vlbr.backends.kvm.ioctls import IoOut
from vlbr.backends.kvm.machine import create_machine
from vlbr.host import kvm as k
from vlbr.host.kvm import Kvm

STEP_LIMIT = 1_000_000  # a guard: the loop exits long before


def unrecorded_loop() -> GuestImage:
    """bench_kvm's recorded loop without its LBR_CTL writes."""
    top, fn = 1, 2
    body = [Instruction.create_reg_u64(Code.MOV_R64_IMM64, R.RCX, RECORDED_ITERATIONS),
            Instruction.create_branch(Code.CALL_REL32_64, fn),
            Instruction.create_reg(Code.DEC_RM64, R.RCX),
            Instruction.create_branch(Code.JNE_REL32_64, top),
            Instruction.create_reg_u32(Code.MOV_R32_IMM32, R.EAX, 0),
            Instruction.create_reg_u32(Code.MOV_R32_IMM32, R.EDX, PORT_EXIT),
            Instruction.create_reg_reg(Code.OUT_DX_EAX, R.DX, R.EAX),
            Instruction.create(Code.RETNQ)]
    body[1].ip, body[-1].ip = top, fn
    encoder = BlockEncoder(64)
    encoder.add_many(body)
    return GuestImage(encoder.encode(IMAGE_BASE), IMAGE_BASE, IMAGE_BASE, {}, "bench")


def minimal_steps(image, config) -> tuple[int, float]:
    """KVM_RUN single steps of the image until its exit port, and their seconds; nothing else
    per step."""
    with Kvm() as kvm:
        vm, memory, _, (vcpu,) = create_machine(kvm, image, config.cpuid, 1)
        try:
            vcpu.set_guest_debug(k.KVM_GUESTDBG_ENABLE | k.KVM_GUESTDBG_SINGLESTEP)
            steps, start = 0, time.perf_counter()
            while True:
                exit_ = vcpu.run()
                if isinstance(exit_, IoOut) and exit_.port == PORT_EXIT:
                    return steps, time.perf_counter() - start
                if exit_.reason != k.KVM_EXIT_DEBUG:
                    raise RuntimeError(f"the minimal loop's guest left with exit {exit_.reason}")
                steps += 1
                if steps == STEP_LIMIT:
                    raise RuntimeError(f"the minimal loop's guest took {STEP_LIMIT} steps")
        finally:
            vm.close()


def vlbr_steps(image, config) -> tuple[int, float]:
    result = KvmBackend().run(image, config)
    assert result.exit_status == [0], result.stops
    return result.stats["steps"], result.stats["seconds"]


def emit(figure: str, value, unit: str, **extra) -> None:
    emit_line("kvm_step", figure, value, unit, **extra)


def run(args) -> int:
    reason = KvmBackend().unavailable_reason()
    if reason is not None:
        emit("step_path_vs_minimal_kvm_run_loop", None, "ratio", skipped=reason)
        return 0
    config = machine()
    step_config = dataclasses.replace(config, kvm_recording="step")  # hybrid is the default
    image = recorded_loop()
    minimal, vlbr = [], []
    for _ in range(args.repeat):
        minimal.append(minimal_steps(unrecorded_loop(), config))
        vlbr.append(vlbr_steps(image, step_config))
    low, ours = (statistics.median(n / s for n, s in runs) for runs in (minimal, vlbr))
    common = {"iterations": RECORDED_ITERATIONS, "repeat": args.repeat}
    emit("minimal_kvm_run_single_steps_per_second", round(low), "steps/s",
         steps=minimal[0][0], **common)
    emit("vlbr_step_path_single_steps_per_second", round(ours), "steps/s", steps=vlbr[0][0],
         **common)
    emit("step_path_vs_minimal_kvm_run_loop", low / ours, "ratio", goal=2.0,
         vs="minimal_kvm_run_single_steps_per_second")
    return 0


def parse(argv: list[str] | None = None):
    return options(__doc__, argv, repeat=(3, "runs per figure, interleaved"))


if __name__ == "__main__":
    sys.exit(run(parse()))
