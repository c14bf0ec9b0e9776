"""Why a packet was dropped: one named reason per check, counted by the stack."""

from __future__ import annotations

import enum


class DropReason(str, enum.Enum):
    TRUNCATED = "truncated"  # shorter than an IP header (20 bytes IPv4, 40 IPv6)
    NOT_IPV4 = "not-ipv4"  # version is not 4 (parse_ipv4), or neither 4 nor 6 (parse_packet)
    BAD_IHL = "bad-ihl"  # header length < 20 or past the packet
    BAD_TOTAL_LENGTH = "bad-total-length"  # total length lies about the packet
    BAD_IP_CHECKSUM = "bad-ip-checksum"
    FRAGMENT = "fragment"  # reassembly is not supported
    NOT_FOR_US = "not-for-us"  # destination is not the stack's address
    BAD_SOURCE = "bad-source"  # broadcast, multicast, zero, loopback (IPv6: also v4-mapped)
    UNSUPPORTED_PROTOCOL = "unsupported-protocol"
    TCP_TRUNCATED = "tcp-truncated"  # shorter than a TCP header
    BAD_DATA_OFFSET = "bad-data-offset"
    BAD_TCP_CHECKSUM = "bad-tcp-checksum"
    BAD_OPTIONS = "bad-options"  # option list overruns or has a wrong length
    BAD_PORT = "bad-port"  # port 0
    BAD_FLAGS = "bad-flags"  # SYN+FIN, SYN+RST: never valid
    ICMP_TRUNCATED = "icmp-truncated"
    BAD_ICMP_CHECKSUM = "bad-icmp-checksum"
    ICMP_IGNORED = "icmp-ignored"  # ICMP other than echo request
    UDP_TRUNCATED = "udp-truncated"  # shorter than a UDP header
    BAD_UDP_LENGTH = "bad-udp-length"  # length field under 8 or past the IP payload
    BAD_UDP_CHECKSUM = "bad-udp-checksum"
    # IPv6 (RFC 8200) and ICMPv6 (RFC 4443)
    NOT_IPV6 = "not-ipv6"  # parse_ipv6 of a packet whose version is not 6
    BAD_PAYLOAD_LENGTH = "bad-payload-length"  # IPv6 payload length runs past the packet
    BAD_EXTENSION_HEADER = "bad-extension-header"  # extension header or option overruns
    TOO_MANY_EXTENSION_HEADERS = "too-many-extension-headers"  # more than ipv6.MAX_EXTENSIONS
    IPV6_OPTION_DISCARD = "ipv6-option-discard"  # unknown option whose action says drop silently
    ICMPV6_TRUNCATED = "icmpv6-truncated"  # shorter than the message type needs
    BAD_ICMPV6_CHECKSUM = "bad-icmpv6-checksum"
    # IP fragment reassembly (usertcp/fragments.py)
    FRAGMENT_BAD_HEADER = "fragment-bad-header"  # IPv6 Fragment header not where the caller said
    FRAGMENT_BAD_LENGTH = "fragment-bad-length"  # empty, or not last and not a multiple of 8 bytes
    FRAGMENT_TOO_BIG = "fragment-too-big"  # would pass 65535 bytes (IPv4 total, IPv6 payload)
    FRAGMENT_OVERLAP = "fragment-overlap"  # overlaps another: whole datagram dropped (RFC 5722)
    FRAGMENT_BAD_END = "fragment-bad-end"  # contradicts the datagram's end: whole datagram dropped
    # answered: an ICMPv6 Parameter Problem went back (RFC 8200 4)
    IPV6_PARAMETER_PROBLEM = "ipv6-parameter-problem"
    # an ICMP error about no connection of ours, or quoting a sequence number it never sent
    # (late, or a blind attack: RFC 5927)
    ICMP_UNMATCHED = "icmp-unmatched"


class MalformedPacket(Exception):
    """Raised by parsers; the stack catches it, counts `reason` and drops."""

    def __init__(self, reason: DropReason, detail: str = ""):
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason
