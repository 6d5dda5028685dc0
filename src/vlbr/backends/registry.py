"""The backends by name: which exist, how to load one, and which `auto` picks."""

from __future__ import annotations

import importlib

import functools
import time

from vlbr.arch.cpuid import CpuidTable
from vlbr.backends.base import IMAGE_BASE, PORT_EXIT, Backend, MachineConfig
from vlbr.backends.image import GuestImage
from vlbr.errors import VlbrError

BACKEND_NAMES = ("kvm", "software")
DEFAULT_DEPTH = 32  # the depth KVM's Arch LBR patches expose on their reference hosts
SPEED_LOOP = 20_000  # iterations of the loop `auto` times first (2 instructions each)
SPEED_LOOP_MAX = 1 << 22
SPEED_MIN_SECONDS = 0.03


class UnknownBackend(VlbrError):
    """A backend name other than kvm or software."""


_BACKEND_CLASSES = {"kvm": "KvmBackend", "software": "SoftwareBackend"}


class BackendNotLoadable(VlbrError):
    """The backend's module or class cannot be imported."""


def make_backend(name: str) -> Backend:
    """A backend object by name (kvm or software)."""
    try:
        class_name = _BACKEND_CLASSES[name]
    except KeyError:
        raise UnknownBackend(f"unknown backend {name!r}: choose {' or '.join(BACKEND_NAMES)}") from None
    problems = []
    for module_name in (f"vlbr.backends.{name}", f"vlbr.backends.{name}.backend"):
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            problems.append(f"{module_name}: {err}")
            continue
        cls = getattr(module, class_name, None)
        if cls is not None:
            return cls()
        problems.append(f"{module_name} has no {class_name}")
    raise BackendNotLoadable(f"backend {name} cannot be loaded ({'; '.join(problems)})")


def guest_cpuid(backend_name: str, depth: int | None = DEFAULT_DEPTH) -> CpuidTable:
    """The guest CPUID for a backend: vlbr's emulated Arch LBR over KVM's supported CPUID
    (kvm) or over the live host's table limited to what unicorn runs (software)."""
    from vlbr.policy import emulated_guest_cpuid
    if backend_name == "kvm":
        from vlbr.host.kvm import Kvm
        kvm = Kvm()
        try:
            base = kvm.supported_cpuid()
        finally:
            kvm.close()
    else:
        from vlbr.backends.software.cpu_features import unicorn_limited
        from vlbr.host import live_host_cpus
        base = unicorn_limited(live_host_cpus()[0].table)
    return emulated_guest_cpuid(base, depth)


def machine_for(backend_name: str, vcpus: int = 1, depth: int | None = DEFAULT_DEPTH,
                cpuid: CpuidTable | None = None, **extra) -> MachineConfig:
    from vlbr.vcpu import LbrConfig
    table = cpuid if cpuid is not None else guest_cpuid(backend_name, depth)
    return MachineConfig(cpuid=table, lbr=LbrConfig.from_cpuid(table), vcpus=vcpus, **extra)


def pick_backend(name: str = "auto") -> Backend:
    """A backend by name; `auto`: of those that can run here, the fastest (auto_choice)."""
    return make_backend(auto_choice()[0] if name == "auto" else name)


@functools.cache
def auto_choice() -> tuple[str, str]:
    """(backend, why): capability first, then the guest instructions/s each measured here."""
    reasons, speeds = {}, {}
    for name in BACKEND_NAMES:
        try:
            reason = make_backend(name).unavailable_reason()
        except BackendNotLoadable as err:
            reason = str(err)
        if reason is None:
            speeds[name] = measured_speed(name)
        else:
            reasons[name] = reason
    if not speeds:
        raise BackendNotLoadable("no backend can run here: " + "; ".join(
            f"{n}: {r}" for n, r in reasons.items()))
    best = max(speeds, key=speeds.get)
    why = ", ".join(f"{n} {v / 1e6:.1f} M instructions/s" for n, v in speeds.items())
    why += "".join(f"; {n} unavailable: {r}" for n, r in reasons.items())
    return best, f"{best} is the fastest backend that can run here ({why})"


def measured_speed(name: str) -> float:
    """Guest instructions per second of a plain loop (LBREn clear) on backend `name`: the
    time of 2N iterations less that of N, so that building the machine does not count; N
    doubles until the difference is long enough to measure."""
    backend, machine = make_backend(name), machine_for(name)
    iterations = SPEED_LOOP
    while True:
        times = []
        for n in (iterations, 2 * iterations):
            image = _loop_image(n)
            start = time.perf_counter()
            backend.run(image, machine)
            times.append(time.perf_counter() - start)
        spent = times[1] - times[0]
        if spent >= SPEED_MIN_SECONDS or iterations >= SPEED_LOOP_MAX:
            return 2 * iterations / max(spent, 1e-6)
        iterations *= 4


def _loop_image(iterations: int) -> GuestImage:
    """mov ecx, N; 1: dec ecx; jnz 1b; exit 0."""
    from iced_x86 import BlockEncoder, Code, Instruction, Register
    loop = [Instruction.create_reg_u32(Code.MOV_R32_IMM32, Register.ECX, iterations),
            Instruction.create_reg(Code.DEC_RM32, Register.ECX),
            Instruction.create_branch(Code.JNE_REL32_64, IMAGE_BASE + 5),
            Instruction.create_reg_u32(Code.MOV_R32_IMM32, Register.EAX, 0),
            Instruction.create_reg_u32(Code.MOV_R32_IMM32, Register.EDX, PORT_EXIT),
            Instruction.create_reg_reg(Code.OUT_DX_EAX, Register.DX, Register.EAX)]
    encoder = BlockEncoder(64)
    encoder.add_many(loop)
    return GuestImage(encoder.encode(IMAGE_BASE), IMAGE_BASE, IMAGE_BASE, {}, "speed_loop")
