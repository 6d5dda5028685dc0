"""vlbr.host.kvm against the kernel headers (via gcc) and against KVM's own answers on /dev/kvm."""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import subprocess

import pytest

from vlbr.host import kvm as k

needs_kvm = pytest.mark.skipif(k.Kvm.unavailable_reason() is not None,
                               reason=f"/dev/kvm unusable: {k.Kvm.unavailable_reason()}")

# Struct sizes/offsets and ioctl numbers, as the C compiler computes them from linux/kvm.h.
_C_CHECKS = {
    "sizeof(struct kvm_run)": ctypes.sizeof(k.kvm_run),
    "offsetof(struct kvm_run, exit_reason)": k.kvm_run.exit_reason.offset,
    "offsetof(struct kvm_run, msr)": k.kvm_run.msr.offset,
    "offsetof(struct kvm_run, kvm_valid_regs)": k.kvm_run.kvm_valid_regs.offset,
    "offsetof(struct kvm_run, s)": k.kvm_run.s.offset,
    "sizeof(struct kvm_regs)": ctypes.sizeof(k.kvm_regs),
    "sizeof(struct kvm_sregs)": ctypes.sizeof(k.kvm_sregs),
    "sizeof(struct kvm_segment)": ctypes.sizeof(k.kvm_segment),
    "sizeof(struct kvm_vcpu_events)": ctypes.sizeof(k.kvm_vcpu_events),
    "offsetof(struct kvm_vcpu_events, exception_payload)":
        k.kvm_vcpu_events.exception_payload.offset,
    "sizeof(struct kvm_sync_regs)": ctypes.sizeof(k.kvm_sync_regs),
    "sizeof(struct kvm_cpuid_entry2)": ctypes.sizeof(k.kvm_cpuid_entry2),
    "sizeof(struct kvm_xcrs)": ctypes.sizeof(k.kvm_xcrs),
    "sizeof(struct kvm_enable_cap)": ctypes.sizeof(k.kvm_enable_cap),
    "sizeof(struct kvm_msr_filter)": ctypes.sizeof(k.kvm_msr_filter),
    "sizeof(struct kvm_msr_filter_range)": ctypes.sizeof(k.kvm_msr_filter_range),
    "sizeof(struct kvm_guest_debug)": ctypes.sizeof(k.kvm_guest_debug),
    "sizeof(struct kvm_userspace_memory_region)": ctypes.sizeof(k.kvm_userspace_memory_region),
    "sizeof(struct kvm_xsave)": ctypes.sizeof(k.kvm_xsave),
    **{name: getattr(k, name) for name in (
        "KVM_GET_API_VERSION", "KVM_CREATE_VM", "KVM_GET_MSR_INDEX_LIST", "KVM_CHECK_EXTENSION",
        "KVM_GET_SUPPORTED_CPUID", "KVM_CREATE_VCPU", "KVM_SET_USER_MEMORY_REGION", "KVM_RUN",
        "KVM_GET_REGS", "KVM_SET_REGS", "KVM_GET_SREGS", "KVM_SET_SREGS", "KVM_GET_MSRS",
        "KVM_SET_MSRS", "KVM_SET_CPUID2", "KVM_SET_GUEST_DEBUG", "KVM_GET_VCPU_EVENTS",
        "KVM_SET_VCPU_EVENTS", "KVM_ENABLE_CAP", "KVM_GET_XCRS", "KVM_SET_XCRS",
        "KVM_X86_SET_MSR_FILTER", "KVM_GET_XSAVE2", "KVM_GET_XSAVE", "KVM_SET_XSAVE", "KVM_CAP_X86_USER_SPACE_MSR",
        "KVM_CAP_SYNC_REGS", "KVM_EXIT_X86_RDMSR", "KVM_EXIT_DEBUG", "KVM_GUESTDBG_SINGLESTEP")},
}


@pytest.mark.skipif(shutil.which("gcc") is None or not os.path.exists("/usr/include/linux/kvm.h"),
                    reason="gcc or /usr/include/linux/kvm.h missing")
def test_layouts_and_ioctl_numbers_match_linux_kvm_h(tmp_path):
    lines = [f'printf("%llu\\n", (unsigned long long)({expr}));' for expr in _C_CHECKS]
    src = tmp_path / "k.c"
    src.write_text("#include <linux/kvm.h>\n#include <stddef.h>\n#include <stdio.h>\n"
                   "int main(void){" + "".join(lines) + "return 0;}\n")
    subprocess.run(["gcc", "-o", str(tmp_path / "k"), str(src)], check=True)
    out = subprocess.run([str(tmp_path / "k")], check=True, capture_output=True, text=True)
    from_c = dict(zip(_C_CHECKS, map(int, out.stdout.split())))
    assert from_c == _C_CHECKS


