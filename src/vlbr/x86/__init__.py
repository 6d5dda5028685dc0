"""The x86-64 behaviour both backends share, written once against small CPU-state protocols:
descriptors (descriptors.py) and event delivery through the guest IDT (events.py)."""
