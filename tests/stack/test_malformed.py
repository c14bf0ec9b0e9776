"""Broken packets fed into a stack in the middle of a transfer.

Every case is built from a packet that would hurt if it got through: an RST at
exactly RCV.NXT of the live connection (it would reset it), or a data segment at
RCV.NXT carrying garbage (it would corrupt the stream). Each case breaks one
thing and keeps every other field valid (checksums are recomputed by a reference
implementation written here, not usertcp's). The stack must drop it, count it
under its named reason in `stack.drops` and nothing else, send nothing, raise
nothing, and the transfer must then finish intact.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from scapy.layers.inet import ICMP, IP

from usertcp.stack import Stack
from usertcp.tcp.state import State
from usertcp.wire.errors import DropReason as R

from .link import CLEAN, Faults, Link, Transfer
from .test_transfer import A, B, payload

A_INT = 0x0A000001
B_INT = 0x0A000002
ACK, RST, SYN, FIN, PSH = 0x10, 0x04, 0x02, 0x01, 0x08


# ---------------------------------------------------------------------------- reference packets

def ref_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def ref_checksum(data: bytes) -> int:
    return ~ref_sum(data) & 0xFFFF


def fix_ip(pkt: bytearray) -> bytearray:
    hl = (pkt[0] & 15) * 4
    pkt[10:12] = b"\0\0"
    pkt[10:12] = ref_checksum(bytes(pkt[:hl])).to_bytes(2, "big")
    return pkt


def fix_tcp(pkt: bytearray, proto: int = 6) -> bytearray:
    """TCP (or UDP) checksum over what the IP total length covers."""
    hl = (pkt[0] & 15) * 4
    total = int.from_bytes(pkt[2:4], "big")
    seg = bytearray(pkt[hl:total])
    off = 16 if proto == 6 else 6
    seg[off:off + 2] = b"\0\0"
    pseudo = bytes(pkt[12:20]) + struct.pack("!BBH", 0, proto, len(seg))
    pkt[hl + off:hl + off + 2] = ref_checksum(pseudo + bytes(seg)).to_bytes(2, "big")
    return pkt


def ip_packet(proto: int, body: bytes, *, src: int = A_INT, dst: int = B_INT,
              ip_options: bytes = b"", frag: int = 0x4000) -> bytearray:
    ihl = 5 + len(ip_options) // 4
    hdr = struct.pack("!BBHHHBBHII", 0x40 | ihl, 0, ihl * 4 + len(body), 0x1234, frag, 64,
                      proto, 0, src, dst) + ip_options
    return fix_ip(bytearray(hdr + body))


def tcp_packet(sport, dport, seq, ack, flags, *, window=1024, options=b"", data=b"",
               **ip_kw) -> bytearray:
    doff = (20 + len(options)) // 4
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, doff << 4, flags, window, 0, 0)
    pkt = ip_packet(6, tcp + options + data, **ip_kw)
    return fix_tcp(pkt)


def set_u16(pkt: bytearray, at: int, value: int) -> bytearray:
    pkt[at:at + 2] = value.to_bytes(2, "big")
    return pkt


def icmp_packet(icmp_type: int, code: int, rest: bytes, *, good_checksum: bool = True,
                **ip_kw) -> bytearray:
    msg = bytearray(struct.pack("!BBH", icmp_type, code, 0) + rest)
    csum = ref_checksum(bytes(msg))
    msg[2:4] = (csum if good_checksum else csum ^ 0x0101).to_bytes(2, "big")
    return ip_packet(1, bytes(msg), **ip_kw)


# ---------------------------------------------------------------------------- the table

@dataclass(frozen=True)
class Live:
    """The 4-tuple and sequence numbers of B's live connection, as A would send them."""

    sport: int
    dport: int
    seq: int  # B's RCV.NXT: an RST here resets, data here is taken in order
    ack: int  # B's SND.NXT

    def rst(self, **kw) -> bytearray:
        return tcp_packet(self.sport, self.dport, self.seq, 0, RST, **kw)

    def data(self, n: int = 100, **kw) -> bytearray:
        kw.setdefault("data", b"\xee" * n)
        return tcp_packet(self.sport, self.dport, self.seq, self.ack, ACK | PSH, **kw)


IP_OPT = b"\x01\x01\x01\x00"  # NOP NOP NOP EOL: forces the general (slow) parse path


