"""RACK-TLP loss detection (RFC 8985) over the per-transmission Scoreboard.

RACK marks a segment lost once a segment sent after it has been delivered and a reordering window
has passed; TLP sends a probe when the tail of a flight goes unanswered. Pure: `now` is passed in
(float seconds), sequence numbers compare modulo 2**32.
"""

from .scoreboard import Scoreboard, Seg
from .seq import HALF, MASK

WC_DEL_ACK_T = 0.2        # RFC 8985 7.2 WCDelAckT: worst-case delayed ACK
PTO_NO_SRTT = 1.0         # RFC 8985 7.2: PTO without an RTT sample
REO_WND_PERSIST = 16      # recoveries a D-SACK-widened window lasts (RFC 8985 6.2 step 4)


class Rack:
    """Per-connection RACK state, named as RFC 8985 5.3 names it.

    min_rtt is the smallest RTT sample from never-retransmitted segments (Karn); the caller may
    seed it with the handshake RTT. Until it is known, retransmitted segments are not used
    (as in Linux, whose min RTT starts infinite), since their samples may be ambiguous.
    """

    __slots__ = (
        "_rtt_now",
        "dsack_round",
        "end_seq",
        "fack",
        "min_rtt",
        "reo_wnd_mult",
        "reo_wnd_persist",
        "reord",
        "rtt",
        "segs_sacked",
        "xmit_ts",
    )

    def __init__(self) -> None:
        self.xmit_ts: float | None = None   # RACK.xmit_ts: latest xmit of a delivered segment
        self.end_seq = 0                    # RACK.end_seq: its end
        self.rtt = 0.0                      # RACK.rtt: RTT of that most recently sent delivery
        self.min_rtt: float | None = None   # RACK.min_RTT
        self.reord = False                  # RACK.reordering_seen
        self.fack: int | None = None        # RACK.fack: highest end delivered
        self.segs_sacked = 0                # RACK.segs_sacked: as last given to reo_wnd()
        self.reo_wnd_mult = 1
        self.dsack_round: int | None = None
        self.reo_wnd_persist = REO_WND_PERSIST
        self._rtt_now: float | None = None  # `now` of the ACK that last set rtt

    def update(self, seg: Seg, now: float, tsecr_before_xmit: bool = False) -> None:
        """RFC 8985 6.2 steps 2 and 3 for one delivered Seg; call in sequence order per ACK."""
        end = seg.end
        fack = self.fack
        if fack is None or 0 < ((end - fack) & MASK) < HALF:
            self.fack = end
        elif seg.rtx == 0 and end != fack:
            self.reord = True  # an original filled in below what was delivered before
        rtt = now - seg.xmit
        if seg.rtx:
            # Which copy was delivered is ambiguous: skip it when the ACK must be for the
            # original (an RTT below min_rtt, or a TSecr older than the retransmission).
            if tsecr_before_xmit or self.min_rtt is None or rtt < self.min_rtt:
                return
        elif self.min_rtt is None or rtt < self.min_rtt:
            self.min_rtt = rtt
        # The RFC walks one ACK's segments in xmit order, so RACK.rtt ends as that of the most
        # recently sent one: the smallest sample of this ACK, whatever order they come in.
        if now != self._rtt_now or rtt < self.rtt:
            self.rtt = rtt
            self._rtt_now = now
        x = self.xmit_ts
        if (x is None or seg.xmit > x
                or (seg.xmit == x and 0 < ((end - self.end_seq) & MASK) < HALF)):
            self.xmit_ts = seg.xmit
            self.end_seq = end

    def on_dsack(self, snd_max: int, snd_una: int) -> bool:
        """Step 4: an ACK carried a D-SACK; widen the window once per round trip.

        Returns True when the window grew (the RFC then skips the recovery-exit bookkeeping for
        this ACK). Whether SND.UNA has passed dsack_round is checked here, lazily: it only
        matters when a D-SACK arrives.
        """
        if self.dsack_round is not None and ((snd_una - self.dsack_round) & MASK) < HALF:
            self.dsack_round = None  # the round that saw the last D-SACK is over
        if self.dsack_round is not None:
            return False
        self.dsack_round = snd_max
        self.reo_wnd_mult += 1
        self.reo_wnd_persist = REO_WND_PERSIST
        return True

    def on_recovery_end(self) -> None:
        """Step 4: leaving fast or RTO recovery; 16 D-SACK-free recoveries reset the window."""
        self.reo_wnd_persist = max(self.reo_wnd_persist - 1, 0)
        if self.reo_wnd_persist == 0:
            self.reo_wnd_mult = 1

    def reo_wnd(self, srtt: float | None, in_recovery: bool, sacked_segs: int,
                dupthresh: int = 3) -> float:
        """Step 4's RACK.reo_wnd.

        sacked_segs is RACK.segs_sacked in segments; with super-segments pass
        sacked_out // mss, as Linux counts packets.
        """
        self.segs_sacked = sacked_segs
        if not self.reord and (in_recovery or sacked_segs >= dupthresh):
            return 0.0
        if self.min_rtt is None:
            return srtt or 0.0  # min RTT unknown: as Linux, whose min starts infinite
        wnd = self.reo_wnd_mult * self.min_rtt / 4
        return wnd if srtt is None or wnd < srtt else srtt

    def detect_loss(self, board: Scoreboard, now: float, reo_wnd: float
                    ) -> tuple[int, float | None]:
        """Step 5: mark lost what was sent before RACK.xmit_ts and waited rtt + reo_wnd.

        Returns (bytes newly marked lost, delay of the reordering timer or None). A Seg whose
        retransmission is deemed lost counts as newly lost: it is due to be resent.
        """
        rx = self.xmit_ts
        if rx is None:
            return 0, None
        segs = board._segs  # the Scoreboard and RACK are designed as a pair: read its records
        head = board._head
        n = len(segs)
        if head == n:
            return 0, None
        rend = self.end_seq
        # Originals go out in sequence order, and a Seg's resend is later than its original:
        # so past the first original (rtx == 0) sent after RACK.xmit_ts, every Seg was sent
        # later still, and the scan stops there. On an in-order bulk transfer that is the
        # first Seg: the fast path, O(1). Resent Segs are not in time order (Linux keeps a
        # time-sorted list for them), so below that point the scan visits every SACKed, lost
        # and resent Seg; that happens only in recovery, and is acceptable there.
        wait = self.rtt + reo_wnd
        lost = 0
        timeout = None
        for i in range(head, n):
            s = segs[i]
            if s.sacked or (s.lost and not s.inflight_rtx):
                continue
            x = s.xmit
            if x < rx or (x == rx and ((rend - s.end) & MASK) < HALF):
                remaining = x + wait - now
                if remaining <= 0:
                    lost += (s.end - s.start) & MASK
                    board.mark_lost(s)
                elif timeout is None or remaining > timeout:
                    timeout = remaining
            elif not s.rtx:
                break
        return lost, timeout


