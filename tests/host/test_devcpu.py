"""The live host through /dev/cpu/N/cpuid, checked against the CPUID instruction via Debian cpuid."""

from __future__ import annotations

import os
import shutil
import subprocess
import struct

import pytest

from vlbr.arch.cpuid import Registers
from vlbr.errors import CpuidFormatError
from vlbr.host import cpuid_raw, live_host_cpus
from vlbr.host.devcpu import enumerate_cpuid, read_device


def have_devcpu() -> bool:
    return os.access("/dev/cpu/0/cpuid", os.R_OK)


@pytest.mark.skipif(not have_devcpu(), reason="/dev/cpu/0/cpuid is not readable here")
def test_every_online_cpu_is_read():
    cpus = live_host_cpus()
    assert [c.index for c in cpus] == sorted(int(n) for n in os.listdir("/dev/cpu") if n.isdigit())
    assert all(c.table.query(0) is not None for c in cpus)


@pytest.mark.skipif(not have_devcpu(), reason="/dev/cpu/0/cpuid is not readable here")
@pytest.mark.skipif(shutil.which("cpuid") is None, reason="Debian cpuid tool not installed")
def test_same_rows_as_debian_cpuid_tool():
    # `cpuid -r` executes CPUID itself; the device answers must be the same rows and values.
    tool = cpuid_raw.parse(subprocess.run(["cpuid", "-r"], capture_output=True, text=True,
                                          check=True).stdout, "cpuid -r")
    ours = live_host_cpus()
    assert [c.index for c in ours] == [c.index for c in tool]
    for mine, theirs in zip(ours, tool):
        assert mine.table == theirs.table


@pytest.mark.skipif(not have_devcpu(), reason="/dev/cpu/0/cpuid is not readable here")
def test_pread_offset_encodes_subleaf():
    # CPUID.(0xD,1) differs from (0xD,0) on any XSAVE CPU: subleaf goes in offset bits 63:32.
    fd = os.open("/dev/cpu/0/cpuid", os.O_RDONLY)
    try:
        sub0 = os.pread(fd, 16, 0xD)
        sub1 = os.pread(fd, 16, 0xD | 1 << 32)
    finally:
        os.close(fd)
    table = read_device("/dev/cpu/0/cpuid")
    assert table[(0xD, 0)] == Registers(*struct.unpack("<4I", sub0))
    assert table[(0xD, 1)] == Registers(*struct.unpack("<4I", sub1))


def test_missing_device_and_empty_dir(tmp_path):
    with pytest.raises(CpuidFormatError, match="no N/cpuid devices"):
        live_host_cpus(tmp_path)
    (tmp_path / "0").mkdir()
    with pytest.raises(CpuidFormatError, match="cannot open") as err:
        live_host_cpus(tmp_path)
    assert "0/cpuid" in err.value.source
    with pytest.raises(CpuidFormatError, match="cannot list"):
        live_host_cpus(tmp_path / "nope")


def test_short_read_is_an_error(tmp_path):
    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "cpuid").write_bytes(b"\1" * 8)
    with pytest.raises(CpuidFormatError, match="read 8 bytes"):
        live_host_cpus(tmp_path)


def test_enumeration_follows_leaf_0xd_masks_and_leaf_7_max():
    # A synthetic CPU: XCR0 = x87|SSE|AVX, XSS = bit 15 (Arch LBR), 7.0 EAX = 1, max leaf 0x1C.
    answers = {(0, 0): Registers(0x1C, 0, 0, 0), (7, 0): Registers(1, 0, 0, 1 << 19),
               (0xD, 0): Registers(0x7, 0, 0, 0), (0xD, 1): Registers(0xF, 0, 1 << 15, 0),
               (0xD, 15): Registers(0x328, 0, 1, 0), (0x1C, 0): Registers(0x4000000B, 7, 7, 0)}
    table = enumerate_cpuid(lambda leaf, sub: answers.get((leaf, sub), Registers()))
    assert table.subleaves(0xD) == [0, 1, 2, 15]
    assert table.subleaves(7) == [0, 1]
    assert table[(0x1C, 0)] == Registers(0x4000000B, 7, 7, 0)


def test_cache_leaf_terminators_as_debian_cpuid_lists_them():
    # An Intel-like CPU: leaf 4 (SDM Vol. 2A CPUID, leaf 04H: type 0 = no more caches) has four
    # caches; AMD's 0x8000001D the same. Debian `cpuid -r` prints leaf 4's terminator subleaf 4
    # (seen on Intel hosts) and stops before 0x8000001D's (seen on this AMD host).
    caches = {sub: Registers(0x121 + sub, 0x1C0003F, 0x3F, 0) for sub in range(4)}
    answers = {(0, 0): Registers(0x4, 0, 0, 0), (0x80000000, 0): Registers(0x8000001D, 0, 0, 0)}
    answers.update({(4, s): r for s, r in caches.items()})
    answers.update({(0x8000001D, s): r for s, r in caches.items()})
    table = enumerate_cpuid(lambda leaf, sub: answers.get((leaf, sub), Registers()))
    assert table.subleaves(4) == [0, 1, 2, 3, 4] and table[(4, 4)] == Registers()
    assert table.subleaves(0x8000001D) == [0, 1, 2, 3]
    # A CPU without leaf 4 data (AMD) answers zeros at subleaf 0: that row alone.
    amd = enumerate_cpuid(lambda leaf, sub: Registers(0x4) if (leaf, sub) == (0, 0) else Registers())
    assert amd.subleaves(4) == [0]
