"""Where host truth comes from: CPUID dump files, /dev/cpu, /dev/kvm."""

from .cpuid_raw import write_cpuid_raw
from .cpus import CoreType, LogicalCpu, core_type_name, core_types
from .devcpu import live_host_cpus
from .files import detect_format, parse_cpuid_bytes, read_cpuid_file
from .vlbr_json import from_json, to_json

__all__ = ["CoreType", "LogicalCpu", "core_type_name", "core_types", "detect_format",
           "from_json", "live_host_cpus", "parse_cpuid_bytes", "read_cpuid_file", "to_json",
           "write_cpuid_raw"]
