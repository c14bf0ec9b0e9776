"""Congestion control modules (NewReno, CUBIC with HyStart++) on a fake connection and a
virtual clock. Expected numbers are worked out by hand from the RFC formulas in each test;
sequence numbers start just below 2**32 so every test crosses the wrap."""

import itertools
import re
from types import SimpleNamespace

import pytest

from usertcp.tcp import congestion
from usertcp.tcp.congestion import INFINITE_SSTHRESH

MSS = 1000
MASK = 0xFFFFFFFF
BASE = (1 << 32) - 3000
K100 = 4.217163326508746  # cbrt((100 - 70) / 0.4) = cbrt(75): W_max 100, cwnd_epoch 70 segments
ALPHA = 0.5294117647058824  # 3 * (1 - 0.7) / (1 + 0.7)


def make(name, mss=MSS):
    cc = congestion.create(name)
    conn = SimpleNamespace(cwnd=0, ssthresh=0, snd_mss=mss, snd_una=BASE, snd_max=BASE)
    cc.on_init(conn, 0.0)
    return cc, conn


def ack(cc, conn, nbytes, now, rtt=None):
    """SND.UNA advances by nbytes (SND.MAX follows if it was overtaken), then on_ack."""
    conn.snd_una = (conn.snd_una + nbytes) & MASK
    if ((conn.snd_max - conn.snd_una) & MASK) >= 1 << 31:
        conn.snd_max = conn.snd_una
    cc.on_ack(conn, nbytes, rtt, now)


def send(conn, nbytes):
    conn.snd_max = (conn.snd_max + nbytes) & MASK


# -- the factory ------------------------------------------------------------------------------

def test_create_names_and_unknown():
    assert congestion.ALGORITHMS == ("cubic", "newreno")
    assert congestion.DEFAULT == "cubic"
    for name in congestion.ALGORITHMS:
        cc = congestion.create(name)
        assert cc.name == name
        assert congestion.create(name) is not cc  # one per connection
    msg = "unknown congestion control 'bogus'; choose one of cubic, newreno"
    with pytest.raises(ValueError, match=re.escape(msg)):
        congestion.create("bogus")


@pytest.mark.parametrize("name", ["cubic", "newreno"])
def test_on_init_initial_window_and_infinite_ssthresh(name):
    _cc, conn = make(name, mss=1448)
    assert conn.cwnd == 14480 and conn.ssthresh == 1 << 30 == INFINITE_SSTHRESH
    cc4 = congestion.create(name, initial_window=4)
    cc4.on_init(conn, 0.0)
    assert conn.cwnd == 4 * 1448


# -- NewReno ------------------------------------------------------------------------------------

def test_newreno_slow_start_by_bytes_acked_without_limit():
    cc, conn = make("newreno")
    ack(cc, conn, 3000, 1.0)
    assert conn.cwnd == 13000
    ack(cc, conn, 44 * MSS, 1.1)  # one offloaded ACK: all 44 segments count (no RFC 3465 L)
    assert conn.cwnd == 57000
    assert cc.info() == {}


def test_newreno_congestion_avoidance_arithmetic():
    cc, conn = make("newreno")
    conn.ssthresh = 10000
    ack(cc, conn, 1000, 1.0)  # cwnd == ssthresh: avoidance, mss * mss // cwnd
    assert conn.cwnd == 10100
    ack(cc, conn, 5000, 1.1)  # per ACK, whatever it covers
    assert conn.cwnd == 10100 + 1000000 // 10100 == 10199
    conn.cwnd = conn.ssthresh = 3_000_000
    ack(cc, conn, 1000, 1.2)  # 1000 * 1000 // 3e6 == 0: at least one byte
    assert conn.cwnd == 3_000_001


def test_newreno_ssthresh_is_half_the_flight_across_the_wrap():
    cc, conn = make("newreno")
    conn.cwnd = 40000
    conn.snd_una = (1 << 32) - 5000
    conn.snd_max = 20000  # flight 25000, across 2**32
    cc.on_congestion(conn, 1.0)
    assert conn.ssthresh == 12500
    assert conn.cwnd == 40000  # PRR's business, not ours
    cc.on_recovery_end(conn, 1.5)
    assert conn.cwnd == 12500
    conn.snd_max = (conn.snd_una + 1500) & MASK  # small flight: 2 SMSS floor
    cc.on_congestion(conn, 2.0)
    assert conn.ssthresh == 2000


