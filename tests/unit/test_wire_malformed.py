"""Broken packets: each named case must raise MalformedPacket with its specific DropReason.

Every case starts from a valid packet and changes one thing; checksums are recomputed (with a
reference implementation independent of usertcp) whenever the point is to test another field.
Each case runs against two bases: IHL 5 (parse_packet's fast path) and IHL 6 with an IP option
(the general path), so both paths must name the same reason.
"""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP

from usertcp.wire import (ACK, FIN, PSH, RST, SYN, DropReason, IPv4Header, MalformedPacket,
                          Segment, addr_to_int, build_options, build_segment, parse_ipv4,
                          parse_tcp)
from usertcp.wire.ipv6 import IPv6Header, parse_ipv6
from usertcp.wire.packet import parse_packet

R = DropReason


# --- reference checksums (not usertcp's) ------------------------------------------------------

def ref_checksum(data) -> int:
    data = bytes(data)
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ihl_of(p) -> int:
    return (p[0] & 15) * 4


def fix_ip(p: bytearray, hl: int | None = None) -> bytearray:
    hl = hl or min(max(ihl_of(p), 20), len(p))
    p[10:12] = b"\0\0"
    p[10:12] = ref_checksum(p[:hl]).to_bytes(2, "big")
    return p


def fix_tcp(p: bytearray) -> bytearray:
    hl = ihl_of(p)
    total = int.from_bytes(p[2:4], "big")
    p[hl + 16:hl + 18] = b"\0\0"
    pseudo = bytes(p[12:20]) + struct.pack("!BBH", 0, 6, total - hl)
    p[hl + 16:hl + 18] = ref_checksum(pseudo + bytes(p[hl:total])).to_bytes(2, "big")
    return p


def fix_both(p: bytearray) -> bytearray:
    return fix_ip(fix_tcp(p))


# --- the valid bases ------------------------------------------------------------------------------

SRC, DST = addr_to_int("10.0.0.1"), addr_to_int("10.0.0.2")
PAYLOAD = b"hello"  # odd on purpose


def base_ihl5() -> bytes:
    # NOP NOP TS (12 bytes of options) + 5 bytes of payload: 57 bytes in all.
    return build_segment(SRC, DST, 40000, 80, 1000, 2000, ACK | PSH, 4096,
                         build_options(timestamp=(11, 22)), PAYLOAD, ident=77)


def base_ihl6() -> bytes:
    p = bytearray(base_ihl5())
    p[20:20] = b"\x94\x04\x00\x00"  # router alert
    p[0] = 0x46
    p[2:4] = (len(p)).to_bytes(2, "big")
    return bytes(fix_both(p))


BASES = {"ihl5": base_ihl5(), "ihl6": base_ihl6()}


@pytest.mark.parametrize("base", BASES)
def test_bases_are_valid(base):
    seg = parse_packet(BASES[base])
    assert isinstance(seg, Segment)
    assert (seg.src, seg.dst, seg.sport, seg.dport, seg.ts_val, bytes(seg.payload)) == (
        SRC, DST, 40000, 80, 11, PAYLOAD)


# --- mutations ------------------------------------------------------------------------------------

def set16(p: bytearray, offset: int, value: int) -> bytearray:
    p[offset:offset + 2] = value.to_bytes(2, "big")
    return p


def set_total(p: bytearray, total: int) -> bytearray:
    return fix_ip(set16(p, 2, total))


def truncate_to(p: bytearray, total: int) -> bytearray:
    return set_total(p[:total], total)


def set_src(address: str):
    def mutate(p):
        p[12:16] = addr_to_int(address).to_bytes(4, "big")
        return fix_both(p)
    return mutate


def set_tcp_byte(offset: int, value: int):
    def mutate(p):
        p[ihl_of(p) + offset] = value
        return fix_both(p)
    return mutate


def set_tcp16(offset: int, value: int):
    def mutate(p):
        return fix_both(set16(p, ihl_of(p) + offset, value))
    return mutate


