"""Ladders that kill the mutants the rest of the suite let live (scripts/mutate.py).

Each test asserts RFC (or documented Linux) behaviour at a boundary where a one-token change
of the engine went unnoticed by every other test: the peer's window while SACKed data is
out, tail loss probes (timeout, what is probed, when an episode ends), RACK after a partial
ACK, the window update on reading, delayed ACKs of coalesced segments, PAWS after long
traffic, the out-of-window ACK rate limit, keepalive with a user timeout, SYN cookies in a
later time slot, ephemeral ports, configuration bounds and the sequence-number helpers.

Ladders as elsewhere: passive opens at 0.0 with a 0.5 s handshake RTT (SRTT 0.5, RTO 1.5),
NewReno, SACK and timestamps off unless a test turns them on. The stack computes what it
sends when asked (packets_to_send), so a test that cares what one ACK released drains
right after that ACK.
"""

import pytest
from tcp_helpers import (
    ACK,
    FIN,
    OUR_ISS,
    PEER_ISS,
    REMOTE,
    Peer,
    S,
    drain,
    events,
    expect,
    make_stack,
    open_passive,
)

from usertcp.tcp import ConnectionAccepted, NoFreePort, State, TcpConfig, seq
from usertcp.tcp.rack import Tlp
from usertcp.wire import URG

D = OUR_ISS + 1  # our first data byte
P = PEER_ISS + 1  # the peer's first data byte
MASK = 2**32 - 1
DATA = bytes(range(250)) * 80


def d(n: int) -> int:
    return (D + n) & MASK


def row(stack, cid, now=0.0):
    [r] = [r for r in stack.connections(now) if r["conn_id"] == cid]
    return r


def offsets(segs):
    return [((s.seq - D) & MASK, len(s.payload)) for s in segs]


def sack_sender(isn, nbytes, **config):
    """Passive open, peer MSS 1000 with SACK; `nbytes` queued at 1.0; what went out."""
    stack, peer, cid = open_passive(isn, mss=1000, sack_permitted=True, sack=True, **config)
    events(stack)
    stack.send(cid, DATA[:nbytes], 1.0)
    out = drain(stack, 1.0)
    peer.ack = D
    return stack, peer, cid, out


# ------------------------------------------------------------------ sending

def test_sacked_data_does_not_open_the_peers_window(isn):
    """RFC 9293 3.8.6: never send beyond SND.UNA + SND.WND. SACKed data has left the
    network (pipe, RFC 6675) but still sits in the peer's buffer: with the peer's window
    4000 full, SACKs of three segments release nothing new, only the repair of the hole."""
    stack, peer, cid, out = sack_sender(isn, 8000, window=4000)
    assert offsets(out) == [(0, 1000), (1000, 1000), (2000, 1000), (3000, 1000)]
    for right in (2000, 3000):
        peer.send(ACK, 1.5, sack=[(d(1000), d(right))])
        assert drain(stack, 1.5) == []  # pipe would allow more; the window does not
    peer.send(ACK, 1.5, sack=[(d(1000), d(4000))])
    out = drain(stack, 1.5)
    assert offsets(out) == [(0, 1000)]  # the hole, lost by RACK: three SACKed, no reordering
    assert row(stack, cid)["snd_nxt"] == d(4000)


def test_probe_timeout_of_a_lone_segment_allows_for_a_delayed_ack(isn):
    """RFC 8985 7.2: with one segment in flight PTO = 2 * SRTT + WCDelAckT (0.2 s):
    1.0 + 2 * 0.5 + 0.2 = 2.2, before the RTO at 2.5. The probe resends the segment."""
    stack, _peer, _cid, out = sack_sender(isn, 1000)
    assert offsets(out) == [(0, 1000)]
    stack.handle_timers(2.199)
    assert drain(stack, 2.199) == []
    stack.handle_timers(2.2)
    expect(stack, 2.2, S("P.", seq=d(0), len=1000))
    assert stack.counters["tlp_probes"] == 1 and stack.counters["rto_expired"] == 0


