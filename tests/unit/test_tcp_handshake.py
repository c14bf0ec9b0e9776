"""Opening ladders: passive, active and simultaneous open; ISNs; SYN and SYN-ACK retransmission."""

import pytest
import tcp_helpers
from tcp_helpers import (  # noqa: F401 (family: a fixture)
    family,
    our_mss,
    ACK,
    RST,
    SYN,
    Peer,
    S,
    events,
    expect,
    make_stack,
    names,
    seq_add,
    transitions,
)

from usertcp.tcp import Connected, ConnectionAccepted, ConnectionTimedOut, State, TcpConfig
from usertcp.tcp.isn import initial_sequence_number
from usertcp.wire import addr_to_int, build_options

X = 2**32 - 10  # the peer's ISS
Y = 2**32 - 3  # ours

# Every ladder here runs over IPv4 and over IPv6 (tcp_helpers.family).
pytestmark = pytest.mark.usefixtures("family")


def test_passive_open_ladder(isn):
    stack = make_stack()
    stack.listen(80)
    peer = Peer(stack, iss=X)
    isn.set(Y)

    peer.syn(1.0, mss=1460)
    # SYN-ACK: seq=y ack=x+1, our MSS, no window scale (the peer offered none),
    # and the unscaled window of a SYN: min(receive_buffer, 65535).
    expect(stack, 1.0, S("S.", seq=Y, ack=X + 1, win=65535, mss=our_mss(), wscale=False,
                         sport=80, dport=40000))
    evs = events(stack)
    assert names(evs) == ["LISTEN->SYN-RECEIVED"]
    cid = evs[0].conn_id
    assert evs[0].cause == "syn"
    assert evs[0].local == (tcp_helpers.LOCAL, 80) and evs[0].remote == (tcp_helpers.REMOTE, 40000)
    # The event is taken at the transition, before the SYN-ACK: SND.NXT is still the ISS.
    assert (evs[0].seq, evs[0].ack) == (Y, seq_add(X, 1))
    assert stack.state(cid) is State.SYN_RECEIVED
    assert str(stack.state(cid)) == "SYN-RECEIVED"

    peer.ack = seq_add(Y, 1)
    peer.send(ACK, 1.5)  # seq=x+1 ack=y+1
    expect(stack, 1.5)  # nothing to say to a bare ACK
    evs = events(stack)
    assert names(evs) == ["SYN-RECEIVED->ESTABLISHED", "ConnectionAccepted"]
    assert evs[1] == ConnectionAccepted(cid, 80, (tcp_helpers.REMOTE, 40000), tcp_helpers.LOCAL, 80)
    assert evs[0].time == 1.5
    assert stack.state(cid) is State.ESTABLISHED
    stack.handle_timers(2.0)  # the SYN-ACK's old RTO deadline: nothing happens
    expect(stack, 2.0)
    assert stack.next_deadline() is None  # nothing outstanding, no timer


def test_passive_open_with_window_scale(isn):
    stack = make_stack()  # 256 KiB receive buffer: shift 3
    stack.listen(80)
    peer = Peer(stack, iss=X)
    isn.set(Y)
    peer.syn(0.0, mss=1000, wscale=7)
    [synack] = expect(stack, 0.0, S("S.", seq=Y, ack=X + 1, win=65535, mss=our_mss(), wscale=3))
    peer.took(synack)
    peer.send(ACK, 0.1, window=100)  # scaled by 2**7: 12800 bytes
    cid = events(stack)[0].conn_id
    stack.send(cid, b"a" * 3000, 0.1)
    # Peer MSS 1000 < ours: segments of 1000; our window field is 256 KiB >> 3.
    expect(stack, 0.1, S(".", seq=Y + 1, ack=X + 1, win=262144 >> 3, len=1000),
           S(".", seq=Y + 1001, ack=X + 1, win=32768, len=1000),
           S("P.", seq=Y + 2001, ack=X + 1, win=32768, len=1000))


