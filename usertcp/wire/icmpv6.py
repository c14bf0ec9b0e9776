"""ICMPv6 (RFC 4443): checksum over the IPv6 pseudo-header, echo, and the errors a TCP stack
reads (Packet Too Big, Destination Unreachable) and sends (Parameter Problem, Destination
Unreachable). Addresses are V6-tagged ints (see ipv6.py).
"""

from __future__ import annotations

import errno
import struct

from .checksum import finish, pseudo_header_sum, reduce
from .errors import DropReason, MalformedPacket
from .ipv6 import (DEST_OPTIONS, FRAGMENT, HOP_BY_HOP, MIN_MTU, PROTO_ICMPV6,
                   PROTO_TCP, ROUTING, V6, bad_source, build_ipv6, is_multicast)

DEST_UNREACHABLE = 1
PACKET_TOO_BIG = 2
TIME_EXCEEDED = 3
PARAM_PROBLEM = 4
ECHO_REQUEST = 128
ECHO_REPLY = 129
REDIRECT = 137

UNREACH_NO_ROUTE = 0
UNREACH_ADMIN = 1
UNREACH_BEYOND_SCOPE = 2
UNREACH_ADDRESS = 3
UNREACH_PORT = 4
UNREACH_POLICY = 5
UNREACH_REJECT_ROUTE = 6

# What the kernel sends on a TUN of its own accord (router solicitation; MLDv1 query, report,
# done; MLDv2 report; neighbour solicitation/advertisement): a TUN has no link layer, so the
# stack counts these and drops them without an answer.
QUIET_TYPES = frozenset((133, 130, 131, 132, 143, 135, 136))

# An error message fits in the minimum MTU (RFC 4443 2.4 (c)): 40 + 8 + this much quote.
QUOTE_MAX = MIN_MTU - 40 - 8

_HEAD = struct.Struct("!BBHI")  # type, code, checksum, 4 bytes (unused, MTU, pointer, id+seq)
_ECHO = struct.Struct("!HH")  # identifier, sequence number (after type, code, checksum)
_from = int.from_bytes

# Linux's errno for each Destination Unreachable code (net/ipv6/icmp.c, tab_unreach); other
# codes give EPROTO there too.
_UNREACH_ERRNO = (errno.ENETUNREACH, errno.EACCES, errno.EHOSTUNREACH, errno.EHOSTUNREACH,
                  errno.ECONNREFUSED, errno.EACCES, errno.EACCES)


def unreachable_errno(code: int) -> int:
    """The errno Linux reports for a Destination Unreachable of `code` (EPROTO if unknown)."""
    return _UNREACH_ERRNO[code] if 0 <= code < len(_UNREACH_ERRNO) else errno.EPROTO


def error_errno(icmp_type: int, code: int) -> int:
    """The errno for any ICMPv6 error, as Linux's icmpv6_err_convert maps it."""
    if icmp_type == DEST_UNREACHABLE:
        return unreachable_errno(code)
    if icmp_type == PACKET_TOO_BIG:
        return errno.EMSGSIZE
    if icmp_type == TIME_EXCEEDED:
        return errno.EHOSTUNREACH
    return errno.EPROTO


def _words(data) -> int:
    # Unreduced, so finish() tells an all-zero message from one summing to a multiple of 0xFFFF.
    words = _from(data, "big")
    return words << 8 if len(data) & 1 else words


# --- receive --------------------------------------------------------------------------------------

def parse_icmpv6(packet, ip) -> tuple[int, int, memoryview]:
    """(type, code, body) of the ICMPv6 message in `packet` after `ip` (an IPv6Header).

    `body` is what follows type, code and checksum (4 bytes or more for every type RFC 4443
    defines). The checksum is verified; MalformedPacket if it is wrong or the message short.
    """
    start, end = ip.header_length, ip.total_length
    length = end - start
    if length < 8:
        raise MalformedPacket(DropReason.ICMPV6_TRUNCATED, f"{length} bytes")
    msg = memoryview(packet)[start:end]
    words = _from(msg, "big")
    if length & 1:
        words <<= 8
    if (reduce(words) + pseudo_header_sum(ip.src, ip.dst, PROTO_ICMPV6, length)) % 0xFFFF:
        raise MalformedPacket(DropReason.BAD_ICMPV6_CHECKSUM)
    return msg[0], msg[1], msg[4:]


def parse_echo_request6(body) -> tuple[int, int, memoryview]:
    """(ident, seq, data) from the body parse_icmpv6 returned for an echo request (128)."""
    if len(body) < 4:
        raise MalformedPacket(DropReason.ICMPV6_TRUNCATED, f"echo body {len(body)} bytes")
    ident, seq = _ECHO.unpack_from(body)
    return ident, seq, memoryview(body)[4:]


def _quoted(quote) -> tuple[int | None, int | None, int | None, int | None, int | None]:
    """(src, dst, sport, dport, seq) of the TCP packet an error quotes; None where the quote
    is too short to hold a field, is not IPv6, or (ports and seq) does not carry TCP."""
    n = len(quote)
    if n < 40 or quote[0] >> 4 != 6:
        return None, None, None, None, None
    src = _from(quote[8:24], "big") | V6
    dst = _from(quote[24:40], "big") | V6
    nxt, off = quote[6], 40
    # We send no extension headers, but a middlebox may have added some: walk what fits.
    for _ in range(8):
        if nxt == PROTO_TCP or off + 8 > n:
            break
        if nxt == FRAGMENT:
            if (_from(quote[off + 2:off + 4], "big") & 0xFFF8):
                break  # not the first fragment: no TCP header here
            nxt, off = quote[off], off + 8
        elif nxt in (HOP_BY_HOP, ROUTING, DEST_OPTIONS):
            nxt, off = quote[off], off + (quote[off + 1] + 1) * 8
        else:
            break
    if nxt != PROTO_TCP or off + 8 > n:
        return src, dst, None, None, None
    sport, dport, seq = struct.unpack_from("!HHI", quote, off)
    return src, dst, sport, dport, seq