@pytest.mark.parametrize("dupack", [False, True])
def test_tlp_ack_at_end_seq_with_new_sack_keeps_the_episode_open(isn, dupack):
    """RFC 8985 7.4.2. The probe resent segment 9 (TLP.end_seq = 10000), then two new
    segments went out. The ACK of 10000 covers the originals; an ACK at TLP.end_seq that
    SACKs new data (11000-12000) decides nothing, so the ACK beyond TLP.end_seq that follows
    counts the probe as a repair: one congestion response. With `dupack`, that ACK comes
    again, SACKing nothing new: a duplicate ACK at TLP.end_seq, so the probe was spurious
    and there is no response."""
    stack, peer, cid, _out = sack_sender(isn, 10000)
    for k in (2000, 4000, 6000, 8000):
        peer.ack = d(k)
        peer.send(ACK, 1.5)
    assert drain(stack, 1.5) == []
    stack.handle_timers(2.5)  # PTO = 2 * SRTT after the last ACK
    expect(stack, 2.5, S("P.", seq=d(9000), len=1000))
    stack.send(cid, DATA[:2000], 2.5)
    expect(stack, 2.5, S(".", seq=d(10000), len=1000), S("P.", seq=d(11000), len=1000))
    peer.ack = d(10000)
    peer.send(ACK, 3.0)
    peer.send(ACK, 3.0, sack=[(d(11000), d(12000))])
    if dupack:
        peer.send(ACK, 3.0, sack=[(d(11000), d(12000))])
    peer.ack = d(12000)
    peer.send(ACK, 3.1)
    assert drain(stack, 3.1) == []
    assert stack.counters["tlp_recoveries"] == (0 if dupack else 1)
    assert (row(stack, cid)["ssthresh"] == 2000) is not dupack


def test_rack_lost_counted_per_connection(isn):
    """The connection table counts what RACK declared lost, in segments, as the stack
    counter does: here both holes (1 and 4) once three segments above them are SACKed."""
    stack, peer, cid, _out = sack_sender(isn, 10000)
    peer.ack = d(1000)
    peer.send(ACK, 1.5)
    peer.send(ACK, 1.5, sack=[(d(2000), d(4000))])
    peer.send(ACK, 1.5, sack=[(d(5000), d(6000)), (d(2000), d(4000))])
    assert stack.counters["rack_lost"] == 2
    assert row(stack, cid)["rack_lost"] == 2


# ------------------------------------------------------------------ receiving

def test_reading_opens_the_window_by_exactly_the_threshold_sends_an_update(isn):
    """RFC 9293 3.8.6.2.2: a window update once reading opens the window by
    min(buffer / 2, 2 MSS) (Linux's rule); here by exactly that, 2000 of a 4000 buffer."""
    stack, peer, cid = open_passive(isn, receive_buffer=4000, mss=1000, window_scale=False)
    events(stack)
    for k in range(4):
        peer.send(ACK, 1.0, data=DATA[k * 1000:(k + 1) * 1000])
    drain(stack, 1.0)
    stack.handle_timers(1.1)
    drain(stack, 1.1)
    assert row(stack, cid)["rcv_wnd"] == 0
    assert stack.recv(cid, 1999) == DATA[:1999]
    assert drain(stack, 1.2) == []  # 1999 is below the threshold
    assert stack.recv(cid, 1) == DATA[1999:2000]
    expect(stack, 1.2, S(".", seq=D, ack=P + 4000, win=2000))


def test_out_of_window_acks_limited_even_at_the_same_instant(isn):
    """Linux's tcp_invalid_ratelimit: one ACK per 0.5 s for out-of-window segments that
    carry no data; two arriving at the same moment get one answer."""
    stack, peer, _cid = open_passive(isn)
    peer.send(ACK, 1.0, seq=P - 100, advance=False)
    expect(stack, 1.0, S(".", seq=D, ack=P))
    peer.send(ACK, 1.0, seq=P - 100, advance=False)
    expect(stack, 1.0)
    assert stack.counters["oow_acks_suppressed"] == 1
    peer.send(ACK, 1.5, seq=P - 100, advance=False)
    expect(stack, 1.5, S(".", seq=D, ack=P))


def test_window_scale_above_14_is_taken_as_14(isn):
    """RFC 7323 2.3: a shift count above 14 is used as 14."""
    stack, peer, cid = open_passive(isn, wscale=15)
    peer.send(ACK, 1.0, window=3)
    assert row(stack, cid)["snd_wnd"] == 3 << 14


# ------------------------------------------------------------------ keepalive

