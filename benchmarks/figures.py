"""What every benchmark prints: one JSON line per figure, floats rounded; and the median run."""

from __future__ import annotations

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
