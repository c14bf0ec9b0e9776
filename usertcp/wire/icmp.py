"""ICMP echo: enough to answer `ping` of the stack's address."""

from __future__ import annotations

import errno
import struct

from .checksum import finish, word_sum
from .errors import DropReason, MalformedPacket
from .ipv4 import PROTO_ICMP, IPv4Header, build_ipv4

ECHO_REPLY = 0
ECHO_REQUEST = 8

_from = int.from_bytes


def echo_reply_for(packet, ip: IPv4Header) -> bytes:
    """The echo reply to an echo request, or MalformedPacket if it is not one."""
    ident, seq, data = parse_echo_request(packet, ip)
    return build_echo_reply(ip.dst, ip.src, ident, seq, data)


# --- echo for the relay, and destination unreachable ----------------------------------------------

UNREACHABLE = 3
UNREACH_NET = 0
UNREACH_HOST = 1
UNREACH_PROTOCOL = 2
UNREACH_PORT = 3
UNREACH_FRAG_NEEDED = 4  # carries the next-hop MTU (RFC 1191)
UNREACH_ADMIN = 13

# Types that are errors (RFC 1122 3.2.2): never answered with another error. Linux's icmp_pointers
# marks the same five.
ERROR_TYPES = frozenset((3, 4, 5, 11, 12))
ERROR_MAX_LENGTH = 576  # an ICMP error fits in the minimum reassembly size (RFC 1812 4.3.2.3)

_ECHO = struct.Struct("!BBHHH")  # type, code, checksum, identifier, sequence number
_UNREACH = struct.Struct("!BBHHH")  # type, code, checksum, unused, next-hop MTU


def _unreduced_sum(data) -> int:
    # Unreduced, so that finish() tells an all-zero message (checksum 0xFFFF) from one whose words
    # sum to a nonzero multiple of 0xFFFF (checksum 0), as every other stack computes it.
    words = _from(data, "big")
    return words << 8 if len(data) & 1 else words


def parse_echo_request(packet, ip: IPv4Header) -> tuple[int, int, memoryview]:
    """(ident, seq, data) of an echo request; MalformedPacket as echo_reply_for raises it."""
    start, end = ip.header_length, ip.total_length
    if end - start < 8:
        raise MalformedPacket(DropReason.ICMP_TRUNCATED)
    msg = memoryview(packet)[start:end]
    if word_sum(msg):
        raise MalformedPacket(DropReason.BAD_ICMP_CHECKSUM)
    if msg[0] != ECHO_REQUEST or msg[1] != 0:
        raise MalformedPacket(DropReason.ICMP_IGNORED, f"type {msg[0]}")
    _type, _code, _csum, ident, seq = _ECHO.unpack_from(msg)
    return ident, seq, msg[8:]


def build_echo_message(icmp_type: int, ident: int, seq: int, data) -> bytes:
    """An echo request (8) or reply (0) ICMP message, without an IP header, checksum filled in."""
    csum = finish(_from(_ECHO.pack(icmp_type, 0, 0, ident, seq), "big") + _unreduced_sum(data))
    return b"".join((_ECHO.pack(icmp_type, 0, csum, ident, seq), data))


def build_echo_reply(src: int, dst: int, ident: int, seq: int, data) -> bytes:
    """A whole IPv4 packet from `src` to `dst` carrying an echo reply."""
    return build_ipv4(src, dst, PROTO_ICMP, build_echo_message(ECHO_REPLY, ident, seq, data))


def _no_error_about(original, hl: int, total: int) -> bool:
    """Whether RFC 1122 3.2.2 forbids an ICMP error about `original`."""
    frag = (original[6] << 8) | original[7]
    if frag & 0x1FFF:  # not the first fragment
        return True
    src = _from(original[12:16], "big")
    dst = _from(original[16:20], "big")
    # Not a single host: zero, loopback, broadcast, multicast, class E.
    if src == 0 or src >> 24 == 127 or src >> 28 >= 14:
        return True
    if dst == 0xFFFFFFFF or dst >> 28 == 14:
        return True
    if original[9] == PROTO_ICMP:
        # An error, or too short to tell that it is not one.
        return total - hl < 1 or original[hl] in ERROR_TYPES
    return False


