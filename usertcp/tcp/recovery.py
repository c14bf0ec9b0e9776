"""Loss recovery with SACK, as Linux does it.

- Loss detection is RACK-TLP (RFC 8985, `rack.py`) over a per-transmission scoreboard
  (`scoreboard.py`): a segment is lost once one sent after it was delivered and a reordering
  window has passed, retransmissions included; a tail loss costs a probe (TLP), not an RTO.
- The sending rate during recovery is PRR (RFC 6937): cwnd = pipe + what PRR allows.
- Spurious responses are undone (RFC 3708 with D-SACK, RFC 2883; the Eifel response, RFC
  4015): once D-SACKs show every retransmission of an episode was a duplicate, or the
  timestamps show the original arrived, cwnd and ssthresh go back to what they were.
- After a timeout everything unSACKed is presumed lost (the SACK information is kept, as
  Linux keeps it) and F-RTO (RFC 5682, in its SACK form as Linux runs it) checks whether
  the timeout was spurious: an ACK of data never retransmitted means the originals arrive.

Without SACK the connection keeps NewReno (RFC 6582) in arrival.py: RACK needs SACK to
know what arrived (RFC 8985 2).
"""

from __future__ import annotations

from ..wire.tcp import ACK, FIN, PSH
from .rack import pto
from .seq import HALF, MASK
from .timestamps import ts_value

_TLP_MIN = 0.002  # the shortest probe timeout: Linux's TCP_TIMEOUT_MIN (2 jiffies)