def with_options(block: bytes, *, payload: bool = True):
    """Replace the 12-byte option area of the base with `block` (padded with NOPs to 12);
    without `payload` the packet ends where the options do."""
    assert len(block) <= 12

    def mutate(p):
        start = ihl_of(p) + 20
        p[start:start + 12] = block.ljust(12, b"\x01")
        if not payload:
            p = set16(p[:start + 12], 2, start + 12)
        return fix_both(p)
    return mutate


def flip(offset_from_tcp: int | None = None, *, ip_offset: int | None = None):
    def mutate(p):
        i = ip_offset if ip_offset is not None else ihl_of(p) + offset_from_tcp
        p[i] ^= 0x01
        return p
    return mutate


def flip_last_byte(p):
    p[-1] ^= 0x80
    return p


def set_ihl(value: int):
    def mutate(p):
        p[0] = 0x40 | value
        return fix_ip(p, hl=20)
    return mutate


def ihl_past_packet(p):
    p = truncate_to(p, 59)  # IHL 15 = 60 bytes > 59
    p[0] = 0x4F
    return p


def set_frag(value: int):
    def mutate(p):
        return fix_ip(set16(p, 6, value))
    return mutate


def change_dst_fix_ip_only(p):
    # The pseudo-header covers the addresses: a TCP checksum computed for another
    # destination must fail even though the IP header itself is consistent.
    p[19] ^= 0x01
    return fix_ip(p)


