"""The native unicorn hooks, each plain C built with the system gcc at first use into the
cache and loaded with ctypes: block_ring.c (the software backend's block recorder and step
budget) and insn_clock.c (the PC machine's instruction clock). `load(name)` is None where
gcc or the build is missing: callers then use their pure-Python hook, which is also the
tests' reference."""

from __future__ import annotations

import ctypes
import enum
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCE_DIR = Path(__file__).parent
MAX_U64 = (1 << 64) - 1
DISABLE_ENV = "VLBR_NO_NATIVE"  # set to use the pure-Python recorder (comparisons, fallback)


class BlockRing(ctypes.Structure):
    _fields_ = [("count", ctypes.c_uint64), ("capacity", ctypes.c_uint64),
                ("record", ctypes.c_uint64), ("bytes", ctypes.c_uint64),
                ("budget", ctypes.c_uint64), ("stopped", ctypes.c_uint64),
                ("emu_stop", ctypes.c_void_p), ("reg_read", ctypes.c_void_p),
                ("cr2_regid", ctypes.c_int64), ("cr2", ctypes.c_uint64),
                ("address", ctypes.POINTER(ctypes.c_uint64)),
                ("size", ctypes.POINTER(ctypes.c_uint32))]


class RingStop(enum.IntEnum):
    """BlockRing.stopped, as block_ring.c sets it."""

    RUNNING = 0
    BUDGET_SPENT = 1
    RING_FULL = 2


def cache_root() -> Path:
    base = os.environ.get("VLBR_CACHE_DIR")
    if base:
        return Path(base)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vlbr"


def _build(gcc: str, name: str) -> Path:
    source = SOURCE_DIR / f"{name}.c"
    digest = hashlib.sha256(source.read_bytes() + gcc.encode()).hexdigest()[:16]
    target = cache_root() / "native" / f"{name}-{digest}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        out = Path(tmp) / target.name
        subprocess.run([gcc, "-O2", "-shared", "-fPIC", "-o", str(out), str(source)],
                       check=True, capture_output=True)
        os.replace(out, target)  # atomic: concurrent first uses never load half a file
    return target


@functools.cache
def load(name: str = "block_ring") -> ctypes.CDLL | None:
    """The loaded library `name`.c, or None (no gcc, a failed build, or VLBR_NO_NATIVE set)."""
    gcc = shutil.which("gcc")
    if os.environ.get(DISABLE_ENV) or gcc is None:
        return None
    try:
        return ctypes.CDLL(str(_build(gcc, name)))
    except (OSError, subprocess.CalledProcessError):
        return None


def add_hook(uc, kind: int, callback, user_data, begin: int = 1, end: int = 0) -> int:
    """uc_hook_add of a native callback over begin..end (all addresses by default); unicorn's
    Python binding only takes Python callbacks, so this goes through the library's own
    handle."""
    from unicorn import UcError
    from unicorn.unicorn_py3 import unicorn as binding
    handle = ctypes.c_size_t()
    status = binding.uclib.uc_hook_add(uc._uch, ctypes.byref(handle), kind, callback, user_data,
                                       ctypes.c_uint64(begin), ctypes.c_uint64(end))
    if status:
        raise UcError(status)
    return handle.value


def _address(function) -> int:
    return ctypes.cast(function, ctypes.c_void_p).value


class NativeBlockRecorder:
    """The native block hook on one unicorn CPU, installed for the machine's life: it counts
    every stretch's block bytes against a budget and, while `record` is set, logs the blocks
    in its ring (numpy views on it)."""

    def __init__(self, lib: ctypes.CDLL, uc, capacity: int):
        import numpy as np
        from unicorn import UC_HOOK_BLOCK
        from unicorn import x86_const as X
        from unicorn.unicorn_py3 import unicorn as binding
        self.addresses = np.zeros(capacity, dtype=np.uint64)
        self.sizes = np.zeros(capacity, dtype=np.uint32)
        self.ring = BlockRing(0, capacity, 0, 0, 0, RingStop.RUNNING,
                              _address(binding.uclib.uc_emu_stop),
                              _address(binding.uclib.uc_reg_read),
                              X.UC_X86_REG_CR2, 0,
                              self.addresses.ctypes.data_as(ctypes.POINTER(ctypes.c_uint64)),
                              self.sizes.ctypes.data_as(ctypes.POINTER(ctypes.c_uint32)))
        self._uc = uc
        self._callback = ctypes.cast(lib.vlbr_block_hook, ctypes.c_void_p)
        self._fence = ctypes.cast(lib.vlbr_fence_hook, ctypes.c_void_p)
        add_hook(uc, UC_HOOK_BLOCK, self._callback, ctypes.byref(self.ring))

    def add_fence(self, address: int) -> None:
        """A no-op native code hook at address (codewatch.CodeWatch's fences)."""
        from unicorn import UC_HOOK_CODE
        add_hook(self._uc, UC_HOOK_CODE, self._fence, None, address, address)

    @property
    def record(self) -> bool:
        return bool(self.ring.record)

    @record.setter
    def record(self, on: bool) -> None:
        self.ring.record = int(on)

    def arm(self, budget: int) -> None:
        """A new stretch: it may run blocks until their bytes reach `budget`."""
        self.ring.bytes, self.ring.budget = 0, min(budget, MAX_U64)
        self.resume()

    def resume(self) -> None:
        self.ring.stopped = RingStop.RUNNING

    @property
    def stopped(self) -> RingStop:
        return RingStop(self.ring.stopped)

    @property
    def cr2(self) -> int:
        """The guest's CR2 when the hook stopped the CPU (a stop leaves unicorn's at -2)."""
        return self.ring.cr2

    def blocks(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """Ring entries lo..hi-1 as (start, size), oldest first."""
        return list(zip(self.addresses[lo:hi].tolist(), self.sizes[lo:hi].tolist()))

    def reset(self) -> int:
        """Empty the ring; returns how many entries it held."""
        n, self.ring.count = self.ring.count, 0
        return n
