"""One entry point for the receive path: bytes in, a Segment (or header) out.

The usual packet (IHL 5, TCP, not a fragment) is parsed from a single struct
unpack of both fixed headers; anything else takes the general, slower path.
"""

from __future__ import annotations

from .checksum import reduce
from .errors import DropReason, MalformedPacket
from .ipv4 import IPv4Header, parse_ipv4
from .tcp import _PACKET, _TS_WORD, FIN, RST, SYN, Segment, _parse_options, _unpack_ts3, parse_tcp

_unpack_packet = _PACKET.unpack_from
_from = int.from_bytes


def parse_packet(packet, verify_checksum: bool = True):
    """Validate `packet`; return a Segment for TCP, else the IPv4Header.

    Raises MalformedPacket with a named reason. `verify_checksum=False` is for
    devices that have already verified checksums (virtio-net DATA_VALID).
    """
    n = len(packet)
    if n < 40 or packet[0] != 0x45:
        return _slow(packet, verify_checksum)
    (_vihl, tos, total, ident, frag, ttl, proto, csum, src, dst, sport, dport, seq, ack, doff,
     flags, window, _tcsum, urgent) = _unpack_packet(packet)
    if proto != 6 or frag & 0x3FFF or total > n or total < 40:
        return _slow(packet, verify_checksum)
    ip_sum = (0x4500 + tos + total + ident + frag + (ttl << 8) + 6 + csum + (src >> 16)
              + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF))
    if ip_sum % 0xFFFF:
        raise MalformedPacket(DropReason.BAD_IP_CHECKSUM)
    hlen = (doff >> 4) << 2
    tcp_len = total - 20
    if hlen < 20 or hlen > tcp_len:
        raise MalformedPacket(DropReason.BAD_DATA_OFFSET, f"data offset {hlen}, segment {tcp_len}")
    view = memoryview(packet)
    if verify_checksum:
        words = _from(view[20:total], "big")
        if tcp_len & 1:
            words <<= 8
        # Reduce the payload first so the pseudo-header adds to a small int.
        if (reduce(words) + (src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF)
                + 6 + tcp_len) % 0xFFFF:
            raise MalformedPacket(DropReason.BAD_TCP_CHECKSUM)
    src_first = src >> 24
    if src == 0 or src_first == 127 or src_first >= 224:
        raise MalformedPacket(DropReason.BAD_SOURCE)
    if not sport or not dport:
        raise MalformedPacket(DropReason.BAD_PORT)
    if flags & SYN and flags & (FIN | RST):
        raise MalformedPacket(DropReason.BAD_FLAGS)
    data_start = 20 + hlen
    seg = Segment(src, dst, sport, dport, seq, ack, flags, window, urgent,
                  view[data_start:total] if data_start < total else b"")
    if hlen > 20:
        if hlen == 32:
            head, ts_val, ts_ecr = _unpack_ts3(packet, 40)
            if head == _TS_WORD:  # NOP NOP TS: one unpack, no slice
                seg.ts_val = ts_val
                seg.ts_ecr = ts_ecr
            else:
                _parse_options(packet, 40, data_start, seg)
        else:
            _parse_options(packet, 40, data_start, seg)
    return seg


def _slow(packet, verify_checksum: bool):
    ip: IPv4Header = parse_ipv4(packet)
    if ip.protocol == 6:
        return parse_tcp(packet, ip, verify_checksum)
    return ip
