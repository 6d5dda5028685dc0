"""The branch stacks that `perf script -F ip,brstack` printed on a Linux guest's console,
checked against vlbr's ground truth at the guest's PMIs (`vlbr linux --verify-samples`).

perf script prints a sample as its IP (hex, no 0x) and then one FROM/TO/flags entry per
branch, newest first (tools/perf/util/evsel_fprintf.c, builtin-script.c
perf_sample__fprintf_brstack). A sample matches when some PMI at the same IP, not matched
before, expected exactly that stack; every PMI's model records must equal its ground truth."""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field

from vlbr.backends.pc.ground_truth import PmiSnapshot

_ENTRY = re.compile(r"0x([0-9a-f]+)/0x([0-9a-f]+)/\S*")
_SAMPLE = re.compile(r"(?:^|[\s:])([0-9a-f]+)((?:\s+0x[0-9a-f]+/0x[0-9a-f]+/\S*)+)\s*$")
SHOWN = 5  # mismatches described in a report


@dataclass(frozen=True)
class PrintedSample:
    line: int  # 1-based console line
    ip: int
    stack: tuple[tuple[int, int], ...]


def printed_samples(console: str) -> list[PrintedSample]:
    """Every console line that ends like a perf script ip,brstack sample."""
    samples = []
    for number, text in enumerate(console.splitlines(), 1):
        found = _SAMPLE.search(text)
        if found is None:
            continue
        stack = tuple((int(a, 16), int(b, 16)) for a, b in _ENTRY.findall(found.group(2)))
        samples.append(PrintedSample(number, int(found.group(1), 16), stack))
    return samples


@dataclass
class SampleCheck:
    pmis: int = 0  # PMIs while LBREn was set
    pmis_agreeing: int = 0  # whose model records equal the ground truth
    incomplete: int = 0  # PMIs whose ground truth needed more history than was kept
    samples: int = 0  # printed by perf script
    samples_matching: int = 0
    mismatches: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (self.samples > 0 and self.samples_matching == self.samples
                and self.pmis_agreeing == self.pmis and not self.incomplete)

    def to_json(self) -> dict:
        return {"ok": self.ok, "pmis": self.pmis, "pmis_agreeing": self.pmis_agreeing,
                "incomplete": self.incomplete, "samples": self.samples,
                "samples_matching": self.samples_matching, "mismatches": self.mismatches}

    def summary(self) -> str:
        text = (f"{self.pmis} PMIs with LBREn set, {self.pmis_agreeing} with the LBR equal to "
                f"the ground truth; {self.samples} perf script samples, "
                f"{self.samples_matching} equal to the ground truth at their PMI")
        if self.incomplete:
            text += f"; {self.incomplete} PMIs beyond the kept history"
        if not self.samples:
            text += " (no perf script -F ip,brstack lines on the console)"
        return text


def check_samples(console: str, snapshots: list[PmiSnapshot]) -> SampleCheck:
    check = SampleCheck(pmis=len(snapshots))
    for snap in snapshots:
        check.pmis_agreeing += snap.agrees
        check.incomplete += not snap.complete
        if not snap.agrees:
            _note(check, f"PMI {snap.index} at {snap.ip:#x}: the LBR holds "
                         f"{_difference(snap.recorded, snap.expected)}")
    unmatched: dict[int, list[PmiSnapshot]] = defaultdict(list)
    for snap in snapshots:
        unmatched[snap.ip].append(snap)
    for sample in printed_samples(console):
        check.samples += 1
        at_ip = unmatched.get(sample.ip, [])
        found = next((s for s in at_ip if s.expected == sample.stack), None)
        if found is not None:
            at_ip.remove(found)
            check.samples_matching += 1
        elif at_ip:
            _note(check, f"console line {sample.line}: the sample at {sample.ip:#x} has "
                         f"{_difference(sample.stack, at_ip[0].expected)}")
        else:
            _note(check, f"console line {sample.line}: no PMI left at {sample.ip:#x}")
    return check


def _note(check: SampleCheck, text: str) -> None:
    if len(check.mismatches) < SHOWN:
        check.mismatches.append(text)


def _difference(got, expected) -> str:
    for i, (a, b) in enumerate(zip(got, expected)):
        if a != b:
            return (f"entry {i} {a[0]:#x}->{a[1]:#x} where the ground truth has "
                    f"{b[0]:#x}->{b[1]:#x}")
    return f"{len(got)} entries where the ground truth has {len(expected)}"
