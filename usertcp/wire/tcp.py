"""TCP header and options: parse (validate) and build, over IPv4 or IPv6.

The receive path is the hot path: one struct unpack for the fixed header, a
fast path for the usual timestamp-only option block, and the checksum summed
over the packet in place (no copy of the payload).
"""

from __future__ import annotations

import struct

from .checksum import finish, pseudo_header_sum, reduce
from .errors import DropReason, MalformedPacket
from .ipv4 import HEADER as IP_HEADER
from .ipv4 import PROTO_TCP, IPv4Header
from .ipv6 import ADDR_MASK, IPv6Header

FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80

OPT_EOL, OPT_NOP, OPT_MSS, OPT_WSCALE, OPT_SACK_PERMITTED, OPT_SACK, OPT_TIMESTAMP = (
    0, 1, 2, 3, 4, 5, 8)

_FIXED = struct.Struct("!HHIIBBHHH")
_unpack_fixed = _FIXED.unpack_from
_TS = struct.Struct("!II")
_unpack_ts = _TS.unpack_from
_PACKET = struct.Struct("!BBHHHBBHIIHHIIBBHHH")  # IPv4 (no options) + TCP fixed header
_pack_packet = _PACKET.pack
_PACKET6 = struct.Struct("!IHBBQQQQHHIIBBHHH")  # IPv6 (no extension headers) + TCP fixed header
_pack_packet6 = _PACKET6.pack
_M64 = (1 << 64) - 1
_from = int.from_bytes
_TS_FAST = b"\x01\x01\x08\x0a"  # NOP NOP TS(10): the layout Linux sends on every segment
_TS_WORD = 0x0101080A  # the same as one word, read with the values: _unpack_ts3
_unpack_ts3 = struct.Struct("!III").unpack_from

_FLAG_NAMES = ((SYN, "S"), (FIN, "F"), (RST, "R"), (PSH, "P"), (ACK, "."), (URG, "U"),
               (ECE, "E"), (CWR, "W"))


def flags_str(flags: int) -> str:
    """tcpdump-style flag letters, e.g. 'S.' for SYN-ACK."""
    return "".join(name for bit, name in _FLAG_NAMES if flags & bit) or "none"


class Segment:
    """A parsed TCP segment. Addresses are ints (IPv6 ones V6-tagged); `window` is unscaled."""

    __slots__ = ("src", "dst", "sport", "dport", "seq", "ack", "flags", "window", "urgent",
                 "payload", "mss", "wscale", "sack_permitted", "sack_blocks", "ts_val",
                 "ts_ecr")

    def __init__(self, src, dst, sport, dport, seq, ack, flags, window, urgent=0,
                 payload=b""):
        self.src = src
        self.dst = dst
        self.sport = sport
        self.dport = dport
        self.seq = seq
        self.ack = ack
        self.flags = flags
        self.window = window
        self.urgent = urgent
        self.payload = payload
        self.mss = None
        self.wscale = None
        self.sack_permitted = False
        self.sack_blocks = None
        self.ts_val = None
        self.ts_ecr = None

    @property
    def seg_len(self) -> int:
        """Sequence space the segment occupies (SYN and FIN count one each)."""
        return len(self.payload) + (self.flags & SYN and 1) + (self.flags & FIN and 1)

    def __repr__(self) -> str:
        return (f"Segment({self.sport}->{self.dport} {flags_str(self.flags)} seq={self.seq} "
                f"ack={self.ack} win={self.window} len={len(self.payload)})")