def test_newreno_rto_and_undo():
    cc, conn = make("newreno")
    conn.cwnd, conn.ssthresh = 30000, 50000
    send(conn, 24000)
    cc.on_rto(conn, 1.0, True)
    assert (conn.cwnd, conn.ssthresh) == (1000, 12000)
    cc.on_rto(conn, 3.0, False)  # a later expiry: ssthresh stays
    assert (conn.cwnd, conn.ssthresh) == (1000, 12000)
    cc.undo(conn)  # spurious (F-RTO): back to before the first expiry
    assert (conn.cwnd, conn.ssthresh) == (30000, 50000)
    conn.cwnd, conn.ssthresh = 5000, 6000
    cc.undo(conn)  # nothing saved any more
    assert (conn.cwnd, conn.ssthresh) == (5000, 6000)
    conn.cwnd, conn.ssthresh = 30000, 50000
    cc.on_congestion(conn, 5.0)
    conn.cwnd = 40000  # grew past the saved window since: undo never lowers it
    cc.undo(conn)
    assert (conn.cwnd, conn.ssthresh) == (40000, 50000)


def test_undo_with_nothing_saved_does_nothing():
    for name in congestion.ALGORITHMS:
        cc, conn = make(name)
        before = dict(vars(conn)), cc.info()
        cc.undo(conn)
        assert (dict(vars(conn)), cc.info()) == before


# -- CUBIC: reduction ----------------------------------------------------------------------------

def test_cubic_ssthresh_is_seven_tenths_of_cwnd():
    cc, conn = make("cubic")
    conn.cwnd = 100000
    send(conn, 60000)  # flight does not matter to CUBIC
    cc.on_congestion(conn, 1.0)
    assert conn.ssthresh == 70000 and conn.cwnd == 100000
    assert cc.info()["w_max"] == 100000
    cc, conn = make("cubic", mss=10)
    conn.cwnd = 30  # 30 * 0.7 is 20.999999999999996 in floating point; floor(21) is meant
    cc.on_congestion(conn, 1.0)
    assert conn.ssthresh == 21
    conn.cwnd = 25
    cc.on_congestion(conn, 2.0)
    assert conn.ssthresh == 20  # 2 SMSS floor (17 otherwise)


def test_cubic_fast_convergence_lowers_w_max():
    cc, conn = make("cubic")
    conn.cwnd = 100000
    cc.on_congestion(conn, 1.0)
    assert cc.info()["w_max"] == 100000
    cc.on_recovery_end(conn, 1.2)
    conn.cwnd = 90000  # the next loss comes below the previous W_max
    cc.on_congestion(conn, 5.0)
    assert cc.info()["w_max"] == 76500  # 90000 * (1 + 0.7) / 2
    assert conn.ssthresh == 63000
    cc.on_recovery_end(conn, 5.2)
    conn.cwnd = 80000  # above W_max 76500 now: no fast convergence
    cc.on_congestion(conn, 9.0)
    assert cc.info()["w_max"] == 80000


# -- CUBIC: the curve -----------------------------------------------------------------------------

def after_loss_from_100_segments():
    """Loss at cwnd 100 segments (W_max 100), recovery ends at 70; epoch starts at t = 10.0."""
    cc, conn = make("cubic")
    conn.cwnd = 100000
    cc.on_congestion(conn, 9.0)
    cc.on_recovery_end(conn, 9.5)
    assert conn.cwnd == conn.ssthresh == 70000
    ack(cc, conn, MSS, 10.0, 0.1)
    # At t = 0 the curve is at cwnd_epoch and W_est one ACK ahead: Reno-friendly,
    # cwnd = W_est = 70000 + 0.5294 * 1000 * 1000 / 70000 = 70007.56.
    assert conn.cwnd == 70007
    info = cc.info()
    assert info["phase"] == "ca" and info["w_max"] == 100000 and info["k"] == round(K100, 3)
    return cc, conn