def _bad_tcp_csum(pkt: bytearray) -> bytearray:
    hl = (pkt[0] & 15) * 4
    return set_u16(pkt, hl + 16, int.from_bytes(pkt[hl + 16:hl + 18], "big") ^ 0x0001)


def _with_total(pkt: bytearray, total: int) -> bytearray:
    return fix_ip(set_u16(pkt, 2, total))


def _ipv6(live: Live) -> bytes:
    """An RST at the live connection's numbers, from fe80::1 to fe80::2 (not B's address)."""
    src, dst = b"\xfe\x80" + b"\0" * 13 + b"\1", b"\xfe\x80" + b"\0" * 13 + b"\2"
    tcp = bytearray(struct.pack("!HHIIBBHHH", live.sport, live.dport, live.seq, 0, 5 << 4, RST,
                                0, 0, 0))
    pseudo = src + dst + struct.pack("!IxxxB", len(tcp), 6)
    tcp[16:18] = ref_checksum(pseudo + bytes(tcp)).to_bytes(2, "big")
    hdr = struct.pack("!IHBB16s16s", 6 << 28, len(tcp), 6, 64, src, dst)
    return hdr + bytes(tcp)


B6 = "fd00:7::2"
B6_INT = int(__import__("ipaddress").IPv6Address(B6))
A6_INT = B6_INT - 1


def v6_packet(next_header: int, body: bytes, *, good_checksum: bool = True) -> bytes:
    """A6 -> B6; ICMPv6 bodies (next header 58, or after extension headers) get their checksum."""
    body = bytearray(body)
    at = _upper_start(next_header, body)
    if at is not None:
        body[at + 2:at + 4] = b"\0\0"
        msg = bytes(body[at:])
        pseudo = (A6_INT.to_bytes(16, "big") + B6_INT.to_bytes(16, "big")
                  + struct.pack("!IxxxB", len(msg), 58))
        csum = ref_checksum(pseudo + msg)
        body[at + 2:at + 4] = (csum if good_checksum else csum ^ 0x0101).to_bytes(2, "big")
    hdr = struct.pack("!IHBB16s16s", 6 << 28, len(body), next_header, 64,
                      A6_INT.to_bytes(16, "big"), B6_INT.to_bytes(16, "big"))
    return hdr + bytes(body)


def _upper_start(next_header: int, body: bytes) -> int | None:
    at = 0
    for _ in range(8):
        if next_header == 58:
            return at if len(body) - at >= 4 else None
        if next_header not in (0, 60) or at + 2 > len(body):
            return None
        next_header, at = body[at], at + (body[at + 1] + 1) * 8
    return None


def _echo6() -> bytes:
    return struct.pack("!BBHHH", 128, 0, 0, 0x1234, 1) + b"ping"


def _v6_set(pkt: bytes, at: int, value: int) -> bytes:
    return bytes(set_u16(bytearray(pkt), at, value))


def _udp(live: Live) -> bytes:
    body = struct.pack("!HHHH", live.sport, live.dport, 8 + 12, 0) + b"hello, world"
    return fix_tcp(ip_packet(17, body), proto=17)


def _with_doff(pkt: bytearray, words: int) -> bytearray:
    hl = (pkt[0] & 15) * 4
    pkt[hl + 12] = words << 4
    return fix_tcp(pkt)


