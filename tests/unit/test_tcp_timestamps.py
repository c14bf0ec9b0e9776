"""Timestamps (RFC 7323): negotiation, TSopt on every segment, TS.Recent, RTTM, PAWS, wrap,
the MSS they take, and TIME-WAIT (RFC 6191 reuse by timestamp).

Our TSval is a 1 ms clock that reads our ISS when the connection is made: with the
connection made at 0.0 and our ISS Y = 2**32 - 3, TSval(t) = Y + int(t * 1000) modulo 2**32,
which wraps 3 ms in. Times in these ladders are binary fractions, so t * 1000 is exact.
"""

import pytest
import tcp_helpers
from tcp_helpers import (  # noqa: F401 (family: a fixture)
    family,
    our_mss,
    ACK,
    FIN,
    OUR_ISS,
    PEER_ISS,
    RST,
    Peer,
    S,
    events,
    expect,
    make_stack,
    names,
    open_passive,
    seq_add,
)

from usertcp.tcp import ConnectionReset, DataReceived, State

Y = OUR_ISS
X = PEER_ISS
MASK = 2**32 - 1
DAY = 86400.0

# Every ladder here runs over IPv4 and over IPv6 (tcp_helpers.family).
pytestmark = pytest.mark.usefixtures("family")


def ts(t: float, iss: int = Y, opened: float = 0.0) -> int:
    """Our TSval at time t, for a connection made at `opened` with ISS `iss`."""
    return (iss + int(t * 1000) - int(opened * 1000)) & MASK


def conn(stack, cid):
    return stack._by_id[cid]


def info(stack, cid):
    [row] = [r for r in stack.connections() if r["conn_id"] == cid]
    return row


def opened(isn, peer_ts=1000, **config):
    """Passive open with timestamps both ways (the peer's SYN TSval `peer_ts`), RTT 0.5."""
    config.setdefault("timestamps", True)
    stack, peer, cid = open_passive(isn, ts=peer_ts, **config)
    events(stack)
    return stack, peer, cid


# ------------------------------------------------------------------ negotiation

@pytest.mark.parametrize("ours", [True, False])
@pytest.mark.parametrize("theirs", [True, False])
def test_negotiation_passive(isn, ours, theirs):
    """Our SYN-ACK carries TSopt only when the peer's SYN did and we are configured for it."""
    stack = make_stack(timestamps=ours, nagle=False)
    stack.listen(80)
    peer = Peer(stack, iss=X)
    isn.set(Y)
    peer.syn(0.0, ts=700 if theirs else None)
    both = ours and theirs
    # The SYN-ACK's TSval is our ISS (the clock's origin), TSecr the SYN's TSval.
    [synack] = expect(stack, 0.0, S("S.", seq=Y, ack=X + 1, mss=our_mss(), ts=(Y, 700) if both else False))
    peer.took(synack)
    if both:
        peer.ts_ecr = synack.ts_val
    peer.send(ACK, 0.5)
    expect(stack, 0.5)
    [cid] = [e.conn_id for e in events(stack) if type(e).__name__ == "ConnectionAccepted"]
    assert info(stack, cid)["timestamps"] is both
    stack.send(cid, b"x" * 2000, 1.0)
    # With timestamps 12 bytes of every segment are TSopt: 1448 bytes of data, not 1460
    # (over IPv6: 1428, not 1440).
    first = our_mss() - 12 if both else our_mss()
    expect(stack, 1.0,
           S(".", seq=Y + 1, len=first, ts=(ts(1.0), 700) if both else False),
           S("P.", seq=Y + 1 + first, len=2000 - first,
             ts=(ts(1.0), 700) if both else False))


@pytest.mark.parametrize("ours", [True, False])
@pytest.mark.parametrize("theirs", [True, False])
def test_negotiation_active(isn, ours, theirs):
    """Our SYN offers TSopt (TSecr 0) when configured; on only if the SYN-ACK answers with it."""
    stack = make_stack(timestamps=ours)
    isn.set(Y)
    cid = stack.connect(tcp_helpers.REMOTE, 80, 0.0, local_port=50000)
    [syn] = expect(stack, 0.0, S("S", seq=Y, ts=(Y, 0) if ours else False))
    peer = Peer(stack, port=80, stack_port=50000, iss=X)
    peer.took(syn)
    # A real peer answers with TSopt only if the SYN had it.
    peer.syn_ack(0.5, ack=Y + 1, ts=900 if (theirs and ours) else None, ts_ecr=Y)
    both = ours and theirs
    expect(stack, 0.5, S(".", seq=Y + 1, ack=X + 1, ts=(ts(0.5), 900) if both else False))
    assert info(stack, cid)["timestamps"] is both
    assert info(stack, cid)["mss"] == (our_mss() - 12 if both else our_mss())