def test_keepalive_turned_off_leaves_no_timer(isn):
    stack, _peer, cid = open_passive(isn)
    stack.set_keepalive(cid, True, idle=100.0, now=1.0)
    assert row(stack, cid, 1.0)["timers"]["keepalive"] == 100.0
    stack.set_keepalive(cid, False, now=2.0)
    assert "keepalive" not in row(stack, cid, 2.0)["timers"]
    stack.handle_timers(200.0)
    assert drain(stack, 200.0) == []


def test_fresh_tail_loss_probe_has_no_episode():
    """RFC 8985 7.4.2: an ACK with no probe episode under way decides nothing."""
    tlp = Tlp()
    assert not tlp.active and tlp.end_seq is None
    assert tlp.on_ack(1000, None, 0) == "none"


# ------------------------------------------------------------------ local ports

def test_ephemeral_ports_stay_in_their_range_and_run_out(isn):
    stack = make_stack(ephemeral_ports=(50000, 50002))
    ports = []
    for k in range(3):
        cid = stack.connect(REMOTE, 80, 0.0)
        [syn] = drain(stack, 0.0)
        ports.append(syn.sport)
    assert sorted(ports) == [50000, 50001, 50002]
    with pytest.raises(NoFreePort):
        stack.connect(REMOTE, 80, 0.0)
    stack.abort(cid, 0.0)
    drain(stack, 0.0)
    assert stack.connect(REMOTE, 80, 0.0) is not None
    [syn] = drain(stack, 0.0)
    assert syn.sport == ports[-1]  # the one freed, found by going round the range


def test_ephemeral_port_skips_a_listening_port(isn):
    stack = make_stack(ephemeral_ports=(50000, 50001))
    stack.listen(50000)
    for rport in (80, 81, 82, 83):
        stack.connect(REMOTE, rport, 0.0)
        [syn] = drain(stack, 0.0)
        assert syn.sport == 50001


@pytest.mark.parametrize("port", [1, 65535])
def test_connect_to_the_lowest_and_highest_port(isn, port):
    stack = make_stack()
    stack.connect(REMOTE, port, 0.0, local_port=50000)
    expect(stack, 0.0, S("S", dport=port))


@pytest.mark.parametrize("port", [0, 65536])
def test_connect_to_a_port_out_of_range_is_refused(isn, port):
    with pytest.raises(ValueError):
        make_stack().connect(REMOTE, port, 0.0)


# ------------------------------------------------------------------ sequence numbers

@pytest.mark.parametrize("a", [0, 5, 2**31 - 1, 2**31, 2**32 - 1])
def test_sequence_comparisons_on_the_circle(a):
    """RFC 9293 3.4: comparisons modulo 2**32, within half the space either way."""
    after = seq.add(a, 10)
    assert seq.lt(a, after) and seq.le(a, after) and not seq.gt(a, after)
    assert not seq.ge(a, after) and seq.gt(after, a) and seq.ge(after, a)
    assert seq.le(a, a) and seq.ge(a, a) and not seq.lt(a, a) and not seq.gt(a, a)
    assert not seq.le(after, a) and not seq.lt(after, a)
    assert seq.sub(after, a) == 10 and seq.sub(a, after) == -10 and seq.sub(a, a) == 0
    assert seq.between(a, a, after) and seq.between(a, seq.add(a, 9), after)
    assert not seq.between(a, after, after) and not seq.between(a, seq.add(a, -1), after)
    assert not seq.between(a, a, a)
    assert seq.add(2**32 - 1, 1) == 0
    assert seq.sub(0, 2**32 - 1) == 1
    assert seq.sub(seq.add(a, 2**31), a) == 2**31  # half the space: (-2**31, 2**31]


@pytest.mark.parametrize("port", [0, 65536])
def test_listen_on_a_port_out_of_range_is_refused(port):
    with pytest.raises(ValueError):
        make_stack().listen(port)


def test_listen_on_the_highest_port(isn):
    stack = make_stack()
    stack.listen(65535)
    Peer(stack, stack_port=65535, iss=PEER_ISS).syn(0.0)
    expect(stack, 0.0, S("S.", sport=65535, ack=PEER_ISS + 1))


# ------------------------------------------------------------------ SYN cookies

