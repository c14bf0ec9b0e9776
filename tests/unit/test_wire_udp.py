"""UDP, ICMP echo for the relay, and destination unreachable: exact bytes, scapy as an oracle both
ways, and a table of malformed datagrams each naming its DropReason."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, UDP, IPerror, UDPerror
from scapy.packet import Raw

from usertcp.wire import DropReason, MalformedPacket, addr_to_int, int_to_addr, parse_ipv4
from usertcp.wire.icmp import (UNREACH_ADMIN, UNREACH_FRAG_NEEDED, UNREACH_HOST, UNREACH_NET,
                               UNREACH_PORT, UNREACH_PROTOCOL, build_echo_message,
                               build_echo_reply, build_unreachable, parse_echo_request)
from usertcp.wire.udp import build_udp, parse_udp

R = DropReason
PROGRAM, DNS, GATEWAY = addr_to_int("10.0.2.100"), addr_to_int("10.0.2.3"), addr_to_int("10.0.2.2")

u32 = st.integers(0, 2**32 - 1)
good_source = u32.filter(lambda a: a != 0 and (a >> 24) != 127 and (a >> 24) < 224)
port = st.integers(1, 65535)


@pytest.fixture(autouse=True, scope="module")
def raw_udp_payloads():
    """Keep scapy from dissecting UDP payloads as DNS, NTP, ...: the payload must come back as the
    Raw bytes on the wire."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(UDP, "payload_guess", [])
        mp.setattr(UDPerror, "payload_guess", [])
        yield


def ref_checksum(data) -> int:
    """RFC 1071 word by word (not usertcp's)."""
    data = bytes(data)
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def parsed(packet: bytes) -> tuple[int, int, bytes]:
    sport, dport, payload = parse_udp(packet, parse_ipv4(packet), True)
    return sport, dport, bytes(payload)


# --- UDP: exact bytes --------------------------------------------------------------------------

HELLO = bytes.fromhex(
    "45000021" "00004000" "40112266" "0a000264" "0a000203"  # IPv4: 33 bytes, DF, TTL 64, UDP
    "13880035" "000d8fde"  # 5000 -> 53, length 13, checksum 0x8fde
    "68656c6c6f")  # "hello"


def test_build_udp_exact_bytes():
    assert build_udp(PROGRAM, DNS, 5000, 53, b"hello") == HELLO
    # The UDP checksum by the reference sum over pseudo-header and datagram.
    pseudo = HELLO[12:20] + struct.pack("!BBH", 0, 17, 13)
    assert ref_checksum(pseudo + HELLO[20:26] + b"\0\0" + HELLO[28:]) == 0x8FDE


def test_parse_udp_exact_bytes():
    assert parsed(HELLO) == (5000, 53, b"hello")


def test_build_udp_ttl_and_empty_payload():
    packet = build_udp(PROGRAM, DNS, 1, 2, b"", ttl=1)
    assert len(packet) == 28 and packet[8] == 1
    assert parsed(packet) == (1, 2, b"")


def test_computed_zero_checksum_is_sent_as_ffff():
    # Choose a 2-byte payload whose word makes the one's-complement sum 0xFFFF: the computed
    # checksum is then 0, which must go out as 0xFFFF (0 would mean "no checksum").
    sport, dport = 1000, 2000
    without = (pseudo_words := (PROGRAM >> 16) + (PROGRAM & 0xFFFF) + (DNS >> 16)
               + (DNS & 0xFFFF) + 17 + 10) + sport + dport + 10
    word = 0xFFFF - without % 0xFFFF
    assert pseudo_words and 0 < word <= 0xFFFF
    packet = build_udp(PROGRAM, DNS, sport, dport, word.to_bytes(2, "big"))
    assert packet[26:28] == b"\xff\xff"
    assert parsed(packet) == (sport, dport, word.to_bytes(2, "big"))
    assert bytes(IP(packet)) == packet
    again = IP(packet)
    del again[UDP].chksum
    assert bytes(again) == packet  # scapy also sends 0xFFFF


def test_build_udp_too_large():
    build_udp(PROGRAM, DNS, 1, 2, bytes(65507))
    with pytest.raises(ValueError):
        build_udp(PROGRAM, DNS, 1, 2, bytes(65508))


# --- UDP: scapy as oracle ----------------------------------------------------------------------

