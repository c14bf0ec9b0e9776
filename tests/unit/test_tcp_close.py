"""Closing ladders: four-way teardown both ways, simultaneous close, TIME-WAIT, FIN timers."""

import pytest
from tcp_helpers import (  # noqa: F401 (family: a fixture)
    family,
    ACK,
    FIN,
    PSH,
    RST,
    S,
    events,
    expect,
    names,
    open_active,
    open_passive,
    seq_add,
    transitions,
)

from usertcp.tcp import (
    ConnectionClosed,
    ConnectionNotWritable,
    PeerClosed,
    State,
    UnknownConnection,
)

# Both sides start so that the FINs sit at 2**32 - 1 and their ACKs wrap to 0.
OUR = 2**32 - 2  # our ISS: u = SND.NXT = 2**32 - 1
THEIRS = 2**32 - 2  # the peer's ISS: w = 2**32 - 1
U = W = 2**32 - 1

OPENERS = {"engine-passive": open_passive, "engine-active": open_active}

# Every ladder here runs over IPv4 and over IPv6 (tcp_helpers.family).
pytestmark = pytest.mark.usefixtures("family")


@pytest.fixture(params=list(OPENERS))
def opened(request, isn):
    """An ESTABLISHED connection (opened at 0.0, RTT 0.5), either way round."""
    return OPENERS[request.param](isn, our_iss=OUR, peer_iss=THEIRS)


def to_time_wait(opened, t_close=1.0, t_ack=1.5, t_fin=2.0):
    """Engine closes first; returns once the last ACK went out at t_fin."""
    stack, peer, cid = opened
    stack.close(cid, t_close)
    expect(stack, t_close, S("F.", seq=U, ack=W, len=0))
    peer.ack = seq_add(U, 1)
    peer.send(ACK, t_ack)
    expect(stack, t_ack)
    peer.send(FIN | ACK, t_fin)
    expect(stack, t_fin, S(".", seq=0, ack=0))
    assert stack.state(cid) is State.TIME_WAIT
    return stack, peer, cid


# ------------------------------------------------------------------ four-way teardown

def test_engine_closes_first(opened):
    stack, peer, cid = opened
    stack.shutdown(cid, 1.0)
    assert stack.state(cid) is State.FIN_WAIT_1
    # FIN seq=u ack=w (the peer has sent nothing but its SYN).
    expect(stack, 1.0, S("F.", seq=U, ack=W, len=0))
    assert transitions(events(stack)) == [("ESTABLISHED", "FIN-WAIT-1")]

    peer.ack = seq_add(U, 1)  # ACK ack=u+1, which wraps to 0
    peer.send(ACK, 1.5)
    expect(stack, 1.5)
    assert stack.state(cid) is State.FIN_WAIT_2
    assert transitions(events(stack)) == [("FIN-WAIT-1", "FIN-WAIT-2")]

    peer.send(FIN | ACK, 2.0)  # FIN seq=w ack=u+1
    # ACK seq=u+1 ack=w+1, both wrapped, sent at once.
    expect(stack, 2.0, S(".", seq=0, ack=0, len=0))
    evs = events(stack)
    assert names(evs) == ["PeerClosed", "FIN-WAIT-2->TIME-WAIT", "ConnectionClosed"]
    assert (evs[1].seq, evs[1].ack) == (0, 0)
    assert stack.state(cid) is State.TIME_WAIT
    assert stack.next_deadline() == 62.0


