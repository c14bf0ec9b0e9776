"""Keepalive (RFC 1122 4.2.3.6) and the user timeout (RFC 5482, Linux TCP_USER_TIMEOUT),
as exact ladders on the virtual clock.

Connections are opened with `open_passive` at 0.0 with a 0.5 s handshake RTT: the
peer's last segment (its handshake ACK) arrives at 0.5, and the RTO is 1.5 s.
Our ISS is 2**32 - 3 (SND.UNA = Y + 1 once established), the peer's 2**32 - 10.
"""

import pytest
import tcp_helpers
from tcp_helpers import (  # noqa: F401 (family: a fixture)
    family,
    ACK,
    FIN,
    OUR_ISS,
    PEER_ISS,
    PSH,
    REMOTE,
    S,
    drain,
    events,
    expect,
    make_stack,
    names,
    open_active,
    open_passive,
)

from usertcp.tcp import ConnectionTimedOut, State, TcpConfig

Y = OUR_ISS
X = PEER_ISS
SMALL = {"keepalive": True, "keepalive_idle": 100.0, "keepalive_interval": 10.0,
         "keepalive_probes": 3}

# Every ladder here runs over IPv4 and over IPv6 (tcp_helpers.family).
pytestmark = pytest.mark.usefixtures("family")


def timers(stack, cid, now=0.0):
    [row] = [r for r in stack.connections(now) if r["conn_id"] == cid]
    return row["timers"]


def quiet_until(stack, t):
    """Nothing is sent up to (not including) t."""
    stack.handle_timers(t - 0.001)
    expect(stack, t - 0.001)


def probe(at_seq=Y):
    """A keepalive probe: an ACK one below SND.UNA, no data."""
    return S(".", seq=at_seq, ack=X + 1, len=0)


# ------------------------------------------------------------------ keepalive

def test_keepalive_is_off_by_default(isn):
    assert TcpConfig().keepalive is False
    stack, _peer, cid = open_passive(isn)
    stack.handle_timers(100_000.0)
    expect(stack, 100_000.0)
    assert stack.state(cid) is State.ESTABLISHED
    assert stack.next_deadline() is None
    assert "keepalive_probes" not in stack.counters


def test_keepalive_linux_defaults_full_ladder(isn):
    """7200 s idle, then 9 probes 75 s apart; the tenth tick resets the peer."""
    cfg = TcpConfig(keepalive=True)
    assert (cfg.keepalive_idle, cfg.keepalive_interval, cfg.keepalive_probes) == (7200, 75, 9)
    stack, _peer, cid = open_passive(isn, keepalive=True)
    start = 0.5 + 7200  # idle counts from the last segment received: the handshake's ACK
    quiet_until(stack, start)
    for k in range(9):
        t = start + 75 * k
        quiet_until(stack, t)
        stack.handle_timers(t)
        expect(stack, t, probe())
        assert stack.next_deadline() == t + 75
    end = start + 9 * 75
    quiet_until(stack, end)
    assert stack.state(cid) is State.ESTABLISHED
    stack.handle_timers(end)
    # Linux resets the peer when keepalive gives up: <SEQ=SND.NXT><CTL=RST,ACK>.
    expect(stack, end, S("R.", seq=Y + 1, ack=X + 1))
    evs = events(stack)
    assert names(evs) == ["ESTABLISHED->CLOSED", "ConnectionTimedOut"]
    assert evs[0].cause == "keepalive timeout"
    assert evs[1] == ConnectionTimedOut(cid)
    assert stack.counters["keepalive_probes"] == 9
    assert stack.counters["keepalive_timeouts"] == 1
    assert stack.next_deadline() is None


