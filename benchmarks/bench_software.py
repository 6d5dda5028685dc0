"""Software backend cost: the same branchy guest on unhooked unicorn, on the backend with
LBREn clear, and on the backend recording every branch (natively, in call-stack mode, and
with the pure-Python hook). One JSON line per figure: the median of --runs interleaved runs
(call-stack mode half as many, the Python hook, minutes at 2 M iterations, once), with its
ratio to the figure it is compared with in the same run.

Run: .venv/bin/python benchmarks/bench_software.py [--iterations N] [--runs R]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

from iced_x86 import BlockEncoder, Code, Instruction
from iced_x86 import Register as R
from unicorn import UC_ARCH_X86, UC_MODE_64, Uc
from unicorn import x86_const as X

from vlbr.arch.msrs import IA32_LBR_CTL, LbrCtl
from vlbr.backends import layout
from vlbr.backends.base import IMAGE_BASE, PORT_EXIT, MachineConfig
from vlbr.backends.software.backend import SoftwareMachine, enter_long_mode, load_guest
from vlbr.backends.image import GuestImage

BRANCHES_PER_ITERATION = 3  # call, ret, jnz (taken on all but the last iteration)
RECORD_ALL = int(LbrCtl.LBREN | LbrCtl.OS | LbrCtl.USR) | 0x7F0000
CALL_STACK = RECORD_ALL | int(LbrCtl.CALL_STACK)


def loop_guest(iterations: int, lbr_ctl: int) -> tuple[GuestImage, int]:
    """wrmsr LBR_CTL; `iterations` x (call f; dec ecx; jnz); exit 0. Returns (image, hlt)."""
    base = IMAGE_BASE
    body = [
        Instruction.create_reg_u32(Code.MOV_R32_IMM32, R.ECX, IA32_LBR_CTL),
        Instruction.create_reg_u32(Code.MOV_R32_IMM32, R.EAX, lbr_ctl & 0xFFFFFFFF),
        Instruction.create_reg_u32(Code.MOV_R32_IMM32, R.EDX, lbr_ctl >> 32),
        Instruction.create(Code.WRMSR),
        Instruction.create_reg_u32(Code.MOV_R32_IMM32, R.ECX, iterations),
    ]
    loop_ip, f_ip = 1, 2  # label ids resolved by the BlockEncoder
    call = Instruction.create_branch(Code.CALL_REL32_64, f_ip)
    call.ip = loop_ip
    body += [call, Instruction.create_reg(Code.DEC_RM32, R.ECX),
             Instruction.create_branch(Code.JNE_REL32_64, loop_ip),
             Instruction.create_reg_u32(Code.MOV_R32_IMM32, R.EAX, 0),
             Instruction.create_reg_u32(Code.MOV_R32_IMM32, R.EDX, PORT_EXIT),
             Instruction.create_reg_reg(Code.OUT_DX_EAX, R.DX, R.EAX),
             Instruction.create(Code.HLT)]
    ret = Instruction.create(Code.RETNQ)
    ret.ip = f_ip
    body.append(ret)
    encoder = BlockEncoder(64)
    encoder.add_many(body)
    code = encoder.encode(base)
    hlt = base + code.index(b"\xef\xf4") + 1  # out dx,eax; hlt
    return GuestImage(code, base, base, {}, "bench_loop"), hlt


def unhooked_unicorn(image: GuestImage, hlt: int, count: int = 0) -> float:
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.ctl_set_cpu_model(X.UC_CPU_X86_HASWELL)
    load_guest(uc, image, 1)
    enter_long_mode(uc, layout.entry_state(0, 1, image.entry))
    start = time.perf_counter()
    uc.emu_start(image.entry, hlt, count=count)
    return time.perf_counter() - start


def median_seconds(timers: dict, runs: int) -> dict:
    """Each timer's median over `runs` rounds; a round runs every timer once, so a change in
    the machine's load falls on all of them alike."""
    times = {name: [] for name in timers}
    for _ in range(runs):
        for name, timer in timers.items():
            times[name].append(timer())
    return {name: statistics.median(t) for name, t in times.items()}


def backend(image: GuestImage, machine: MachineConfig) -> tuple[float, list]:
    sm = SoftwareMachine(image, machine)
    start = time.perf_counter()
    result = sm.run()
    elapsed = time.perf_counter() - start
    assert result.exit_status == [0], result.stats
    return elapsed, result.vcpus[0].records()


def guest_table():
    from vlbr.host import live_host_cpus
    from vlbr.policy import emulated_guest_cpuid
    return emulated_guest_cpuid(live_host_cpus()[0].table, 32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=5, help="runs per figure (median)")
    args = parser.parse_args()
    from vlbr.vcpu import LbrConfig
    table = guest_table()
    # no wall-clock limit: the Python hook takes minutes at 2 M iterations
    machine = MachineConfig(table, LbrConfig.from_cpuid(table), 1, 50 * args.iterations,
                            timeout=24 * 3600)
    branches = BRANCHES_PER_ITERATION * args.iterations - 1
    image_off, hlt = loop_guest(args.iterations, 0)
    image_on, _ = loop_guest(args.iterations, RECORD_ALL)
    image_stack, _ = loop_guest(args.iterations, CALL_STACK)

    def timed(image, config=machine):
        return lambda: backend(image, config)[0]

    seconds = median_seconds({
        "raw": lambda: unhooked_unicorn(image_off, hlt),
        "counted": lambda: unhooked_unicorn(image_off, hlt, machine.max_steps),
        "clear": timed(image_off), "recording": timed(image_on)}, args.runs)
    raw, counted, clear, recording = (seconds[k] for k in ("raw", "counted", "clear", "recording"))
    stack_runs = max(1, args.runs // 2)
    call_stack = median_seconds({"call_stack": timed(image_stack)}, stack_runs)["call_stack"]
    python_machine = dataclasses.replace(machine, native_recording=False)
    python, python_records = backend(image_on, python_machine)
    assert backend(image_on, machine)[1] == python_records  # the same LBR either way

    def line(figure, seconds, vs=None, vs_seconds=None, runs=args.runs):
        out = {"bench": "software", "figure": figure, "value": round(branches / seconds),
               "unit": "branches/s", "iterations": args.iterations, "runs": runs}
        if vs is not None:
            out.update(vs=vs, ratio=round(vs_seconds / seconds, 4))
        print(json.dumps(out))

    line("unhooked_unicorn", raw)
    # unicorn's emu_start count is a hook per instruction: what the backend no longer pays
    line("unhooked_unicorn_with_count", counted, "unhooked_unicorn", raw)
    line("backend_lbren_clear", clear, "unhooked_unicorn", raw)
    line("backend_recording_native", recording, "unhooked_unicorn", raw)
    line("backend_recording_call_stack", call_stack, "unhooked_unicorn", raw, runs=stack_runs)
    line("backend_recording_python", python, "backend_recording_native", recording, runs=1)
    print(json.dumps({"bench": "software", "figure": "recording_vs_lbren_clear",
                      "value": round(clear / recording, 4), "unit": "ratio",
                      "vs": "backend_lbren_clear"}))


if __name__ == "__main__":
    main()
