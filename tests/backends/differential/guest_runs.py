"""One differential guest on one backend: skipped with the reason where the backend cannot
run here, else the finished run (checked to have ended well) and its machine; and the runs
the differential tests compare (EVERY_RUN: the software CPU, KVM in both recording modes)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from vlbr.backends.base import KVM_RECORDING_MODES, MachineConfig, RunResult
from vlbr.backends.registry import make_backend
from vlbr.guest.build import build_guest
from vlbr.guest.conformance import machine_for


EVERY_RUN = [pytest.param("software", {}, id="software")] + [
    pytest.param("kvm", {"kvm_recording": mode}, id=f"kvm-{mode}") for mode in KVM_RECORDING_MODES]


def run_guest(backend: str, source: Path, lbr_ctl: int | None = None,
              **machine_changes) -> tuple[RunResult, MachineConfig]:
    """lbr_ctl: the guest's vlbr_lbr_ctl (as `vlbr run --lbr-ctl`)."""
    b = make_backend(backend)
    if b.unavailable_reason() is not None:
        pytest.skip(f"{backend}: {b.unavailable_reason()}")
    machine = replace(machine_for(backend), **machine_changes)
    image = build_guest(source)
    if lbr_ctl is not None:
        image = image.with_u64("vlbr_lbr_ctl", lbr_ctl)
    result = b.run(image, machine)
    assert result.ok, result.stops
    return result, machine


def guest_lines(backend: str, text: str, tmp_path: Path, **machine_changes) -> list[str]:
    """The console lines of guest source `text` (written under tmp_path) on `backend`."""
    source = tmp_path / "guest.c"
    source.write_text(text)
    return run_guest(backend, source, **machine_changes)[0].lines()
