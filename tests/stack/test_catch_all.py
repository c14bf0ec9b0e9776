"""listen_any: a stack that is every address routed to it, for relays such as `usertcp run`.

Exact packets in and out: which address answers, the request/admit/refuse ladder, the
4-tuple keying, and UDP / ping forwarding as events.
"""

from __future__ import annotations

import struct

import pytest

from usertcp.stack import Stack
from usertcp.tcp import TcpConfig
from usertcp.tcp import events as ev
from usertcp.tcp.errors import PortInUse, UnknownRequest
from usertcp.wire import ACK, FIN, RST, SYN, addr_to_int, build_options, build_segment
from usertcp.wire.checksum import internet_checksum
from usertcp.wire.ipv4 import PROTO_ICMP, PROTO_UDP, build_ipv4, parse_ipv4
from usertcp.wire.packet import parse_packet
from usertcp.wire.tcp import Segment

GATEWAY = "10.0.2.2"
PROGRAM = "10.0.2.100"
FAR = "192.0.2.7"  # some address the program dials; routed to the stack by default route


def make(**kw) -> Stack:
    kw.setdefault("isn_secret", b"catch-all-secret")
    kw.setdefault("sack", False)
    kw.setdefault("timestamps", False)
    return Stack(GATEWAY, config=TcpConfig(**kw))


def syn(dst=FAR, dport=443, sport=40000, seq=1000, src=PROGRAM) -> bytes:
    return build_segment(addr_to_int(src), addr_to_int(dst), sport, dport, seq, 0, SYN, 64240,
                         build_options(mss=1460))


def seg(flags, seq, ack, dst=FAR, dport=443, sport=40000, data=b"", src=PROGRAM) -> bytes:
    return build_segment(addr_to_int(src), addr_to_int(dst), sport, dport, seq, ack, flags,
                         64240, b"", data)


def out(stack: Stack, now: float = 0.0) -> list:
    return [parse_packet(bytes(p)) for p in stack.packets_to_send(now)]


def evs(stack: Stack) -> list:
    got = []
    while (e := stack.next_event()) is not None:
        got.append(e)
    return got


def of(kind, events):
    return [e for e in events if type(e) is kind]


def test_without_listen_any_other_addresses_are_not_ours():
    stack = make()
    stack.receive(syn(), 0.0)
    assert out(stack) == []
    assert stack.drops["not-for-us"] == 1


def test_accepts_any_address_and_answers_as_the_address_dialled():
    stack = make()
    stack.listen_any()
    stack.receive(syn(dst=FAR, dport=443), 0.0)
    [synack] = out(stack)
    assert isinstance(synack, Segment)
    assert (synack.src, synack.sport) == (addr_to_int(FAR), 443)
    assert (synack.dst, synack.dport) == (addr_to_int(PROGRAM), 40000)
    assert synack.flags == SYN | ACK and synack.ack == 1001
    stack.receive(seg(ACK, 1001, synack.seq + 1), 0.01)
    [accepted] = of(ev.ConnectionAccepted, evs(stack))
    assert (accepted.local_address, accepted.local_port) == (FAR, 443)
    assert accepted.listener_port == 0
    assert stack.endpoints(accepted.conn_id) == ((FAR, 443), (PROGRAM, 40000))
    row = next(r for r in stack.connections() if r["conn_id"] == accepted.conn_id)
    assert row["local"] == (FAR, 443) and row["remote"] == (PROGRAM, 40000)


def test_same_source_port_to_two_destinations_is_two_connections():
    """Keyed by the full 4-tuple: one program port may reach two servers (as after NAT)."""
    stack = make()
    stack.listen_any()
    stack.receive(syn(dst=FAR, dport=80), 0.0)
    stack.receive(syn(dst="198.51.100.9", dport=80), 0.0)
    a, b = out(stack)
    assert a.src != b.src and a.flags == b.flags == SYN | ACK
    stack.receive(seg(ACK, 1001, a.seq + 1, dst=FAR, dport=80, data=b"to far"), 0.01)
    stack.receive(seg(ACK, 1001, b.seq + 1, dst="198.51.100.9", dport=80, data=b"to other"), 0.01)
    accepted = of(ev.ConnectionAccepted, evs(stack))
    assert [e.local_address for e in accepted] == [FAR, "198.51.100.9"]
    assert [stack.recv(e.conn_id) for e in accepted] == [b"to far", b"to other"]


