"""Build a KVM VM in the Guest ABI's state: 8 MiB of RAM, low memory from layout, long-mode vCPUs."""

from __future__ import annotations

import mmap
from dataclasses import dataclass, field

from iced_x86 import Code

from vlbr.arch.cpuid import CpuidTable
from vlbr.backends import layout
from vlbr.backends.base import RAM_SIZE
from vlbr.backends.kvm.patching import patch_instructions
from vlbr.backends.kvm.ioctls import Vcpu, Vm
from vlbr.errors import VlbrError
from vlbr.host import kvm as k
from vlbr.host.kvm import Kvm, KvmError


class GuestLayoutError(VlbrError):
    """The guest image or machine does not fit the Guest ABI (memory, vCPU count)."""


def kvm_segment(seg: layout.Segment) -> k.kvm_segment:
    return k.kvm_segment(base=seg.base, limit=seg.limit, selector=seg.selector, type=seg.type,
                         present=seg.present, dpl=seg.dpl, db=seg.db, s=seg.s, l=seg.l, g=seg.g,
                         avl=0, unusable=seg.unusable)


@dataclass(frozen=True)
class PatchedSites:
    """Where the loaded image differs from the guest's: CPUID (cpuid.py), INT n/SYSCALL
    (traps.py), each by guest address."""

    cpuid: frozenset[int] = frozenset()
    traps: dict = field(default_factory=dict)


def create_memory(vm: Vm, image, vcpus: int, patches: dict) -> tuple[mmap.mmap, PatchedSites]:
    """RAM with the ABI's low memory and the image at its load address with `patches`
    applied (patching.py), mapped as slot 0; also where it was patched."""
    memory = mmap.mmap(-1, RAM_SIZE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                       mmap.PROT_READ | mmap.PROT_WRITE)
    layout.write_low_memory(memory, vcpus)
    start, data = image.load_address, bytes(image.data)
    if start < layout.IMAGE_BASE or start + len(data) > RAM_SIZE:
        raise GuestLayoutError(f"image of {len(data)} bytes at {start:#x} is outside "
                              f"{layout.IMAGE_BASE:#x}..{RAM_SIZE:#x}")
    data, sites = patch_instructions(data, start, image.code_ranges(), patches)
    cpuid_sites = frozenset(a for a, insn in sites.items() if insn.code == Code.CPUID)
    trap_sites = {a: insn for a, insn in sites.items() if insn.code != Code.CPUID}
    memory[start:start + len(data)] = data
    vm.set_user_memory_region(0, 0, memory)
    return memory, PatchedSites(cpuid_sites, trap_sites)


def set_entry_state(vcpu: Vcpu, entry: layout.VcpuEntry, cpuid: CpuidTable) -> None:
    """CPUID first (KVM checks CR4/XCR0 against it), then sregs, regs and XCR0."""
    try:
        vcpu.set_cpuid2(cpuid)
    except KvmError as err:
        raise KvmError("KVM_SET_CPUID2", err.errno, "the machine's guest CPUID") from None
    sregs = vcpu.get_sregs()
    for name in ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt"):
        setattr(sregs, name, kvm_segment(getattr(entry, name)))
    sregs.gdt.base, sregs.gdt.limit = entry.gdt.base, entry.gdt.limit
    sregs.idt.base, sregs.idt.limit = entry.idt.base, entry.idt.limit
    sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer = entry.cr0, entry.cr3, entry.cr4, entry.efer
    try:
        vcpu.set_sregs(sregs)
    except KvmError as err:
        raise KvmError("KVM_SET_SREGS", err.errno,
                       "long-mode entry state; does the guest CPUID enumerate XSAVE?") from None
    regs = k.kvm_regs(rip=entry.rip, rsp=entry.rsp, rdi=entry.rdi, rsi=entry.rsi,
                      rflags=entry.rflags)
    vcpu.set_regs(regs)
    try:
        vcpu.set_xcrs({0: entry.xcr0})
    except KvmError as err:
        raise KvmError("KVM_SET_XCRS", err.errno, f"XCR0={entry.xcr0:#x}") from None


def create_machine(kvm: Kvm, image, cpuid: CpuidTable, vcpus: int, patches: dict | None = None
                   ) -> tuple[Vm, mmap.mmap, PatchedSites, list[Vcpu]]:
    """A VM in the Guest ABI's state; `patches` (default: none) rewrite the image's
    instructions the KVM at hand cannot run (see quirks.py)."""
    if not 1 <= vcpus <= layout.MAX_VCPUS:
        raise GuestLayoutError(f"{vcpus} vCPUs: the Guest ABI lays out 1..{layout.MAX_VCPUS}")
    vm = Vm(kvm)
    try:
        memory, sites = create_memory(vm, image, vcpus, patches or {})
        cpus = []
        for n in range(vcpus):
            vcpu = vm.create_vcpu(n)
            cpus.append(vcpu)
            set_entry_state(vcpu, layout.entry_state(n, vcpus, image.entry), cpuid)
    except BaseException:
        vm.close()
        raise
    return vm, memory, sites, cpus