CASES = [
    # name, mutation, expected reason
    ("empty", lambda p: b"", R.TRUNCATED),
    ("1 byte", lambda p: p[:1], R.TRUNCATED),
    ("19 bytes", lambda p: p[:19], R.TRUNCATED),
    # Read as IPv6, the IPv4 identification (77) is the payload length: past the packet.
    ("version 6 in an IPv4 header", lambda p: fix_ip(bytearray([0x60 | p[0] & 15]) + p[1:]),
     R.BAD_PAYLOAD_LENGTH),
    ("version 0", lambda p: fix_ip(bytearray([p[0] & 15]) + p[1:]), R.NOT_IPV4),
    ("IHL 4", set_ihl(4), R.BAD_IHL),
    ("IHL 0", set_ihl(0), R.BAD_IHL),
    ("IHL past packet", ihl_past_packet, R.BAD_IHL),
    ("total length > packet", lambda p: set_total(p, len(p) + 1), R.BAD_TOTAL_LENGTH),
    ("total length 65535", lambda p: set_total(p, 65535), R.BAD_TOTAL_LENGTH),
    ("total length < IHL", lambda p: set_total(p, ihl_of(p) - 1), R.BAD_TOTAL_LENGTH),
    ("total length 0", lambda p: set_total(p, 0), R.BAD_TOTAL_LENGTH),
    ("bad IP checksum", flip(ip_offset=11), R.BAD_IP_CHECKSUM),
    ("IP header byte changed (ttl)", flip(ip_offset=8), R.BAD_IP_CHECKSUM),
    ("IP source changed", flip(ip_offset=15), R.BAD_IP_CHECKSUM),
    ("fragment (MF set)", set_frag(0x2000), R.FRAGMENT),
    ("fragment (MF and DF set)", set_frag(0x6000), R.FRAGMENT),
    ("fragment (offset set)", set_frag(0x0001), R.FRAGMENT),
    ("fragment (last, offset 185, DF)", set_frag(0x4000 | 185), R.FRAGMENT),
    ("broadcast source", set_src("255.255.255.255"), R.BAD_SOURCE),
    ("zero source", set_src("0.0.0.0"), R.BAD_SOURCE),
    ("loopback source", set_src("127.0.0.1"), R.BAD_SOURCE),
    ("loopback source 127.255.1.2", set_src("127.255.1.2"), R.BAD_SOURCE),
    ("multicast source", set_src("224.0.0.1"), R.BAD_SOURCE),
    ("multicast source 239.255.255.250", set_src("239.255.255.250"), R.BAD_SOURCE),
    ("class E source", set_src("240.0.0.1"), R.BAD_SOURCE),
    ("TCP truncated (19 bytes)", lambda p: truncate_to(p, ihl_of(p) + 19), R.TCP_TRUNCATED),
    ("TCP truncated (0 bytes)", lambda p: truncate_to(p, ihl_of(p)), R.TCP_TRUNCATED),
    ("TCP truncated by total length, padding follows",
     lambda p: set_total(p, ihl_of(p) + 19), R.TCP_TRUNCATED),
    ("data offset < 5", set_tcp_byte(12, 4 << 4), R.BAD_DATA_OFFSET),
    ("data offset 0", set_tcp_byte(12, 0), R.BAD_DATA_OFFSET),
    ("data offset past segment", set_tcp_byte(12, 15 << 4), R.BAD_DATA_OFFSET),
    ("data offset one word past segment", set_tcp_byte(12, 10 << 4), R.BAD_DATA_OFFSET),
    ("bad TCP checksum (field)", flip(17), R.BAD_TCP_CHECKSUM),
    ("bad TCP checksum (header byte)", flip(4), R.BAD_TCP_CHECKSUM),
    ("bad TCP checksum (odd last payload byte)", flip_last_byte, R.BAD_TCP_CHECKSUM),
    ("bad TCP checksum (pseudo-header address)", change_dst_fix_ip_only, R.BAD_TCP_CHECKSUM),
    ("option list overrun", with_options(b"\x01" * 10 + b"\xfe\x0a"), R.BAD_OPTIONS),
    ("option length past header end (MSS)", with_options(b"\x01" * 10 + b"\x02\x04"),
     R.BAD_OPTIONS),
    ("option with length 0", with_options(b"\xfe\x00"), R.BAD_OPTIONS),
    ("option with length 1", with_options(b"\xfe\x01"), R.BAD_OPTIONS),
    ("known option with length 0 (MSS)", with_options(b"\x02\x00"), R.BAD_OPTIONS),
    ("MSS option with length 3", with_options(b"\x02\x03\x05\x01"), R.BAD_OPTIONS),
    ("MSS option with length 5", with_options(b"\x02\x05\x05\xb4\x00"), R.BAD_OPTIONS),
    ("wscale with length 4", with_options(b"\x03\x04\x07\x00"), R.BAD_OPTIONS),
    ("wscale with length 2", with_options(b"\x03\x02"), R.BAD_OPTIONS),
    ("SACK-permitted with length 3", with_options(b"\x04\x03\x00"), R.BAD_OPTIONS),
    ("SACK with length 11", with_options(b"\x05\x0b" + bytes(9)), R.BAD_OPTIONS),
    ("SACK with length 2", with_options(b"\x05\x02"), R.BAD_OPTIONS),
    ("SACK with length 6", with_options(b"\x05\x06" + bytes(4)), R.BAD_OPTIONS),
    ("timestamp with length 8", with_options(b"\x01\x01\x08\x08" + bytes(6)), R.BAD_OPTIONS),
    ("timestamp with length 12", with_options(b"\x08\x0c" + bytes(10)), R.BAD_OPTIONS),
    ("option kind with no length byte at end", with_options(b"\x01" * 11 + b"\x08"),
     R.BAD_OPTIONS),
    ("unknown kind with no length byte at end", with_options(b"\x01" * 11 + b"\xfe"),
     R.BAD_OPTIONS),
    ("option kind at the very end of the packet", with_options(b"\x01" * 11 + b"\x02",
                                                                payload=False), R.BAD_OPTIONS),
    ("option overrun at the very end of the packet", with_options(b"\x01" * 10 + b"\x08\x0a",
                                                                  payload=False), R.BAD_OPTIONS),
    ("sport 0", set_tcp16(0, 0), R.BAD_PORT),
    ("dport 0", set_tcp16(2, 0), R.BAD_PORT),
    ("SYN+FIN", set_tcp_byte(13, SYN | FIN), R.BAD_FLAGS),
    ("SYN+RST", set_tcp_byte(13, SYN | RST), R.BAD_FLAGS),
    ("SYN+FIN+RST+ACK", set_tcp_byte(13, SYN | FIN | RST | ACK), R.BAD_FLAGS),
    ("every flag", set_tcp_byte(13, 0xFF), R.BAD_FLAGS),
]


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("name,mutate,reason", CASES, ids=[c[0] for c in CASES])
def test_malformed(base, name, mutate, reason):
    packet = bytes(mutate(bytearray(BASES[base])))
    assert packet != BASES[base]
    for data in (packet, bytearray(packet), memoryview(packet)):
        with pytest.raises(MalformedPacket) as info:
            parse_packet(data)
        assert info.value.reason is reason, (name, info.value)
        # verify_checksum=False skips only the checksum checks.
        if reason not in (R.BAD_IP_CHECKSUM, R.BAD_TCP_CHECKSUM):
            with pytest.raises(MalformedPacket) as info:
                parse_packet(data, verify_checksum=False)
            assert info.value.reason is reason


