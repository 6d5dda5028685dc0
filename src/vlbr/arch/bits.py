"""Bit-field helpers shared by the register codecs."""


def field(value: int, lo: int, hi: int) -> int:
    """Bits hi:lo of value (inclusive)."""
    return (value >> lo) & ((1 << (hi - lo + 1)) - 1)


def bit(value: int, n: int) -> bool:
    return bool((value >> n) & 1)


def put(value: int, lo: int, hi: int) -> int:
    """value placed at bits hi:lo; raises when it does not fit."""
    width = hi - lo + 1
    if not 0 <= value < (1 << width):
        raise ValueError(f"{value:#x} does not fit in bits {hi}:{lo}")
    return value << lo


def fls(mask: int) -> int:
    """Linux's fls(): 1-based index of the highest set bit, 0 for 0."""
    return mask.bit_length()
