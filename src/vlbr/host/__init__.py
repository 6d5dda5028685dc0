"""Where host truth comes from: CPUID dump files, /dev/cpu, /dev/kvm."""
