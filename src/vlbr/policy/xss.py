"""A guest's WRMSR to IA32_XSS: #GP for unsupported bits, else the new CPUID.(0xD,1):EBX."""

from __future__ import annotations

from vlbr.arch.cpuid import CpuidTable
from vlbr.arch.leaves import xsave_extended
from vlbr.arch.xsave import XsaveLayout, XsaveLayoutError

from .emulated import XCR0_INITIAL
from .errors import PolicyError, XssWriteFault


def guest_supported_xss(guest_table: CpuidTable, supported_xss: int) -> int:
    """KVM's guest_supported_xss: what the guest's CPUID enumerates and KVM supports."""
    return xsave_extended(guest_table).xss_supported & supported_xss


def guest_xss_write(guest_table: CpuidTable, supported_xss: int, value: int, *,
                    xcr0: int = XCR0_INITIAL, host_initiated: bool = False) -> int:
    """The new CPUID.(0xD,1):EBX after IA32_XSS <- value, as KVM refreshes it.

    Raises XssWriteFault (the #GP) when the guest's CPUID lacks XSAVES (guest writes only, as
    kvm_set_msr_common) or value sets a bit outside guest_supported_xss. xcr0 is the guest's
    current XCR0 (the area holds XCR0|XSS). The vcpu layer maps XssWriteFault to its
    GeneralProtection; the policy cannot import it."""
    if not 0 <= value < 1 << 64:
        raise XssWriteFault(value & ((1 << 64) - 1), "not a 64-bit MSR value")
    if not host_initiated and not xsave_extended(guest_table).xsaves:
        raise XssWriteFault(value, "the guest's CPUID lacks XSAVES (CPUID.(0xD,1):EAX[3])")
    allowed = guest_supported_xss(guest_table, supported_xss)
    if value & ~allowed:
        raise XssWriteFault(value, f"bits {value & ~allowed:#x} are outside the supported XSS"
                                   f" mask {allowed:#x}")
    try:
        return XsaveLayout.for_mask(guest_table, xcr0 | value, compacted=True).size
    except XsaveLayoutError as err:
        raise PolicyError(f"IA32_XSS <- {value:#x}: the guest's CPUID is inconsistent: {err}") from None
