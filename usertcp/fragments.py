"""IP fragment reassembly for IPv4 (RFC 791) and IPv6 (RFC 8200 section 4.5): pure and bounded.

Sans-IO like the rest of the core: packets in as bytes, time passed in as `now`, the caller asks
`next_deadline()` and calls `expire(now)` when it passes. Datagrams are keyed by (src, dst,
protocol, ident) for IPv4 and (src, dst, ident) for IPv6, addresses as ints (IPv6 tagged with V6).

Rules, and where they differ from Linux:
- A fragment that overlaps another fragment of its datagram drops the whole datagram, and later
  fragments of it are ignored until its timeout (RFC 5722). IPv4 does the same: Linux drops
  only overlaps that differ from what it holds (it ignores a fragment inside an existing run);
  here any overlap drops, since a sender that fragments once never produces one.
- An exact duplicate (same offset, same length, same bytes) is ignored: retransmission and
  duplication by the network are normal. Same range with other bytes is an overlap.
- A fragment that contradicts the datagram's end (a second last fragment with another end, or
  data past the end) drops the whole datagram too, as Linux does.
- Malformed fragments (bad length, too big, an IPv6 Fragment header that is not where the caller
  said) raise MalformedPacket and leave the datagram as it was.
- Each datagram lives `timeout` seconds from its first fragment (Linux ipfrag_time), not
  refreshed by later fragments. Memory is capped by `max_bytes` (Linux ipfrag_high_thresh) and
  `max_datagrams`; over a cap, the oldest datagrams are evicted first.

`counters` counts per datagram (reassembled, timed_out, overlap_dropped, bad_end_dropped,
too_big_dropped, over_memory, over_datagrams) and the fragments dropped quietly (duplicate,
ignored: for a datagram already dropped). Fragments that raise are counted by the caller through
the raised DropReason, not here, so merging the two never counts a packet twice.
"""

from __future__ import annotations

import collections
import struct
from bisect import bisect_right

from .wire.checksum import finish
from .wire.errors import DropReason, MalformedPacket

V6 = 1 << 128

# Charged to bytes_held per fragment on top of its data: what Python spends holding one piece
# (bytes object, list slots), so a flood of 8-byte fragments cannot hold far more than the cap.
PIECE_OVERHEAD = 64

_V4 = struct.Struct("!BBHHHBBHII")
_from = int.from_bytes
_UNFRAGMENTABLE = (0, 43, 60)  # Hop-by-Hop, Routing, Destination Options: may precede Fragment
_NH_FRAGMENT = 44


class _Datagram:
    """One datagram being reassembled; pieces sorted by offset, never overlapping."""

    __slots__ = ("deadline", "starts", "ends", "pieces", "received", "end", "header",
                 "nh_pos", "next_header", "cost", "dead")

    def __init__(self, deadline):
        self.deadline = deadline
        self.starts = []  # offsets into the fragmentable part
        self.ends = []
        self.pieces = []  # the data, as bytes
        self.received = 0  # bytes held; equals `end` exactly when complete (no overlaps)
        self.end = None  # length of the fragmentable part, once the last fragment came
        self.header = None  # the first fragment's header (v4) or unfragmentable part (v6)
        self.nh_pos = 0  # v6: where the Next Header field that said 44 sits in `header`
        self.next_header = None  # v6: the first fragment's Fragment header Next Header
        self.cost = 0  # this datagram's share of bytes_held
        self.dead = False  # dropped: later fragments are ignored until the deadline


