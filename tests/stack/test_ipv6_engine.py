"""The engine over IPv6 and dual stack, packets in and out: handshake numbers, MSS, keys,
ICMP errors (unreachable, Packet Too Big / fragmentation needed) and fragments into the stack."""

from __future__ import annotations

import errno
import struct

import pytest

from usertcp.stack import Stack
from usertcp.tcp import TcpConfig
from usertcp.tcp import events as ev
from usertcp.tcp.state import State
from usertcp.wire import ACK, SYN, addr_to_int, build_options, build_segment
from usertcp.wire.checksum import internet_checksum
from usertcp.wire.ipv4 import int_to_addr
from usertcp.wire.packet import parse_packet
from usertcp.wire.tcp import Segment

V4, PEER4 = "10.0.0.1", "10.0.0.2"
V6, PEER6 = "fd00:7::2", "fd00:7::1"


def make(**kw) -> Stack:
    kw.setdefault("isn_secret", b"v6-secret")
    kw.setdefault("sack", True)
    kw.setdefault("timestamps", False)
    return Stack([V4, V6], config=TcpConfig(**kw))


def out(stack: Stack, now: float = 0.0) -> list:
    return [parse_packet(bytes(p)) for p in stack.packets_to_send(now)]


def evs(stack: Stack) -> list:
    got = []
    while (e := stack.next_event()) is not None:
        got.append(e)
    return got


def pkt(src, dst, flags, seq, ack, data=b"", sport=40000, dport=80, options=b"", window=65535):
    return build_segment(addr_to_int(src), addr_to_int(dst), sport, dport, seq, ack, flags,
                         window, options, data)


def open_passive(stack: Stack, peer: str, local: str, now: float = 0.0):
    stack.receive(pkt(peer, local, SYN, 1000, 0, options=build_options(mss=1440)), now)
    [synack] = out(stack, now)
    stack.receive(pkt(peer, local, ACK, 1001, synack.seq + 1), now + 0.01)
    [acc] = [e for e in evs(stack) if type(e) is ev.ConnectionAccepted]
    return synack, acc.conn_id


def test_v6_handshake_answers_from_the_v6_address_with_the_v6_mss():
    stack = make(mss=1460)
    stack.listen(80)
    synack, cid = open_passive(stack, PEER6, V6)
    assert isinstance(synack, Segment)
    assert (synack.src, synack.dst) == (addr_to_int(V6), addr_to_int(PEER6))
    assert synack.flags == SYN | ACK and synack.ack == 1001
    assert synack.mss == 1440  # TcpConfig.mss is IPv4's: IPv6's header is 20 bytes longer
    assert stack.endpoints(cid) == ((V6, 80), (PEER6, 40000))
    assert stack.state(cid) is State.ESTABLISHED


def test_both_families_on_one_port_are_separate_connections():
    stack = make()
    stack.listen(80)
    s4, c4 = open_passive(stack, PEER4, V4)
    s6, c6 = open_passive(stack, PEER6, V6)
    assert c4 != c6 and s4.mss == 1460 and s6.mss == 1440
    stack.receive(pkt(PEER6, V6, ACK, 1001, s6.seq + 1, data=b"six"), 0.1)
    stack.receive(pkt(PEER4, V4, ACK, 1001, s4.seq + 1, data=b"four"), 0.1)
    assert stack.recv(c6) == b"six" and stack.recv(c4) == b"four"


def test_isn_depends_on_the_v6_addresses():
    a, b = make(), make()
    a.listen(80)
    b.listen(80)
    a.receive(pkt(PEER6, V6, SYN, 1000, 0), 0.0)
    b.receive(pkt("fd00:7::9", V6, SYN, 1000, 0), 0.0)
    assert out(a)[0].seq != out(b)[0].seq


def test_active_open_picks_the_family_of_the_destination():
    stack = make()
    stack.connect(PEER6, 443, 0.0)
    stack.connect(PEER4, 443, 0.0)
    s6, s4 = out(stack)
    assert s6.src == addr_to_int(V6) and s4.src == addr_to_int(V4)
    assert s6.mss == 1440 and s4.mss == 1460


def test_a_v4_only_stack_refuses_a_v6_destination():
    stack = Stack(V4, config=TcpConfig(isn_secret=b"x"))
    with pytest.raises(ValueError, match="no IPv6 address"):
        stack.connect(PEER6, 80, 0.0)


def test_one_address_per_family():
    with pytest.raises(ValueError):
        Stack(["10.0.0.1", "10.0.0.2"])


def test_closed_v6_port_is_reset_from_the_address_dialled():
    stack = make()
    stack.receive(pkt(PEER6, V6, SYN, 5, 0, dport=81), 0.0)
    [rst] = out(stack)
    assert rst.src == addr_to_int(V6) and rst.ack == 6


