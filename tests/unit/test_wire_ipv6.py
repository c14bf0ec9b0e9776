"""IPv6 (RFC 8200) and ICMPv6 (RFC 4443) on the wire: exact bytes, scapy as an independent
oracle in both directions, the extension-header walk and its Parameter Problems, and a table of
malformed packets that must each raise MalformedPacket with their named reason.
"""

from __future__ import annotations

import errno
import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import TCP
from scapy.layers.inet6 import (HBHOptUnknown, ICMPv6DestUnreach, ICMPv6EchoReply,
                                ICMPv6EchoRequest, ICMPv6MLDone, ICMPv6MLQuery, ICMPv6MLReport,
                                ICMPv6MLReport2, ICMPv6ND_NA, ICMPv6ND_NS, ICMPv6ND_RS,
                                ICMPv6PacketTooBig, ICMPv6ParamProblem, IPv6, IPv6ExtHdrDestOpt,
                                IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting, Pad1,
                                PadN, RouterAlert)
from scapy.packet import Raw

from usertcp.wire import (ACK, FIN, PSH, RST, SYN, DropReason, MalformedPacket, Segment,
                          addr_to_int, build_options, build_segment, int_to_addr, parse_ipv4,
                          parse_tcp)
from usertcp.wire import icmpv6
from usertcp.wire.checksum import finish, pseudo_header_sum, word_sum
from usertcp.wire.icmpv6 import (QUIET_TYPES, build_dest_unreachable6, build_echo_reply6,
                                 build_param_problem, parse_dest_unreachable6,
                                 parse_echo_request6, parse_icmpv6, parse_packet_too_big,
                                 unreachable_errno)
from usertcp.wire.ipv6 import MAX_EXTENSIONS, V6, IPv6Header, build_ipv6, parse_ipv6
from usertcp.wire.packet import parse_packet

R = DropReason
A, B = "fd00:7::2", "fd00:7::1"
SRC, DST = addr_to_int(A), addr_to_int(B)