CASES: list[tuple[str, Callable[[Live], bytes], R]] = [
    # too short to be anything
    ("empty", lambda l: b"", R.TRUNCATED),
    ("one-byte", lambda l: b"\x45", R.TRUNCATED),
    ("19-bytes", lambda l: bytes(l.rst()[:19]), R.TRUNCATED),
    # not IPv4
    ("ipv6-not-ours", _ipv6, R.NOT_FOR_US),
    ("version-0", lambda l: bytes([0x05]) + bytes(l.rst()[1:]), R.NOT_IPV4),
    # IP header length
    ("ihl-4", lambda l: fix_ip(bytearray([0x44]) + l.rst()[1:]), R.BAD_IHL),
    ("ihl-past-end", lambda l: bytearray([0x4F]) + l.rst()[1:], R.BAD_IHL),
    # lying total lengths
    ("total-length-past-end", lambda l: _with_total(l.data(), len(l.data()) + 100),
     R.BAD_TOTAL_LENGTH),
    ("cut-mid-payload", lambda l: bytes(l.data(200)[:100]), R.BAD_TOTAL_LENGTH),
    ("total-length-below-ip-header", lambda l: _with_total(l.rst(), 12), R.BAD_TOTAL_LENGTH),
    ("total-length-below-ip-header-slow", lambda l: _with_total(l.rst(ip_options=IP_OPT), 22),
     R.BAD_TOTAL_LENGTH),
    ("total-length-short-of-payload", lambda l: _with_total(l.data(100), 40 + 60),
     R.BAD_TCP_CHECKSUM),  # the last 40 bytes read as link padding; the checksum then fails
    ("tcp-header-cut", lambda l: _with_total(l.rst(), 30), R.TCP_TRUNCATED),
    ("no-tcp-header", lambda l: _with_total(bytearray(l.rst()[:20]), 20), R.TCP_TRUNCATED),
    ("tcp-header-cut-slow", lambda l: _with_total(l.rst(ip_options=IP_OPT), 34),
     R.TCP_TRUNCATED),
    # checksums
    ("bad-ip-checksum", lambda l: set_u16(l.rst(), 10, 0x1234), R.BAD_IP_CHECKSUM),
    ("bad-ip-checksum-slow", lambda l: set_u16(l.rst(ip_options=IP_OPT), 10, 0x1234),
     R.BAD_IP_CHECKSUM),
    ("bad-tcp-checksum-rst", lambda l: _bad_tcp_csum(l.rst()), R.BAD_TCP_CHECKSUM),
    ("bad-tcp-checksum-data", lambda l: _bad_tcp_csum(l.data(1000)), R.BAD_TCP_CHECKSUM),
    ("bad-tcp-checksum-odd-length", lambda l: _bad_tcp_csum(l.data(333)), R.BAD_TCP_CHECKSUM),
    ("bad-tcp-checksum-slow", lambda l: _bad_tcp_csum(l.data(100, ip_options=IP_OPT)),
     R.BAD_TCP_CHECKSUM),
    ("payload-bit-flip", lambda l: l.data(500)[:-1] + b"\xef", R.BAD_TCP_CHECKSUM),
    ("zero-tcp-checksum", lambda l: set_u16(l.rst(), 36, 0), R.BAD_TCP_CHECKSUM),
    # TCP data offset
    ("data-offset-4", lambda l: _with_doff(l.rst(), 4), R.BAD_DATA_OFFSET),
    ("data-offset-0", lambda l: _with_doff(l.data(100), 0), R.BAD_DATA_OFFSET),
    ("data-offset-past-segment", lambda l: _with_doff(l.rst(), 15), R.BAD_DATA_OFFSET),
    ("data-offset-past-segment-slow", lambda l: _with_doff(l.rst(ip_options=IP_OPT), 6),
     R.BAD_DATA_OFFSET),
    # TCP options
    ("option-overruns-header", lambda l: l.rst(options=b"\x02\x08\x05\xb4"), R.BAD_OPTIONS),
    ("option-length-0", lambda l: l.data(10, options=b"\x08\x00\x00\x00"), R.BAD_OPTIONS),
    ("option-length-1", lambda l: l.rst(options=b"\x01\x03\x01\x00"), R.BAD_OPTIONS),
    ("option-without-length", lambda l: l.rst(options=b"\x01\x01\x01\x02"), R.BAD_OPTIONS),
    ("mss-option-length-3", lambda l: l.rst(options=b"\x02\x03\x05\x01"), R.BAD_OPTIONS),
    ("wscale-option-length-4", lambda l: l.rst(options=b"\x03\x04\x07\x00"), R.BAD_OPTIONS),
    ("timestamp-option-length-9", lambda l: l.data(
        10, options=b"\x01\x01\x08\x09" + b"\0" * 8), R.BAD_OPTIONS),
    ("sack-option-length-9", lambda l: l.data(
        10, options=b"\x01\x01\x05\x09" + b"\0" * 8), R.BAD_OPTIONS),
    ("options-slow-path", lambda l: l.rst(options=b"\x02\x08\x05\xb4", ip_options=IP_OPT),
     R.BAD_OPTIONS),
    # fragments
    # other protocols
    ("udp", _udp, R.UNSUPPORTED_PROTOCOL),
    ("gre", lambda l: ip_packet(47, b"\0" * 24), R.UNSUPPORTED_PROTOCOL),
    ("icmp-echo-reply", lambda l: icmp_packet(0, 0, b"\x12\x34\x00\x01ping"), R.ICMP_IGNORED),
    # quotes a segment B never sent (the peer's own): no connection of B's to report to
    ("icmp-unreachable", lambda l: icmp_packet(3, 3, b"\0\0\0\0" + bytes(l.rst()[:28])),
     R.ICMP_UNMATCHED),
    # IPv6 (B also has B6); each breaks one thing of a valid packet to B6
    ("ipv6-payload-length", lambda l: _v6_set(v6_packet(58, _echo6()), 4, 200),
     R.BAD_PAYLOAD_LENGTH),
    ("ipv6-extension-overrun", lambda l: v6_packet(0, b"\x3a\x08" + b"\0" * 6), R.BAD_EXTENSION_HEADER),
    ("ipv6-extension-chain", lambda l: v6_packet(60, b"\x3c\x00\x01\x04\0\0\0\0" * 9),
     R.TOO_MANY_EXTENSION_HEADERS),
    # an unknown option whose top bits (01) say: drop it silently
    ("ipv6-option-discard", lambda l: v6_packet(60, b"\x3a\x00\x41\x04\0\0\0\0" + _echo6()),
     R.IPV6_OPTION_DISCARD),
    ("icmpv6-truncated", lambda l: v6_packet(58, b"\x80\x00\x00"), R.ICMPV6_TRUNCATED),
    ("icmpv6-bad-checksum", lambda l: v6_packet(58, _echo6(), good_checksum=False),
     R.BAD_ICMPV6_CHECKSUM),
    # IPv4 fragments the reassembly refuses at once
    ("fragment-not-8-byte-multiple", lambda l: l.data(99, frag=0x2000), R.FRAGMENT_BAD_LENGTH),
    ("fragment-past-65535", lambda l: l.data(100, frag=0x1FFF), R.FRAGMENT_TOO_BIG),
    ("icmp-echo-code-1", lambda l: icmp_packet(8, 1, b"\x12\x34\x00\x01"), R.ICMP_IGNORED),
    ("icmp-truncated", lambda l: ip_packet(1, b"\x08\x00\xf7\xff"), R.ICMP_TRUNCATED),
    ("icmp-bad-checksum", lambda l: icmp_packet(8, 0, b"\x12\x34\x00\x01ping",
                                                good_checksum=False), R.BAD_ICMP_CHECKSUM),
    # addresses
    ("source-zero", lambda l: l.rst(src=0), R.BAD_SOURCE),
    ("source-broadcast", lambda l: l.rst(src=0xFFFFFFFF), R.BAD_SOURCE),
    ("source-loopback", lambda l: l.rst(src=0x7F000001), R.BAD_SOURCE),
    ("source-multicast", lambda l: l.data(50, src=0xE0000001), R.BAD_SOURCE),
    ("source-loopback-slow", lambda l: l.rst(src=0x7F000001, ip_options=IP_OPT), R.BAD_SOURCE),
    ("not-for-us", lambda l: l.rst(dst=0x0A000003), R.NOT_FOR_US),
    # ports and flags
    ("source-port-0", lambda l: tcp_packet(0, l.dport, l.seq, 0, RST), R.BAD_PORT),
    ("destination-port-0", lambda l: tcp_packet(l.sport, 0, l.seq, 0, RST), R.BAD_PORT),
    ("syn-fin", lambda l: tcp_packet(l.sport, l.dport, l.seq, l.ack, SYN | FIN | ACK),
     R.BAD_FLAGS),
    ("syn-rst", lambda l: tcp_packet(l.sport, l.dport, l.seq, 0, SYN | RST), R.BAD_FLAGS),
    ("syn-fin-to-listener", lambda l: tcp_packet(40000, 80, 1000, 0, SYN | FIN), R.BAD_FLAGS),
]