def test_cubic_curve_returns_to_w_max_at_k():
    # ACKing a whole window at once moves cwnd all the way to the target
    # W_cubic(t + RTT) = 1000 * (0.4 * (t + 0.1 - K)**3 + 100) bytes, K = 4.2172 s.
    cc, conn = after_loss_from_100_segments()
    expected = [
        (11.0, 87884),  # t + RTT = 1.1: 100 - 0.4 * 3.1172**3 = 87.8846 segments
        (12.0, 96204),  # 2.1: 100 - 0.4 * 2.1172**3 = 96.2040
        (13.0, 99442),  # 3.1: 100 - 0.4 * 1.1172**3 = 99.4423
    ]
    for now, cwnd in expected:
        ack(cc, conn, conn.cwnd, now, 0.1)
        assert conn.cwnd == cwnd, now
    ack(cc, conn, conn.cwnd, 10.0 + K100 - 0.1, 0.1)  # t + RTT = K: back at W_max
    assert abs(conn.cwnd - 100000) <= 1  # 99999.99... in floating point may floor to 99999
    # Whole numbers from here on: a float a hair below one floors to one byte less.
    ack(cc, conn, conn.cwnd, 10.0 + K100 + 0.9, 0.1)  # K + 1: 100 + 0.4 * 1 = 100.4
    assert abs(conn.cwnd - 100400) <= 1
    ack(cc, conn, conn.cwnd, 10.0 + K100 + 1.9, 0.1)  # K + 2: 100 + 0.4 * 8 = 103.2
    assert abs(conn.cwnd - 103200) <= 1


def test_cubic_grows_concave_then_convex():
    # An ACK-clocked flow: RTT 100 ms, one ACK per segment, spread over each RTT.
    cc, conn = after_loss_from_100_segments()
    now, per_second = 10.0, [conn.cwnd]
    while now < 18.0:
        n = conn.cwnd // MSS
        for i in range(n):
            ack(cc, conn, MSS, now + 0.1 * (i + 1) / n, 0.1)
        now = round(now + 0.1, 9)
        if abs(now - round(now)) < 1e-6:
            per_second.append(conn.cwnd)
    gains = [b - a for a, b in itertools.pairwise(per_second)]
    assert all(w < 100000 for w in per_second[:4])  # below W_max until about K = 4.2 s
    assert gains[0] > gains[1] > gains[2] > gains[3] > 0  # concave: slowing towards W_max
    assert gains[4] < gains[5] < gains[6]  # convex: probing faster and faster
    assert 120000 < per_second[8] < 123400  # just behind W_cubic(8.1) = 123.4 segments


def test_cubic_reno_friendly_region_dominates_on_short_rtt():
    # RTT 1 ms: Reno's 0.53 segment per RTT is 530 segments/s, the curve near t = 0 only
    # 3 * 0.4 * K**2 = 21 segments/s. Whole-window ACKs, 1 ms apart.
    cc, conn = make("cubic")
    conn.cwnd = 100000
    cc.on_congestion(conn, 9.0)
    cc.on_recovery_end(conn, 9.5)
    for i in range(20):
        ack(cc, conn, conn.cwnd, 10.0 + i * 0.001, 0.001)
    assert conn.cwnd == 80588  # 70000 + 20 * 529.41, W_est + alpha_cubic * SMSS each
    for i in range(20, 57):
        ack(cc, conn, conn.cwnd, 10.0 + i * 0.001, 0.001)
    assert conn.cwnd == 100176  # 70000 + 57 * 529.41: W_est has reached cwnd_prior ...
    ack(cc, conn, conn.cwnd, 10.057, 0.001)
    assert conn.cwnd == 101176  # ... so alpha is 1 from now on: one SMSS per window


def test_cubic_target_clamped_to_one_and_a_half_cwnd():
    cc, conn = after_loss_from_100_segments()
    ack(cc, conn, conn.cwnd, 40.0, 0.1)  # W_cubic(30.1) is about 6900 segments
    assert conn.cwnd == 105010  # 1.5 * 70007
    ack(cc, conn, conn.cwnd, 40.1, 0.1)
    assert conn.cwnd == 157515  # 1.5 * 105010


def test_cubic_never_grows_past_the_target():
    cc, conn = after_loss_from_100_segments()
    ack(cc, conn, 2 * conn.cwnd, 11.0, 0.1)  # a stretch ACK of two windows (after an undo, say)
    assert conn.cwnd == 87884  # W_cubic(1.1), not 70007 + 2 * (87884 - 70007)


def test_cubic_no_growth_while_cwnd_above_the_curve():
    cc, conn = after_loss_from_100_segments()
    conn.cwnd = 99000  # above W_cubic(1.1) = 87884, and far above W_est
    ack(cc, conn, conn.cwnd, 11.0, 0.1)
    assert conn.cwnd == 99000


