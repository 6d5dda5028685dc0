"""Every guest run stops, says why, and `vlbr` exits as the README's exit-status table says.

Through the installed console script (issue: hardening): 0 when every vCPU exited 0, 1 when a
guest exited non-zero or stopped otherwise, 2 for usage and input errors, 130 on SIGINT."""

from __future__ import annotations

import json
import signal
import time

import pytest

from vlbr.backends.base import StopReason
from vlbr.backends.registry import make_backend
from vlbr_script import one_error_line, start, vlbr

BACKENDS = [pytest.param(name, marks=pytest.mark.skipif(
    make_backend(name).unavailable_reason() is not None,
    reason=f"backend {name}: {make_backend(name).unavailable_reason()}"))
    for name in ("software", "kvm")]

GUESTS = {
    "status3": 'rt_printf("bye\\n"); return 3;',
    "spin": 'rt_printf("spinning\\n"); for (;;) ; return 0;',
    "msr_loop": "u64 v; for (;;) rdmsr_safe(0x14ce, &v); return 0;",
    "yield_loop": "for (;;) rt_yield(); return 0;",
    "flood": "for (;;) rt_putc('x'); return 0;",
    "escape": 'rt_printf("red \\x1b[31mX\\x1b[0m bell \\a cr \\r end\\n"); return 0;',
    # PML4[0] = 0 unmaps all of RAM: the #PF cannot be delivered (stack, IDT unmapped).
    "no_page_tables": 'rt_printf("unmapping\\n"); *(volatile u64 *)0x1000 = 0; '
                      '__asm__ volatile("mov rax, cr3; mov cr3, rax" ::: "rax", "memory"); '
                      'return *(volatile int *)0x300000;',
    # AVX (XCR0 bit 2) is the one XSAVE component the software backend does not emulate.
    "xsaves_addr32": "static u8 area[4096] __attribute__((aligned(64))); "
                     "wrmsr(0xda0, 1ull << 15); "
                     '__asm__ volatile("xsaves64 [ecx]" :: "c"((u32)(u64)area), "a"(0x8003), '
                     '"d"(0) : "memory"); return 0;',
    "xsetbv_avx": "struct fault_ctx *f = rt_fault(); f->vector = NO_FAULT; "
                  '__asm__ volatile(ASM_TRY("1f") "xsetbv\\n\\t1:\\n\\t" :: "a"(7), "d"(0), '
                  '"c"(0), [recover] "r"(&f->recover) : "r11", "memory"); f->recover = 0; '
                  'rt_printf("xsetbv vector %x\\n", f->vector); return 0;',
}