def _udp_body(live: Live, length: int | None = None, data: bytes = b"hello, world") -> bytes:
    length = 8 + len(data) if length is None else length
    return struct.pack("!HHHH", live.sport, 53, length, 0) + data


# Checked only by a stack that forwards datagrams (usertcp run's): without, UDP is unsupported.
UDP_CASES: list[tuple[str, Callable[[Live], bytes], R]] = [
    ("udp-truncated", lambda l: ip_packet(17, _udp_body(l)[:6]), R.UDP_TRUNCATED),
    ("udp-length-short", lambda l: fix_tcp(ip_packet(17, _udp_body(l, length=7)), proto=17),
     R.BAD_UDP_LENGTH),
    ("udp-length-past-packet", lambda l: fix_tcp(ip_packet(17, _udp_body(l, length=40)),
                                                 proto=17), R.BAD_UDP_LENGTH),
    ("udp-bad-checksum", lambda l: _bad_udp_csum(fix_tcp(ip_packet(17, _udp_body(l)), proto=17)),
     R.BAD_UDP_CHECKSUM),
    ("udp-port-0", lambda l: fix_tcp(ip_packet(17, _udp_body(l)[:2] + b"\0\0"
                                               + _udp_body(l)[4:]), proto=17), R.BAD_PORT),
]


