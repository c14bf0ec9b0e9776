"""ICMP echo: usertcp answers scapy-built echo requests with replies scapy accepts."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP
from scapy.packet import Raw

from usertcp.wire import (PROTO_ICMP, DropReason, IPv4Header, MalformedPacket, echo_reply_for,
                          parse_ipv4)
from usertcp.wire.packet import parse_packet

PEER, US = "10.0.0.1", "10.0.0.2"


def echo_request(ident=0x1234, seq=1, payload=b"abcdefgh", **ip_fields) -> bytes:
    return bytes(IP(src=PEER, dst=US, **ip_fields) / ICMP(type=8, code=0, id=ident, seq=seq)
                 / Raw(payload))


def reply_to(request: bytes) -> bytes:
    ip = parse_packet(request)
    assert isinstance(ip, IPv4Header) and ip.protocol == PROTO_ICMP
    return echo_reply_for(request, ip)


def check_reply(reply: bytes, ident: int, seq: int, payload: bytes) -> None:
    p = IP(reply)
    assert (p.src, p.dst, p.proto, p.ihl, p.len, p.frag) == (US, PEER, 1, 5, len(reply), 0)
    icmp = p[ICMP]
    assert (icmp.type, icmp.code, icmp.id, icmp.seq) == (0, 0, ident, seq)
    assert bytes(icmp.payload) == payload
    # scapy recomputes both checksums to the same values.
    again = IP(reply)
    del again.chksum
    del again[ICMP].chksum
    assert bytes(again) == reply
    # And usertcp itself accepts the reply's IP header.
    assert parse_ipv4(reply).total_length == len(reply)


def test_echo_reply_basic():
    request = echo_request()
    reply = reply_to(request)
    check_reply(reply, 0x1234, 1, b"abcdefgh")


@pytest.mark.parametrize("size", [0, 1, 2, 7, 56, 1472])
def test_echo_reply_payload_sizes(size):
    payload = bytes((i * 31 + 7) & 0xFF for i in range(size))
    check_reply(reply_to(echo_request(7, 9, payload)), 7, 9, payload)


def test_echo_reply_when_message_sums_to_zero():
    # id 0, seq 0, no data: the reply is all zeros but for its checksum, which must be 0xFFFF
    # (a receiver's one's-complement sum of an all-zero message with checksum 0 is +0: invalid).
    reply = reply_to(echo_request(0, 0, b""))
    check_reply(reply, 0, 0, b"")
    assert reply[22:24] == b"\xff\xff"


def test_echo_request_with_ip_options():
    request = bytes(IP(src=PEER, dst=US, options=[b"\x94\x04\x00\x00"]) / ICMP(id=5, seq=6)
                    / Raw(b"opt"))
    assert request[0] == 0x46
    check_reply(reply_to(request), 5, 6, b"opt")


def test_echo_request_with_link_padding():
    request = echo_request(1, 2, b"pad") + b"\0" * 11
    check_reply(reply_to(request), 1, 2, b"pad")


@settings(deadline=None)
@given(ident=st.integers(0, 65535), seq=st.integers(0, 65535), payload=st.binary(max_size=200))
def test_echo_reply_random(ident, seq, payload):
    check_reply(reply_to(echo_request(ident, seq, payload)), ident, seq, payload)


def _reason(packet: bytes) -> DropReason:
    ip = parse_packet(packet)
    with pytest.raises(MalformedPacket) as info:
        echo_reply_for(packet, ip)
    return info.value.reason


@pytest.mark.parametrize("flip_at", [0, 2, 3, 4, 7, 8, 10])
def test_bad_icmp_checksum(flip_at):
    p = bytearray(echo_request(payload=b"abc"))  # odd: the last byte is padded for the sum
    p[20 + flip_at] ^= 0x04
    assert _reason(bytes(p)) is DropReason.BAD_ICMP_CHECKSUM


@pytest.mark.parametrize("icmp_type,code", [(0, 0), (3, 1), (11, 0), (13, 0), (8, 1)])
def test_non_echo_request_is_ignored(icmp_type, code):
    packet = bytes(IP(src=PEER, dst=US) / ICMP(type=icmp_type, code=code) / Raw(b"x" * 8))
    assert _reason(packet) is DropReason.ICMP_IGNORED


@pytest.mark.parametrize("length", [0, 1, 4, 7])
def test_truncated_icmp(length):
    packet = bytes(IP(src=PEER, dst=US, proto=1) / Raw(b"\x08" + b"\0" * (length - 1)
                                                         if length else b""))
    assert _reason(packet) is DropReason.ICMP_TRUNCATED


def test_truncated_by_total_length_despite_padding():
    # 16 bytes follow the IP header, but total length says only 7 of them are ICMP.
    packet = bytes(IP(src=PEER, dst=US, proto=1, len=27) / Raw(bytes(ICMP(type=8)) + b"\0" * 8))
    assert len(packet) == 36
    assert _reason(packet) is DropReason.ICMP_TRUNCATED
