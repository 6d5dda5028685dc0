"""The installed `vlbr` console script as a subprocess: what a user runs, exit codes and all."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

_BESIDE = Path(sys.executable).with_name("vlbr")
SCRIPT = str(_BESIDE) if _BESIDE.exists() else shutil.which("vlbr")


def vlbr(*args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """Run `vlbr ARGS`; a hang fails the test instead of the suite."""
    if SCRIPT is None:
        pytest.fail("the vlbr console script is not installed beside this Python (pip install -e .)")
    return subprocess.run([SCRIPT, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, **kwargs)


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([SCRIPT, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)


def one_error_line(done: subprocess.CompletedProcess) -> str:
    """The single `vlbr: error: ...` line a usage or input error ends with (asserted)."""
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert len(lines) == 1 and lines[0].startswith("vlbr: error: "), done.stderr
    return lines[0]
