"""What commands that run guests share: the --timeout option, stop reasons, safe console text."""

from __future__ import annotations

import click

from vlbr.backends.base import DEFAULT_TIMEOUT, RunResult, StopReason

timeout_option = click.option(
    "--timeout", type=click.FloatRange(min=0, min_open=True), default=DEFAULT_TIMEOUT,
    show_default=True, metavar="SECONDS",
    help="wall-clock limit of each guest run; the run stops with reason 'timeout'")

_KEPT = frozenset("\n\t")


def escape_console(text: str) -> str:
    """Guest console bytes as text safe for a terminal: printable ASCII, newlines and tabs
    as they are, every other byte (escape sequences, NUL, CR, 8-bit) as \\xNN."""
    return "".join(c if c in _KEPT or " " <= c <= "~" else f"\\x{ord(c):02x}" for c in text)


def stop_text(result: RunResult, vcpu: int) -> str:
    """One vCPU's ending as a person reads it: 'exit status 0' or 'stopped: timeout: ...'."""
    stop = result.stops[vcpu]
    if stop.reason == StopReason.EXIT:
        return f"exit status {result.exit_status[vcpu]}"
    return f"stopped: {stop}"