def test_answered_probe_resets_the_count_and_the_idle_time(isn):
    stack, peer, _cid = open_passive(isn, **SMALL)
    quiet_until(stack, 100.5)
    stack.handle_timers(100.5)
    expect(stack, 100.5, probe())
    stack.handle_timers(110.5)
    expect(stack, 110.5, probe())  # the first went unanswered
    # The peer answers the second (an ACK with its SND.NXT and our SND.NXT).
    peer.send(ACK, 110.6, ack=Y + 1)
    expect(stack, 110.6)
    # No probe at 120.5: the peer was heard at 110.6, so the next is idle seconds on.
    quiet_until(stack, 210.6)
    stack.handle_timers(210.6)
    expect(stack, 210.6, probe())
    # A full new series of three: the count started again from zero.
    for t in (220.6, 230.6):
        stack.handle_timers(t)
        expect(stack, t, probe())
    stack.handle_timers(240.6)
    expect(stack, 240.6, S("R.", seq=Y + 1))
    assert stack.counters["keepalive_probes"] == 5
    assert names(events(stack))[-1] == "ConnectionTimedOut"


def test_any_segment_restarts_the_idle_time(isn):
    stack, peer, cid = open_passive(isn, **SMALL)
    peer.send(PSH | ACK, 60.0, data=b"hello")
    stack.handle_timers(60.04)
    expect(stack, 60.04, S(".", ack=X + 6))  # the delayed ACK
    assert stack.recv(cid) == b"hello"
    expect(stack, 60.1, S(".", ack=X + 6))  # a window update (an unscaled window)
    quiet_until(stack, 160.0)  # not 100.5
    stack.handle_timers(160.0)
    expect(stack, 160.0, S(".", seq=Y, ack=X + 6, len=0))


def test_no_probe_while_data_is_outstanding_the_rto_governs(isn):
    stack, peer, cid = open_passive(isn, retries=20, **SMALL)
    stack.send(cid, b"d", 95.0)
    expect(stack, 95.0, S("P.", seq=Y + 1, data=b"d"))
    # Retransmissions at 96.5, 99.5, 105.5, 117.5, ...: no keepalive probe in between.
    for t in (96.5, 99.5, 105.5, 117.5):
        quiet_until(stack, t)
        stack.handle_timers(t)
        expect(stack, t, S("P.", seq=Y + 1, data=b"d"))
    assert "keepalive_probes" not in stack.counters
    peer.send(ACK, 118.0, ack=Y + 2)  # acknowledged at last: idle from here
    expect(stack, 118.0)
    # The keepalive timer looked at 100.5 (data outstanding) and again 100 s later.
    quiet_until(stack, 218.0)
    stack.handle_timers(218.0)
    expect(stack, 218.0, S(".", seq=Y + 1, ack=X + 1, len=0))  # SND.UNA - 1 = Y + 1


def test_no_probe_while_data_waits_for_a_zero_window(isn):
    stack, peer, cid = open_passive(isn, window=0, **SMALL)
    stack.send(cid, b"z", 1.0)
    expect(stack, 1.0)
    # Persist probes (RTO 1.5 backing off: 2.5, 5.5, 11.5, 23.5, 47.5, 95.5, 191.5) and
    # nothing else: the keepalive timer at 100.5 finds data queued.
    for t in (2.5, 5.5, 11.5, 23.5, 47.5, 95.5, 191.5):
        quiet_until(stack, t)
        stack.handle_timers(t)
        expect(stack, t, S(".", seq=Y, len=0))
        peer.send(ACK, t, ack=Y + 1, window=0)
        expect(stack, t)
    assert "keepalive_probes" not in stack.counters
    assert stack.counters["window_probes"] == 7


def test_keepalive_in_close_wait(isn):
    stack, peer, cid = open_passive(isn, **SMALL)
    peer.send(FIN | ACK, 10.0)
    expect(stack, 10.0, S(".", ack=X + 2))
    assert stack.state(cid) is State.CLOSE_WAIT
    quiet_until(stack, 110.0)
    stack.handle_timers(110.0)
    expect(stack, 110.0, S(".", seq=Y, ack=X + 2, len=0))


def test_keepalive_in_fin_wait_2(isn):
    stack, peer, cid = open_passive(isn, **SMALL)
    stack.shutdown(cid, 10.0)
    expect(stack, 10.0, S("F.", seq=Y + 1))
    peer.send(ACK, 10.5, ack=Y + 2)
    assert stack.state(cid) is State.FIN_WAIT_2
    quiet_until(stack, 110.5)
    stack.handle_timers(110.5)
    expect(stack, 110.5, S(".", seq=Y + 1, ack=X + 1, len=0))  # SND.UNA - 1, past our FIN
    for t in (120.5, 130.5):
        stack.handle_timers(t)
        expect(stack, t, S(".", seq=Y + 1, len=0))
    stack.handle_timers(140.5)
    expect(stack, 140.5, S("R.", seq=Y + 2))
    assert names(events(stack))[-2:] == ["FIN-WAIT-2->CLOSED", "ConnectionTimedOut"]


