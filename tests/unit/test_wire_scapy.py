"""scapy as an independent oracle for usertcp.wire, in both directions.

usertcp -> scapy: scapy dissects what build_segment wrote to the same fields and, asked to recompute
both checksums, produces the identical bytes. scapy -> usertcp: packets scapy builds (random TCP
options including unknown kinds, IP options so IHL > 5, odd payloads) parse to the same fields.
"""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, IPOption_NOP, IPOption_Router_Alert
from scapy.packet import Raw

from usertcp.wire import (ACK, FIN, PSH, RST, SYN, Segment, build_options, build_segment,
                          int_to_addr, parse_ipv4)
from usertcp.wire import packet as packet_module
from usertcp.wire.packet import parse_packet


@pytest.fixture(autouse=True, scope="module")
def raw_tcp_payloads():
    """Keep scapy from dissecting TCP payloads as HTTP, DNS, ... (if another module bound them):
    the payload must come back as the Raw bytes on the wire."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(TCP, "payload_guess", [])
        yield


u32 = st.integers(0, 2**32 - 1)
good_source = u32.filter(lambda a: a != 0 and (a >> 24) != 127 and (a >> 24) < 224)
valid_flags = st.integers(0, 255).filter(lambda f: not (f & SYN and f & (FIN | RST)))
port = st.integers(1, 65535)


def options_from_scapy(options) -> dict:
    out = dict(mss=None, wscale=None, sack_permitted=False, timestamp=None, sack_blocks=None)
    for name, value in options:
        if name == "MSS":
            out["mss"] = value
        elif name == "WScale":
            out["wscale"] = value
        elif name == "SAckOK":
            out["sack_permitted"] = True
        elif name == "Timestamp":
            out["timestamp"] = tuple(value)
        elif name == "SAck":
            out["sack_blocks"] = tuple(zip(value[0::2], value[1::2]))
        elif name in ("NOP", "EOL") or isinstance(name, int):
            pass
        else:  # pragma: no cover - scapy decoded a kind usertcp should not have produced
            raise AssertionError(f"unexpected option {name!r}")
    return out


def options_from_segment(seg: Segment) -> dict:
    return dict(mss=seg.mss, wscale=seg.wscale, sack_permitted=seg.sack_permitted,
                timestamp=None if seg.ts_val is None else (seg.ts_val, seg.ts_ecr),
                sack_blocks=tuple(seg.sack_blocks) if seg.sack_blocks else None)


# --- usertcp -> scapy -----------------------------------------------------------------------------

@st.composite
def usertcp_option_sets(draw):
    opts = dict(mss=draw(st.none() | st.integers(0, 65535)),
                wscale=draw(st.none() | st.integers(0, 14)),
                sack_permitted=draw(st.booleans()),
                timestamp=draw(st.none() | st.tuples(u32, u32)),
                sack_blocks=draw(st.none() | st.lists(st.tuples(u32, u32), min_size=1,
                                                      max_size=4).map(tuple)))
    try:
        encoded = build_options(**opts)
    except ValueError:
        assume(False)
    return opts, encoded


def check_scapy_agrees(packet: bytes, *, src, dst, sport, dport, seq, ack, flags, window, payload,
                       ident, ttl, opts):
    p = IP(packet)
    assert (p.version, p.ihl, p.len, p.id, int(p.flags), p.frag, p.ttl, p.proto) == (
        4, 5, len(packet), ident, 2, 0, ttl, 6)  # flags 2 == DF
    assert (p.src, p.dst) == (int_to_addr(src), int_to_addr(dst))
    t = p[TCP]
    assert (t.sport, t.dport, t.seq, t.ack, int(t.flags), t.window, t.urgptr) == (
        sport, dport, seq, ack, flags, window, 0)
    assert t.dataofs * 4 == 20 + len(build_options(**opts))
    assert options_from_scapy(t.options) == {
        **opts, "sack_blocks": tuple(opts["sack_blocks"]) if opts["sack_blocks"] else None}
    assert bytes(t.payload) == payload
    # Recompute both checksums in scapy: the bytes must not change.
    again = IP(packet)
    del again.chksum
    del again[TCP].chksum
    assert bytes(again) == packet


@settings(deadline=None)
@given(src=good_source, dst=u32, sport=port, dport=port, seq=u32, ack=u32, flags=valid_flags,
       window=st.integers(0, 65535), payload=st.binary(max_size=300),
       ident=st.integers(0, 65535), ttl=st.integers(0, 255), option_set=usertcp_option_sets())
def test_usertcp_packets_parse_in_scapy(src, dst, sport, dport, seq, ack, flags, window, payload,
                                        ident, ttl, option_set):
    opts, encoded = option_set
    packet = build_segment(src, dst, sport, dport, seq, ack, flags, window, encoded, payload,
                           ident=ident, ttl=ttl)
    check_scapy_agrees(packet, src=src, dst=dst, sport=sport, dport=dport, seq=seq, ack=ack,
                       flags=flags, window=window, payload=payload, ident=ident, ttl=ttl,
                       opts=opts)


@pytest.mark.parametrize("size", [0, 1, 2, 3, 1459, 1460, 8999])
def test_usertcp_payload_sizes_checksum_in_scapy(size):
    payload = bytes((i * 13 + 1) & 0xFF for i in range(size))
    opts = dict(mss=None, wscale=None, sack_permitted=False, timestamp=(123, 456),
                sack_blocks=((1, 2),))
    packet = build_segment(0x0A000001, 0x0A000002, 40000, 8080, 2**32 - 1, 2**32 - 2,
                           ACK | PSH, 512, build_options(**opts), payload, ident=3)
    check_scapy_agrees(packet, src=0x0A000001, dst=0x0A000002, sport=40000, dport=8080,
                       seq=2**32 - 1, ack=2**32 - 2, flags=ACK | PSH, window=512,
                       payload=payload, ident=3, ttl=64, opts=opts)


# --- scapy -> usertcp -----------------------------------------------------------------------------

# Kinds neither usertcp nor scapy decodes: both must skip them by their length byte.
UNKNOWN_KINDS = [6, 7, 9, 10, 11, 12, 13, 16, 20, 30, 76, 99, 200, 253, 254]


@st.composite
def scapy_tcp_options(draw):
    """A random scapy option list that fits in 40 bytes, plus the fields it should parse to."""
    kinds = draw(st.lists(st.sampled_from(
        ["NOP", "MSS", "WScale", "SAckOK", "Timestamp", "SAck", "unknown", "unknown"]),
        max_size=8))
    options, size = [], 0
    expected = dict(mss=None, wscale=None, sack_permitted=False, timestamp=None, sack_blocks=None)
    seen = set()
    for kind in kinds:
        if kind in seen:  # one of each known kind: a repeated option has no agreed meaning
            continue
        if kind not in ("NOP", "unknown"):
            seen.add(kind)
        if kind == "NOP":
            option, length, field = ("NOP", None), 1, None
        elif kind == "MSS":
            value = draw(st.integers(0, 65535))
            option, length, field = ("MSS", value), 4, ("mss", value)
        elif kind == "WScale":
            value = draw(st.integers(0, 255))
            option, length, field = ("WScale", value), 3, ("wscale", value)
        elif kind == "SAckOK":
            option, length, field = ("SAckOK", b""), 2, ("sack_permitted", True)
        elif kind == "Timestamp":
            value = draw(st.tuples(u32, u32))
            option, length, field = ("Timestamp", value), 10, ("timestamp", value)
        elif kind == "SAck":
            blocks = tuple(draw(st.lists(st.tuples(u32, u32), min_size=1, max_size=4)))
            option = ("SAck", tuple(edge for block in blocks for edge in block))
            length, field = 2 + 8 * len(blocks), ("sack_blocks", blocks)
        else:
            data = draw(st.binary(max_size=8))
            option = (draw(st.sampled_from(UNKNOWN_KINDS)), data)
            length, field = 2 + len(data), None
        if size + length > 40:
            continue
        options.append(option)
        size += length
        if field:
            expected[field[0]] = field[1]
    return options, expected


ip_options = st.lists(st.sampled_from(["nop", "ra"]), max_size=10).map(
    lambda names: [IPOption_NOP() if n == "nop" else IPOption_Router_Alert() for n in names])


@settings(deadline=None)
@given(src=good_source, dst=u32, sport=port, dport=port, seq=u32, ack=u32, flags=valid_flags,
       window=st.integers(0, 65535), urgent=st.integers(0, 65535),
       payload=st.binary(max_size=300), ident=st.integers(0, 65535), ttl=st.integers(0, 255),
       tos=st.integers(0, 255), df=st.booleans(), tcp_options=scapy_tcp_options(),
       ipopts=ip_options)
def test_scapy_packets_parse_in_usertcp(src, dst, sport, dport, seq, ack, flags, window, urgent,
                                        payload, ident, ttl, tos, df, tcp_options, ipopts):
    options, expected_options = tcp_options
    pkt = (IP(src=int_to_addr(src), dst=int_to_addr(dst), id=ident, ttl=ttl, tos=tos,
              flags="DF" if df else 0, options=ipopts)
           / TCP(sport=sport, dport=dport, seq=seq, ack=ack, flags=flags, window=window,
                 urgptr=urgent, options=options)
           / Raw(payload))
    wire = bytes(pkt)
    ip_len = 20 + (-(-sum(len(bytes(o)) for o in ipopts) // 4)) * 4
    assert (wire[0] & 15) * 4 == ip_len  # scapy padded the IP options as expected
    seg = parse_packet(wire)
    assert isinstance(seg, Segment)
    assert (seg.src, seg.dst, seg.sport, seg.dport, seg.seq, seg.ack, seg.flags, seg.window,
            seg.urgent, bytes(seg.payload)) == (
        src, dst, sport, dport, seq, ack, flags, window, urgent, payload)
    assert options_from_segment(seg) == expected_options
    # scapy's own reading of its bytes agrees with the expectation too.
    assert options_from_scapy(IP(wire)[TCP].options) == expected_options
    ip = parse_ipv4(wire)
    assert (ip.header_length, ip.total_length, ip.ttl, ip.ident, ip.protocol) == (
        ip_len, len(wire), ttl, ident, 6)


def test_ip_options_take_the_slow_path(monkeypatch):
    calls = []
    real_slow = packet_module._slow

    def spy(packet, verify_checksum):
        calls.append(len(packet))
        return real_slow(packet, verify_checksum)

    monkeypatch.setattr(packet_module, "_slow", spy)
    plain = bytes(IP(src="10.1.1.1", dst="10.1.1.2") / TCP(sport=1, dport=2) / Raw(b"odd"))
    with_opts = bytes(IP(src="10.1.1.1", dst="10.1.1.2", options=[IPOption_Router_Alert()])
                      / TCP(sport=1, dport=2) / Raw(b"odd"))
    assert with_opts[0] == 0x46
    seg_fast = parse_packet(plain)
    assert calls == []
    seg_slow = parse_packet(with_opts)
    assert calls == [len(with_opts)]
    for seg in (seg_fast, seg_slow):
        assert (seg.sport, seg.dport, bytes(seg.payload)) == (1, 2, b"odd")


def test_scapy_unknown_option_between_known_ones():
    options = [("MSS", 1400), (99, b"\xde\xad\xbe"), ("NOP", None), ("WScale", 9),
               (254, b"\xf9\x89"), ("SAckOK", b""), ("Timestamp", (10, 20))]
    wire = bytes(IP(src="10.1.1.1", dst="10.1.1.2") / TCP(sport=5, dport=6, flags="S",
                                                          options=options))
    seg = parse_packet(wire)
    assert options_from_segment(seg) == dict(mss=1400, wscale=9, sack_permitted=True,
                                             timestamp=(10, 20), sack_blocks=None)
