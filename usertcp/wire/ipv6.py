"""IPv6 header and extension headers (RFC 8200): parse (validate) and build.

Addresses are ints tagged with V6 (bit 128), so that `addr > 0xFFFFFFFF` tells the family and
the stack's 4-tuples of the two families never collide. The parser walks the extension-header
chain to the upper-layer header and reports, without raising, what RFC 8200 answers with an
ICMPv6 Parameter Problem (`problem`) and where a Fragment header is (`fragment`): the stack
decides what to send and what to reassemble.
"""

from __future__ import annotations

import functools
import ipaddress
import struct

from .errors import DropReason, MalformedPacket

V6 = 1 << 128  # the family tag on IPv6 address ints
ADDR_MASK = V6 - 1
_M64 = (1 << 64) - 1

PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ICMPV6 = 58
NO_NEXT_HEADER = 59

HOP_BY_HOP = 0
ROUTING = 43
FRAGMENT = 44
DEST_OPTIONS = 60
EXTENSIONS = frozenset((HOP_BY_HOP, ROUTING, FRAGMENT, DEST_OPTIONS))
# Upper layers the stack knows; any other Next Header is "unrecognized" (RFC 8200 4: Parameter
# Problem code 1), as Linux answers a protocol it has no handler for. AH/ESP are not spoken.
UPPER_LAYER = frozenset((PROTO_TCP, PROTO_UDP, PROTO_ICMPV6, NO_NEXT_HEADER))

# RFC 8200 sets no limit on the chain; 8 is our bound (a legitimate packet has at most a few:
# RFC 8200 4.1 lists 6 kinds, Destination Options at most twice), so a crafted chain of
# hundreds of tiny headers costs nothing.
MAX_EXTENSIONS = 8
MIN_MTU = 1280  # every IPv6 link carries this much (RFC 8200 5)

# ICMPv6 Parameter Problem codes (RFC 4443 3.4)
PROBLEM_HEADER_FIELD = 0  # erroneous header field
PROBLEM_NEXT_HEADER = 1  # unrecognized Next Header type
PROBLEM_OPTION = 2  # unrecognized IPv6 option

OPT_PAD1 = 0
OPT_PADN = 1
OPT_ROUTER_ALERT = 5  # MLD reports carry it in Hop-by-Hop (RFC 2711): known, nothing to do
_KNOWN_OPTIONS = frozenset((OPT_PADN, OPT_ROUTER_ALERT))

HEADER = struct.Struct("!IHBBQQQQ")  # version/class/flow, payload length, next, hop limit, addrs
_unpack_header = HEADER.unpack_from
_pack_header = HEADER.pack
_FRAGMENT = struct.Struct("!BBHI")  # next header, reserved, offset|M, identification
_unpack_fragment = _FRAGMENT.unpack_from


def is_multicast(addr: int) -> bool:
    """ff00::/8, for a tagged or untagged 128-bit address."""
    return (addr & ADDR_MASK) >> 120 == 0xFF


def bad_source(addr: int) -> bool:
    """Not one unicast host: multicast, loopback (never on a link, RFC 4291 2.5.3) or
    IPv4-mapped (RFC 4291 2.5.5.2; Linux drops these too). Unspecified (::) is the caller's:
    legitimate for ICMPv6 (MLD and DAD before an address exists), never for TCP."""
    a = addr & ADDR_MASK
    return a >> 120 == 0xFF or a == 1 or a >> 32 == 0xFFFF


class IPv6Header:
    """The fields the stack needs from a validated IPv6 header and its extension headers.

    `header_length` is where the upper-layer header starts (after the Fragment header, for a
    fragment); `protocol` is the Next Header found there. `fragment` is None, or
    (offset_bytes, more, ident, frag_header_offset). `problem` is None, or (code, pointer) for
    an ICMPv6 Parameter Problem that RFC 8200 requires: the packet must not be delivered, and
    `protocol`/`header_length` then describe where the walk stopped.
    """

    __slots__ = ("src", "dst", "protocol", "header_length", "total_length", "hop_limit",
                 "fragment", "problem")

    def __init__(self, src, dst, protocol, header_length, total_length, hop_limit,
                 fragment=None, problem=None):
        self.src = src
        self.dst = dst
        self.protocol = protocol
        self.header_length = header_length
        self.total_length = total_length
        self.hop_limit = hop_limit
        self.fragment = fragment
        self.problem = problem

    def __repr__(self) -> str:
        return (f"IPv6Header(protocol={self.protocol} header_length={self.header_length} "
                f"total_length={self.total_length} fragment={self.fragment} "
                f"problem={self.problem})")


def _options(packet, i: int, end: int, multicast_dst: bool) -> int | None:
    """Walk the TLV options of a Hop-by-Hop or Destination Options header in [i, end).

    Returns the offset of an unknown option whose action bits ask for a Parameter Problem
    (RFC 8200 4.2), else None; raises for one whose action is to drop silently.
    """
    while i < end:
        kind = packet[i]
        if kind == OPT_PAD1:
            i += 1
            continue
        if i + 2 > end or i + 2 + packet[i + 1] > end:
            raise MalformedPacket(DropReason.BAD_EXTENSION_HEADER, f"option {kind} at {i}")
        if kind not in _KNOWN_OPTIONS:
            action = kind >> 6
            if action == 0:  # skip over it
                pass
            elif action == 1 or (action == 3 and multicast_dst):
                raise MalformedPacket(DropReason.IPV6_OPTION_DISCARD, f"option {kind} at {i}")
            else:  # 10 always, 11 unless the destination is multicast
                return i
        i += 2 + packet[i + 1]
    return None