def test_a_port_listened_on_the_own_address_keeps_its_listener():
    stack = make()
    stack.listen(80)
    stack.listen_any()
    stack.receive(syn(dst=GATEWAY, dport=80), 0.0)
    stack.receive(syn(dst=FAR, dport=80, sport=40001), 0.0)
    a, b = out(stack)
    stack.receive(seg(ACK, 1001, a.seq + 1, dst=GATEWAY, dport=80), 0.01)
    stack.receive(seg(ACK, 1001, b.seq + 1, dst=FAR, dport=80, sport=40001), 0.01)
    accepted = of(ev.ConnectionAccepted, evs(stack))
    assert [e.listener_port for e in accepted] == [80, 0]


def test_listen_any_twice_is_refused():
    stack = make()
    stack.listen_any()
    with pytest.raises(PortInUse):
        stack.listen_any()


def test_deferred_syn_is_asked_about_then_admitted():
    stack = make()
    stack.listen_any(defer=True)
    stack.receive(syn(), 0.0)
    assert out(stack) == []  # nothing until the application decides
    [req] = evs(stack)
    assert type(req) is ev.ConnectionRequested
    assert req.local == (FAR, 443) and req.remote == (PROGRAM, 40000)
    # The peer's SYN retransmission is absorbed while the request is open.
    stack.receive(syn(), 1.0)
    assert out(stack, 1.0) == [] and evs(stack) == []
    assert stack.counters["syn_while_requested"] == 1
    cid = stack.admit(req.conn_id, 1.2)
    assert cid == req.conn_id  # the connection keeps the request's id
    [synack] = out(stack, 1.2)
    assert synack.flags == SYN | ACK and synack.src == addr_to_int(FAR) and synack.ack == 1001
    stack.receive(seg(ACK, 1001, synack.seq + 1), 1.25)
    [accepted] = of(ev.ConnectionAccepted, evs(stack))
    assert accepted.conn_id == cid
    with pytest.raises(UnknownRequest):
        stack.admit(req.conn_id, 1.3)


def test_refused_with_reset_from_the_dialled_address():
    stack = make()
    stack.listen_any(defer=True)
    stack.receive(syn(seq=77), 0.0)
    [req] = evs(stack)
    stack.refuse(req.conn_id, 0.1, "reset")
    [rst] = out(stack, 0.1)
    assert rst.flags == RST | ACK and rst.ack == 78 and rst.seq == 0
    assert (rst.src, rst.sport, rst.dst, rst.dport) == (addr_to_int(FAR), 443,
                                                        addr_to_int(PROGRAM), 40000)
    # The request is gone: a new SYN makes a new request.
    stack.receive(syn(seq=77), 1.0)
    [again] = evs(stack)
    assert type(again) is ev.ConnectionRequested and again.conn_id != req.conn_id


def test_refused_as_host_unreachable_quotes_the_syn():
    stack = make()
    stack.listen_any(defer=True)
    stack.receive(syn(seq=0x01020304, sport=40123), 0.0)
    [req] = evs(stack)
    stack.refuse(req.conn_id, 0.1, "host-unreachable")
    [packet] = stack.packets_to_send(0.1)
    ip = parse_ipv4(packet)
    assert ip.protocol == PROTO_ICMP
    assert (ip.src, ip.dst) == (addr_to_int(FAR), addr_to_int(PROGRAM))
    icmp = bytes(packet[20:])
    assert icmp[0] == 3 and icmp[1] == 1 and internet_checksum(icmp) == 0
    quoted = parse_ipv4(icmp[8:])
    assert (quoted.src, quoted.dst, quoted.protocol) == (addr_to_int(PROGRAM), addr_to_int(FAR), 6)
    assert struct.unpack("!HHI", icmp[28:36]) == (40123, 443, 0x01020304)


def test_refused_silently_sends_nothing_and_frees_the_slot():
    stack = make(syn_backlog=1)
    stack.listen_any(defer=True)
    stack.receive(syn(sport=1), 0.0)
    stack.receive(syn(sport=2), 0.0)  # beyond the SYN backlog: dropped, not asked
    [req] = evs(stack)
    assert stack.counters["listen_overflow"] == 1
    stack.refuse(req.conn_id, 0.1, "none")
    assert out(stack, 0.1) == []
    stack.receive(syn(sport=2), 1.0)
    assert [type(e) for e in evs(stack)] == [ev.ConnectionRequested]


def test_refuse_rejects_an_unknown_reply():
    stack = make()
    stack.listen_any(defer=True)
    stack.receive(syn(), 0.0)
    [req] = evs(stack)
    with pytest.raises(ValueError):
        stack.refuse(req.conn_id, 0.0, "maybe")


