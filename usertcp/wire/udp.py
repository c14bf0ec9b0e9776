"""UDP over IPv4 (RFC 768): parse (validate) and build whole packets. Addresses are 32-bit ints."""

from __future__ import annotations

import struct

from .checksum import finish, pseudo_header_sum, reduce
from .errors import DropReason, MalformedPacket
from .ipv6 import build_ipv6
from .ipv4 import PROTO_UDP, IPv4Header, build_ipv4

HEADER = struct.Struct("!HHHH")  # source port, destination port, length, checksum
_unpack_header = HEADER.unpack_from
_from = int.from_bytes

MAX_PAYLOAD = 65535 - 20 - 8  # what fits in one IPv4 packet without options


def parse_udp(packet, ip: IPv4Header,
              verify_checksum: bool = True) -> tuple[int, int, memoryview]:
    """(sport, dport, payload) of the datagram in `packet` after `ip`; MalformedPacket if bad.

    The UDP length field decides where the payload ends: bytes after it, within the IP total
    length, are ignored (Linux trims them too). A checksum field of 0 means the sender computed
    none, which IPv4 allows.
    """
    off = ip.header_length
    available = ip.total_length - off
    if available < 8:
        raise MalformedPacket(DropReason.UDP_TRUNCATED, f"{available} bytes")
    sport, dport, length, csum = _unpack_header(packet, off)
    if length < 8 or length > available:
        raise MalformedPacket(DropReason.BAD_UDP_LENGTH, f"length {length}, have {available}")
    view = memoryview(packet)[off:off + length]
    if not csum and ip.src > 0xFFFFFFFF:
        raise MalformedPacket(DropReason.BAD_UDP_CHECKSUM, "none: IPv6 requires one (RFC 8200 8.1)")
    if verify_checksum and csum:
        words = _from(view, "big")
        if length & 1:
            words <<= 8
        if (reduce(words) + pseudo_header_sum(ip.src, ip.dst, PROTO_UDP, length)) % 0xFFFF:
            raise MalformedPacket(DropReason.BAD_UDP_CHECKSUM)
    if dport == 0:
        raise MalformedPacket(DropReason.BAD_PORT, "udp destination port 0")
    return sport, dport, view[8:]


def build_udp(src: int, dst: int, sport: int, dport: int, payload, *, ttl: int = 64) -> bytes:
    """A whole IPv4 packet (DF set, no IP options) carrying one UDP datagram with its checksum."""
    plen = len(payload)
    if plen > MAX_PAYLOAD:
        raise ValueError(f"UDP payload of {plen} bytes does not fit in an IPv4 packet")
    length = 8 + plen
    total = pseudo_header_sum(src, dst, PROTO_UDP, length) + sport + dport + length
    if plen:
        words = _from(payload, "big")
        total += reduce(words << 8 if plen & 1 else words)
    # A computed 0 is sent as 0xFFFF: 0 on the wire means "no checksum" (RFC 768).
    csum = finish(total) or 0xFFFF
    datagram = b"".join((HEADER.pack(sport, dport, length, csum), payload))
    if src > 0xFFFFFFFF:
        return build_ipv6(src, dst, PROTO_UDP, datagram, hop_limit=ttl)
    return build_ipv4(src, dst, PROTO_UDP, datagram, ttl=ttl)