def test_malformed_packet_carries_reason_and_message():
    exc = MalformedPacket(R.BAD_OPTIONS, "mss length 3")
    assert exc.reason is R.BAD_OPTIONS and str(exc) == "bad-options: mss length 3"
    assert str(MalformedPacket(R.FRAGMENT)) == "fragment"


def test_tcp_checksum_not_verified_when_offloaded():
    # verify_checksum=False (virtio DATA_VALID) accepts a wrong TCP checksum.
    packet = bytearray(BASES["ihl5"])
    packet[37] ^= 0xFF
    with pytest.raises(MalformedPacket):
        parse_packet(bytes(packet))
    seg = parse_packet(bytes(packet), verify_checksum=False)
    assert bytes(seg.payload) == PAYLOAD


def test_udp_returns_ip_header():
    wire = bytes(IP(src="10.0.0.9", dst="10.0.0.1") / UDP(sport=5000, dport=53) / b"odd")
    result = parse_packet(wire)
    assert isinstance(result, IPv4Header)
    assert (result.protocol, result.src, result.dst, result.total_length) == (
        17, addr_to_int("10.0.0.9"), addr_to_int("10.0.0.1"), len(wire))


def test_udp_is_still_validated():
    wire = bytearray(bytes(IP(src="127.0.0.1", dst="10.0.0.1") / UDP() / b"x"))
    with pytest.raises(MalformedPacket) as info:
        parse_packet(bytes(wire))
    assert info.value.reason is R.BAD_SOURCE


# --- fuzzing: only Segment, IPv4Header or MalformedPacket may come out ----------------------------

def outcome(fn, packet):
    """('ok', fields) or ('drop', reason); any other exception propagates and fails the test."""
    try:
        result = fn(packet)
    except MalformedPacket as exc:
        assert isinstance(exc.reason, DropReason)
        return ("drop", exc.reason)
    if isinstance(result, Segment):
        return ("ok", (result.src, result.dst, result.sport, result.dport, result.seq,
                       result.ack, result.flags, result.window, result.urgent,
                       bytes(result.payload), result.mss, result.wscale, result.sack_permitted,
                       result.sack_blocks, result.ts_val, result.ts_ecr))
    assert isinstance(result, (IPv4Header, IPv6Header))
    return ("ok", (result.src, result.dst, result.protocol, result.header_length,
                   result.total_length))


def general_path(packet):
    """parse_ipv4 (or parse_ipv6) + parse_tcp: what parse_packet's fast path must equal."""
    if packet[:1] and packet[0] >> 4 == 6:
        ip = parse_ipv6(packet)
        usable = ip.fragment is None and ip.problem is None
    else:
        ip = parse_ipv4(packet)
        usable = True
    return parse_tcp(packet, ip) if ip.protocol == 6 and usable else ip


FUZZ_BASES = [
    BASES["ihl5"], BASES["ihl6"],
    build_segment(SRC, DST, 1, 2, 2**32 - 1, 0, SYN, 65535,
                  build_options(mss=1460, wscale=7, sack_permitted=True, timestamp=(1, 0))),
    build_segment(SRC, DST, 443, 50000, 5, 6, ACK, 100,
                  build_options(timestamp=(3, 4), sack_blocks=[(10, 20), (30, 40), (50, 60)])),
    build_segment(SRC, DST, 443, 50000, 5, 6, ACK, 100),
    build_segment(SRC, DST, 443, 50000, 5, 6, ACK | FIN, 100, b"", bytes(range(256)) * 3),
]