@pytest.fixture(scope="module")
def guests(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("guests")
    paths = {}
    for name, body in GUESTS.items():
        paths[name] = root / f"{name}.c"
        paths[name].write_text('#include "runtime.h"\n'
                               f"int guest_main(int cpu, int ncpus) {{ {body} }}\n")
    return paths


def run_json(*args) -> tuple[int, dict]:
    done = vlbr("run", *args, "--json")
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, json.loads(done.stdout)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_zero_guest_status_exits_1_and_says_so(backend, guests):
    done = vlbr("run", guests["status3"], "--backend", backend)
    assert done.returncode == 1, done.stderr
    assert "exit status 3" in done.stdout and "bye" in done.stdout
    code, doc = run_json(guests["status3"], "--backend", backend)
    vcpu = doc["vcpus"][0]
    assert code == 1 and not doc["ok"]
    assert (vcpu["exit_status"], vcpu["stop_reason"]) == (3, StopReason.EXIT)


@pytest.mark.parametrize("backend", BACKENDS)
def test_runaway_guests_end_on_a_budget_not_the_clock(backend, guests):
    # A console flood, a yield loop and an LBR MSR loop used to run for minutes: each now ends
    # on a budget (exits, steps or console bytes) well before the default --timeout.
    for name in ("msr_loop", "yield_loop", "flood"):
        code, doc = run_json(guests[name], "--backend", backend)
        vcpu = doc["vcpus"][0]
        assert code == 1, name
        assert vcpu["stop_reason"] in (StopReason.STEP_BUDGET, StopReason.CONSOLE_LIMIT), vcpu
        assert vcpu["exit_status"] is None and vcpu["stop_detail"]


def test_kvm_guest_spinning_without_exits_stops_at_the_timeout(guests):
    # KVM_RUN never returns for `for (;;);`: the watchdog kicks it (immediate_exit + signal).
    if make_backend("kvm").unavailable_reason() is not None:
        pytest.skip(f"kvm: {make_backend('kvm').unavailable_reason()}")
    code, doc = run_json(guests["spin"], "--backend", "kvm", "--timeout", "1")
    vcpu = doc["vcpus"][0]
    assert code == 1 and vcpu["stop_reason"] == StopReason.TIMEOUT
    assert "limit 1 s" in vcpu["stop_detail"]
    assert vcpu["console"] == "spinning\n"  # what it wrote before the stop is kept
    text = vlbr("run", guests["spin"], "--backend", "kvm", "--timeout", "1")
    assert text.returncode == 1 and "stopped: timeout" in text.stdout and "spinning" in text.stdout


@pytest.mark.parametrize("backend", BACKENDS)
def test_sigint_ends_the_run_with_130_and_no_result(backend, guests):
    # The software backend used to swallow KeyboardInterrupt in unicorn's ctypes callbacks and
    # report spurious results with exit 0.
    guest = guests["msr_loop" if backend == "software" else "spin"]
    proc = start("run", guest, "--backend", backend, "--timeout", "60")
    time.sleep(2.0)  # built (cached) and running
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, (out, err)
    assert "vlbr: interrupted" in err
    assert "Traceback" not in err and "Exception ignored" not in err
    assert "stack" not in out  # no partial result printed


def test_console_bytes_are_escaped(guests):
    done = vlbr("run", guests["escape"], "--backend", "software")
    assert done.returncode == 0, done.stderr
    assert "\x1b" not in done.stdout and "\a" not in done.stdout and "\r" not in done.stdout
    assert "red \\x1b[31mX\\x1b[0m bell \\x07 cr \\x0d end" in done.stdout
    _, doc = run_json(guests["escape"], "--backend", "software")
    assert "\x1b[31m" in doc["vcpus"][0]["console"]  # JSON keeps the bytes (json escapes them)


def test_options_without_effect_are_usage_errors():
    assert "--svg" in one_error_line(vlbr("run", "hello", "--json", "--svg", "x.svg"))
    assert "--summary" in one_error_line(vlbr("conformance", "--json", "--summary"))
    assert "--timeout" in one_error_line(vlbr("run", "hello", "--timeout", "0"))
    assert "--timeout" in one_error_line(vlbr("conformance", "--timeout", "-1"))


def test_timeout_is_in_the_help():
    for cmd in ("run", "conformance"):
        done = vlbr(cmd, "--help")
        assert done.returncode == 0 and "--timeout SECONDS" in done.stdout


def test_guest_compile_errors_in_any_encoding_are_one_line(tmp_path):
    src = tmp_path / "latin1.c"
    src.write_bytes(b'#include "runtime.h"\nint guest_main(int c, int n) { \xff\xfe oops; }\n')
    line = one_error_line(vlbr("run", src))
    assert "latin1.c" in line and "error:" in line
    assert "missing" in one_error_line(vlbr("run", tmp_path / "missing.c"))


def test_conformance_cut_short_by_the_timeout_fails_with_the_reason():
    # No partial result is a pass: checks the guest never reported fail, naming the stop.
    done = vlbr("conformance", "--backend", "software", "--json", "--timeout", "0.001")
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout.splitlines()[0])
    assert report["failed"] > 0
    assert any("timeout" in r["detail"] for r in report["results"] if r["status"] == "fail")


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_unmapped_page_table_is_a_shutdown_on_both_backends(backend, guests):
    # KVM: a triple fault (KVM_EXIT_SHUTDOWN). The software backend delivers without a page
    # walk and used to loop on #PF until the budget; it now says why it stops (SDM 6.15 #DF).
    code, doc = run_json(guests["no_page_tables"], "--backend", backend)
    vcpu = doc["vcpus"][0]
    assert code == 1 and vcpu["stop_reason"] == StopReason.SHUTDOWN, vcpu
    assert vcpu["console"] == "unmapping\n"


def test_what_the_software_backend_cannot_run_is_named_in_the_stop(guests):
    code, doc = run_json(guests["xsaves_addr32"], "--backend", "software")
    vcpu = doc["vcpus"][0]
    assert code == 1 and vcpu["stop_reason"] == StopReason.UNSUPPORTED
    assert "address register" in vcpu["stop_detail"] and "xsaves" in vcpu["stop_detail"]


def test_xcr0_avx_on_the_software_cpu_is_the_architectural_gp(guests):
    # Its CPUID.(0xD,0) offers x87|SSE only (unicorn runs no AVX), so XSETBV of bit 2 is
    # #GP(0) (SDM vol. 2 XSETBV), not a stop.
    code, doc = run_json(guests["xsetbv_avx"], "--backend", "software")
    vcpu = doc["vcpus"][0]
    assert code == 0 and vcpu["console"] == "xsetbv vector 0xd\n", vcpu