@pytest.fixture(autouse=True, scope="module")
def raw_tcp_payloads():
    """Keep scapy from dissecting TCP payloads as HTTP, DNS, ... (if another module bound them)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(TCP, "payload_guess", [])
        yield


# --- reference checksum (not usertcp's) -----------------------------------------------------------

def ref_checksum(data) -> int:
    data = bytes(data)
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def pseudo6(src: str, dst: str, length: int, next_header: int) -> bytes:
    return (ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address(dst).packed
            + struct.pack("!IxxxB", length, next_header))


def fix_upper(p: bytearray, off: int, csum_at: int, next_header: int) -> bytearray:
    """Recompute the upper-layer checksum (field at off + csum_at) of an IPv6 packet."""
    end = 40 + int.from_bytes(p[4:6], "big")
    p[off + csum_at:off + csum_at + 2] = b"\0\0"
    src = str(ipaddress.IPv6Address(bytes(p[8:24])))
    dst = str(ipaddress.IPv6Address(bytes(p[24:40])))
    csum = ref_checksum(pseudo6(src, dst, end - off, next_header) + bytes(p[off:end]))
    p[off + csum_at:off + csum_at + 2] = csum.to_bytes(2, "big")
    return p


# --- addresses ------------------------------------------------------------------------------------

def test_address_helpers_both_families():
    assert SRC == int(ipaddress.IPv6Address(A)) | V6 and SRC >> 128 == 1
    assert int_to_addr(SRC) == A
    assert addr_to_int(ipaddress.IPv6Address(A)) == SRC
    assert int_to_addr(addr_to_int("fd00:0:0:0:0:0:0:1")) == "fd00::1"  # compressed
    assert int_to_addr(addr_to_int("::")) == "::"
    assert addr_to_int("::ffff:10.0.0.1") == 0xFFFF0A000001 | V6  # stays IPv6
    assert addr_to_int("10.0.0.1") == 0x0A000001 and int_to_addr(0x0A000001) == "10.0.0.1"
    assert addr_to_int(ipaddress.IPv4Address("1.2.3.4")) == 0x01020304
    assert addr_to_int(SRC) == SRC  # ints pass through
    for bad in ("fd00::g", "1:2:3:4:5:6:7:8:9", "1.2.3", "", "::ffff:1.2.3"):
        with pytest.raises(ValueError):
            addr_to_int(bad)


@given(st.integers(0, 2**128 - 1), st.integers(0, 2**128 - 1), st.integers(0, 255),
       st.integers(0, 2**32 - 1))
def test_pseudo_header_sum_v6_matches_packed(s, d, proto, length):
    packed = (s.to_bytes(16, "big") + d.to_bytes(16, "big") + struct.pack("!IxxxB", length, proto))
    assert pseudo_header_sum(s | V6, d | V6, proto, length) % 0xFFFF == word_sum(packed)
    assert finish(pseudo_header_sum(s | V6, d | V6, proto, length)) == ref_checksum(packed)


# --- exact bytes ----------------------------------------------------------------------------------

SYNACK = bytes.fromhex(
    "6000000000180640"
    "fd000007000000000000000000000002"
    "fd000007000000000000000000000001"
    "00509c40010203040a0b0c0d6012ffffe7690000020405a0")


def test_build_segment_v6_exact_bytes():
    packet = build_segment(SRC, DST, 80, 40000, 0x01020304, 0x0A0B0C0D, SYN | ACK, 65535,
                           build_options(mss=1440))
    assert packet == SYNACK
    seg = parse_packet(packet)
    assert isinstance(seg, Segment)
    assert (seg.src, seg.dst, seg.sport, seg.dport, seg.seq, seg.ack, seg.flags, seg.window,
            seg.mss) == (SRC, DST, 80, 40000, 0x01020304, 0x0A0B0C0D, SYN | ACK, 65535, 1440)


def test_build_segment_v6_offload_leaves_pseudo_header_sum():
    packet = build_segment(SRC, DST, 80, 40000, 1, 2, ACK, 100, b"", b"abc", csum_offload=True)
    field = int.from_bytes(packet[56:58], "big")
    ref = sum(struct.unpack("!20H", pseudo6(A, B, 23, 6)))
    assert field % 0xFFFF == ref % 0xFFFF
    # Finishing it as the device would (sum over the TCP bytes, complement) gives a valid packet.
    p = bytearray(packet)
    p[56:58] = ref_checksum(pseudo6(A, B, 23, 6) + bytes(p[40:56]) + b"\0\0"
                            + bytes(p[58:])).to_bytes(2, "big")
    assert bytes(p) == build_segment(SRC, DST, 80, 40000, 1, 2, ACK, 100, b"", b"abc")


def test_build_ipv6_exact_bytes():
    packet = build_ipv6(SRC, DST, 59, b"\x01\x02\x03", hop_limit=9, traffic_class=0xAB,
                        flow_label=0xCDEF1)
    assert packet == (bytes.fromhex("6abcdef1" "0003" "3b" "09") + ipaddress.IPv6Address(A).packed
                      + ipaddress.IPv6Address(B).packed + b"\x01\x02\x03")
    ip = parse_ipv6(packet)
    assert (ip.src, ip.dst, ip.protocol, ip.header_length, ip.total_length, ip.hop_limit,
            ip.fragment, ip.problem) == (SRC, DST, 59, 40, 43, 9, None, None)
    with pytest.raises(ValueError):
        build_ipv6(SRC, DST, 59, bytes(65536))


def test_echo_reply_exact_bytes():
    packet = build_echo_reply6(SRC, DST, 0x1234, 7, b"ping")
    assert packet == bytes.fromhex(
        "60000000000c3a40fd000007000000000000000000000002fd000007000000000000000000000001"
        "8100939a1234000770696e67")


# --- usertcp -> scapy -----------------------------------------------------------------------------

u32 = st.integers(0, 2**32 - 1)
port = st.integers(1, 65535)
unicast6 = st.integers(1 << 124, (0xFE << 120) - 1).map(lambda a: a | V6)  # 1000::/4 .. fdff::
valid_flags = st.integers(0, 255).filter(lambda f: not (f & SYN and f & (FIN | RST)))


@settings(deadline=None)
@given(src=unicast6, dst=unicast6, sport=port, dport=port, seq=u32, ack=u32, flags=valid_flags,
       window=st.integers(0, 65535), payload=st.binary(max_size=300),
       hop=st.integers(0, 255), mss=st.none() | st.integers(0, 65535),
       ts=st.none() | st.tuples(u32, u32), sack=st.booleans())
def test_usertcp_v6_packets_parse_in_scapy(src, dst, sport, dport, seq, ack, flags, window,
                                           payload, hop, mss, ts, sack):
    options = build_options(mss=mss, sack_permitted=sack, timestamp=ts)
    packet = build_segment(src, dst, sport, dport, seq, ack, flags, window, options, payload,
                           ttl=hop)
    p = IPv6(packet)
    assert (p.version, p.tc, p.fl, p.plen, p.nh, p.hlim) == (6, 0, 0, len(packet) - 40, 6, hop)
    assert (p.src, p.dst) == (int_to_addr(src), int_to_addr(dst))
    t = p[TCP]
    assert (t.sport, t.dport, t.seq, t.ack, int(t.flags), t.window, t.urgptr) == (
        sport, dport, seq, ack, flags, window, 0)
    assert bytes(t.payload) == payload
    again = IPv6(packet)
    del again[TCP].chksum
    assert bytes(again) == packet
    # And back: usertcp parses what it built.
    seg = parse_packet(packet)
    assert (seg.src, seg.dst, seg.mss, seg.sack_permitted, bytes(seg.payload)) == (
        src, dst, mss, sack, payload)
    assert (seg.ts_val, seg.ts_ecr) == (ts or (None, None))


def test_echo_reply_checksum_in_scapy():
    for data in (b"", b"x", bytes(range(256)) * 4):
        packet = build_echo_reply6(SRC, DST, 0xFFFF, 0, data)
        p = IPv6(packet)
        assert isinstance(p.payload, ICMPv6EchoReply)
        assert (p.payload.id, p.payload.seq, p.payload.data, p.hlim) == (0xFFFF, 0, data, 64)
        again = IPv6(packet)
        del again[ICMPv6EchoReply].cksum
        assert bytes(again) == packet


# --- scapy -> usertcp -----------------------------------------------------------------------------

SKIPPABLE_OPTION_TYPES = [2, 3, 4, 6, 7, 0x1E, 0x3E]  # action bits 00: skip over them


@st.composite
def tlv_options(draw):
    out = []
    for kind in draw(st.lists(st.sampled_from(["pad1", "padn", "ra", "unknown"]), max_size=4)):
        if kind == "pad1":
            out.append(Pad1())
        elif kind == "padn":
            out.append(PadN(optdata=b"\0" * draw(st.integers(0, 5))))
        elif kind == "ra":
            out.append(RouterAlert())
        else:
            out.append(HBHOptUnknown(otype=draw(st.sampled_from(SKIPPABLE_OPTION_TYPES)),
                                     optdata=draw(st.binary(max_size=6))))
    return out


@st.composite
def extension_chains(draw):
    """Headers a destination must walk over to reach TCP: Hop-by-Hop only first, Destination
    Options, Routing with no segments left, atomic fragments."""
    chain = []
    if draw(st.booleans()):
        chain.append(IPv6ExtHdrHopByHop(options=draw(tlv_options())))
    for kind in draw(st.lists(st.sampled_from(["dest", "routing", "atomic"]), max_size=4)):
        if kind == "dest":
            chain.append(IPv6ExtHdrDestOpt(options=draw(tlv_options())))
        elif kind == "routing":
            hops = draw(st.lists(st.integers(1, 2**128 - 1), max_size=2))
            chain.append(IPv6ExtHdrRouting(type=draw(st.sampled_from([0, 2, 3, 4])), segleft=0,
                                           addresses=[str(ipaddress.IPv6Address(a))
                                                      for a in hops]))
        else:
            chain.append(IPv6ExtHdrFragment(offset=0, m=0, id=draw(u32)))
    return chain


def stack(layers):
    pkt = layers[0]
    for layer in layers[1:]:
        pkt = pkt / layer
    return pkt


@settings(deadline=None)
@given(src=unicast6, dst=unicast6, sport=port, dport=port, seq=u32, ack=u32, flags=valid_flags,
       window=st.integers(0, 65535), payload=st.binary(max_size=200), hop=st.integers(0, 255),
       tc=st.integers(0, 255), fl=st.integers(0, 2**20 - 1), chain=extension_chains(),
       mss=st.none() | st.integers(0, 65535), ts=st.none() | st.tuples(u32, u32),
       padding=st.binary(max_size=6))
def test_scapy_v6_packets_parse_in_usertcp(src, dst, sport, dport, seq, ack, flags, window,
                                           payload, hop, tc, fl, chain, mss, ts, padding):
    tcp_options = ([("MSS", mss)] if mss is not None else []) + (
        [("NOP", None), ("NOP", None), ("Timestamp", ts)] if ts else [])
    pkt = stack([IPv6(src=int_to_addr(src), dst=int_to_addr(dst), hlim=hop, tc=tc, fl=fl),
                 *chain, TCP(sport=sport, dport=dport, seq=seq, ack=ack, flags=flags,
                             window=window, options=tcp_options), Raw(payload)])
    wire = bytes(pkt)
    seg = parse_packet(wire + padding)  # link padding after the payload length is tolerated
    assert isinstance(seg, Segment), seg
    assert (seg.src, seg.dst, seg.sport, seg.dport, seg.seq, seg.ack, seg.flags, seg.window,
            bytes(seg.payload), seg.mss) == (src, dst, sport, dport, seq, ack, flags, window,
                                             payload, mss)
    assert (seg.ts_val, seg.ts_ecr) == (ts or (None, None))
    ip = parse_ipv6(wire)
    assert (ip.protocol, ip.total_length, ip.hop_limit) == (6, len(wire), hop)
    assert ip.header_length == len(wire) - len(bytes(pkt[TCP]))
    # Checksums not verified (device offload): the same segment.
    assert bytes(parse_packet(wire, False).payload) == payload


def test_echo_request_from_scapy():
    wire = bytes(IPv6(src=B, dst=A) / ICMPv6EchoRequest(id=77, seq=3, data=b"abc"))
    ip = parse_packet(wire)
    assert isinstance(ip, IPv6Header) and ip.protocol == 58 and ip.src == DST
    icmp_type, code, body = parse_icmpv6(wire, ip)
    assert (icmp_type, code) == (icmpv6.ECHO_REQUEST, 0)
    ident, seq, data = parse_echo_request6(body)
    assert (ident, seq, bytes(data)) == (77, 3, b"abc")
    reply = IPv6(build_echo_reply6(ip.dst, ip.src, ident, seq, data))
    assert (reply.src, reply.dst, reply[ICMPv6EchoReply].data) == (A, B, b"abc")


def quoted_tcp(sport=40000, dport=80, seq=12345, src=A, dst=B, size=100):
    return bytes(IPv6(src=src, dst=dst) / TCP(sport=sport, dport=dport, seq=seq, flags="PA")
                 / Raw(b"q" * size))


def test_packet_too_big_from_scapy():
    original = quoted_tcp()
    wire = bytes(IPv6(src="fd00:9::1", dst=A) / ICMPv6PacketTooBig(mtu=1300) / Raw(original))
    ip = parse_packet(wire)
    icmp_type, code, body = parse_icmpv6(wire, ip)
    assert (icmp_type, code) == (icmpv6.PACKET_TOO_BIG, 0)
    assert parse_packet_too_big(body) == (1300, SRC, DST, 40000, 80, 12345)
    # A quote that stops inside the TCP header, or inside the IPv6 header: None fields.
    mtu = (1280).to_bytes(4, "big")
    assert parse_packet_too_big(mtu + original[:47]) == (1280, SRC, DST, None, None, None)
    assert parse_packet_too_big(mtu + original[:48]) == (1280, SRC, DST, 40000, 80, 12345)
    assert parse_packet_too_big(mtu + original[:39]) == (1280, None, None, None, None, None)
    assert parse_packet_too_big(mtu) == (1280, None, None, None, None, None)
    # Not TCP: addresses only.
    udpish = bytearray(original)
    udpish[6] = 17
    assert parse_packet_too_big(mtu + bytes(udpish)) == (1280, SRC, DST, None, None, None)
    # Extension headers in the quote are walked.
    with_ext = bytes(IPv6(src=A, dst=B) / IPv6ExtHdrDestOpt() / IPv6ExtHdrFragment(m=1, id=1)
                     / TCP(sport=1, dport=2, seq=3))
    assert parse_packet_too_big(mtu + with_ext) == (1280, SRC, DST, 1, 2, 3)


@pytest.mark.parametrize("code,err", [
    (0, errno.ENETUNREACH), (1, errno.EACCES), (2, errno.EHOSTUNREACH), (3, errno.EHOSTUNREACH),
    (4, errno.ECONNREFUSED), (5, errno.EACCES), (6, errno.EACCES), (7, errno.EPROTO),
    (255, errno.EPROTO)])
def test_dest_unreachable_from_scapy(code, err):
    wire = bytes(IPv6(src="fd00:9::1", dst=A) / ICMPv6DestUnreach(code=code) / Raw(quoted_tcp()))
    ip = parse_packet(wire)
    icmp_type, got_code, body = parse_icmpv6(wire, ip)
    assert (icmp_type, got_code) == (icmpv6.DEST_UNREACHABLE, code)
    assert parse_dest_unreachable6(body) == (SRC, DST, 40000, 80, 12345)
    assert unreachable_errno(code) == err
    assert icmpv6.error_errno(icmp_type, code) == err


def test_error_errno_like_linux():
    assert icmpv6.error_errno(icmpv6.PACKET_TOO_BIG, 0) == errno.EMSGSIZE
    assert icmpv6.error_errno(icmpv6.TIME_EXCEEDED, 0) == errno.EHOSTUNREACH
    assert icmpv6.error_errno(icmpv6.PARAM_PROBLEM, 1) == errno.EPROTO


@pytest.mark.parametrize("message", [
    ICMPv6ND_RS(), ICMPv6ND_NS(tgt=B), ICMPv6ND_NA(tgt=B), ICMPv6MLQuery(), ICMPv6MLReport(),
    ICMPv6MLDone(), ICMPv6MLReport2()], ids=lambda m: m.__class__.__name__)
@pytest.mark.parametrize("src", ["fe80::1", "::"])
def test_kernel_chatter_is_quiet(message, src):
    # What Linux sends on a fresh TUN: MLD reports from :: behind Hop-by-Hop router alert, RS.
    pkt = IPv6(src=src, dst="ff02::16", hlim=1) / IPv6ExtHdrHopByHop(options=[RouterAlert()])
    wire = bytes(pkt / message)
    ip = parse_packet(wire)
    assert isinstance(ip, IPv6Header) and ip.problem is None and ip.protocol == 58
    icmp_type, _code, _body = parse_icmpv6(wire, ip)
    assert icmp_type in QUIET_TYPES


# --- errors sent ----------------------------------------------------------------------------------

def test_param_problem_exact_and_in_scapy():
    original = bytes(IPv6(src=B, dst=A, nh=200) / Raw(b"xyz"))
    packet = build_param_problem(SRC, original, 1, 6)
    expected = bytes(IPv6(src=A, dst=B, hlim=64) / ICMPv6ParamProblem(code=1, ptr=6)
                     / Raw(original))
    assert packet == expected
    p = IPv6(packet)
    assert (p[ICMPv6ParamProblem].code, p[ICMPv6ParamProblem].ptr) == (1, 6)


def test_dest_unreachable_quotes_within_1280():
    original = quoted_tcp(src=B, dst=A, size=3000)
    packet = build_dest_unreachable6(SRC, original, 4)
    assert len(packet) == 1280 and packet[48:] == original[:1232]
    p = IPv6(packet)
    assert (p.src, p.dst, p[ICMPv6DestUnreach].code) == (A, B, 4)
    again = IPv6(packet)
    del again[ICMPv6DestUnreach].cksum
    assert bytes(again) == packet
    # A short original is quoted whole, without its link padding.
    small = quoted_tcp(src=B, dst=A, size=5)
    assert build_dest_unreachable6(SRC, small + b"\0\0\0", 4)[48:] == small


@pytest.mark.parametrize("original", [
    bytes(IPv6(src=B, dst=A) / ICMPv6DestUnreach() / Raw(b"x" * 48)),
    bytes(IPv6(src=B, dst=A) / ICMPv6PacketTooBig() / Raw(b"x" * 48)),
    bytes(IPv6(src=B, dst=A) / ICMPv6ParamProblem() / Raw(b"x" * 48)),
    bytes(IPv6(src=B, dst=A) / IPv6ExtHdrDestOpt() / ICMPv6DestUnreach() / Raw(b"x" * 48)),
    bytes(IPv6(src=B, dst=A, nh=58) / Raw(b"")),  # too short to tell
    bytes(IPv6(src=B, dst=A, nh=58) / Raw(bytes([137]) + bytes(39))),  # redirect
    bytes(IPv6(src=B, dst="ff02::1") / TCP()),
    bytes(IPv6(src="::", dst=A) / TCP()),
    bytes(IPv6(src="ff02::1", dst=A) / TCP()),
    bytes(IPv6(src="::1", dst=A) / TCP()),
], ids=["about-unreachable", "about-too-big", "about-problem", "about-error-behind-ext",
        "about-empty-icmpv6", "about-redirect", "to-multicast", "from-unspecified",
        "from-multicast", "from-loopback"])
def test_no_error_about(original):
    assert build_dest_unreachable6(SRC, original, 4) is None
    assert build_param_problem(SRC, original, 0, 4) is None


def test_errors_about_informational_and_option_problems_to_multicast():
    echo = bytes(IPv6(src=B, dst=A) / ICMPv6EchoRequest())
    assert build_dest_unreachable6(SRC, echo, 1) is not None
    # RFC 4443 2.4 (e.3): code 2 (an unrecognized option) may answer a multicast destination.
    to_group = bytes(IPv6(src=B, dst="ff02::1") / IPv6ExtHdrDestOpt(
        options=[HBHOptUnknown(otype=0x80, optdata=b"")]) / TCP())
    assert build_param_problem(SRC, to_group, 2, 42) is not None


@pytest.mark.parametrize("original,reason", [
    (b"", R.TRUNCATED), (bytes(quoted_tcp()[:39]), R.TRUNCATED),
    (b"\x45" + bytes(quoted_tcp()[1:]), R.NOT_IPV6)])
def test_error_about_malformed_original(original, reason):
    with pytest.raises(MalformedPacket) as info:
        build_dest_unreachable6(SRC, original, 4)
    assert info.value.reason is reason


# --- the extension-header walk --------------------------------------------------------------------

def opt_header(otype: int):
    return IPv6ExtHdrDestOpt(options=[HBHOptUnknown(otype=otype, optdata=b"ab")])


def v6(*layers, dst=A, src=B):
    return bytes(stack([IPv6(src=src, dst=dst), *layers, TCP(sport=1, dport=2), Raw(b"hi")]))


@pytest.mark.parametrize("wire,problem,protocol", [
    # Unrecognized Next Header: code 1, pointing at the field that names it.
    (bytes(IPv6(src=B, dst=A, nh=132) / Raw(b"sctp")), (1, 6), 132),
    (bytes(IPv6(src=B, dst=A) / IPv6ExtHdrDestOpt(nh=51) / Raw(bytes(16))), (1, 40), 51),
    # Hop-by-Hop anywhere but first is unrecognized too (RFC 8200 4.1).
    (v6(IPv6ExtHdrDestOpt(), IPv6ExtHdrHopByHop()), (1, 40), 0),
    # Routing with segments left: no type is implemented; code 0 at the Routing Type.
    (v6(IPv6ExtHdrRouting(type=0, segleft=1, addresses=["fd00::9"])), (0, 42), 43),
    (v6(IPv6ExtHdrDestOpt(), IPv6ExtHdrRouting(type=4, segleft=1, addresses=["fd00::9"])),
     (0, 50), 43),
    # Unknown options, action 10 always and 11 to unicast: code 2 at the option's type byte.
    (v6(opt_header(0x80)), (2, 42), 60),
    (v6(opt_header(0xC0)), (2, 42), 60),
    (v6(opt_header(0xBE), dst="ff02::1"), (2, 42), 60),
    (v6(IPv6ExtHdrHopByHop(options=[Pad1(), PadN(optdata=b"\0"), HBHOptUnknown(otype=0x9F)])),
     (2, 46), 0),
], ids=["unknown-upper", "ah-behind-destopt", "hbh-not-first", "routing-type-0-segleft",
        "srh-segleft", "option-10", "option-11", "option-10-multicast", "option-after-padding"])
def test_parameter_problems(wire, problem, protocol):
    ip = parse_packet(wire)
    assert isinstance(ip, IPv6Header) and (ip.problem, ip.protocol) == (problem, protocol)
    # The stack answers it: the pointer is an offset into the packet as received.
    reply = IPv6(build_param_problem(DST, wire, *problem))
    assert (reply[ICMPv6ParamProblem].code, reply[ICMPv6ParamProblem].ptr) == problem


def test_fragments_are_reported():
    first = bytes(IPv6(src=B, dst=A) / IPv6ExtHdrFragment(nh=6, offset=0, m=1, id=0xDEADBEEF)
                  / Raw(bytes(24)))
    ip = parse_packet(first)
    assert (ip.fragment, ip.protocol, ip.header_length, ip.problem) == (
        (0, True, 0xDEADBEEF, 40), 6, 48, None)
    later = bytes(IPv6(src=B, dst=A) / IPv6ExtHdrDestOpt()
                  / IPv6ExtHdrFragment(nh=6, offset=185, m=0, id=9) / Raw(b"tail"))
    ip = parse_packet(later)
    assert (ip.fragment, ip.protocol, ip.header_length, ip.problem) == (
        (1480, False, 9, 48), 6, 56, None)
    # M set with a length that is not a multiple of 8: code 0 at the Payload Length.
    odd = v6(IPv6ExtHdrFragment(offset=0, m=1, id=1))
    assert parse_packet(odd).problem == (0, 4)
    # Offset + length past 65535: code 0 at the Fragment Offset.
    huge = bytes(IPv6(src=B, dst=A) / IPv6ExtHdrFragment(nh=6, offset=8190, m=0, id=1)
                 / Raw(bytes(24)))
    assert parse_packet(huge).problem == (0, 42)
    # An atomic fragment is a whole packet (RFC 6946): TCP is delivered.
    atomic = v6(IPv6ExtHdrFragment(offset=0, m=0, id=5))
    assert isinstance(parse_packet(atomic), Segment)


def test_skipped_options_and_routing():
    wire = v6(IPv6ExtHdrHopByHop(options=[RouterAlert(), HBHOptUnknown(otype=0x3E)]),
              IPv6ExtHdrDestOpt(options=[PadN(optdata=b"\0\0\0")]),
              IPv6ExtHdrRouting(type=0, segleft=0, addresses=["fd00::9"]),
              IPv6ExtHdrDestOpt())
    seg = parse_packet(wire)
    assert isinstance(seg, Segment) and bytes(seg.payload) == b"hi"


def test_extension_header_bound():
    limit = v6(*[IPv6ExtHdrDestOpt() for _ in range(MAX_EXTENSIONS)])
    assert isinstance(parse_packet(limit), Segment)
    with pytest.raises(MalformedPacket) as info:
        parse_packet(v6(*[IPv6ExtHdrDestOpt() for _ in range(MAX_EXTENSIONS + 1)]))
    assert info.value.reason is R.TOO_MANY_EXTENSION_HEADERS


# --- malformed ------------------------------------------------------------------------------------

BASE = build_segment(SRC, DST, 40000, 80, 1000, 2000, ACK | PSH, 4096,
                     build_options(timestamp=(11, 22)), b"hello")


def set_byte(i, value):
    def mutate(p):
        p[i] = value
        return fix_upper(p, 40, 16, 6)
    return mutate


def set_plen(value):
    def mutate(p):
        p[4:6] = value.to_bytes(2, "big")
        return p
    return mutate


def set_src(address):
    def mutate(p):
        p[8:24] = ipaddress.IPv6Address(address).packed
        return fix_upper(p, 40, 16, 6)
    return mutate


def with_ext(*layers, tcp=True):
    def mutate(_p):
        tail = [TCP(sport=1, dport=2)] if tcp else []
        return bytes(stack([IPv6(src=B, dst=A), *layers, *tail]))
    return mutate


def raw_ext(next_header: int, body: bytes):
    """An IPv6 packet whose payload is `body` verbatim, the first header being `next_header`."""
    def mutate(_p):
        return bytes(IPv6(src=B, dst=A, nh=next_header) / Raw(body))
    return mutate


def flip(i):
    def mutate(p):
        p[i] ^= 0x01
        return p
    return mutate


def tcp_field(offset, value: bytes):
    def mutate(p):
        p[40 + offset:40 + offset + len(value)] = value
        return fix_upper(p, 40, 16, 6)
    return mutate


CASES = [
    ("39 bytes, version 6", lambda p: p[:39], R.TRUNCATED),
    ("payload length past packet", set_plen(len(BASE) - 39), R.BAD_PAYLOAD_LENGTH),
    ("payload length 65535", set_plen(65535), R.BAD_PAYLOAD_LENGTH),
    ("multicast source", set_src("ff02::1"), R.BAD_SOURCE),
    ("loopback source", set_src("::1"), R.BAD_SOURCE),
    ("v4-mapped source", set_src("::ffff:10.0.0.1"), R.BAD_SOURCE),
    ("unspecified source for TCP", set_src("::"), R.BAD_SOURCE),
    ("extension header past payload", raw_ext(60, b"\x06\x01" + bytes(6)),
     R.BAD_EXTENSION_HEADER),
    ("extension header under 8 bytes", raw_ext(60, b"\x06\x00\x01\x00"), R.BAD_EXTENSION_HEADER),
    ("fragment header cut short", raw_ext(44, b"\x06\x00\x00\x01"), R.BAD_EXTENSION_HEADER),
    ("option overruns header", raw_ext(60, b"\x3b\x00\x01\x05" + bytes(4)),
     R.BAD_EXTENSION_HEADER),
    ("option type at the very end", raw_ext(60, b"\x3b\x00\x01\x03" + bytes(3) + b"\x07"),
     R.BAD_EXTENSION_HEADER),
    ("unknown option, action 01", with_ext(opt_header(0x40)), R.IPV6_OPTION_DISCARD),
    ("unknown option, action 11, multicast destination",
     lambda p: bytes(IPv6(src=B, dst="ff02::1") / opt_header(0xC1) / TCP()),
     R.IPV6_OPTION_DISCARD),
    ("too many extension headers",
     with_ext(*[IPv6ExtHdrDestOpt() for _ in range(MAX_EXTENSIONS + 1)]),
     R.TOO_MANY_EXTENSION_HEADERS),
    ("TCP truncated", lambda p: set_plen(19)(p), R.TCP_TRUNCATED),
    ("data offset past segment", set_byte(52, 15 << 4), R.BAD_DATA_OFFSET),
    ("bad TCP checksum", flip(57), R.BAD_TCP_CHECKSUM),
    ("pseudo-header destination", flip(39), R.BAD_TCP_CHECKSUM),
    ("pseudo-header source", flip(23), R.BAD_TCP_CHECKSUM),
    ("pseudo-header length (payload one byte shorter)", set_plen(len(BASE) - 41),
     R.BAD_TCP_CHECKSUM),
    ("odd last payload byte", lambda p: flip(len(p) - 1)(p), R.BAD_TCP_CHECKSUM),
    ("sport 0", tcp_field(0, b"\0\0"), R.BAD_PORT),
    ("SYN+FIN", tcp_field(13, bytes([SYN | FIN])), R.BAD_FLAGS),
    ("bad TCP option", tcp_field(20, b"\x02\x03\x05\x01"), R.BAD_OPTIONS),
    ("version 5", lambda p: bytes([0x50]) + p[1:], R.NOT_IPV4),
]


@pytest.mark.parametrize("name,mutate,reason", CASES, ids=[c[0] for c in CASES])
def test_malformed(name, mutate, reason):
    packet = bytes(mutate(bytearray(BASE)))
    assert packet != BASE
    for data in (packet, bytearray(packet), memoryview(packet)):
        with pytest.raises(MalformedPacket) as info:
            parse_packet(data)
        assert info.value.reason is reason, (name, info.value)


def test_base_is_valid():
    seg = parse_packet(BASE)
    assert (seg.src, seg.dst, seg.ts_val, bytes(seg.payload)) == (SRC, DST, 11, b"hello")


def test_families_do_not_mix():
    with pytest.raises(MalformedPacket) as info:
        parse_ipv6(build_segment(1, 2, 3, 4, 5, 6, ACK, 7))
    assert info.value.reason is R.NOT_IPV6
    with pytest.raises(MalformedPacket) as info:
        parse_ipv4(BASE)
    assert info.value.reason is R.NOT_IPV4


def icmp_packet(message: bytes) -> bytes:
    return build_ipv6(DST, SRC, 58, message)


@pytest.mark.parametrize("wire,reason", [
    (icmp_packet(b"\x80\x00\x00\x00\x00\x01"), R.ICMPV6_TRUNCATED),
    (icmp_packet(b""), R.ICMPV6_TRUNCATED),
    (icmp_packet(b"\x80\x00\x00\x00\x00\x01\x00\x01"), R.BAD_ICMPV6_CHECKSUM),
    # Right for IPv4's ICMP (no pseudo-header), wrong for ICMPv6.
    (icmp_packet(b"\x80\x00\x7f\xfd\x00\x01\x00\x01"), R.BAD_ICMPV6_CHECKSUM),
], ids=["6-bytes", "empty", "zero-checksum", "icmpv4-checksum"])
def test_malformed_icmpv6(wire, reason):
    ip = parse_packet(wire)
    with pytest.raises(MalformedPacket) as info:
        parse_icmpv6(wire, ip)
    assert info.value.reason is reason


def test_short_icmpv6_bodies():
    for fn in (parse_echo_request6, parse_packet_too_big, parse_dest_unreachable6):
        with pytest.raises(MalformedPacket) as info:
            fn(b"\0\0\0")
        assert info.value.reason is R.ICMPV6_TRUNCATED


# --- fuzzing: only Segment, IPv6Header or MalformedPacket may come out ----------------------------

def general_path(packet, verify=True):
    """parse_ipv6 + parse_tcp: what parse_packet's IPv6 fast path must be equivalent to."""
    ip = parse_ipv6(packet)
    if ip.protocol == 6 and ip.fragment is None and ip.problem is None:
        return parse_tcp(packet, ip, verify)
    return ip


