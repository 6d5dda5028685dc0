"""Probe, for real, what this machine's KVM offers the KVM backend (for `vlbr host`).

Each probe runs a tiny guest (encoded with iced-x86) in a fresh VM in the Guest ABI's long
mode and reports what KVM did, with the ioctl, exit or errno when something is missing.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field

from iced_x86 import BlockEncoder, Code, Instruction, MemoryOperand, Register as R

from vlbr.arch.cpuid import CpuidTable, Registers
from vlbr.arch.x86 import CPUID1_ECX_XSAVE, MSR_FMASK, MSR_LSTAR, MSR_STAR, VECTOR_BP, VECTOR_GP
from vlbr.backends import layout
from vlbr.backends.base import IMAGE_BASE
from vlbr.backends.image import GuestImage
from vlbr.backends.kvm.cpuid import rewritten_leaves
from vlbr.backends.kvm.ioctls import Vm
from vlbr.backends.kvm.machine import create_machine
from vlbr.host import kvm as k
from vlbr.host.kvm import Kvm, KvmError
from vlbr.x86.descriptors import GATE_INTERRUPT, GATE_SIZE, Gate

USED_CAPS = [
    ("KVM_CAP_X86_USER_SPACE_MSR", k.KVM_CAP_X86_USER_SPACE_MSR),
    ("KVM_CAP_X86_MSR_FILTER", k.KVM_CAP_X86_MSR_FILTER),
    ("KVM_CAP_SET_GUEST_DEBUG", k.KVM_CAP_SET_GUEST_DEBUG),
    ("KVM_CAP_SET_GUEST_DEBUG2", k.KVM_CAP_SET_GUEST_DEBUG2),
    ("KVM_CAP_SYNC_REGS", k.KVM_CAP_SYNC_REGS),
    ("KVM_CAP_XCRS", k.KVM_CAP_XCRS),
    ("KVM_CAP_XSAVE", k.KVM_CAP_XSAVE),
    ("KVM_CAP_XSAVE2", k.KVM_CAP_XSAVE2),
    ("KVM_CAP_EXT_CPUID", k.KVM_CAP_EXT_CPUID),
    ("KVM_CAP_GET_MSR_FEATURES", k.KVM_CAP_GET_MSR_FEATURES),
    ("KVM_CAP_PMU_CAPABILITY", k.KVM_CAP_PMU_CAPABILITY),
]
STEPS = 3000


@dataclass
class Probe:
    name: str
    ok: bool
    detail: str
    value: float | None = None  # a measured figure (steps/s), when there is one


@dataclass
class HostReport:
    api_version: int
    caps: dict[str, int]
    supported_cpuid_entries: int
    msr_index_list: int
    probes: list[Probe] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"api_version": self.api_version, "caps": self.caps,
                "supported_cpuid_entries": self.supported_cpuid_entries,
                "msr_index_list": self.msr_index_list,
                "probes": [{"name": p.name, "ok": p.ok, "detail": p.detail, "value": p.value}
                           for p in self.probes]}


def _image(*instructions: Instruction) -> GuestImage:
    encoder = BlockEncoder(64)
    encoder.add_many(list(instructions))
    return GuestImage(encoder.encode(IMAGE_BASE), IMAGE_BASE, IMAGE_BASE)


def _mov(reg, value: int) -> Instruction:
    return Instruction.create_reg_u64(Code.MOV_R64_IMM64, reg, value)


def _exit() -> list[Instruction]:
    return [Instruction.create_reg_u32(Code.MOV_R32_IMM32, R.EDX, 0xF4),
            Instruction.create_reg_reg(Code.OUT_DX_EAX, R.DX, R.EAX)]


def _guest_table(kvm: Kvm) -> CpuidTable:
    """KVM's table plus what the Guest ABI's CR4.OSXSAVE needs (CPUID.1:ECX.XSAVE)."""
    table = kvm.supported_cpuid()
    r = table.regs(1)
    return table.replace({(1, 0): Registers(r.eax, r.ebx, r.ecx | CPUID1_ECX_XSAVE, r.edx)})


def _first_exit(vcpu) -> int:
    while True:
        reason = vcpu.run().reason
        if reason != k.KVM_EXIT_INTR:
            return reason


def _exit_text(vcpu, reason: int) -> str:
    text = k.EXIT_NAMES.get(reason, str(reason))
    if reason == k.KVM_EXIT_INTERNAL_ERROR:
        text += f" suberror {vcpu.run_struct.internal.suberror} (1 = emulation failure)"
    return text


def probe_user_space_msr(kvm: Kvm) -> Probe:
    name = "user-space MSR + filter"
    image = _image(Instruction.create_reg_u32(Code.MOV_R32_IMM32, R.ECX, 0x14CF),
                   Instruction.create(Code.RDMSR), *_exit())
    vm, memory, _, (vcpu,) = create_machine(kvm, image, _guest_table(kvm), 1)
    try:
        vm.enable_cap(k.KVM_CAP_X86_USER_SPACE_MSR, k.KVM_MSR_EXIT_REASON_FILTER)
        vm.set_msr_filter({0x14CF})
        reason = _first_exit(vcpu)
        msr = vcpu.run_struct.msr
        ok = reason == k.KVM_EXIT_X86_RDMSR and msr.reason == k.KVM_MSR_EXIT_REASON_FILTER
        detail = (f"RDMSR 0x14CF -> KVM_EXIT_X86_RDMSR, reason {msr.reason} (filter)" if ok
                  else f"RDMSR 0x14CF -> {_exit_text(vcpu, reason)}")
        return Probe(name, ok, detail)
    except KvmError as err:
        return Probe(name, False, str(err))
    finally:
        vcpu.close()
        vm.close()


def _step_rate(kvm: Kvm, sync: bool) -> float:
    loop = [_mov(R.RCX, 1 << 40), Instruction.create_reg(Code.DEC_RM64, R.RCX)]
    loop.append(Instruction.create_branch(Code.JNE_REL32_64, IMAGE_BASE + 10))
    vm, memory, _, (vcpu,) = create_machine(kvm, _image(*loop), _guest_table(kvm), 1)
    try:
        vcpu.set_guest_debug(k.KVM_GUESTDBG_ENABLE | k.KVM_GUESTDBG_SINGLESTEP)
        run = vcpu.run_struct
        start = time.perf_counter()
        for _ in range(STEPS):
            if sync:
                run.kvm_valid_regs = k.KVM_SYNC_X86_REGS | k.KVM_SYNC_X86_SREGS
            if vcpu.run().reason != k.KVM_EXIT_DEBUG:
                raise KvmError("KVM_RUN single-step", 0, "no KVM_EXIT_DEBUG")
            if not sync:
                vcpu.get_regs()
                vcpu.get_sregs()
        return STEPS / (time.perf_counter() - start)
    finally:
        vcpu.close()
        vm.close()


def probe_single_step(kvm: Kvm) -> list[Probe]:
    try:
        plain = _step_rate(kvm, sync=False)
    except KvmError as err:
        return [Probe("guest debug single-step", False, str(err))]
    probes = [Probe("guest debug single-step", True,
                    f"KVM_EXIT_DEBUG after each instruction; {plain:,.0f} steps/s with "
                    "KVM_GET_REGS + KVM_GET_SREGS per step", plain)]
    if kvm.check_extension(k.KVM_CAP_SYNC_REGS) & k.KVM_SYNC_X86_SREGS:
        synced = _step_rate(kvm, sync=True)
        probes.append(Probe("sync regs", True, f"{synced:,.0f} steps/s with registers synced "
                            f"into kvm_run ({synced / plain:.1f}x)", synced))
    else:
        probes.append(Probe("sync regs", False, "KVM_CHECK_EXTENSION(KVM_CAP_SYNC_REGS) lacks "
                            "KVM_SYNC_X86_SREGS"))
    return probes


def probe_xsaves(kvm: Kvm) -> list[Probe]:
    table = kvm.supported_cpuid()
    d1 = table.regs(0xD, 1)
    probes = []
    image = _image(_mov(R.RAX, 1 << 15), _mov(R.RDX, 0), _mov(R.RBX, 0x200000),
                   Instruction.create_mem(Code.XSAVES64_MEM, MemoryOperand(R.RBX)), *_exit())
    vm, memory, _, (vcpu,) = create_machine(kvm, image, _guest_table(kvm), 1)
    try:
        written = vcpu.set_msrs({0xDA0: 1 << 15})
        reason = _first_exit(vcpu)
        ran = reason == k.KVM_EXIT_IO
        probes.append(Probe(
            "XSAVES in a guest", ran,
            f"KVM_GET_SUPPORTED_CPUID (0xD,1): EAX={d1.eax:#x} (XSAVES bit 3 "
            f"{'set' if d1.eax & 8 else 'clear'}), ECX={d1.ecx:#x}; guest XSAVES -> "
            f"{'completed' if ran else _exit_text(vcpu, reason)}"
            + ("" if ran else "; vlbr emulates XSAVES/XRSTORS in user space")))
        probes.append(Probe(
            "IA32_XSS bit 15", written == 1,
            f"KVM_SET_MSRS IA32_XSS=0x8000 set {written} of 1 MSRs (KVM refuses the bit: no "
            "Arch LBR state in hardware); vlbr's model owns IA32_XSS through the MSR filter"))
    finally:
        vcpu.close()
        vm.close()
    return probes


def probe_cpuid_kept(kvm: Kvm) -> Probe:
    table = _guest_table(kvm)
    r7 = table.regs(7)
    table = table.replace({(7, 0): Registers(r7.eax, r7.ebx, r7.ecx, r7.edx | 1 << 19),
                           (0x1C, 0): Registers(0x8000_0008, 7, 7, 0)})
    with Vm(kvm) as vm:
        vcpu = vm.create_vcpu(0)
        try:
            vcpu.set_cpuid2(table)
            got = vcpu.get_cpuid2()
        finally:
            vcpu.close()
    changed = rewritten_leaves(table, got)
    names = ", ".join(f"{leaf:#x}.{sub}" for leaf, sub in changed)
    return Probe("KVM_SET_CPUID2 kept", not changed,
                 "KVM_GET_CPUID2 returns what was set" if not changed else
                 f"KVM_GET_CPUID2 differs in leaves {names}; vlbr answers guest CPUID itself "
                 "(CPUID patched to HLT)")


def _probe_exit(kvm: Kvm, name: str, instructions: list[Instruction], note: str) -> Probe:
    lidt_missing = [_mov(R.RAX, 0)]  # no IDT: an exception delivered by KVM would shut down
    vm, memory, _, (vcpu,) = create_machine(kvm, _image(*lidt_missing, *instructions, *_exit()),
                                            _guest_table(kvm), 1)
    try:
        reason = _first_exit(vcpu)
        ok = reason == k.KVM_EXIT_IO
        return Probe(name, ok, "runs in KVM" if ok else f"KVM_RUN -> {_exit_text(vcpu, reason)}; "
                     + note)
    finally:
        vcpu.close()
        vm.close()


def probe_emulation(kvm: Kvm) -> list[Probe]:
    return [
        _probe_exit(kvm, "INT n in a guest", [Instruction.create_u32(Code.INT_IMM8, 0x20)],
                    "vlbr delivers INT n through the guest IDT itself"),
        _probe_exit(kvm, "ICEBP (INT1) in a guest", [Instruction.create(Code.INT1)],
                    "vlbr raises the #DB itself"),
    ]


_USER_CODE = IMAGE_BASE + 0x40
_KERNEL_ENTRY = IMAGE_BASE + 0x80  # where SYSCALL lands (IA32_LSTAR)
SYSCALL_STATUS = 0x5C


def _ring3_image(*user: Instruction, kernel: tuple[Instruction, ...] = ()) -> GuestImage:
    """IRETQ to CPL3 (Guest ABI selectors 0x23/0x1B) at _USER_CODE running `user`; `kernel`
    at _KERNEL_ENTRY."""
    code = []
    for value in (0x1B, 0x600000, 0x2, 0x23, _USER_CODE):
        code += [_mov(R.RAX, value), Instruction.create_reg(Code.PUSH_R64, R.RAX)]
    code.append(Instruction.create(Code.IRETQ))
    data = _image(*code).data.ljust(0x40, b"\x90") + _image(*user).data
    if kernel:
        data = data.ljust(0x80, b"\x90") + _image(*kernel).data
    return GuestImage(data, IMAGE_BASE, IMAGE_BASE)


def probe_user_syscall(kvm: Kvm) -> Probe:
    """SYSCALL at CPL3 with IA32_LSTAR set: the kernel entry exits with SYSCALL_STATUS."""
    image = _ring3_image(Instruction.create(Code.SYSCALL),
                         kernel=(_mov(R.RAX, SYSCALL_STATUS), *_exit()))
    vm, memory, _, (vcpu,) = create_machine(kvm, image, _guest_table(kvm), 1)
    try:
        vcpu.set_msrs({MSR_STAR: 0x08 << 32, MSR_LSTAR: _KERNEL_ENTRY, MSR_FMASK: 0})
        reason = _first_exit(vcpu)
        ok = reason == k.KVM_EXIT_IO and vcpu.get_regs().rax & 0xFFFFFFFF == SYSCALL_STATUS
        return Probe("SYSCALL at CPL3", ok, "reaches IA32_LSTAR" if ok else
                     f"does not reach IA32_LSTAR (KVM_RUN -> {_exit_text(vcpu, reason)}); vlbr "
                     "patches SYSCALL to a port exit and performs it")
    finally:
        vcpu.close()
        vm.close()


_INT3_HANDLERS = {VECTOR_BP: IMAGE_BASE + 0x80, VECTOR_GP: IMAGE_BASE + 0xC0}
_IDT_AT = IMAGE_BASE + 0x100


def _int3_image() -> GuestImage:
    """Ring 3 runs INT3; IDT gates 3 and 13 are DPL 0, each handler exits with its vector."""
    handlers = {at: _image(_mov(R.RAX, vector), *_exit()).data
                for vector, at in _INT3_HANDLERS.items()}
    data = bytearray(_ring3_image(Instruction.create(Code.INT3)).data.ljust(0x200, b"\x90"))
    for at, code in handlers.items():
        data[at - IMAGE_BASE:at - IMAGE_BASE + len(code)] = code
    for vector, at in _INT3_HANDLERS.items():
        gate = Gate(at, layout.SEL_KERNEL_CODE, 0, GATE_INTERRUPT, 0, True).encode()
        offset = _IDT_AT - IMAGE_BASE + GATE_SIZE * vector
        data[offset:offset + GATE_SIZE] = gate
    return GuestImage(bytes(data), IMAGE_BASE, IMAGE_BASE)


def probe_user_int3(kvm: Kvm) -> Probe:
    """INT3 at CPL3 through a DPL-0 gate: #GP(3 * 8 + 2) (SDM vol. 2 INT3), not #BP."""
    vm, memory, _, (vcpu,) = create_machine(kvm, _int3_image(), _guest_table(kvm), 1)
    try:
        sregs = vcpu.get_sregs()
        sregs.idt.base, sregs.idt.limit = _IDT_AT, GATE_SIZE * (VECTOR_GP + 1) - 1
        vcpu.set_sregs(sregs)
        reason = _first_exit(vcpu)
        vector = vcpu.get_regs().rax & 0xFF if reason == k.KVM_EXIT_IO else None
        ok = vector == VECTOR_GP
        return Probe("INT3 at CPL3 through a DPL-0 gate", ok, "#GP, as the SDM says" if ok else
                     f"KVM_RUN -> {_exit_text(vcpu, reason)}"
                     + (" in the #BP handler: KVM skips the gate's DPL check (vlbr cannot "
                        "patch a 1-byte INT3; while it records, ring 3 runs on unicorn, which "
                        "raises the #GP)" if vector == VECTOR_BP else ""))
    finally:
        vcpu.close()
        vm.close()