def test_v6_time_wait_answers_a_retransmitted_fin():
    stack = make(msl=1.0)
    stack.listen(80)
    synack, cid = open_passive(stack, PEER6, V6)
    stack.close(cid, 0.1)
    [fin] = out(stack, 0.1)
    stack.receive(pkt(PEER6, V6, ACK | 1, 1001, fin.seq + 1), 0.2)
    out(stack, 0.2)
    assert stack.time_wait_count() == 1
    stack.receive(pkt(PEER6, V6, ACK | 1, 1001, fin.seq + 1), 0.3)
    [ack] = out(stack, 0.3)
    assert ack.src == addr_to_int(V6) and ack.ack == 1002


# ---------------------------------------------------------------- ICMP errors

def icmp6(src, dst, icmp_type, code, field, body) -> bytes:
    from usertcp.wire.ipv6 import build_ipv6

    msg = bytearray(struct.pack("!BBHI", icmp_type, code, 0, field) + bytes(body))
    s, d = addr_to_int(src) & ((1 << 128) - 1), addr_to_int(dst) & ((1 << 128) - 1)
    pseudo = s.to_bytes(16, "big") + d.to_bytes(16, "big") + struct.pack("!IxxxB", len(msg), 58)
    msg[2:4] = internet_checksum(pseudo + bytes(msg)).to_bytes(2, "big")
    return build_ipv6(addr_to_int(src), addr_to_int(dst), 58, bytes(msg))


def icmp4(src, dst, icmp_type, code, field, body) -> bytes:
    from usertcp.wire.ipv4 import build_ipv4

    msg = bytearray(struct.pack("!BBHI", icmp_type, code, 0, field) + bytes(body))
    msg[2:4] = internet_checksum(bytes(msg)).to_bytes(2, "big")
    return build_ipv4(addr_to_int(src), addr_to_int(dst), 1, bytes(msg))


def sender(peer: str, local: str, **kw):
    """An established connection that has sent 8 KB in segments of the MSS."""
    stack = make(**kw)
    stack.listen(80)
    synack, cid = open_passive(stack, peer, local)
    conn = stack._by_id[cid]
    conn.cwnd = 1 << 20
    stack.set_nodelay(cid, True)
    stack.send(cid, bytes(8000), 0.1)
    sent = out(stack, 0.1)
    return stack, cid, sent


def test_packet_too_big_shrinks_segments_and_resends_what_was_in_flight():
    stack, cid, sent = sender(PEER6, V6, mss=1460)
    assert [len(s.payload) for s in sent] == [1440] * 5 + [800]
    first = bytes(stack_packet(stack, sent[0]))
    stack.receive(icmp6("fd00:9::1", V6, 2, 0, 1280, first[:1232]), 0.2)
    resent = out(stack, 0.2)
    assert stack.counters["pmtu_lowered"] == 1
    assert resent and all(len(s.payload) <= 1280 - 60 for s in resent)
    assert resent[0].seq == sent[0].seq  # from SND.UNA again
    assert stack.connections()[0]["mss"] == 1220


def stack_packet(stack, seg: Segment) -> bytes:
    return build_segment(seg.src, seg.dst, seg.sport, seg.dport, seg.seq, seg.ack, seg.flags,
                         seg.window, b"", bytes(seg.payload))


def test_fragmentation_needed_shrinks_ipv4_segments():
    stack, cid, sent = sender(PEER4, V4)
    quote = stack_packet(stack, sent[1])[:28]
    stack.receive(icmp4("10.9.9.9", V4, 3, 4, 1000, quote), 0.2)
    resent = out(stack, 0.2)
    assert stack.counters["pmtu_lowered"] == 1
    assert resent and max(len(s.payload) for s in resent) == 1000 - 40


def test_packet_too_big_below_1280_is_taken_as_1280():
    stack, cid, sent = sender(PEER6, V6)
    stack.receive(icmp6("fd00:9::1", V6, 2, 0, 600, stack_packet(stack, sent[0])[:200]), 0.2)
    assert max(len(s.payload) for s in out(stack, 0.2)) == 1220


def test_an_error_quoting_a_sequence_number_never_sent_is_ignored():
    stack, cid, sent = sender(PEER6, V6)
    bogus = bytearray(stack_packet(stack, sent[0])[:200])
    bogus[44:48] = (sent[0].seq - 100000 & 0xFFFFFFFF).to_bytes(4, "big")
    stack.receive(icmp6("fd00:9::1", V6, 2, 0, 1280, bogus), 0.2)
    assert out(stack, 0.2) == [] and stack.counters["pmtu_lowered"] == 0
    assert stack.drops["icmp-unmatched"] == 1


@pytest.mark.parametrize("family,code,err", [
    (4, 3, errno.ECONNREFUSED), (4, 1, errno.EHOSTUNREACH), (4, 0, errno.ENETUNREACH),
    (6, 4, errno.ECONNREFUSED), (6, 3, errno.EHOSTUNREACH), (6, 1, errno.EACCES),
])
def test_unreachable_fails_our_syn_as_linux_reports_it(family, code, err):
    stack = make()
    peer, local = (PEER4, V4) if family == 4 else (PEER6, V6)
    cid = stack.connect(peer, 443, 0.0)
    [syn] = out(stack)
    quote = stack_packet(stack, syn)
    if family == 4:
        stack.receive(icmp4("10.9.9.9", local, 3, code, 0, quote[:28]), 0.1)
    else:
        stack.receive(icmp6("fd00:9::1", local, 1, code, 0, quote), 0.1)
    [failed] = [e for e in evs(stack) if type(e) is ev.ConnectionUnreachable]
    assert failed.conn_id == cid and failed.errno == err
    assert stack.state(cid) is State.CLOSED