def fields(fn, packet, verify):
    try:
        result = fn(packet, verify)
    except MalformedPacket as exc:
        assert isinstance(exc.reason, DropReason)
        return ("drop", exc.reason)
    if isinstance(result, Segment):
        return ("Segment", (result.src, result.dst, result.sport, result.dport, result.seq,
                            result.ack, result.flags, result.window, result.urgent,
                            bytes(result.payload), result.mss, result.wscale,
                            result.sack_permitted, result.sack_blocks, result.ts_val,
                            result.ts_ecr))
    assert isinstance(result, IPv6Header)
    return ("IPv6Header", (result.src, result.dst, result.protocol, result.header_length,
                           result.total_length, result.hop_limit, result.fragment,
                           result.problem))


def outcome(packet, verify=True):
    """What parse_packet makes of `packet` (which starts with version 6), checked against the
    general path; ICMPv6 goes on through parse_icmpv6."""
    fast = fields(parse_packet, packet, verify)
    if packet[:1] and packet[0] >> 4 == 6:
        assert fast == fields(general_path, packet, verify)
    if fast[0] == "IPv6Header":
        ip = parse_packet(packet, verify)
        if ip.protocol == 58 and not (ip.fragment or ip.problem):
            try:
                parse_icmpv6(packet, ip)
            except MalformedPacket:
                pass
    return fast[0]


