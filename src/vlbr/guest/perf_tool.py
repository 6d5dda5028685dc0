"""Debian's perf tool for a Linux guest: the host's /usr/bin/perf from the linux-perf package
(apt-get installed when missing) and the shared libraries it loads (its ldd closure), as
initramfs files at the same paths."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from .debian import PackageUnavailable, apt_install, run_tool

PERF = Path("/usr/bin/perf")
PACKAGE = "linux-perf"
_LIBRARY = re.compile(r"=>\s*(/\S+)|^\s*(/\S+)\s+\(")


def host_perf() -> Path:
    """/usr/bin/perf of Debian's linux-perf, installed with apt-get if it is not there."""
    installed = subprocess.run(["dpkg-query", "-W", "-f", "${Status}", PACKAGE],
                               capture_output=True, text=True)
    if "install ok installed" not in installed.stdout:
        print(f"vlbr: installing {PACKAGE} with apt-get (its libraries go into the guest)",
              flush=True, file=sys.stderr)
        apt_install(PACKAGE)
    if not PERF.exists():
        raise PackageUnavailable(f"{PACKAGE} is installed but {PERF} is missing")
    return PERF


def ldd_closure(binary: Path) -> list[Path]:
    """The shared objects the dynamic loader maps for `binary`, the loader included."""
    if shutil.which("ldd") is None:
        raise PackageUnavailable("ldd is not installed")
    listing = run_tool(["ldd", str(binary)])
    found = []
    for line in listing.splitlines():
        match = _LIBRARY.search(line)
        if match:
            found.append(Path(match.group(1) or match.group(2)))
    return found


def perf_files() -> dict[str, bytes]:
    """Initramfs path -> bytes for perf and every library it needs."""
    perf = host_perf()
    files = {str(perf).lstrip("/"): perf.read_bytes()}
    for library in ldd_closure(perf):
        files[str(library).lstrip("/")] = library.resolve().read_bytes()
    return files
