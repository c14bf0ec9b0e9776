"""Resource limits of the engine, each hit on purpose, with the documented outcome:

- SYN cookies (RFC 4987) when a listener's SYN backlog is full; the accept queue;
- max_connections per stack (active opens raise, SYNs are dropped) and per listener;
- the send buffer (send() takes what fits), the receive buffer (a peer that ignores
  our zero window has its data dropped), out-of-order data (bounded by the window).
"""

import random

import pytest
from tcp_helpers import (
    ACK,
    FIN,
    OUR_ISS,
    PEER_ISS,
    PSH,
    REMOTE,
    RST,
    Peer,
    S,
    drain,
    events,
    expect,
    make_stack,
    names,
    open_passive,
)

from usertcp.tcp import (
    ConnectionAccepted,
    State,
    TcpError,
    TooManyConnections,
)
from usertcp.tcp.syncookie import MSS_TABLE, SLOT_SECONDS, check_cookie, make_cookie, mss_index
from usertcp.wire import addr_to_int

Y = OUR_ISS
X = PEER_ISS
SECRET = b"unit-test-secret"
L, R = addr_to_int("10.0.0.1"), addr_to_int(REMOTE)
BLOB = bytes(range(256)) * 64


def info(stack, cid):
    [row] = [r for r in stack.connections() if r["conn_id"] == cid]
    return row


def listener_row(stack, port=80):
    [row] = [r for r in stack.connections() if r["conn_id"] is None and r["local"][1] == port]
    return row


def fill_syn_backlog(stack, n, now, first_port=30000):
    """n half-open connections from other ports of the peer's address."""
    for i in range(n):
        Peer(stack, port=first_port + i, iss=1000 + i).syn(now)
    assert len(drain(stack, now)) == n  # n ordinary SYN-ACKs
    events(stack)


def accepted_ids(evs):
    return [e.conn_id for e in evs if isinstance(e, ConnectionAccepted)]


# ------------------------------------------------------------------ the cookie itself

