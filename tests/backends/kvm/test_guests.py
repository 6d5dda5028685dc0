"""The project's C guests (vlbr.guest, built with gcc) on the KVM backend."""

from __future__ import annotations

import shutil

import pytest

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed")


def test_conformance_suite_passes_on_kvm():
    from vlbr.guest.conformance import run_conformance
    report = run_conformance("kvm")
    failed = [(r.name, r.detail) for r in report.results if r.status == "fail"]
    assert failed == []
    assert report.passed >= 30  # issue 5: at least 30 checks


def test_hello_guest_records_its_known_loop():
    from vlbr.backends.kvm import KvmBackend
    from vlbr.guest.build import build_guest
    from vlbr.guest.conformance import machine_for
    image = build_guest("hello").with_u64("vlbr_lbr_ctl", 0x7F0007)
    result = KvmBackend().run(image, machine_for("kvm"))
    assert result.exit_status == [0]
    assert "newest record" in result.console[0]
    froms = {f for f, _, _ in result.vcpus[0].records() if f}
    assert froms and all(image.contains(f) for f in froms)