def test_peer_closes_first(opened):
    stack, peer, cid = opened
    peer.ack = seq_add(OUR, 1)
    peer.send(FIN | ACK, 1.0)  # FIN seq=w
    expect(stack, 1.0, S(".", seq=U, ack=0))  # the FIN is ACKed at once: ack=w+1
    evs = events(stack)
    assert names(evs) == ["PeerClosed", "ESTABLISHED->CLOSE-WAIT"]
    assert evs[0] == PeerClosed(cid)
    assert stack.state(cid) is State.CLOSE_WAIT
    assert stack.recv(cid) == b""

    stack.send(cid, b"bye", 1.2)  # CLOSE-WAIT may still send
    expect(stack, 1.2, S("P.", seq=U, ack=0, data=b"bye"))
    peer.ack = seq_add(U, 3)
    peer.send(ACK, 1.3)
    expect(stack, 1.3)

    stack.close(cid, 1.5)
    assert stack.state(cid) is State.LAST_ACK
    expect(stack, 1.5, S("F.", seq=U + 3, ack=0))
    peer.ack = seq_add(U, 4)
    peer.send(ACK, 2.0)
    expect(stack, 2.0)
    evs = events(stack)
    assert names(evs) == ["CLOSE-WAIT->LAST-ACK", "LAST-ACK->CLOSED", "ConnectionClosed"]
    assert evs[-1] == ConnectionClosed(cid)
    assert stack.state(cid) is State.CLOSED
    assert all(row["conn_id"] is None for row in stack.connections())
    assert stack.time_wait_count() == 0  # the side that closes second has no TIME-WAIT


def test_fin_with_data_and_fin_flags(opened):
    stack, _peer, cid = opened
    stack.send(cid, b"last words", 1.0)
    stack.shutdown(cid, 1.0)
    # Data and FIN leave together.
    expect(stack, 1.0, S("FP.", seq=U, ack=W, data=b"last words"))
    with pytest.raises(ConnectionNotWritable):
        stack.send(cid, b"more", 1.0)


def test_simultaneous_close(opened):
    stack, peer, cid = opened
    stack.close(cid, 1.0)
    expect(stack, 1.0, S("F.", seq=U, ack=W))
    # The peer's FIN crosses ours: it does not acknowledge our FIN.
    peer.ack = U
    peer.send(FIN | ACK, 1.25)
    expect(stack, 1.25, S(".", seq=0, ack=0))  # ACK seq=u+1 ack=w+1
    assert stack.state(cid) is State.CLOSING
    peer.ack = 0
    peer.send(ACK, 1.5, seq=0)  # the ACK of our FIN
    expect(stack, 1.5)
    assert stack.state(cid) is State.TIME_WAIT
    assert transitions(events(stack)) == [
        ("ESTABLISHED", "FIN-WAIT-1"), ("FIN-WAIT-1", "CLOSING"), ("CLOSING", "TIME-WAIT")]
    assert stack.next_deadline() == 61.5  # 2 MSL from the ACK that ended CLOSING


def test_fin_wait_1_fin_that_acks_our_fin_goes_to_time_wait(opened):
    stack, peer, cid = opened
    stack.close(cid, 1.0)
    expect(stack, 1.0, S("F.", seq=U))
    peer.ack = 0
    peer.send(FIN | ACK, 1.5)
    expect(stack, 1.5, S(".", seq=0, ack=0))
    # RFC 9293 order: the ACK first (FIN-WAIT-2), then the FIN (TIME-WAIT).
    assert transitions(events(stack))[-2:] == [
        ("FIN-WAIT-1", "FIN-WAIT-2"), ("FIN-WAIT-2", "TIME-WAIT")]


def test_fin_retransmitted_in_last_ack(opened):
    stack, peer, cid = opened
    peer.ack = seq_add(OUR, 1)
    peer.send(FIN | ACK, 1.0)
    expect(stack, 1.0, S(".", seq=U, ack=0))
    stack.close(cid, 2.0)
    expect(stack, 2.0, S("F.", seq=U, ack=0))
    stack.handle_timers(3.499)  # RTO 1.5 s (the handshake's 0.5 s sample)
    expect(stack, 3.499)
    stack.handle_timers(3.5)
    expect(stack, 3.5, S("F.", seq=U, ack=0))
    stack.handle_timers(6.5)  # backed off: 3 s
    expect(stack, 6.5, S("F.", seq=U, ack=0))
    peer.ack = 0
    peer.send(ACK, 7.0)
    assert stack.state(cid) is State.CLOSED


def test_fin_retransmitted_in_fin_wait_1(opened):
    stack, _peer, cid = opened
    stack.shutdown(cid, 1.0)
    expect(stack, 1.0, S("F.", seq=U))
    stack.handle_timers(2.5)
    expect(stack, 2.5, S("F.", seq=U, ack=W))
    assert stack.state(cid) is State.FIN_WAIT_1


