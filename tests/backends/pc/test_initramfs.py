"""The newc writer (Documentation/driver-api/early-userspace/buffer-format.rst), read back by
our reader and by Debian's own cpio."""

from __future__ import annotations

import stat
import subprocess

import pytest
from hypothesis import given, strategies as st

from vlbr.backends.pc import initramfs as cpio
from vlbr.guest.debian import PackageUnavailable, debian_busybox, unpacked
from vlbr.guest.initramfs import EXIT_MARK, busybox_initramfs

names = st.lists(st.text("abcxyz_.0", min_size=1, max_size=12), min_size=1, max_size=8,
                 unique=True)


@given(names, st.data())
def test_archive_reads_back(paths, data):
    entries = [cpio.file(p, data.draw(st.binary(max_size=40))) for p in paths]
    assert cpio.members(cpio.archive(entries)) == entries


def test_every_header_and_name_is_4_byte_aligned():
    blob = cpio.archive([cpio.file("a", b"x"), cpio.directory("bc"), cpio.symlink("d", "a")])
    at = 0
    for _ in range(4):
        assert blob[at:at + 6] == cpio.MAGIC and at % 4 == 0
        at = blob.index(cpio.MAGIC, at + 1) if cpio.MAGIC in blob[at + 1:] else len(blob)
    assert len(blob) % 4 == 0


def test_paths_must_be_relative_and_unique():
    with pytest.raises(ValueError):
        cpio.archive([cpio.file("/init", b"")])
    with pytest.raises(ValueError):
        cpio.archive([cpio.file("a", b""), cpio.file("a", b"")])


@pytest.fixture(scope="module")
def debian_cpio():
    try:
        return unpacked("cpio") / "bin" / "cpio"
    except PackageUnavailable as err:
        pytest.skip(f"Debian's cpio cannot be fetched here: {err}")


def test_debian_cpio_lists_and_extracts_our_archive(debian_cpio, tmp_path):
    blob = cpio.archive([cpio.directory("bin"), cpio.file("bin/tool", b"#!/bin/sh\n", True),
                         cpio.symlink("bin/sh", "tool"), cpio.file("init", b"hello")])
    listing = subprocess.run([debian_cpio, "-t"], input=blob, capture_output=True, check=True)
    assert listing.stdout.decode().split() == ["bin", "bin/tool", "bin/sh", "init"]
    subprocess.run([debian_cpio, "-id", "--no-absolute-filenames"], input=blob, cwd=tmp_path,
                   capture_output=True, check=True)
    assert (tmp_path / "init").read_bytes() == b"hello"
    assert (tmp_path / "bin/sh").readlink().name == "tool"
    assert (tmp_path / "bin/tool").stat().st_mode & 0o111


def test_default_initramfs_has_busybox_init_and_console():
    try:
        busybox = debian_busybox().read_bytes()
    except PackageUnavailable as err:
        pytest.skip(f"busybox-static cannot be fetched here: {err}")
    entries = {e.name: e for e in cpio.members(busybox_initramfs(busybox, b"\x7fELF"))}
    assert entries["bin/busybox"].data == busybox and busybox.startswith(b"\x7fELF")
    assert stat.S_ISCHR(entries["dev/console"].mode) and entries["dev/console"].rdev == (5, 1)
    init = entries["init"].data.decode()
    assert init.startswith("#!/bin/sh") and EXIT_MARK in init and "poweroff -f" in init
    assert entries["workload"].mode & 0o111