def test_synack_retransmission_keeps_timestamps(isn):
    stack = make_stack(timestamps=True)
    stack.listen(80)
    peer = Peer(stack, iss=X)
    isn.set(Y)
    peer.syn(0.0, ts=700)
    expect(stack, 0.0, S("S.", seq=Y, ts=(Y, 700)))
    stack.handle_timers(1.0)  # initial RTO 1 s: the SYN-ACK again, with a fresh TSval
    expect(stack, 1.0, S("S.", seq=Y, ack=X + 1, ts=(ts(1.0), 700)))


# ------------------------------------------------------------------ every segment

def test_every_segment_carries_tsopt_with_ts_recent(isn):
    stack, peer, cid = opened(isn, delayed_ack=False)
    stack.send(cid, b"a" * 100, 1.0)
    expect(stack, 1.0, S("P.", seq=Y + 1, len=100, ts=(ts(1.0), 1000)))
    peer.ack = seq_add(Y, 101)
    peer.ts_val, peer.ts_ecr = 1250, ts(1.0)
    peer.send(ACK, 1.25, data=b"b" * 10)
    # The ACK of the peer's data echoes its TSval.
    expect(stack, 1.25, S(".", seq=Y + 101, ack=X + 11, len=0, ts=(ts(1.25), 1250)))
    stack.abort(cid, 1.5)
    # RFC 7323 3.2: TSopt in an RST as well.
    expect(stack, 1.5, S("R.", seq=Y + 101, ts=(ts(1.5), 1250)))


def test_tso_super_segments_are_whole_effective_mss(isn):
    stack, _peer, cid = opened(isn, tso_max=65535 - 80)
    stack.send(cid, bytes(40000), 1.0)
    # Initial window: 10 segments of 1448 (MSS 1460 less TSopt), in one super-segment
    # which the device cuts at 1500 - 20 - 32 = 1448 bytes (1428 over IPv6: 40 + 32).
    mss = our_mss() - 12
    [seg] = expect(stack, 1.0, S(".", seq=Y + 1, len=10 * mss, ts=(ts(1.0), 1000)))
    assert len(seg.payload) % mss == 0


# ------------------------------------------------------------------ TS.Recent

def test_ts_recent_follows_last_ack_sent(isn):
    """RFC 7323 4.3: the TSval echoed is that of the earliest segment not yet acknowledged
    (delayed ACK), of the segment before a hole, and of the segment that fills it."""
    stack, peer, cid = opened(isn)  # delayed ACKs: every second segment
    peer.ts_ecr = ts(0.5)
    peer.ts_val = 2000
    peer.send(ACK, 1.0, data=b"A" * 100)  # at Last.ACK.sent: TS.Recent = 2000
    expect(stack, 1.0)
    peer.ts_val = 2001
    peer.send(ACK, 1.0, data=b"B" * 100)  # after it (no ACK sent yet): ignored
    expect(stack, 1.0, S(".", ack=X + 201, ts=(ts(1.0), 2000)))
    peer.ts_val = 2002
    peer.send(ACK, 1.25, seq=X + 301, data=b"C" * 100)  # beyond a hole: ignored
    expect(stack, 1.25, S(".", ack=X + 201, ts=(ts(1.25), 2000)))
    peer.ts_val = 2003
    peer.send(ACK, 1.5, seq=X + 201, data=b"D" * 100)  # fills the hole: taken
    expect(stack, 1.5, S(".", ack=X + 401, ts=(ts(1.5), 2003)))
    peer.seq = seq_add(X, 401)
    peer.ts_val = 2004
    peer.send(ACK, 1.75)  # a pure ACK at Last.ACK.sent: taken
    expect(stack, 1.75)
    assert conn(stack, cid).ts_recent == 2004
    stack.send(cid, b"z", 2.0)
    expect(stack, 2.0, S("P.", len=1, ts=(ts(2.0), 2004)))


# ------------------------------------------------------------------ PAWS