def build_unreachable(src: int, original, code: int, *, mtu: int = 0) -> bytes | None:
    """A whole IPv4 packet from `src`: destination unreachable (type 3, `code`) about `original`.

    `original` is the offending IPv4 packet as received; the error goes to its source and quotes
    its IP header and as much of its data as keeps the error within 576 bytes. `mtu` is the
    next-hop MTU field (for UNREACH_FRAG_NEEDED). Returns None, and builds nothing, when no error
    may be sent (RFC 1122 3.2.2): `original` is itself an ICMP error, a non-first fragment, or has
    a source that is not one host or a broadcast or multicast destination. MalformedPacket if
    `original` does not start with an IPv4 header.
    """
    n = len(original)
    if n < 20 or original[0] >> 4 != 4:
        raise MalformedPacket(DropReason.NOT_IPV4 if n >= 20 else DropReason.TRUNCATED)
    hl = (original[0] & 15) * 4
    if hl < 20 or hl > n:
        raise MalformedPacket(DropReason.BAD_IHL, f"ihl {hl}")
    total = min((original[2] << 8) | original[3], n)
    if total < hl:
        raise MalformedPacket(DropReason.BAD_TOTAL_LENGTH, f"total {total}")
    if _no_error_about(original, hl, total):
        return None
    quote = bytes(original[:min(total, ERROR_MAX_LENGTH - 20 - 8)])
    csum = finish(_from(_UNREACH.pack(UNREACHABLE, code, 0, 0, mtu), "big") + _unreduced_sum(quote))
    message = b"".join((_UNREACH.pack(UNREACHABLE, code, csum, 0, mtu), quote))
    return build_ipv4(src, _from(original[12:16], "big"), PROTO_ICMP, message)


# --- errors about what the stack sent ---------------------------------------------------------------

TIME_EXCEEDED = 11


def parse_error(packet, ip: IPv4Header):
    """(type, code, next_hop_mtu, quoted_src, quoted_dst, sport, dport, seq) of a destination
    unreachable (3) or time exceeded (11) about a TCP segment; ports and seq None when the quote
    is too short, MalformedPacket when it is no such error or not about TCP."""
    start, end = ip.header_length, ip.total_length
    if end - start < 8 + 20:
        raise MalformedPacket(DropReason.ICMP_TRUNCATED)
    msg = memoryview(packet)[start:end]
    if word_sum(msg):
        raise MalformedPacket(DropReason.BAD_ICMP_CHECKSUM)
    icmp_type, code = msg[0], msg[1]
    if icmp_type not in (UNREACHABLE, TIME_EXCEEDED):
        raise MalformedPacket(DropReason.ICMP_IGNORED, f"type {icmp_type}")
    mtu = (msg[6] << 8) | msg[7]
    quote = msg[8:]
    qhl = (quote[0] & 15) * 4
    if quote[0] >> 4 != 4 or qhl < 20 or quote[9] != 6:
        raise MalformedPacket(DropReason.ICMP_IGNORED, "not about TCP")
    qsrc = _from(quote[12:16], "big")
    qdst = _from(quote[16:20], "big")
    if len(quote) < qhl + 8:
        return icmp_type, code, mtu, qsrc, qdst, None, None, None
    sport, dport, seq = struct.unpack_from("!HHI", quote, qhl)
    return icmp_type, code, mtu, qsrc, qdst, sport, dport, seq


# What Linux's connect() reports for each unreachable code (icmp_err_convert).
_UNREACH_ERRNO = {0: errno.ENETUNREACH, 1: errno.EHOSTUNREACH, 2: errno.ENOPROTOOPT,
                  3: errno.ECONNREFUSED, 5: errno.EOPNOTSUPP, 6: errno.ENETUNREACH,
                  7: errno.EHOSTDOWN, 9: errno.ENETUNREACH, 10: errno.EHOSTUNREACH,
                  11: errno.ENETUNREACH, 12: errno.EHOSTUNREACH, 13: errno.EHOSTUNREACH,
                  14: errno.EHOSTUNREACH, 15: errno.EHOSTUNREACH}


def unreachable_errno(code: int) -> int:
    return _UNREACH_ERRNO.get(code, errno.EHOSTUNREACH)
