"""KVM's rules for exposing Arch LBR to a guest, as pure functions of the host.

- supported_cpuid(): KVM_GET_SUPPORTED_CPUID, supported XSS and MSRs to save, per variant.
- check_guest_cpuid(): KVM_SET_CPUID2's -EINVAL reasons.
- guest_xss_write(): the #GP or the new CPUID.(0xD,1):EBX after a guest IA32_XSS write.
- emulated_guest_cpuid(): the guest CPUID when vlbr's own emulation provides Arch LBR.
- migration_check() / host_migration_check(): what breaks when a guest moves."""

from .caps import VLBR_EMULATION_CAPS, LbrEmulationCaps
from .emulated import EMULATED_SUPPORTED_XSS, XCR0_INITIAL, emulated_guest_cpuid
from .errors import PolicyError, UnknownVariant, UnsupportedDepth, XssWriteFault
from .host import HostDescription, common_table
from .migration import MigrationIssue, host_migration_check, migration_check
from .supported import SupportedCpuid, supported_cpuid
from .validate import check_guest_cpuid
from .variants import VARIANT_NAMES, VARIANTS, Variant, variant_named
from .xss import guest_supported_xss, guest_xss_write

__all__ = [
    "HostDescription", "common_table", "SupportedCpuid", "supported_cpuid", "check_guest_cpuid",
    "guest_xss_write", "guest_supported_xss", "emulated_guest_cpuid", "EMULATED_SUPPORTED_XSS", "XCR0_INITIAL",
    "LbrEmulationCaps", "VLBR_EMULATION_CAPS", "MigrationIssue", "migration_check",
    "host_migration_check", "PolicyError", "UnknownVariant", "UnsupportedDepth",
    "XssWriteFault", "Variant", "VARIANTS", "VARIANT_NAMES", "variant_named",
]
