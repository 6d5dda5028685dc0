"""Vm and Vcpu: one object per KVM file descriptor, shaped like rust-vmm's kvm-ioctls."""

from __future__ import annotations

import ctypes
import errno
import mmap
from dataclasses import dataclass

from vlbr.arch.cpuid import CpuidTable
from vlbr.host import kvm as k
from vlbr.host.kvm import FileDescriptor, Kvm, KvmError, ioctl


@dataclass(frozen=True)
class VcpuExit:
    """Why KVM_RUN returned, decoded from kvm_run (kvm-ioctls' VcpuExit); `reason` is
    kvm_run.exit_reason (KVM_EXIT_INTR for an interrupted KVM_RUN)."""

    reason: int


@dataclass(frozen=True)
class IoOut(VcpuExit):
    port: int
    size: int
    data: bytes  # count * size bytes


@dataclass(frozen=True)
class IoIn(VcpuExit):
    port: int
    size: int
    count: int  # answer with Vcpu.set_io_data(count * size bytes)


@dataclass(frozen=True)
class MsrRead(VcpuExit):
    index: int  # answer with Vcpu.complete_msr(value), or complete_msr(None) for #GP


@dataclass(frozen=True)
class MsrWrite(VcpuExit):
    index: int
    data: int  # acknowledge with Vcpu.complete_msr(0), or complete_msr(None) for #GP


@dataclass(frozen=True)
class InternalError(VcpuExit):
    suberror: int


_PLAIN_EXITS = {r: VcpuExit(r) for r in (k.KVM_EXIT_DEBUG, k.KVM_EXIT_HLT, k.KVM_EXIT_INTR,
                                         k.KVM_EXIT_SHUTDOWN)}


