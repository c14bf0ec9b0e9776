"""Wire formats: IPv4, TCP with options, ICMP echo, the Internet checksum."""

from .checksum import internet_checksum, pseudo_header_sum, word_sum
from .errors import DropReason, MalformedPacket
from .icmp import echo_reply_for
from .ipv4 import PROTO_ICMP, PROTO_TCP, IPv4Header, addr_to_int, build_ipv4, int_to_addr, parse_ipv4
from .tcp import (ACK, CWR, ECE, FIN, PSH, RST, SYN, URG, Segment, build_options, build_segment,
                  flags_str, parse_tcp)

__all__ = [
    "ACK", "CWR", "ECE", "FIN", "PSH", "RST", "SYN", "URG", "DropReason", "IPv4Header",
    "MalformedPacket", "PROTO_ICMP", "PROTO_TCP", "Segment", "addr_to_int", "build_ipv4",
    "build_options", "build_segment", "echo_reply_for", "flags_str", "int_to_addr",
    "internet_checksum", "parse_ipv4", "parse_tcp", "pseudo_header_sum", "word_sum",
]