def test_fin_wait_2_times_out_after_close(opened):
    stack, peer, cid = opened
    stack.close(cid, 1.0)
    expect(stack, 1.0, S("F."))
    peer.ack = 0
    peer.send(ACK, 1.5)
    assert stack.state(cid) is State.FIN_WAIT_2
    stack.handle_timers(61.499)
    assert stack.state(cid) is State.FIN_WAIT_2
    stack.handle_timers(61.5)  # fin_wait_2_timeout 60 s from entering FIN-WAIT-2
    expect(stack, 61.5)
    assert stack.state(cid) is State.CLOSED
    assert names(events(stack))[-2:] == ["FIN-WAIT-2->CLOSED", "ConnectionClosed"]


def test_fin_wait_2_after_shutdown_has_no_timeout(opened):
    stack, peer, cid = opened
    stack.shutdown(cid, 1.0)
    expect(stack, 1.0, S("F."))
    peer.ack = 0
    peer.send(ACK, 1.5)
    stack.handle_timers(1000.0)
    assert stack.state(cid) is State.FIN_WAIT_2



# ------------------------------------------------------------------ the peer's FIN again
# The peer did not get our ACK of its FIN and sends the FIN again: each copy is ACKed again
# with ack = its FIN + 1, and nothing else changes. Bare or with the data it carried, the copy
# lies wholly before RCV.NXT: the out-of-window answer, never rate-limited for a FIN.

PEER_DATA = {"bare": b"", "with-data": b"tail"}


@pytest.fixture(params=list(PEER_DATA))
def peer_data(request):
    return PEER_DATA[request.param]


def peer_fin(peer, t, data, *, ack, again=False):
    """The peer's FIN (after `data`) at seq W; `again`: the same segment once more."""
    flags = FIN | ACK | (PSH if data else 0)
    peer.send(flags, t, seq=W, ack=ack, data=data, advance=not again)


def test_fin_again_in_close_wait_is_acked_again(opened, peer_data):
    stack, peer, cid = opened
    fin_ack = seq_add(W, len(peer_data) + 1)
    peer_fin(peer, 1.0, peer_data, ack=U)
    expect(stack, 1.0, S(".", seq=U, ack=fin_ack, len=0))
    assert stack.state(cid) is State.CLOSE_WAIT
    events(stack)
    assert stack.recv(cid) == peer_data
    for t in (1.5, 1.5, 2.5):  # twice at once too: no rate limit on segments with a FIN
        peer_fin(peer, t, peer_data, ack=U, again=True)
        expect(stack, t, S(".", seq=U, ack=fin_ack, len=0))
        assert stack.state(cid) is State.CLOSE_WAIT
    assert events(stack) == []  # one PeerClosed, for the first FIN only
    assert stack.recv(cid) == b""  # the copy's data is not delivered twice
    stack.close(cid, 3.0)  # and the connection still closes as usual
    expect(stack, 3.0, S("F.", seq=U, ack=fin_ack))
    assert stack.state(cid) is State.LAST_ACK


def test_fin_again_in_last_ack_is_acked_again(opened, peer_data):
    stack, peer, cid = opened
    fin_ack = seq_add(W, len(peer_data) + 1)
    peer_fin(peer, 1.0, peer_data, ack=U)
    expect(stack, 1.0, S(".", seq=U, ack=fin_ack))
    assert stack.recv(cid) == peer_data  # else close() would reset (RFC 2525 2.17)
    stack.close(cid, 1.2)
    expect(stack, 1.2, S("F.", seq=U, ack=fin_ack))
    assert stack.state(cid) is State.LAST_ACK
    events(stack)
    deadline = stack.next_deadline()  # our FIN's retransmission
    for t in (1.3, 1.3, 1.4):
        # The copy does not acknowledge our FIN (the peer sent it before it saw ours).
        peer_fin(peer, t, peer_data, ack=U, again=True)
        expect(stack, t, S(".", seq=seq_add(U, 1), ack=fin_ack, len=0))
        assert stack.state(cid) is State.LAST_ACK
    assert events(stack) == []
    assert stack.next_deadline() == deadline
    peer.send(ACK, 1.5, seq=seq_add(W, len(peer_data) + 1), ack=seq_add(U, 1))
    expect(stack, 1.5)
    assert stack.state(cid) is State.CLOSED