def check_scapy_reads_udp(packet, src, dst, sport, dport, payload, ttl=64):
    p = IP(packet)
    assert (p.version, p.ihl, p.len, int(p.flags), p.frag, p.ttl, p.proto) == (
        4, 5, len(packet), 2, 0, ttl, 17)
    assert (p.src, p.dst) == (int_to_addr(src), int_to_addr(dst))
    u = p[UDP]
    assert (u.sport, u.dport, u.len) == (sport, dport, 8 + len(payload))
    assert bytes(u.payload) == payload
    again = IP(packet)
    del again.chksum
    del again[UDP].chksum
    assert bytes(again) == packet


@settings(deadline=None)
@given(src=good_source, dst=u32, sport=st.integers(0, 65535), dport=port,
       payload=st.binary(max_size=300), ttl=st.integers(0, 255))
def test_usertcp_udp_parses_in_scapy(src, dst, sport, dport, payload, ttl):
    packet = build_udp(src, dst, sport, dport, payload, ttl=ttl)
    check_scapy_reads_udp(packet, src, dst, sport, dport, payload, ttl)
    assert parsed(packet) == (sport, dport, payload)


@pytest.mark.parametrize("size", [0, 1, 2, 3, 511, 1472, 8999, 65507])
def test_udp_payload_sizes_in_scapy(size):
    payload = bytes((i * 13 + 1) & 0xFF for i in range(size))
    packet = build_udp(PROGRAM, GATEWAY, 40000, 8080, payload)
    check_scapy_reads_udp(packet, PROGRAM, GATEWAY, 40000, 8080, payload)


@settings(deadline=None)
@given(src=good_source, dst=u32, sport=st.integers(0, 65535), dport=port,
       payload=st.binary(max_size=300), options=st.booleans(), no_checksum=st.booleans(),
       padding=st.binary(max_size=12))
def test_scapy_udp_parses_in_usertcp(src, dst, sport, dport, payload, options, no_checksum,
                                     padding):
    ip = IP(src=int_to_addr(src), dst=int_to_addr(dst),
            options=[b"\x94\x04\x00\x00"] if options else [])
    udp = UDP(sport=sport, dport=dport, chksum=0) if no_checksum else UDP(sport=sport, dport=dport)
    packet = bytes(ip / udp / Raw(payload)) + padding  # link padding past the total length
    assert parsed(packet) == (sport, dport, payload)


def test_udp_length_shorter_than_ip_payload():
    # 8 bytes of the IP payload lie after the UDP length: they are not UDP data, and the checksum
    # covers only the datagram.
    packet = _with_udp_checksum(bytes(IP(src="10.0.2.100", dst="10.0.2.3")
                                      / UDP(sport=7, dport=9, len=11) / Raw(b"abc" + b"trailing")))
    assert parsed(packet) == (7, 9, b"abc")


def test_parse_without_verifying_accepts_bad_checksum():
    packet = bytearray(HELLO)
    packet[27] ^= 1
    sport, dport, payload = parse_udp(bytes(packet), parse_ipv4(bytes(packet)), False)
    assert (sport, dport, bytes(payload)) == (5000, 53, b"hello")


# --- UDP: malformed ----------------------------------------------------------------------------

def _udp_ip(udp_bytes: bytes, **ip_fields) -> bytes:
    return bytes(IP(src="10.0.2.100", dst="10.0.2.3", proto=17, **ip_fields) / Raw(udp_bytes))


def _with_udp_checksum(packet: bytes) -> bytes:
    p = bytearray(packet)
    length = int.from_bytes(p[24:26], "big")
    p[26:28] = b"\0\0"
    pseudo = bytes(p[12:20]) + struct.pack("!BBH", 0, 17, length)
    p[26:28] = (ref_checksum(pseudo + bytes(p[20:20 + length])) or 0xFFFF).to_bytes(2, "big")
    return bytes(p)


def _flip(packet: bytes, at: int) -> bytes:
    p = bytearray(packet)
    p[at] ^= 0x10
    return bytes(p)


