"""Why a packet was dropped: one named reason per check, counted by the stack."""

from __future__ import annotations

import enum


class DropReason(str, enum.Enum):
    TRUNCATED = "truncated"  # shorter than an IPv4 header
    NOT_IPV4 = "not-ipv4"  # version field is not 4 (IPv6 included)
    BAD_IHL = "bad-ihl"  # header length < 20 or past the packet
    BAD_TOTAL_LENGTH = "bad-total-length"  # total length lies about the packet
    BAD_IP_CHECKSUM = "bad-ip-checksum"
    FRAGMENT = "fragment"  # reassembly is not supported
    NOT_FOR_US = "not-for-us"  # destination is not the stack's address
    BAD_SOURCE = "bad-source"  # broadcast, multicast, zero or loopback source
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


class MalformedPacket(Exception):
    """Raised by parsers; the stack catches it, counts `reason` and drops."""

    def __init__(self, reason: DropReason, detail: str = ""):
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason
