"""Loss recovery with SACK, exact ladders on the virtual clock: RACK (RFC 8985 6) and its
reordering timer, tail loss probes (RFC 8985 7), PRR (RFC 6937), undo by D-SACK (RFC 2883,
RFC 3708) and F-RTO (RFC 5682), the timeout that keeps SACK information.

Sender ladders use a peer MSS of 1000, no timestamps and NewReno (tcp_helpers.make_stack),
so every number is round: our data starts at D = 2**32 - 2 and wraps in the first segment.
The handshake's RTT sample is 0.5 s (SRTT 0.5, RTO 1.5); the ten segments of `sender()` go
at 1.0, so an ACK at 1.5 samples 0.5 s again. RACK's min_rtt is then 0.5 and its reordering
window min_rtt / 4 = 0.125 s, or 0 once three segments are SACKed with no reordering seen.
"""

import pytest
import tcp_helpers
from tcp_helpers import (ACK, OUR_ISS, Peer, S, drain, events, expect, family,  # noqa: F401
                         make_stack, open_passive)

from usertcp.stack import Stack
from usertcp.tcp import TcpConfig

D = OUR_ISS + 1
MASK = 2**32 - 1
DATA = bytes(range(250)) * 40

# Every ladder here runs over IPv4 and over IPv6 (tcp_helpers.family).
pytestmark = pytest.mark.usefixtures("family")


def d(n: int) -> int:
    return (D + n) & MASK


def conn(stack, cid):
    return stack._by_id[cid]


def info(stack, cid):
    [row] = [r for r in stack.connections() if r["conn_id"] == cid]
    return row


def sender(isn, nbytes: int = 10000, **config):
    """Passive open, peer MSS 1000, SACK; `nbytes` queued at 1.0, ten segments sent."""
    config.setdefault("sack", True)
    stack, peer, cid = open_passive(isn, mss=1000, sack_permitted=True, **config)
    events(stack)
    stack.send(cid, (DATA * (nbytes // len(DATA) + 1))[:nbytes], 1.0)
    out = drain(stack, 1.0)
    assert [(s.seq - D) & MASK for s in out] == [1000 * i for i in range(10)]
    peer.ack = D
    return stack, peer, cid


def sent(stack, now):
    """Offsets into our data of what the stack sends at `now`."""
    return [(s.seq - D) & MASK for s in drain(stack, now)]


# ------------------------------------------------------------------ RACK

def test_rack_three_sacked_segments_mark_every_earlier_hole_lost(isn):
    """Segments 1 and 4 of 0..9 lost. With one or two segments SACKed, the holes wait out
    the reordering window; with three SACKed and no reordering seen the window is 0, so
    every unSACKed segment sent no later than a delivered one is lost at once: both holes
    (RFC 6675 would wait for three segments above the second). PRR paces the repairs."""
    stack, peer, cid = sender(isn)
    peer.ack = d(1000)
    peer.send(ACK, 1.5)  # segment 0: cwnd 11000, nothing new to send
    assert sent(stack, 1.5) == []
    peer.send(ACK, 1.5, sack=[(d(2000), d(3000))])
    assert sent(stack, 1.5) == []
    assert conn(stack, cid).reo_at == 1.625  # sent at 1.0 + RACK.rtt 0.5 + reo_wnd 0.125
    peer.send(ACK, 1.5, sack=[(d(2000), d(4000))])
    assert sent(stack, 1.5) == []
    peer.send(ACK, 1.5, sack=[(d(5000), d(6000)), (d(2000), d(4000))])
    # Both holes lost; recovery: ssthresh = 9000 in flight / 2. PRR: pipe = 9000 - 3000
    # SACKed - 2000 lost = 4000 < ssthresh, so the slow start reduction bound gives
    # min(4500 - 4000, ...) = 500, made one segment because nothing was sent yet.
    expect(stack, 1.5, S(".", seq=d(1000), len=1000, data=DATA[1000:2000]))
    row = info(stack, cid)
    assert (row["ssthresh"], row["cwnd"], row["lost"]) == (4500, 5000, 2000)
    assert stack.counters["rack_lost"] == 2
    assert stack.counters["sack_recoveries"] == 1
    # One more SACKed: prr_delivered 2000, prr_out 1000, pipe 4000: cwnd 4500 lets the
    # second hole go.
    peer.send(ACK, 1.5, sack=[(d(5000), d(7000)), (d(2000), d(4000))])
    expect(stack, 1.5, S(".", seq=d(4000), len=1000))
    # Nothing lost is left and no new data is queued: nothing more goes.
    for right in (8000, 9000):
        peer.send(ACK, 1.5, sack=[(d(5000), d(right)), (d(2000), d(4000))])
        assert sent(stack, 1.5) == []
    peer.ack = d(4000)
    peer.send(ACK, 1.75, sack=[(d(5000), d(10000))])  # the first repair arrived
    assert sent(stack, 1.75) == [] and conn(stack, cid).in_recovery
    peer.ack = d(10000)
    peer.send(ACK, 2.0)  # RecoveryPoint acknowledged: cwnd = ssthresh (RFC 6937)
    assert sent(stack, 2.0) == []
    row = info(stack, cid)
    assert not row["in_recovery"] and row["cwnd"] == 4500
    assert stack.counters["retransmits"] == 2 and stack.counters["rto_expired"] == 0


def test_rack_reordering_timer_expires_exactly(isn):
    """One segment SACKed above a hole: the hole is lost when RACK.rtt plus the reordering
    window has passed since it was sent (1.0 + 0.5 + 0.125), not a moment before."""
    stack, peer, cid = sender(isn)
    peer.ack = d(1000)
    peer.send(ACK, 1.5)
    peer.send(ACK, 1.5, sack=[(d(2000), d(3000))])
    assert sent(stack, 1.5) == []
    assert conn(stack, cid).reo_at == 1.625
    stack.handle_timers(1.624)
    assert sent(stack, 1.624) == []
    stack.handle_timers(1.625)
    expect(stack, 1.625, S(".", seq=d(1000), len=1000))
    assert conn(stack, cid).in_recovery and stack.counters["rack_lost"] == 1


def test_reordering_seen_keeps_a_reordering_window(isn):
    """Once a never-retransmitted segment fills a hole below what was SACKed (reordering),
    three SACKed segments no longer make a hole lost at once: it waits min_rtt / 4."""
    stack, peer, cid = sender(isn)
    peer.ack = d(1000)
    peer.send(ACK, 1.5)
    peer.send(ACK, 1.5, sack=[(d(2000), d(3000))])
    peer.ack = d(3000)
    peer.send(ACK, 1.55)  # the original of [1000, 2000) arrives late: reordering
    assert conn(stack, cid).rack.reord
    for right in (5000, 6000, 7000):
        peer.send(ACK, 1.6, sack=[(d(4000), d(right))])
        assert sent(stack, 1.6) == []
    # RACK.rtt is now 0.6 (sent at 1.0, delivered at 1.6): 1.0 + 0.6 + 0.125.
    assert conn(stack, cid).reo_at == pytest.approx(1.725)
    stack.handle_timers(1.725)
    expect(stack, 1.725, S(".", seq=d(3000), len=1000))


def test_lost_retransmission_is_found_by_time(isn):
    """The retransmission of segment 0 is lost in its turn. RACK finds it when a segment
    sent after it (12000, at 1.75) is SACKed, once: no RTO. The retransmission went at the
    same `now` as the limited-transmit segments 10000 and 11000 but after them, and the
    scoreboard stamps it so: their SACKs do not condemn it."""
    stack, peer, _cid = sender(isn, nbytes=30000)
    out = []
    for right in (2000, 3000, 4000):
        peer.send(ACK, 1.5, sack=[(d(1000), d(right))])
        out.append(sent(stack, 1.5))
    assert out == [[10000], [11000], [0]]  # two limited transmits, then the repair
    out = []
    for right in range(5000, 15000, 1000):
        peer.send(ACK, 1.75, sack=[(d(1000), d(right))])
        out.append(sent(stack, 1.75))
    # PRR sends every other ACK while pipe > ssthresh (6000), then keeps pipe at it;
    # segment 0 goes again only when 12000 is SACKed (right edge 13000).
    assert out == [[], [12000], [], [], [13000], [14000], [15000], [16000], [0, 17000],
                   [18000]]
    assert stack.counters["retransmits"] == 2
    assert stack.counters["rto_expired"] == 0


# ------------------------------------------------------------------ tail loss probe

def test_tail_loss_probe_instead_of_a_timeout(isn):
    """Segments 8 and 9 lost, nothing after them: at PTO = 2 * SRTT after the last ACK a
    probe resends the last segment; its SACK lets RACK find segment 8. No RTO."""
    stack, peer, cid = sender(isn)
    for k in (2000, 4000, 6000, 8000):
        peer.ack = d(k)
        peer.send(ACK, 1.5)
    assert sent(stack, 1.5) == []
    assert conn(stack, cid).tlp_at == 2.5 and conn(stack, cid).rto_at == 2.75
    stack.handle_timers(2.499)
    assert sent(stack, 2.499) == []
    stack.handle_timers(2.5)
    expect(stack, 2.5, S("P.", seq=d(9000), len=1000))
    assert stack.counters["tlp_probes"] == 1
    assert conn(stack, cid).rto_at == 3.75  # the RTO (1.25 now) guards the probe
    peer.send(ACK, 3.0, sack=[(d(9000), d(10000))])
    expect(stack, 3.0, S(".", seq=d(8000), len=1000))
    peer.ack = d(10000)
    peer.send(ACK, 3.5)
    assert sent(stack, 3.5) == []
    row = info(stack, cid)
    assert row["tlp_probes"] == 1 and row["rtos"] == 0
    assert stack.counters["rto_expired"] == 0


def test_tail_loss_probe_sends_new_data_when_the_window_allows(isn):
    """No ACK at all after the first flight, more data queued: the probe is the next new
    segment (RFC 8985 7.3), sent past cwnd, then the RTO is armed from it."""
    stack, _peer, cid = sender(isn, nbytes=20000)
    assert conn(stack, cid).tlp_at == 2.0  # 2 * SRTT from 1.0, before the RTO at 2.5
    stack.handle_timers(2.0)
    expect(stack, 2.0, S(".", seq=d(10000), len=1000))
    assert conn(stack, cid).rto_at == 3.5 and conn(stack, cid).tlp_at is None
    stack.handle_timers(3.5)  # the probe too went unanswered: now the timeout
    expect(stack, 3.5, S(".", seq=d(0), len=1000))
    assert stack.counters["tlp_probes"] == 1 and stack.counters["rto_expired"] == 1


# ------------------------------------------------------------------ PRR

def test_prr_proportional_then_slow_start_reduction_bound(isn):
    """One loss among twelve in flight: RecoverFS 12000, ssthresh 6000. While pipe is above
    ssthresh PRR sends in proportion, one segment for every two delivered (the first at
    once); once pipe reaches ssthresh it sends as much as is delivered."""
    stack, peer, cid = sender(isn, nbytes=40000)
    out, cwnds = [], []
    for right in range(2000, 12000, 1000):
        peer.send(ACK, 1.5, sack=[(d(1000), d(right))])
        out.append(sent(stack, 1.5))
        cwnds.append(info(stack, cid)["cwnd"])
    assert out == [[10000], [11000], [0], [], [12000], [], [], [13000], [14000], [15000]]
    assert info(stack, cid)["ssthresh"] == 6000
    # cwnd = pipe + sndcnt on each ACK (Linux's form of RFC 6937)
    assert cwnds[2:] == [9000, 8000, 7500, 7000, 6000, 6000, 6000, 6000]


# ------------------------------------------------------------------ undo

def test_dsack_undoes_a_spurious_fast_retransmit(isn):
    """Reordering, not loss: segment 1 is retransmitted, then its original arrives and the
    peer reports the retransmission as a duplicate (D-SACK below the ACK). Every
    retransmission of the episode was spurious: cwnd and ssthresh go back (RFC 3708)."""
    stack, peer, cid = sender(isn)
    peer.ack = d(1000)
    peer.send(ACK, 1.5)
    before = info(stack, cid)["cwnd"]
    for right in (3000, 4000, 5000):
        peer.send(ACK, 1.5, sack=[(d(2000), d(right))])
    expect(stack, 1.5, S(".", seq=d(1000), len=1000))
    assert info(stack, cid)["ssthresh"] == 4500
    peer.ack = d(5000)
    peer.send(ACK, 1.6)
    peer.send(ACK, 1.7, sack=[(d(1000), d(2000))])  # D-SACK: below SND.UNA
    row = info(stack, cid)
    assert not row["in_recovery"]
    assert (row["cwnd"], row["ssthresh"]) == (before, 1 << 30)
    assert row["spurious_undone"] == 1
    assert stack.counters["dsack_received"] == 1 and stack.counters["spurious_undo"] == 1


def test_dsack_of_an_original_undoes_nothing(isn):
    """A D-SACK for data that was never retransmitted (the network duplicated it) says
    nothing about our retransmissions."""
    stack, peer, cid = sender(isn)
    peer.ack = d(1000)
    peer.send(ACK, 1.5)
    for right in (3000, 4000, 5000):
        peer.send(ACK, 1.5, sack=[(d(2000), d(right))])
    drain(stack, 1.5)
    peer.send(ACK, 1.6, sack=[(d(0), d(1000)), (d(2000), d(5000))])
    row = info(stack, cid)
    assert row["in_recovery"] and row["spurious_undone"] == 0
    assert stack.counters["dsack_received"] == 1


def test_frto_undoes_a_spurious_timeout(isn):
    """The probe and then the RTO fire (the ACKs were only late); the first ACK after the
    timeout's retransmission covers segments never retransmitted: the originals arrived,
    the timeout was spurious (F-RTO): cwnd and ssthresh are restored."""
    stack, peer, cid = sender(isn)
    stack.handle_timers(2.0)
    expect(stack, 2.0, S("P.", seq=d(9000), len=1000))  # the probe: the last segment
    stack.handle_timers(3.499)
    assert sent(stack, 3.499) == []
    stack.handle_timers(3.5)
    expect(stack, 3.5, S(".", seq=d(0), len=1000))
    row = info(stack, cid)
    assert (row["cwnd"], row["ssthresh"], row["rtos"]) == (1000, 5000, 1)
    peer.ack = d(3000)
    peer.send(ACK, 3.6)
    row = info(stack, cid)
    assert row["ssthresh"] == 1 << 30 and row["cwnd"] == 10000 + 3000
    assert not row["in_recovery"]
    assert stack.counters["spurious_rto"] == 1


def test_genuine_timeout_keeps_sack_and_resends_the_holes_in_order(isn):
    """After an RTO everything unSACKed is lost, but what the peer SACKed stays SACKed (as
    Linux keeps it): slow start from one segment resends the holes, skipping [2000, 4000).
    The first ACK covers only the retransmission: F-RTO calls the timeout genuine."""
    stack, peer, cid = sender(isn)
    peer.send(ACK, 1.5, sack=[(d(2000), d(4000))])
    stack.handle_timers(1.625)  # the reordering window: [0, 2000) lost, recovery
    expect(stack, 1.625, S(".", seq=d(0), len=1000))
    assert conn(stack, cid).in_recovery
    stack.handle_timers(3.124)  # the repair of SND.UNA restarted the RTO: 1.625 + 1.5
    assert sent(stack, 3.124) == []
    stack.handle_timers(3.125)
    expect(stack, 3.125, S(".", seq=d(0), len=1000))
    row = info(stack, cid)
    assert (row["cwnd"], row["lost"], row["sacked"]) == (1000, 8000, 2000)
    peer.ack = d(1000)
    peer.send(ACK, 3.5, sack=[(d(2000), d(4000))])
    expect(stack, 3.5, S(".", seq=d(1000), len=1000), S(".", seq=d(4000), len=1000))
    peer.ack = d(2000)
    peer.send(ACK, 4.0, sack=[(d(2000), d(4000))])
    expect(stack, 4.0, S(".", seq=d(5000), len=1000), S(".", seq=d(6000), len=1000))
    assert stack.counters["spurious_rto"] == 0 and stack.counters["rto_expired"] == 1


# ------------------------------------------------------------------ offload

def test_tso_recovery_retransmits_one_mss(isn, family):
    """With segmentation offload and timestamps: 9 of the 10 wire segments of a super-segment
    arrive; RACK calls the first lost at once (nine SACKed, no reordering seen) and the
    repair is one 1448-byte segment (1428 over IPv6); PRR lets new data follow one MSS at a
    time."""
    mss = 1448 if family == 4 else 1428
    stack, peer, cid = open_passive(isn, sack=True, timestamps=True, sack_permitted=True,
                                    ts=1000, tso_max=65535 - 80, mss=mss + 12)
    events(stack)
    stack.send(cid, bytes(100000), 1.0)
    expect(stack, 1.0, S(".", seq=D, len=10 * mss))
    peer.ack = D
    peer.ts_val = 1600
    peer.send(ACK, 1.5, sack=[(d(mss), d(10 * mss))])
    out = drain(stack, 1.5)
    assert (out[0].seq, len(out[0].payload)) == (D, mss)
    assert all(len(s.payload) <= mss and s.ts_val is not None for s in out)
    assert stack.counters["rack_lost"] == 1


# ------------------------------------------------------------------ congestion control

def test_cubic_is_the_default_and_selectable_per_connection(isn):
    stack = Stack(tcp_helpers.LOCAL, config=TcpConfig(isn_secret=b"x"))
    assert stack.config.congestion == "cubic"
    stack.listen(80)
    peer = Peer(stack, port=40000, iss=1000)
    peer.syn(0.0, mss=1000, sack_permitted=True)
    [synack] = drain(stack, 0.0)
    peer.took(synack)
    peer.send(ACK, 0.1)
    [cid] = [e.conn_id for e in events(stack) if type(e).__name__ == "ConnectionAccepted"]
    assert info(stack, cid)["congestion"] == "cubic"
    stack.set_congestion(cid, "newreno")
    assert info(stack, cid)["congestion"] == "newreno"
    with pytest.raises(ValueError, match="unknown congestion control 'bbr'"):
        stack.set_congestion(cid, "bbr")
    with pytest.raises(ValueError, match="choose one of cubic, newreno"):
        TcpConfig(congestion="vegas")


def test_cubic_reduces_to_seven_tenths(isn):
    """With CUBIC a loss sets ssthresh = 0.7 * cwnd (RFC 9438 4.6), not half the flight."""
    stack, peer, cid = sender(isn, congestion="cubic")
    peer.ack = d(1000)
    peer.send(ACK, 1.5)
    cwnd = info(stack, cid)["cwnd"]
    for right in (3000, 4000, 5000):
        peer.send(ACK, 1.5, sack=[(d(2000), d(right))])
    drain(stack, 1.5)
    assert info(stack, cid)["ssthresh"] == cwnd * 7 // 10


def test_connection_table_shows_the_recovery_counters(isn):
    stack, _peer, cid = sender(isn)
    row = info(stack, cid)
    for key in ("congestion", "rtos", "tlp_probes", "rack_lost", "spurious_undone", "lost",
                "sacked", "in_recovery"):
        assert key in row
    assert "loss_probe" in row["timers"]


def test_no_sack_keeps_newreno_without_rack(isn):
    """Without SACK there is no scoreboard to time: NewReno's dup ACKs, no probes."""
    stack, peer, cid = open_passive(isn, mss=1000, sack=True, sack_permitted=False)
    events(stack)
    stack.send(cid, bytes(10000), 1.0)
    drain(stack, 1.0)
    c = conn(stack, cid)
    assert c.board is None and c.tlp_at is None
    peer.ack = D
    for _ in range(3):
        peer.send(ACK, 1.5)
    expect(stack, 1.5, S(".", seq=D, len=1000))
    assert info(stack, cid)["cwnd"] == 5000 + 3000  # ssthresh + 3 * MSS (RFC 6582)


def test_make_stack_is_newreno():
    assert make_stack().config.congestion == "newreno"