def test_fin_again_in_closing_is_acked_again(opened, peer_data):
    stack, peer, cid = opened
    fin_ack = seq_add(W, len(peer_data) + 1)
    stack.shutdown(cid, 1.0)  # not close(): data after close() is answered with RST
    expect(stack, 1.0, S("F.", seq=U, ack=W))
    peer_fin(peer, 1.25, peer_data, ack=U)  # crosses ours: does not acknowledge it
    expect(stack, 1.25, S(".", seq=seq_add(U, 1), ack=fin_ack, len=0))
    assert stack.state(cid) is State.CLOSING
    events(stack)
    deadline = stack.next_deadline()
    for t in (1.3, 1.3, 1.4):
        peer_fin(peer, t, peer_data, ack=U, again=True)
        expect(stack, t, S(".", seq=seq_add(U, 1), ack=fin_ack, len=0))
        assert stack.state(cid) is State.CLOSING
    assert events(stack) == []
    assert stack.next_deadline() == deadline
    assert stack.recv(cid) == peer_data
    peer.send(ACK, 1.5, seq=fin_ack, ack=seq_add(U, 1))
    expect(stack, 1.5)
    assert stack.state(cid) is State.TIME_WAIT


# ------------------------------------------------------------------ TIME-WAIT

def test_time_wait_expires_exactly_at_2msl(opened):
    stack, _peer, cid = to_time_wait(opened)  # last ACK sent at 2.0
    events(stack)
    assert stack.next_deadline() == 62.0
    stack.handle_timers(61.999)
    assert stack.state(cid) is State.TIME_WAIT
    assert stack.time_wait_count() == 1
    expect(stack, 61.999)
    stack.handle_timers(62.0)
    assert stack.state(cid) is State.CLOSED
    evs = events(stack)
    assert names(evs) == ["TIME-WAIT->CLOSED"]
    assert evs[0].cause == "2msl timeout" and evs[0].time == 62.0
    assert stack.time_wait_count() == 0
    assert stack.next_deadline() is None
    expect(stack, 62.0)  # nothing is sent when it ends


def test_time_wait_msl_configurable(isn):
    stack, _peer, cid = to_time_wait(open_passive(isn, our_iss=OUR, peer_iss=THEIRS, msl=0.25))
    assert stack.next_deadline() == 2.5
    stack.handle_timers(2.499)
    assert stack.state(cid) is State.TIME_WAIT
    stack.handle_timers(2.5)
    assert stack.state(cid) is State.CLOSED


def test_time_wait_retransmitted_fin_is_reacked_and_restarts_timer(opened):
    stack, peer, cid = to_time_wait(opened)
    peer.send(FIN | ACK, 30.0, seq=W)  # our last ACK was lost: the FIN again
    expect(stack, 30.0, S(".", seq=0, ack=0))
    # The heap keeps the old, earlier entry (deadlines that move later are not re-pushed):
    # it fires without effect and the true deadline takes its place.
    assert stack.next_deadline() in (62.0, 90.0)
    stack.handle_timers(62.0)
    assert stack.state(cid) is State.TIME_WAIT
    assert stack.next_deadline() == 90.0
    stack.handle_timers(89.999)
    assert stack.state(cid) is State.TIME_WAIT
    stack.handle_timers(90.0)
    assert stack.state(cid) is State.CLOSED
    assert stack.counters["time_wait_fin_reacked"] == 1


def test_time_wait_lost_final_ack_repeatedly(opened):
    """The peer in LAST-ACK retransmits its FIN with backoff; each gets the ACK again."""
    stack, peer, cid = to_time_wait(opened)
    first_ack_window = None
    for t in (3.0, 5.0, 9.0):
        [ack] = expect_after_fin(stack, peer, t)
        first_ack_window = first_ack_window or ack.window
        assert ack.window == first_ack_window
    stack.handle_timers(62.0)  # the first deadline no longer counts
    assert stack.next_deadline() == 69.0
    peer.send(ACK, 10.0, seq=0)  # the peer finally got our ACK... and says nothing more
    stack.handle_timers(68.999)
    assert stack.state(cid) is State.TIME_WAIT
    stack.handle_timers(69.0)
    assert stack.state(cid) is State.CLOSED


