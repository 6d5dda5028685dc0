"""KVM backend costs: a guest with LBREn clear, with vs without vlbr's MSR filter, and the rate
of recorded branches with LBREn set, hybrid (unicorn over the KVM memory, the native block
ring) vs step (KVM_EXIT_DEBUG per instruction), each the median of REPEATS whole runs.

The LBREn-clear guest is a 64-bit counted loop (`dec rcx; jnz`) that never touches an LBR MSR,
so both runs execute the same instructions natively in KVM; the runs alternate and the median
of REPEATS is used. Prints one JSON line per figure.

Measured on this machine (nested kvm_pvm): guest code itself runs at about 570 ns per
instruction (a `dec; jnz` loop, no exits), so single-stepping costs ~15x, not ~1000x."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from iced_x86 import BlockEncoder, Code, Instruction, Register as R  # noqa: E402

from dataclasses import replace  # noqa: E402

from vlbr.arch.msrs import IA32_LBR_CTL, LbrCtl  # noqa: E402
from vlbr.backends.base import IMAGE_BASE, MachineConfig  # noqa: E402
from vlbr.backends.kvm import KvmBackend  # noqa: E402
from vlbr.backends.image import GuestImage  # noqa: E402
from vlbr.host.kvm import Kvm  # noqa: E402
from vlbr.policy.emulated import emulated_guest_cpuid  # noqa: E402
from vlbr.vcpu import LbrConfig  # noqa: E402

LOOP_ITERATIONS = 1_000_000  # ~1 s here: this nested KVM runs guest code at ~570 ns/instruction
RECORDED_ITERATIONS = 20_000  # call, ret and a taken Jcc each (the step path's run)
RECORDING_MODES = {"step": RECORDED_ITERATIONS, "hybrid": 2_000_000}  # iterations per mode
RING3_ITERATIONS = {"step": 200_000, "hybrid": 2_000_000}  # ring 3: unicorn either way (quirk)
REPEATS = 5
LBR_ALL = int(LbrCtl.LBREN | LbrCtl.OS | LbrCtl.USR) | 0x7F0000


def _mov32(reg, value: int) -> Instruction:
    return Instruction.create_reg_u32(Code.MOV_R32_IMM32, reg, value)


def _wrmsr(msr: int, value: int) -> list[Instruction]:
    return [_mov32(R.ECX, msr), _mov32(R.EAX, value & 0xFFFFFFFF), _mov32(R.EDX, value >> 32),
            Instruction.create(Code.WRMSR)]


def _exit() -> list[Instruction]:
    return [_mov32(R.EAX, 0), _mov32(R.EDX, 0xF4), Instruction.create_reg_reg(Code.OUT_DX_EAX, R.DX, R.EAX)]


def _labelled(instr: Instruction, label: int) -> Instruction:
    instr.ip = label
    return instr


def _encode(code: list[Instruction]) -> GuestImage:
    encoder = BlockEncoder(64)
    encoder.add_many(code)
    return GuestImage(encoder.encode(IMAGE_BASE), IMAGE_BASE, IMAGE_BASE, {}, "bench")


def plain_loop() -> GuestImage:
    top = 1
    return _encode([Instruction.create_reg_u64(Code.MOV_R64_IMM64, R.RCX, LOOP_ITERATIONS),
                    _labelled(Instruction.create_reg(Code.DEC_RM64, R.RCX), top),
                    Instruction.create_branch(Code.JNE_REL32_64, top), *_exit()])


def recorded_loop(iterations: int = RECORDED_ITERATIONS) -> GuestImage:
    top, fn = 1, 2
    return _encode([*_wrmsr(IA32_LBR_CTL, LBR_ALL),
                    Instruction.create_reg_u64(Code.MOV_R64_IMM64, R.RCX, iterations),
                    _labelled(Instruction.create_branch(Code.CALL_REL32_64, fn), top),
                    Instruction.create_reg(Code.DEC_RM64, R.RCX),
                    Instruction.create_branch(Code.JNE_REL32_64, top),
                    *_wrmsr(IA32_LBR_CTL, 0), *_exit(),
                    _labelled(Instruction.create(Code.RETNQ), fn)])


USER_CODE = IMAGE_BASE + 0x1000
USER_STACK = 0x600000
USER_CS, USER_SS = 0x23, 0x1B  # the Guest ABI's ring-3 selectors


def ring3_loop(iterations: int) -> GuestImage:
    """recorded_loop's loop at CPL3: the kernel IRETQs to it, it exits through the port."""
    kernel = _wrmsr(IA32_LBR_CTL, LBR_ALL)
    for value in (USER_SS, USER_STACK, 0x2, USER_CS, USER_CODE):  # the IRETQ frame
        kernel += [Instruction.create_reg_u64(Code.MOV_R64_IMM64, R.RAX, value),
                   Instruction.create_reg(Code.PUSH_R64, R.RAX)]
    kernel.append(Instruction.create(Code.IRETQ))
    top, fn = 1, 2
    user = [Instruction.create_reg_u64(Code.MOV_R64_IMM64, R.RCX, iterations),
            _labelled(Instruction.create_branch(Code.CALL_REL32_64, fn), top),
            Instruction.create_reg(Code.DEC_RM64, R.RCX),
            Instruction.create_branch(Code.JNE_REL32_64, top), *_exit(),
            _labelled(Instruction.create(Code.RETNQ), fn)]
    data = bytearray(_encode(kernel).data)
    data += bytes(USER_CODE - IMAGE_BASE - len(data))
    encoder = BlockEncoder(64)
    encoder.add_many(user)
    data += encoder.encode(USER_CODE)
    return GuestImage(bytes(data), IMAGE_BASE, IMAGE_BASE, {}, "bench_ring3")


