"""KvmQuirks: the KVM backend's workarounds follow what the probes measured, not the machine.

On the machines of this project (kvm_pvm) KVM rewrites CPUID leaves 1, 7 and 0xD after
KVM_SET_CPUID2 and fails INT n (../shared/docs/kvm-on-these-machines.md); a KVM without a
quirk must run the guest unpatched."""

from __future__ import annotations

import pytest

from vlbr.backends.kvm import probe, quirks as q
from vlbr.backends.kvm.backend import KvmBackend
from vlbr.backends.kvm.machine import create_machine
from vlbr.guest.build import build_guest
from vlbr.guest.conformance import machine_for
from vlbr.host.kvm import Kvm

pytestmark = pytest.mark.skipif(KvmBackend().unavailable_reason() is not None,
                                reason=f"kvm: {KvmBackend().unavailable_reason()}")

CPUID7 = ('#include "runtime.h"\nint guest_main(int c, int n) {\n'
          '  return (cpuid(7, 0).edx >> 19) & 1; }\n')


def test_no_quirks_no_patches_and_every_quirk_its_patch():
    assert q.KvmQuirks.none().patches() == {}
    assert q.KvmQuirks.none().active() == []
    everything = q.KvmQuirks().patches()
    assert set(q.CPUID_PATCH) | set(q.TRAP_PATCHES) == set(everything)


def test_probes_run_unpatched_guests():
    # The INT n probe used to run a patched image (INT -> OUT 0xF6) and reported "runs in
    # KVM"; probes now see the bytes they encode.
    image = probe._image(probe.Instruction.create_u32(probe.Code.INT_IMM8, 0x20), *probe._exit())
    with Kvm() as kvm:
        vm, memory, sites, (vcpu,) = create_machine(kvm, image, probe._guest_table(kvm), 1)
        try:
            at = image.load_address
            assert memory[at:at + 2] == b"\xcd\x20" and not sites.cpuid and not sites.traps
        finally:
            vcpu.close()
            vm.close()


def test_quirks_are_what_the_probes_measured():
    with Kvm() as kvm:
        measured = {name: not p.ok for name, p in probe.quirk_probes(kvm).items()}
    assert q.probe_quirks() == q.KvmQuirks(**measured)


def test_cpuid_is_answered_by_vlbr_only_with_the_quirk(tmp_path, monkeypatch):
    # With cpuid_rewritten the guest sees the machine table's CPUID.7.0:EDX[19] (Arch LBR);
    # without the workaround KVM answers, and here KVM forces that bit to the host's value.
    src = tmp_path / "cpuid7.c"
    src.write_text(CPUID7)
    image = build_guest(src)
    found = q.probe_quirks()
    with_workaround = KvmBackend().run(image, machine_for("kvm"))
    assert with_workaround.exit_status == [1]  # vlbr offers Arch LBR
    monkeypatch.setattr("vlbr.backends.kvm.backend.probe_quirks",
                        lambda path: q.KvmQuirks(**{**found.__dict__, "cpuid_rewritten": False}))
    from_kvm = KvmBackend().run(image, machine_for("kvm"))
    assert from_kvm.stats["quirks"] == ",".join(
        n for n in found.active() if n != "cpuid_rewritten")
    assert from_kvm.exit_status == [0 if found.cpuid_rewritten else 1]