def test_paws_drops_an_old_duplicate_and_acks(isn):
    stack, peer, cid = opened(isn, delayed_ack=False)
    peer.ts_val = 5000
    peer.send(ACK, 1.0, data=b"new")
    expect(stack, 1.0, S(".", ack=X + 4, ts=(ts(1.0), 5000)))
    assert [type(e) for e in events(stack)] == [DataReceived]
    # An old segment: in the window (at RCV.NXT), but its TSval is older than TS.Recent.
    peer.ts_val = 4000
    peer.send(ACK, 1.25, data=b"old")
    expect(stack, 1.25, S(".", seq=Y + 1, ack=X + 4, len=0, ts=(ts(1.25), 5000)))
    assert events(stack) == []
    assert stack.recv(cid) == b"new"
    assert stack.counters["paws_rejected"] == 1
    # One tick older passes (as on Linux), and TS.Recent does not go back.
    peer.seq = seq_add(X, 4)
    peer.ts_val = 4999
    peer.send(ACK, 1.5, data=b"ok")
    expect(stack, 1.5, S(".", ack=X + 6, ts=(ts(1.5), 5000)))
    assert stack.recv(cid) == b"ok"


def test_paws_does_not_apply_to_rst(isn):
    stack, peer, cid = opened(isn)
    peer.ts_val = 10
    peer.send(RST, 1.0)  # an old TSval, but an RST at RCV.NXT resets all the same
    assert stack.state(cid) is State.CLOSED
    assert any(isinstance(e, ConnectionReset) for e in events(stack))


def test_paws_gives_up_on_a_ts_recent_24_days_old(isn):
    """RFC 7323 5.5: after 24 days idle TS.Recent is invalid; the old TSval is taken."""
    stack, peer, cid = opened(isn, delayed_ack=False, peer_ts=3_000_000_000)
    t = 25 * DAY
    peer.ts_val = 2_999_000_000  # older than TS.Recent: rejected, were it not so old
    peer.send(ACK, t, data=b"hi")
    expect(stack, t, S(".", ack=X + 3, ts=(ts(t), 2_999_000_000)))
    assert stack.recv(cid) == b"hi"
    assert stack.counters["paws_rejected"] == 0


def test_wrap_of_both_clocks(isn):
    """Our TSval crosses 2**32 3 ms in; the peer's crosses it too; PAWS is modular."""
    stack = make_stack(timestamps=True, delayed_ack=False)
    stack.listen(80)
    peer = Peer(stack, iss=X)
    isn.set(Y)
    peer.syn(0.0, ts=MASK - 1)
    [synack] = expect(stack, 0.0, S("S.", ts=(MASK - 2, MASK - 1)))  # Y = 2**32 - 3
    peer.took(synack)
    peer.ts_ecr = synack.ts_val
    peer.ts_val = 3  # the peer's clock wrapped: newer
    peer.send(ACK, 0.5)
    peer.send(ACK, 0.5, data=b"x")
    expect(stack, 0.5, S(".", ack=X + 2, ts=(497, 3)))  # ours wrapped too: Y + 500
    peer.ts_val = MASK - 50  # older across the wrap: rejected
    peer.send(ACK, 0.75, data=b"y")
    expect(stack, 0.75, S(".", ack=X + 2, ts=(747, 3)))
    assert stack.counters["paws_rejected"] == 1


# ------------------------------------------------------------------ RTT measurement

def test_rtt_from_tsecr(isn):
    stack, peer, cid = opened(isn, delayed_ack=False)
    # The handshake: the peer's ACK at 0.5 echoed the SYN-ACK's TSval (0.0).
    assert info(stack, cid)["srtt"] == 0.5
    stack.send(cid, b"a" * 10, 10.0)
    expect(stack, 10.0, S("P.", ts=(ts(10.0), 1000)))
    peer.ack = seq_add(Y, 11)
    peer.ts_ecr = ts(10.0)
    peer.send(ACK, 10.25)
    # RFC 6298 with a 0.25 s sample: SRTT 7/8 * 0.5 + 1/8 * 0.25, RTTVAR 0.25.
    row = info(stack, cid)
    assert row["srtt"] == 0.46875
    assert row["rto"] == 0.46875 + 4 * 0.25


