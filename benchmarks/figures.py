"""What every benchmark prints: one JSON line per figure, floats rounded; and the median run."""

from __future__ import annotations

import argparse
import json
import statistics
from typing import Callable, TypeVar

Run = TypeVar("Run")


def emit(bench: str, figure: str, value, unit: str, **extra) -> None:
    line = {"bench": bench, "figure": figure, "value": value, "unit": unit, **extra}
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in line.items()}),
          flush=True)


def median_run(run: Callable[[], Run], repeat: int, seconds: Callable[[Run], float | None]) -> Run:
    """The run with the median seconds (a run without a time is returned at once)."""
    runs = []
    for _ in range(repeat):
        done = run()
        if seconds(done) is None:
            return done
        runs.append(done)
    middle = statistics.median_low(seconds(r) for r in runs)
    return next(r for r in runs if seconds(r) == middle)


def options(doc: str, argv: list[str] | None, *, install: bool = False,
            **numbers: tuple[object, str]) -> argparse.Namespace:
    """The command line of a benchmark: each keyword `name=(default, help)` is `--name` (its
    type the default's); `install` adds --no-install (for QEMU's Debian package)."""
    parser = argparse.ArgumentParser(description=" ".join(doc.split("\n\n")[0].split()))
    for name, (default, text) in numbers.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default,
                            metavar="S" if isinstance(default, float) else "N",
                            help=f"{text} (default: %(default)s)")
    if install:
        parser.add_argument("--no-install", dest="install", action="store_false",
                            help="do not apt-get install qemu-system-x86 when it is missing")
    return parser.parse_args(argv)
