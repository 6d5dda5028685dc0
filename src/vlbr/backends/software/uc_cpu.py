"""The unicorn x86-64 CPU vlbr runs (cpu_features.CPU_MODEL): a fresh one, or one over a host
buffer that is the guest's RAM (the KVM backend's memory slot, which its hybrid and its ring-3
excursion run on)."""

from __future__ import annotations

import ctypes

from unicorn import UC_ARCH_X86, UC_MODE_64, UC_PROT_ALL, UC_PROT_READ, UC_PROT_WRITE, Uc

from vlbr.backends.base import RAM_SIZE

from .cpu_features import CPU_MODEL


def x86_64_cpu() -> Uc:
    """A unicorn x86-64 CPU of vlbr's model, nothing mapped."""
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.ctl_set_cpu_model(CPU_MODEL)
    return uc


def shared_memory_cpu(memory, executable: bool = False) -> Uc:
    """A CPU over `memory` as guest-physical 0..RAM_SIZE (no copy: both see every store).
    executable=False leaves every page to a code scan (CodeWatch) before it may run."""
    uc = x86_64_cpu()
    address = ctypes.addressof(ctypes.c_char.from_buffer(memory))
    perms = UC_PROT_ALL if executable else UC_PROT_READ | UC_PROT_WRITE
    uc.mem_map_ptr(0, RAM_SIZE, perms, address)
    return uc
