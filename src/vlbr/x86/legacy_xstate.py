"""x87 and SSE state (XSAVE state components 0 and 1) as values, and the 512-byte legacy
region of an XSAVE (or FXSAVE) area that holds them.

SDM Vol. 1 13.4.1 (legacy region: x87 in bytes 23:0 and 159:32, SSE in 31:24 and 415:160),
13.5.1 (x87 state, REX.W picks the 64-bit FIP/FDP form), 13.5.2 (SSE state), 13.6 (initial
configurations, XINUSE); Vol. 2 FXSAVE, "FXSAVE/FXRSTOR layout" tables.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace

from vlbr.arch.x86 import MXCSR_RESET, XFEATURE_SSE, XFEATURE_X87
from vlbr.arch.xsave import LEGACY_AREA_SIZE
from vlbr.vcpu.faults import GeneralProtection

FCW_INIT = 0x037F  # all x87 exceptions masked, 64-bit precision, round to nearest (SDM 13.6)
MXCSR_MASK_ALL = 0x0000_FFFF  # MXCSR bits 15:0 writable (DAZ too), as QEMU and recent Intel
MXCSR_MASK_IF_ZERO = 0x0000_FFBF  # an MXCSR_MASK field of 0 means this (SDM 11.6.6: no DAZ)
X87_REGISTERS, XMM_REGISTERS = 8, 16
ST_SIZE, ST_SLOT, XMM_SIZE = 10, 16, 16
ST_OFFSET, XMM_OFFSET = 32, 160

# Bytes of the legacy region each component owns (SDM 13.4.1).
COMPONENT_BYTES = {XFEATURE_X87: ((0, 24), (32, 160)),
                   XFEATURE_SSE: ((24, 32), (160, 416))}

# Bytes 31:0: FCW FSW FTW(abridged) rsvd FOP, then FIP/FDP in the 64-bit (REX.W) form or the
# 32-bit form with FCS/FDS selectors, then MXCSR MXCSR_MASK.
_HEAD_64 = struct.Struct("<HHBxHQQII")
_HEAD_32 = struct.Struct("<HHBxHIH2xIH2xII")

_X87_FIELDS = ("fcw", "fsw", "ftw", "fop", "fip", "fdp", "fcs", "fds", "st")
_SSE_FIELDS = ("mxcsr", "xmm")


@dataclass(frozen=True)
class LegacyState:
    """x87 and SSE registers; the defaults are both components' initial configuration.

    `ftw` is the abridged tag word FXSAVE stores: bit i set when physical register i is not
    empty. `st` holds ST0-ST7 (stack order, as the legacy region does) as 80-bit integers
    (sign and exponent in bits 79:64, significand in 63:0). `xmm` holds 128-bit integers.
    `mxcsr_mask` is the CPU's, not state: XRSTORS never loads it.
    """

    fcw: int = FCW_INIT
    fsw: int = 0
    ftw: int = 0
    fop: int = 0
    fip: int = 0
    fdp: int = 0
    fcs: int = 0
    fds: int = 0
    st: tuple[int, ...] = (0,) * X87_REGISTERS
    mxcsr: int = MXCSR_RESET
    mxcsr_mask: int = MXCSR_MASK_ALL
    xmm: tuple[int, ...] = (0,) * XMM_REGISTERS

    @property
    def mxcsr_bits(self) -> int:
        """The MXCSR bits this CPU lets software set (SDM 11.6.6)."""
        return self.mxcsr_mask or MXCSR_MASK_IF_ZERO

    @property
    def top(self) -> int:
        """FSW.TOP (bits 13:11): the physical register that is ST0."""
        return self.fsw >> 11 & 7

    def pack(self, wide: bool = True) -> bytes:
        """The 512-byte legacy region (reserved bytes 0); `wide` is the REX.W form."""
        if wide:
            head = _HEAD_64.pack(self.fcw, self.fsw, self.ftw, self.fop, self.fip, self.fdp,
                                 self.mxcsr, self.mxcsr_mask)
        else:
            head = _HEAD_32.pack(self.fcw, self.fsw, self.ftw, self.fop, self.fip & 0xFFFF_FFFF,
                                 self.fcs, self.fdp & 0xFFFF_FFFF, self.fds, self.mxcsr,
                                 self.mxcsr_mask)
        st = b"".join(r.to_bytes(ST_SIZE, "little") + bytes(ST_SLOT - ST_SIZE) for r in self.st)
        xmm = b"".join(r.to_bytes(XMM_SIZE, "little") for r in self.xmm)
        out = head + st + xmm
        return out + bytes(LEGACY_AREA_SIZE - len(out))

    @classmethod
    def unpack(cls, data: bytes, wide: bool = True) -> "LegacyState":
        """The state a legacy region holds (MXCSR_MASK as stored)."""
        if len(data) < LEGACY_AREA_SIZE:
            raise ValueError(f"legacy region of {len(data)} bytes (needs {LEGACY_AREA_SIZE})")
        if wide:
            fcw, fsw, ftw, fop, fip, fdp, mxcsr, mask = _HEAD_64.unpack_from(data)
            fcs = fds = 0
        else:
            fcw, fsw, ftw, fop, fip, fcs, fdp, fds, mxcsr, mask = _HEAD_32.unpack_from(data)
        st = tuple(int.from_bytes(data[o:o + ST_SIZE], "little")
                   for o in range(ST_OFFSET, XMM_OFFSET, ST_SLOT))
        xmm = tuple(int.from_bytes(data[o:o + XMM_SIZE], "little")
                    for o in range(XMM_OFFSET, XMM_OFFSET + XMM_REGISTERS * XMM_SIZE, XMM_SIZE))
        return cls(fcw, fsw, ftw, fop, fip, fdp, fcs, fds, st, mxcsr, mask, xmm)

    @property
    def xinuse(self) -> int:
        """XINUSE[1:0] (SDM 13.6): a component not in its initial configuration is in use.
        MXCSR is not part of SSE's init tracking (see `to_be_saved`)."""
        init = LegacyState()
        x87 = any(getattr(self, f) != getattr(init, f) for f in _X87_FIELDS)
        sse = any(self.xmm)
        return (XFEATURE_X87 if x87 else 0) | (XFEATURE_SSE if sse else 0)

    def to_be_saved(self, rfbm: int) -> int:
        """Components 0/1 XSAVES (and XSAVEC) store, and set in XSTATE_BV: RFBM & XINUSE, and
        SSE also when RFBM[1] and MXCSR is not 1F80H (Vol. 2 XSAVES Operation)."""
        saved = rfbm & self.xinuse
        if rfbm & XFEATURE_SSE and self.mxcsr != MXCSR_RESET:
            saved |= XFEATURE_SSE
        return saved

    def take(self, other: "LegacyState", components: int) -> "LegacyState":
        """This state with the registers of `components` (x87/SSE bits) from `other`."""
        fields = ((_X87_FIELDS if components & XFEATURE_X87 else ())
                  + (_SSE_FIELDS if components & XFEATURE_SSE else ()))
        return replace(self, **{f: getattr(other, f) for f in fields})

    def check_mxcsr(self, mask: int) -> None:
        """#GP when MXCSR sets a bit MXCSR_MASK reserves (SDM 13.8.1, 13.12; FXRSTOR)."""
        if self.mxcsr & ~mask & 0xFFFF_FFFF:
            raise GeneralProtection(
                f"MXCSR {self.mxcsr:#x} sets reserved bits (MXCSR_MASK {mask:#x})")


def store_components(area: bytearray, offset: int, state: LegacyState, components: int,
                     wide: bool = True) -> None:
    """Write only the legacy-region bytes of `components` (x87/SSE bits) at `offset`."""
    data = state.pack(wide)
    for component, ranges in COMPONENT_BYTES.items():
        if components & component:
            for lo, hi in ranges:
                area[offset + lo: offset + hi] = data[lo:hi]
