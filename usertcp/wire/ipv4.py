"""IPv4 header: parse (validate) and build. Addresses are 32-bit ints inside.

addr_to_int/int_to_addr serve both families (IPv6 ints carry the ipv6.V6 tag).
"""

from __future__ import annotations

import ipaddress
import struct

from .checksum import finish
from .errors import DropReason, MalformedPacket
from .ipv6 import V6
from .ipv6 import addr_text as ipv6_text

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17

HEADER = struct.Struct("!BBHHHBBHII")  # 20 bytes, no options
_unpack_header = HEADER.unpack_from
_from = int.from_bytes


def addr_to_int(address) -> int:
    """An address int from text, an IPv4Address/IPv6Address or an int (returned as is).

    IPv4 is the 32-bit value; IPv6 ("fd00:7::2", "::ffff:10.0.0.1" included) the 128-bit value
    tagged with V6. A scope ("fe80::1%eth0") is not part of the int.
    """
    if isinstance(address, int):
        return address
    if isinstance(address, ipaddress.IPv6Address) or (isinstance(address, str)
                                                      and ":" in address):
        try:
            return int(ipaddress.IPv6Address(address)) | V6
        except ipaddress.AddressValueError as exc:
            raise ValueError(f"not an IPv6 address: {address!r}") from exc
    try:
        return int(ipaddress.IPv4Address(address))
    except ipaddress.AddressValueError as exc:
        raise ValueError(f"not an IPv4 or IPv6 address: {address!r}") from exc


def int_to_addr(value: int) -> str:
    """Dotted quad for IPv4; compressed text (RFC 5952) for a V6-tagged int."""
    if value > 0xFFFFFFFF:
        return ipv6_text(value)
    return f"{value >> 24}.{(value >> 16) & 255}.{(value >> 8) & 255}.{value & 255}"


def _bad_source(src: int) -> bool:
    first = src >> 24
    return src == 0 or src == 0xFFFFFFFF or first == 127 or first >= 224


class IPv4Header:
    """The fields the stack needs from a validated IPv4 header."""

    __slots__ = ("src", "dst", "protocol", "header_length", "total_length", "ttl", "ident")

    def __init__(self, src, dst, protocol, header_length, total_length, ttl, ident):
        self.src = src
        self.dst = dst
        self.protocol = protocol
        self.header_length = header_length
        self.total_length = total_length
        self.ttl = ttl
        self.ident = ident


def parse_ipv4(packet) -> IPv4Header:
    """Validate an IPv4 header; raise MalformedPacket with a reason if bad.

    Options are skipped by IHL. Trailing bytes past total length (link padding)
    are tolerated, as every stack does.
    """
    n = len(packet)
    if n < 20:
        raise MalformedPacket(DropReason.TRUNCATED, f"{n} bytes")
    vihl, _tos, total, ident, frag, ttl, proto, _csum, src, dst = _unpack_header(packet, 0)
    if vihl >> 4 != 4:
        raise MalformedPacket(DropReason.NOT_IPV4, f"version {vihl >> 4}")
    hl = (vihl & 15) * 4
    if hl < 20 or hl > n:
        raise MalformedPacket(DropReason.BAD_IHL, f"ihl {hl}")
    if total < hl or total > n:
        raise MalformedPacket(DropReason.BAD_TOTAL_LENGTH, f"total {total}, have {n}")
    if _from(packet[:hl], "big") % 0xFFFF:
        raise MalformedPacket(DropReason.BAD_IP_CHECKSUM)
    # More-fragments set or a nonzero offset: reassembly is out of scope.
    if frag & 0x3FFF:
        raise MalformedPacket(DropReason.FRAGMENT)
    if _bad_source(src):
        raise MalformedPacket(DropReason.BAD_SOURCE, int_to_addr(src))
    return IPv4Header(src, dst, proto, hl, total, ttl, ident)


def build_ipv4(src: int, dst: int, protocol: int, payload, *, ident=0, ttl=64) -> bytes:
    """A 20-byte header with DF set, followed by `payload`."""
    total = 20 + len(payload)
    hdr = bytearray(HEADER.pack(0x45, 0, total, ident, 0x4000, ttl, protocol, 0, src, dst))
    hdr[10:12] = finish(_from(hdr, "big")).to_bytes(2, "big")
    return b"".join((hdr, payload))
