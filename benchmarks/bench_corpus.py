"""Benchmark: reading every CPUID dump of ../shared/corpus, one JSON line per figure.

Compares vlbr's reader with Debian's `cpuid -f` on the same data converted to `cpuid -r`
form (the tool also decodes every leaf and includes process start-up, so it is the
alternative a user would run, not an equal-work baseline)."""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vlbr.host import read_cpuid_file, write_cpuid_raw

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from corpus import CORPUS  # noqa: E402  (the tests' corpus locator)

REPEAT = 3


def corpus_files() -> list[Path]:
    files = sorted((CORPUS / "instlatx64").glob("*.txt")) + sorted((CORPUS / "libvirt").glob("*.xml"))
    files += sorted((CORPUS / "firecracker-guest-views").glob("*.json"))
    return files + sorted(CORPUS.glob("cpuid-tool-raw-*.txt"))


def best_of(fn, repeat: int = REPEAT) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def emit(**fields) -> None:
    print(json.dumps({"bench": "corpus_read", **fields}), flush=True)


def main() -> int:
    files = corpus_files()
    if not files:
        print(f"no corpus at {CORPUS}", file=sys.stderr)
        return 1
    per_dump = {f.name: best_of(lambda f=f: read_cpuid_file(f)) for f in files}
    slowest = max(per_dump, key=per_dump.get)
    emit(figure="per_dump_mean", value=statistics.mean(per_dump.values()), unit="s", dumps=len(files),
         note=f"best of {REPEAT} reads per dump")
    emit(figure="per_dump_max", value=per_dump[slowest], unit="s", dump=slowest)
    emit(figure="total", value=sum(per_dump.values()), unit="s", dumps=len(files))
    if shutil.which("cpuid") is None:
        emit(figure="vs_cpuid_tool", value=None, unit="s", vs="cpuid -f", ratio=None,
             skipped="Debian cpuid not installed")
        return 0
    aida = [f for f in files if f.parent.name == "instlatx64"]
    with tempfile.TemporaryDirectory() as tmp:
        tool_times = []
        for f in aida:
            raw = Path(tmp) / (f.stem + ".raw")
            raw.write_text(write_cpuid_raw(read_cpuid_file(f)))
            tool_times.append(best_of(lambda raw=raw: subprocess.run(
                ["cpuid", "-f", str(raw)], stdout=subprocess.DEVNULL, check=True), repeat=1))
    ours = sum(per_dump[f.name] for f in aida)
    theirs = sum(tool_times)
    emit(figure="aida_total_vs_cpuid_tool", value=ours, unit="s", vs="cpuid -f on converted raw",
         vs_value=theirs, ratio=ours / theirs, dumps=len(aida))
    return 0


if __name__ == "__main__":
    sys.exit(main())