FUZZ_BASES = [
    BASE,
    build_segment(SRC, DST, 1, 2, 2**32 - 1, 0, SYN, 65535,
                  build_options(mss=1440, wscale=7, sack_permitted=True, timestamp=(1, 0))),
    build_segment(SRC, DST, 443, 50000, 5, 6, ACK, 100, b"", bytes(range(256))),
    v6(IPv6ExtHdrHopByHop(options=[RouterAlert()]), IPv6ExtHdrDestOpt(options=[PadN()]),
       IPv6ExtHdrRouting(segleft=0, addresses=["fd00::9"]), IPv6ExtHdrFragment(id=3)),
    v6(IPv6ExtHdrFragment(m=1, offset=0, id=3), Raw(bytes(6))),
    bytes(IPv6(src=B, dst=A) / ICMPv6PacketTooBig(mtu=1280) / Raw(quoted_tcp())),
]


@settings(deadline=None)
@given(head=st.integers(0x60, 0x6F), data=st.binary(min_size=39, max_size=160),
       fix_length=st.booleans())
def test_random_v6_bytes(head, data, fix_length):
    p = bytearray([head]) + data
    if fix_length:
        p[4:6] = (len(p) - 40).to_bytes(2, "big")
        p[8] = 0xFD  # a unicast source
    outcome(bytes(p))
    outcome(bytes(p), False)


@settings(deadline=None)
@given(base=st.sampled_from(FUZZ_BASES), data=st.data())
def test_v6_single_byte_mutations(base, data):
    index = data.draw(st.integers(0, len(base) - 1))
    p = bytearray(base)
    p[index] = (p[index] + data.draw(st.integers(1, 255))) % 256
    outcome(bytes(p))
    outcome(bytes(p), False)


def test_every_single_bit_flip_is_caught_v6():
    # Every bit the TCP checksum covers, and the version, is caught (dropped, or never a
    # Segment); traffic class, flow label and hop limit are not covered by anything.
    for index in range(len(BASE)):
        if index in (1, 2, 3, 7):
            continue
        for bit in range(8):
            if index == 0 and bit < 4:
                continue
            p = bytearray(BASE)
            p[index] ^= 1 << bit
            assert outcome(bytes(p)) != "Segment", (index, bit)