def test_active_open_ladder(isn):
    stack = make_stack()
    isn.set(Y)
    cid = stack.connect(tcp_helpers.REMOTE, 80, 2.0, local_port=50000)
    assert stack.state(cid) is State.SYN_SENT
    # SYN: seq=x with MSS and window scale; unscaled window.
    [_syn] = expect(stack, 2.0, S("S", seq=Y, ack=0, win=65535, mss=our_mss(), wscale=3,
                                 sport=50000, dport=80))
    assert names(events(stack)) == ["CLOSED->SYN-SENT"]
    assert stack.next_deadline() == 3.0  # SYN retransmission, RTO 1 s

    peer = Peer(stack, port=80, stack_port=50000, iss=X)
    peer.syn_ack(2.25, ack=Y + 1, mss=1460, wscale=2)
    # ACK seq=x+1 ack=y+1, the window now scaled: 262144 >> 3.
    expect(stack, 2.25, S(".", seq=Y + 1, ack=X + 1, win=32768, len=0))
    evs = events(stack)
    assert names(evs) == ["SYN-SENT->ESTABLISHED", "Connected"]
    assert evs[0].cause == "syn-ack"
    assert evs[1] == Connected(cid)
    assert (evs[0].seq, evs[0].ack) == (seq_add(Y, 1), seq_add(X, 1))
    assert stack.state(cid) is State.ESTABLISHED
    # The SYN's timer entry may linger (deliberately: a deadline that moves later keeps
    # its early heap entry); firing it is a no-op and then no deadline is left.
    assert stack.next_deadline() in (None, 3.0)
    stack.handle_timers(3.0)
    expect(stack, 3.0)
    assert stack.next_deadline() is None
    info = stack.connections()[0]
    assert info["srtt"] == 0.25  # the SYN was timed
    assert info["snd_wnd"] == 65535 << 2  # the peer's shift applies after the SYN


def test_active_open_without_peer_window_scale(isn):
    stack = make_stack()
    isn.set(Y)
    stack.connect(tcp_helpers.REMOTE, 80, 0.0, local_port=50000)
    expect(stack, 0.0, S("S", seq=Y, wscale=3))
    peer = Peer(stack, port=80, stack_port=50000, iss=X)
    peer.syn_ack(0.1, ack=Y + 1, mss=536)
    # No scaling on either side: the field is min(space, 65535).
    expect(stack, 0.1, S(".", seq=Y + 1, ack=X + 1, win=65535))
    assert stack.connections()[0]["mss"] == 536


def test_active_open_data_queued_before_handshake_goes_with_ack(isn):
    stack = make_stack()
    isn.set(Y)
    cid = stack.connect(tcp_helpers.REMOTE, 80, 0.0, local_port=50000)
    assert stack.send(cid, b"hello", 0.0) == 5
    expect(stack, 0.0, S("S", seq=Y))  # data waits for the handshake
    peer = Peer(stack, port=80, stack_port=50000, iss=X)
    peer.syn_ack(0.1, ack=Y + 1)
    expect(stack, 0.1, S(".", seq=Y + 1, ack=X + 1, len=0),
           S("P.", seq=Y + 1, ack=X + 1, data=b"hello"))


def test_simultaneous_open(isn):
    stack = make_stack()
    isn.set(Y)
    cid = stack.connect(tcp_helpers.REMOTE, 80, 0.0, local_port=50000)
    expect(stack, 0.0, S("S", seq=Y))
    peer = Peer(stack, port=80, stack_port=50000, iss=X)
    # Both sides sent SYN (RFC 9293 figure 8): the peer's SYN crosses ours.
    peer.syn(0.1, mss=1460, wscale=5)
    expect(stack, 0.1, S("S.", seq=Y, ack=X + 1, mss=our_mss(), wscale=3))
    assert stack.state(cid) is State.SYN_RECEIVED
    assert names(events(stack)) == ["CLOSED->SYN-SENT", "SYN-SENT->SYN-RECEIVED"]
    # The peer's SYN-ACK (line 6 of figure 8) completes the open.
    peer.ack = seq_add(Y, 1)
    peer.send(SYN | ACK, 0.2, seq=X, options=build_options(mss=1460, wscale=5))
    expect(stack, 0.2)
    evs = events(stack)
    assert names(evs) == ["SYN-RECEIVED->ESTABLISHED", "Connected"]
    assert stack.state(cid) is State.ESTABLISHED
    stack.send(cid, b"x", 0.3)
    expect(stack, 0.3, S("P.", seq=Y + 1, ack=X + 1, win=262144 >> 3, data=b"x"))