class Recovery:
    """SACK loss recovery of Connection (a mixin: the fields live on Connection)."""

    __slots__ = ()

    # ------------------------------------------------------------ every ACK

    def _sack_on_ack(self, sack_blocks, tsecr: int | None, acked: int, rtt: float | None,
                     now: float) -> None:
        """An ACK on a SACK connection: scoreboard, RACK, TLP, then the congestion state."""
        board = self.board
        if (sack_blocks is None and not (board.sacked_out or board.lost_out
                                             or board.retrans_out or self.in_loss
                                             or self.in_recovery or self.tlp.active)):
            # The fast path of a bulk transfer without loss: in order, the segment delivered
            # last was sent last, so it alone updates RACK; no loss can be detected.
            last = board.ack_clean(self.snd_una)
            if last is not None:  # RACK takes it when it is next needed (_rack_catch_up)
                self.rack_seg = last
                self.rack_now = now
            if acked:
                self.cc.on_ack(self, acked, rtt, now)
            self._arm_tlp(now)
            return
        res = board.on_ack(self.snd_una, sack_blocks, now)
        rack = self.rack
        if self.rack_seg is not None:
            self._rack_catch_up()
        delivered = res.delivered
        if delivered:
            if not self.ts_ok:
                tsecr = None
            offset = self.ts_offset
            orig = False
            for s in delivered:
                if s.rtx:
                    # The ACK echoes a TSval from before this retransmission: the original
                    # was delivered, not the copy (RFC 8985 6.2 step 2).
                    before = tsecr is not None and 0 < (
                        (ts_value(s.xmit, offset) - tsecr) & MASK) < HALF
                    rack.update(s, now, before)
                else:
                    orig = True
                    rack.update(s, now)
            if self.frto and orig:
                self._frto_spurious(now)
        self.frto = False
        if res.dsack is not None:
            self._on_dsack(res, now)
        tlp = self.tlp
        if tlp.active:
            outcome = tlp.on_ack(self.snd_una, res.dsack, (self.snd_una - acked) & MASK,
                                 res.sacked > 0)
            if outcome == "repaired" and not self.in_recovery and not self.in_loss:
                # RFC 8985 7.4.2: the probe repaired a loss the original could not: the
                # congestion response of a fast recovery, once.
                self.host.count("tlp_recoveries")
                self.cc.on_congestion(self, now)
                self.cwnd = self.ssthresh
        if board.sacked_out or board.retrans_out or board.lost_out:
            self._rack_detect(now)
        if self.in_recovery:
            if ((self.snd_una - self.recover) & MASK) < HALF:
                self._end_recovery(tsecr, now)
            else:
                self._prr(acked + res.sacked)
        elif self.in_loss:
            if ((self.snd_una - self.recover) & MASK) < HALF:
                self.in_loss = False
                if self._may_undo(tsecr):
                    self._undo(now, "eifel")
            if acked:
                self.cc.on_ack(self, acked, rtt, now)  # slow start back up (RFC 5681 3.1)
        elif board.lost_out:
            self._start_recovery(now)
            self._prr(acked + res.sacked)
        elif acked:
            self.cc.on_ack(self, acked, rtt, now)
        self._arm_tlp(now)

    def _rack_catch_up(self) -> None:
        """The last in-order delivery the fast path left for RACK (RFC 8985 6.2 step 2):
        deferred to here, as only loss detection reads RACK.xmit_ts and RACK.rtt."""
        self.rack.update(self.rack_seg, self.rack_now)
        self.rack_seg = None

    def _rack_detect(self, now: float) -> None:
        """RFC 8985 6.2 step 5, and the reordering timer for what is not lost yet."""
        board = self.board
        rack = self.rack
        if self.rack_seg is not None:
            self._rack_catch_up()
        srtt = self.rtt.srtt
        reo_wnd = rack.reo_wnd(srtt if srtt is not None else 0.0, self.in_recovery,
                               board.sacked_out // self.snd_mss)
        lost, timeout = rack.detect_loss(board, now, reo_wnd)
        if lost:
            n = -(-lost // self.snd_mss)  # in segments, as Linux counts them
            self.host.count("rack_lost", n)
            self.rack_lost += n
            self._mark()
        self.reo_at = now + timeout if timeout is not None else None

    # ------------------------------------------------------------ recovery episodes

    def _start_recovery(self, now: float) -> None:
        """Fast recovery begins (RFC 6675 5, RFC 6937): ssthresh from congestion control,
        PRR from here, and a new undo episode."""
        self.in_recovery = True
        self.recover = self.snd_max  # RecoveryPoint
        self.cc.on_congestion(self, now)
        self.prr_delivered = self.prr_out = 0
        self.recover_fs = max((self.snd_max - self.snd_una) & MASK, 1)
        self._new_undo_episode()
        self.tlp_at = None
        self.host.count("fast_retransmits")
        self.host.count("sack_recoveries")

    def _prr(self, delivered: int) -> None:
        """RFC 6937 on one ACK in recovery: cwnd = pipe + sndcnt (Linux's form)."""
        self.prr_delivered += delivered
        mss = self.snd_mss
        pipe = self.board.pipe((self.snd_max - self.snd_una) & MASK)
        ssthresh = self.ssthresh
        if pipe > ssthresh:  # proportional rate reduction
            sndcnt = -(-self.prr_delivered * ssthresh // self.recover_fs) - self.prr_out
        else:  # slow start reduction bound: back up to ssthresh, no faster than slow start
            sndcnt = min(ssthresh - pipe,
                         max(self.prr_delivered - self.prr_out, delivered) + mss)
        if sndcnt < 0:
            sndcnt = 0
        if not self.prr_out and sndcnt < mss:
            sndcnt = mss  # the fast retransmit itself goes at once
        self.cwnd = pipe + sndcnt

    def _end_recovery(self, tsecr: int | None, now: float) -> None:
        self.in_recovery = False
        self.rack.on_recovery_end()
        if self._may_undo(tsecr):
            self._undo(now, "eifel")
        else:
            self.cc.on_recovery_end(self, now)

    # ------------------------------------------------------------ undo (RFC 3708, 4015)

    def _new_undo_episode(self) -> None:
        self.undo_marker = self.snd_una
        self.undo_retrans = 0
        self.undo_tsval = None

    def _may_undo(self, tsecr: int | None) -> bool:
        """Every retransmission of the episode D-SACKed, or (Eifel, RFC 3522) the ACK
        echoes a TSval from before the first of them: the originals arrived."""
        if self.undo_marker is None or not self.undo_retrans and self.undo_tsval is None:
            return False
        if self.undo_retrans <= 0:
            return True
        tsv = self.undo_tsval
        return (tsv is not None and tsecr is not None and self.ts_ok
                and 0 < ((tsv - tsecr) & MASK) < HALF)

    def _on_dsack(self, res, now: float) -> None:
        self.host.count("dsack_received")
        self.rack.on_dsack(self.snd_max, self.snd_una)
        if res.dsack_rtx and self.undo_marker is not None and self.undo_retrans > 0:
            left, right = res.dsack
            mss = self.snd_mss
            self.undo_retrans -= max(-(-((right - left) & MASK) // mss), 1)
            if self.undo_retrans <= 0:
                self._undo(now, "dsack")

    def _undo(self, now: float, why: str) -> None:
        """The congestion response was spurious: restore cwnd and ssthresh, forget the
        loss marks, leave recovery."""
        self.cc.undo(self)
        self.undo_marker = None
        self.undo_retrans = 0
        self.undo_tsval = None
        self.undos += 1
        self.host.count("spurious_undo")
        self.board.unmark_lost()
        if self.in_recovery:
            self.in_recovery = False
            self.rack.on_recovery_end()
        self.in_loss = False
        self._mark()

    def _frto_spurious(self, now: float) -> None:
        """F-RTO (RFC 5682 3.1, as Linux runs it): the first ACK after the timeout's
        retransmission delivers data never retransmitted: the timeout was spurious."""
        self.frto = False
        self.host.count("spurious_rto")
        self._undo(now, "f-rto")
        self.rtt.reset_backoff()

    # ------------------------------------------------------------ timeout

    def _sack_rto(self, now: float) -> None:
        """RTO with SACK: everything unSACKed is lost; retransmit from the first hole with
        cwnd of one segment, and let F-RTO judge the timeout by the next ACK."""
        first = self.backoffs == 1
        fresh = first and not self.in_recovery and not self.in_loss
        if fresh:
            self._new_undo_episode()
        self.cc.on_rto(self, now, fresh)
        self.in_recovery = False
        self.in_loss = True
        self.recover = self.snd_max
        self.frto = fresh and self.cfg.frto
        self.board.mark_all_lost()
        self.tlp.reset()
        self.tlp_at = self.reo_at = None
        lost = self.board.next_lost()
        if lost is not None:
            self._resend(lost.start, lost.end)
        else:  # nothing mapped (the peer's window shut under data): the first segment
            self._resend(self.snd_una, self.snd_max)

    # ------------------------------------------------------------ output

    def _recovery_send(self, now: float) -> bool:
        """In recovery or after a timeout: lost segments first, lowest first, then new data,
        each one MSS at most, while cwnd - pipe leaves room (PRR set cwnd)."""
        board = self.board
        mss = self._payload_mss(self._options(ACK) if self.opts_on else b"")
        sent = False
        while True:
            pipe = board.pipe((self.snd_max - self.snd_una) & MASK)
            if self.cwnd - pipe <= 0:
                break
            lost = board.next_lost()
            if lost is not None:
                end = self._resend(lost.start, lost.end)
                n = (end - lost.start) & MASK
                if lost.start == self.snd_una:  # the RTO times the oldest data's repair
                    self.rto_at = now + self.rtt.rto
            else:
                n = self._send_new_segment(mss, now)
                if n is None:
                    break
            if not n:
                break
            if self.in_recovery:
                self.prr_out += n
            sent = True
        return sent

    def _send_new_segment(self, mss: int, now: float) -> int | None:
        """One segment of new data (or the FIN alone), as the peer's window allows; the
        sequence space it took, or None when nothing may go."""
        size = self._new_data_size(mss)
        if size is None:
            return None
        nxt = self.snd_nxt
        off = (nxt - self.buf_seq) & MASK
        flags = ACK
        if off + size == len(self.sndbuf):
            if size:
                flags |= PSH
            if self.fin_queued:
                flags |= FIN
        with memoryview(self.sndbuf) as view:
            self._xmit(flags, nxt, view[off:off + size], None)
        end = (nxt + size + (flags & FIN)) & MASK
        self._advance(nxt, end, now)
        return (end - nxt) & MASK

    def _new_data_size(self, mss: int) -> int | None:
        """Bytes of new data one segment may carry now (0: only the FIN is left); None."""
        nxt = self.snd_nxt
        buflen = len(self.sndbuf)
        off = (nxt - self.buf_seq) & MASK
        if off >= HALF:
            return None
        remaining = buflen - off
        if remaining > 0:
            size = min(mss, remaining, self.snd_wnd - ((nxt - self.snd_una) & MASK))
            if size <= 0 or (size < mss and size < remaining
                             and size < (self.max_snd_wnd >> 1)):  # silly window
                return None
            return size
        if self.fin_queued and off == buflen:  # the FIN not sent yet
            return 0
        return None

    # ------------------------------------------------------------ tail loss probe

    def _arm_tlp(self, now: float) -> None:
        """RFC 8985 7.2: with data in flight and no recovery under way, a probe timeout
        of 2 SRTT (plus the peer's worst delayed ACK for a lone segment), never later than
        the RTO would fire: the first timeout of a stalled flight sends a probe instead."""
        srtt = self.rtt.srtt
        flight = (self.snd_max - self.snd_una) & MASK
        if not flight or srtt is None or self.in_recovery or self.in_loss or self.tlp.active:
            self.tlp_at = None
            return
        timeout = pto(srtt, 1 if flight <= self.snd_mss else 2, self.rtt.rto)
        at = now + (timeout if timeout > _TLP_MIN else _TLP_MIN)
        rto_at = self.rto_at
        self.tlp_at = at if rto_at is None or at < rto_at else rto_at

    def _on_tlp(self, now: float) -> None:
        """RFC 8985 7.3: send new data if the windows allow one segment, else the last
        segment again; then the RTO guards the probe."""
        self.tlp_at = None
        if self.snd_una == self.snd_max or self.in_recovery or self.in_loss:
            return
        self.tlp_probes += 1
        self.host.count("tlp_probes")
        mss = self._payload_mss(self._options(ACK) if self.opts_on else b"")
        n = None
        if self.snd_wnd > ((self.snd_max - self.snd_una) & MASK):
            n = self._send_new_segment(mss, now)
        if n:
            self.tlp.on_probe(self.snd_max, False)
        else:
            last = self.board.last()
            if last is None:
                return
            end = last.end
            size = (end - last.start) & MASK
            start = (end - min(size, self.snd_mss)) & MASK
            self._resend(start, end)
            self.tlp.on_probe(self.snd_max, True)
        self.rto_at = now + self.rtt.rto

    def _on_reo_timer(self, now: float) -> None:
        """RFC 8985 6.3: the reordering window has passed for segments still missing."""
        self.reo_at = None
        if self.snd_una == self.snd_max:
            return
        self._rack_detect(now)
        if self.board.lost_out and not self.in_recovery and not self.in_loss:
            self._start_recovery(now)
            self._prr(0)
        self._mark()