MALFORMED = {
    "empty": (_udp_ip(b""), R.UDP_TRUNCATED),
    "7-bytes": (_udp_ip(b"\x13\x88\x00\x35\x00\x08\x00"), R.UDP_TRUNCATED),
    "7-bytes-despite-padding": (_udp_ip(struct.pack("!HHHH", 1, 2, 8, 0) + b"xyz", len=27),
                                R.UDP_TRUNCATED),
    "length-0": (_udp_ip(struct.pack("!HHHH", 1, 2, 0, 0) + b"abc"), R.BAD_UDP_LENGTH),
    "length-7": (_udp_ip(struct.pack("!HHHH", 1, 2, 7, 0) + b"abc"), R.BAD_UDP_LENGTH),
    "length-past-ip": (_udp_ip(struct.pack("!HHHH", 1, 2, 12, 0) + b"abc"), R.BAD_UDP_LENGTH),
    "length-past-total-length": (_udp_ip(struct.pack("!HHHH", 1, 2, 11, 0) + b"abc" + b"pad",
                                         len=30), R.BAD_UDP_LENGTH),
    "checksum-field": (_flip(HELLO, 27), R.BAD_UDP_CHECKSUM),
    "checksum-payload": (_flip(HELLO, 30), R.BAD_UDP_CHECKSUM),
    "checksum-odd-last-byte": (_flip(HELLO, 32), R.BAD_UDP_CHECKSUM),
    "length-flipped": (_flip(HELLO, 24), R.BAD_UDP_LENGTH),  # 0x100d: past the packet
    # Another source address (IP header checksum fixed): only the pseudo-header differs.
    "checksum-pseudo-header": (bytes(IP(src="10.0.2.101", dst="10.0.2.3", proto=17)
                                     / Raw(HELLO[20:])), R.BAD_UDP_CHECKSUM),
    "dport-0": (_with_udp_checksum(_udp_ip(struct.pack("!HHHH", 5000, 0, 11, 0) + b"abc")),
                R.BAD_PORT),
    "dport-0-no-checksum": (_udp_ip(struct.pack("!HHHH", 5000, 0, 8, 0)), R.BAD_PORT),
}


@pytest.mark.parametrize("name", MALFORMED)
def test_malformed_udp(name):
    packet, reason = MALFORMED[name]
    with pytest.raises(MalformedPacket) as info:
        parse_udp(packet, parse_ipv4(packet), True)
    assert info.value.reason is reason


def test_sport_0_is_allowed():
    # Source port 0: the sender expects no reply (RFC 768); the datagram itself is valid.
    assert parsed(build_udp(PROGRAM, DNS, 0, 53, b"q")) == (0, 53, b"q")


# --- ICMP echo ---------------------------------------------------------------------------------

ECHO_REPLY_ABC = bytes.fromhex(
    "4500001f" "00004000" "40012279" "0a000202" "0a000264"  # IPv4: 31 bytes, ICMP
    "00002968" "12340001"  # reply, checksum 0x2968, ident 0x1234, seq 1
    "616263")  # "abc"


def test_build_echo_reply_exact_bytes():
    assert build_echo_reply(GATEWAY, PROGRAM, 0x1234, 1, b"abc") == ECHO_REPLY_ABC
    assert ref_checksum(ECHO_REPLY_ABC[20:22] + b"\0\0" + ECHO_REPLY_ABC[24:]) == 0x2968


def test_echo_message_all_zero_has_checksum_ffff():
    assert build_echo_message(0, 0, 0, b"") == b"\x00\x00\xff\xff\x00\x00\x00\x00"
    assert build_echo_message(0, 0, 0, bytes(5))[2:4] == b"\xff\xff"


def test_echo_message_words_summing_to_ffff_has_checksum_0():
    # Nonzero words whose one's-complement sum is 0xFFFF: the checksum is 0 (as scapy, Linux).
    seq = 0xFFFF - 0x0800 - 0x1234
    assert build_echo_message(8, 0x1234, seq, b"")[2:4] == b"\0\0"
    assert bytes(ICMP(type=8, id=0x1234, seq=seq))[2:4] == b"\0\0"


def check_scapy_reads_echo_reply(packet, src, dst, ident, seq, data):
    p = IP(packet)
    assert (p.src, p.dst, p.proto, p.len) == (int_to_addr(src), int_to_addr(dst), 1, len(packet))
    icmp = p[ICMP]
    assert (icmp.type, icmp.code, icmp.id, icmp.seq, bytes(icmp.payload)) == (0, 0, ident, seq,
                                                                              data)
    again = IP(packet)
    del again.chksum
    del again[ICMP].chksum
    assert bytes(again) == packet


@settings(deadline=None)
@given(src=good_source, dst=u32, ident=st.integers(0, 65535), seq=st.integers(0, 65535),
       data=st.binary(max_size=300))
def test_echo_reply_in_scapy(src, dst, ident, seq, data):
    check_scapy_reads_echo_reply(build_echo_reply(src, dst, ident, seq, data), src, dst, ident,
                                 seq, data)