def test_keepalive_not_in_fin_wait_1(isn):
    """Our FIN outstanding: the retransmission timer is in charge, not keepalive."""
    stack, _peer, cid = open_passive(isn, retries=30, **SMALL)
    stack.shutdown(cid, 99.5)
    expect(stack, 99.5, S("F.", seq=Y + 1))
    stack.handle_timers(100.5)  # the keepalive timer finds the FIN in flight
    expect(stack, 100.5)
    stack.handle_timers(101.0)
    expect(stack, 101.0, S("F.", seq=Y + 1))  # the RTO's retransmission, 1.5 s on
    assert "keepalive_probes" not in stack.counters
    assert timers(stack, cid, 101.0)["keepalive"] == 99.5  # looks again at 200.5


def test_set_keepalive_per_connection(isn):
    stack, _peer, cid = open_passive(isn)  # off in the config
    assert stack.next_deadline() is None or stack.next_deadline() < 5
    stack.set_keepalive(cid, True, idle=30.0, interval=5.0, probes=2)
    assert timers(stack, cid, 0.5) == {"keepalive": 30.0}  # from the last segment, at 0.5
    quiet_until(stack, 30.5)
    stack.handle_timers(30.5)
    expect(stack, 30.5, probe())
    stack.handle_timers(35.5)
    expect(stack, 35.5, probe())
    # Switched off before it gives up: no more probes, no reset, ever.
    stack.set_keepalive(cid, False)
    stack.handle_timers(10_000.0)
    expect(stack, 10_000.0)
    assert stack.state(cid) is State.ESTABLISHED
    # On again, with the parameters it had; idle counted from `now` when given.
    stack.set_keepalive(cid, True, now=10_000.0)
    assert timers(stack, cid, 10_000.0) == {"keepalive": 30.0}
    stack.handle_timers(10_030.0)
    expect(stack, 10_030.0, probe())


def test_set_keepalive_validates_and_knows_connections(isn):
    stack, _peer, cid = open_passive(isn)
    with pytest.raises(ValueError):
        stack.set_keepalive(cid, True, idle=0)
    with pytest.raises(ValueError):
        stack.set_keepalive(cid, True, probes=0)
    with pytest.raises(KeyError):
        stack.set_keepalive(cid + 100, True)
    with pytest.raises(ValueError):
        TcpConfig(keepalive_interval=-1)
    with pytest.raises(ValueError):
        TcpConfig(user_timeout=0)


def test_keepalive_on_an_active_open(isn):
    stack, _peer, _cid = open_active(isn, **SMALL)  # the SYN-ACK arrived at 0.5
    quiet_until(stack, 100.5)
    stack.handle_timers(100.5)
    expect(stack, 100.5, S(".", seq=Y, ack=X + 1, len=0, sport=50000, dport=80))


# ------------------------------------------------------------------ user timeout

def test_user_timeout_cuts_retransmission_short(isn):
    stack, _peer, cid = open_passive(isn, user_timeout=10.0)
    stack.send(cid, b"u", 10.0)
    expect(stack, 10.0, S("P.", seq=Y + 1))
    for t in (11.5, 14.5):
        quiet_until(stack, t)
        stack.handle_timers(t)
        expect(stack, t, S("P.", seq=Y + 1, data=b"u"))
    # The next retransmission would be at 20.5; the timer is clamped to 10.0 + 10.
    assert stack.next_deadline() == 20.0
    quiet_until(stack, 20.0)
    assert stack.state(cid) is State.ESTABLISHED
    stack.handle_timers(20.0)
    expect(stack, 20.0)  # no reset: as Linux, a retransmission timeout just ends it
    evs = events(stack)
    assert names(evs) == ["ESTABLISHED->CLOSED", "ConnectionTimedOut"]
    assert evs[0].cause == "user timeout"
    assert stack.counters["user_timeouts"] == 1