class Vm(FileDescriptor):
    """A KVM VM fd: memory slots, vCPUs, VM capabilities and the MSR filter."""

    def __init__(self, kvm: Kvm):
        self.kvm = kvm
        self.fd = kvm.create_vm()
        self._memory: list[mmap.mmap] = []
        self._filter_bitmaps: list[ctypes.Array] = []  # KVM copies them; kept for clarity

    def set_user_memory_region(self, slot: int, guest_phys_addr: int, memory: mmap.mmap,
                               flags: int = 0) -> None:
        address = ctypes.addressof(ctypes.c_char.from_buffer(memory))
        region = k.kvm_userspace_memory_region(slot=slot, flags=flags,
                                               guest_phys_addr=guest_phys_addr,
                                               memory_size=len(memory), userspace_addr=address)
        ioctl(self.fd, k.KVM_SET_USER_MEMORY_REGION, region)
        self._memory.append(memory)

    def check_extension(self, cap: int) -> int:
        return ioctl(self.fd, k.KVM_CHECK_EXTENSION, cap)

    def enable_cap(self, cap: int, *args: int, flags: int = 0) -> None:
        req = k.kvm_enable_cap(cap=cap, flags=flags)
        for i, value in enumerate(args):
            req.args[i] = value
        ioctl(self.fd, k.KVM_ENABLE_CAP, req, name=f"KVM_ENABLE_CAP({cap})")

    def set_msr_filter(self, denied: set[int], default_deny: bool = False) -> None:
        """KVM_X86_SET_MSR_FILTER denying reads and writes of exactly `denied` (else allowed).

        One range per 0x2000-MSR block that holds a denied MSR; a clear bitmap bit denies."""
        filt = k.kvm_msr_filter(flags=k.KVM_MSR_FILTER_DEFAULT_DENY if default_deny else 0)
        blocks = sorted({msr & ~0x1FFF for msr in denied})
        if len(blocks) > k.KVM_MSR_FILTER_MAX_RANGES:
            raise ValueError(f"{len(blocks)} MSR blocks exceed KVM's {k.KVM_MSR_FILTER_MAX_RANGES}")
        for slot, base in zip(filt.ranges, blocks):
            bitmap = (ctypes.c_uint8 * (0x2000 // 8))(*([0xFF] * (0x2000 // 8)))
            for msr in denied:
                if msr & ~0x1FFF == base:
                    bitmap[(msr - base) // 8] &= ~(1 << ((msr - base) % 8)) & 0xFF
            self._filter_bitmaps.append(bitmap)
            slot.flags = k.KVM_MSR_FILTER_READ | k.KVM_MSR_FILTER_WRITE
            slot.nmsrs, slot.base, slot.bitmap = 0x2000, base, ctypes.addressof(bitmap)
        ioctl(self.fd, k.KVM_X86_SET_MSR_FILTER, filt)

    def create_vcpu(self, index: int) -> "Vcpu":
        return Vcpu(self, ioctl(self.fd, k.KVM_CREATE_VCPU, index), index)

    def close(self) -> None:
        super().close()


class Vcpu(FileDescriptor):
    """A KVM vCPU fd with its mmap'ed struct kvm_run."""

    def __init__(self, vm: Vm, fd: int, index: int):
        self.vm, self.fd, self.index = vm, fd, index
        size = vm.kvm.vcpu_mmap_size()
        self._run_map = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.run_struct = k.kvm_run.from_buffer(self._run_map)

    def close(self) -> None:
        if self.fd >= 0:
            self.run_struct = None
            try:
                self._run_map.close()
            except BufferError:  # a caller still holds a view of kvm_run; GC unmaps it later
                pass
        super().close()

    # --- running --------------------------------------------------------------------------
    def run(self) -> VcpuExit:
        """KVM_RUN until the next exit (EINTR -> KVM_EXIT_INTR)."""
        try:
            ioctl(self.fd, k.KVM_RUN)
        except KvmError as err:
            if err.errno in (errno.EINTR, errno.EAGAIN):
                return _PLAIN_EXITS[k.KVM_EXIT_INTR]
            raise
        return self._exit(self.run_struct.exit_reason)

    def _exit(self, reason: int) -> VcpuExit:
        plain = _PLAIN_EXITS.get(reason)
        if plain is not None:
            return plain
        run = self.run_struct
        if reason == k.KVM_EXIT_IO:
            io = run.io
            if io.direction == k.KVM_EXIT_IO_IN:
                return IoIn(reason, io.port, io.size, io.count)
            start = io.data_offset
            return IoOut(reason, io.port, io.size,
                         bytes(self._run_map[start:start + io.size * io.count]))
        if reason == k.KVM_EXIT_X86_RDMSR:
            return MsrRead(reason, run.msr.index)
        if reason == k.KVM_EXIT_X86_WRMSR:
            return MsrWrite(reason, run.msr.index, run.msr.data)
        if reason == k.KVM_EXIT_INTERNAL_ERROR:
            return InternalError(reason, run.internal.suberror)
        return VcpuExit(reason)

    def complete_msr(self, value: int | None) -> None:
        """Finish an MSR exit: the value read (0 for a write), or None for #GP(0)."""
        msr = self.run_struct.msr
        msr.error = int(value is None)
        if value is not None:
            msr.data = value

    def set_io_data(self, data: bytes) -> None:
        start = self.run_struct.io.data_offset
        self._run_map[start:start + len(data)] = data

    # --- registers ------------------------------------------------------------------------
    def get_regs(self) -> k.kvm_regs:
        regs = k.kvm_regs()
        ioctl(self.fd, k.KVM_GET_REGS, regs)
        return regs

    def set_regs(self, regs: k.kvm_regs) -> None:
        ioctl(self.fd, k.KVM_SET_REGS, regs)

    def get_sregs(self) -> k.kvm_sregs:
        sregs = k.kvm_sregs()
        ioctl(self.fd, k.KVM_GET_SREGS, sregs)
        return sregs

    def set_sregs(self, sregs: k.kvm_sregs) -> None:
        ioctl(self.fd, k.KVM_SET_SREGS, sregs)

    def get_vcpu_events(self) -> k.kvm_vcpu_events:
        events = k.kvm_vcpu_events()
        ioctl(self.fd, k.KVM_GET_VCPU_EVENTS, events)
        return events

    def set_vcpu_events(self, events: k.kvm_vcpu_events) -> None:
        ioctl(self.fd, k.KVM_SET_VCPU_EVENTS, events)

    def get_msrs(self, indices: list[int]) -> dict[int, int]:
        """KVM_GET_MSRS; MSRs KVM does not know are missing from the answer."""
        buf = k.kvm_msrs(len(indices))
        for entry, index in zip(buf.entries, indices):
            entry.index = index
        done = ioctl(self.fd, k.KVM_GET_MSRS, buf)
        return {buf.entries[i].index: buf.entries[i].data for i in range(done)}

    def set_msrs(self, values: dict[int, int]) -> int:
        """KVM_SET_MSRS; returns how many were set (it stops at the first refused one)."""
        buf = k.kvm_msrs(len(values))
        for entry, (index, data) in zip(buf.entries, values.items()):
            entry.index, entry.data = index, data
        return ioctl(self.fd, k.KVM_SET_MSRS, buf)

    def set_cpuid2(self, table: CpuidTable) -> None:
        ioctl(self.fd, k.KVM_SET_CPUID2, k.cpuid_struct(table))

    def get_cpuid2(self) -> CpuidTable:
        """KVM_GET_CPUID2: the CPUID this vCPU runs with (as KVM kept it)."""
        got = k.kvm_cpuid2(k.KVM_MAX_CPUID_ENTRIES)
        ioctl(self.fd, k.KVM_GET_CPUID2, got)
        return k.cpuid_table(got.entries[:got.nent])

    def get_xcrs(self) -> dict[int, int]:
        xcrs = k.kvm_xcrs()
        ioctl(self.fd, k.KVM_GET_XCRS, xcrs)
        return {xcrs.xcrs[i].xcr: xcrs.xcrs[i].value for i in range(xcrs.nr_xcrs)}

    def set_xcrs(self, values: dict[int, int]) -> None:
        xcrs = k.kvm_xcrs(nr_xcrs=len(values))
        for slot, (xcr, value) in zip(xcrs.xcrs, values.items()):
            slot.xcr, slot.value = xcr, value
        ioctl(self.fd, k.KVM_SET_XCRS, xcrs)

    def get_xsave(self) -> bytearray:
        """KVM_GET_XSAVE: the first 4 KiB of the vCPU's XSAVE image (standard format)."""
        xsave = k.kvm_xsave()
        ioctl(self.fd, k.KVM_GET_XSAVE, xsave)
        return bytearray(bytes(xsave))

    def set_xsave(self, image: bytes) -> None:
        xsave = k.kvm_xsave.from_buffer_copy(bytes(image).ljust(ctypes.sizeof(k.kvm_xsave), b"\0"))
        ioctl(self.fd, k.KVM_SET_XSAVE, xsave)

    def inject_exception(self, vector: int, error_code: int | None = None) -> None:
        """KVM_SET_VCPU_EVENTS with an exception to deliver at the next KVM_RUN."""
        events = self.get_vcpu_events()
        events.exception.injected = 1
        events.exception.nr = vector
        events.exception.has_error_code = int(error_code is not None)
        events.exception.error_code = error_code or 0
        events.flags = 0  # no optional fields: leave NMI, SIPI, SMM, shadow as they are
        self.set_vcpu_events(events)

    def set_guest_debug(self, control: int, debugreg: tuple[int, ...] = ()) -> None:
        dbg = k.kvm_guest_debug(control=control)
        for i, value in enumerate(debugreg):
            dbg.arch.debugreg[i] = value
        ioctl(self.fd, k.KVM_SET_GUEST_DEBUG, dbg)