@settings(deadline=None)
@given(ident=st.integers(0, 65535), seq=st.integers(0, 65535), data=st.binary(max_size=300),
       options=st.booleans(), padding=st.binary(max_size=12))
def test_parse_echo_request_from_scapy(ident, seq, data, options, padding):
    packet = bytes(IP(src="10.0.2.100", dst="192.0.2.1",
                      options=[b"\x94\x04\x00\x00"] if options else [])
                   / ICMP(type=8, id=ident, seq=seq) / Raw(data)) + padding
    got_ident, got_seq, got_data = parse_echo_request(packet, parse_ipv4(packet))
    assert (got_ident, got_seq, bytes(got_data)) == (ident, seq, data)
    # The request message that build_echo_message writes is the one scapy wrote.
    hl = 24 if options else 20
    assert build_echo_message(8, ident, seq, data) == packet[hl:hl + 8 + len(data)]


def _echo_reason(packet: bytes) -> DropReason:
    with pytest.raises(MalformedPacket) as info:
        parse_echo_request(packet, parse_ipv4(packet))
    return info.value.reason


@pytest.mark.parametrize("packet,reason", [
    (bytes(IP(src="10.0.2.100", dst="1.2.3.4", proto=1)), R.ICMP_TRUNCATED),
    (bytes(IP(src="10.0.2.100", dst="1.2.3.4", proto=1) / Raw(b"\x08\0\0\0\0\0\0")),
     R.ICMP_TRUNCATED),
    (_flip(bytes(IP(src="10.0.2.100", dst="1.2.3.4") / ICMP(type=8) / Raw(b"abc")), 30),
     R.BAD_ICMP_CHECKSUM),
    (bytes(IP(src="10.0.2.100", dst="1.2.3.4") / ICMP(type=0)), R.ICMP_IGNORED),
    (bytes(IP(src="10.0.2.100", dst="1.2.3.4") / ICMP(type=8, code=1)), R.ICMP_IGNORED),
    (bytes(IP(src="10.0.2.100", dst="1.2.3.4") / ICMP(type=3, code=3)), R.ICMP_IGNORED),
], ids=["empty", "7-bytes", "checksum", "reply", "code-1", "unreachable"])
def test_malformed_echo_request(packet, reason):
    assert _echo_reason(packet) is reason


# --- destination unreachable -------------------------------------------------------------------

def test_constants():
    assert (UNREACH_NET, UNREACH_HOST, UNREACH_PROTOCOL, UNREACH_PORT, UNREACH_FRAG_NEEDED,
            UNREACH_ADMIN) == (0, 1, 2, 3, 4, 13)


PORT_UNREACHABLE_HELLO = bytes.fromhex(
    "4500003d" "00004000" "4001225a" "0a000203" "0a000264"  # IPv4: 61 bytes, 10.0.2.3 -> program
    "03031582" "00000000"  # type 3 code 3, checksum 0x1582, unused, MTU 0
) + HELLO  # the whole original datagram quoted


def test_build_unreachable_exact_bytes():
    assert build_unreachable(DNS, HELLO, UNREACH_PORT) == PORT_UNREACHABLE_HELLO
    message = PORT_UNREACHABLE_HELLO[20:]
    assert ref_checksum(message[:2] + b"\0\0" + message[4:]) == 0x1582


def test_build_unreachable_frag_needed_carries_mtu():
    packet = build_unreachable(GATEWAY, HELLO, UNREACH_FRAG_NEEDED, mtu=1400)
    assert packet[20:28] == bytes.fromhex("03041009" "00000578")
    assert IP(packet)[ICMP].nexthopmtu == 1400


def check_scapy_reads_unreachable(packet, src, original, code):
    p = IP(packet)
    assert (p.src, p.dst, p.proto, p.len) == (int_to_addr(src), IP(original).src, 1, len(packet))
    icmp = p[ICMP]
    assert (icmp.type, icmp.code) == (3, code)
    # (scapy guesses an RFC 4884 extension in quotes over 128 bytes: compare the bytes here.)
    assert packet[28:] == original[:len(packet) - 28]
    quoted = p[IPerror]
    assert (quoted.src, quoted.dst, quoted.len) == (IP(original).src, IP(original).dst,
                                                    IP(original).len)
    again = IP(packet)
    del again.chksum
    del again[ICMP].chksum
    assert bytes(again) == packet
    assert parse_ipv4(packet).total_length == len(packet)