def test_simultaneous_open_completed_by_plain_ack(isn):
    stack = make_stack()
    isn.set(Y)
    cid = stack.connect(tcp_helpers.REMOTE, 80, 0.0, local_port=50000)
    expect(stack, 0.0, S("S", seq=Y))
    peer = Peer(stack, port=80, stack_port=50000, iss=X)
    peer.syn(0.1)
    [synack] = expect(stack, 0.1, S("S.", seq=Y, ack=X + 1, wscale=False))
    peer.took(synack)
    peer.send(ACK, 0.2)  # seq=x+1 ack=y+1
    expect(stack, 0.2)
    assert stack.state(cid) is State.ESTABLISHED
    assert names(events(stack))[-2:] == ["SYN-RECEIVED->ESTABLISHED", "Connected"]


def test_retransmitted_syn_in_syn_received_gets_syn_ack_again(isn):
    stack = make_stack()
    stack.listen(80)
    peer = Peer(stack, iss=X)
    isn.set(Y)
    peer.syn(0.0)
    expect(stack, 0.0, S("S.", seq=Y, ack=X + 1))
    peer.syn(0.5)  # our SYN-ACK was lost; the peer's SYN timer fired
    expect(stack, 0.5, S("S.", seq=Y, ack=X + 1, mss=our_mss()))
    assert len(stack.connections()) == 2  # one half-open connection and the listener


def test_syn_ack_retransmission_keeps_the_options_of_the_first(isn):
    """RFC 7323 2.2: no Window Scale in a SYN-ACK unless the SYN had one, resent or not."""
    stack = make_stack()
    stack.listen(80)
    plain = Peer(stack, port=40001, iss=X)
    scaled = Peer(stack, port=40002, iss=X)
    isn.set(Y)
    plain.syn(0.0, mss=1400)
    scaled.syn(0.0, mss=1400, wscale=9)
    expect(stack, 0.0, S("S.", dport=40001, mss=our_mss(), wscale=False),
           S("S.", dport=40002, mss=our_mss(), wscale=3))
    stack.handle_timers(1.0)  # RTO: both resent
    expect(stack, 1.0, S("S.", dport=40001, seq=Y, ack=X + 1, mss=our_mss(), wscale=False),
           S("S.", dport=40002, seq=Y, ack=X + 1, mss=our_mss(), wscale=3))
    plain.syn(1.5, mss=1400)  # and in answer to a retransmitted SYN
    scaled.syn(1.5, mss=1400, wscale=9)
    expect(stack, 1.5, S("S.", dport=40001, wscale=False), S("S.", dport=40002, wscale=3))


def test_syn_ack_echoes_scale_0_when_peer_scales_and_we_do_not(isn):
    stack = make_stack(receive_buffer=65535)  # shift 0 is enough for us
    stack.listen(80)
    peer = Peer(stack, iss=X)
    isn.set(Y)
    peer.syn(0.0, wscale=6)
    expect(stack, 0.0, S("S.", wscale=0))
    stack.handle_timers(1.0)
    expect(stack, 1.0, S("S.", wscale=0))  # must still say "0": the peer's shift 6 is on


# ------------------------------------------------------------------ retransmission of the open

def test_syn_retransmission_backoff_then_timeout(isn):
    stack = make_stack()  # rto_initial 1.0, syn_retries 6
    isn.set(Y)
    cid = stack.connect(tcp_helpers.REMOTE, 80, 0.0, local_port=50000)
    expect(stack, 0.0, S("S", seq=Y, mss=our_mss(), wscale=3))
    events(stack)
    for t in (1.0, 3.0, 7.0, 15.0, 31.0, 63.0):
        assert stack.next_deadline() == t
        stack.handle_timers(t - 0.001)
        expect(stack, t - 0.001)
        stack.handle_timers(t)
        expect(stack, t, S("S", seq=Y, ack=0, mss=our_mss(), wscale=3))
        assert stack.state(cid) is State.SYN_SENT
    assert events(stack) == []
    assert stack.next_deadline() == 127.0
    stack.handle_timers(126.999)
    assert stack.state(cid) is State.SYN_SENT
    stack.handle_timers(127.0)
    expect(stack, 127.0)  # giving up sends nothing
    evs = events(stack)
    assert names(evs) == ["SYN-SENT->CLOSED", "ConnectionTimedOut"]
    assert evs[1] == ConnectionTimedOut(cid)
    assert stack.state(cid) is State.CLOSED
    assert stack.next_deadline() is None


def test_syn_retries_configurable(isn):
    stack = make_stack(syn_retries=2, rto_initial=0.5)
    isn.set(Y)
    cid = stack.connect(tcp_helpers.REMOTE, 80, 0.0, local_port=50000)
    expect(stack, 0.0, S("S"))
    for t in (0.5, 1.5):
        stack.handle_timers(t)
        expect(stack, t, S("S", seq=Y))
    stack.handle_timers(3.5)
    expect(stack, 3.5)
    assert stack.state(cid) is State.CLOSED
    assert isinstance(events(stack)[-1], ConnectionTimedOut)