def _parse_options(buf, i: int, end: int, seg: Segment) -> None:
    while i < end:
        kind = buf[i]
        if kind == OPT_EOL:
            return
        if kind == OPT_NOP:
            i += 1
            continue
        if i + 1 >= end:
            raise MalformedPacket(DropReason.BAD_OPTIONS, f"option {kind} has no length")
        length = buf[i + 1]
        if length < 2 or i + length > end:
            raise MalformedPacket(DropReason.BAD_OPTIONS, f"option {kind} length {length}")
        if kind == OPT_MSS:
            if length != 4:
                raise MalformedPacket(DropReason.BAD_OPTIONS, f"mss length {length}")
            seg.mss = (buf[i + 2] << 8) | buf[i + 3]
        elif kind == OPT_WSCALE:
            if length != 3:
                raise MalformedPacket(DropReason.BAD_OPTIONS, f"wscale length {length}")
            seg.wscale = buf[i + 2]
        elif kind == OPT_SACK_PERMITTED:
            if length != 2:
                raise MalformedPacket(DropReason.BAD_OPTIONS, f"sack-permitted length {length}")
            seg.sack_permitted = True
        elif kind == OPT_SACK:
            if (length - 2) % 8 or length < 10:
                raise MalformedPacket(DropReason.BAD_OPTIONS, f"sack length {length}")
            n = (length - 2) // 8
            edges = struct.unpack_from(f"!{2 * n}I", buf, i + 2)
            seg.sack_blocks = tuple(zip(edges[0::2], edges[1::2]))
        elif kind == OPT_TIMESTAMP:
            if length != 10:
                raise MalformedPacket(DropReason.BAD_OPTIONS, f"timestamp length {length}")
            seg.ts_val, seg.ts_ecr = _unpack_ts(buf, i + 2)
        # Unknown kinds are skipped by their length (RFC 9293 3.1).
        i += length


def parse_tcp(packet, ip: IPv4Header | IPv6Header, verify_checksum: bool = True) -> Segment:
    """Validate and parse the TCP segment carried in `packet` after `ip`."""
    off = ip.header_length
    total = ip.total_length
    tcp_len = total - off
    if tcp_len < 20:
        raise MalformedPacket(DropReason.TCP_TRUNCATED, f"{tcp_len} bytes")
    sport, dport, seq, ack, doff, flags, window, _csum, urgent = _unpack_fixed(packet, off)
    hlen = (doff >> 4) * 4
    if hlen < 20 or hlen > tcp_len:
        raise MalformedPacket(DropReason.BAD_DATA_OFFSET, f"data offset {hlen}, segment {tcp_len}")
    if verify_checksum:
        view = packet if off + tcp_len == len(packet) else memoryview(packet)[: off + tcp_len]
        words = _from(memoryview(view)[off:], "big")
        if tcp_len & 1:
            words <<= 8
        if (reduce(words) + pseudo_header_sum(ip.src, ip.dst, PROTO_TCP, tcp_len)) % 0xFFFF:
            raise MalformedPacket(DropReason.BAD_TCP_CHECKSUM)
    if sport == 0 or dport == 0:
        raise MalformedPacket(DropReason.BAD_PORT)
    if flags & SYN and flags & (FIN | RST):
        raise MalformedPacket(DropReason.BAD_FLAGS, flags_str(flags))
    data_start = off + hlen
    seg = Segment(ip.src, ip.dst, sport, dport, seq, ack, flags, window, urgent,
                  memoryview(packet)[data_start:total] if data_start < total else b"")
    if hlen > 20:
        if hlen == 32 and packet[off + 20:off + 24] == _TS_FAST:
            seg.ts_val, seg.ts_ecr = _unpack_ts(packet, off + 24)
        else:
            _parse_options(packet, off + 20, data_start, seg)
    return seg


def build_options(*, mss=None, wscale=None, sack_permitted=False, timestamp=None,
                  sack_blocks=None) -> bytes:
    """Options in the order Linux sends them, NOP-padded to a 4-byte multiple."""
    out = bytearray()
    if mss is not None:
        out += struct.pack("!BBH", OPT_MSS, 4, mss)
    if sack_permitted and timestamp is not None:
        out += struct.pack("!BBBBII", OPT_SACK_PERMITTED, 2, OPT_TIMESTAMP, 10, *timestamp)
    else:
        if timestamp is not None:
            out += struct.pack("!BBBBII", OPT_NOP, OPT_NOP, OPT_TIMESTAMP, 10, *timestamp)
        if sack_permitted:
            out += bytes((OPT_NOP, OPT_NOP, OPT_SACK_PERMITTED, 2))
    if wscale is not None:
        out += bytes((OPT_NOP, OPT_WSCALE, 3, wscale))
    if sack_blocks:
        out += bytes((OPT_NOP, OPT_NOP, OPT_SACK, 2 + 8 * len(sack_blocks)))
        for left, right in sack_blocks:
            out += struct.pack("!II", left, right)
    if len(out) % 4:
        out += b"\x01" * (4 - len(out) % 4)
    if len(out) > 40:
        raise ValueError("TCP options exceed 40 bytes")
    return bytes(out)


