"""Every file-taking command on mutated real dumps (issue 8): a run either works (0, or 1 for
a failed check / a dump report could not read) or ends with exactly one `vlbr: error:` line
and status 2; no other exception escapes cli.main."""

from __future__ import annotations

import contextlib
import io
import re
import sys

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from vlbr import cli
from vlbr.host import read_cpuid_file, to_json

from corpus import CPUID_RAW_DUMP, FIRECRACKER, INSTLATX64, LIBVIRT, has_corpus

pytestmark = pytest.mark.skipif(not has_corpus(), reason="no CPUID corpus on this machine")

SEEDS = {
    "aida64": INSTLATX64 / "GenuineIntel0090675_AlderLake_00_CPUID.txt",
    "cpuid-raw": CPUID_RAW_DUMP,
    "libvirt": LIBVIRT / "x86_64-cpuid-Xeon-6731E.xml",
    "firecracker": FIRECRACKER / "fingerprint_INTEL_SAPPHIRE_RAPIDS_6.1host.json",
}
COMMANDS = [
    ["cpuid", "show", "{}", "--json"], ["cpuid", "convert", "{}", "--to", "raw"],
    ["kvm", "supported", "{}", "--json"], ["kvm", "check", "{}", "--host", "{}"],
    ["migrate-check", "--hosts", "{}", "{}"], ["migrate-check", "{}", "{}", "--cpu", "0"],
    ["report", "{}", "--json"],
]
HEX_WORD = re.compile(rb"[0-9A-Fa-f]{8}|\b\d+\b")


def seed_bytes(kind: str) -> bytes:
    if kind == "vlbr-json":
        return to_json(read_cpuid_file(CPUID_RAW_DUMP)).encode()
    return SEEDS[kind].read_bytes()


@st.composite
def value_mutation(draw, data: bytes) -> bytes:
    """Replace some register-like words (8 hex digits or a JSON number) with edge values."""
    words = list(HEX_WORD.finditer(data))
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        m = words[draw(st.integers(0, len(words) - 1))]
        value = draw(st.sampled_from([0, 1, 0xFFFFFFFF, 0x80000000, 2**32, -1, 0x7FFFFFFF])
                     | st.integers(0, 2**32 - 1))
        # 8 hex digits stay 8 hex digits (the register reached the policy); others become a number.
        hex8 = len(m.group()) == 8 and not m.group().isdigit()
        new = (f"{value & 0xFFFFFFFF:08X}" if hex8 else str(value)).encode()
        out[m.start():m.end()] = new
        words = list(HEX_WORD.finditer(out))
    return bytes(out)


@st.composite
def byte_mutation(draw, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(0, len(out)))
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if op == "flip" and at < len(out):
            out[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del out[at:at + draw(st.integers(1, 64))]
        else:
            del out[at:]
    return bytes(out)


def run_main(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    old = sys.argv
    sys.argv = ["vlbr", *argv]
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            cli.main()
    except SystemExit as done:
        return done.code, err.getvalue()
    finally:
        sys.argv = old
    raise AssertionError("cli.main returned without exiting")


def check_outcome(argv: list[str], status: int, stderr: str) -> None:
    assert status in (0, 1, 2), (argv, status, stderr)
    if status == 2:
        lines = stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("vlbr: error: "), (argv, stderr)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


KINDS = ["aida64", "cpuid-raw", "libvirt", "firecracker", "vlbr-json"]


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                    HealthCheck.data_too_large])
@given(data=st.data())
def test_mutated_dumps_work_or_give_one_error_line(workdir, kind, data):
    seed = seed_bytes(kind)
    mutate = data.draw(st.sampled_from([byte_mutation, value_mutation]))
    mutated = data.draw(mutate(seed))
    suffix = ".json" if kind == "vlbr-json" else SEEDS[kind].suffix
    path = workdir / f"mutated-{kind}{suffix}"
    path.write_bytes(mutated)
    command = data.draw(st.sampled_from(COMMANDS))
    argv = [str(path) if a == "{}" else a for a in command]
    status, stderr = run_main(argv)
    check_outcome(argv, status, stderr)


def test_fuzz_harness_sees_errors_and_successes(workdir):
    # The harness can tell a clean error from success (so the fuzz test could fail).
    good = workdir / "good.txt"
    good.write_bytes(CPUID_RAW_DUMP.read_bytes())
    assert run_main(["cpuid", "show", str(good), "--json"])[0] == 0
    bad = workdir / "bad.txt"
    bad.write_bytes(b"CPUID 1C: 1-2-3-4\n")
    status, stderr = run_main(["cpuid", "show", str(bad)])
    assert status == 2 and stderr.startswith(f"vlbr: error: {bad}:1:")