def test_rtt_of_a_retransmission_by_its_echo(isn):
    """The echo tells which copy was acknowledged: the retransmission's echo is a sample;
    an echo from before the retransmission is not (it may include the timeout)."""
    stack, peer, cid = opened(isn)
    stack.send(cid, b"a" * 10, 10.0)
    expect(stack, 10.0, S("P.", seq=Y + 1, ts=(ts(10.0), 1000)))
    stack.handle_timers(11.5)  # RTO 1.5
    expect(stack, 11.5, S("P.", seq=Y + 1, len=10, ts=(ts(11.5), 1000)))
    stack.send(cid, b"b" * 10, 11.5)
    expect(stack, 11.5)  # Nagle: the first byte is unacknowledged
    peer.ack = seq_add(Y, 11)
    peer.ts_ecr = ts(11.5)
    peer.send(ACK, 11.625)
    expect(stack, 11.625, S("P.", seq=Y + 11, len=10))
    row = info(stack, cid)
    assert row["srtt"] == 0.875 * 0.5 + 0.125 * 0.125  # the retransmission's 125 ms

    stack2, peer2, cid2 = opened(isn, port=40001, stack=None)
    stack2.send(cid2, b"a" * 10, 10.0)
    expect(stack2, 10.0, S("P."))
    stack2.handle_timers(11.5)
    expect(stack2, 11.5, S("P.", seq=Y + 1))
    peer2.ack = seq_add(Y, 11)
    peer2.ts_ecr = ts(10.0)  # echoes the first copy: the ACK of it was late or lost
    peer2.send(ACK, 11.625)
    assert info(stack2, cid2)["srtt"] == 0.5  # no sample
    assert info(stack2, cid2)["rto"] == 1.5  # and the backoff is over (BSD, Linux)


# ------------------------------------------------------------------ TIME-WAIT

def to_time_wait(isn):
    """Passive open with timestamps; the engine closes first; TIME-WAIT at 2.0."""
    stack, peer, cid = opened(isn)
    stack.close(cid, 1.0)
    expect(stack, 1.0, S("F.", seq=Y + 1, ts=(ts(1.0), 1000)))
    peer.ack = seq_add(Y, 2)
    peer.ts_val, peer.ts_ecr = 1500, ts(1.0)
    peer.send(ACK, 1.5)
    peer.ts_val = 2000
    peer.send(FIN | ACK, 2.0)
    expect(stack, 2.0, S(".", seq=Y + 2, ack=X + 2, ts=(ts(2.0), 2000)))
    assert stack.state(cid) is State.TIME_WAIT
    events(stack)
    return stack, peer, cid


def test_time_wait_acks_carry_tsopt_and_paws_applies(isn):
    stack, peer, _cid = to_time_wait(isn)
    peer.ts_val = 2500
    peer.send(FIN | ACK, 3.0, seq=X + 1)  # the FIN again: our ACK was lost
    expect(stack, 3.0, S(".", seq=Y + 2, ack=X + 2, ts=(ts(3.0), 2500)))
    peer.ts_val = 1900  # an old duplicate of the FIN: ACKed, but 2MSL does not restart
    peer.send(FIN | ACK, 4.0, seq=X + 1)
    expect(stack, 4.0, S(".", seq=Y + 2, ack=X + 2, ts=(ts(4.0), 2500)))
    stack.handle_timers(62.0)  # the first deadline's stale heap entry
    assert stack.next_deadline() == 63.0  # 60 s from the FIN taken at 3.0, not 4.0
    assert stack.counters["paws_rejected"] == 1


def test_time_wait_reuse_by_timestamp(isn):
    """RFC 6191: a SYN whose TSval is newer reuses the 4-tuple even with a lower sequence
    number; an older TSval does not, even with a higher one."""
    stack, peer, cid = to_time_wait(isn)
    peer.iss = X - 1000  # below the old RCV.NXT: by sequence number alone, no reuse
    isn.set(777)
    peer.syn(10.0, ts=2600)
    expect(stack, 10.0, S("S.", seq=777, ack=X - 999, ts=(777, 2600)))
    assert names(events(stack))[:2] == ["TIME-WAIT->CLOSED", "LISTEN->SYN-RECEIVED"]
    assert stack.counters["time_wait_reused"] == 1

    stack, peer, cid = to_time_wait(isn)
    peer.iss = X + 100_000  # beyond the old RCV.NXT, but the TSval is older
    peer.syn(10.0, ts=1999)
    expect(stack, 10.0, S(".", seq=Y + 2, ack=X + 2, ts=(ts(10.0), 2000)))
    assert stack.state(cid) is State.TIME_WAIT
    assert stack.counters["time_wait_reused"] == 0
