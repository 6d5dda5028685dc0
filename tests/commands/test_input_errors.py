"""Through the installed `vlbr` script (issue 8): every bad file argument and option value is
one line `vlbr: error: ...` with exit 2, a failed check exits 1, and overflowing dumps name
the file and leaf."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vlbr.host import LogicalCpu, read_cpuid_file, to_json
from vlbr.policy import emulated_guest_cpuid

from corpus import CPUID_RAW_DUMP, INSTLATX64

VLBR = str(Path(sys.executable).parent / "vlbr")
RAW = str(CPUID_RAW_DUMP)
ALDER_LAKE = INSTLATX64 / "GenuineIntel0090672_AlderLake_01_LC_BC_CPUID.txt"
SPR = str(INSTLATX64 / "GenuineIntel00806F8_SapphireRapids_05_CPUID.txt")
# Readable by open() for any user, root included, but every read fails with EIO.
UNREADABLE = "/proc/self/mem"


def vlbr(*args) -> subprocess.CompletedProcess:
    return subprocess.run([VLBR, *map(str, args)], capture_output=True, text=True, timeout=120)


def assert_one_line_error(done, *words) -> None:
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("vlbr: error: "), done.stderr
    for word in words:
        assert word in lines[0]


# Each command with one file argument replaced by {} (the others are a good dump).
FILE_ARGS = [
    ("cpuid", "show", "{}"), ("cpuid", "convert", "{}", "--to", "raw"),
    ("kvm", "supported", "{}"), ("kvm", "check", "{}", "--host", RAW),
    ("kvm", "check", RAW, "--host", "{}"), ("migrate-check", "{}", RAW),
    ("migrate-check", "--hosts", RAW, "{}"), ("report", "{}"),
]


# report takes directories of dumps (tests/commands/test_report.py), so not that pair.
BAD_FILES = [(argv, kind) for argv in FILE_ARGS
             for kind in ("directory", "missing", "unreadable", "dev-zero")
             if (argv[0], kind) != ("report", "directory")]


@pytest.mark.parametrize("argv, kind", BAD_FILES, ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_bad_file_argument(corpus_dir, tmp_path, argv, kind):
    path = {"directory": tmp_path, "missing": tmp_path / "nope.txt",
            "unreadable": UNREADABLE, "dev-zero": "/dev/zero"}[kind]
    done = vlbr(*(str(path) if a == "{}" else a for a in argv))
    assert "Traceback" not in done.stderr
    if kind == "dev-zero" and argv[0] == "report":
        # It reads but is no dump: listed as not read, the run's status 1 (README).
        assert done.returncode == 1 and f"not read {path}: {path}: larger than" in done.stdout
        return
    assert_one_line_error(done)
    if kind != "directory":
        assert str(path) in done.stderr


@pytest.mark.parametrize("argv, words", [
    (("cpuid", "convert", RAW, "--to", "raw", "-o", "/proc/vlbr-nope/x.txt"), ["x.txt"]),
    (("cpuid", "convert", RAW, "--to", "raw", "-o", "{tmp}"), ["is a directory"]),
    (("report", RAW, "--svg", "/proc/vlbr-nope/r.svg"), ["r.svg"]),
    (("report", RAW, "--svg", "{tmp}"), ["is a directory"]),
])
def test_unwritable_output(corpus_dir, tmp_path, argv, words):
    done = vlbr(*(a.replace("{tmp}", str(tmp_path)) for a in argv))
    assert_one_line_error(done, *words)


@pytest.mark.parametrize("argv, words", [
    (("kvm", "supported", RAW, "--host-xss", "-1"), ["--host-xss", "64-bit"]),
    (("kvm", "supported", RAW, "--host-xss", str(2**64)), ["--host-xss", "64-bit"]),
    (("kvm", "check", RAW, "--host", RAW, "--host-xss", str(2**64)), ["--host-xss"]),
    (("kvm", "supported", RAW, "--depth", "-8"), ["--depth"]),
    (("kvm", "supported", RAW, "--depth", "65"), ["--depth"]),
    (("kvm", "supported", RAW, "--cpu", "-1"), ["--cpu"]),
    (("cpuid", "show", RAW, "--cpu", "-1"), ["--cpu"]),
    (("cpuid", "show", RAW, "--cpu", str(2**32)), ["--cpu"]),
    (("migrate-check", RAW, RAW, "--cpu", "-1"), ["--cpu"]),
    (("migrate-check", RAW, RAW, "--depth", "16"), ["--depth has no effect without --hosts"]),
    (("migrate-check", RAW, RAW, "--variant", "v3"), ["--variant has no effect without --hosts"]),
    (("migrate-check", "--hosts", RAW, RAW, "--cpu", "0"), ["--cpu has no effect with --hosts"]),
])
def test_option_out_of_range_or_without_effect(corpus_dir, argv, words):
    assert_one_line_error(vlbr(*argv), *words)


def test_full_64_bit_host_xss_is_accepted(corpus_dir):
    assert vlbr("kvm", "supported", RAW, "--host-xss", hex(2**64 - 1), "--json").returncode == 0


def test_failed_checks_exit_1(corpus_dir, tmp_path):
    # An SPR guest view under v3 on an AMD host: KVM_SET_CPUID2 refuses Arch LBR.
    done = vlbr("kvm", "check", SPR, "--host", RAW, "--variant", "v3")
    assert done.returncode == 1 and "-EINVAL" in done.stdout and not done.stderr
    assert vlbr("kvm", "check", RAW, "--host", RAW).returncode == 0
    base = read_cpuid_file(CPUID_RAW_DUMP)[0].table
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(to_json([LogicalCpu(0, emulated_guest_cpuid(base, 32))]))
    b.write_text(to_json([LogicalCpu(0, emulated_guest_cpuid(base, 16))]))
    done = vlbr("migrate-check", a, b)
    assert done.returncode == 1 and "LBR depth: source 32, destination 16" in done.stdout
    assert vlbr("migrate-check", a, a).returncode == 0
    assert vlbr("migrate-check", "--hosts", SPR, RAW, "--variant", "v3").returncode == 1


@pytest.fixture
def overflowing(corpus_dir, tmp_path) -> Path:
    """Alder Lake with CPUID.(0xD,2):EAX (the AVX size) = 0xFFFFFFFF."""
    text = ALDER_LAKE.read_text().replace(
        "CPUID 0000000D: 00000100-00000240-00000000-00000000 [SL 02]",
        "CPUID 0000000D: FFFFFFFF-00000240-00000000-00000000 [SL 02]")
    assert "FFFFFFFF-00000240" in text
    path = tmp_path / "ovf.txt"
    path.write_text(text)
    return path


@pytest.mark.parametrize("argv", [
    ("kvm", "supported", "{}"), ("kvm", "check", RAW, "--host", "{}"),
    ("migrate-check", "--hosts", "{}", RAW), ("cpuid", "show", "{}", "--json"),
], ids=" ".join)
def test_overflowing_dump_names_file_and_leaf(overflowing, argv):
    # Before: "ValueError: ebx=4294968727 is not a 32-bit register value" and a traceback.
    done = vlbr(*(str(overflowing) if a == "{}" else a for a in argv))
    assert_one_line_error(done, f"{overflowing}:", "CPUID (0xd, 0x2)")


def test_report_lists_an_overflowing_dump_as_not_read_and_goes_on(overflowing):
    done = vlbr("report", overflowing, RAW)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "not read" in done.stdout and "CPUID (0xd, 0x2)" in done.stdout
    assert "1 core types in 1 dumps" in done.stdout  # the AMD dump is still reported


def test_unreadable_path_inside_report_still_reported_otherwise(corpus_dir, tmp_path):
    (tmp_path / "garbage.txt").write_text("CPUID 1C: 0-0-0-0\n")
    (tmp_path / "raw.txt").write_bytes(CPUID_RAW_DUMP.read_bytes())
    done = vlbr("report", tmp_path, "--json")
    assert done.returncode == 1
    assert '"error"' in done.stdout and "garbage.txt:1" in done.stdout


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
def test_dev_zero_is_a_size_error(corpus_dir):
    assert_one_line_error(vlbr("cpuid", "show", "/dev/zero"), "/dev/zero", "larger than 64 MiB")


@pytest.mark.parametrize("line", [
    "CPUID 1C: 4000000B-00000007-00000007-00000000",
    "CPUID 0000001C: 4000000B-00000007-00000007-00000000-00000000",
])
def test_line_that_looks_like_cpuid_data_names_the_line(tmp_path, line):
    dump = tmp_path / "dump.txt"
    dump.write_text("CPUID 00000000: 0000001C-756E6547-6C65746E-49656E69\n" + line + "\n")
    assert_one_line_error(vlbr("cpuid", "show", dump), f"{dump}:2:", "CPUID ")


@pytest.mark.parametrize("args,named", [
    (["--kernel", "/nonexistent/bzImage"], "cannot read kernel"),
    (["--backend", "kvm"], "cannot boot Linux"),
    (["--depth", "12"], "12"),
    (["--run", "x.c", "--initrd", "y"], "--initrd"),
])
def test_linux_bad_input_is_one_error_line(args, named):
    done = subprocess.run([VLBR, "linux", *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vlbr: error: ") and named in lines[0]


def test_linux_run_of_a_program_gcc_rejects(tmp_path):
    bad = tmp_path / "broken.c"
    bad.write_text("int main(void) { return }\n")
    done = subprocess.run([VLBR, "linux", "--run", str(bad)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and "broken.c" in done.stderr and "Traceback" not in done.stderr


def test_bad_kvm_recording_is_one_error_line():
    assert_one_line_error(vlbr("run", "hello", "--kvm-recording", "fast"), "--kvm-recording",
                          "hybrid", "step")