def _host_cpuid(leaf: int, subleaf: int = 0) -> tuple[int, int, int, int]:
    # The cpuid driver: pread at offset (subleaf << 32 | leaf) returns EAX..EDX.
    fd = os.open("/dev/cpu/0/cpuid", os.O_RDONLY)
    try:
        raw = os.pread(fd, 16, (subleaf << 32) | leaf)
    finally:
        os.close(fd)
    return tuple(int.from_bytes(raw[i:i + 4], "little") for i in range(0, 16, 4))


needs_cpu_cpuid = pytest.mark.skipif(not os.access("/dev/cpu/0/cpuid", os.R_OK),
                                     reason="/dev/cpu/0/cpuid not readable")


@needs_kvm
def test_api_version_is_12():
    # KVM_API_VERSION is 12 since Linux 2.6.22 (Documentation/virt/kvm/api.rst 4.1).
    with k.Kvm() as kvm:
        assert kvm.api_version() == 12


@needs_kvm
@needs_cpu_cpuid
def test_supported_cpuid_vendor_matches_the_host():
    # KVM passes the host vendor string through in leaf 0 (KVM's answer vs /dev/cpu/0/cpuid).
    _, ebx, ecx, edx = _host_cpuid(0)
    host_vendor = b"".join(r.to_bytes(4, "little") for r in (ebx, edx, ecx)).decode("latin-1")
    with k.Kvm() as kvm:
        table = kvm.supported_cpuid()
    assert table.vendor == host_vendor
    # KVM clamps leaf 0's EAX to min(host, what it knows) (arch/x86/kvm/cpuid.c).
    assert table.max_basic_leaf <= _host_cpuid(0)[0]


@needs_kvm
@needs_cpu_cpuid
def test_leaf_1c_is_zero_without_hardware_arch_lbr():
    # docs kvm-on-these-machines.md: "leaf 0x1C is all zero" on this host, which lacks
    # CPUID.7.0:EDX[19] (Arch LBR); KVM only reports 0x1C when the host has it.
    if _host_cpuid(7)[3] & (1 << 19):
        pytest.skip("host has Arch LBR: KVM may report leaf 0x1C")
    with k.Kvm() as kvm:
        table = kvm.supported_cpuid()
    assert table.regs(0x1C).as_tuple() == (0, 0, 0, 0)
    assert not table.regs(7).edx & (1 << 19)


@needs_kvm
def test_supported_cpuid_raw_rows_agree_with_the_table():
    with k.Kvm() as kvm:
        rows = kvm.supported_cpuid_entries()
        table = kvm.supported_cpuid()
    assert len(rows) == len(table) > 0
    for row in rows:
        assert table[(row.function, row.index)].as_tuple() == (row.eax, row.ebx, row.ecx, row.edx)
        # KVM flags leaf 0xD's subleaves as index-significant (arch/x86/kvm/cpuid.c).
        if row.function == 0xD:
            assert row.flags & k.KVM_CPUID_FLAG_SIGNIFCANT_INDEX


@needs_kvm
def test_cpuid_struct_round_trips_kvm_table():
    with k.Kvm() as kvm:
        table = kvm.supported_cpuid()
    buf = k.cpuid_struct(table)
    assert buf.nent == len(table)
    assert k.cpuid_table(buf.entries[: buf.nent]) == table


@needs_kvm
def test_msr_index_list_holds_msrs_kvm_always_saves():
    # arch/x86/kvm/x86.c msrs_to_save_base: MSR_STAR (0xC0000081) is in every
    # KVM's list; the list has no duplicates.
    with k.Kvm() as kvm:
        msrs = kvm.msr_index_list()
    assert len(msrs) == len(set(msrs))
    assert 0xC0000081 in msrs


@needs_kvm
def test_check_extension_of_an_unknown_cap_is_zero():
    with k.Kvm() as kvm:
        assert kvm.check_extension(0x7FFF_FFFF) == 0
        assert kvm.check_extension(k.KVM_CAP_EXT_CPUID) > 0


def test_missing_device_is_a_clear_error(tmp_path):
    with pytest.raises(k.KvmError) as info:
        k.Kvm(str(tmp_path / "nokvm"))
    assert info.value.errno == errno.ENOENT
    assert "ENOENT" in str(info.value) and "nokvm" in str(info.value)
    assert "ENOENT" in k.Kvm.unavailable_reason(str(tmp_path / "nokvm"))
