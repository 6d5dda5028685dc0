"""backends/registry: `auto` picks by capability, then by the speed measured here (issue:
recording at emulator speed - "--backend auto chooses by what the probe measured")."""

from __future__ import annotations

import json

import pytest

from vlbr.backends import registry
from vlbr_script import vlbr


class _Stub:
    def __init__(self, name, reason=None):
        self.name, self.reason = name, reason

    def unavailable_reason(self):
        return self.reason


@pytest.fixture
def fresh(monkeypatch):
    registry.auto_choice.cache_clear()
    yield monkeypatch
    registry.auto_choice.cache_clear()


def test_auto_takes_the_faster_available_backend(fresh):
    speeds = {"kvm": 0.8e6, "software": 40e6}
    fresh.setattr(registry, "make_backend", lambda n: _Stub(n))
    fresh.setattr(registry, "measured_speed", speeds.__getitem__)
    assert registry.auto_choice()[0] == "software"
    registry.auto_choice.cache_clear()
    speeds.update(kvm=2000e6)
    name, why = registry.auto_choice()
    assert name == "kvm" and "kvm 2000.0 M instructions/s" in why


def test_auto_never_takes_an_unavailable_backend(fresh):
    fresh.setattr(registry, "make_backend",
                  lambda n: _Stub(n, "no /dev/kvm" if n == "kvm" else None))
    fresh.setattr(registry, "measured_speed", lambda n: 1.0)
    name, why = registry.auto_choice()
    assert name == "software" and "kvm unavailable: no /dev/kvm" in why


def test_measured_speed_is_positive_on_each_backend_here():
    for name in registry.BACKEND_NAMES:
        if registry.make_backend(name).unavailable_reason() is None:
            assert registry.measured_speed(name) > 0


def test_vlbr_host_says_what_auto_picks_and_why():
    done = vlbr("host", "--json")
    if done.returncode == 1:
        pytest.skip("no KVM here: vlbr host has nothing to probe")
    doc = json.loads(done.stdout)
    assert doc["auto_backend"] in registry.BACKEND_NAMES
    assert "instructions/s" in doc["auto_reason"]


def test_vlbr_host_says_where_linux_runs_and_what_kvm_prevents():
    # Issue 11: QEMU -accel kvm on this nested KVM cannot boot Linux (measured there).
    done = vlbr("host", "--json")
    if done.returncode == 1:
        pytest.skip("no KVM here: vlbr host has nothing to probe")
    doc = json.loads(done.stdout)
    assert doc["linux_backend"] == "software" and "cmpxchg16b" in doc["linux_reason"]
