"""How the software backend's recording cost scales: with LBR depth (8, 32, 64: it should not
grow) and with branches (twice the loop: it should take twice the time), on the native block
ring and on the pure-Python hook. bench_software's loop, every branch recorded (OS | USR, all
types); the best of --repeat runs each. One JSON line per figure.

Run: .venv/bin/python benchmarks/bench_recording_scaling.py [--iterations N] [--repeat N]
"""

from __future__ import annotations

import sys

from bench_software import BRANCHES_PER_ITERATION, RECORD_ALL, backend, loop_guest
from figures import emit as emit_line, options

from vlbr.backends.base import MachineConfig

DEPTHS = (8, 32, 64)  # CPUID.1CH:EAX[7:0] bit n-1 enumerates depth 8n (SDM vol. 3B 18.1.2)
PATHS = {"native": True, "python": False}
PYTHON_SHARE = 10  # the Python hook runs 1/10 of the loop: it is ~50x slower


def seconds(iterations: int, depth: int, native: bool, repeat: int) -> float:
    from vlbr.backends.registry import guest_cpuid
    from vlbr.vcpu import LbrConfig
    table = guest_cpuid("software", depth)
    machine = MachineConfig(table, LbrConfig.from_cpuid(table), 1, 50 * iterations,
                            native_recording=native)
    image, _ = loop_guest(iterations, RECORD_ALL)
    return min(backend(image, machine)[0] for _ in range(repeat))


def emit(figure: str, value, unit: str, **extra) -> None:
    emit_line("recording_scaling", figure, value, unit, **extra)


def run(args) -> int:
    for path, native in PATHS.items():
        n = args.iterations if native else max(1, args.iterations // PYTHON_SHARE)
        branches = BRANCHES_PER_ITERATION * n - 1
        by_depth = {d: seconds(n, d, native, args.repeat) for d in DEPTHS}
        for depth, s in by_depth.items():
            emit("recording_branches_per_second", round(branches / s), "branches/s",
                 path=path, depth=depth, iterations=n)
        emit("recording_seconds_deepest_vs_shallowest", by_depth[DEPTHS[-1]] / by_depth[DEPTHS[0]],
             "ratio", path=path, depth=DEPTHS[-1], vs_depth=DEPTHS[0], iterations=n)
        double = seconds(2 * n, 32, native, args.repeat)
        emit("recording_seconds_twice_the_branches", double / by_depth[32], "ratio", path=path,
             depth=32, iterations=2 * n, vs_iterations=n)
    return 0


def parse(argv: list[str] | None = None):
    return options(__doc__, argv,
                   iterations=(2_000_000, "the native path's loop iterations"),
                   repeat=(3, "runs per figure, the best kept"))


if __name__ == "__main__":
    sys.exit(run(parse()))
