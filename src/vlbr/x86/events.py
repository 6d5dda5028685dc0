"""Exception and interrupt delivery through the guest IDT in 64-bit mode (SDM vol. 3A 6.14),
once for both backends: each provides an EventCpu, the few state accesses delivery needs."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Protocol

from vlbr.arch.x86 import (ERROR_CODE_EXT, ERROR_CODE_IDT, RFLAGS_FIXED, RFLAGS_IF, RFLAGS_NT,
                           RFLAGS_RF, RFLAGS_TF, RFLAGS_VM, VECTOR_DE, VECTOR_DF, VECTOR_GP,
                           VECTOR_NP, VECTOR_PF, VECTOR_SS, VECTOR_TS)
from vlbr.errors import VlbrError

from .descriptors import (DESCRIPTOR_SIZE, GATE_INTERRUPT, GATE_SIZE, Gate, SegmentDescriptor,
                          tss_stack_slot)

_CLEARED_FLAGS = RFLAGS_TF | RFLAGS_NT | RFLAGS_RF | RFLAGS_VM
_CONTRIBUTORY = frozenset([VECTOR_DE, VECTOR_TS, VECTOR_NP, VECTOR_SS, VECTOR_GP])


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


class _GateFault(Exception):
    """The gate of `vector` raises `fault` with an IDT error code instead (SDM 6.13)."""

    def __init__(self, fault: int, vector: int, why: str):
        self.fault, self.vector, self.why = fault, vector, why


def deliver(cpu: EventCpu, vector: int, return_ip: int, error_code: int | None = None,
            software_ip: int | None = None) -> Delivered:
    """Enter the handler of `vector` with a frame that returns to `return_ip`.

    software_ip: the INT n / INT3 / INTO that raised it; through a gate whose DPL is below
    CPL it raises #GP(vector * 8 + 2) at that instruction instead (SDM INT n, 6.12.1.1). A
    gate that is not present raises #NP, one of another type #GP, each with the IDT error
    code (EXT set unless INT n raised it). A contributory fault while delivering a
    contributory fault or #PF is #DF, and any fault while delivering #DF a shutdown (SDM
    6.15 interrupt 8, tables 6-4 and 6-5): DeliveryFailed names the chain."""
    fault_ip = return_ip if software_ip is None else software_ip
    first = None if software_ip is not None else vector  # INT n is benign as a first event
    chain: list[str] = []
    while True:
        try:
            return _deliver(cpu, vector, return_ip, error_code, software_ip)
        except _GateFault as gate_fault:
            chain.append(gate_fault.why)
            if vector == VECTOR_DF:
                raise DeliveryFailed("; then ".join(chain) + ": shutdown") from None
            if first is not None and _double_fault(first, gate_fault.fault):
                vector, error_code = VECTOR_DF, 0
            else:
                ext = 0 if software_ip is not None else ERROR_CODE_EXT
                vector, error_code = gate_fault.fault, vector * 8 | ERROR_CODE_IDT | ext
            first, return_ip, software_ip = vector, fault_ip, None


def _double_fault(first: int, second: int) -> bool:
    """SDM table 6-5: which pairs of exceptions make a #DF."""
    return second in _CONTRIBUTORY and (first in _CONTRIBUTORY or first == VECTOR_PF)


def _deliver(cpu: EventCpu, vector: int, return_ip: int, error_code: int | None,
             software_ip: int | None) -> Delivered:
    (idt_base, idt_limit), gdt, tss_base = cpu.tables()
    state = cpu.interrupted()
    gate = _gate(cpu, idt_base, idt_limit, vector)
    # SDM vol. 2 INT n (IA-32e mode): the gate's type, then a software interrupt's DPL, then P
    if not gate.interrupt_or_trap:
        raise _GateFault(VECTOR_GP, vector, f"IDT vector {vector}: not a 64-bit "
                         f"interrupt/trap gate (type {gate.type:#x})")
    if software_ip is not None and gate.dpl < state.cpl:
        raise _GateFault(VECTOR_GP, vector, f"INT {vector:#x} through a DPL {gate.dpl} gate")
    if not gate.present:
        raise _GateFault(VECTOR_NP, vector, f"IDT vector {vector}: gate not present")
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
    except (DeliveryFailed, _GateFault):
        return None
    return gate.offset if gate.usable else None


def _gate(cpu: EventCpu, base: int, limit: int, vector: int) -> Gate:
    if vector * GATE_SIZE + GATE_SIZE - 1 > limit:
        raise _GateFault(VECTOR_GP, vector, f"vector {vector} is beyond the IDT limit {limit:#x}")
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
