"""ICMP echo: enough to answer `ping` of the stack's address."""

from __future__ import annotations

from .checksum import internet_checksum, word_sum
from .errors import DropReason, MalformedPacket
from .ipv4 import PROTO_ICMP, IPv4Header, build_ipv4

ECHO_REPLY = 0
ECHO_REQUEST = 8


def echo_reply_for(packet, ip: IPv4Header) -> bytes:
    """The echo reply to an echo request, or MalformedPacket if it is not one."""
    start, end = ip.header_length, ip.total_length
    if end - start < 8:
        raise MalformedPacket(DropReason.ICMP_TRUNCATED)
    msg = memoryview(packet)[start:end]
    if word_sum(msg):
        raise MalformedPacket(DropReason.BAD_ICMP_CHECKSUM)
    if msg[0] != ECHO_REQUEST or msg[1] != 0:
        raise MalformedPacket(DropReason.ICMP_IGNORED, f"type {msg[0]}")
    reply = bytearray(msg)
    reply[0] = ECHO_REPLY
    reply[2:4] = b"\0\0"
    reply[2:4] = internet_checksum(reply).to_bytes(2, "big")
    return build_ipv4(ip.dst, ip.src, PROTO_ICMP, reply)