def test_syn_cookie_from_a_later_time_slot_opens_and_takes_window_updates(isn):
    """A cookie carries its 64 s time slot in its top 5 bits and a MAC over the 4-tuple
    (ports are 16 bits): one made at 1000 s (slot 15, not 0 as at the start of the clock)
    for port 8080 is accepted. The connection it opens takes the peer's window from a later
    pure ACK at the same SEQ (RFC 9293 3.10.7.4: SND.WL1 = SEG.SEQ passes the update test)."""
    stack = make_stack(syn_backlog=1)
    stack.listen(8080)
    Peer(stack, port=40001, stack_port=8080, iss=7).syn(1000.0)  # the one SYN-RECEIVED entry
    peer = Peer(stack, stack_port=8080, iss=PEER_ISS)
    peer.syn(1000.0)
    out = drain(stack, 1000.0)
    [synack] = [s for s in out if s.dport == 40000]
    assert stack.counters["syn_cookies_sent"] == 1
    peer.took(synack)
    peer.send(ACK, 1000.5)
    evs = events(stack)
    [cid] = [e.conn_id for e in evs if isinstance(e, ConnectionAccepted)]
    assert stack.counters["syn_cookies_accepted"] == 1
    assert row(stack, cid)["snd_wnd"] == 65535
    peer.send(ACK, 1001.0, window=1000)
    assert row(stack, cid)["snd_wnd"] == 1000


# ------------------------------------------------------------------ timestamps

def test_paws_still_applies_after_24_days_of_traffic(isn):
    """RFC 7323 5.5: TS.Recent goes invalid after 24 days *idle*; its age counts from when
    it was last updated. A connection quiet since its handshake takes data at day 25 (URG
    set, so the full arrival steps run, not header prediction), which updates TS.Recent; an
    in-window segment a second later with a far older TSval is refused by PAWS (R1)."""
    stack, peer, cid = open_passive(isn, ts=3_000_000_000, timestamps=True,
                                    delayed_ack=False)
    events(stack)
    t = 25 * 86400.0
    peer.ts_val = 3_000_100_000
    peer.send(URG | ACK, t, data=b"new")
    expect(stack, t, S(".", ack=P + 3, ts=True))
    assert stack.recv(cid) == b"new"
    peer.ts_val = 3_000_000_000  # older than TS.Recent by far more than one tick
    peer.send(ACK, t + 1, data=b"old")
    expect(stack, t + 1, S(".", ack=P + 3, len=0, ts=True))
    assert stack.recv(cid) == b""
    assert stack.counters["paws_rejected"] == 1


# ------------------------------------------------------------------ user timeout

def test_user_timeout_equal_to_idle_gives_the_probe_one_interval(isn):
    """Keepalive idle 100, interval 10, user timeout 100 (RFC 5482): the first probe goes
    at last receipt + 100 = 100.5, when the user timeout is reached but nothing was sent
    unanswered yet; the probe has one interval for its answer, then the reset."""
    stack, _peer, cid = open_passive(isn, user_timeout=100.0, keepalive=True,
                                     keepalive_idle=100.0, keepalive_interval=10.0,
                                     keepalive_probes=3)
    stack.handle_timers(100.5)
    expect(stack, 100.5, S(".", seq=OUR_ISS, ack=P, len=0))
    stack.handle_timers(110.499)
    expect(stack, 110.499)
    stack.handle_timers(110.5)
    expect(stack, 110.5, S("R.", seq=D))
    assert stack.state(cid) is State.CLOSED


# ------------------------------------------------------------------ options beyond the MSS

def test_options_longer_than_the_peers_mss_still_carry_one_byte(isn):
    """RFC 6691: the MSS counts data only, options come out of it. A peer MSS of 8 with a
    SACK block to report (12 option bytes) leaves no room: each segment still carries one
    byte, so the data goes out rather than the sender stalling."""
    stack, peer, cid = open_passive(isn, mss=8, sack_permitted=True, sack=True,
                                    delayed_ack=False, nagle=False)
    events(stack)
    peer.send(ACK, 1.0, seq=P + 100, data=b"x" * 10, advance=False)  # out of order
    expect(stack, 1.0, S(".", ack=P, sack=[(P + 100, P + 110)]))
    stack.send(cid, b"abc", 1.5)
    block = [(P + 100, P + 110)]
    out = expect(stack, 1.5, *[S("P." if k == 2 else ".", seq=D + k, len=1, sack=block)
                               for k in range(3)])
    assert b"".join(s.payload for s in out) == b"abc"


# ------------------------------------------------------------------ after a timeout

