"""A SYN flood from spoofed sources against a pure Stack, on the virtual clock.

Memory stays bounded by the SYN backlog (SYN cookies answer the rest without
state), a real client gets through during the flood (by cookie) and after it
(the ordinary way), and the half-open connections the flood did create expire
after the SYN-ACK retries.
"""

from __future__ import annotations

import random

from usertcp.stack import Stack
from usertcp.tcp import events as ev
from usertcp.tcp.config import TcpConfig
from usertcp.tcp.connection import Connection
from usertcp.tcp.state import State
from usertcp.wire import ACK, PSH, SYN, addr_to_int, build_options, build_segment
from usertcp.wire.packet import parse_packet

SERVER = "10.0.0.1"
CLIENT = "10.9.9.9"
N_SYNS = 50_000
SYN_OPTIONS = build_options(mss=1460, wscale=7)


def spoofed_syns(n: int, seed: int) -> list[bytes]:
    """n SYNs to port 80 from n distinct random addresses in 11.0.0.0/8."""
    rng = random.Random(seed)
    dst = addr_to_int(SERVER)
    base = addr_to_int("11.0.0.0")
    return [build_segment(base + host, dst, rng.randrange(1024, 65536), 80,
                          rng.getrandbits(32), 0, SYN, 64240, SYN_OPTIONS)
            for host in rng.sample(range(1, 1 << 24), n)]


def take_events(stack: Stack) -> list:
    out = []
    while (e := stack.next_event()) is not None:
        out.append(e)
    return out


def connection_objects(stack: Stack) -> int:
    return sum(1 for c in stack._by_id.values() if type(c) is Connection)


class Client:
    """A real client, written out by hand: SYN, ACK of the SYN-ACK, then data."""

    def __init__(self, stack: Stack, port: int, isn: int):
        self.stack = stack
        self.src = addr_to_int(CLIENT)
        self.port = port
        self.isn = isn

    def send(self, flags: int, seq: int, ack: int, now: float, data: bytes = b"",
             options: bytes = b"") -> None:
        self.stack.receive(build_segment(self.src, self.stack.address, self.port, 80, seq, ack,
                                         flags, 64240, options, data), now)

    def connect(self, now: float) -> int:
        """Handshake and one request; returns the accepted connection's id."""
        stack = self.stack
        self.send(SYN, self.isn, 0, now, options=SYN_OPTIONS)
        mine = [s for s in map(parse_packet, stack.packets_to_send(now))
                if s.dport == self.port]
        assert len(mine) == 1 and mine[0].flags == SYN | ACK, mine
        synack = mine[0]
        assert synack.ack == self.isn + 1
        self.via_cookie = synack.wscale is None  # a cookie SYN-ACK offers MSS only
        seq, ack = self.isn + 1, (synack.seq + 1) & 0xFFFFFFFF
        self.send(ACK, seq, ack, now + 0.01)
        self.send(ACK | PSH, seq, ack, now + 0.02, data=b"hello through the flood")
        accepted = [e for e in take_events(stack) if type(e) is ev.ConnectionAccepted
                    and e.remote == (CLIENT, self.port)]
        assert len(accepted) == 1
        cid = accepted[0].conn_id
        assert stack.state(cid) is State.ESTABLISHED
        assert stack.recv(cid) == b"hello through the flood"
        return cid


def test_syn_flood_is_bounded_and_a_real_client_gets_through():
    cfg = TcpConfig(isn_secret=b"flood", syn_backlog=256)
    stack = Stack(SERVER, config=cfg)
    stack.listen(80)
    syns = spoofed_syns(N_SYNS, seed=11)
    t = 0.0
    peak = 0
    during = None
    for i, packet in enumerate(syns):
        t = 1.0 + i * 0.0001  # 10,000 SYNs per virtual second, 5 s in all
        stack.receive(packet, t)
        if i % 1000 == 999:
            stack.handle_timers(t)  # SYN-ACK retransmissions of the half-open ones
            stack.packets_to_send(t)  # to a device that drops them: nobody answers
            take_events(stack)
            peak = max(peak, connection_objects(stack), stack.connection_count())
        if i == N_SYNS // 2:
            during = Client(stack, 40000, 12345).connect(t)
    assert peak <= cfg.syn_backlog + 1  # the half-open ones, and the real client's
    assert stack.counters["syn_cookies_sent"] >= N_SYNS - cfg.syn_backlog
    assert stack.counters["syn_cookies_accepted"] == 1  # the real client, mid-flood
    [listener] = [r for r in stack.connections(t) if r["conn_id"] is None]
    assert listener["half_open"] == cfg.syn_backlog
    assert stack.state(during) is State.ESTABLISHED
    # The flood stops; the half-open entries give up after synack_retries (1+2+...+32 s).
    now = t
    while (deadline := stack.next_deadline()) is not None and deadline < t + 120:
        now = deadline
        stack.handle_timers(now)
        stack.packets_to_send(now)
        take_events(stack)
    assert connection_objects(stack) == 1  # only the real client's connection is left
    [listener] = [r for r in stack.connections(now) if r["conn_id"] is None]
    assert listener["half_open"] == 0
    assert stack.counters["timeouts"] == cfg.syn_backlog
    # After the flood a client connects the ordinary way, with window scaling again.
    cookies = stack.counters["syn_cookies_sent"]
    client = Client(stack, 40001, 777)
    after = client.connect(now + 1)
    assert not client.via_cookie and stack.counters["syn_cookies_sent"] == cookies
    stack.abort(during, now + 2)
    stack.abort(after, now + 2)
    assert stack.connection_count() == 0 and connection_objects(stack) == 0
