"""Resets: segments nobody owns (RFC 9293 3.10.7.1), SYN-SENT, and RFC 5961 protections."""

import pytest
import tcp_helpers
from tcp_helpers import (  # noqa: F401 (family: a fixture)
    family,
    ACK,
    FIN,
    OUR_ISS,
    PEER_ISS,
    PSH,
    RST,
    SYN,
    Peer,
    S,
    drain,
    events,
    expect,
    make_stack,
    names,
    open_active,
    open_passive,
    seq_add,
)

from usertcp.tcp import ConnectionReset, State

Y = OUR_ISS
X = PEER_ISS

# Every ladder here runs over IPv4 and over IPv6 (tcp_helpers.family).
pytestmark = pytest.mark.usefixtures("family")


# ------------------------------------------------------------------ closed ports

def test_syn_to_closed_port_gets_rst_ack():
    stack = make_stack()
    stack.listen(80)  # a different port listens
    peer = Peer(stack, stack_port=81, iss=2**32 - 1)
    peer.syn(0.0)
    # No ACK in the offending segment: <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>; SYN counts.
    expect(stack, 0.0, S("R.", seq=0, ack=0, win=0, len=0, sport=81, dport=40000))
    assert stack.counters["rx_closed_port"] == 1
    assert stack.counters["resets_sent"] == 1
    assert events(stack) == []


def test_ack_to_closed_port_gets_rst_with_seq_of_its_ack():
    stack = make_stack()
    peer = Peer(stack, stack_port=81, iss=1000)
    peer.send(ACK, 0.0, ack=123456789, data=b"data")
    # With ACK: <SEQ=SEG.ACK><CTL=RST>, no ACK flag.
    expect(stack, 0.0, S("R", seq=123456789, ack=0, win=0, len=0))


@pytest.mark.parametrize("flags,data,ack", [(FIN, b"", 1001), (PSH, b"12345", 1005),
                                              (FIN | PSH, b"12345", 1006), (0, b"", 1000)])
def test_ackless_segments_to_closed_port(flags, data, ack):
    stack = make_stack()
    peer = Peer(stack, stack_port=81, iss=1000)
    peer.send(flags, 0.0, data=data)
    expect(stack, 0.0, S("R.", seq=0, ack=ack))


def test_rst_to_closed_port_is_not_answered():
    stack = make_stack()
    peer = Peer(stack, stack_port=81, iss=1000)
    peer.send(RST, 0.0)
    peer.send(RST | ACK, 0.0, ack=5)
    expect(stack, 0.0)


def test_listening_port_resets_acks_and_ignores_rst_and_stray_fin():
    stack = make_stack()
    stack.listen(80)
    peer = Peer(stack, iss=1000)
    peer.send(ACK, 0.0, ack=777)
    expect(stack, 0.0, S("R", seq=777))
    peer.send(RST, 0.0)
    peer.send(FIN, 0.0)  # neither SYN nor ACK: dropped
    expect(stack, 0.0)
    assert stack.connections()[0]["half_open"] == 0


def test_rst_ack_in_syn_sent_means_refused(isn):
    stack = make_stack()
    isn.set(Y)
    cid = stack.connect(tcp_helpers.REMOTE, 80, 0.0, local_port=50000)
    expect(stack, 0.0, S("S", seq=Y))
    peer = Peer(stack, port=80, stack_port=50000, iss=0)
    peer.send(RST | ACK, 0.1, seq=0, ack=Y + 1)
    expect(stack, 0.1)
    assert stack.state(cid) is State.CLOSED
    evs = events(stack)
    assert names(evs) == ["CLOSED->SYN-SENT", "SYN-SENT->CLOSED", "ConnectionReset"]
    assert evs[-1] == ConnectionReset(cid, refused=True)
    assert stack.counters["connection_refused"] == 1
    stack.handle_timers(10.0)
    expect(stack, 10.0)  # no more SYNs


def test_syn_sent_ignores_rst_without_acceptable_ack(isn):
    stack = make_stack()
    isn.set(Y)
    cid = stack.connect(tcp_helpers.REMOTE, 80, 0.0, local_port=50000)
    expect(stack, 0.0, S("S"))
    peer = Peer(stack, port=80, stack_port=50000, iss=0)
    peer.send(RST, 0.1, seq=0)  # no ACK: cannot be tied to our SYN
    peer.send(RST | ACK, 0.1, seq=0, ack=Y)  # acknowledges nothing we sent
    peer.send(RST | ACK, 0.1, seq=0, ack=Y + 2)  # acknowledges more than we sent
    expect(stack, 0.1)
    assert stack.state(cid) is State.SYN_SENT
    stack.handle_timers(1.0)
    expect(stack, 1.0, S("S", seq=Y))