def test_user_timeout_replaces_the_retry_count(isn):
    """retries=3 would give up at 32.5; a 100 s user timeout keeps retrying until 110."""
    stack, _peer, cid = open_passive(isn, retries=3, user_timeout=100.0)
    stack.send(cid, b"u", 10.0)
    expect(stack, 10.0, S("P.", seq=Y + 1))
    for t in (11.5, 14.5, 20.5, 32.5, 56.5, 104.5):
        quiet_until(stack, t)
        stack.handle_timers(t)
        expect(stack, t, S("P.", seq=Y + 1, data=b"u"))
    assert stack.next_deadline() == 110.0  # 104.5 + 96 clamped to 10 + 100
    stack.handle_timers(110.0)
    expect(stack, 110.0)
    assert names(events(stack))[-1] == "ConnectionTimedOut"


def test_user_timeout_counts_from_the_last_progress(isn):
    stack, peer, cid = open_passive(isn, nagle=False, user_timeout=5.0)
    stack.send(cid, b"a", 10.0)
    expect(stack, 10.0, S("P.", seq=Y + 1))
    stack.send(cid, b"b", 10.1)
    expect(stack, 10.1, S("P.", seq=Y + 2))
    peer.send(ACK, 10.5, ack=Y + 2)  # "a" acknowledged: the stall starts again here
    expect(stack, 10.5)
    # A 0.5 s sample: SRTT 0.5, RTTVAR 0.1875, RTO 1.25, so the timer runs to 11.75.
    assert timers(stack, cid, 10.5) == {"retransmit": 1.25}
    stack.handle_timers(11.75)
    expect(stack, 11.75, S("P.", seq=Y + 2, data=b"b"))
    assert stack.next_deadline() == 14.25  # 11.75 + 2.5, and 10.5 + 5 is later
    stack.handle_timers(14.25)
    expect(stack, 14.25, S("P.", seq=Y + 2, data=b"b"))
    assert stack.next_deadline() == 15.5  # 14.25 + 5 clamped to 10.5 + 5
    stack.handle_timers(15.499)
    assert stack.state(cid) is State.ESTABLISHED
    stack.handle_timers(15.5)
    assert names(events(stack))[-1] == "ConnectionTimedOut"


def test_user_timeout_ends_a_syn_sent(isn):
    isn.set(Y)
    stack = make_stack(user_timeout=5.0)
    cid = stack.connect(tcp_helpers.REMOTE, 80, 0.0, local_port=50000)
    expect(stack, 0.0, S("S", seq=Y))
    for t in (1.0, 3.0):
        stack.handle_timers(t)
        expect(stack, t, S("S", seq=Y))
    assert stack.next_deadline() == 5.0  # 3 + 4 clamped to 0 + 5
    stack.handle_timers(5.0)
    expect(stack, 5.0)
    assert names(events(stack))[-2:] == ["SYN-SENT->CLOSED", "ConnectionTimedOut"]
    assert stack.state(cid) is State.CLOSED


def test_user_timeout_on_a_window_that_stays_shut(isn):
    """RFC 1122 says probe a zero window forever; a user timeout bounds it (Linux 5.10+)."""
    stack, peer, cid = open_passive(isn, window=0, user_timeout=20.0)
    stack.send(cid, b"z" * 100, 10.0)
    expect(stack, 10.0)
    for t in (11.5, 14.5, 20.5):  # the first probe at 11.5 starts the clock
        quiet_until(stack, t)
        stack.handle_timers(t)
        expect(stack, t, S(".", seq=Y, len=0))
        peer.send(ACK, t + 0.1, ack=Y + 1, window=0)  # answered, still shut
        expect(stack, t + 0.1)
    assert stack.next_deadline() == 31.5  # 20.5 + 12 clamped to 11.5 + 20
    stack.handle_timers(31.5)
    expect(stack, 31.5)
    evs = events(stack)
    assert names(evs) == ["ESTABLISHED->CLOSED", "ConnectionTimedOut"]
    assert evs[0].cause == "user timeout"


