"""Debian packages a Linux guest is made of, fetched with apt-get into a cache outside the repo."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from vlbr.errors import VlbrError

KERNEL_PACKAGE = "linux-image-cloud-amd64"  # a metapackage: it depends on the versioned image
BUSYBOX_PACKAGE = "busybox-static"
APT_TIMEOUT = 600


class PackageUnavailable(VlbrError):
    """apt-get cannot fetch or unpack the package here."""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vlbr" / "debian"


def run_tool(args: list[str], where: Path | None = None) -> str:
    """A package tool's output; PackageUnavailable names the command when it fails."""
    if shutil.which(args[0]) is None:
        raise PackageUnavailable(f"{args[0]} is not installed")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        done = subprocess.run(args, cwd=where, capture_output=True, text=True, env=env,
                              timeout=APT_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise PackageUnavailable(f"{' '.join(args)} took over {APT_TIMEOUT} s") from None
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise PackageUnavailable(f"{' '.join(args)} failed: {last}")
    return done.stdout


def apt(args: list[str], where: Path | None = None) -> str:
    """An apt command; on a fresh machine the package lists come first (apt-get update)."""
    try:
        return run_tool(args, where)
    except PackageUnavailable:
        run_tool(["apt-get", "update", "-qq"])
        return run_tool(args, where)


def apt_install(package: str) -> None:
    apt(["apt-get", "install", "-y", "-qq", package])


def resolve(package: str) -> str:
    """The versioned package a metapackage stands for (itself when it is not one)."""
    listing = apt(["apt-cache", "depends", package])
    for line in listing.splitlines():
        if line.strip().startswith("Depends:"):
            return line.strip().removeprefix("Depends:").strip()
    return package


def _download(package: str, where: Path) -> None:
    apt(["apt-get", "download", package], where)


def unpacked(package: str) -> Path:
    """The package's files, unpacked under the cache (downloaded the first time)."""
    where = cache_dir()
    where.mkdir(parents=True, exist_ok=True)
    target = where / package
    if (target / ".unpacked").exists():
        return target
    debs = sorted(where.glob(f"{package}_*.deb"))
    if not debs:
        print(f"vlbr: fetching {package} with apt-get download into {where}", file=sys.stderr)
        _download(package, where)
        debs = sorted(where.glob(f"{package}_*.deb"))
    if not debs:
        raise PackageUnavailable(f"apt-get download {package} left no .deb in {where}")
    run_tool(["dpkg-deb", "-x", str(debs[-1]), str(target)], where)
    (target / ".unpacked").touch()
    return target


def debian_kernel() -> Path:
    """Debian's cloud kernel image (a bzImage)."""
    root = unpacked(resolve(KERNEL_PACKAGE))
    images = sorted((root / "boot").glob("vmlinuz-*"))
    if not images:
        raise PackageUnavailable(f"{root} has no boot/vmlinuz-*")
    return images[-1]


def debian_busybox() -> Path:
    """Debian's statically linked busybox."""
    path = unpacked(BUSYBOX_PACKAGE) / "bin" / "busybox"
    if not path.exists():
        raise PackageUnavailable(f"{BUSYBOX_PACKAGE} has no bin/busybox")
    return path