def pto(srtt: float | None, flight_segs: int, rto: float,
        max_ack_delay: float = WC_DEL_ACK_T) -> float:
    """RFC 8985 7.2: the probe timeout, never beyond the RTO."""
    if srtt is None:
        timeout = PTO_NO_SRTT
    else:
        timeout = 2 * srtt
        if flight_segs == 1:
            timeout += max_ack_delay  # a lone segment may wait for the peer's delayed ACK
    return min(rto, timeout)


class Tlp:
    """One tail loss probe episode (RFC 8985 7.3, 7.4)."""

    __slots__ = ("active", "end_seq", "is_retrans")

    def __init__(self) -> None:
        self.end_seq: int | None = None   # TLP.end_seq: SND.MAX when the probe was sent
        self.is_retrans = False           # TLP.is_retrans: the probe resent old data
        self.active = False               # a probe's episode is open

    def on_probe(self, snd_max: int, is_retrans: bool) -> None:
        """A probe was sent. The RFC allows one per episode: check `active` before probing."""
        self.end_seq = snd_max
        self.is_retrans = is_retrans
        self.active = True

    def reset(self) -> None:
        """End the episode without a verdict (an RTO, or entering recovery)."""
        self.end_seq = None
        self.is_retrans = False
        self.active = False

    def on_ack(self, ack: int, dsack: tuple[int, int] | None, snd_una_before: int,
               sacked: bool = False) -> str:
        """RFC 8985 7.4.2 on an ACK: "none", "spurious" (no loss) or "repaired".

        "repaired": the probe resent data whose original was lost; the caller reduces cwnd once.
        As the RFC and Linux do, an ACK that reaches TLP.end_seq exactly does not decide yet: the
        original may have arrived and the probe's D-SACK may still be on its way. The episode
        ends with "repaired" when the ACK goes beyond TLP.end_seq, or "spurious" on a matching
        D-SACK or on a pure duplicate ACK at TLP.end_seq (`sacked`: the ACK also SACKed data).
        """
        end = self.end_seq
        if not self.active or end is None or 0 < ((end - ack) & MASK) < HALF:
            return "none"  # no episode, or the ACK is below TLP.end_seq
        if not self.is_retrans:
            self.reset()  # new data was probed and is delivered
            return "none"
        if dsack is not None and 0 < ((end - dsack[0]) & MASK) < HALF \
                and ((dsack[1] - end) & MASK) < HALF:
            self.reset()  # D-SACK of the probe's last byte: original and probe both arrived
            return "spurious"
        if ack != end:
            self.reset()
            return "repaired"
        if ack == snd_una_before and dsack is None and not sacked:
            self.reset()  # a pure duplicate ACK: the probe was a duplicate too
            return "spurious"
        return "none"