def test_ack_overtaking_snd_nxt_after_a_timeout_moves_it_forward(isn):
    """RFC 6298 5.4 / go-back-N: the timeout resends from SND.UNA (SND.NXT steps back).
    An ACK then covers originals beyond the new SND.NXT: sending goes on from that ACK,
    each segment's sequence number matching its bytes."""
    stack, peer, cid = open_passive(isn, mss=1000)
    events(stack)
    stack.send(cid, DATA[:10000], 1.0)
    assert len(drain(stack, 1.0)) == 10
    stack.handle_timers(2.5)  # RTO 1.5 after 1.0
    expect(stack, 2.5, S(".", seq=d(0), len=1000, data=DATA[:1000]))
    peer.ack = d(5000)
    peer.send(ACK, 2.6)
    # Slow start from the loss window: the rest of the flight again, from 5000.
    expect(stack, 2.6, *[S("P." if k == 9000 else ".", seq=d(k), data=DATA[k:k + 1000])
                         for k in range(5000, 10000, 1000)])


# ------------------------------------------------------------------ configuration

def test_receive_buffer_up_to_the_largest_scaled_window():
    """RFC 7323 2.3: shift 14 at most, so a window reaches 65535 << 14 and no further."""
    assert TcpConfig(receive_buffer=65535 << 14).rcv_wscale == 14
    with pytest.raises(ValueError):
        TcpConfig(receive_buffer=(65535 << 14) + 1)


def test_ephemeral_ports_default_to_linux_range():
    """Linux's net.ipv4.ip_local_port_range default, 32768..60999."""
    assert TcpConfig().ephemeral_ports == (32768, 60999)


@pytest.mark.parametrize("hashed", [0, 1, 2, 3, 7])
def test_first_ephemeral_port_is_in_range_whatever_the_hash(isn, hashed):
    """The first port is picked by the ISN hash modulo the range's size."""
    isn.set(hashed)
    stack = make_stack(ephemeral_ports=(50000, 50002))
    stack.connect(REMOTE, 80, 0.0)
    [syn] = drain(stack, 0.0)
    assert syn.sport == 50000 + hashed % 3


# ------------------------------------------------------------------ more sending

def test_segmentation_offload_sends_the_tail_in_one_super_segment(isn):
    """With TSO the data goes in super-segments of whole MSS multiples, except that what
    is left of the queue goes whole: 5000 bytes are one segment, not 4380 + 620 held back
    by Nagle."""
    stack, _peer, cid = open_passive(isn, tso_max=65535 - 80)
    events(stack)
    stack.send(cid, DATA[:5000], 1.0)
    expect(stack, 1.0, S("P.", seq=D, len=5000, data=DATA[:5000]))


def test_offload_with_an_mss_above_the_largest_super_segment_sends_mss_segments(isn):
    """MTU 65520 (usertcp run's): the MSS (65480) exceeds what one offloaded segment may carry
    (65455), so segments are one MSS each; no zero-length segment, no endless loop."""
    stack = make_stack(mss=65480, tso_max=65535 - 80)
    stack.listen(80)
    stack, _peer, cid = open_passive(isn, stack=stack, mss=65480, window=65535, wscale=7)
    events(stack)
    conn = stack._by_id[cid]
    conn.cwnd = 1 << 20
    stack.set_nodelay(cid, True)  # the short tail goes at once, not after Nagle's wait
    big = bytes(range(256)) * 600  # 153,600 bytes
    stack.send(cid, big, 1.0)
    out = expect(stack, 1.0, S(".", seq=D, len=65480), S(".", seq=D + 65480, len=65480),
                 S("P.", seq=D + 2 * 65480, len=len(big) - 2 * 65480))
    assert b"".join(bytes(seg.payload) for seg in out) == big


def test_tail_loss_probe_resends_a_short_last_segment_as_it_was(isn):
    """RFC 8985 7.3: the probe is the last segment again; a lone one of 500 bytes goes as
    500, at PTO = 2 * SRTT + WCDelAckT = 1.2 s after it."""
    stack, _peer, _cid, out = sack_sender(isn, 500)
    assert offsets(out) == [(0, 500)]
    stack.handle_timers(2.2)
    expect(stack, 2.2, S("P.", seq=d(0), len=500, data=DATA[:500]))