def test_ack_for_no_connection_is_reset_in_deferred_mode():
    stack = make()
    stack.listen_any(defer=True)
    stack.receive(seg(ACK, 5, 99), 0.0)
    [rst] = out(stack)
    assert rst.flags == RST and rst.seq == 99 and rst.src == addr_to_int(FAR)


def test_time_wait_is_keyed_by_the_dialled_address():
    stack = make(msl=1.0)
    stack.listen_any()
    stack.receive(syn(), 0.0)
    [synack] = out(stack)
    stack.receive(seg(ACK, 1001, synack.seq + 1), 0.0)
    [acc] = of(ev.ConnectionAccepted, evs(stack))
    stack.close(acc.conn_id, 0.1)
    [fin] = out(stack, 0.1)
    assert fin.flags & FIN and fin.src == addr_to_int(FAR)
    stack.receive(seg(FIN | ACK, 1001, fin.seq + 1), 0.2)
    [ack] = out(stack, 0.2)
    assert ack.flags == ACK and ack.src == addr_to_int(FAR)
    assert stack.time_wait_count() == 1
    # A retransmitted FIN is answered from TIME-WAIT, from the same address.
    stack.receive(seg(FIN | ACK, 1001, fin.seq + 1), 0.5)
    [again] = out(stack, 0.5)
    assert again.flags == ACK and again.src == addr_to_int(FAR) and again.ack == 1002


def test_active_open_from_another_local_address():
    stack = make()
    stack.listen_any()
    cid = stack.connect(PROGRAM, 80, 0.0, local_address=FAR)
    [s] = out(stack)
    assert s.flags == SYN and s.src == addr_to_int(FAR) and s.dst == addr_to_int(PROGRAM)
    assert stack.endpoints(cid)[0] == (FAR, s.sport)


def udp_packet(src, sport, dst, dport, data: bytes) -> bytes:
    length = 8 + len(data)
    pseudo = struct.pack("!IIBBH", addr_to_int(src), addr_to_int(dst), 0, PROTO_UDP, length)
    head = struct.pack("!HHHH", sport, dport, length, 0)
    csum = internet_checksum(pseudo + head + data) or 0xFFFF
    head = struct.pack("!HHHH", sport, dport, length, csum)
    return build_ipv4(addr_to_int(src), addr_to_int(dst), PROTO_UDP, head + data)


def echo_request(src, dst, ident, seq, data: bytes) -> bytes:
    msg = bytearray(struct.pack("!BBHHH", 8, 0, 0, ident, seq) + data)
    msg[2:4] = internet_checksum(msg).to_bytes(2, "big")
    return build_ipv4(addr_to_int(src), addr_to_int(dst), PROTO_ICMP, bytes(msg))


def test_udp_is_an_event_only_when_forwarding():
    stack = make()
    stack.listen_any()
    stack.receive(udp_packet(PROGRAM, 5353, "10.0.2.3", 53, b"query"), 0.0)
    assert evs(stack) == [] and stack.drops["unsupported-protocol"] == 1
    stack.forward_datagrams()
    stack.receive(udp_packet(PROGRAM, 5353, "10.0.2.3", 53, b"query"), 0.0)
    [d] = evs(stack)
    assert type(d) is ev.DatagramReceived
    assert (d.src, d.dst, d.data) == ((PROGRAM, 5353), ("10.0.2.3", 53), b"query")


def test_udp_with_a_bad_checksum_is_dropped_and_counted():
    stack = make()
    stack.listen_any()
    stack.forward_datagrams()
    packet = bytearray(udp_packet(PROGRAM, 5353, "10.0.2.3", 53, b"query"))
    packet[-1] ^= 0xFF
    stack.receive(bytes(packet), 0.0)
    assert evs(stack) == []
    assert sum(stack.drops.values()) == 1


def test_send_datagram_builds_a_udp_packet_from_the_given_source():
    stack = make()
    stack.send_datagram(b"answer", ("10.0.2.3", 53), (PROGRAM, 5353))
    [packet] = stack.packets_to_send(0.0)
    ip = parse_ipv4(packet)
    assert (ip.src, ip.dst, ip.protocol) == (addr_to_int("10.0.2.3"), addr_to_int(PROGRAM),
                                             PROTO_UDP)
    assert struct.unpack("!HHH", bytes(packet[20:26])) == (53, 5353, 14)
    assert bytes(packet[28:]) == b"answer"
    assert packet == udp_packet("10.0.2.3", 53, PROGRAM, 5353, b"answer")