def build_segment(src: int, dst: int, sport: int, dport: int, seq: int, ack: int, flags: int,
                  window: int, options: bytes = b"", payload=b"", *, ident: int = 0,
                  ttl: int = 64, csum_offload: bool = False) -> bytes:
    """A complete IPv4 packet (no IP options, DF set) carrying one TCP segment, or an IPv6
    packet (no extension headers, hop limit `ttl`, no `ident`) when the addresses are V6-tagged.

    With `csum_offload`, the TCP checksum field holds the pseudo-header sum and
    the device completes it (virtio-net NEEDS_CSUM convention).
    """
    if src > 0xFFFFFFFF:
        return _build_segment6(src, dst, sport, dport, seq, ack, flags, window, options,
                               payload, ttl, csum_offload)
    olen = len(options)
    plen = len(payload)
    tcp_len = 20 + olen + plen
    total = 20 + tcp_len
    hl = (20 + olen) << 2
    # Both checksums from the field values before packing (mod 0xFFFF a 32-bit field is
    # congruent to the sum of its two words): one pack, no header bytes read back or re-joined.
    ip_csum = (0xFFFF - (0x4500 + total + ident + 0x4000 + (ttl << 8) + PROTO_TCP + (src >> 16)
                         + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF)) % 0xFFFF) % 0xFFFF
    # Congruent (mod 0xFFFF) to pseudo_header_sum and never 0, so the same checksum; cheaper.
    pseudo = src + dst + PROTO_TCP + tcp_len
    if csum_offload:
        tcp_csum = pseudo % 0xFFFF
    else:
        tcp_csum = finish(_tcp_sum(pseudo, sport, dport, seq, ack, hl, flags, window, options,
                                   payload))
    hdr = _pack_packet(0x45, 0, total, ident, 0x4000, ttl, PROTO_TCP, ip_csum, src, dst,
                       sport, dport, seq, ack, hl, flags, window, tcp_csum, 0)
    return b"".join((hdr, options, payload)) if (olen or plen) else hdr


def _tcp_sum(pseudo: int, sport: int, dport: int, seq: int, ack: int, hl: int, flags: int,
             window: int, options, payload) -> int:
    """The unreduced sum a TCP checksum is made from: pseudo-header, header, options, data."""
    total = pseudo + sport + dport + seq + ack + ((hl << 8) | flags) + window
    if options:
        total += _from(options, "big")
    if payload:
        total += reduce(_from(payload, "big") << 8 if len(payload) & 1
                        else _from(payload, "big"))
    return total


def _build_segment6(src, dst, sport, dport, seq, ack, flags, window, options, payload,
                    hop_limit, csum_offload) -> bytes:
    olen = len(options)
    plen = len(payload)
    tcp_len = 20 + olen + plen
    hl = (20 + olen) << 2
    s = src & ADDR_MASK
    d = dst & ADDR_MASK
    # Whole addresses: 2**16 == 1 (mod 0xFFFF), so each is congruent to the sum of its words.
    pseudo = s + d + PROTO_TCP + tcp_len
    if csum_offload:
        tcp_csum = pseudo % 0xFFFF
    else:
        tcp_csum = finish(_tcp_sum(pseudo, sport, dport, seq, ack, hl, flags, window, options,
                                   payload))
    hdr = _pack_packet6(0x60000000, tcp_len, PROTO_TCP, hop_limit, s >> 64, s & _M64, d >> 64,
                        d & _M64, sport, dport, seq, ack, hl, flags, window, tcp_csum, 0)
    return b"".join((hdr, options, payload)) if (olen or plen) else hdr


assert IP_HEADER.size == 20 and _PACKET.size == 40 and _PACKET6.size == 60