def probe_user_single_step(kvm: Kvm) -> Probe:
    """IRETQ to CPL3, a few user instructions, exit port, single-stepped."""
    image = _ring3_image(Instruction.create(Code.NOPD), Instruction.create(Code.NOPD), *_exit())
    vm, memory, _, (vcpu,) = create_machine(kvm, image, _guest_table(kvm), 1)
    try:
        vcpu.set_guest_debug(k.KVM_GUESTDBG_ENABLE | k.KVM_GUESTDBG_SINGLESTEP)
        user_steps = 0
        for _ in range(100):
            reason = _first_exit(vcpu)
            if reason != k.KVM_EXIT_DEBUG:
                break
            user_steps += vcpu.get_sregs().cs.selector & 3 == 3
        ok = user_steps > 0
        return Probe("single-step at CPL3", ok, "KVM_EXIT_DEBUG in ring 3" if ok else
                     f"no KVM_EXIT_DEBUG in ring 3 (IRETQ to CPL3 drops the trap flag; ended "
                     f"by {_exit_text(vcpu, reason)}); vlbr runs ring 3 on unicorn while it "
                     "records")
    finally:
        vcpu.close()
        vm.close()


def probe_pmu(kvm: Kvm) -> Probe:
    value = kvm.check_extension(k.KVM_CAP_PMU_CAPABILITY)
    return Probe("guest PMU", value != 0, f"KVM_CHECK_EXTENSION(KVM_CAP_PMU_CAPABILITY) = {value}"
                 + ("" if value else ": no counters, so no PMI freezes LBRs from a counter"))