def test_syn_ack_retransmission_then_half_open_vanishes(isn):
    stack = make_stack()  # synack_retries 5
    stack.listen(80)
    peer = Peer(stack, iss=X)
    isn.set(Y)
    peer.syn(0.0)
    expect(stack, 0.0, S("S.", seq=Y, ack=X + 1))
    cid = events(stack)[0].conn_id
    for t in (1.0, 3.0, 7.0, 15.0, 31.0):
        assert stack.next_deadline() == t
        stack.handle_timers(t - 0.001)
        expect(stack, t - 0.001)
        stack.handle_timers(t)
        expect(stack, t, S("S.", seq=Y, ack=X + 1, mss=our_mss()))
    assert stack.connections()[-1]["half_open"] == 1
    assert stack.next_deadline() == 63.0
    stack.handle_timers(63.0)
    expect(stack, 63.0)
    assert transitions(events(stack)) == [("SYN-RECEIVED", "CLOSED")]
    assert stack.state(cid) is State.CLOSED
    [listener] = stack.connections()
    assert listener["state"] == "LISTEN" and listener["half_open"] == 0
    assert stack.next_deadline() is None
    # The entry is gone: the peer's late ACK now meets the listener and is reset.
    peer.ack = seq_add(Y, 1)
    peer.send(ACK, 64.0, seq=X + 1)
    expect(stack, 64.0, S("R", seq=Y + 1, ack=0, win=0))


def test_syn_received_reset_returns_to_listen(isn):
    stack = make_stack()
    stack.listen(80)
    peer = Peer(stack, iss=X)
    isn.set(Y)
    peer.syn(0.0)
    expect(stack, 0.0, S("S.", seq=Y, ack=X + 1))
    cid = events(stack)[0].conn_id
    peer.send(RST, 0.1, seq=X + 1)
    expect(stack, 0.1)
    assert stack.state(cid) is State.CLOSED
    evs = events(stack)
    assert names(evs) == ["SYN-RECEIVED->CLOSED"]  # nobody to tell: never accepted
    assert stack.connections()[-1]["half_open"] == 0
    peer.syn(0.2)  # the listener still answers
    expect(stack, 0.2, S("S.", seq=Y, ack=X + 1))


def test_syn_received_bad_ack_is_reset(isn):
    stack = make_stack()
    stack.listen(80)
    peer = Peer(stack, iss=X)
    isn.set(Y)
    peer.syn(0.0)
    expect(stack, 0.0, S("S.", seq=Y, ack=X + 1))
    cid = events(stack)[0].conn_id
    peer.send(ACK, 0.1, ack=Y + 5)  # acknowledges what we never sent
    expect(stack, 0.1, S("R", seq=Y + 5))
    assert stack.state(cid) is State.SYN_RECEIVED



def _syn_received(isn, how: str):
    """A connection in SYN-RECEIVED, from LISTEN ("passive") or from a simultaneous open."""
    stack = make_stack()
    isn.set(Y)
    if how == "passive":
        stack.listen(80)
        peer = Peer(stack, iss=X)
        peer.syn(0.0)
    else:
        stack.connect(tcp_helpers.REMOTE, 80, 0.0, local_port=50000)
        expect(stack, 0.0, S("S", seq=Y))
        peer = Peer(stack, port=80, stack_port=50000, iss=X)
        peer.syn(0.0)
    expect(stack, 0.0, S("S.", seq=Y, ack=X + 1))
    [cid] = {e.conn_id for e in events(stack)}
    assert stack.state(cid) is State.SYN_RECEIVED
    return stack, peer, cid


