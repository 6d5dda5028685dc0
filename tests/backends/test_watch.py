"""backends.watch: the wall-clock limit and Ctrl-C of a run, on both backends."""

from __future__ import annotations

import dataclasses
import signal
import threading

import pytest

from vlbr.backends.base import StopReason
from vlbr.backends.watch import INTERRUPTED, TIMEOUT, RunWatch
from vlbr.guest.build import build_guest
from vlbr.backends.registry import make_backend
from vlbr.guest.conformance import machine_for

SPIN = '#include "runtime.h"\nint guest_main(int c, int n) { rt_puts("up\\n"); for (;;) ; }\n'


def test_timeout_calls_stop_until_the_run_ends():
    calls = []
    with RunWatch(0.05, lambda: calls.append(1)) as watch:
        while len(calls) < 3:  # a stop that raced the run loop is repeated
            threading.Event().wait(0.01)
    assert watch.reason == TIMEOUT and len(calls) >= 3
    watch.check()  # a timeout is not an interrupt


def test_sigint_marks_the_run_interrupted_and_check_raises_outside_the_callback():
    stopped = threading.Event()
    previous = signal.getsignal(signal.SIGINT)
    with RunWatch(60, stopped.set) as watch:
        signal.raise_signal(signal.SIGINT)  # no KeyboardInterrupt here: the run loop decides
        assert stopped.wait(5)
    assert watch.reason == INTERRUPTED
    with pytest.raises(KeyboardInterrupt):
        watch.check()
    assert signal.getsignal(signal.SIGINT) is previous


def test_a_timeout_must_be_positive():
    with pytest.raises(ValueError):
        RunWatch(0, lambda: None)


@pytest.mark.parametrize("name", ["software", "kvm"])
def test_a_guest_spinning_without_exits_stops_at_the_timeout(name, tmp_path):
    backend = make_backend(name)
    if backend.unavailable_reason() is not None:
        pytest.skip(f"{name}: {backend.unavailable_reason()}")
    src = tmp_path / "spin.c"
    src.write_text(SPIN)
    # No step budget to end it (the software CPU would otherwise stop at max_steps first).
    machine = dataclasses.replace(machine_for(name), timeout=0.5, max_steps=1 << 62)
    result = backend.run(build_guest(src), machine)
    assert result.stops[0].reason == StopReason.TIMEOUT, result.stops
    assert result.console == ["up\n"] and result.exit_status == [None] and not result.ok