@pytest.mark.parametrize("size", [0, 1, 8, 519, 520, 521, 1472, 65507])
def test_unreachable_quotes_at_most_576_bytes(size):
    original = build_udp(PROGRAM, DNS, 5353, 9, bytes(range(256)) * (size // 256) + bytes(
        size % 256))
    packet = build_unreachable(DNS, original, UNREACH_PORT)
    assert len(packet) == min(576, 28 + len(original))
    check_scapy_reads_unreachable(packet, DNS, original, UNREACH_PORT)
    quoted = IP(packet)[UDPerror]
    assert (quoted.sport, quoted.dport) == (5353, 9)


@settings(deadline=None)
@given(src=good_source, code=st.sampled_from([0, 1, 2, 3, 13]), payload=st.binary(max_size=700),
       options=st.booleans(), padding=st.binary(max_size=12))
def test_unreachable_about_scapy_packets(src, code, payload, options, padding):
    original = bytes(IP(src="10.0.2.100", dst="192.0.2.7",
                        options=[b"\x94\x04\x00\x00"] if options else [])
                     / UDP(sport=4000, dport=4001) / Raw(payload))
    packet = build_unreachable(src, original + padding, code)
    assert len(packet) == min(576, 28 + len(original))  # the padding is not quoted
    check_scapy_reads_unreachable(packet, src, original, code)
    assert IP(packet)[IPerror].ihl == (6 if options else 5)


def test_unreachable_about_echo_request_and_tcp():
    echo = bytes(IP(src="10.0.2.100", dst="192.0.2.7") / ICMP(type=8) / Raw(b"ping"))
    assert build_unreachable(GATEWAY, echo, UNREACH_HOST) is not None
    tcp = bytes.fromhex("45000028000040004006" "0000" "0a000264c0000207") + bytes(20)
    assert build_unreachable(GATEWAY, tcp, UNREACH_ADMIN)[28:] == tcp


@pytest.mark.parametrize("original", [
    bytes(IP(src="10.0.2.100", dst="192.0.2.7") / ICMP(type=t) / Raw(b"x" * 28))
    for t in (3, 4, 5, 11, 12)
] + [
    bytes(IP(src="10.0.2.100", dst="192.0.2.7", proto=1)),  # no type byte: cannot tell
    bytes(IP(src="10.0.2.100", dst="192.0.2.7", frag=185) / UDP(dport=9)),  # not the first
    bytes(IP(src="10.0.2.100", dst="255.255.255.255") / UDP(dport=9)),
    bytes(IP(src="10.0.2.100", dst="224.0.0.251") / UDP(dport=5353)),
    bytes(IP(src="0.0.0.0", dst="10.0.2.2") / UDP(sport=68, dport=67)),
    bytes(IP(src="127.0.0.1", dst="10.0.2.2") / UDP(dport=9)),
    bytes(IP(src="239.1.1.1", dst="10.0.2.2") / UDP(dport=9)),
    bytes(IP(src="250.1.1.1", dst="10.0.2.2") / UDP(dport=9)),
], ids=["about-unreachable", "about-source-quench", "about-redirect", "about-time-exceeded",
        "about-parameter-problem", "about-empty-icmp", "later-fragment", "to-broadcast",
        "to-multicast", "from-zero", "from-loopback", "from-multicast", "from-class-e"])
def test_no_error_about(original):
    assert build_unreachable(GATEWAY, original, UNREACH_HOST) is None


def test_first_fragment_gets_an_error():
    original = bytes(IP(src="10.0.2.100", dst="192.0.2.7", flags="MF") / UDP(dport=9)
                     / Raw(b"x" * 100))
    assert build_unreachable(GATEWAY, original, UNREACH_PORT) is not None


@pytest.mark.parametrize("original,reason", [
    (b"", R.TRUNCATED),
    (HELLO[:19], R.TRUNCATED),
    (b"\x60" + HELLO[1:], R.NOT_IPV4),
    (b"\x44" + HELLO[1:], R.BAD_IHL),
    (b"\x4f" + HELLO[1:], R.BAD_IHL),
    (HELLO[:2] + b"\x00\x10" + HELLO[4:], R.BAD_TOTAL_LENGTH),
], ids=["empty", "19-bytes", "ipv6", "ihl-16", "ihl-past-packet", "total-under-ihl"])
def test_unreachable_about_malformed_original(original, reason):
    with pytest.raises(MalformedPacket) as info:
        build_unreachable(GATEWAY, original, UNREACH_PORT)
    assert info.value.reason is reason