def test_cubic_undo_restores_window_threshold_and_curve():
    cc, conn = after_loss_from_100_segments()
    ack(cc, conn, conn.cwnd, 11.0, 0.1)
    conn.cwnd = 90000
    cc.on_congestion(conn, 12.0)  # below W_max: fast convergence
    assert (conn.ssthresh, cc.info()["w_max"]) == (63000, 76500)
    conn.cwnd = 50000  # what PRR made of it meanwhile
    cc.undo(conn)  # D-SACK: the retransmission was spurious
    assert (conn.cwnd, conn.ssthresh) == (90000, 70000)
    assert cc.info() == {"phase": "ca", "w_max": 100000, "k": round(K100, 3), "min_rtt": 0.1}
    ack(cc, conn, conn.cwnd, 13.0, 0.1)  # the old epoch (10.0) goes on: W_cubic(3.1)
    assert conn.cwnd == 99442


def test_cubic_rto_collapses_and_reduces_only_on_first():
    cc, conn = after_loss_from_100_segments()
    ack(cc, conn, conn.cwnd, 11.0, 0.1)
    assert conn.cwnd == 87884
    cc.on_rto(conn, 12.0, True)
    assert (conn.cwnd, conn.ssthresh) == (1000, 61518)  # floor(87884 * 0.7)
    assert cc.info()["phase"] == "ss"
    cc.on_rto(conn, 14.0, False)
    assert (conn.cwnd, conn.ssthresh) == (1000, 61518)
    # Slow start stops at ssthresh; the rest of a big cumulative ACK goes to avoidance,
    # whose first epoch after a timeout has K = 0 and W_max = cwnd_epoch (RFC 9438 4.8).
    ack(cc, conn, 70000, 15.0, 0.1)
    assert cc.info()["w_max"] == 61518 and cc.info()["k"] == 0
    # W_est = 61518 + 0.5294 * 9482 * 1000 / 61518 = 61599.6 > W_cubic(0) = 61518
    assert conn.cwnd == 61599
    cc.undo(conn)
    assert (conn.cwnd, conn.ssthresh) == (87884, 70000)
    assert cc.info()["w_max"] == 100000


# -- HyStart++ -------------------------------------------------------------------------------------

def acks(cc, conn, rtts, now):
    """One ACK per segment, with these RTT samples (None: no sample); the new time."""
    for rtt in rtts:
        ack(cc, conn, MSS, now, rtt)
        now += 0.001
    return now


def round_of(cc, conn, rtts, now):
    """One round: len(rtts) segments in flight, and their ACKs."""
    conn.snd_max = (conn.snd_una + len(rtts) * MSS) & MASK
    return acks(cc, conn, rtts, now)


def test_hystart_delay_increase_enters_css_then_congestion_avoidance():
    cc, conn = make("cubic")
    now = round_of(cc, conn, [0.100] * 10, 1.0)
    assert conn.cwnd == 20000 and cc.info()["phase"] == "ss"
    # Threshold max(4 ms, min(100 / 8, 16 ms)) = 12.5 ms: 113 ms >= 112.5 ms. The 8th sample
    # decides, after that ACK's own slow-start growth; two more ACKs grow by 1/4.
    send(conn, 10 * MSS)
    now = acks(cc, conn, [0.113] * 7, now)
    assert conn.cwnd == 27000 and cc.info()["phase"] == "ss"
    now = acks(cc, conn, [0.113] * 3, now)
    assert conn.cwnd == 28500 and cc.info()["phase"] == "css"
    # That round ended in CSS (1 of 5); four more rounds of 10 ACKs at 250 bytes each.
    for rnd in range(2, 5):
        now = round_of(cc, conn, [0.113] * 10, now)
        assert conn.cwnd == 28500 + 2500 * (rnd - 1) and cc.info()["phase"] == "css"
        assert conn.ssthresh == INFINITE_SSTHRESH
    now = round_of(cc, conn, [0.113] * 10, now)
    assert conn.cwnd == conn.ssthresh == 38500
    assert cc.info()["phase"] == "ca"
    ack(cc, conn, MSS, now, 0.113)  # avoidance: a curve flat at the exit window, K = 0
    assert cc.info()["w_max"] == 38500 and cc.info()["k"] == 0
    assert conn.cwnd < 38600


