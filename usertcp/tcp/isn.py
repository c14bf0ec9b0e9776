"""Initial sequence numbers per RFC 6528: a 4 µs clock plus a keyed hash."""

from __future__ import annotations

import hashlib


def addr_bytes(addr: int) -> bytes:
    """An address as the hash input: 4 bytes for IPv4, 17 for a tagged IPv6 int (see wire)."""
    return addr.to_bytes(4, "big") if addr < 0x100000000 else addr.to_bytes(17, "big")


def initial_sequence_number(secret: bytes, local: int, lport: int, remote: int, rport: int,
                            now: float) -> int:
    key = secret[:64] if secret else b"\0"
    digest = hashlib.blake2s(
        addr_bytes(local) + lport.to_bytes(2, "big") + addr_bytes(remote)
        + rport.to_bytes(2, "big"), key=key, digest_size=4).digest()
    isn = (int(now * 250_000) + int.from_bytes(digest, "big")) & 0xFFFFFFFF
    # 0 and 1 read as "unset" to too many tools and tests; skip them.
    return isn if isn > 1 else isn + 2
