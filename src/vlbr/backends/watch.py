"""A run's wall-clock limit and Ctrl-C: a watchdog thread stops the guest CPU from outside.

Neither backend returns to Python while the guest spins without exits (KVM_RUN, unicorn's
emu_start), and a KeyboardInterrupt raised inside a unicorn hook is swallowed by ctypes. So
while a run is watched, SIGINT only marks the run interrupted (the C-level handler writes the
signal to a wakeup pipe at once, `signal.set_wakeup_fd`), and a thread that waits on that pipe
with the deadline as timeout calls the backend's `stop` until the run loop has noticed. The run
loop then ends and raises KeyboardInterrupt itself, outside any callback.
"""

from __future__ import annotations

import os
import select
import signal
import threading
import time
from typing import Callable

TIMEOUT = "timeout"
INTERRUPTED = "interrupted"
_RESTOP_SECONDS = 0.05  # a stop that raced the next KVM_RUN / emu_start is repeated


class RunWatch:
    """Context manager: `reason` becomes TIMEOUT or INTERRUPTED and `stop()` is called."""

    def __init__(self, timeout: float, stop: Callable[[], None]):
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, not {timeout}")
        self.timeout = timeout
        self._stop = stop
        self.reason: str | None = None
        self.started = time.monotonic()
        self._done = threading.Event()
        self._signals = threading.current_thread() is threading.main_thread()
        self._pipe: tuple[int, int] | None = None

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def __enter__(self) -> "RunWatch":
        self.started = time.monotonic()
        if self._signals:
            self._pipe = os.pipe()
            os.set_blocking(self._pipe[1], False)
            self._old_fd = signal.set_wakeup_fd(self._pipe[1], warn_on_full_buffer=False)
            self._old_int = signal.signal(signal.SIGINT, self._on_sigint)
        self._thread = threading.Thread(target=self._watch, name="vlbr-run-watch", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        if self._pipe is not None:
            os.write(self._pipe[1], b"\0")  # wake the thread from select()
        self._thread.join()
        if self._pipe is not None:
            signal.set_wakeup_fd(self._old_fd)
            signal.signal(signal.SIGINT, self._old_int)
            for fd in self._pipe:
                os.close(fd)

    def check(self) -> None:
        """Raise KeyboardInterrupt in the run loop once SIGINT came."""
        if self.reason == INTERRUPTED:
            raise KeyboardInterrupt

    def _on_sigint(self, signum, frame) -> None:
        self._fire(INTERRUPTED)  # may run late (inside a hook): the thread saw it already

    def _fire(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
        self._call_stop()

    def _call_stop(self) -> None:
        try:
            self._stop()
        except Exception:  # noqa: BLE001 - a CPU between runs refuses; the next try is soon
            pass

    def _watch(self) -> None:
        readable = [self._pipe[0]] if self._pipe else []
        while not self._done.is_set():
            left = self.timeout - self.elapsed
            if self.reason is not None:
                self._call_stop()
                self._done.wait(_RESTOP_SECONDS)
            elif left <= 0:
                self._fire(TIMEOUT)
            elif readable:
                ready, _, _ = select.select(readable, [], [], min(left, 0.5))
                if ready and signal.SIGINT in os.read(readable[0], 64):
                    self._fire(INTERRUPTED)
            else:
                self._done.wait(min(left, 0.5))
