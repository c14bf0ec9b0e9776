"""RFC 7323 timestamps: the TSopt every segment carries once negotiated, and PAWS limits.

Shared by live connections and TIME-WAIT entries, so both speak the same 1 ms clock.
"""

from __future__ import annotations

import struct

from .seq import MASK

TS_LEN = 12  # NOP NOP TS(10): what timestamps take from every segment's payload
TS_HEAD = 0x0101080A  # NOP NOP kind 8 length 10, as one word
PAWS_IDLE = 24 * 86400.0  # RFC 7323 5.5: a TS.Recent this old no longer rejects anything
PAWS_WINDOW = 1  # TSval ticks older than TS.Recent still taken, as Linux (TCP_PAWS_WINDOW)
_pack_ts = struct.Struct("!III").pack


def ts_value(now: float, offset: int) -> int:
    """Our TSval at `now`: 1 ms ticks, offset so that no uptime shows, modulo 2**32."""
    return (int(now * 1000) + offset) & MASK


def ts_option(now: float, offset: int, ts_recent: int) -> bytes:
    """The 12 option bytes: NOP NOP TSopt(TSval, TSecr = TS.Recent)."""
    return _pack_ts(TS_HEAD, (int(now * 1000) + offset) & MASK, ts_recent)