def test_tail_loss_probe_sends_no_silly_segment_of_new_data(isn):
    """RFC 8985 7.3 sends new data as the probe only if a segment's worth fits; the peer's
    window (shrunk to 2500 from an ACK at 8000) leaves 500: silly window avoidance (RFC 9293
    3.8.6.2.1) holds it, and the probe is the last segment again."""
    stack, peer, _cid, out = sack_sender(isn, 20000)
    assert len(out) == 10
    peer.ack = d(8000)
    peer.send(ACK, 1.5, window=2500)
    assert drain(stack, 1.5) == []
    stack.handle_timers(2.5)
    expect(stack, 2.5, S(".", seq=d(9000), len=1000, data=DATA[9000:10000]))


# ------------------------------------------------------------------ data left after close

def test_recv_zero_bytes_after_close_leaves_the_data(isn):
    """Data that arrived before the connection ended is still read after it; recv(0) reads
    none of it, as on a live connection."""
    stack, peer, cid = open_passive(isn, delayed_ack=False)
    events(stack)
    peer.send(ACK | FIN, 1.0, data=b"hello")
    expect(stack, 1.0, S(".", ack=P + 6))
    stack.shutdown(cid, 1.5)  # not close(), which would reset: data is unread
    expect(stack, 1.5, S("F.", seq=D, ack=P + 6))
    peer.ack = D + 1
    peer.send(ACK, 2.0)
    assert stack.state(cid) is State.CLOSED
    assert stack.recv(cid, 0) == b""
    assert stack.recv(cid, 2) == b"he"
    assert stack.recv(cid) == b"llo"
    assert stack.recv(cid) == b""


def test_time_wait_ack_advertises_the_full_unscaled_window(isn):
    """In TIME-WAIT the ACK of a retransmitted FIN carries the last window, here the
    largest an unscaled field holds (65535), not one less."""
    stack, peer, cid = open_passive(isn, delayed_ack=False)
    events(stack)
    stack.close(cid, 1.0)
    expect(stack, 1.0, S("F.", seq=D, ack=P, win=65535))
    peer.ack = D + 1
    peer.send(ACK | FIN, 1.5)
    expect(stack, 1.5, S(".", seq=D + 1, ack=P + 1, win=65535))
    assert stack.state(cid) is State.TIME_WAIT
    peer.send(ACK | FIN, 2.0, seq=P)  # the FIN again: our ACK was lost
    expect(stack, 2.0, S(".", seq=D + 1, ack=P + 1, win=65535))


@pytest.mark.parametrize(("mss", "ok"), [(87, False), (88, True), (65495, True),
                                         (65496, False)])
def test_mss_bounds(mss, ok):
    """The range TcpConfig promises, both ends included: 88..65495 (at the top, 65535 less
    the IPv4 and TCP headers; the CLI clamps MTU - 40 into the same range)."""
    if ok:
        assert TcpConfig(mss=mss).mss == mss
    else:
        with pytest.raises(ValueError):
            TcpConfig(mss=mss)


@pytest.mark.parametrize("end", [1 << 28, (1 << 31) + 5000, 2**32 - 500])
def test_tlp_dsack_below_end_seq_is_not_the_probe(end):
    """RFC 8985 7.4.2: only a D-SACK reaching the probe's last byte shows the probe was a
    duplicate; one of older data below TLP.end_seq decides nothing."""
    tlp = Tlp()
    tlp.on_probe(end, is_retrans=True)
    older = (seq.add(end, -2000), seq.add(end, -1000))
    assert tlp.on_ack(end, older, seq.add(end, -3000)) == "none" and tlp.active
    probe = (seq.add(end, -1000), end)
    assert tlp.on_ack(end, probe, end) == "spurious" and not tlp.active


def test_data_queued_in_syn_sent_goes_with_the_handshake_ack(isn):
    """RFC 9293 3.10.2 SEND in SYN-SENT: queue the data, send it once ESTABLISHED."""
    stack = make_stack()
    isn.set(OUR_ISS)
    cid = stack.connect(REMOTE, 80, 0.0, local_port=50000)
    expect(stack, 0.0, S("S", seq=OUR_ISS))
    stack.send(cid, b"early", 0.1)
    expect(stack, 0.1)
    peer = Peer(stack, port=80, stack_port=50000, iss=PEER_ISS)
    peer.syn_ack(0.5, ack=OUR_ISS + 1)
    expect(stack, 0.5, S(".", seq=D, ack=P, len=0), S("P.", seq=D, ack=P, data=b"early"))


