"""The KVM system object (/dev/kvm) and the linux/kvm.h structs and ioctl numbers vlbr uses.

Struct and field names follow /usr/include/linux/kvm.h and asm/kvm.h (x86_64) so a reader can
check each layout against the header; `backends/kvm` builds its Vm and Vcpu objects on these.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
from ctypes import c_uint8 as u8, c_uint16 as u16, c_uint32 as u32, c_uint64 as u64

from vlbr.arch.cpuid import CpuidEntry, CpuidTable, Registers
from vlbr.errors import VlbrError

KVM_PATH = "/dev/kvm"
KVM_API_VERSION = 12

# --- ioctl numbers (asm-generic/ioctl.h: dir<<30 | size<<16 | type<<8 | nr) ---------------------
_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2
KVMIO = 0xAE


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (KVMIO << 8) | nr


def _IO(nr: int) -> int:
    return _ioc(_IOC_NONE, nr, 0)


def _IOR(nr: int, struct: type) -> int:
    return _ioc(_IOC_READ, nr, ctypes.sizeof(struct))


def _IOW(nr: int, struct: type) -> int:
    return _ioc(_IOC_WRITE, nr, ctypes.sizeof(struct))


def _IOWR(nr: int, struct: type) -> int:
    return _ioc(_IOC_READ | _IOC_WRITE, nr, ctypes.sizeof(struct))


# --- capabilities, exit reasons, flags ----------------------------------------------------------
KVM_CAP_EXT_CPUID = 7
KVM_CAP_SET_TSS_ADDR = 4
KVM_CAP_SET_GUEST_DEBUG = 23
KVM_CAP_XSAVE = 55
KVM_CAP_XCRS = 56
KVM_CAP_SYNC_REGS = 74
KVM_CAP_GET_MSR_FEATURES = 153
KVM_CAP_X86_USER_SPACE_MSR = 188
KVM_CAP_X86_MSR_FILTER = 189
KVM_CAP_SET_GUEST_DEBUG2 = 195
KVM_CAP_XSAVE2 = 208
KVM_CAP_PMU_CAPABILITY = 212

KVM_EXIT_UNKNOWN = 0
KVM_EXIT_EXCEPTION = 1
KVM_EXIT_IO = 2
KVM_EXIT_DEBUG = 4
KVM_EXIT_HLT = 5
KVM_EXIT_MMIO = 6
KVM_EXIT_SHUTDOWN = 8
KVM_EXIT_FAIL_ENTRY = 9
KVM_EXIT_INTR = 10
KVM_EXIT_INTERNAL_ERROR = 17
KVM_EXIT_SYSTEM_EVENT = 24
KVM_EXIT_X86_RDMSR = 29
KVM_EXIT_X86_WRMSR = 30
EXIT_NAMES = {v: k for k, v in globals().items() if k.startswith("KVM_EXIT_")}

KVM_EXIT_IO_IN = 0
KVM_EXIT_IO_OUT = 1

KVM_MSR_EXIT_REASON_INVAL = 1 << 0
KVM_MSR_EXIT_REASON_UNKNOWN = 1 << 1
KVM_MSR_EXIT_REASON_FILTER = 1 << 2

KVM_MSR_FILTER_READ = 1 << 0
KVM_MSR_FILTER_WRITE = 1 << 1
KVM_MSR_FILTER_DEFAULT_ALLOW = 0
KVM_MSR_FILTER_DEFAULT_DENY = 1
KVM_MSR_FILTER_MAX_RANGES = 16
KVM_MSR_FILTER_MAX_BITMAP_SIZE = 0x600  # bytes per range (KVM rejects larger)

KVM_GUESTDBG_ENABLE = 0x00000001
KVM_GUESTDBG_SINGLESTEP = 0x00000002
KVM_GUESTDBG_USE_SW_BP = 0x00010000
KVM_GUESTDBG_USE_HW_BP = 0x00020000
KVM_GUESTDBG_INJECT_DB = 0x00040000

KVM_SYNC_X86_REGS = 1 << 0
KVM_SYNC_X86_SREGS = 1 << 1
KVM_SYNC_X86_EVENTS = 1 << 2

KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1 << 0  # (sic, as spelled in asm/kvm.h)
KVM_MAX_CPUID_ENTRIES = 256  # large enough; KVM answers E2BIG if not


# --- structs (linux/kvm.h, asm/kvm.h) -----------------------------------------------------------
class kvm_userspace_memory_region(ctypes.Structure):
    _fields_ = [("slot", u32), ("flags", u32), ("guest_phys_addr", u64),
                ("memory_size", u64), ("userspace_addr", u64)]


class kvm_regs(ctypes.Structure):
    _fields_ = [(name, u64) for name in (
        "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags")]


class kvm_segment(ctypes.Structure):
    _fields_ = [("base", u64), ("limit", u32), ("selector", u16), ("type", u8),
                ("present", u8), ("dpl", u8), ("db", u8), ("s", u8), ("l", u8), ("g", u8),
                ("avl", u8), ("unusable", u8), ("padding", u8)]


class kvm_dtable(ctypes.Structure):
    _fields_ = [("base", u64), ("limit", u16), ("padding", u16 * 3)]


KVM_NR_INTERRUPTS = 256


class kvm_sregs(ctypes.Structure):
    _fields_ = [("cs", kvm_segment), ("ds", kvm_segment), ("es", kvm_segment),
                ("fs", kvm_segment), ("gs", kvm_segment), ("ss", kvm_segment),
                ("tr", kvm_segment), ("ldt", kvm_segment),
                ("gdt", kvm_dtable), ("idt", kvm_dtable),
                ("cr0", u64), ("cr2", u64), ("cr3", u64), ("cr4", u64), ("cr8", u64),
                ("efer", u64), ("apic_base", u64),
                ("interrupt_bitmap", u64 * ((KVM_NR_INTERRUPTS + 63) // 64))]


class _kvm_vcpu_events_exception(ctypes.Structure):
    _fields_ = [("injected", u8), ("nr", u8), ("has_error_code", u8), ("pending", u8),
                ("error_code", u32)]


class _kvm_vcpu_events_interrupt(ctypes.Structure):
    _fields_ = [("injected", u8), ("nr", u8), ("soft", u8), ("shadow", u8)]


class _kvm_vcpu_events_nmi(ctypes.Structure):
    _fields_ = [("injected", u8), ("pending", u8), ("masked", u8), ("pad", u8)]


class _kvm_vcpu_events_smi(ctypes.Structure):
    _fields_ = [("smm", u8), ("pending", u8), ("smm_inside_nmi", u8), ("latched_init", u8)]


class kvm_vcpu_events(ctypes.Structure):
    _fields_ = [("exception", _kvm_vcpu_events_exception),
                ("interrupt", _kvm_vcpu_events_interrupt), ("nmi", _kvm_vcpu_events_nmi),
                ("sipi_vector", u32), ("flags", u32), ("smi", _kvm_vcpu_events_smi),
                ("triple_fault_pending", u8), ("reserved", u8 * 26),
                ("exception_has_payload", u8), ("exception_payload", u64)]


class kvm_sync_regs(ctypes.Structure):
    _fields_ = [("regs", kvm_regs), ("sregs", kvm_sregs), ("events", kvm_vcpu_events)]


class kvm_cpuid_entry2(ctypes.Structure):
    _fields_ = [("function", u32), ("index", u32), ("flags", u32), ("eax", u32), ("ebx", u32),
                ("ecx", u32), ("edx", u32), ("padding", u32 * 3)]


def kvm_cpuid2(nent: int) -> ctypes.Structure:
    """struct kvm_cpuid2 with room for nent entries (the header has a flexible array)."""

    class _kvm_cpuid2(ctypes.Structure):
        _fields_ = [("nent", u32), ("padding", u32), ("entries", kvm_cpuid_entry2 * nent)]

    return _kvm_cpuid2(nent=nent)


class kvm_cpuid2_header(ctypes.Structure):
    _fields_ = [("nent", u32), ("padding", u32)]


class kvm_msr_list_header(ctypes.Structure):
    _fields_ = [("nmsrs", u32)]


def kvm_msr_list(n: int) -> ctypes.Structure:
    class _kvm_msr_list(ctypes.Structure):
        _fields_ = [("nmsrs", u32), ("indices", u32 * n)]

    return _kvm_msr_list(nmsrs=n)


class kvm_msr_entry(ctypes.Structure):
    _fields_ = [("index", u32), ("reserved", u32), ("data", u64)]


class kvm_msrs_header(ctypes.Structure):
    _fields_ = [("nmsrs", u32), ("pad", u32)]


def kvm_msrs(n: int) -> ctypes.Structure:
    class _kvm_msrs(ctypes.Structure):
        _fields_ = [("nmsrs", u32), ("pad", u32), ("entries", kvm_msr_entry * n)]

    return _kvm_msrs(nmsrs=n)


KVM_MAX_XCRS = 16


class kvm_xcr(ctypes.Structure):
    _fields_ = [("xcr", u32), ("reserved", u32), ("value", u64)]


class kvm_xcrs(ctypes.Structure):
    _fields_ = [("nr_xcrs", u32), ("flags", u32), ("xcrs", kvm_xcr * KVM_MAX_XCRS),
                ("padding", u64 * 16)]


class kvm_xsave(ctypes.Structure):
    _fields_ = [("region", u32 * 1024)]  # 4 KiB; KVM_GET_XSAVE2 may need more (KVM_CAP_XSAVE2)


class kvm_enable_cap(ctypes.Structure):
    _fields_ = [("cap", u32), ("flags", u32), ("args", u64 * 4), ("pad", u8 * 64)]


class kvm_msr_filter_range(ctypes.Structure):
    _fields_ = [("flags", u32), ("nmsrs", u32), ("base", u32), ("bitmap", u64)]


class kvm_msr_filter(ctypes.Structure):
    _fields_ = [("flags", u32), ("ranges", kvm_msr_filter_range * KVM_MSR_FILTER_MAX_RANGES)]


class kvm_guest_debug_arch(ctypes.Structure):
    _fields_ = [("debugreg", u64 * 8)]


class kvm_guest_debug(ctypes.Structure):
    _fields_ = [("control", u32), ("pad", u32), ("arch", kvm_guest_debug_arch)]


class kvm_debug_exit_arch(ctypes.Structure):
    _fields_ = [("exception", u32), ("pad", u32), ("pc", u64), ("dr6", u64), ("dr7", u64)]


class kvm_run_io(ctypes.Structure):
    _fields_ = [("direction", u8), ("size", u8), ("port", u16), ("count", u32),
                ("data_offset", u64)]


class kvm_run_msr(ctypes.Structure):
    _fields_ = [("error", u8), ("pad", u8 * 7), ("reason", u32), ("index", u32), ("data", u64)]


class kvm_run_internal(ctypes.Structure):
    _fields_ = [("suberror", u32), ("ndata", u32), ("data", u64 * 16)]


class kvm_run_fail_entry(ctypes.Structure):
    _fields_ = [("hardware_entry_failure_reason", u64), ("cpu", u32)]


class kvm_run_ex(ctypes.Structure):
    _fields_ = [("exception", u32), ("error_code", u32)]


class kvm_run_system_event(ctypes.Structure):
    _fields_ = [("type", u32), ("ndata", u32), ("data", u64 * 16)]


class kvm_run_exit(ctypes.Union):
    _fields_ = [("fail_entry", kvm_run_fail_entry), ("ex", kvm_run_ex), ("io", kvm_run_io),
                ("debug", kvm_debug_exit_arch), ("internal", kvm_run_internal),
                ("msr", kvm_run_msr), ("system_event", kvm_run_system_event),
                ("padding", ctypes.c_char * 256)]


SYNC_REGS_SIZE_BYTES = 2048


class kvm_run_s(ctypes.Union):
    _fields_ = [("regs", kvm_sync_regs), ("padding", ctypes.c_char * SYNC_REGS_SIZE_BYTES)]


class kvm_run(ctypes.Structure):
    _anonymous_ = ("u",)
    _fields_ = [("request_interrupt_window", u8), ("immediate_exit", u8), ("padding1", u8 * 6),
                ("exit_reason", u32), ("ready_for_interrupt_injection", u8), ("if_flag", u8),
                ("flags", u16), ("cr8", u64), ("apic_base", u64), ("u", kvm_run_exit),
                ("kvm_valid_regs", u64), ("kvm_dirty_regs", u64), ("s", kvm_run_s)]


# --- ioctl request numbers ----------------------------------------------------------------------
KVM_GET_API_VERSION = _IO(0x00)
KVM_CREATE_VM = _IO(0x01)
KVM_GET_MSR_INDEX_LIST = _IOWR(0x02, kvm_msr_list_header)
KVM_CHECK_EXTENSION = _IO(0x03)
KVM_GET_VCPU_MMAP_SIZE = _IO(0x04)
KVM_GET_SUPPORTED_CPUID = _IOWR(0x05, kvm_cpuid2_header)
KVM_GET_MSR_FEATURE_INDEX_LIST = _IOWR(0x0A, kvm_msr_list_header)
KVM_CREATE_VCPU = _IO(0x41)
KVM_SET_USER_MEMORY_REGION = _IOW(0x46, kvm_userspace_memory_region)
KVM_SET_TSS_ADDR = _IO(0x47)
KVM_RUN = _IO(0x80)
KVM_GET_REGS = _IOR(0x81, kvm_regs)
KVM_SET_REGS = _IOW(0x82, kvm_regs)
KVM_GET_SREGS = _IOR(0x83, kvm_sregs)
KVM_SET_SREGS = _IOW(0x84, kvm_sregs)
KVM_GET_MSRS = _IOWR(0x88, kvm_msrs_header)
KVM_SET_MSRS = _IOW(0x89, kvm_msrs_header)
KVM_SET_CPUID2 = _IOW(0x90, kvm_cpuid2_header)
KVM_GET_CPUID2 = _IOWR(0x91, kvm_cpuid2_header)
KVM_SET_GUEST_DEBUG = _IOW(0x9B, kvm_guest_debug)
KVM_GET_VCPU_EVENTS = _IOR(0x9F, kvm_vcpu_events)
KVM_SET_VCPU_EVENTS = _IOW(0xA0, kvm_vcpu_events)
KVM_ENABLE_CAP = _IOW(0xA3, kvm_enable_cap)
KVM_GET_XSAVE = _IOR(0xA4, kvm_xsave)
KVM_SET_XSAVE = _IOW(0xA5, kvm_xsave)
KVM_GET_XCRS = _IOR(0xA6, kvm_xcrs)
KVM_SET_XCRS = _IOW(0xA7, kvm_xcrs)
KVM_X86_SET_MSR_FILTER = _IOW(0xC6, kvm_msr_filter)
KVM_GET_XSAVE2 = _IOR(0xCF, kvm_xsave)

IOCTL_NAMES = {v: k for k, v in list(globals().items())
               if k.startswith("KVM_") and k.isupper() and isinstance(v, int) and v > 0xFFFF}


class KvmError(VlbrError):
    """A KVM ioctl failed; names the ioctl and errno (e.g. 'KVM_SET_CPUID2: EINVAL')."""

    def __init__(self, what: str, err: int, detail: str = ""):
        self.what = what
        self.errno = err
        name = errno.errorcode.get(err, str(err))
        extra = f" ({detail})" if detail else ""
        super().__init__(f"{what}: {name} {os.strerror(err)}{extra}")

    @property
    def errno_name(self) -> str:
        return errno.errorcode.get(self.errno, str(self.errno))


def ioctl(fd: int, request: int, arg=0, name: str | None = None) -> int:
    """fcntl.ioctl that raises KvmError naming the request instead of a bare OSError."""
    try:
        if isinstance(arg, int):
            return fcntl.ioctl(fd, request, arg)
        return fcntl.ioctl(fd, request, arg, True)
    except OSError as err:
        raise KvmError(name or IOCTL_NAMES.get(request, hex(request)), err.errno) from None


# --- the system object --------------------------------------------------------------------------
class FileDescriptor:
    """Owns one file descriptor (/dev/kvm, a VM or a vCPU); closes it once."""

    fd: int = -1

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


class Kvm(FileDescriptor):
    """An open /dev/kvm: the system ioctls (like kvm-ioctls' `Kvm`)."""

    def __init__(self, path: str = KVM_PATH):
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as err:
            raise KvmError(f"open {path}", err.errno) from None
        self.path = path

    @staticmethod
    def unavailable_reason(path: str = KVM_PATH) -> str | None:
        """None when /dev/kvm opens with the expected API version, else why not."""
        try:
            with Kvm(path) as kvm:
                version = kvm.api_version()
        except KvmError as err:
            return str(err)
        if version != KVM_API_VERSION:
            return f"KVM_GET_API_VERSION: {version}, vlbr needs {KVM_API_VERSION}"
        return None

    def api_version(self) -> int:
        return ioctl(self.fd, KVM_GET_API_VERSION)

    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION: 0 when absent, else a capability-specific positive value."""
        return ioctl(self.fd, KVM_CHECK_EXTENSION, cap)

    def vcpu_mmap_size(self) -> int:
        return ioctl(self.fd, KVM_GET_VCPU_MMAP_SIZE)

    def supported_cpuid_entries(self, max_entries: int = KVM_MAX_CPUID_ENTRIES
                                ) -> list[kvm_cpuid_entry2]:
        """KVM_GET_SUPPORTED_CPUID as raw kvm_cpuid_entry2 rows (flags included)."""
        return self._cpuid_ioctl(KVM_GET_SUPPORTED_CPUID, max_entries)

    def supported_cpuid(self) -> CpuidTable:
        """What this KVM can expose to a guest (KVM_GET_SUPPORTED_CPUID) as a CpuidTable."""
        return cpuid_table(self.supported_cpuid_entries())

    def _cpuid_ioctl(self, request: int, max_entries: int) -> list[kvm_cpuid_entry2]:
        while True:
            buf = kvm_cpuid2(max_entries)
            try:
                ioctl(self.fd, request, buf)
            except KvmError as err:
                if err.errno == errno.E2BIG and max_entries < 4096:
                    max_entries *= 2
                    continue
                raise
            return [buf.entries[i] for i in range(buf.nent)]

    def msr_index_list(self) -> list[int]:
        """KVM_GET_MSR_INDEX_LIST: MSRs KVM saves and restores for a guest."""
        return self._msr_list(KVM_GET_MSR_INDEX_LIST)

    def msr_feature_index_list(self) -> list[int]:
        """KVM_GET_MSR_FEATURE_INDEX_LIST: feature MSRs (needs KVM_CAP_GET_MSR_FEATURES)."""
        return self._msr_list(KVM_GET_MSR_FEATURE_INDEX_LIST)

    def _msr_list(self, request: int) -> list[int]:
        probe = kvm_msr_list_header(nmsrs=0)
        try:
            ioctl(self.fd, request, probe)  # E2BIG, with nmsrs set to the count needed
        except KvmError as err:
            if err.errno != errno.E2BIG:
                raise
        buf = kvm_msr_list(probe.nmsrs)
        ioctl(self.fd, request, buf)
        return list(buf.indices[: buf.nmsrs])

    def create_vm(self) -> int:
        """KVM_CREATE_VM: a new VM file descriptor (backends.kvm.Vm wraps it)."""
        return ioctl(self.fd, KVM_CREATE_VM, 0)


def cpuid_table(entries) -> CpuidTable:
    """kvm_cpuid_entry2 rows -> CpuidTable."""
    return CpuidTable(CpuidEntry(e.function, e.index, Registers(e.eax, e.ebx, e.ecx, e.edx))
                      for e in entries)


def cpuid_struct(table: CpuidTable) -> ctypes.Structure:
    """CpuidTable -> struct kvm_cpuid2 for KVM_SET_CPUID2 (indexed leaves flagged)."""
    rows = table.entries()
    buf = kvm_cpuid2(len(rows))
    for slot, row in zip(buf.entries, rows):
        slot.function, slot.index = row.function, row.index
        slot.flags = KVM_CPUID_FLAG_SIGNIFCANT_INDEX if row.indexed else 0
        slot.eax, slot.ebx, slot.ecx, slot.edx = row.regs.as_tuple()
    return buf