def test_syn_sent_bad_ack_gets_rst(isn):
    stack = make_stack()
    isn.set(Y)
    cid = stack.connect(tcp_helpers.REMOTE, 80, 0.0, local_port=50000)
    expect(stack, 0.0, S("S"))
    peer = Peer(stack, port=80, stack_port=50000, iss=0)
    peer.send(SYN | ACK, 0.1, seq=4000, ack=Y + 50)  # e.g. an old connection's SYN-ACK
    expect(stack, 0.1, S("R", seq=Y + 50, ack=0))
    assert stack.state(cid) is State.SYN_SENT


def test_reset_in_syn_received_of_simultaneous_open_is_refused(isn):
    stack = make_stack()
    isn.set(Y)
    cid = stack.connect(tcp_helpers.REMOTE, 80, 0.0, local_port=50000)
    expect(stack, 0.0, S("S"))
    peer = Peer(stack, port=80, stack_port=50000, iss=X)
    peer.syn(0.1)
    expect(stack, 0.1, S("S.", seq=Y, ack=X + 1))
    peer.send(RST, 0.2, seq=X + 1)
    assert events(stack)[-1] == ConnectionReset(cid, refused=True)


# ------------------------------------------------------------------ RFC 5961

@pytest.fixture(params=["engine-passive", "engine-active"])
def est(request, isn):
    opener = open_passive if request.param == "engine-passive" else open_active
    stack, peer, cid = opener(isn)
    stack.handle_timers(5.0)
    stack.packets_to_send(5.0)
    events(stack)
    return stack, peer, cid


def test_rst_with_exact_sequence_number_resets(est):
    stack, peer, cid = est
    peer.send(RST, 10.0, seq=X + 1)
    expect(stack, 10.0)
    assert stack.state(cid) is State.CLOSED
    evs = events(stack)
    assert names(evs) == ["ESTABLISHED->CLOSED", "ConnectionReset"]
    assert evs[-1] == ConnectionReset(cid, refused=False)
    assert evs[0].cause == "reset"
    peer.send(ACK, 10.1, seq=X + 1)  # the connection is gone
    expect(stack, 10.1, S("R", seq=Y + 1))


def test_rst_in_window_but_not_exact_gets_challenge_ack(est):
    stack, peer, cid = est
    peer.send(RST, 10.0, seq=X + 1 + 1000)
    # Challenge ACK: <SEQ=SND.NXT><ACK=RCV.NXT><CTL=ACK>.
    expect(stack, 10.0, S(".", seq=Y + 1, ack=X + 1, len=0))
    assert stack.state(cid) is State.ESTABLISHED
    assert events(stack) == []
    assert stack.counters["challenge_acks"] == 1
    # The real peer answers the challenge with an exact RST, which is accepted.
    peer.send(RST, 10.1, seq=X + 1)
    assert stack.state(cid) is State.CLOSED


def test_rst_with_ack_flag_in_window_also_challenged(est):
    stack, peer, cid = est
    peer.send(RST | ACK, 10.0, seq=X + 2, ack=Y + 1)
    expect(stack, 10.0, S(".", seq=Y + 1, ack=X + 1))
    assert stack.state(cid) is State.ESTABLISHED


@pytest.mark.parametrize("offset", [65535, 70000, 2**31, -1, -1000])
def test_rst_out_of_window_silently_dropped(est, offset):
    stack, peer, cid = est
    peer.send(RST, 10.0, seq=X + 1 + offset)
    expect(stack, 10.0)
    assert stack.state(cid) is State.ESTABLISHED
    assert stack.counters["challenge_acks"] == 0


def test_syn_on_established_connection_gets_challenge_ack(est):
    stack, peer, cid = est
    peer.send(SYN, 10.0, seq=X + 1 + 500)  # in window
    expect(stack, 10.0, S(".", seq=Y + 1, ack=X + 1, len=0))
    assert stack.state(cid) is State.ESTABLISHED
    peer.send(SYN, 10.1, seq=X)  # the old SYN again: out of window, still just an ACK
    expect(stack, 10.1, S(".", seq=Y + 1, ack=X + 1))
    assert stack.state(cid) is State.ESTABLISHED
    assert stack.counters["syn_challenged"] == 1
    assert events(stack) == []


def test_challenge_acks_are_rate_limited(isn):
    stack, peer, cid = open_passive(isn, challenge_ack_limit=2)
    stack.handle_timers(5.0)
    stack.packets_to_send(5.0)
    for i in range(4):
        peer.send(RST, 10.0 + i / 10, seq=X + 100 + i)
    expect(stack, 10.3, S(".", ack=X + 1), S(".", ack=X + 1))  # two in this second
    assert stack.counters["challenge_acks_suppressed"] == 2
    peer.send(SYN, 10.9, seq=X + 100)  # SYN challenges share the budget
    expect(stack, 10.9)
    peer.send(RST, 11.0, seq=X + 100)  # a new second, a new budget
    expect(stack, 11.0, S(".", seq=Y + 1, ack=X + 1))
    assert stack.state(cid) is State.ESTABLISHED