@settings(deadline=None)
@given(st.binary(max_size=120))
def test_random_bytes(data):
    outcome(parse_packet, data)


option_byte = st.sampled_from([0, 1, 2, 3, 4, 5, 8, 10, 18, 254]) | st.integers(0, 255)


@settings(deadline=None)
@given(ip_words=st.integers(0, 10), data=st.data(), flags=st.integers(0, 255),
       flags_ok=st.integers(0, 3), doff_ok=st.integers(0, 9), fix=st.integers(0, 9))
def test_random_headers_with_valid_checksums(ip_words, data, flags, flags_ok, doff_ok, fix):
    """Random header fields and option bytes behind a consistent version, IHL, total length and
    (mostly) correct checksums: this reaches the option parser with arbitrary option lists,
    and the fast path (IHL 5) must agree with the general one."""
    ip_opts = data.draw(st.binary(min_size=4 * ip_words, max_size=4 * ip_words))
    header = bytearray(data.draw(st.binary(min_size=20, max_size=20)))
    tcp = bytearray(data.draw(st.binary(min_size=20, max_size=20)))
    opt_words = data.draw(st.integers(0, 10))
    options = bytes(data.draw(st.lists(option_byte, min_size=4 * opt_words,
                                       max_size=4 * opt_words)))
    payload = data.draw(st.binary(max_size=40))
    if doff_ok:
        tcp[12] = (5 + opt_words) << 4 | tcp[12] & 15
    tcp[13] = flags & ~(FIN | RST) if flags_ok and flags & SYN else flags
    p = header + ip_opts + tcp + options + payload
    p[0] = 0x45 + ip_words
    p[2:4] = len(p).to_bytes(2, "big")
    p[6:8] = b"\x40\x00"
    p[9] = 6
    p[12] = p[12] % 223 + 1  # an ordinary unicast source
    if p[12] == 127:
        p[12] = 128
    if fix:
        fix_tcp(p)
    fix_ip(p)
    fast, slow = outcome(parse_packet, bytes(p)), outcome(general_path, bytes(p))
    assert fast == slow
    event(fast[1].value if fast[0] == "drop" else "parsed")


@settings(deadline=None)
@given(base=st.sampled_from(FUZZ_BASES), data=st.data(), fix=st.booleans())
def test_single_byte_mutations(base, data, fix):
    index = data.draw(st.integers(0, len(base) - 1))
    value = (base[index] + data.draw(st.integers(1, 255))) % 256
    p = bytearray(base)
    p[index] = value
    if fix and ihl_of(p) >= 20 and ihl_of(p) <= len(p):
        total = int.from_bytes(p[2:4], "big")
        if ihl_of(p) + 20 <= total <= len(p):
            fix_tcp(p)
        fix_ip(p)
    packet = bytes(p)
    fast = outcome(parse_packet, packet)
    assert fast == outcome(general_path, packet)
    event(f"{'fixed' if fix else 'raw'}: "
          f"{fast[1].value if fast[0] == 'drop' else 'parsed'}")
    if not fix:  # without fixing the checksums, any change is caught
        # (version 4 -> 6 leaves an IPv6 header, which has no checksum: never a Segment, though)
        assert fast[0] == "drop" or (index == 0 and value >> 4 == 6
                                     and isinstance(parse_packet(packet), IPv6Header))


def test_fuzz_bases_are_valid():
    for base in FUZZ_BASES:
        assert isinstance(parse_packet(base), Segment)


def test_every_single_bit_flip_is_caught():
    # Exhaustive, not random: one flipped bit anywhere is always detected (by a checksum or an
    # earlier check) and never raises anything else.
    rng = random.Random(5)
    for base in FUZZ_BASES[:4]:
        for index in range(len(base)):
            bit = 1 << rng.randrange(8)
            p = bytearray(base)
            p[index] ^= bit
            try:
                result = parse_packet(bytes(p))
            except MalformedPacket:
                continue
            # Version 4 -> 6 leaves an IPv6 header, which has no checksum; never a Segment.
            assert index == 0 and isinstance(result, IPv6Header) and result.problem, result