class Reassembler:
    """Reassembles IPv4 and IPv6 datagrams; see the module docstring for the rules."""

    def __init__(self, *, max_bytes=4 * 1024 * 1024, timeout=30.0, max_datagrams=1024):
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.max_datagrams = max_datagrams
        self.counters = collections.Counter()
        self.bytes_held = 0
        # Creation order, which is also deadline order (the timeout is fixed): the oldest, first
        # to expire and first to evict, is always at the front.
        self._datagrams: collections.OrderedDict = collections.OrderedDict()

    def __len__(self):
        return len(self._datagrams)

    # -- input ---------------------------------------------------------------------------------

    def add_v4(self, packet, now) -> bytes | None:
        """Add one IPv4 fragment (header already validated); the whole datagram once complete.

        The result is an unfragmented IPv4 packet: the first fragment's header (options
        included) with flags and offset zero, the new total length and header checksum. A packet
        that is not a fragment comes back as it is.
        """
        n = len(packet)
        if n < 20:
            raise MalformedPacket(DropReason.TRUNCATED, f"{n} bytes")
        vihl, _tos, total, ident, frag, _ttl, proto, _csum, src, dst = _V4.unpack_from(packet)
        hl = (vihl & 15) << 2
        if vihl >> 4 != 4:
            raise MalformedPacket(DropReason.NOT_IPV4, f"version {vihl >> 4}")
        if hl < 20 or hl > n:
            raise MalformedPacket(DropReason.BAD_IHL, f"ihl {hl}")
        if total < hl or total > n:
            raise MalformedPacket(DropReason.BAD_TOTAL_LENGTH, f"total {total}, have {n}")
        more = frag & 0x2000
        offset = (frag & 0x1FFF) << 3
        if not more and not offset:
            return bytes(packet[:total])
        end = offset + total - hl
        if hl + end > 65535:
            raise MalformedPacket(DropReason.FRAGMENT_TOO_BIG, f"ends at {hl + end}")
        header = bytes(packet[:hl]) if not offset else None
        return self._add((src, dst, proto, ident), offset, end, more, packet[hl:total],
                         header, 0, None, now)

    def add_v6(self, packet, header_end: int, frag_offset: int, now) -> bytes | None:
        """Add one IPv6 packet whose Fragment header starts at `frag_offset`.

        The bytes before `frag_offset` are the unfragmentable part; the fragment's data is
        everything after the Fragment header up to the end given by Payload Length, whatever
        headers it starts with. `header_end` is where the caller's parse of the header chain
        stopped (IPv6Header.header_length); it is only checked to lie past the Fragment header.
        Returns, once complete, the packet rebuilt without the Fragment header: the first
        fragment's unfragmentable part, its Next Header field set from the first fragment's
        Fragment header, and Payload Length fixed. An atomic fragment (offset 0, M 0; RFC 6946)
        comes back at once, rebuilt the same way.
        """
        n = len(packet)
        if n < 40 or packet[0] >> 4 != 6:
            raise MalformedPacket(DropReason.FRAGMENT_BAD_HEADER, "not IPv6")
        total = 40 + ((packet[4] << 8) | packet[5])
        if total > n or frag_offset < 40 or frag_offset + 8 > total:
            raise MalformedPacket(DropReason.FRAGMENT_BAD_HEADER,
                                  f"fragment header at {frag_offset}, packet {total} of {n}")
        if not frag_offset + 8 <= header_end <= total:
            raise MalformedPacket(DropReason.FRAGMENT_BAD_HEADER, f"header end {header_end}")
        # Walk the unfragmentable part to the Next Header field that names the Fragment header:
        # reassembly rewrites that field. Each step moves on by at least 8 bytes.
        nh_pos, nh, pos = 6, packet[6], 40
        while pos < frag_offset and nh in _UNFRAGMENTABLE:
            nh_pos, nh = pos, packet[pos]
            pos += (packet[pos + 1] + 1) << 3
        if pos != frag_offset or nh != _NH_FRAGMENT:
            raise MalformedPacket(DropReason.FRAGMENT_BAD_HEADER,
                                  f"header chain does not reach a Fragment header at {frag_offset}")
        field = (packet[frag_offset + 2] << 8) | packet[frag_offset + 3]
        offset = field & 0xFFF8
        more = field & 1
        start = frag_offset + 8
        end = offset + total - start
        if frag_offset - 40 + end > 65535:
            raise MalformedPacket(DropReason.FRAGMENT_TOO_BIG,
                                  f"payload would be {frag_offset - 40 + end}")
        header = bytes(packet[:frag_offset]) if not offset else None
        if header is not None and not more:
            return self._build_v6(header, nh_pos, packet[frag_offset], end,
                                  [bytes(packet[start:total])])
        key = (_from(packet[8:24], "big") | V6, _from(packet[24:40], "big") | V6,
               _from(packet[frag_offset + 4:start], "big"))
        return self._add(key, offset, end, more, packet[start:total],
                         header, nh_pos, packet[frag_offset], now)

    def _add(self, key, offset, end, more, data, header, nh_pos, next_header, now):
        size = end - offset
        if not size or (more and size & 7):
            raise MalformedPacket(DropReason.FRAGMENT_BAD_LENGTH,
                                  f"{size} bytes at {offset}{' with more' if more else ''}")
        datagrams = self._datagrams
        if datagrams and next(iter(datagrams.values())).deadline <= now:
            self.expire(now)
        dg = datagrams.get(key)
        if dg is None:
            if len(datagrams) >= self.max_datagrams:
                self._evict(None, "over_datagrams")
            dg = datagrams[key] = _Datagram(now + self.timeout)
        elif dg.dead:
            self.counters["ignored"] += 1
            return None

        # The datagram's end: set by the last fragment, never moved, never passed (as Linux).
        if (dg.end is not None and (end != dg.end if not more else end > dg.end)) or (
                not more and dg.ends and dg.ends[-1] > end):
            self._kill(dg, "bad_end_dropped")
            raise MalformedPacket(DropReason.FRAGMENT_BAD_END,
                                  f"{offset}..{end}, datagram ends at {dg.end}")

        starts, ends = dg.starts, dg.ends
        i = bisect_right(starts, offset)
        if i and ends[i - 1] > offset:
            if starts[i - 1] == offset and ends[i - 1] == end and dg.pieces[i - 1] == data:
                self.counters["duplicate"] += 1
                return None
            self._overlap(dg, offset, end)
        if i < len(starts) and starts[i] < end:
            self._overlap(dg, offset, end)

        cost = size + PIECE_OVERHEAD + (len(header) if header is not None else 0)
        if self.bytes_held + cost > self.max_bytes:
            self._evict(key, "over_memory", cost)
            if self.bytes_held + cost > self.max_bytes:  # too big even alone
                del datagrams[key]
                self.bytes_held -= dg.cost
                self.counters["over_memory"] += 1
                return None

        starts.insert(i, offset)
        ends.insert(i, end)
        dg.pieces.insert(i, data if type(data) is bytes else bytes(data))
        dg.received += size
        dg.cost += cost
        self.bytes_held += cost
        if not more:
            dg.end = end
        if header is not None:
            dg.header, dg.nh_pos, dg.next_header = header, nh_pos, next_header
        if dg.received != dg.end:
            return None

        # Complete: the pieces tile 0..end exactly, so joining them in order is the payload.
        end = dg.end
        if dg.next_header is None:
            length = len(dg.header) + end  # the first fragment's options may make it too big
        else:
            length = len(dg.header) - 40 + end
        if length > 65535:
            self._kill(dg, "too_big_dropped")
            raise MalformedPacket(DropReason.FRAGMENT_TOO_BIG, f"length would be {length}")
        del datagrams[key]
        self.bytes_held -= dg.cost
        self.counters["reassembled"] += 1
        if dg.next_header is None:
            return self._build_v4(dg.header, end, dg.pieces)
        return self._build_v6(dg.header, dg.nh_pos, dg.next_header, end, dg.pieces)

    # -- output --------------------------------------------------------------------------------

    @staticmethod
    def _build_v4(header, end, pieces) -> bytes:
        hdr = bytearray(header)
        total = len(hdr) + end
        hdr[2:4] = total.to_bytes(2, "big")
        hdr[6:8] = b"\0\0"  # no flags, offset 0: the datagram is whole
        hdr[10:12] = b"\0\0"
        hdr[10:12] = finish(_from(hdr, "big")).to_bytes(2, "big")
        pieces.insert(0, hdr)
        return b"".join(pieces)

    @staticmethod
    def _build_v6(header, nh_pos, next_header, end, pieces) -> bytes:
        hdr = bytearray(header)
        hdr[4:6] = (len(hdr) - 40 + end).to_bytes(2, "big")
        hdr[nh_pos] = next_header
        pieces.insert(0, hdr)
        return b"".join(pieces)

    # -- dropping ------------------------------------------------------------------------------

    def _overlap(self, dg, offset, end):
        self._kill(dg, "overlap_dropped")
        raise MalformedPacket(DropReason.FRAGMENT_OVERLAP, f"{offset}..{end}")

    def _kill(self, dg, counter):
        """Drop a datagram's data but keep its entry, so later fragments are ignored."""
        self.bytes_held -= dg.cost
        dg.cost = 0
        dg.starts, dg.ends, dg.pieces = [], [], []
        dg.header = None
        dg.dead = True
        self.counters[counter] += 1

    def _evict(self, keep, counter, need=None):
        """Evict the oldest datagrams other than `keep`: one, or until `need` more bytes fit."""
        datagrams = self._datagrams
        while True:
            it = iter(datagrams)
            key = next(it, None)
            if key is not None and key == keep:
                key = next(it, None)
            if key is None:
                return
            dg = datagrams.pop(key)
            if not dg.dead:
                self.bytes_held -= dg.cost
                self.counters[counter] += 1
            if need is None or self.bytes_held + need <= self.max_bytes:
                return

    # -- time ----------------------------------------------------------------------------------

    def expire(self, now) -> int:
        """Drop datagrams whose time is up; how many were still being reassembled."""
        datagrams = self._datagrams
        dropped = 0
        while datagrams:
            key = next(iter(datagrams))
            dg = datagrams[key]
            if dg.deadline > now:
                break
            del datagrams[key]
            if not dg.dead:
                self.bytes_held -= dg.cost
                dropped += 1
        self.counters["timed_out"] += dropped
        return dropped

    def next_deadline(self) -> float | None:
        """When the oldest datagram (or dropped datagram's entry) times out; None if none."""
        if not self._datagrams:
            return None
        return next(iter(self._datagrams.values())).deadline