@pytest.mark.parametrize("how", ["passive", "simultaneous"])
def test_syn_received_refuses_an_ack_of_our_iss(isn, how):
    """RFC 9293 3.10.7.4: in SYN-RECEIVED only SND.UNA < SEG.ACK =< SND.NXT is acceptable.
    SEG.ACK = ISS (= SND.UNA) acknowledges nothing: <SEQ=SEG.ACK><CTL=RST>, and the
    connection stays in SYN-RECEIVED for the right ACK."""
    stack, peer, cid = _syn_received(isn, how)
    counters = dict(stack.counters)
    peer.send(ACK, 0.1, ack=Y)
    expect(stack, 0.1, S("R", seq=Y, ack=0, win=0, len=0))
    assert stack.state(cid) is State.SYN_RECEIVED
    assert events(stack) == []
    assert stack.counters["resets_sent"] == counters.get("resets_sent", 0) + 1
    peer.send(ACK, 0.2, ack=Y - 1)  # one below, as well
    expect(stack, 0.2, S("R", seq=Y - 1, ack=0, win=0, len=0))
    assert stack.state(cid) is State.SYN_RECEIVED
    peer.send(ACK, 0.3, ack=Y + 1)  # the right one still completes the open
    expect(stack, 0.3)
    assert stack.state(cid) is State.ESTABLISHED
    assert names(events(stack))[0] == "SYN-RECEIVED->ESTABLISHED"


# ------------------------------------------------------------------ ISN

def test_isn_differs_per_four_tuple():
    stack = make_stack()
    seqs = []
    for lport in (50000, 50001, 50002):
        stack.connect(tcp_helpers.REMOTE, 80, 5.0, local_port=lport)
        [syn] = expect(stack, 5.0, S("S"))
        seqs.append(syn.seq)
    stack.connect(tcp_helpers.OTHER, 80, 5.0, local_port=50000)
    [syn] = expect(stack, 5.0, S("S"))
    seqs.append(syn.seq)
    assert len(set(seqs)) == 4


def test_isn_uses_the_secret():
    a = make_stack(isn_secret=b"one")
    b = make_stack(isn_secret=b"two")
    for s in (a, b):
        s.connect(tcp_helpers.REMOTE, 80, 0.0, local_port=50000)
    assert expect(a, 0.0, S("S"))[0].seq != expect(b, 0.0, S("S"))[0].seq


def test_isn_advances_with_a_4_microsecond_clock():
    args = (b"secret", addr_to_int(tcp_helpers.LOCAL), 50000, addr_to_int(tcp_helpers.REMOTE), 80)
    base = initial_sequence_number(*args, 100.0)
    assert initial_sequence_number(*args, 101.0) == seq_add(base, 250_000)
    assert initial_sequence_number(*args, 100.000004) == seq_add(base, 1)
    # Through the stack: the same 4-tuple a second later starts 250000 further on.
    stack = make_stack(isn_secret=b"secret")
    cid = stack.connect(tcp_helpers.REMOTE, 80, 100.0, local_port=50000)
    assert expect(stack, 100.0, S("S"))[0].seq == base
    stack.abort(cid, 100.5)
    stack.connect(tcp_helpers.REMOTE, 80, 101.0, local_port=50000)
    assert expect(stack, 101.0, S("S"))[0].seq == seq_add(base, 250_000)


def test_isn_never_zero_or_one():
    args = (b"k", addr_to_int(tcp_helpers.LOCAL), 1234, addr_to_int(tcp_helpers.REMOTE), 80)
    digest = initial_sequence_number(*args, 0.0)  # the keyed hash alone (time 0)
    assert digest > 1
    for target, expected in ((0, 2), (1, 3), (2, 2)):
        ticks = (target - digest) % 2**32  # clock value that lands the sum on `target`
        now = (ticks + 0.5) / 250_000
        assert int(now * 250_000) == ticks
        assert initial_sequence_number(*args, now) == expected


def test_isn_fixture_controls_wrap(isn):
    """The fixture itself: a connection can start right below 2**32."""
    isn.set(2**32 - 1)
    stack = make_stack()
    stack.connect(tcp_helpers.REMOTE, 80, 0.0, local_port=50000)
    expect(stack, 0.0, S("S", seq=2**32 - 1))
    assert isn.calls and isn.calls[-1][1:4] == (50000, addr_to_int(tcp_helpers.REMOTE), 80)
    peer = Peer(stack, port=80, stack_port=50000, iss=7)
    peer.syn_ack(0.1, ack=0)  # 2**32 - 1 + 1 wraps to 0
    expect(stack, 0.1, S(".", seq=0, ack=8))


def test_tcp_config_is_what_the_stack_uses():
    cfg = TcpConfig(isn_secret=b"s", mss=1000, window_scale=False)
    from usertcp.stack import Stack
    stack = Stack(tcp_helpers.LOCAL, config=cfg)
    stack.connect(tcp_helpers.REMOTE, 80, 0.0, local_port=50000)
    expect(stack, 0.0, S("S", mss=our_mss(1000), wscale=False, win=65535))