def test_ping_of_the_own_address_is_answered_and_others_forwarded():
    stack = make()
    stack.listen_any()
    stack.forward_datagrams()
    stack.receive(echo_request(PROGRAM, GATEWAY, 7, 1, b"ping"), 0.0)
    [reply] = stack.packets_to_send(0.0)
    assert parse_ipv4(reply).src == addr_to_int(GATEWAY) and reply[20] == 0
    stack.receive(echo_request(PROGRAM, FAR, 7, 2, b"far"), 0.0)
    assert stack.packets_to_send(0.0) == []
    [e] = evs(stack)
    assert type(e) is ev.EchoRequested
    assert (e.src, e.dst, e.ident, e.seq, e.data) == (PROGRAM, FAR, 7, 2, b"far")
    stack.send_echo_reply(FAR, PROGRAM, 7, 2, b"far")
    [back] = stack.packets_to_send(0.0)
    ip = parse_ipv4(back)
    assert (ip.src, ip.dst) == (addr_to_int(FAR), addr_to_int(PROGRAM))
    assert back[20] == 0 and internet_checksum(bytes(back[20:])) == 0
    assert struct.unpack("!HH", bytes(back[24:28])) == (7, 2) and bytes(back[28:]) == b"far"


def test_port_unreachable_about_a_udp_flow():
    stack = make()
    stack.send_unreachable((PROGRAM, 5000), ("10.0.2.2", 9999), 3)
    [packet] = stack.packets_to_send(0.0)
    ip = parse_ipv4(packet)
    assert (ip.src, ip.dst) == (addr_to_int("10.0.2.2"), addr_to_int(PROGRAM))
    icmp = bytes(packet[20:])
    assert icmp[:2] == b"\x03\x03"
    quoted = parse_ipv4(icmp[8:])
    assert quoted.protocol == PROTO_UDP and quoted.src == addr_to_int(PROGRAM)
    assert struct.unpack("!HH", icmp[28:32]) == (5000, 9999)


# ---------------------------------------------------------------- the same over IPv6

GATEWAY6, PROGRAM6, FAR6 = "fd00::2", "fd00::100", "2001:db8::7"


def make6() -> Stack:
    return Stack([GATEWAY, GATEWAY6], config=TcpConfig(isn_secret=b"x", sack=False,
                                                       timestamps=False))


def test_v6_catch_all_answers_as_the_address_dialled_and_refuses_with_icmpv6():
    from usertcp.wire.ipv6 import parse_ipv6

    stack = make6()
    stack.listen_any(defer=True)
    stack.receive(syn(src=PROGRAM6, dst=FAR6, dport=443), 0.0)
    [req] = evs(stack)
    assert req.local == (FAR6, 443) and req.remote == (PROGRAM6, 40000)
    stack.refuse(req.conn_id, 0.1, "host-unreachable")
    [packet] = stack.packets_to_send(0.1)
    ip = parse_ipv6(packet)
    assert (ip.src, ip.dst, ip.protocol) == (addr_to_int(FAR6), addr_to_int(PROGRAM6), 58)
    assert bytes(packet[40:42]) == b"\x01\x03"  # destination unreachable, address unreachable
    stack.receive(syn(src=PROGRAM6, dst=FAR6, dport=443, sport=40001), 1.0)
    [req2] = evs(stack)
    stack.admit(req2.conn_id, 1.0)
    [synack] = out(stack, 1.0)
    assert synack.src == addr_to_int(FAR6) and synack.mss == 1440


def test_v6_udp_and_pings_are_forwarded_and_answered():
    from usertcp.wire.ipv6 import parse_ipv6

    stack = make6()
    stack.listen_any()
    stack.forward_datagrams()
    stack.send_datagram(b"q", (PROGRAM6, 5353), ("fd00::3", 53))  # as if from the program
    [query] = stack.packets_to_send(0.0)
    stack.receive(query, 0.0)
    [d] = evs(stack)
    assert type(d) is ev.DatagramReceived and d.dst == ("fd00::3", 53) and d.data == b"q"
    stack.send_echo_reply(FAR6, PROGRAM6, 9, 1, b"pong")
    [reply] = stack.packets_to_send(0.0)
    ip = parse_ipv6(reply)
    assert ip.src == addr_to_int(FAR6) and reply[40] == 129
    stack.send_unreachable((PROGRAM6, 5353), (FAR6, 9), 3)
    [unreach] = stack.packets_to_send(0.0)
    assert bytes(unreach[40:42]) == b"\x01\x04"  # port unreachable