def parse_ipv6(packet) -> IPv6Header:
    """Validate an IPv6 header and walk its extension headers; MalformedPacket if bad.

    Bytes past 40 + payload length (link padding) are tolerated. Jumbograms (payload length 0
    with a Jumbo Payload option) are not supported: a TUN's MTU is far below 64 KB.
    """
    n = len(packet)
    if n < 40:
        raise MalformedPacket(DropReason.TRUNCATED, f"{n} bytes")
    word, plen, nxt, hop, s_hi, s_lo, d_hi, d_lo = _unpack_header(packet, 0)
    if word >> 28 != 6:
        raise MalformedPacket(DropReason.NOT_IPV6, f"version {word >> 28}")
    total = 40 + plen
    if total > n:
        raise MalformedPacket(DropReason.BAD_PAYLOAD_LENGTH, f"payload {plen}, have {n - 40}")
    src = (s_hi << 64) | s_lo
    if bad_source(src):
        raise MalformedPacket(DropReason.BAD_SOURCE, addr_text(src))
    src |= V6
    dst = (d_hi << 64) | d_lo | V6
    off = 40
    if nxt in UPPER_LAYER:  # the usual case: no extension headers
        if not (s_hi or s_lo) and nxt != PROTO_ICMPV6:
            raise MalformedPacket(DropReason.BAD_SOURCE, "::")
        return IPv6Header(src, dst, nxt, off, total, hop)
    pointer = 6  # offset of the Next Header field that named the header at `off`
    fragment = problem = None
    count = 0
    while nxt not in UPPER_LAYER:
        if nxt not in EXTENSIONS or (nxt == HOP_BY_HOP and off != 40):
            # Hop-by-Hop anywhere but first is treated as unrecognized (RFC 8200 4.1).
            problem = (PROBLEM_NEXT_HEADER, pointer)
            break
        count += 1
        if count > MAX_EXTENSIONS:
            raise MalformedPacket(DropReason.TOO_MANY_EXTENSION_HEADERS, f"over {MAX_EXTENSIONS}")
        if off + 8 > total:  # every extension header is at least 8 bytes
            raise MalformedPacket(DropReason.BAD_EXTENSION_HEADER, f"header {nxt} at {off}")
        if nxt == FRAGMENT:
            following, _reserved, field, ident = _unpack_fragment(packet, off)
            offset_bytes, more = field & 0xFFF8, field & 1
            if offset_bytes or more:
                # The rest of the chain is reassembly's to walk (RFC 8200 4.5).
                fragment = (offset_bytes, bool(more), ident, off)
                data = total - off - 8
                if more and data & 7:
                    problem = (PROBLEM_HEADER_FIELD, 4)  # points at the Payload Length
                elif offset_bytes + data > 65535:
                    problem = (PROBLEM_HEADER_FIELD, off + 2)  # points at the Fragment Offset
                nxt, off = following, off + 8
                break
            # An atomic fragment (offset 0, M 0) is processed as a whole packet (RFC 6946).
            pointer, nxt, off = off, following, off + 8
            continue
        end = off + (packet[off + 1] + 1) * 8
        if end > total:
            raise MalformedPacket(DropReason.BAD_EXTENSION_HEADER, f"header {nxt} at {off}")
        if nxt == ROUTING:
            # No routing type is implemented here (type 0 is deprecated, RFC 5095): with
            # segments left it is unrecognized, pointing at the Routing Type (RFC 8200 4.4).
            if packet[off + 3]:
                problem = (PROBLEM_HEADER_FIELD, off + 2)
                break
        else:
            at = _options(packet, off + 2, end, d_hi >> 56 == 0xFF)
            if at is not None:
                problem = (PROBLEM_OPTION, at)
                break
        pointer, nxt, off = off, packet[off], end
    if not (s_hi or s_lo) and nxt != PROTO_ICMPV6:
        raise MalformedPacket(DropReason.BAD_SOURCE, "::")
    return IPv6Header(src, dst, nxt, off, total, hop, fragment, problem)


def build_ipv6(src: int, dst: int, next_header: int, payload, *, hop_limit: int = 64,
               traffic_class: int = 0, flow_label: int = 0) -> bytes:
    """A 40-byte IPv6 header (addresses tagged or not), followed by `payload`."""
    plen = len(payload)
    if plen > 65535:
        raise ValueError(f"IPv6 payload of {plen} bytes needs a jumbogram")
    s = src & ADDR_MASK
    d = dst & ADDR_MASK
    hdr = _pack_header(0x60000000 | (traffic_class << 20) | flow_label, plen, next_header,
                       hop_limit, s >> 64, s & _M64, d >> 64, d & _M64)
    return b"".join((hdr, payload))


@functools.lru_cache(maxsize=4096)
def addr_text(addr: int) -> str:
    """Compressed text (RFC 5952) of a tagged or untagged 128-bit address.

    Cached: ipaddress takes ~6 µs to write one, and every state change of a connection names
    its two addresses (a stack talks with few addresses at a time; the cache is bounded)."""
    return str(ipaddress.IPv6Address(addr & ADDR_MASK))