def parse_packet_too_big(body):
    """(mtu, quoted_src, quoted_dst, sport, dport, seq) of a Packet Too Big's body.

    The MTU is as sent: an MTU below 1280 must not lower a path MTU below MIN_MTU (RFC 8201
    4); that clamp is the caller's.
    """
    if len(body) < 4:
        raise MalformedPacket(DropReason.ICMPV6_TRUNCATED, f"packet too big body {len(body)}")
    return (_from(body[:4], "big"), *_quoted(memoryview(body)[4:]))


def parse_dest_unreachable6(body):
    """(quoted_src, quoted_dst, sport, dport, seq) of a Destination Unreachable's body; the
    errno for its code is unreachable_errno(code)."""
    if len(body) < 4:
        raise MalformedPacket(DropReason.ICMPV6_TRUNCATED, f"unreachable body {len(body)}")
    return _quoted(memoryview(body)[4:])


# --- send -----------------------------------------------------------------------------------------

def _message(src: int, dst: int, icmp_type: int, code: int, field: int, body) -> bytes:
    """A whole IPv6 packet carrying one ICMPv6 message, checksum filled in."""
    length = 8 + len(body)
    total = (pseudo_header_sum(src | V6, dst | V6, PROTO_ICMPV6, length)
             + _from(_HEAD.pack(icmp_type, code, 0, field), "big") + _words(body))
    head = _HEAD.pack(icmp_type, code, finish(total), field)
    return build_ipv6(src, dst, PROTO_ICMPV6, b"".join((head, body)))


def build_echo_reply6(src: int, dst: int, ident: int, seq: int, data) -> bytes:
    """A whole IPv6 packet from `src` to `dst` carrying an echo reply."""
    return _message(src, dst, ECHO_REPLY, 0, (ident << 16) | seq, data)


def _may_answer(original, code_2_problem: bool) -> bool:
    """Whether RFC 4443 2.4 (e) allows an error about `original` (at least 40 bytes, IPv6)."""
    src = _from(original[8:24], "big")
    # (e.6): the source must name one node: not unspecified, multicast, loopback, v4-mapped.
    if src == 0 or bad_source(src):
        return False
    # (e.3): not to a multicast destination, but for Parameter Problem code 2 (an option whose
    # action bits ask for it even then, RFC 8200 4.2).
    if is_multicast(_from(original[24:40], "big")) and not code_2_problem:
        return False
    # (e.1, e.2): not about an ICMPv6 error or a redirect; walk to the upper layer to see.
    n = min(len(original), 40 + _from(original[4:6], "big"))
    nxt, off = original[6], 40
    for _ in range(8):
        if nxt not in (HOP_BY_HOP, ROUTING, DEST_OPTIONS, FRAGMENT) or off + 8 > n:
            break
        if nxt == FRAGMENT:
            if _from(original[off + 2:off + 4], "big") & 0xFFF8:
                # A later fragment: its upper layer cannot be seen, so it may be an error.
                return original[off] != PROTO_ICMPV6
            nxt, off = original[off], off + 8
        else:
            nxt, off = original[off], off + (original[off + 1] + 1) * 8
    if nxt == PROTO_ICMPV6:
        # An error (type < 128) or a redirect, or too short to tell that it is neither.
        return off < n and original[off] >= 128 and original[off] != REDIRECT
    return True


def _error(src: int, original, icmp_type: int, code: int, field: int,
           code_2_problem: bool = False) -> bytes | None:
    n = len(original)
    if n < 40:
        raise MalformedPacket(DropReason.TRUNCATED, f"{n} bytes")
    if original[0] >> 4 != 6:
        raise MalformedPacket(DropReason.NOT_IPV6, f"version {original[0] >> 4}")
    if not _may_answer(original, code_2_problem):
        return None
    end = min(n, 40 + _from(original[4:6], "big"), QUOTE_MAX)
    quote = bytes(original[:end])
    return _message(src, _from(original[8:24], "big") | V6, icmp_type, code, field, quote)


def build_param_problem(src: int, original, code: int, pointer: int) -> bytes | None:
    """A whole IPv6 packet from `src` to the source of `original`: Parameter Problem (type 4,
    `code`, `pointer` into `original`), quoting as much of `original` as keeps it in 1280 bytes.

    None when RFC 4443 2.4 (e) forbids an error about `original`: it is an ICMPv6 error or a
    redirect, its source is not one unicast node, or it went to a multicast address (allowed
    for code 2 only). MalformedPacket if `original` does not start with an IPv6 header.
    """
    return _error(src, original, PARAM_PROBLEM, code, pointer, code_2_problem=code == 2)


def build_dest_unreachable6(src: int, original, code: int) -> bytes | None:
    """A whole IPv6 packet from `src`: Destination Unreachable (type 1, `code`) about
    `original`, as build_param_problem builds and refuses."""
    return _error(src, original, DEST_UNREACHABLE, code, 0)

