"""Debian's unmodified cloud kernel on the PC machine (issue 11): booted by vlbr's loader,
exceptions through the guest's IDT over vlbr.x86.paging, the PIT/8259A/16550A in virtual
time, vlbr's CPUID and MSRs, XSAVES by vlbr.x86.xstate; it runs a workload and halts."""

from __future__ import annotations

import re

import pytest

from vlbr.backends.pc.loader import plan
from vlbr.backends.pc.machine import PcMachine
from vlbr.guest.initramfs import EXIT_MARK, busybox_initramfs
from vlbr.guest.linux import DEFAULT_CMDLINE

RAM = 512 << 20
CMDLINE = DEFAULT_CMDLINE


WORKLOAD = b"""#!/bin/sh
echo "cpu flags: $(/bin/busybox grep -o -w -E 'arch_lbr|xsaves|pdcm' /proc/cpuinfo | /bin/busybox tr '\\n' ' ')"
"""


def machine(image: bytes, busybox: bytes, workload: bytes | None = None, **limits) -> PcMachine:
    return PcMachine(plan(image, busybox_initramfs(busybox, workload), CMDLINE, RAM), RAM,
                     **limits)


@pytest.fixture(scope="module")
def booted(debian_image, debian_busybox_bytes):
    return machine(debian_image, debian_busybox_bytes, WORKLOAD).run(300)


@pytest.fixture(scope="module")
def console(booted) -> str:
    return booted.console.replace(b"\r\n", b"\n").decode(errors="replace")


def test_linux_boots_runs_the_workload_and_halts(booted, console):
    assert booted.stop_reason == "halted", (booted.stop_reason, booted.stop_detail,
                                            console[-3000:])
    assert "Linux version 6.1" in console
    assert "Kernel command line: " + CMDLINE in console
    # The initramfs vlbr wrote was unpacked (init/initramfs.c complains otherwise).
    assert "Initramfs unpacking failed" not in console
    assert "Run /init as init process" in console
    assert f"{EXIT_MARK} 0" in console
    assert "reboot: System halted" in console  # poweroff without ACPI halts (kernel/reboot.c)


def test_early_page_faults_went_through_the_guest_idt(booted):
    # head64.c maps the direct map on demand from its early #PF handler.
    assert booted.exceptions >= 1


def test_linux_takes_the_arch_lbr_with_its_xsaves_path(console):
    # arch/x86/events/intel/lbr.c intel_pmu_arch_lbr_init(): "XSAVE " only when XSAVES
    # exists and CPUID.(0xD,0xF) is 40 + 24 * depth; the depth from leaf 0x1C.
    assert "Performance Events: XSAVE Architectural LBR, " in console
    assert "32-deep LBR" in console
    assert "using 'compacted' format" in console  # arch/x86/kernel/fpu/xstate.c: XSAVES


def test_the_guest_lists_arch_lbr_in_proc_cpuinfo(console):
    line = next(x for x in console.splitlines() if x.startswith("cpu flags:"))
    assert set(line.split()[2:]) == {"arch_lbr", "xsaves", "pdcm"}


def test_every_msr_linux_touches_unguarded_exists(console):
    # arch/x86/lib/msr.c: an RDMSR/WRMSR without an exception fixup that #GPs is reported.
    assert "unchecked MSR access error" not in console


def test_the_local_apic_is_found_and_the_8259a_reaches_it_through_lint0(console):
    # arch/x86/kernel/apic/apic.c __apic_intr_mode_select(): no MADT or MP table, so virtual
    # wire (LINT0 ExtINT) with the 8259A behind it.
    assert "APIC: Switch to virtual wire mode setup with no configuration" in console
    assert "no hardware sampling interrupt" not in console  # events/core.c pmu_check_apic()


def test_com1_is_detected_as_a_16550a_on_irq_4(console):
    # drivers/tty/serial/8250/8250_port.c autoconfig(): scratch, loopback and FIFO tests.
    assert "ttyS0 at I/O 0x3f8 (irq = 4, base_baud = 115200) is a 16550A" in console


def test_time_advances_through_the_pit(console):
    # The 8254's IRQ 0 through the 8259A drives jiffies: printk timestamps move.
    stamps = [float(m) for m in re.findall(r"^\[\s*(\d+\.\d+)\]", console, re.M)]
    assert stamps and stamps[-1] > 0.5


def test_a_boot_is_reproducible(booted, debian_image, debian_busybox_bytes):
    # Virtual time is instructions retired; no host time or randomness reaches the guest
    # (cpu_model.py leaves out RDRAND and the TSC leaves; RDTSC reads virtual time).
    again = machine(debian_image, debian_busybox_bytes, WORKLOAD).run(300)
    assert again.instructions == booted.instructions > 0
    assert again.console == booted.console


def test_a_run_stops_at_its_time_limit_and_says_so(debian_image, debian_busybox_bytes):
    run = machine(debian_image, debian_busybox_bytes).run(0.2)
    assert run.stop_reason == "timeout" and "0.2 s" in run.stop_detail


def test_a_chatty_guest_stops_at_the_console_limit_and_says_so(debian_image,
                                                               debian_busybox_bytes):
    run = machine(debian_image, debian_busybox_bytes, console_limit=2000).run(120)
    assert run.stop_reason == "console-limit" and "2000 bytes" in run.stop_detail
    assert len(run.console) == 2000
