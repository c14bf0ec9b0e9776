"""RACK-TLP (RFC 8985) over the scoreboard, on a virtual clock, across the 2**32 wrap.

Segments are 1000 bytes from S0 = 2**32 - 2500; segment i is sent at 100 + i/16 s. Times and RTTs
are multiples of 1/64 s so every expected number is exact in binary floating point.
"""

import pytest

from usertcp.tcp.rack import Rack, Tlp, pto
from usertcp.tcp.scoreboard import Scoreboard
from usertcp.tcp.seq import MASK

S0 = 2**32 - 2500
SRTT = 0.5


def sq(off: int) -> int:
    return (S0 + off) & MASK


def xmit(i: int) -> float:
    return 100.0 + i / 16


def sent(n: int) -> Scoreboard:
    board = Scoreboard(S0)
    for i in range(n):
        board.on_send(sq(i * 1000), sq((i + 1) * 1000), xmit(i))
    return board


def ack(rack: Rack, board: Scoreboard, cum: int, blocks, now: float):
    res = board.on_ack(sq(cum), [(sq(a), sq(b)) for a, b in blocks] or None, now)
    for seg in res.delivered:
        rack.update(seg, now)
    return res


def by_number(board):
    """The Segs by segment number (offset / 1000)."""
    return {((s.start - S0) & MASK) // 1000: s for s in board}


def test_hole_is_lost_only_after_rtt_plus_reo_wnd():
    board, rack = sent(4), Rack()
    now = 100.5
    ack(rack, board, 0, [(1000, 2000)], now)  # segment 0 is missing
    assert rack.rtt == rack.min_rtt == now - xmit(1) == 0.4375
    assert rack.xmit_ts == xmit(1) and rack.end_seq == sq(2000)
    wnd = rack.reo_wnd(SRTT, in_recovery=False, sacked_segs=1)
    assert wnd == 0.4375 / 4 == 0.109375  # no reordering seen yet, but fewer than 3 SACKed
    # Segment 0 is due at xmit(0) + rtt + reo_wnd = 100.546875; 2 and 3 were sent later.
    assert rack.detect_loss(board, now, wnd) == (0, 100.546875 - now)
    assert rack.detect_loss(board, 100.546875 - 1 / 64, wnd) == (0, 1 / 64)
    assert board.lost_out == 0
    assert rack.detect_loss(board, 100.546875, wnd) == (1000, None)  # remaining == 0: lost
    assert board.first().lost and board.lost_out == 1000
    assert board.next_lost() is board.first()
    # Marked lost without a retransmission in flight: not examined again.
    assert rack.detect_loss(board, 101.0, wnd) == (0, None)


def test_reo_wnd_zero_without_reordering_once_three_segments_are_sacked():
    board, rack = sent(5), Rack()
    now = 100.5
    ack(rack, board, 0, [(1000, 4000)], now)
    assert rack.reo_wnd(SRTT, in_recovery=False, sacked_segs=3) == 0.0
    assert rack.reo_wnd(SRTT, in_recovery=True, sacked_segs=0) == 0.0
    assert rack.segs_sacked == 0
    # RACK.rtt is that of the most recently sent delivery (segment 3), whatever the order.
    assert rack.rtt == now - xmit(3) and rack.xmit_ts == xmit(3)
    # Segment 0 was sent 3/16 s before segment 3: overdue by exactly that, at once.
    assert rack.detect_loss(board, now, 0.0) == (1000, None)
    # Segment 4 was sent after RACK.xmit_ts: not a candidate.
    assert not by_number(board)[4].lost


def test_reordering_seen_widens_the_window_to_min_rtt_over_4():
    board, rack = sent(4), Rack()
    ack(rack, board, 0, [(1000, 2000)], 100.5)
    assert not rack.reord
    ack(rack, board, 2000, [], 100.5625)  # segment 0 arrives late: it was never resent
    assert rack.reord
    assert rack.reo_wnd(SRTT, in_recovery=True, sacked_segs=5) == 0.4375 / 4
    assert rack.reo_wnd(0.0625, in_recovery=True, sacked_segs=5) == 0.0625  # capped at SRTT
    # A hole filled by a retransmission is not reordering.
    board, rack = sent(4), Rack()
    ack(rack, board, 0, [(1000, 2000)], 100.5)
    board.mark_lost(board.first())
    board.on_send(sq(0), sq(1000), 100.5)
    ack(rack, board, 2000, [], 101.0)
    assert not rack.reord


def test_dsack_multiplies_the_window_once_per_round_and_decays():
    rack = Rack()
    rack.min_rtt = 0.25
    rack.reord = True
    assert rack.reo_wnd(SRTT, True, 0) == 0.0625
    assert rack.on_dsack(snd_max=sq(5000), snd_una=sq(1000))
    assert rack.reo_wnd_mult == 2 and rack.dsack_round == sq(5000)
    assert rack.reo_wnd(SRTT, True, 0) == 0.125
    assert not rack.on_dsack(snd_max=sq(6000), snd_una=sq(4000))  # same round trip
    assert rack.reo_wnd_mult == 2
    assert rack.on_dsack(snd_max=sq(9000), snd_una=sq(5000))  # SND.UNA reached the round end
    assert rack.reo_wnd_mult == 3 and rack.dsack_round == sq(9000)
    assert rack.reo_wnd(SRTT, True, 0) == 0.1875
    assert rack.reo_wnd(0.125, True, 0) == 0.125
    for _ in range(15):
        rack.on_recovery_end()
    assert rack.reo_wnd_mult == 3
    rack.on_recovery_end()  # the 16th D-SACK-free recovery
    assert rack.reo_wnd_mult == 1 and rack.reo_wnd(SRTT, True, 0) == 0.0625


def test_lost_retransmission_is_detected_by_time():
    board, rack = sent(4), Rack()
    ack(rack, board, 0, [(1000, 2000)], 100.5)
    segs = by_number(board)
    board.mark_lost(segs[0])
    board.on_send(sq(0), sq(1000), 100.5)  # retransmitted; lost again on the way
    board.on_send(sq(4000), sq(5000), 100.625)  # new data after it
    assert board.retrans_out == 1000
    ack(rack, board, 0, [(1000, 2000), (4000, 5000)], 101.0)
    assert rack.xmit_ts == 100.625 and rack.rtt == 0.375
    # Segments 2 and 3 (originals) are overdue; the retransmission of 0 has 1/8 s to go.
    assert rack.detect_loss(board, 101.0, 0.25) == (2000, 0.125)
    assert segs[0].inflight_rtx and board.retrans_out == 1000
    assert board.next_lost() is segs[2]
    assert rack.detect_loss(board, 101.125, 0.25) == (1000, None)
    assert segs[0].lost and not segs[0].inflight_rtx and board.retrans_out == 0
    assert board.next_lost() is segs[0]  # due to be sent again
    assert board.pipe(5000) == 5000 - 2000 - 3000


def test_scan_goes_past_a_recent_retransmission_to_older_originals():
    board, rack = sent(6), Rack()
    ack(rack, board, 0, [(2000, 3000)], 100.5)
    assert rack.detect_loss(board, 100.5, 0.0) == (2000, None)  # segments 0 and 1
    segs = by_number(board)
    board.on_send(sq(0), sq(1000), 100.5)
    ack(rack, board, 0, [(2000, 3000), (4000, 5000)], 100.5625)
    assert rack.xmit_ts == xmit(4) and rack.rtt == 0.3125
    # Segment 0's resend is the lowest candidate and is recent; segment 3 above it is not.
    assert rack.detect_loss(board, 100.5625, 0.0) == (1000, None)
    assert segs[3].lost and segs[0].inflight_rtx
    assert not segs[5].lost


def test_retransmitted_segment_skipped_when_its_rtt_is_ambiguous():
    board, rack = sent(3), Rack()
    ack(rack, board, 1000, [], 100.5)
    assert rack.min_rtt == 0.5
    board.on_send(sq(1000), sq(2000), 100.75)
    ack(rack, board, 2000, [], 101.0)  # 0.25 s after the resend: below min_rtt, the original's
    assert rack.xmit_ts == xmit(0) and rack.rtt == 0.5
    board.on_send(sq(2000), sq(3000), 101.0)
    res = board.on_ack(sq(3000), None, 101.75)
    rack.update(res.delivered[0], 101.75, tsecr_before_xmit=True)  # TSecr says: the original
    assert rack.xmit_ts == xmit(0)
    rack.update(res.delivered[0], 101.75)
    assert rack.xmit_ts == 101.0 and rack.rtt == 0.75 and rack.min_rtt == 0.5


def test_rack_rtt_is_that_of_the_latest_sent_delivery_of_the_ack():
    board, rack = sent(4), Rack()
    rack.min_rtt = 0.125  # seeded, e.g. from the handshake
    board.mark_lost(board.first())
    board.on_send(sq(0), sq(1000), 100.5)
    # One ACK delivers the resent segment 0 and the original segment 1 (sent earlier).
    ack(rack, board, 2000, [], 100.75)
    assert rack.xmit_ts == 100.5 and rack.end_seq == sq(1000)
    assert rack.rtt == 0.25  # not segment 1's 0.6875, though it comes last in sequence
    # The next ACK starts afresh, even with a larger sample.
    ack(rack, board, 3000, [], 101.0)
    assert rack.rtt == 101.0 - xmit(2) and rack.xmit_ts == 100.5


def test_fast_path_on_in_order_acks_is_one_lookup():
    class CountingList(list):
        reads = 0

        def __getitem__(self, i):
            CountingList.reads += 1
            return super().__getitem__(i)

    board, rack = sent(40), Rack()
    now = 100.0 + 40 / 16
    for i in range(20):
        ack(rack, board, (i + 1) * 1000, [], now + i / 64)
        assert rack.detect_loss(board, now + i / 64, 0.0) == (0, None)
    board._segs = CountingList(board._segs)
    assert rack.detect_loss(board, now + 1.0, 0.0) == (0, None)
    assert CountingList.reads == 1
    assert not rack.reord and board.lost_out == 0


def test_nothing_delivered_yet_or_nothing_outstanding():
    board, rack = sent(2), Rack()
    assert rack.detect_loss(board, 200.0, 0.0) == (0, None)
    ack(rack, board, 2000, [], 100.5)
    assert rack.detect_loss(board, 200.0, 0.0) == (0, None)


# ---- TLP ------------------------------------------------------------------------------------

def test_pto_values():
    assert pto(0.125, 1, 3.0) == 0.25 + 0.2             # one segment: + WCDelAckT
    assert pto(0.125, 1, 3.0, max_ack_delay=0.0625) == 0.3125
    assert pto(0.125, 5, 3.0) == 0.25
    assert pto(None, 5, 3.0) == 1.0                      # no SRTT yet
    assert pto(0.75, 5, 1.0) == 1.0                      # never beyond the RTO
    assert pto(None, 1, 0.5) == 0.5


END = sq(3000)  # just past the wrap


def test_tlp_repaired_when_the_ack_passes_the_probe():
    tlp = Tlp()
    tlp.on_probe(END, is_retrans=True)
    assert tlp.active and tlp.end_seq == END
    assert tlp.on_ack(sq(1000), None, sq(0)) == "none" and tlp.active  # below TLP.end_seq
    # Reaching TLP.end_seq exactly decides nothing: the probe's D-SACK may yet arrive.
    assert tlp.on_ack(END, None, sq(2000)) == "none" and tlp.active
    assert tlp.on_ack(sq(4000), None, END) == "repaired"
    assert not tlp.active and tlp.end_seq is None
    assert tlp.on_ack(sq(5000), None, sq(4000)) == "none"  # no episode


def test_tlp_spurious_on_dsack_or_pure_dupack():
    tlp = Tlp()
    tlp.on_probe(END, is_retrans=True)
    assert tlp.on_ack(END, None, sq(2000)) == "none"
    assert tlp.on_ack(END, (sq(2000), END), END) == "spurious" and not tlp.active
    tlp.on_probe(END, is_retrans=True)
    assert tlp.on_ack(END, None, END, sacked=True) == "none"  # SACKs something else
    assert tlp.on_ack(END, None, END) == "spurious" and not tlp.active
    # A D-SACK of other data does not end it; the next ACK beyond does.
    tlp.on_probe(END, is_retrans=True)
    assert tlp.on_ack(END, (sq(0), sq(1000)), sq(2000)) == "none" and tlp.active
    assert tlp.on_ack(sq(3500), None, END) == "repaired"


def test_tlp_of_new_data_ends_with_none():
    tlp = Tlp()
    tlp.on_probe(END, is_retrans=False)
    assert tlp.on_ack(sq(2500), None, sq(2000)) == "none" and tlp.active
    assert tlp.on_ack(END, None, sq(2500)) == "none" and not tlp.active


@pytest.mark.parametrize("outcome", ["none", "spurious", "repaired"])
def test_tlp_reset(outcome):
    tlp = Tlp()
    tlp.on_probe(END, is_retrans=outcome != "none")
    tlp.reset()
    assert tlp.on_ack(sq(9000), None, END) == "none" and not tlp.active