def expect_after_fin(stack, peer, t):
    peer.send(FIN | ACK, t, seq=W)
    return expect(stack, t, S(".", seq=0, ack=0))


def test_time_wait_ignores_rst(opened):
    """RFC 1337: an RST does not cut TIME-WAIT short."""
    stack, peer, cid = to_time_wait(opened)
    events(stack)
    peer.send(RST, 10.0, seq=0)
    peer.send(RST | ACK, 10.0, seq=0)
    expect(stack, 10.0)
    assert stack.state(cid) is State.TIME_WAIT
    assert events(stack) == []
    assert stack.next_deadline() == 62.0
    assert stack.counters["time_wait_rst_ignored"] == 2


def test_time_wait_pure_ack_is_not_answered(opened):
    """An in-window bare ACK in TIME-WAIT needs no reply (two TIME-WAITs must not ping-pong)."""
    stack, peer, _cid = to_time_wait(opened)
    peer.send(ACK, 10.0, seq=0)
    expect(stack, 10.0)
    assert stack.next_deadline() == 62.0


def test_time_wait_answers_unexpected_data_with_ack(opened):
    stack, peer, cid = to_time_wait(opened)
    peer.send(ACK, 10.0, seq=5, data=b"junk")  # beyond the FIN: out of window
    expect(stack, 10.0, S(".", seq=0, ack=0, len=0))
    assert stack.state(cid) is State.TIME_WAIT


def test_time_wait_holds_no_connection(opened):
    stack, _peer, cid = to_time_wait(opened)
    [row] = [r for r in stack.connections(10.0) if r["conn_id"] == cid]
    assert row["state"] == "TIME-WAIT"
    assert row["timers"] == {"time_wait": 52.0}
    with pytest.raises(ConnectionNotWritable, match="TIME-WAIT"):
        stack.send(cid, b"x", 10.0)
    stack.close(cid, 10.0)  # no effect on TIME-WAIT
    stack.abort(cid, 10.0)
    expect(stack, 10.0)
    assert stack.state(cid) is State.TIME_WAIT


def test_time_wait_new_syn_with_higher_seq_reuses_tuple(isn):
    stack, peer, cid = to_time_wait(open_passive(isn, our_iss=OUR, peer_iss=THEIRS))
    events(stack)
    isn.set(777)
    new_iss = 100_000  # beyond the old connection's RCV.NXT (0), even across the wrap
    peer.iss = new_iss
    peer.syn(10.0)
    expect(stack, 10.0, S("S.", seq=777, ack=new_iss + 1, sport=80, dport=40000))
    assert stack.state(cid) is State.CLOSED
    evs = events(stack)
    assert names(evs) == ["TIME-WAIT->CLOSED", "LISTEN->SYN-RECEIVED"]
    assert evs[0].conn_id == cid and evs[1].conn_id != cid
    assert stack.counters["time_wait_reused"] == 1
    assert stack.time_wait_count() == 0


def test_time_wait_new_syn_with_lower_seq_does_not_reuse(isn):
    stack, peer, cid = to_time_wait(open_passive(isn, our_iss=OUR, peer_iss=THEIRS))
    events(stack)
    peer.iss = THEIRS - 1000
    peer.syn(10.0)
    # Not reused: answered with the TIME-WAIT entry's ACK (RFC 9293 3.10.7.4, RFC 5961 4).
    expect(stack, 10.0, S(".", seq=0, ack=0, len=0))
    assert stack.state(cid) is State.TIME_WAIT
    assert events(stack) == []
    assert [r["state"] for r in stack.connections()] == ["TIME-WAIT", "LISTEN"]


def test_time_wait_syn_without_listener_does_not_reuse(isn):
    stack, peer, cid = to_time_wait(open_active(isn, our_iss=OUR, peer_iss=THEIRS))
    peer.iss = 100_000
    peer.syn(10.0)
    expect(stack, 10.0, S(".", seq=0, ack=0, len=0))
    assert stack.state(cid) is State.TIME_WAIT