def test_unreachable_is_a_soft_error_for_an_established_connection():
    stack, cid, sent = sender(PEER6, V6)
    stack.receive(icmp6("fd00:9::1", V6, 1, 3, 0, stack_packet(stack, sent[0])[:200]), 0.2)
    assert stack.state(cid) is State.ESTABLISHED
    assert stack.counters["icmp_soft_errors"] == 1


# ---------------------------------------------------------------- fragments, multicast

def test_a_fragmented_ipv4_segment_is_reassembled_and_delivered():
    stack = make()
    stack.listen(80)
    synack, cid = open_passive(stack, PEER4, V4)
    data = bytes(range(256)) * 12
    whole = bytearray(pkt(PEER4, V4, ACK, 1001, synack.seq + 1, data=data))
    body = whole[20:]
    cut = 1480
    for offset, more, chunk in ((0, 1, body[:cut]), (cut, 0, body[cut:])):
        head = bytearray(whole[:20])
        head[2:4] = (20 + len(chunk)).to_bytes(2, "big")
        head[6:8] = ((more << 13) | (offset // 8)).to_bytes(2, "big")
        head[10:12] = b"\0\0"
        head[10:12] = internet_checksum(bytes(head)).to_bytes(2, "big")
        stack.receive(bytes(head) + bytes(chunk), 0.1)
    assert stack.recv(cid) == data
    assert stack.counters["fragments"] == 2


def test_mld_and_router_solicitations_are_counted_quietly():
    stack = make()
    rs = icmp6("fe80::1", "ff02::2", 133, 0, 0, b"")
    stack.receive(rs, 0.0)
    assert stack.drops == {} and stack.counters["ipv6_multicast_ignored"] == 1
    assert int_to_addr(addr_to_int("ff02::2")) == "ff02::2"


def test_path_mtu_is_kept_per_destination_and_expires():
    """RFC 8201 5.2: what one connection learned serves every connection to that address, new
    ones included, until it expires (600 s, Linux's mtu_expires)."""
    stack, cid, sent = sender(PEER6, V6)
    # A second connection to the same peer, from another port, idle.
    stack.receive(pkt(PEER6, V6, SYN, 5000, 0, sport=40001, options=build_options(mss=1440)),
                  0.1)
    [synack2] = out(stack, 0.1)
    stack.receive(pkt(PEER6, V6, ACK, 5001, synack2.seq + 1, sport=40001), 0.1)
    second = [e for e in evs(stack) if type(e) is ev.ConnectionAccepted][-1].conn_id
    stack.receive(icmp6("fd00:9::1", V6, 2, 0, 1280, stack_packet(stack, sent[0])[:200]), 0.2)
    out(stack, 0.2)
    assert stack._by_id[second].snd_mss == 1220  # not quoted, same destination
    assert stack.path_mtu(addr_to_int(PEER6), 0.2) == 1280
    # A new connection to it starts at the learned size...
    stack.receive(pkt(PEER6, V6, SYN, 9000, 0, sport=40002, options=build_options(mss=1440)),
                  1.0)
    [synack3] = out(stack, 1.0)
    stack.receive(pkt(PEER6, V6, ACK, 9001, synack3.seq + 1, sport=40002), 1.0)
    third = [e for e in evs(stack) if type(e) is ev.ConnectionAccepted][-1].conn_id
    assert stack._by_id[third].snd_mss == 1220
    # ...until the learned MTU expires; other destinations never saw it.
    assert stack.path_mtu(addr_to_int(PEER6), 600.3) is None
    assert stack.path_mtu(addr_to_int("fd00:7::9"), 0.3) is None


def test_syn_cookies_over_ipv6():
    stack = make(syn_backlog=0)
    stack.listen(80)
    stack.receive(pkt(PEER6, V6, SYN, 7000, 0, options=build_options(mss=1440)), 0.0)
    [cookie] = out(stack)
    assert cookie.flags == SYN | ACK and cookie.mss == 1440 and cookie.src == addr_to_int(V6)
    assert stack.counters["syn_cookies_sent"] == 1
    stack.receive(pkt(PEER6, V6, ACK, 7001, cookie.seq + 1, data=b"hi"), 0.1)
    [acc] = [e for e in evs(stack) if type(e) is ev.ConnectionAccepted]
    assert stack.counters["syn_cookies_accepted"] == 1
    assert stack.recv(acc.conn_id) == b"hi"
    assert stack.endpoints(acc.conn_id) == ((V6, 80), (PEER6, 40000))
