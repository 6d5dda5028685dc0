"""The default Linux guest userland: busybox-static and a small /init that runs the workload,
prints its exit status on the console and powers the guest off."""

from __future__ import annotations

from pathlib import PurePosixPath

from vlbr.backends.pc import initramfs as cpio

EXIT_MARK = "vlbr-exit-status:"  # the line vlbr reads the workload's status from
INIT_SCRIPT = f"""#!/bin/sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs dev /dev 2>/dev/null
if [ -x /workload ]; then /workload; else /bin/busybox uname -a; fi
echo "{EXIT_MARK} $?"
/bin/busybox poweroff -f
"""


def busybox_initramfs(busybox: bytes, workload: bytes | None = None,
                      extra: dict[str, bytes] | None = None) -> bytes:
    """An initramfs: /bin/busybox (and sh), /dev/console, /proc, /sys, /init, the workload and
    `extra` files (path -> bytes, executable; their directories are made)."""
    entries = [cpio.directory(d) for d in ("bin", "dev", "proc", "sys", "tmp")]
    entries += _extra(extra or {})
    entries += [cpio.char_device("dev/console", 5, 1),
                cpio.file("bin/busybox", busybox, executable=True),
                cpio.symlink("bin/sh", "busybox"),
                cpio.file("init", INIT_SCRIPT.encode(), executable=True)]
    if workload is not None:
        entries.append(cpio.file("workload", workload, executable=True))
    return cpio.archive(entries)


def _extra(files: dict[str, bytes]) -> list:
    parents = sorted({str(p) for name in files for p in PurePosixPath(name).parents
                      if str(p) not in (".", "bin", "dev", "proc", "sys", "tmp")})
    return ([cpio.directory(d) for d in parents]
            + [cpio.file(name, data, executable=True) for name, data in sorted(files.items())])
