"""build_segment -> parse_packet round trips, and build_options layout and limits."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from usertcp.wire import (ACK, CWR, ECE, FIN, PSH, RST, SYN, URG, IPv4Header, Segment,
                          addr_to_int, build_options, build_segment, flags_str, int_to_addr,
                          parse_ipv4, parse_tcp)
from usertcp.wire.packet import parse_packet

SRC = addr_to_int("10.0.0.1")
DST = addr_to_int("10.0.0.2")
ALL_FLAGS = (FIN, SYN, RST, PSH, ACK, URG, ECE, CWR)

NO_OPTIONS = dict(mss=None, wscale=None, sack_permitted=False, timestamp=None, sack_blocks=None)


def fields(seg: Segment) -> dict:
    return dict(src=seg.src, dst=seg.dst, sport=seg.sport, dport=seg.dport, seq=seg.seq,
                ack=seg.ack, flags=seg.flags, window=seg.window, urgent=seg.urgent,
                payload=bytes(seg.payload), mss=seg.mss, wscale=seg.wscale,
                sack_permitted=seg.sack_permitted,
                sack_blocks=tuple(seg.sack_blocks) if seg.sack_blocks else None,
                timestamp=None if seg.ts_val is None else (seg.ts_val, seg.ts_ecr))


def roundtrip(*, src=SRC, dst=DST, sport=40000, dport=80, seq=1, ack=0, flags=ACK,
              window=65535, payload=b"", ident=0, ttl=64, **options):
    opts = {**NO_OPTIONS, **options}
    packet = build_segment(src, dst, sport, dport, seq, ack, flags, window,
                           build_options(**opts), payload, ident=ident, ttl=ttl)
    expected = dict(src=src, dst=dst, sport=sport, dport=dport, seq=seq, ack=ack, flags=flags,
                    window=window, urgent=0, payload=bytes(payload), **opts)
    if expected["sack_blocks"] is not None:
        expected["sack_blocks"] = tuple(tuple(b) for b in expected["sack_blocks"]) or None
    return packet, expected


def parse_all_ways(packet: bytes) -> list[Segment]:
    """The fast path, the fast path without checksums, bytes-like inputs, and the slow path."""
    segs = [parse_packet(packet), parse_packet(packet, verify_checksum=False),
            parse_packet(bytearray(packet)), parse_packet(memoryview(packet))]
    ip = parse_ipv4(packet)
    segs.append(parse_tcp(packet, ip))
    for seg in segs:
        assert isinstance(seg, Segment)
    return segs


def check_roundtrip(**kwargs) -> bytes:
    packet, expected = roundtrip(**kwargs)
    for seg in parse_all_ways(packet):
        assert fields(seg) == expected
    ip = parse_ipv4(packet)
    assert (ip.src, ip.dst, ip.protocol, ip.header_length, ip.total_length, ip.ttl, ip.ident) == (
        expected["src"], expected["dst"], 6, 20, len(packet), kwargs.get("ttl", 64),
        kwargs.get("ident", 0))
    return packet


# --- fixed-header fields ------------------------------------------------------------------------

@pytest.mark.parametrize("flags", [0, *ALL_FLAGS, SYN | ACK, FIN | ACK, RST | ACK, PSH | ACK,
                                   FIN | PSH | ACK, 0xFF & ~(SYN), 0xFF & ~(FIN | RST),
                                   SYN | ECE | CWR], ids=flags_str)
def test_every_flag_round_trips(flags):
    check_roundtrip(flags=flags, payload=b"x")


@pytest.mark.parametrize("seq", [0, 1, 2**31 - 1, 2**31, 2**32 - 2, 2**32 - 1])
@pytest.mark.parametrize("ack", [0, 2**32 - 1, 2**32 - 1460])
def test_sequence_numbers_near_wrap(seq, ack):
    check_roundtrip(seq=seq, ack=ack, flags=ACK | PSH, payload=b"abc")


@pytest.mark.parametrize("window", [0, 1, 1024, 32768, 65535])
def test_windows(window):
    check_roundtrip(window=window)


@pytest.mark.parametrize("size", [0, 1, 2, 3, 535, 536, 1459, 1460, 8961, 65483])
def test_payload_odd_and_even_lengths(size):
    payload = bytes((i * 7 + 3) & 0xFF for i in range(size))
    packet = check_roundtrip(flags=ACK | PSH, payload=payload, timestamp=(1, 2))
    assert len(packet) == 40 + 12 + size


def test_ports_ident_ttl_and_addresses():
    check_roundtrip(src=addr_to_int("192.168.200.7"), dst=addr_to_int("255.255.255.255"),
                    sport=1, dport=65535, ident=0xBEEF, ttl=1)
    check_roundtrip(src=addr_to_int("223.255.255.254"), dst=0, sport=65535, dport=1,
                    ident=65535, ttl=255)


def test_payload_may_be_bytearray_or_memoryview():
    base, expected = roundtrip(payload=b"hello world", flags=ACK | PSH)
    for payload in (bytearray(b"hello world"), memoryview(b"__hello world")[2:]):
        packet = build_segment(SRC, DST, 40000, 80, 1, 0, ACK | PSH, 65535, b"", payload)
        assert packet == base


def test_pure_ack_is_forty_bytes_and_payload_is_empty_bytes():
    packet, _ = roundtrip()
    assert len(packet) == 40
    seg = parse_packet(packet)
    assert seg.payload == b"" and seg.seg_len == 0


def test_seg_len_counts_syn_and_fin():
    seg = parse_packet(roundtrip(flags=SYN, payload=b"ab")[0])
    assert seg.seg_len == 3
    seg = parse_packet(roundtrip(flags=FIN | ACK, payload=b"abc")[0])
    assert seg.seg_len == 4


def test_link_padding_after_total_length_is_ignored():
    packet, expected = roundtrip(payload=b"xyz", flags=ACK | PSH, timestamp=(5, 6))
    padded = packet + b"\xAA" * 9
    for seg in parse_all_ways(padded):
        assert fields(seg) == expected
    assert parse_ipv4(padded).total_length == len(packet)


def test_payload_is_a_view_not_a_copy():
    packet = bytearray(roundtrip(payload=b"0123456789", flags=ACK)[0])
    seg = parse_packet(packet)
    assert isinstance(seg.payload, memoryview)
    packet[-1] = ord("X")
    assert bytes(seg.payload) == b"012345678X"


def test_csum_offload_leaves_pseudo_header_sum_for_the_device():
    payload = b"offload me!"
    opts = build_options(timestamp=(7, 8))
    normal = build_segment(SRC, DST, 1234, 80, 5, 6, ACK | PSH, 999, opts, payload)
    partial = build_segment(SRC, DST, 1234, 80, 5, 6, ACK | PSH, 999, opts, payload,
                            csum_offload=True)
    assert partial[:36] == normal[:36] and partial[38:] == normal[38:]
    tcp_len = len(normal) - 20
    pseudo = struct.pack("!IIBBH", SRC, DST, 0, 6, tcp_len)
    assert int.from_bytes(partial[36:38], "big") % 0xFFFF == (
        sum(struct.unpack("!6H", pseudo)) % 0xFFFF)
    # What the device does (virtio NEEDS_CSUM): checksum from csum_start over the segment with the
    # field as it is, and store it. The result is the ordinary checksum.
    segment = partial[20:] + (b"\0" if tcp_len & 1 else b"")
    total = sum(struct.unpack(f"!{len(segment) // 2}H", segment))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    assert (~total & 0xFFFF) == int.from_bytes(normal[36:38], "big")
    assert isinstance(parse_packet(normal), Segment)


# --- options ------------------------------------------------------------------------------------

SACK_CHOICES = [None, ((1, 2),), ((2**32 - 10, 5), (100, 200)),
                ((1, 2), (3, 4), (5, 6)), ((0, 2**32 - 1), (7, 8), (9, 10), (11, 12))]
OPTION_COMBOS = list(itertools.product([None, 536, 1460, 65535], [None, 0, 7, 14], [False, True],
                                       [None, (0, 0), (2**32 - 1, 12345)], SACK_CHOICES))


def linux_layout_size(mss, wscale, sack_permitted, timestamp, sack_blocks) -> int:
    """Bytes of the NOP-aligned layout Linux uses (RFC 1323 appendix A style)."""
    size = 4 if mss is not None else 0
    size += 12 if timestamp is not None else 0  # NOP NOP TS or SACK-OK TS
    size += 4 if sack_permitted and timestamp is None else 0  # NOP NOP SACK-OK
    size += 4 if wscale is not None else 0  # NOP WS
    size += 4 + 8 * len(sack_blocks) if sack_blocks else 0  # NOP NOP SACK
    return size


@pytest.mark.parametrize("mss,wscale,sack_permitted,timestamp,sack_blocks", OPTION_COMBOS)
def test_every_option_combination(mss, wscale, sack_permitted, timestamp, sack_blocks):
    opts = dict(mss=mss, wscale=wscale, sack_permitted=sack_permitted, timestamp=timestamp,
                sack_blocks=sack_blocks)
    size = linux_layout_size(**opts)
    if size > 40:
        with pytest.raises(ValueError):
            build_options(**opts)
        return
    encoded = build_options(**opts)
    assert len(encoded) == size and len(encoded) % 4 == 0
    for payload in (b"", b"q", b"qq"):
        packet = check_roundtrip(flags=ACK, payload=payload, **opts)
        assert packet[32] >> 4 == 5 + size // 4  # data offset covers the options


def test_build_options_pads_to_multiple_of_four():
    assert build_options() == b""
    assert build_options(mss=1460) == b"\x02\x04\x05\xb4"
    assert build_options(wscale=7) == b"\x01\x03\x03\x07"
    assert build_options(sack_permitted=True) == b"\x01\x01\x04\x02"
    assert build_options(timestamp=(1, 2)) == b"\x01\x01\x08\x0a" + struct.pack("!II", 1, 2)
    assert build_options(sack_permitted=True, timestamp=(1, 2)) == (
        b"\x04\x02\x08\x0a" + struct.pack("!II", 1, 2))
    assert build_options(sack_blocks=[(1, 2)]) == b"\x01\x01\x05\x0a" + struct.pack("!II", 1, 2)


def test_build_options_rejects_more_than_40_bytes():
    four = [(1, 2), (3, 4), (5, 6), (7, 8)]
    assert len(build_options(sack_blocks=four)) == 36
    assert len(build_options(mss=1460, sack_blocks=four)) == 40
    assert len(build_options(timestamp=(1, 2), sack_blocks=four[:3])) == 40
    with pytest.raises(ValueError):
        build_options(timestamp=(1, 2), sack_blocks=four)
    with pytest.raises(ValueError):
        build_options(mss=1460, wscale=7, sack_blocks=four)
    with pytest.raises(ValueError):
        build_options(mss=1460, wscale=7, sack_permitted=True, timestamp=(1, 2),
                      sack_blocks=four[:3])
    assert len(build_options(mss=1460, wscale=7, sack_permitted=True, timestamp=(1, 2),
                             sack_blocks=four[:2])) == 40


def test_timestamp_fast_path_and_general_path_agree():
    # NOP NOP TS is the fast layout; TS NOP NOP (same 12 bytes) must take the general parser.
    ts = struct.pack("!BBII", 8, 10, 0xDEADBEEF, 0x01020304)
    for opts in (b"\x01\x01" + ts, ts + b"\x01\x01", ts + b"\x00\x00", b"\x01" + ts + b"\x00"):
        packet = build_segment(SRC, DST, 1, 2, 3, 4, ACK, 5, opts, b"data")
        for seg in parse_all_ways(packet):
            assert (seg.ts_val, seg.ts_ecr) == (0xDEADBEEF, 0x01020304)
            assert bytes(seg.payload) == b"data"


def test_options_after_eol_are_ignored():
    opts = b"\x02\x04\x05\xb4" + b"\x00" + b"\x03\x03\x07"
    packet = build_segment(SRC, DST, 1, 2, 3, 4, SYN, 5, opts)
    for seg in parse_all_ways(packet):
        assert seg.mss == 1460 and seg.wscale is None


def test_unknown_options_are_skipped_by_length():
    opts = b"\xfe\x06\xf9\x89\x00\x00" + b"\x02\x04\x01\x00" + b"\x1e\x02"  # exp, MSS, kind 30
    packet = build_segment(SRC, DST, 1, 2, 3, 4, SYN, 5, opts)
    for seg in parse_all_ways(packet):
        assert seg.mss == 256


# --- hypothesis ---------------------------------------------------------------------------------

u32 = st.integers(0, 2**32 - 1)
good_source = u32.filter(lambda a: a != 0 and (a >> 24) != 127 and (a >> 24) < 224)
valid_flags = st.integers(0, 255).filter(lambda f: not (f & SYN and f & (FIN | RST)))
sack_blocks = st.lists(st.tuples(u32, u32), min_size=1, max_size=4).map(tuple)


@st.composite
def option_sets(draw):
    opts = dict(mss=draw(st.none() | st.integers(0, 65535)),
                wscale=draw(st.none() | st.integers(0, 255)),
                sack_permitted=draw(st.booleans()),
                timestamp=draw(st.none() | st.tuples(u32, u32)),
                sack_blocks=draw(st.none() | sack_blocks))
    assume(linux_layout_size(**opts) <= 40)
    return opts


@settings(deadline=None)
@given(src=good_source, dst=u32, sport=st.integers(1, 65535), dport=st.integers(1, 65535),
       seq=u32, ack=u32, flags=valid_flags, window=st.integers(0, 65535),
       payload=st.binary(max_size=1500), ident=st.integers(0, 65535), ttl=st.integers(0, 255),
       opts=option_sets())
def test_random_fields_round_trip(src, dst, sport, dport, seq, ack, flags, window, payload,
                                  ident, ttl, opts):
    check_roundtrip(src=src, dst=dst, sport=sport, dport=dport, seq=seq, ack=ack, flags=flags,
                    window=window, payload=payload, ident=ident, ttl=ttl, **opts)


def test_non_tcp_protocols_return_the_ip_header():
    from usertcp.wire import build_ipv4
    udp = struct.pack("!HHHH", 5353, 53, 8 + 3, 0) + b"abc"
    packet = build_ipv4(SRC, DST, 17, udp, ident=7, ttl=9)
    result = parse_packet(packet)
    assert isinstance(result, IPv4Header)
    assert (result.protocol, result.src, result.dst, result.header_length, result.total_length,
            result.ttl, result.ident) == (17, SRC, DST, 20, len(packet), 9, 7)


def test_address_helpers():
    assert addr_to_int("1.2.3.4") == 0x01020304
    assert int_to_addr(0x01020304) == "1.2.3.4"
    assert int_to_addr(addr_to_int("255.0.128.9")) == "255.0.128.9"
    with pytest.raises(ValueError):
        addr_to_int("1.2.3")
