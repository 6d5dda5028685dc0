"""Arch LBR recording throughput of the vCPU model: per-branch retire_branch vs the batch path.

A synthetic 1 M-branch trace (seeded) of every branch type at CPL 0 and 3, recorded at depth 32
with filters on (OS only, COND | NEAR_REL_CALL | NEAR_RET | OTHER_BRANCH), so about a fifth of
the branches survive. Prints one JSON line per figure; the batch line carries the ratio."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vlbr.arch.cpuid import CpuidTable  # noqa: E402
from vlbr.arch.msrs import IA32_LBR_CTL, BranchType, LbrCtl  # noqa: E402
from vlbr.host import read_cpuid_file  # noqa: E402
from vlbr.vcpu import ArchLbrVcpu, Branch, LbrConfig  # noqa: E402

N_BATCH = 1_000_000
N_SINGLE = 200_000
KINDS = np.array([int(k) for k in BranchType], dtype=np.int64)
FILTERED = (LbrCtl.LBREN | LbrCtl.OS | LbrCtl.COND | LbrCtl.NEAR_REL_CALL | LbrCtl.NEAR_RET
            | LbrCtl.OTHER_BRANCH)


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from corpus import INSTLATX64  # noqa: E402  (the tests' corpus locator)

CORPUS_DUMP = INSTLATX64 / "GenuineIntel0090672_AlderLake_01_LC_BC_CPUID.txt"


def guest_table() -> CpuidTable:
    """An Alder Lake P-core (i9-12900K, logical CPU 0) as the corpus dump has it."""
    return read_cpuid_file(CORPUS_DUMP)[0].table


def trace(n: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    frm = rng.integers(0x400000, 0x800000, n, dtype=np.uint64)
    to = rng.integers(0x400000, 0x800000, n, dtype=np.uint64)
    kinds = KINDS[rng.integers(0, len(KINDS), n)]
    cpls = rng.choice(np.array([0, 3], dtype=np.int64), n)
    mispred = rng.random(n) < 0.05
    cycles = rng.integers(1, 200, n, dtype=np.int64)
    return frm, to, kinds, cpls, mispred, cycles


def vcpu(config: LbrConfig, ctl: int) -> ArchLbrVcpu:
    v = ArchLbrVcpu(config)
    v.wrmsr(IA32_LBR_CTL, ctl)
    return v


def per_branch(config, ctl, cols) -> float:
    frm, to, kinds, cpls, mispred, cycles = (c.tolist() for c in cols)
    kinds = [BranchType(k) for k in kinds]
    branches = [Branch(*b) for b in zip(frm, to, kinds, cpls, mispred, cycles)]
    v = vcpu(config, ctl)
    start = time.perf_counter()
    for b in branches:
        v.retire_branch(b)
    return len(branches) / (time.perf_counter() - start)


def batch(config, ctl, cols, repeat: int = 3) -> float:
    best = 0.0
    for _ in range(repeat):
        v = vcpu(config, ctl)
        start = time.perf_counter()
        v.record_batch(*cols[:4], mispred=cols[4], cycles=cols[5])
        best = max(best, len(cols[0]) / (time.perf_counter() - start))
    return best


def emit(figure: str, value: float, vs: str | None = None, ratio: float | None = None) -> None:
    line = {"bench": "recording", "figure": figure, "value": round(value), "unit": "branches/s"}
    if vs is not None:
        line.update(vs=vs, ratio=round(ratio, 2))
    print(json.dumps(line), flush=True)


def main() -> None:
    config = LbrConfig.from_cpuid(guest_table())
    single = per_branch(config, FILTERED, trace(N_SINGLE))
    emit("per-branch retire_branch, filters on, depth 32", single)
    cols = trace(N_BATCH)
    fast = batch(config, FILTERED, cols)
    emit("batch record_batch 1M trace, filters on, depth 32", fast, "per-branch", fast / single)
    stack = batch(config, FILTERED | LbrCtl.CALL_STACK, cols, repeat=1)
    emit("batch record_batch 1M trace, call-stack mode", stack, "per-branch", stack / single)


if __name__ == "__main__":
    main()
