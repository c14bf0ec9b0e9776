"""SYN cookies (RFC 4987 3.6): a SYN-ACK whose ISN is the only state we keep.

When a listener's SYN backlog is full, the stack answers a SYN without
creating a connection: the ISN of its SYN-ACK is a cookie, and the ACK that
completes the handshake brings it back as SEG.ACK - 1. If the cookie checks
out, the connection is created there and then, directly in ESTABLISHED.

Cookie layout (32 bits, most significant first):

    | slot: 5 | MAC: 25 | MSS index: 2 |

- slot: the low 5 bits of the time counter `int(now // SLOT_SECONDS)` (64 s
  slots). A cookie is accepted in the slot it was made in and the next one,
  so it lives 64..128 s; the MAC covers the whole counter, so a cookie from
  32 slots (34 minutes) earlier whose low bits repeat does not check out.
- MAC: 25 bits of a keyed BLAKE2s over the 4-tuple, the peer's ISN, the full
  slot counter and the MSS index, keyed with the stack's `isn_secret`. A
  forged ACK passes with probability about 2**-24 (two slots are tried).
- MSS index: into MSS_TABLE, the largest entry not above the MSS the peer's
  SYN offered (536 when it offered none).

Nothing else of the SYN survives: a cookie connection has no window scaling
(the cookie SYN-ACK does not offer it, so neither end scales and the window
stays at most 65535 bytes), no SACK and no timestamps, and no RTT sample from
the handshake. The ISN is not the RFC 6528 clock-driven one either.
"""

from __future__ import annotations

import hashlib

from .isn import addr_bytes

SLOT_SECONDS = 64.0
MSS_TABLE = (536, 1220, 1440, 1460)
_PERSON = b"syncook"


def _mac(secret: bytes, local: int, lport: int, remote: int, rport: int, peer_isn: int,
         slot: int, index: int) -> int:
    msg = (addr_bytes(local) + lport.to_bytes(2, "big") + addr_bytes(remote)
           + rport.to_bytes(2, "big") + peer_isn.to_bytes(4, "big")
           + (slot & 0xFFFFFFFF).to_bytes(4, "big") + bytes((index,)))
    digest = hashlib.blake2s(msg, key=secret[:32] if secret else b"\0", digest_size=4,
                             person=_PERSON).digest()
    return int.from_bytes(digest, "big") & 0x1FFFFFF


def mss_index(peer_mss: int | None) -> int:
    """The MSS_TABLE entry a cookie can carry for the MSS a SYN offered."""
    mss = peer_mss or MSS_TABLE[0]
    index = 0
    for i, entry in enumerate(MSS_TABLE):
        if entry <= mss:
            index = i
    return index


def make_cookie(secret: bytes, local: int, lport: int, remote: int, rport: int, peer_isn: int,
                peer_mss: int | None, now: float) -> int:
    """The ISN of a stateless SYN-ACK answering a SYN with sequence number `peer_isn`."""
    slot = int(now // SLOT_SECONDS)
    index = mss_index(peer_mss)
    mac = _mac(secret, local, lport, remote, rport, peer_isn, slot, index)
    return ((slot & 0x1F) << 27) | (mac << 2) | index


def check_cookie(secret: bytes, local: int, lport: int, remote: int, rport: int, peer_isn: int,
                 cookie: int, now: float) -> int | None:
    """The MSS a valid cookie encodes, or None for a forged, mangled or stale one."""
    index = cookie & 3
    mac = (cookie >> 2) & 0x1FFFFFF
    low = cookie >> 27
    current = int(now // SLOT_SECONDS)
    for slot in (current, current - 1):
        if (slot & 0x1F) == low and _mac(secret, local, lport, remote, rport, peer_isn, slot,
                                         index) == mac:
            return MSS_TABLE[index]
    return None
