"""vlbr: virtualized Intel Architectural LBR for x86 guests."""

__version__ = "0.1.0"