def _bad_udp_csum(pkt: bytearray) -> bytearray:
    return set_u16(pkt, 26, int.from_bytes(pkt[26:28], "big") ^ 0x0101)


# Reasons no single packet into a running stack shows alone, each tested where it can be:
NOT_ALONE = {
    R.FRAGMENT,  # a fragment is held for reassembly, not dropped (test_ipv6_engine.py)
    R.NOT_IPV6,  # parse_ipv6's own check: parse_packet dispatches on the version first
    R.FRAGMENT_OVERLAP, R.FRAGMENT_BAD_END,  # need a datagram begun (tests/unit/test_fragments.py)
    R.FRAGMENT_BAD_HEADER,  # a caller's mistake, not the packet's (test_fragments.py)
    R.IPV6_PARAMETER_PROBLEM,  # answered with a Parameter Problem (test_ipv6_engine.py)
}


def test_table_names_every_drop_reason():
    every = CASES + UDP_CASES
    assert len({name for name, _, _ in every}) == len(every)
    assert {reason for _, _, reason in every} == set(R) - NOT_ALONE


@pytest.mark.parametrize("name,build,reason", UDP_CASES, ids=[c[0] for c in UDP_CASES])
def test_malformed_udp_is_dropped_and_counted_when_forwarding(name, build, reason):
    link, t, live = mid_transfer()
    b = link.b
    b.forward_datagrams()
    link.flush()
    b.receive(bytes(build(live)), link.now)
    assert b.packets_to_send(link.now) == []
    assert b.drops[reason.value] == 1, dict(b.drops)
    assert b.counters["udp_forwarded"] == 0
    # A good datagram still goes through, and the transfer finishes intact.
    b.receive(bytes(fix_tcp(ip_packet(17, _udp_body(live)), proto=17)), link.now)
    assert b.counters["udp_forwarded"] == 1
    t.run(max_time=600)
    t.check()


# ---------------------------------------------------------------------------- the transfer

SIZE = 800_000  # big enough that the server is still writing a quarter of the way in


