"""Sequence-number arithmetic modulo 2**32 (RFC 9293 3.4).

Every comparison of sequence numbers in the engine goes through these, or
through the same expressions inlined on the hot path with a comment saying so.
"""

MOD = 1 << 32
MASK = MOD - 1
HALF = 1 << 31


def add(a: int, n: int) -> int:
    return (a + n) & MASK


def sub(a: int, b: int) -> int:
    """a - b as a signed distance in (-2**31, 2**31]."""
    d = (a - b) & MASK
    return d - MOD if d > HALF else d


def lt(a: int, b: int) -> bool:
    return 0 < ((b - a) & MASK) < HALF


def le(a: int, b: int) -> bool:
    return ((b - a) & MASK) < HALF


def gt(a: int, b: int) -> bool:
    return 0 < ((a - b) & MASK) < HALF


def ge(a: int, b: int) -> bool:
    return ((a - b) & MASK) < HALF


def between(low: int, x: int, high: int) -> bool:
    """low <= x < high, on the circle (empty when low == high)."""
    return ((x - low) & MASK) < ((high - low) & MASK)
