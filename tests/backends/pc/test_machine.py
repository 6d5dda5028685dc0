"""Debian's unmodified cloud kernel on the unicorn CPU, booted by vlbr's loader: exceptions go
through the guest's IDT by vlbr.x86.events over vlbr.x86.paging (unicorn delivers none), the
console is COM1 (issue 11; the run loop does not reach power-off yet)."""

from __future__ import annotations

import pytest

from vlbr.arch.cpuid import Registers
from vlbr.backends.pc.cpu_model import guest_cpuid
from vlbr.backends.pc.loader import plan
from vlbr.backends.pc.machine import PcMachine
from vlbr.guest.initramfs import busybox_initramfs

RAM = 512 << 20
CMDLINE = "console=ttyS0 acpi=off nokaslr lpj=1000000"  # lpj: no timer to calibrate against


def without_xsaves(table):
    r = table.regs(0xD, 1)
    return table.replace({(0xD, 1): Registers(r.eax & ~(1 << 3), r.ebx, r.ecx, r.edx)})


def machine(image: bytes, busybox: bytes, **limits) -> PcMachine:
    return PcMachine(plan(image, busybox_initramfs(busybox), CMDLINE, RAM), RAM,
                     cpuid=without_xsaves(guest_cpuid()), **limits)


@pytest.fixture(scope="module")
def booted(debian_image, debian_busybox_bytes):
    return machine(debian_image, debian_busybox_bytes).run(120, until=b"Run /init as init process")


def test_linux_boots_to_init(booted):
    console = booted.console.decode(errors="replace")
    assert booted.stop_reason == "exit", (booted.stop_reason, booted.stop_detail, console[-2000:])
    assert "Linux version 6.1" in console
    assert "Kernel command line: " + CMDLINE in console
    # The initramfs vlbr wrote was unpacked (init/initramfs.c complains otherwise).
    assert "Initramfs unpacking failed" not in console
    assert "Run /init as init process" in console


def test_early_page_faults_went_through_the_guest_idt(booted):
    # head64.c maps the direct map on demand from its early #PF handler.
    assert booted.exceptions >= 1


def test_xsave_runs_and_linux_takes_the_arch_lbr(booted):
    console = booted.console.decode(errors="replace")
    assert "x86/fpu: Enabled xstate features" in console
    assert "Architectural LBR" in console and "32-deep LBR" in console


def test_a_run_stops_at_its_time_limit_and_says_so(debian_image, debian_busybox_bytes):
    run = machine(debian_image, debian_busybox_bytes).run(0.2)
    assert run.stop_reason == "timeout" and "0.2 s" in run.stop_detail


def test_a_chatty_guest_stops_at_the_console_limit_and_says_so(debian_image,
                                                               debian_busybox_bytes):
    run = machine(debian_image, debian_busybox_bytes, console_limit=2000).run(60)
    assert run.stop_reason == "console-limit" and "2000 bytes" in run.stop_detail
    assert len(run.console) == 2000
