"""Architectural facts and codecs: CPUID leaves, XSAVE layout, Arch LBR MSRs."""