def test_data_queued_in_syn_sent_meets_a_zero_window_and_probes(isn):
    """The SYN-ACK offers a zero window (RFC 9293 3.8.6.1): the queued data waits, and the
    persist timer probes at RTO (1.5 after the 0.5 s handshake sample), as Linux does, with
    an ACK one below SND.UNA."""
    stack = make_stack()
    isn.set(OUR_ISS)
    cid = stack.connect(REMOTE, 80, 0.0, local_port=50000)
    expect(stack, 0.0, S("S", seq=OUR_ISS))
    stack.send(cid, b"early", 0.1)
    peer = Peer(stack, port=80, stack_port=50000, iss=PEER_ISS)
    peer.syn_ack(0.5, ack=OUR_ISS + 1, window=0)
    expect(stack, 0.5, S(".", seq=D, ack=P, len=0))
    assert row(stack, cid, 0.5)["timers"] == {"persist": 1.5}
    stack.handle_timers(1.999)
    expect(stack, 1.999)
    stack.handle_timers(2.0)
    expect(stack, 2.0, S(".", seq=D - 1, ack=P, len=0))


def test_rack_resends_the_fin_segment_above_a_hole_with_its_fin(isn):
    """3500 bytes and the FIN go at 1.0 (nagle off); 2000-3000 is SACKed, so RACK calls
    0-2000 lost after its reordering window (1.625) and resends 0-1000. Its ACK at 2.2
    (RTT 0.575, not ambiguous) shows segments sent before that repair are missing: 1000-2000
    and the last one, which goes again whole, 500 bytes with PSH and the FIN, while the
    hole at 1000 is still open."""
    stack, peer, cid = open_passive(isn, mss=1000, sack_permitted=True, sack=True,
                                    nagle=False)
    events(stack)
    stack.send(cid, DATA[:3500], 1.0)
    stack.close(cid, 1.0)
    expect(stack, 1.0, S(".", seq=d(0), len=1000), S(".", seq=d(1000), len=1000),
           S(".", seq=d(2000), len=1000), S("FP.", seq=d(3000), len=500))
    peer.ack = D
    peer.send(ACK, 1.5, sack=[(d(2000), d(3000))])
    expect(stack, 1.5)
    stack.handle_timers(1.625)
    expect(stack, 1.625, S(".", seq=d(0), len=1000, data=DATA[:1000]))
    peer.ack = d(1000)
    peer.send(ACK, 2.2, sack=[(d(2000), d(3000))])
    expect(stack, 2.2, S(".", seq=d(1000), len=1000, data=DATA[1000:2000]),
           S("FP.", seq=d(3000), len=500, data=DATA[3000:3500]))


def test_recovery_end_counts_down_the_dsack_widened_reordering_window(isn):
    """RFC 8985 6.2 step 4: a D-SACK widens RACK's reordering window (multiplier 2) for
    the next 16 recoveries; each recovery that ends counts one down. Here the D-SACK of a
    spurious tail loss probe, then one genuine loss repaired in fast recovery."""
    stack, peer, cid, _out = sack_sender(isn, 10000)
    for k in (2000, 4000, 6000, 8000):
        peer.ack = d(k)
        peer.send(ACK, 1.5)
    stack.handle_timers(2.5)
    expect(stack, 2.5, S("P.", seq=d(9000), len=1000))  # the probe
    peer.ack = d(10000)
    peer.send(ACK, 2.6)
    peer.send(ACK, 2.7, sack=[(d(9000), d(10000))])  # D-SACK: the probe was a duplicate
    rack = stack._by_id[cid].rack
    assert (rack.reo_wnd_mult, rack.reo_wnd_persist) == (2, 16)
    stack.send(cid, DATA[:10000], 3.0)
    assert len(drain(stack, 3.0)) == 10
    peer.send(ACK, 3.5, sack=[(d(11000), d(14000))])
    expect(stack, 3.5, S(".", seq=d(10000), len=1000))  # the repair
    assert stack.counters["sack_recoveries"] == 1
    peer.ack = d(20000)
    peer.send(ACK, 4.5)
    assert not row(stack, cid)["in_recovery"]
    assert (rack.reo_wnd_mult, rack.reo_wnd_persist) == (2, 15)