def test_hystart_rtt_falling_below_baseline_resumes_slow_start():
    cc, conn = make("cubic")
    now = round_of(cc, conn, [0.100] * 10, 1.0)
    now = round_of(cc, conn, [0.120] * 10, now)  # CSS at the 8th ACK: 27000 + 1000 + 2 * 250
    assert conn.cwnd == 28500 and cc.info()["phase"] == "css"
    # Next round's minimum 105 ms < baseline 120 ms: after 8 samples, slow start again.
    now = round_of(cc, conn, [0.105] * 10, now)
    assert conn.cwnd == 28500 + 8 * 250 + 2 * 1000 and cc.info()["phase"] == "ss"
    now = round_of(cc, conn, [0.105] * 10, now)
    assert conn.cwnd == 42500 and conn.ssthresh == INFINITE_SSTHRESH


def test_hystart_fewer_than_eight_samples_never_trigger():
    cc, conn = make("cubic")
    now = round_of(cc, conn, [0.100] * 10, 1.0)
    now = round_of(cc, conn, [0.300] * 7, now)  # a short round: 7 samples only
    now = round_of(cc, conn, [0.300] * 7 + [None] * 20, now)  # ACKs without a sample
    assert cc.info()["phase"] == "ss"
    assert conn.cwnd == 20000 + 7000 + 27000
    now = round_of(cc, conn, [0.100] * 10, now)
    now = round_of(cc, conn, [0.112] * 10, now)  # 8+ samples, but 112 < 100 + 12.5 ms
    assert cc.info()["phase"] == "ss"
    round_of(cc, conn, [0.127] * 10, now)  # against this last round: 127 >= 112 + 14 ms
    assert cc.info()["phase"] == "css"


def test_hystart_uses_the_round_minimum():
    cc, conn = make("cubic")
    now = round_of(cc, conn, [0.100] * 10, 1.0)
    # One quick sample in the round is enough to show the queue is not building.
    now = round_of(cc, conn, [0.200] * 7 + [0.105] + [0.200] * 12, now)
    assert cc.info()["phase"] == "ss" and conn.cwnd == 40000
    assert cc.info()["min_rtt"] == 0.100


@pytest.mark.parametrize("last, rise, enters", [
    (0.020, 0.0039, False), (0.020, 0.0041, True),  # 20 / 8 = 2.5 ms: clamped up to 4 ms
    (0.200, 0.0159, False), (0.200, 0.0161, True),  # 200 / 8 = 25 ms: clamped down to 16 ms
    (0.125, 0.015625, True),  # exactly last + last / 8 (all exact in binary): >= enters
])
def test_hystart_threshold_clamps(last, rise, enters):
    cc, conn = make("cubic")
    now = round_of(cc, conn, [last] * 10, 1.0)
    round_of(cc, conn, [last + rise] * 10, now)
    assert (cc.info()["phase"] == "css") is enters


def test_hystart_off_after_a_loss():
    cc, conn = make("cubic")
    now = round_of(cc, conn, [0.100] * 10, 1.0)
    cc.on_rto(conn, now, True)  # ssthresh 14000: plain slow start from here
    assert conn.ssthresh == 14000
    now = round_of(cc, conn, [0.100] * 4, now + 1.0)
    now = round_of(cc, conn, [0.200] * 9, now)  # delay rises, but growth stays 1 SMSS per ACK
    assert conn.cwnd == 14000 and cc.info()["phase"] == "ss"
    round_of(cc, conn, [0.200] * 3, now)  # at ssthresh: avoidance
    assert cc.info()["phase"] == "ca" and 14000 < conn.cwnd < 15000


def test_hystart_spurious_loss_undo_restores_css():
    cc, conn = make("cubic")
    now = round_of(cc, conn, [0.100] * 10, 1.0)
    now = round_of(cc, conn, [0.120] * 10, now)
    assert cc.info()["phase"] == "css"
    cc.on_congestion(conn, now)
    assert conn.ssthresh == 19950 and cc.info()["phase"] == "ca"  # floor(28500 * 0.7)
    cc.undo(conn)
    assert conn.ssthresh == INFINITE_SSTHRESH and cc.info()["phase"] == "css"
    round_of(cc, conn, [0.120] * 10, now)
    assert conn.cwnd == 31000  # CSS growth goes on: 10 * 250
