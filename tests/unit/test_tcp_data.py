"""Data transfer ladders: segmentation, ACK policy, Nagle, windows, persist, reassembly,
retransmission (RTO, Karn, fast retransmit, NewReno) and giving up.

Connections are opened with `open_passive` at 0.0 with a 0.5 s handshake RTT, so
the RTO is 1.5 s (SRTT 0.5, RTTVAR 0.25). Our ISS is 2**32 - 3 and the peer's
2**32 - 10: both sequence spaces wrap within the first few bytes of data.
"""

import itertools

import pytest
import tcp_helpers
from tcp_helpers import (  # noqa: F401 (family: a fixture)
    family,
    ACK,
    FIN,
    OUR_ISS,
    PEER_ISS,
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

from usertcp.tcp import (
    ConnectionClosed,
    ConnectionReset,
    ConnectionTimedOut,
    DataReceived,
    PeerClosed,
    State,
)

Y = OUR_ISS  # our data starts at Y + 1 = 2**32 - 2
X = PEER_ISS  # the peer's data starts at X + 1 = 2**32 - 9
BLOB = bytes(range(256)) * 64  # 16 KiB of recognisable bytes

# Every ladder here runs over IPv4 and over IPv6 (tcp_helpers.family).
pytestmark = pytest.mark.usefixtures("family")


def settle(stack, t):
    """Fire whatever stale timer entries the handshake left, checking nothing is sent."""
    stack.handle_timers(t)
    expect(stack, t)
    events(stack)


def info(stack, cid):
    [row] = [r for r in stack.connections() if r["conn_id"] == cid]
    return row


# ------------------------------------------------------------------ sending

def test_segmentation_by_peer_mss_and_cumulative_acks(isn):
    stack, peer, cid = open_passive(isn, mss=536)  # ours is 1460: the peer's is smaller
    settle(stack, 5.0)
    assert stack.send(cid, BLOB[:2000], 10.0) == 2000
    expect(stack, 10.0,
           S(".", seq=Y + 1, ack=X + 1, len=536, data=BLOB[:536]),
           S(".", seq=Y + 537, ack=X + 1, len=536, data=BLOB[536:1072]),
           S(".", seq=Y + 1073, ack=X + 1, len=536, data=BLOB[1072:1608]))
    # Nagle (RFC 1122 4.2.3.4): the 392-byte tail waits while data is unacknowledged.
    assert info(stack, cid)["send_queue"] == 2000
    peer.send(ACK, 10.5, ack=Y + 537)  # one segment acknowledged
    expect(stack, 10.5)
    assert info(stack, cid)["snd_una"] == seq_add(Y, 537)
    assert info(stack, cid)["send_queue"] == 2000 - 536
    peer.send(ACK, 10.6, ack=Y + 1609)  # cumulative: the other two at once
    expect(stack, 10.6, S("P.", seq=Y + 1609, ack=X + 1, len=392, data=BLOB[1608:2000]))
    assert info(stack, cid)["send_queue"] == 392
    peer.send(ACK, 11.0, ack=Y + 2001)
    expect(stack, 11.0)
    assert info(stack, cid)["send_queue"] == 0
    assert info(stack, cid)["timers"] == {}


def test_initial_window_limits_the_first_flight(isn):
    stack, _peer, cid = open_passive(isn, mss=1000)
    settle(stack, 5.0)
    stack.send(cid, BLOB[:12000], 10.0)
    out = expect(stack, 10.0, *[S(".", seq=Y + 1 + 1000 * i, len=1000) for i in range(10)])
    assert b"".join(s.payload for s in out) == BLOB[:10000]  # IW10 = 10 * MSS (RFC 6928)


def test_nagle_holds_small_write_while_data_in_flight(isn):
    stack, peer, cid = open_passive(isn)
    settle(stack, 5.0)
    stack.send(cid, b"a" * 100, 10.0)
    expect(stack, 10.0, S("P.", seq=Y + 1, ack=X + 1, data=b"a" * 100))
    stack.send(cid, b"b" * 100, 10.1)
    expect(stack, 10.1)  # held: a small segment while 100 bytes are unacknowledged
    stack.send(cid, b"c" * 50, 10.2)
    expect(stack, 10.2)
    peer.send(ACK, 10.5, ack=Y + 101)
    expect(stack, 10.5, S("P.", seq=Y + 101, ack=X + 1, data=b"b" * 100 + b"c" * 50))


def test_nodelay_sends_small_writes_at_once(isn):
    stack, _peer, cid = open_passive(isn)
    settle(stack, 5.0)
    stack.set_nodelay(cid, True)
    stack.send(cid, b"a" * 100, 10.0)
    expect(stack, 10.0, S("P.", seq=Y + 1, data=b"a" * 100))
    stack.send(cid, b"b" * 100, 10.1)
    expect(stack, 10.1, S("P.", seq=Y + 101, data=b"b" * 100))


def test_nagle_off_by_config(isn):
    stack, _peer, cid = open_passive(isn, nagle=False)
    settle(stack, 5.0)
    stack.send(cid, b"a", 10.0)
    stack.packets_to_send(10.0)
    stack.send(cid, b"b", 10.1)
    expect(stack, 10.1, S("P.", seq=Y + 2, data=b"b"))


# ------------------------------------------------------------------ receiving and ACK policy

def test_delayed_ack_for_one_segment(isn):
    stack, peer, cid = open_passive(isn)
    settle(stack, 5.0)
    peer.send(ACK, 10.0, data=b"x" * 100)
    expect(stack, 10.0)  # no ACK yet
    assert events(stack) == [DataReceived(cid)]
    assert stack.next_deadline() == 10.0 + 0.04
    stack.handle_timers(10.039)
    expect(stack, 10.039)
    stack.handle_timers(10.0 + 0.04)
    expect(stack, 10.04, S(".", seq=Y + 1, ack=X + 101, len=0))
    assert stack.recv(cid) == b"x" * 100


def test_delayed_ack_timeout_configurable(isn):
    stack, peer, _cid = open_passive(isn, delayed_ack_timeout=0.2)
    settle(stack, 5.0)
    peer.send(ACK, 10.0, data=b"x")
    assert stack.next_deadline() == 10.2
    stack.handle_timers(10.2)
    expect(stack, 10.2, S(".", ack=X + 2))


def test_every_second_segment_is_acked_at_once(isn):
    stack, peer, cid = open_passive(isn)
    settle(stack, 5.0)
    peer.send(ACK, 10.0, data=BLOB[:1460])
    expect(stack, 10.0)
    peer.send(ACK, 10.01, data=BLOB[1460:2920])
    expect(stack, 10.01, S(".", seq=Y + 1, ack=X + 2921, len=0))
    stack.handle_timers(10.1)
    expect(stack, 10.1)  # the delayed ACK timer went with it
    assert stack.recv(cid) == BLOB[:2920]
    assert events(stack) == [DataReceived(cid)]  # reported once until recv() drains it


def test_delayed_ack_disabled(isn):
    stack, peer, _cid = open_passive(isn, delayed_ack=False)
    settle(stack, 5.0)
    peer.send(ACK, 10.0, data=b"x" * 10)
    expect(stack, 10.0, S(".", ack=X + 11))


def test_data_and_fin_acked_at_once(isn):
    stack, peer, cid = open_passive(isn)
    settle(stack, 5.0)
    peer.send(ACK | FIN, 10.0, data=b"bye")
    expect(stack, 10.0, S(".", seq=Y + 1, ack=X + 5))  # 3 bytes + FIN
    assert names(events(stack)) == ["DataReceived", "PeerClosed", "ESTABLISHED->CLOSE-WAIT"]
    assert stack.recv(cid) == b"bye"


def test_ack_piggybacks_on_data(isn):
    stack, peer, cid = open_passive(isn)
    settle(stack, 5.0)
    peer.send(ACK, 10.0, data=b"ping")
    stack.send(cid, b"pong", 10.001)
    expect(stack, 10.001, S("P.", seq=Y + 1, ack=X + 5, data=b"pong"))
    stack.handle_timers(10.1)
    expect(stack, 10.1)  # no separate delayed ACK


def test_receive_window_scaled(isn):
    stack, peer, cid = open_passive(isn, wscale=7)  # 256 KiB buffer: our shift is 3
    settle(stack, 5.0)
    peer.send(ACK, 10.0, data=BLOB[:1000])
    peer.send(ACK, 10.0, data=BLOB[1000:2000])
    # The field is the free space shifted right by our scale: (262144 - 2000) >> 3.
    expect(stack, 10.0, S(".", ack=X + 2001, win=(262144 - 2000) >> 3))
    assert stack.recv(cid) == BLOB[:2000]


def test_window_never_shrinks_and_silly_window_avoidance(isn):
    stack, peer, cid = open_passive(isn, receive_buffer=4000)  # no scaling: exact edges
    settle(stack, 5.0)
    edge = seq_add(X, 1 + 4000)
    peer.send(ACK, 10.0, data=BLOB[:1000])
    peer.send(ACK, 10.0, data=BLOB[1000:2000])
    expect(stack, 10.0, S(".", ack=X + 2001, win=2000))
    peer.send(ACK, 10.1, data=BLOB[2000:3000])
    peer.send(ACK, 10.1, data=BLOB[3000:4000])
    [ack] = expect(stack, 10.1, S(".", ack=X + 4001, win=0))
    assert seq_add(ack.ack, ack.window) == edge  # the right edge held still
    # Reading less than min(buffer / 2, MSS) does not move the edge (RFC 9293 3.8.6.2.2).
    assert stack.recv(cid, 1000) == BLOB[:1000]
    expect(stack, 10.2)
    peer.send(ACK, 10.3, data=b"", seq=X + 4001)  # a bare ACK: our answers keep window 0
    expect(stack, 10.3)
    # A zero-window probe (one byte at RCV.NXT): its data is dropped and it is answered.
    peer.send(ACK, 10.4, data=b"?", seq=X + 4001)
    expect(stack, 10.4, S(".", ack=X + 4001, win=0))
    assert stack.recv(cid, 1500) == BLOB[1000:2500]  # 2500 free now: worth a window update
    [upd] = expect(stack, 10.5, S(".", ack=X + 4001, win=2500))
    assert seq_add(upd.ack, upd.window) == seq_add(edge, 2500)


def test_window_edge_never_moves_left(isn):
    """Whatever the arrivals and reads, ACK + WND never decreases."""
    stack, peer, cid = open_passive(isn, receive_buffer=3000)
    settle(stack, 5.0)
    edges = []
    t = 10.0
    for size, read in ((700, 0), (700, 0), (100, 300), (900, 0), (300, 1000), (200, 2000),
                       (1000, 0), (50, 50), (500, 0)):
        t += 0.1
        peer.send(ACK, t, data=b"d" * size)
        stack.recv(cid, read) if read else None
        stack.handle_timers(t + 0.05)  # delayed ACKs included
        for seg in drain(stack, t + 0.05):
            edges.append(seq_add(seg.ack, seg.window))
    assert len(edges) >= 5
    for a, b in itertools.pairwise(edges):
        assert ((b - a) & 0xFFFFFFFF) < 2**31, (a, b)


def test_scaled_window_edge_once_offered_stays_acceptable(isn):
    """With scaling the field is rounded down, but data up to the edge once offered is taken."""
    stack, peer, cid = open_passive(isn, wscale=7, receive_buffer=131072)  # our shift: 2
    settle(stack, 5.0)
    peer.send(ACK, 10.0, data=BLOB[:1000])
    stack.handle_timers(10.04)
    expect(stack, 10.04, S(".", ack=X + 1001, win=(131072 - 1000) >> 2))
    edge = seq_add(X, 1 + 131072)  # = ACK + 130072: exactly the end of the buffer
    peer.send(ACK, 11.0, data=BLOB[:1001])
    stack.handle_timers(11.04)
    # 129071 bytes free: the field can only say 129068 (32267 << 2); the edge stays.
    expect(stack, 11.04, S(".", ack=X + 2002, win=129071 >> 2))
    for chunk in (60000, 60000, 9071):  # a peer that sent on the first offer
        peer.send(ACK, 12.0, data=bytes(chunk))
    [ack] = drain(stack, 12.0)
    assert ack.ack == edge
    assert ack.window == 0
    assert len(stack.recv(cid)) == 131072


def test_out_of_order_held_and_delivered_with_dup_acks(isn):
    stack, peer, cid = open_passive(isn)
    settle(stack, 5.0)
    peer.send(ACK, 10.0, seq=X + 101, data=BLOB[100:200])  # a hole of 100 bytes before it
    expect(stack, 10.0, S(".", seq=Y + 1, ack=X + 1, len=0))  # duplicate ACK at once
    peer.send(ACK, 10.01, seq=X + 201, data=BLOB[200:300])
    expect(stack, 10.01, S(".", seq=Y + 1, ack=X + 1, len=0))  # and another
    assert events(stack) == []  # nothing readable yet
    assert stack.recv(cid) == b""
    assert info(stack, cid)["out_of_order"] == 200
    peer.send(ACK, 10.02, seq=X + 1, data=BLOB[:100])  # the hole fills
    expect(stack, 10.02, S(".", seq=Y + 1, ack=X + 301))  # ACKed at once (RFC 5681 4.2)
    assert events(stack) == [DataReceived(cid)]
    assert stack.recv(cid) == BLOB[:300]
    assert info(stack, cid)["out_of_order"] == 0


def test_out_of_order_overlaps_and_early_fin(isn):
    stack, peer, cid = open_passive(isn)
    settle(stack, 5.0)
    peer.send(ACK | FIN, 10.0, seq=X + 201, data=BLOB[200:300])  # last piece, with FIN
    peer.send(ACK, 10.0, seq=X + 51, data=BLOB[50:250])  # overlaps it
    expect(stack, 10.0, S(".", ack=X + 1), S(".", ack=X + 1))
    assert stack.state(cid) is State.ESTABLISHED  # the FIN waits for the data before it
    peer.send(ACK, 10.1, seq=X + 1, data=BLOB[:60])
    expect(stack, 10.1, S(".", ack=X + 302))  # all 300 bytes and the FIN
    assert names(events(stack)) == ["DataReceived", "PeerClosed", "ESTABLISHED->CLOSE-WAIT"]
    assert stack.recv(cid) == BLOB[:300]


def test_duplicate_old_data_is_acked_not_delivered_twice(isn):
    stack, peer, cid = open_passive(isn)
    settle(stack, 5.0)
    peer.send(ACK, 10.0, data=b"abc")
    peer.send(ACK, 10.01, seq=X + 1, data=b"abc")  # retransmitted: all old
    expect(stack, 10.01, S(".", ack=X + 4))
    peer.send(ACK, 10.02, seq=X + 2, data=b"bcdef")  # straddles: only "def" is new
    stack.handle_timers(10.1)
    expect(stack, 10.1, S(".", ack=X + 7))
    assert stack.recv(cid) == b"abcdef"


def test_data_beyond_window_dropped_and_acked(isn):
    stack, peer, cid = open_passive(isn, receive_buffer=4000)
    settle(stack, 5.0)
    peer.send(ACK, 10.0, seq=X + 1 + 4000, data=b"late")  # just past the right edge
    expect(stack, 10.0, S(".", seq=Y + 1, ack=X + 1, win=4000))
    assert stack.recv(cid) == b""
    assert info(stack, cid)["out_of_order"] == 0
    peer.send(ACK, 10.1, seq=X + 1 + 3998, data=b"edge")  # straddles the edge: trimmed
    expect(stack, 10.1, S(".", ack=X + 1))
    assert info(stack, cid)["out_of_order"] == 2
    assert stack.counters["rx_out_of_window"] == 1


# ------------------------------------------------------------------ zero window and persist

def test_zero_window_persist_probes_with_backoff(isn):
    stack, peer, cid = open_passive(isn, window=0)  # the peer's handshake ACK closes the window
    settle(stack, 5.0)
    stack.send(cid, b"z" * 100, 10.0)
    expect(stack, 10.0)  # nothing may go
    assert stack.next_deadline() == 11.5  # persist timer: one RTO
    for t in (11.5, 14.5, 20.5, 32.5):  # 1.5, 3, 6, 12 s apart
        stack.handle_timers(t - 0.001)
        expect(stack, t - 0.001)
        stack.handle_timers(t)
        # The probe: an already-acknowledged sequence number, no data.
        expect(stack, t, S(".", seq=Y, ack=X + 1, len=0))
        peer.send(ACK, t + 0.1, ack=Y + 1, window=0)  # still closed
        expect(stack, t + 0.1)
    assert stack.counters["window_probes"] == 4
    assert stack.state(cid) is State.ESTABLISHED  # probing never gives up
    peer.send(ACK, 40.0, ack=Y + 1, window=1000)  # the window opens
    expect(stack, 40.0, S("P.", seq=Y + 1, ack=X + 1, data=b"z" * 100))
    peer.send(ACK, 40.5, ack=Y + 101, window=1000)
    expect(stack, 40.5)
    assert info(stack, cid)["timers"] == {}


def test_window_shrinks_to_zero_under_data_then_reopens(isn):
    stack, peer, cid = open_passive(isn, mss=1000, window=2000)
    settle(stack, 5.0)
    stack.send(cid, BLOB[:5000], 10.0)
    expect(stack, 10.0, S(".", seq=Y + 1, len=1000), S(".", seq=Y + 1001, len=1000))
    peer.send(ACK, 10.5, ack=Y + 2001, window=0)
    expect(stack, 10.5)
    peer.send(ACK, 10.6, ack=Y + 2001, window=3000)  # a window update
    expect(stack, 10.6, S(".", seq=Y + 2001, len=1000), S(".", seq=Y + 3001, len=1000),
           S("P.", seq=Y + 4001, len=1000))


# ------------------------------------------------------------------ retransmission

def test_rto_exponential_backoff_and_karn(isn):
    stack, peer, cid = open_passive(isn)
    settle(stack, 5.0)
    assert info(stack, cid)["rto"] == 1.5
    stack.send(cid, b"r" * 100, 10.0)
    expect(stack, 10.0, S("P.", seq=Y + 1, data=b"r" * 100))
    for t in (11.5, 14.5):  # RTO 1.5, then 3
        stack.handle_timers(t - 0.001)
        expect(stack, t - 0.001)
        stack.handle_timers(t)
        expect(stack, t, S("P.", seq=Y + 1, ack=X + 1, data=b"r" * 100))
    assert info(stack, cid)["rto"] == 6.0
    # The ACK of a retransmitted segment gives no RTT sample (Karn): SRTT stays 0.5.
    peer.send(ACK, 14.6, ack=Y + 101)
    assert info(stack, cid)["srtt"] == 0.5
    # New data acknowledged: the backoff collapses to the estimate (1.5), as in BSD and Linux.
    assert info(stack, cid)["rto"] == 1.5
    stack.send(cid, b"s" * 100, 20.0)
    expect(stack, 20.0, S("P.", seq=Y + 101))
    peer.send(ACK, 20.5, ack=Y + 201)
    assert info(stack, cid)["srtt"] == 0.5
    assert info(stack, cid)["rto"] == 0.5 + 4 * 0.1875  # RTTVAR 3/4 * 0.25: RTO 1.25
    assert stack.counters["retransmits"] == 2


def test_one_segment_timed_at_a_time(isn):
    """RFC 6298: the timed segment is not replaced by later ones while it is in flight."""
    stack, peer, cid = open_passive(isn)
    settle(stack, 5.0)
    stack.set_nodelay(cid, True)
    stack.send(cid, b"a", 10.0)  # timed from 10.0
    expect(stack, 10.0, S("P.", seq=Y + 1))
    stack.send(cid, b"b", 10.25)
    expect(stack, 10.25, S("P.", seq=Y + 2))
    peer.send(ACK, 10.5, ack=Y + 3)
    assert info(stack, cid)["srtt"] == 0.5  # a 0.5 s sample, not 0.25


def test_karn_after_fast_retransmit(isn):
    stack, peer, cid = open_passive(isn, mss=1000)
    settle(stack, 5.0)
    stack.send(cid, BLOB[:5000], 10.0)  # the first segment is timed
    assert len(expect(stack, 10.0, *[S()] * 5)) == 5
    for i in range(3):  # it was lost: three duplicates of the handshake's ACK
        peer.send(ACK, 10.5 + i / 100, ack=Y + 1)
    expect(stack, 10.52, S(".", seq=Y + 1, len=1000))
    peer.send(ACK, 13.0, ack=Y + 5001)
    assert info(stack, cid)["srtt"] == 0.5  # no 3 s sample from the ambiguous ACK


def test_rto_resends_from_snd_una_one_segment(isn):
    stack, peer, cid = open_passive(isn, mss=1000)
    settle(stack, 5.0)
    stack.send(cid, BLOB[:3000], 10.0)
    expect(stack, 10.0, S(".", seq=Y + 1), S(".", seq=Y + 1001), S("P.", seq=Y + 2001))
    stack.handle_timers(11.5)
    # cwnd collapses to one segment (RFC 5681 3.1): only the first is resent.
    expect(stack, 11.5, S(".", seq=Y + 1, len=1000, data=BLOB[:1000]))
    assert info(stack, cid)["cwnd"] == 1000
    peer.send(ACK, 11.6, ack=Y + 1001)  # slow start: two more
    expect(stack, 11.6, S(".", seq=Y + 1001, data=BLOB[1000:2000]),
           S("P.", seq=Y + 2001, data=BLOB[2000:3000]))


def test_gives_up_after_retries(isn):
    stack, _peer, cid = open_passive(isn, retries=3)
    settle(stack, 5.0)
    stack.send(cid, b"q", 10.0)
    expect(stack, 10.0, S("P.", seq=Y + 1))
    for t in (11.5, 14.5, 20.5):
        stack.handle_timers(t)
        expect(stack, t, S("P.", seq=Y + 1, data=b"q"))
    stack.handle_timers(32.499)
    assert stack.state(cid) is State.ESTABLISHED
    stack.handle_timers(32.5)
    expect(stack, 32.5)
    evs = events(stack)
    assert names(evs) == ["ESTABLISHED->CLOSED", "ConnectionTimedOut"]
    assert evs[1] == ConnectionTimedOut(cid)
    assert stack.state(cid) is State.CLOSED


def test_fast_retransmit_and_newreno_partial_ack(isn):
    stack, peer, cid = open_passive(isn, mss=1000)
    settle(stack, 5.0)
    stack.send(cid, BLOB[:5000], 10.0)
    expect(stack, 10.0, *[S(".", seq=Y + 1 + 1000 * i, len=1000) for i in range(4)],
           S("P.", seq=Y + 4001, len=1000))
    peer.send(ACK, 10.5, ack=Y + 1001)  # first segment arrived; the second was lost
    expect(stack, 10.5)
    assert info(stack, cid)["cwnd"] in (11000, 11001)  # slow start (+1 if the SYN counted)
    for i in range(2):
        peer.send(ACK, 10.51 + i / 100, ack=Y + 1001)
        expect(stack, 10.51 + i / 100)
    peer.send(ACK, 10.53, ack=Y + 1001)  # third duplicate: fast retransmit
    expect(stack, 10.53, S(".", seq=Y + 1001, len=1000, data=BLOB[1000:2000]))
    row = info(stack, cid)
    assert (row["ssthresh"], row["cwnd"]) == (2000, 5000)  # flight 4000 / 2; + 3 MSS
    assert stack.counters["fast_retransmits"] == 1
    peer.send(ACK, 10.54, ack=Y + 1001)  # a fourth: inflate, nothing new to send
    expect(stack, 10.54)
    assert info(stack, cid)["cwnd"] == 6000
    # Partial ACK (RFC 6582): segments 2-3 acknowledged, 4 was lost too: resend it at once.
    peer.send(ACK, 11.0, ack=Y + 3001)
    expect(stack, 11.0, S(".", seq=Y + 3001, len=1000, data=BLOB[3000:4000]))
    assert info(stack, cid)["cwnd"] == 6000 - 2000 + 1000
    # Full ACK: recovery ends, cwnd = min(ssthresh, flight + MSS).
    peer.send(ACK, 11.5, ack=Y + 5001)
    expect(stack, 11.5)
    assert info(stack, cid)["cwnd"] == 2000
    assert stack.counters["fast_retransmits"] == 1
    assert stack.counters["retransmits"] == 2


def test_dup_acks_with_window_change_do_not_count(isn):
    stack, peer, cid = open_passive(isn, mss=1000)
    settle(stack, 5.0)
    stack.send(cid, BLOB[:3000], 10.0)
    drain_all = expect(stack, 10.0, S("."), S("."), S("P."))
    assert len(drain_all) == 3
    for i, w in enumerate((60000, 50000, 40000)):  # window updates, not duplicates
        peer.send(ACK, 10.5 + i / 10, ack=Y + 1, window=w)
        expect(stack, 10.5 + i / 10)
    assert stack.counters["fast_retransmits"] == 0


# ------------------------------------------------------------------ close, abort, half-close

def test_close_with_unread_data_sends_rst(isn):
    stack, peer, cid = open_passive(isn)
    settle(stack, 5.0)
    peer.send(ACK, 10.0, data=b"unread")
    events(stack)
    stack.close(cid, 10.01)
    expect(stack, 10.01, S("R.", seq=Y + 1, ack=X + 7, len=0))  # RFC 2525 2.17
    assert stack.state(cid) is State.CLOSED
    evs = events(stack)
    assert names(evs) == ["ESTABLISHED->CLOSED", "ConnectionReset"]
    assert stack.next_deadline() in (None, 10.04)
    stack.handle_timers(11.0)
    expect(stack, 11.0)  # no delayed ACK from the dead connection


def test_abort_sends_rst(isn):
    stack, peer, cid = open_passive(isn)
    settle(stack, 5.0)
    stack.send(cid, b"in flight", 10.0)
    expect(stack, 10.0, S("P.", seq=Y + 1))
    stack.abort(cid, 10.1)
    expect(stack, 10.1, S("R.", seq=Y + 10, ack=X + 1, len=0))
    assert names(events(stack)) == ["ESTABLISHED->CLOSED", "ConnectionClosed"]
    stack.handle_timers(20.0)
    expect(stack, 20.0)  # no retransmission after an abort
    peer.send(ACK, 20.1, ack=Y + 10)  # the peer, not yet aware, meets a closed port
    expect(stack, 20.1, S("R", seq=Y + 10))


def test_abort_in_syn_sent_sends_nothing(isn):
    stack = make_stack()
    cid = stack.connect(tcp_helpers.REMOTE, 80, 0.0, local_port=50000)
    stack.packets_to_send(0.0)
    stack.abort(cid, 0.1)
    expect(stack, 0.1)
    assert stack.state(cid) is State.CLOSED


def test_data_after_close_resets(isn):
    stack, peer, cid = open_passive(isn)
    settle(stack, 5.0)
    stack.close(cid, 10.0)
    expect(stack, 10.0, S("F.", seq=Y + 1))
    peer.send(ACK, 10.5, ack=Y + 2, data=b"too late")  # nobody will ever read it
    expect(stack, 10.5, S("R.", seq=Y + 2, ack=X + 1))
    assert stack.state(cid) is State.CLOSED
    assert isinstance(events(stack)[-1], ConnectionReset)


@pytest.mark.parametrize("opener", [open_passive, open_active])
def test_half_close_receives_in_fin_wait_2(isn, opener):
    stack, peer, cid = opener(isn)
    settle(stack, 5.0)
    stack.send(cid, b"request", 10.0)
    stack.shutdown(cid, 10.0)
    expect(stack, 10.0, S("FP.", seq=Y + 1, ack=X + 1, data=b"request"))
    peer.send(ACK, 10.5, ack=Y + 9)  # 7 bytes + FIN
    expect(stack, 10.5)
    assert stack.state(cid) is State.FIN_WAIT_2
    peer.send(ACK, 10.6, data=b"response, part one; ")
    assert events(stack)[-1] == DataReceived(cid)
    assert stack.recv(cid) == b"response, part one; "
    stack.handle_timers(10.64)
    expect(stack, 10.64, S(".", seq=Y + 9, ack=X + 21))  # delayed ACK, as usual
    # The rest and the FIN arrive before the application reads again.
    peer.send(ACK | FIN, 10.7, data=b"part two")
    expect(stack, 10.7, S(".", seq=Y + 9, ack=X + 30))
    assert stack.state(cid) is State.TIME_WAIT
    assert names(events(stack)) == ["DataReceived", "PeerClosed", "FIN-WAIT-2->TIME-WAIT",
                                    "ConnectionClosed"]
    assert stack.recv(cid, 4) == b"part"  # still readable in TIME-WAIT
    assert stack.recv(cid) == b" two"
    assert stack.recv(cid) == b""


def test_fin_wait_1_data_then_fin_before_read(isn):
    stack, peer, cid = open_passive(isn)
    settle(stack, 5.0)
    stack.shutdown(cid, 10.0)
    expect(stack, 10.0, S("F.", seq=Y + 1))
    peer.ack = seq_add(Y, 2)
    peer.send(ACK | FIN, 10.5, data=b"answer")  # acks our FIN, carries data and its FIN
    expect(stack, 10.5, S(".", seq=Y + 2, ack=X + 8))
    assert stack.state(cid) is State.TIME_WAIT
    assert stack.recv(cid) == b"answer"
    assert isinstance(events(stack)[-1], ConnectionClosed)


def test_peer_closed_event_then_recv_returns_empty(isn):
    stack, peer, cid = open_active(isn)
    peer.send(ACK | FIN, 1.0)
    evs = events(stack)
    assert PeerClosed(cid) in evs
    assert stack.recv(cid) == b""
    assert stack.state(cid) is State.CLOSE_WAIT