def machine() -> MachineConfig:
    with Kvm() as kvm:
        table = emulated_guest_cpuid(kvm.supported_cpuid(), depth=32)
    return MachineConfig(cpuid=table, lbr=LbrConfig.from_cpuid(table), max_steps=10_000_000)


def emit(figure: str, value: float, unit: str, vs: str | None = None,
         ratio: float | None = None, **extra) -> None:
    line = {"bench": "kvm", "figure": figure, "value": round(value, 6), "unit": unit}
    if vs is not None:
        line["vs"] = vs
    if ratio is not None:
        line["ratio"] = round(ratio, 4)
    line.update(extra)
    print(json.dumps(line), flush=True)


def main() -> int:
    reason = KvmBackend().unavailable_reason()
    if reason is not None:
        print(json.dumps({"bench": "kvm", "skipped": reason}))
        return 0
    config = machine()
    image = plain_loop()
    filtered, unfiltered = [], []
    for _ in range(REPEATS):
        for backend, times in ((KvmBackend(msr_filter=True), filtered),
                               (KvmBackend(msr_filter=False), unfiltered)):
            result = backend.run(image, config)
            assert result.exit_status == [0] and result.stats["steps"] == 0
            times.append(result.stats["seconds"])
    with_filter, without = statistics.median(filtered), statistics.median(unfiltered)
    emit("lbren_clear_loop_seconds", with_filter, "s", vs="no MSR filter", ratio=without / with_filter,
         baseline_seconds=round(without, 6), iterations=LOOP_ITERATIONS, goal_ratio=0.95)
    emit("lbren_clear_iterations_per_second", LOOP_ITERATIONS / with_filter, "iterations/s",
         vs="no MSR filter", ratio=without / with_filter)

    rates, steps = recording_rates(config)
    emit("recorded_branches_per_second", rates["hybrid"], "branches/s", vs="step",
         ratio=rates["hybrid"] / rates["step"], step_branches_per_second=round(rates["step"]),
         goal=5e6, repeats=REPEATS)
    emit("recorded_branches_per_second_step", rates["step"], "branches/s",
         single_steps_per_second=round(steps), repeats=REPEATS)
    rates, _ = recording_rates(config, ring3_loop, RING3_ITERATIONS)
    emit("recorded_branches_per_second_ring3", rates["hybrid"], "branches/s", vs="step",
         ratio=rates["hybrid"] / rates["step"], step_branches_per_second=round(rates["step"]),
         repeats=REPEATS)
    emit("recording_slowdown", steps / (LOOP_ITERATIONS * 2 / with_filter),
         "ratio", vs="LBREn clear (native) instructions/s")
    return 0


def recording_rates(config: MachineConfig, guest=None, counts=None
                    ) -> tuple[dict[str, float], float]:
    """Recorded branches per second of whole runs per recording mode (median), and the
    single-steps per second of the step runs."""
    rates, steps = {}, []
    for mode, iterations in (counts or RECORDING_MODES).items():
        branches = 3 * iterations - 1  # the last Jcc falls through
        seconds = []
        for _ in range(REPEATS):
            image = (guest or recorded_loop)(iterations)
            result = KvmBackend().run(image, replace(config, kvm_recording=mode))
            stats = result.stats
            assert result.exit_status == [0] and stats["kvm_recording"].startswith(mode), stats
            assert mode != "step" or stats["branches"] == branches
            seconds.append(stats["seconds"])
            if mode == "step":
                steps.append(stats["steps"] / stats["seconds"])
        rates[mode] = branches / statistics.median(seconds)
    return rates, statistics.median(steps)


if __name__ == "__main__":
    sys.exit(main())