def test_cookie_layout_and_check():
    now = 10.0  # slot 0
    c = make_cookie(SECRET, L, 80, R, 40000, X, 1460, now)
    assert c >> 27 == int(now // SLOT_SECONDS) & 0x1F
    assert c & 3 == MSS_TABLE.index(1460)
    assert check_cookie(SECRET, L, 80, R, 40000, X, c, now) == 1460
    assert check_cookie(SECRET, L, 80, R, 40000, X, c, SLOT_SECONDS + 63.9) == 1460  # next slot
    assert check_cookie(SECRET, L, 80, R, 40000, X, c, 2 * SLOT_SECONDS) is None  # stale
    # Anything else changed: no longer ours.
    assert check_cookie(SECRET, L, 80, R, 40001, X, c, now) is None
    assert check_cookie(SECRET, L, 80, R, 40000, X + 1, c, now) is None
    assert check_cookie(SECRET, L, 81, R, 40000, X, c, now) is None
    assert check_cookie(b"other secret", L, 80, R, 40000, X, c, now) is None
    assert check_cookie(SECRET, L, 80, R, 40000, X, c ^ 1, now) is None  # MSS index is covered
    assert check_cookie(SECRET, L, 80, R, 40000, X, c ^ (1 << 10), now) is None
    # Same slot counter low bits 32 slots later: the MAC covers the whole counter.
    later = now + 32 * SLOT_SECONDS
    assert check_cookie(SECRET, L, 80, R, 40000, X, c, later) is None


def test_cookie_mss_table():
    assert [MSS_TABLE[mss_index(m)] for m in (None, 88, 536, 1000, 1219, 1220, 1300, 1440,
                                             1459, 1460, 9000)] == [
        536, 536, 536, 536, 536, 1220, 1220, 1440, 1440, 1460, 1460]


def test_forged_cookies_rarely_pass():
    rng = random.Random(1)
    passed = sum(check_cookie(SECRET, L, 80, R, 40000, X, rng.getrandbits(32), 10.0) is not None
                 for _ in range(20_000))
    assert passed <= 2  # about 2**-24 each


# ------------------------------------------------------------------ cookie handshakes

def test_syn_cookie_when_the_syn_backlog_is_full(isn):
    stack = make_stack(syn_backlog=2)
    stack.listen(80)
    fill_syn_backlog(stack, 2, 1.0)
    assert stack.connection_count() == 2
    peer = Peer(stack, iss=X)
    peer.syn(2.0, mss=1460, wscale=7)
    # A SYN-ACK with MSS only: no window scaling, since nothing remembers the peer offered it.
    [synack] = expect(stack, 2.0, S("S.", ack=X + 1, win=65535, mss=1460, wscale=False))
    assert stack.connection_count() == 2  # no state at all
    assert stack.counters["syn_cookies_sent"] == 1
    assert events(stack) == []
    cookie = synack.seq
    assert check_cookie(SECRET, L, 80, R, 40000, X, cookie, 2.0) == 1460
    peer.took(synack)
    peer.send(ACK, 2.5)
    expect(stack, 2.5)
    evs = events(stack)
    assert names(evs) == ["LISTEN->SYN-RECEIVED", "SYN-RECEIVED->ESTABLISHED",
                          "ConnectionAccepted"]
    assert evs[0].cause == "syn cookie"
    [cid] = accepted_ids(evs)
    assert stack.counters["syn_cookies_accepted"] == 1
    assert stack.state(cid) is State.ESTABLISHED
    row = info(stack, cid)
    assert row["snd_una"] == (cookie + 1) & 0xFFFFFFFF and row["mss"] == 1460
    assert listener_row(stack)["half_open"] == 2 and listener_row(stack)["accept_queue"] == 0
    # It works as any connection: data both ways, unscaled windows.
    peer.send(PSH | ACK, 3.0, data=b"hello")
    stack.handle_timers(3.04)  # the delayed ACK (and the fillers' SYN-ACKs again)
    [ack] = [s for s in drain(stack, 3.04) if s.dport == 40000]
    S(".", seq=cookie + 1, ack=X + 6, win=65535).check(ack, 0)  # 256 KiB, unscaled
    assert stack.recv(cid) == b"hello"
    stack.send(cid, BLOB[:3000], 4.0)
    out = [s for s in drain(stack, 4.0) if s.dport == 40000]
    assert [len(s.payload) for s in out if s.payload] == [1460, 1460]  # Nagle holds 80
    assert out[0].seq == (cookie + 1) & 0xFFFFFFFF


@pytest.mark.parametrize(("offered", "used"), [(None, 536), (1000, 536), (1300, 1220),
                                               (1440, 1440), (9000, 1460)])
def test_cookie_carries_the_mss(isn, offered, used):
    stack = make_stack(syn_backlog=1)
    stack.listen(80)
    fill_syn_backlog(stack, 1, 1.0)
    peer = Peer(stack, iss=X)
    peer.syn(2.0, mss=offered)
    [synack] = expect(stack, 2.0, S("S.", ack=X + 1))
    peer.took(synack)
    peer.send(ACK, 2.5)
    [cid] = accepted_ids(events(stack))
    assert info(stack, cid)["mss"] == used


def test_cookie_ack_may_carry_data_and_fin(isn):
    stack = make_stack(syn_backlog=1)
    stack.listen(80)
    fill_syn_backlog(stack, 1, 1.0)
    peer = Peer(stack, iss=X)
    peer.syn(2.0)
    [synack] = expect(stack, 2.0, S("S."))
    peer.took(synack)
    peer.send(PSH | ACK | FIN, 2.5, data=b"GET /")
    expect(stack, 2.5, S(".", seq=synack.seq + 1, ack=X + 7))  # data and FIN ACKed at once
    evs = events(stack)
    [cid] = accepted_ids(evs)
    assert "PeerClosed" in names(evs)
    assert stack.recv(cid) == b"GET /"
    assert stack.state(cid) is State.CLOSE_WAIT


def test_cookie_checked_in_this_slot_and_the_next_only(isn):
    stack = make_stack(syn_backlog=1)
    stack.listen(80)
    fill_syn_backlog(stack, 1, 1.0)
    peers = [Peer(stack, port=41000 + i, iss=X + i) for i in range(2)]
    for p in peers:
        p.syn(10.0)  # slot 0
        [synack] = expect(stack, 10.0, S("S.", dport=p.port))
        p.took(synack)
    stack.handle_timers(70.0)  # the half-open filler gives up by now: the backlog has room
    drain(stack, 70.0)
    events(stack)
    peers[0].send(ACK, 127.9)  # slot 1: still good
    assert accepted_ids(events(stack))
    peers[1].send(ACK, 128.0)  # slot 2: too old, and the answer is a reset
    expect(stack, 128.0, S("R", seq=peers[1].ack, dport=peers[1].port))
    assert stack.counters["syn_cookies_rejected"] == 1
    assert accepted_ids(events(stack)) == []


def test_bad_cookie_is_reset(isn):
    stack = make_stack(syn_backlog=1)
    stack.listen(80)
    fill_syn_backlog(stack, 1, 1.0)
    peer = Peer(stack, iss=X)
    peer.syn(2.0)
    [synack] = expect(stack, 2.0, S("S."))
    peer.send(ACK, 2.5, ack=synack.seq + 2)  # not the cookie + 1
    expect(stack, 2.5, S("R", seq=synack.seq + 2))
    peer.send(ACK, 2.6, seq=X + 5, ack=synack.seq + 1)  # not the ISN the cookie was made for
    expect(stack, 2.6, S("R", seq=synack.seq + 1))
    assert stack.counters["syn_cookies_rejected"] == 2
    assert stack.connection_count() == 1 and accepted_ids(events(stack)) == []


def test_no_cookie_check_unless_cookies_were_sent_lately(isn):
    stack = make_stack()
    stack.listen(80)
    peer = Peer(stack, iss=X)
    c = make_cookie(SECRET, L, 80, R, 40000, X, 1460, 1.0)  # a valid cookie, never sent
    peer.send(ACK, 1.0, seq=X + 1, ack=c + 1)
    expect(stack, 1.0, S("R", seq=c + 1))
    assert "syn_cookies_rejected" not in stack.counters
    assert stack.connection_count() == 0


def test_without_syn_cookies_a_full_backlog_drops_the_syn(isn):
    stack = make_stack(syn_backlog=2, syn_cookies=False)
    stack.listen(80)
    fill_syn_backlog(stack, 2, 1.0)
    Peer(stack, iss=X).syn(2.0)
    expect(stack, 2.0)  # dropped, not refused
    assert stack.counters["listen_overflow"] == 1
    assert "syn_cookies_sent" not in stack.counters


def test_full_accept_queue_drops_syns_and_cookie_acks(isn):
    stack = make_stack(syn_backlog=1)
    stack.listen(80, backlog=1)
    a = Peer(stack, port=41000, iss=X)
    b = Peer(stack, port=42000, iss=X + 100)
    a.syn(1.0)
    [sa] = expect(stack, 1.0, S("S.", dport=41000))
    b.syn(1.1)  # the SYN backlog is full (a): a cookie
    [sb] = expect(stack, 1.1, S("S.", dport=42000, wscale=False))
    assert stack.counters["syn_cookies_sent"] == 1
    a.took(sa)
    a.send(ACK, 1.5)  # a is established and waits in the accept queue (nobody takes it)
    b.took(sb)
    b.send(ACK, 1.6)  # valid cookie, no room: dropped without a word
    expect(stack, 1.6)
    assert stack.counters["listen_overflow"] == 1
    assert stack.counters["syn_cookies_accepted"] == 0
    Peer(stack, port=43000).syn(1.7)  # a SYN meanwhile: dropped too, no cookie
    expect(stack, 1.7)
    assert stack.counters["listen_overflow"] == 2 and stack.counters["syn_cookies_sent"] == 1
    assert len(accepted_ids(events(stack))) == 1  # the application takes a
    b.send(ACK, 2.0, seq=b.seq)  # b's ACK again (its data would do as well): now it fits
    assert len(accepted_ids(events(stack))) == 1
    assert stack.counters["syn_cookies_accepted"] == 1


# ------------------------------------------------------------------ connection limits

def test_max_connections_refuses_active_opens(isn):
    stack = make_stack(max_connections=2)
    ids = [stack.connect(REMOTE, 80, 0.0) for _ in range(2)]
    with pytest.raises(TooManyConnections, match="max_connections is 2") as info_:
        stack.connect(REMOTE, 80, 0.0)
    assert isinstance(info_.value, TcpError)
    assert stack.connection_count() == 2
    stack.abort(ids[0], 1.0)  # one ends: room for one more
    assert stack.connection_count() == 1
    stack.connect(REMOTE, 80, 1.0)
    with pytest.raises(TooManyConnections):
        stack.connect(REMOTE, 81, 1.0)


def test_max_connections_drops_passive_opens(isn):
    stack = make_stack(max_connections=1)
    stack.listen(80)
    stack.connect(REMOTE, 9999, 0.0)
    drain(stack, 0.0)
    Peer(stack, iss=X).syn(1.0)
    expect(stack, 1.0)  # no SYN-ACK, not even a cookie
    assert stack.counters["listen_overflow"] == 1
    assert "syn_cookies_sent" not in stack.counters
    assert stack.connection_count() == 1


def test_time_wait_entries_do_not_count(isn):
    stack, peer, cid = open_passive(isn, max_connections=1)
    with pytest.raises(TooManyConnections):
        stack.connect(REMOTE, 81, 1.0)
    stack.close(cid, 1.0)
    expect(stack, 1.0, S("F."))
    peer.send(FIN | ACK, 1.5, ack=Y + 2)
    assert stack.state(cid) is State.TIME_WAIT
    assert stack.connection_count() == 0
    stack.connect(REMOTE, 81, 2.0)  # fine now


def test_listener_max_connections(isn):
    stack = make_stack()
    stack.listen(80, max_connections=2)
    a, b, c = (Peer(stack, port=41000 + i, iss=X + 1000 * i) for i in range(3))
    a.syn(1.0)
    b.syn(1.0)
    sa, sb = expect(stack, 1.0, S("S.", dport=41000), S("S.", dport=41001))
    c.syn(1.1)  # half-open ones count: no room
    expect(stack, 1.1)
    assert stack.counters["listen_overflow"] == 1
    row = listener_row(stack)
    assert (row["connections"], row["max_connections"]) == (2, 2)
    a.took(sa)
    a.send(ACK, 1.5)  # established ones count too
    c.syn(2.0)
    expect(stack, 2.0)
    b.send(RST, 2.5, seq=b.iss + 1)  # b gives up: back to LISTEN, room again
    c.syn(3.0)
    expect(stack, 3.0, S("S.", dport=41002))
    # Other ports and active opens are not this listener's business.
    stack.connect(REMOTE, 80, 3.0)
    assert stack.connection_count() == 3
    with pytest.raises(ValueError):
        stack.listen(81, max_connections=0)


# ------------------------------------------------------------------ buffers

def test_send_buffer_bounded_when_the_peer_never_acks(isn):
    stack, _peer, cid = open_passive(isn, send_buffer=10_000, retries=2, mss=1000)
    assert stack.send(cid, BLOB * 64, 1.0) == 10_000  # 1 MiB offered, what fits taken
    assert stack.send(cid, b"more", 1.0) == 0
    assert stack.send_space(cid) == 0
    assert len(drain(stack, 1.0)) == 10  # the initial window
    for t in (2.5, 5.5):
        stack.handle_timers(t)
        assert len(drain(stack, t)) == 1
        assert stack.send(cid, b"more", t) == 0 and info(stack, cid)["send_queue"] == 10_000
    stack.handle_timers(11.5)  # retries=2: then the connection gives up and is gone
    assert names(events(stack))[-1] == "ConnectionTimedOut"
    assert stack.connection_count() == 0


def test_send_buffer_bounded_behind_a_zero_window(isn):
    stack, peer, cid = open_passive(isn, send_buffer=10_000, window=0, mss=1000)
    assert stack.send(cid, BLOB, 1.0) == 10_000
    assert stack.send(cid, BLOB, 1.0) == 0
    expect(stack, 1.0)
    peer.send(ACK, 2.0, ack=Y + 1, window=4000)  # the window opens: 4000 go, 4000 free up
    assert sum(len(s.payload) for s in drain(stack, 2.0)) == 4000
    peer.send(ACK, 2.1, ack=Y + 4001, window=0)
    assert stack.send_space(cid) == 4000
    assert stack.send(cid, BLOB, 2.2) == 4000


def test_receive_buffer_bounded_when_the_peer_ignores_our_zero_window(isn):
    stack, peer, cid = open_passive(isn, receive_buffer=4000)  # the application never reads
    for i in range(4):
        peer.send(ACK, 1.0, data=BLOB[1000 * i:1000 * (i + 1)])
    stack.handle_timers(1.04)
    out = drain(stack, 1.04)
    assert out[-1].ack == (X + 4001) & 0xFFFFFFFF and out[-1].window == 0
    # The peer pushes on regardless: at RCV.NXT (read as a window probe), and beyond it.
    peer.send(ACK, 2.0, data=b"x" * 1000, advance=False)
    expect(stack, 2.0, S(".", ack=X + 4001, win=0))
    peer.send(ACK, 2.1, seq=X + 5001, data=b"y" * 1000)
    expect(stack, 2.1, S(".", ack=X + 4001, win=0))
    assert stack.counters["rx_out_of_window"] == 2
    assert stack.recv_pending(cid) == 4000 and info(stack, cid)["out_of_order"] == 0
    assert stack.recv(cid) == BLOB[:4000]  # the application reads: the window reopens
    expect(stack, 2.2, S(".", ack=X + 4001, win=4000))


def test_far_ahead_data_dropped_and_acked(isn):
    stack, peer, cid = open_passive(isn, receive_buffer=8000)
    peer.send(ACK, 1.0, seq=X + 1 + 100_000, data=b"far" * 100)
    expect(stack, 1.0, S(".", ack=X + 1, win=8000))
    peer.send(ACK, 1.1, seq=X + 1 + 7900, data=b"z" * 500)  # straddles the edge: 100 kept
    expect(stack, 1.1, S(".", ack=X + 1))
    assert info(stack, cid)["out_of_order"] == 100
    assert stack.counters["rx_out_of_window"] == 1


def test_out_of_order_bytes_never_exceed_the_window(isn):
    rcvbuf = 8192
    stack, peer, cid = open_passive(isn, receive_buffer=rcvbuf)
    rng = random.Random(5)
    for i in range(2000):  # never the byte at RCV.NXT: the hole stays
        start = rng.randrange(1, 3 * rcvbuf)
        size = rng.randrange(1, 1500)
        peer.send(ACK, 1.0 + i / 1000, seq=X + 1 + start, data=bytes(size), advance=False)
        held = info(stack, cid)["out_of_order"]
        assert held <= rcvbuf - 1
    drain(stack, 5.0)
    assert stack.counters["rx_out_of_window"] > 0
    peer.send(ACK, 5.0, seq=X + 1, data=b"\0")  # the hole filled: the run is delivered
    assert stack.recv_pending(cid) <= rcvbuf
    assert info(stack, cid)["out_of_order"] + stack.recv_pending(cid) <= rcvbuf
