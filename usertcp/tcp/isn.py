"""Initial sequence numbers per RFC 6528: a 4 µs clock plus a keyed hash."""

from __future__ import annotations

import hashlib


def initial_sequence_number(secret: bytes, local: int, lport: int, remote: int, rport: int,
                            now: float) -> int:
    key = secret[:64] if secret else b"\0"
    digest = hashlib.blake2s(
        local.to_bytes(4, "big") + lport.to_bytes(2, "big") + remote.to_bytes(4, "big")
        + rport.to_bytes(2, "big"), key=key, digest_size=4).digest()
    isn = (int(now * 250_000) + int.from_bytes(digest, "big")) & 0xFFFFFFFF
    # 0 and 1 read as "unset" to too many tools and tests; skip them.
    return isn if isn > 1 else isn + 2
