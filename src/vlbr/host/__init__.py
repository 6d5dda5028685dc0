"""Where host truth comes from: CPUID dump files, /dev/cpu, /dev/kvm."""

from .cpus import CoreType, LogicalCpu, core_type_name, core_types
from .files import parse_cpuid_bytes, read_cpuid_file

__all__ = ["CoreType", "LogicalCpu", "core_type_name", "core_types", "parse_cpuid_bytes",
           "read_cpuid_file"]