@pytest.mark.parametrize(("size", "at_once"), [(2895, False), (2896, True)])
def test_coalesced_segment_of_two_full_segments_is_acked_at_once(isn, size, at_once):
    """RFC 5681 4.2 (an ACK for at least every second full-sized segment), counted in bytes
    for a segment a receive offload coalesced: with timestamps a full segment carries
    1460 - 12 = 1448 bytes, so 2896 bytes are ACKed at once, 2895 wait for the timer."""
    stack, peer, cid = open_passive(isn, ts=1000, timestamps=True)
    events(stack)
    peer.send(ACK, 1.0, data=DATA[:size])
    if at_once:
        expect(stack, 1.0, S(".", ack=P + size, len=0))
    else:
        expect(stack, 1.0)
        stack.handle_timers(1.04)
        expect(stack, 1.04, S(".", ack=P + size, len=0))
    assert stack.recv(cid) == DATA[:size]


def test_tail_loss_probe_is_the_fin_when_only_the_fin_is_unsent(isn):
    """RFC 8985 7.3: a previously unsent segment is the probe if the window allows: here
    the FIN, queued at the moment the probe timer expires (before the stack's output ran),
    goes alone rather than the last data segment again."""
    stack, peer, cid, _out = sack_sender(isn, 10000)
    for k in (2000, 4000, 6000, 8000):
        peer.ack = d(k)
        peer.send(ACK, 1.5)
    assert drain(stack, 1.5) == []
    stack.shutdown(cid, 2.5)
    stack.handle_timers(2.5)
    expect(stack, 2.5, S("F.", seq=d(10000), len=0))
    assert stack.counters["tlp_probes"] == 1


def test_sack_ack_advancing_one_byte_is_applied_to_the_scoreboard(isn):
    """A 1-byte segment at 1.0, three full ones at 1.1; the peer's ACK covers the byte and
    SACKs the last two. The scoreboard must drop the acked byte: RACK then finds only
    1-1001 lost after its reordering window (1.1 + 0.5 + 0.125) and repairs it."""
    stack, peer, cid = open_passive(isn, mss=1000, sack_permitted=True, sack=True,
                                    nagle=False)
    events(stack)
    stack.send(cid, b"a", 1.0)
    expect(stack, 1.0, S("P.", seq=d(0), len=1))
    stack.send(cid, DATA[:3000], 1.1)
    assert len(drain(stack, 1.1)) == 3
    peer.ack = d(1)
    peer.send(ACK, 1.6, sack=[(d(1001), d(3001))])
    expect(stack, 1.6)
    stack.handle_timers(1.725)
    expect(stack, 1.725, S(".", seq=d(1), len=1000, data=DATA[:1000]))
    assert row(stack, cid)["lost"] == 1000 and stack.counters["rack_lost"] == 1


def test_window_open_less_than_sws_threshold_is_filled_when_the_persist_timer_fires(isn):
    """RFC 9293 3.8.6.2.1: the peer's window (500 after offering 65535) is below what
    silly window avoidance sends into, and nothing is in flight to bring a wider one: the
    override timeout (the persist timer, at RTO 1.5) sends what fits."""
    stack, peer, cid = open_passive(isn)
    events(stack)
    peer.send(ACK, 1.0, window=500)
    stack.send(cid, DATA[:5000], 1.0)
    expect(stack, 1.0)
    assert row(stack, cid, 1.0)["timers"] == {"persist": 1.5}
    stack.handle_timers(2.499)
    expect(stack, 2.499)
    stack.handle_timers(2.5)
    expect(stack, 2.5, S(".", seq=D, len=500, data=DATA[:500]))
    assert stack.counters["small_window_sends"] == 1


def test_recovery_ended_before_its_repair_went_out_is_not_undone(isn):
    """Three SACKed segments start fast recovery (ssthresh 5000), and the cumulative ACK
    of everything arrives in the same batch, before the repair was sent. Nothing was
    retransmitted, so no D-SACK (RFC 3708) or timestamp (RFC 3522) can show a spurious
    retransmission: recovery ends with cwnd = ssthresh (RFC 6937), no undo."""
    stack, peer, cid, _out = sack_sender(isn, 10000)
    peer.send(ACK, 1.5, sack=[(d(1000), d(4000))])
    assert row(stack, cid)["in_recovery"]
    peer.ack = d(10000)
    peer.send(ACK, 1.5)
    assert drain(stack, 1.5) == []
    r = row(stack, cid)
    assert not r["in_recovery"] and (r["cwnd"], r["ssthresh"]) == (5000, 5000)
    assert stack.counters["spurious_undo"] == 0
