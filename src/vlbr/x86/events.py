"""Exception and interrupt delivery through the guest IDT in 64-bit mode (SDM vol. 3A 6.14),
once for both backends: each provides an EventCpu, the few state accesses delivery needs."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Protocol

from vlbr.arch.x86 import (RFLAGS_FIXED, RFLAGS_IF, RFLAGS_NT, RFLAGS_RF, RFLAGS_TF, RFLAGS_VM,
                           VECTOR_GP)
from vlbr.errors import VlbrError

from .descriptors import (DESCRIPTOR_SIZE, GATE_INTERRUPT, GATE_SIZE, Gate, SegmentDescriptor,
                          tss_stack_slot)

_CLEARED_FLAGS = RFLAGS_TF | RFLAGS_NT | RFLAGS_RF | RFLAGS_VM


class DeliveryFailed(VlbrError):
    """The guest cannot take the event (bad IDT, GDT or stack): a CPU would shut down."""


@dataclass(frozen=True)
class Interrupted:
    """The state the frame saves: SS, RSP, RFLAGS, CS selectors/values and the CPL."""

    ss: int
    rsp: int
    rflags: int
    cs: int
    cpl: int


class EventCpu(Protocol):
    def read(self, address: int, size: int) -> bytes:
        """Guest memory; raises DeliveryFailed where there is none."""

    def write(self, address: int, data: bytes) -> None:
        """Guest memory; raises DeliveryFailed where there is none."""

    def tables(self) -> tuple[tuple[int, int], tuple[int, int], int]:
        """((IDT base, limit), (GDT base, limit), TR base)."""

    def interrupted(self) -> Interrupted: ...

    def enter(self, handler: int, rsp: int, rflags: int, cs_selector: int,
              cs: SegmentDescriptor, cpl: int, null_ss: bool) -> None:
        """Load the handler's state; null_ss: SS becomes the NULL selector with RPL = cpl."""


@dataclass(frozen=True)
class Delivered:
    vector: int  # #GP when an INT n met a gate of lower DPL
    handler: int
    cpl: int
    error_code: int | None


def deliver(cpu: EventCpu, vector: int, return_ip: int, error_code: int | None = None,
            software_ip: int | None = None) -> Delivered:
    """Enter the handler of `vector` with a frame that returns to `return_ip`.

    software_ip: the INT n / INT3 / INTO that raised it; through a gate whose DPL is below
    CPL it raises #GP(vector * 8 + 2) at that instruction instead (SDM INT n, 6.12.1.1)."""
    (idt_base, idt_limit), gdt, tss_base = cpu.tables()
    state = cpu.interrupted()
    gate = _gate(cpu, idt_base, idt_limit, vector)
    if software_ip is not None and gate.dpl < state.cpl:
        return deliver(cpu, VECTOR_GP, software_ip, vector * 8 + 2)
    if not gate.usable:
        raise DeliveryFailed(f"IDT vector {vector}: gate not present or not a 64-bit "
                             f"interrupt/trap gate (type {gate.type:#x})")
    cs = _code_segment(cpu, gdt, gate.selector, vector)
    cpl = cs.dpl
    if cpl > state.cpl:
        raise DeliveryFailed(f"IDT vector {vector}: handler DPL {cpl} above CPL {state.cpl}")
    rsp = state.rsp
    if gate.ist or cpl < state.cpl:
        rsp = _u64(cpu, tss_stack_slot(tss_base, cpl=cpl, ist=gate.ist))
    words = [state.ss, state.rsp, state.rflags, state.cs, return_ip]
    if error_code is not None:
        words.append(error_code)
    rsp = (rsp & ~0xF) - 8 * len(words)
    cpu.write(rsp, struct.pack(f"<{len(words)}Q", *reversed(words)))
    rflags = (state.rflags & ~_CLEARED_FLAGS) | RFLAGS_FIXED
    if gate.type == GATE_INTERRUPT:
        rflags &= ~RFLAGS_IF
    cpu.enter(gate.offset, rsp, rflags, (gate.selector & ~3) | cpl, cs, cpl,
              null_ss=cpl != state.cpl)
    return Delivered(vector, gate.offset, cpl, error_code)


def handler_of(cpu: EventCpu, vector: int) -> int | None:
    """The handler address the IDT names for `vector`, or None without a usable gate."""
    (idt_base, idt_limit), _, _ = cpu.tables()
    try:
        gate = _gate(cpu, idt_base, idt_limit, vector)
    except DeliveryFailed:
        return None
    return gate.offset if gate.usable else None


def _gate(cpu: EventCpu, base: int, limit: int, vector: int) -> Gate:
    if vector * GATE_SIZE + GATE_SIZE - 1 > limit:
        raise DeliveryFailed(f"vector {vector} is beyond the IDT limit {limit:#x}")
    return Gate.decode(cpu.read(base + vector * GATE_SIZE, GATE_SIZE))


def _code_segment(cpu: EventCpu, gdt: tuple[int, int], selector: int,
                  vector: int) -> SegmentDescriptor:
    base, limit = gdt
    if selector & ~7 == 0 or (selector | 7) > limit:
        raise DeliveryFailed(f"IDT vector {vector}: gate selector {selector:#x} outside the "
                             f"GDT (limit {limit:#x})")
    cs = SegmentDescriptor.decode(cpu.read(base + (selector & ~7), DESCRIPTOR_SIZE))
    if not cs.is_long_code:
        raise DeliveryFailed(f"IDT vector {vector}: gate selector {selector:#x} is not a "
                             f"present 64-bit code segment")
    return cs


def _u64(cpu: EventCpu, address: int) -> int:
    return struct.unpack("<Q", cpu.read(address, 8))[0]