def quirk_probes(kvm: Kvm) -> dict[str, Probe]:
    """The probes behind each KvmQuirks field (quirks.py), by field name."""
    return {"cpuid_rewritten": probe_cpuid_kept(kvm),
            "int_n_fails": probe_emulation(kvm)[0],
            "user_syscall_fails": probe_user_syscall(kvm),
            "user_single_step_fails": probe_user_single_step(kvm),
            "user_int3_skips_gate_dpl": probe_user_int3(kvm)}


def host_report(path: str = k.KVM_PATH) -> HostReport:
    with Kvm(path) as kvm:
        report = HostReport(
            api_version=kvm.api_version(),
            caps={name: kvm.check_extension(cap) for name, cap in USED_CAPS},
            supported_cpuid_entries=len(kvm.supported_cpuid_entries()),
            msr_index_list=len(kvm.msr_index_list()))
        report.probes.append(probe_user_space_msr(kvm))
        report.probes += probe_single_step(kvm)
        report.probes.append(probe_user_single_step(kvm))
        report.probes.append(probe_user_syscall(kvm))
        report.probes.append(probe_user_int3(kvm))
        report.probes += probe_xsaves(kvm)
        report.probes.append(probe_cpuid_kept(kvm))
        report.probes += probe_emulation(kvm)
        report.probes.append(probe_pmu(kvm))
    return report


@functools.cache
def unavailable_features(path: str = k.KVM_PATH) -> dict[str, str]:
    """Guest-visible features the KVM backend cannot give here even with vlbr's emulation."""
    with Kvm(path) as kvm:
        pmu = probe_pmu(kvm)
    return {} if pmu.ok else {"pmu-counters": pmu.detail}
