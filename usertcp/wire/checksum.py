"""The Internet checksum (RFC 1071) without a per-byte Python loop.

Because 2**16 == 1 (mod 0xFFFF), a buffer read as one big-endian integer is
congruent to the sum of its 16-bit words, so `int.from_bytes(buf) % 0xFFFF`
is the one's-complement sum, folded (about 5x faster than summing words; see
scripts/bench_checksum.py). Pieces that start at even offsets can be summed
separately and added, which lets callers skip concatenating headers and payload.
"""

from __future__ import annotations

_from = int.from_bytes
_M6144, _M3072, _M1536, _M768 = ((1 << k) - 1 for k in (6144, 3072, 1536, 768))


def reduce(x: int) -> int:
    """x mod 0xFFFF for a large non-negative x.

    A long division by 0xFFFF walks every 30-bit digit; folding x onto itself
    at 16-bit-multiple boundaries (x = hi * 2**k + lo == hi + lo, mod 0xFFFF)
    first is about twice as fast for packet-sized numbers.
    """
    bits = x.bit_length()
    if bits <= 1024:
        return x % 0xFFFF
    while bits > 12288:  # beyond one MTU-sized packet: halve until it fits
        k = (bits >> 5) << 4
        x = (x >> k) + (x & ((1 << k) - 1))
        bits = x.bit_length()
    x = (x >> 6144) + (x & _M6144)
    x = (x >> 3072) + (x & _M3072)
    x = (x >> 1536) + (x & _M1536)
    x = (x >> 768) + (x & _M768)
    return x % 0xFFFF


def word_sum(data) -> int:
    """Sum of the 16-bit words of `data` (zero-padded when odd), mod 0xFFFF."""
    if len(data) & 1:
        return reduce(_from(data, "big") << 8)
    return reduce(_from(data, "big"))


def finish(total: int) -> int:
    """Turn an unreduced word sum into the checksum field value."""
    r = reduce(total)
    if r:
        return 0xFFFF - r
    # A nonzero buffer whose words sum to a multiple of 0xFFFF has a true
    # one's-complement sum of 0xFFFF, whose complement is 0. An all-zero buffer
    # (total == 0, which is why `total` must be unreduced) sums to +0, whose
    # complement is 0xFFFF; 0 there would fail a receiver's check (RFC 1624 3).
    return 0 if total else 0xFFFF


def internet_checksum(data) -> int:
    """Checksum field value for `data` (computed with the field zeroed)."""
    x = _from(data, "big")
    return finish(x << 8 if len(data) & 1 else x)


_ADDR128 = (1 << 128) - 1  # strips ipv6.V6, the family tag (bit 128)


def pseudo_header_sum(src: int, dst: int, protocol: int, length: int) -> int:
    """Unreduced word sum of the IPv4 or the IPv6 pseudo-header (RFC 8200 8.1).

    IPv4 addresses are 32-bit ints; IPv6 ones carry the V6 tag, which is stripped. An IPv6
    address is added whole: 2**16 == 1 (mod 0xFFFF), so it is congruent to its words' sum.
    """
    if src > 0xFFFFFFFF:
        return (src & _ADDR128) + (dst & _ADDR128) + protocol + length
    return (src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF) + protocol + length


def verify(total: int) -> bool:
    """True when an unreduced sum that includes the checksum field is valid."""
    return reduce(total) == 0