def test_window_that_reopens_restarts_the_user_timeout_clock(isn):
    stack, peer, cid = open_passive(isn, window=0, user_timeout=20.0)
    stack.send(cid, b"z" * 100, 10.0)
    expect(stack, 10.0)
    stack.handle_timers(11.5)
    expect(stack, 11.5, S(".", seq=Y, len=0))
    peer.send(ACK, 25.0, ack=Y + 1, window=50)  # opens a little
    expect(stack, 25.0, S(".", seq=Y + 1, len=50))
    peer.send(ACK, 25.1, ack=Y + 51, window=0)  # shut again
    expect(stack, 25.1)
    first = None
    while stack.state(cid) is State.ESTABLISHED:
        t = stack._by_id[cid].next_deadline()
        stack.handle_timers(t)
        if drain(stack, t):
            first = t if first is None else first
            peer.send(ACK, t, ack=Y + 51, window=0)
            expect(stack, t)
    # 20 s from the first probe of the new series, not from the one at 11.5.
    assert first > 25.1 and t == pytest.approx(first + 20.0)


def test_user_timeout_with_keepalive(isn):
    """Linux: with a user timeout, keepalive gives up when a probe is out and the peer
    has been silent that long, whatever keepalive_probes says."""
    stack, _peer, _cid = open_passive(isn, user_timeout=145.0, **dict(SMALL, keepalive_probes=9))
    for t in (100.5, 110.5, 120.5, 130.5, 140.5):
        quiet_until(stack, t)
        stack.handle_timers(t)
        expect(stack, t, probe())
    assert stack.next_deadline() == 145.5  # 150.5 clamped to 0.5 + 145
    stack.handle_timers(145.5)
    expect(stack, 145.5, S("R.", seq=Y + 1))
    assert names(events(stack))[-1] == "ConnectionTimedOut"
    assert stack.counters["keepalive_probes"] == 5


def test_user_timeout_shorter_than_idle_still_sends_one_probe(isn):
    stack, _peer, cid = open_passive(isn, user_timeout=30.0, **SMALL)
    stack.handle_timers(100.5)
    expect(stack, 100.5, probe())
    quiet_until(stack, 110.5)  # one interval for the answer
    stack.handle_timers(110.5)
    expect(stack, 110.5, S("R.", seq=Y + 1))
    assert stack.state(cid) is State.CLOSED


def test_set_user_timeout_per_connection(isn):
    stack, _peer, cid = open_passive(isn, retries=3)
    stack.set_user_timeout(cid, 8.0)
    stack.send(cid, b"u", 10.0)
    expect(stack, 10.0, S("P.", seq=Y + 1))
    stack.handle_timers(11.5)
    stack.handle_timers(14.5)
    expect(stack, 14.5, S("P.", seq=Y + 1), S("P.", seq=Y + 1))
    stack.handle_timers(18.0)
    assert stack.state(cid) is State.CLOSED
    # Off again: the retry count rules.
    stack2, _peer2, cid2 = open_passive(isn, user_timeout=1.0, retries=1)
    stack2.set_user_timeout(cid2, None)
    stack2.send(cid2, b"u", 10.0)
    expect(stack2, 10.0, S("P.", seq=Y + 1))
    stack2.handle_timers(11.5)
    assert stack2.state(cid2) is State.ESTABLISHED
    stack2.handle_timers(14.5)
    assert stack2.state(cid2) is State.CLOSED
    with pytest.raises(ValueError):
        stack.set_user_timeout(cid2, -1.0)


def test_user_timeout_set_during_a_stall_counts_from_its_start(isn):
    stack, _peer, cid = open_passive(isn)
    stack.send(cid, b"u", 10.0)
    expect(stack, 10.0, S("P.", seq=Y + 1))
    for t in (11.5, 14.5, 20.5):
        stack.handle_timers(t)
        expect(stack, t, S("P.", seq=Y + 1))
    assert timers(stack, cid, 20.5) == {"retransmit": 12.0}  # next at 32.5
    stack.set_user_timeout(cid, 15.0)  # unacknowledged since 10.0: due at 25.0
    assert stack.next_deadline() == 25.0
    stack.handle_timers(25.0)
    expect(stack, 25.0)
    assert names(events(stack))[-1] == "ConnectionTimedOut"
