"""An initramfs in the kernel's "newc" cpio format
(Documentation/driver-api/early-userspace/buffer-format.rst): files, directories, nodes."""

from __future__ import annotations

import stat
from dataclasses import dataclass

MAGIC = b"070701"
TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class Entry:
    """One archive member: a path without a leading slash, its mode, and its bytes."""
    name: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def file(name: str, data: bytes, executable: bool = False) -> Entry:
    return Entry(name, stat.S_IFREG | (0o755 if executable else 0o644), data)


def directory(name: str) -> Entry:
    return Entry(name, stat.S_IFDIR | 0o755)


def symlink(name: str, target: str) -> Entry:
    return Entry(name, stat.S_IFLNK | 0o777, target.encode())


def char_device(name: str, major: int, minor: int) -> Entry:
    return Entry(name, stat.S_IFCHR | 0o600, b"", (major, minor))


def _pad4(data: bytes) -> bytes:
    return data + bytes(-len(data) % 4)


def _member(ino: int, entry: Entry) -> bytes:
    name = entry.name.encode() + b"\0"
    nlink = 2 if stat.S_ISDIR(entry.mode) else 1
    fields = (ino, entry.mode, 0, 0, nlink, 0, len(entry.data), 0, 0, *entry.rdev,
              len(name), 0)
    header = MAGIC + b"".join(b"%08X" % f for f in fields)
    return _pad4(header + name) + _pad4(entry.data)


def archive(entries: list[Entry]) -> bytes:
    """The newc archive of entries in order (parents before children), then the trailer."""
    seen = set()
    for e in entries:
        if e.name.startswith("/") or not e.name or e.name in seen:
            raise ValueError(f"bad or repeated archive path {e.name!r}")
        seen.add(e.name)
    members = [_member(i + 1, e) for i, e in enumerate(entries)]
    members.append(_member(0, Entry(TRAILER, 0)))
    return b"".join(members)


def members(data: bytes) -> list[Entry]:
    """Read a newc archive back (what the kernel's init/initramfs.c does, minus the writing)."""
    out, at = [], 0
    while True:
        if data[at:at + 6] != MAGIC:
            raise ValueError(f"no newc header at {at}")
        f = [int(data[at + 6 + 8 * i:at + 14 + 8 * i], 16) for i in range(13)]
        mode, size, rdev, namesize = f[1], f[6], (f[9], f[10]), f[11]
        name_at = at + 110
        name = data[name_at:name_at + namesize - 1].decode()
        data_at = name_at + namesize + (-(110 + namesize) % 4)
        if name == TRAILER:
            return out
        out.append(Entry(name, mode, bytes(data[data_at:data_at + size]), rdev))
        at = data_at + size + (-size % 4)