def test_ack_of_unsent_data_is_answered_and_dropped(est):
    stack, peer, cid = est
    peer.send(ACK, 10.0, ack=Y + 1000, data=b"ignored")
    expect(stack, 10.0, S(".", seq=Y + 1, ack=X + 1))
    assert stack.recv(cid) == b""  # RFC 9293: the segment is dropped
    assert stack.state(cid) is State.ESTABLISHED


def test_ack_too_old_is_challenged(isn):
    """RFC 5961 5.2: an ACK below SND.UNA - MAX.SND.WND is not acceptable."""
    stack, peer, cid = open_passive(isn, window=1000)
    stack.handle_timers(5.0)
    stack.packets_to_send(5.0)
    peer.send(ACK, 10.0, ack=Y + 1 - 5000, data=b"blind")
    expect(stack, 10.0, S(".", seq=Y + 1, ack=X + 1))
    assert stack.recv(cid) == b""
    assert stack.counters["ack_too_old"] == 1


def _sent_2500_bytes_through_a_1000_byte_window(isn):
    """ESTABLISHED with MAX.SND.WND = 1000 (the peer never offers more) and SND.UNA = SND.MAX
    2500 bytes past the handshake; no delayed ACKs, so taken data is answered at once."""
    stack, peer, cid = open_passive(isn, window=1000, delayed_ack=False)
    stack.send(cid, b"d" * 2500, 1.0)
    t = 1.0
    for _ in range(10):
        segs = drain(stack, t)
        if not segs:
            break
        assert sum(len(s.payload) for s in segs) <= 1000  # the window bounds the flight
        peer.took(segs[-1])
        t += 0.1
        peer.send(ACK, t)
    [row] = [r for r in stack.connections(t) if r["conn_id"] == cid]
    una = seq_add(Y, 1 + 2500)
    assert (row["snd_una"], row["snd_nxt"], row["send_queue"]) == (una, una, 0)
    return stack, peer, cid, una, t


def test_ack_acceptability_lower_edge_is_snd_una_minus_max_snd_wnd(isn):
    """RFC 5961 5.2: SND.UNA - MAX.SND.WND =< SEG.ACK =< SND.MAX is acceptable, exactly."""
    stack, peer, cid, una, t = _sent_2500_bytes_through_a_1000_byte_window(isn)
    rcv = peer.seq
    # At the edge: accepted, its data taken and ACKed.
    peer.send(ACK | PSH, t + 1, ack=una - 1000, data=b"edge")
    expect(stack, t + 1, S(".", seq=una, ack=rcv + 4, len=0))
    assert stack.recv(cid) == b"edge"
    assert stack.counters["ack_too_old"] == 0 and stack.counters["challenge_acks"] == 0
    # One below: a challenge ACK (RCV.NXT unchanged), the segment dropped.
    peer.send(ACK | PSH, t + 2, ack=una - 1001, data=b"past", advance=False)
    expect(stack, t + 2, S(".", seq=una, ack=rcv + 4, len=0))
    assert stack.recv(cid) == b""
    assert stack.counters["ack_too_old"] == 1 and stack.counters["challenge_acks"] == 1
    # The same as bare ACKs: at the edge nothing to answer, below it a challenge ACK.
    peer.send(ACK, t + 3, ack=una - 1000)
    expect(stack, t + 3)
    peer.send(ACK, t + 4, ack=una - 1001)
    expect(stack, t + 4, S(".", seq=una, ack=rcv + 4, len=0))
    assert stack.counters["ack_too_old"] == 2 and stack.counters["challenge_acks"] == 2
    assert stack.state(cid) is State.ESTABLISHED


def test_ack_acceptability_upper_edge_is_snd_max(isn):
    """An ACK of data never sent (SEG.ACK > SND.MAX) is answered with an ACK and dropped;
    SEG.ACK = SND.MAX is a plain ACK of everything in flight."""
    stack, peer, cid, una, t = _sent_2500_bytes_through_a_1000_byte_window(isn)
    rcv = peer.seq
    stack.send(cid, b"e" * 300, t + 1)
    expect(stack, t + 1, S("P.", seq=una, ack=rcv, len=300))
    snd_max = seq_add(una, 300)
    peer.send(ACK | PSH, t + 2, ack=snd_max + 1, data=b"over", advance=False)
    expect(stack, t + 2, S(".", seq=snd_max, ack=rcv, len=0))
    assert stack.recv(cid) == b""
    assert stack.counters["ack_of_unsent"] == 1
    [row] = [r for r in stack.connections(t + 2) if r["conn_id"] == cid]
    assert row["snd_una"] == una  # the dropped ACK moved nothing
    peer.send(ACK | PSH, t + 3, ack=snd_max, data=b"edge")
    expect(stack, t + 3, S(".", seq=snd_max, ack=rcv + 4, len=0))
    assert stack.recv(cid) == b"edge"
    [row] = [r for r in stack.connections(t + 3) if r["conn_id"] == cid]
    assert row["snd_una"] == snd_max
    assert stack.counters["ack_of_unsent"] == 1
    assert stack.state(cid) is State.ESTABLISHED