def mid_transfer(seed: int = 3, faults: Faults = CLEAN) -> tuple[Link, Transfer, Live]:
    link = Link(Stack(A), Stack([B, B6]), seed=seed, faults=faults)
    t = Transfer(link, payload(seed, SIZE), payload(seed + 1, SIZE))
    ok = link.run_until(lambda: t.server is not None and t.server.received > SIZE // 4
                        and t.client.received > SIZE // 4, 60)
    assert ok, t.describe()
    conn = link.b._by_id[t.server.conn_id]
    assert conn.state is State.ESTABLISHED
    return link, t, Live(conn.rport, conn.lport, conn.rcv_nxt, conn.snd_nxt)


def test_live_packets_would_do_harm():
    """The bases of the table are dangerous when valid: else the table would prove nothing."""
    link, t, live = mid_transfer()
    link.flush()
    link.b.receive(bytes(live.rst()), link.now)
    assert t.server.state() is State.CLOSED
    link, t, live = mid_transfer()
    link.flush()
    link.b.receive(bytes(live.data(100)), link.now)
    assert link.run_until(t.done, 600)
    with pytest.raises(AssertionError):
        t.check()  # 100 bytes of 0xEE went into the stream


@pytest.mark.parametrize("name,build,reason", CASES, ids=[c[0] for c in CASES])
def test_malformed_packet_is_dropped_and_counted(name, build, reason):
    link, t, live = mid_transfer()
    b = link.b
    link.flush()  # everything B had to say is on the link: what follows is the packet's doing
    packet = bytes(build(live))
    drops, counters = dict(b.drops), dict(b.counters)
    b.receive(packet, link.now)
    assert b.packets_to_send(link.now) == [], f"{name}: the stack answered a dropped packet"
    expected = dict(drops)
    expected[reason.value] = expected.get(reason.value, 0) + 1
    assert dict(b.drops) == expected, f"{name}: drops {dict(b.drops)}"
    assert dict(b.counters) == counters, f"{name}: counters moved"
    # The same packet again through the path a device with checksum offload would use.
    if reason not in (R.BAD_IP_CHECKSUM, R.BAD_TCP_CHECKSUM, R.BAD_ICMP_CHECKSUM):
        b.receive(packet, link.now, checksum_verified=True)
        assert b.packets_to_send(link.now) == []
        assert b.drops[reason.value] == expected[reason.value] + 1
    t.run(max_time=600)
    t.check()


def test_all_malformed_packets_during_a_lossy_transfer():
    """Every case, injected at random moments through the link while the transfer runs."""
    link, t, live = mid_transfer(seed=5, faults=Faults(loss=0.03, duplicate=0.02, reorder=0.05))
    packets = [(name, bytes(build(live)), reason) for name, build, reason in CASES] * 3
    for i, (_, packet, _) in enumerate(packets):
        link.inject(1, packet, delay=0.0005 * i)
    t.run(max_time=3600)
    t.check()
    expected = {}
    for _, _, reason in packets:
        expected[reason.value] = expected.get(reason.value, 0) + 1
    assert dict(link.b.drops) == expected


def test_random_garbage_never_raises():
    """Bit flips and truncations of real traffic: counted as drops or handled, never raised."""
    rng = random.Random(17)
    link, t, _ = mid_transfer(seed=17)
    samples = []
    link.taps.append(lambda d, p, now: samples.append(p) if d == 0 else None)
    assert link.run_until(lambda: len(samples) >= 100, 60)
    link.taps.clear()
    b = link.b
    assert b.state(t.server.conn_id) is State.ESTABLISHED  # so nothing here may be refused
    for i in range(3000):
        pkt = bytearray(rng.choice(samples))
        op = rng.randrange(3)
        if op == 0:
            pkt[rng.randrange(len(pkt))] ^= 1 << rng.randrange(8)
        elif op == 1:
            del pkt[rng.randrange(len(pkt)):]
        else:
            at = rng.randrange(min(len(pkt), 60))
            pkt[at] = rng.randrange(256)
        b.receive(bytes(pkt), link.now)  # must not raise
    assert sum(b.drops.values()) > 2500
    # A single bit flip or byte change is always caught by a checksum (or is no change at
    # all), so none of this reached the connection.
    t.run(max_time=600)
    t.check()


# ---------------------------------------------------------------------------- ping

@pytest.mark.parametrize("size", [0, 1, 56, 1400])
def test_echo_request_gets_an_echo_reply(size):
    link, t, _ = mid_transfer()
    b = link.b
    link.flush()
    data = bytes(range(256)) * 6
    request = icmp_packet(8, 0, struct.pack("!HH", 0xBEEF, 42) + data[:size])
    b.receive(bytes(request), link.now)
    out = b.packets_to_send(link.now)
    assert len(out) == 1
    reply = IP(out[0])
    assert (reply.src, reply.dst, reply.proto) == (B, A, 1)
    icmp = reply[ICMP]
    assert (icmp.type, icmp.code, icmp.id, icmp.seq) == (0, 0, 0xBEEF, 42)
    assert bytes(icmp.payload) == data[:size]
    # Both checksums are valid (reference implementation) and scapy computes the same ones.
    assert ref_sum(out[0][:20]) == 0xFFFF
    assert ref_sum(out[0][20:]) == 0xFFFF
    rebuilt = IP(out[0])
    del rebuilt.chksum
    del rebuilt[ICMP].chksum
    assert bytes(rebuilt) == out[0]
    assert b.counters["icmp_echo_replies"] == 1
    assert not b.drops
    t.run(max_time=600)
    t.check()
