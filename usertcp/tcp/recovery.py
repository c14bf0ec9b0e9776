"""Loss recovery with SACK (RFC 6675): the scoreboard and NextSeg()."""

from __future__ import annotations

from ..wire.tcp import ACK, FIN, PSH
from .seq import HALF, MASK

_DUP_THRESH = 3  # RFC 5681, RFC 6675
_MAX_SACKED = 32  # scoreboard blocks kept; more (a peer's games) lose the highest
_RTX, _NEW, _RESCUE = 0, 1, 2  # what NextSeg() picked (RFC 6675 4, rules 1 and 3; 2; 4)


class Recovery:
    """SACK-based recovery of Connection (a mixin: the fields live on Connection).

    The scoreboard `sacked` holds the peer's SACKed ranges above SND.UNA as sorted,
    merged (left, right) sequence numbers. The RFC 6675 routines work on it as offsets
    from SND.UNA: IsLost() is one point (_lost_edge) below which every unSACKed byte is
    lost, SetPipe() is _pipe, NextSeg() is _next_seg, and output() runs step (C) as
    _sack_send while in recovery. HighRxt and RescueRxt are exclusive ends.
    """

    __slots__ = ()

    def _sacked_offsets(self, base: int) -> list[tuple[int, int]]:
        """The scoreboard as offsets from `base`: blocks at or below it are gone."""
        out = []
        for left, right in self.sacked:
            ro = (right - base) & MASK
            if ro == 0 or ro >= HALF:
                continue
            lo = (left - base) & MASK
            out.append((0 if lo >= HALF else lo, ro))
        return out

    def _take_sack(self, blocks, ack: int) -> None:
        """Update() (RFC 6675 4): the peer's SACK blocks into the scoreboard.

        A block counts only inside [SEG.ACK, SND.MAX]: one below the cumulative ACK (a
        D-SACK), beyond what was sent, empty or inverted is ignored. At most _MAX_SACKED
        blocks are kept, the lowest (the holes that matter first).
        """
        span = (self.snd_max - ack) & MASK
        offs = self._sacked_offsets(ack)
        for left, right in blocks:
            lo = (left - ack) & MASK
            ro = (right - ack) & MASK
            if lo < ro <= span:
                offs.append((lo, ro))
        offs.sort()
        merged: list[list[int]] = []
        for lo, ro in offs:
            if merged and lo <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], ro)
            else:
                merged.append([lo, ro])
        self.sacked = [((ack + lo) & MASK, (ack + ro) & MASK) for lo, ro in merged[:_MAX_SACKED]]

    @staticmethod
    def _lost_edge(offs: list[tuple[int, int]], mss: int) -> int:
        """IsLost() (RFC 6675 4) as one offset: every unSACKed byte below it is lost.

        A byte is lost once DupThresh SACKed blocks (each at least one segment), or more
        than (DupThresh - 1) * SMSS SACKed bytes, lie above it. 0: nothing is lost.
        """
        sacked = 0
        for n, (lo, ro) in enumerate(reversed(offs), 1):
            sacked += ro - lo
            if n >= _DUP_THRESH or sacked > (_DUP_THRESH - 1) * mss:
                return lo
        return 0

    def _pipe(self, offs: list[tuple[int, int]], total: int, lost: int) -> int:
        """SetPipe() (RFC 6675 4): the unSACKed bytes not lost, plus the unSACKed bytes
        retransmitted (below HighRxt), of the `total` from SND.UNA to SND.MAX."""
        sacked = below_lost = 0
        for lo, ro in offs:
            sacked += ro - lo
            if ro <= lost:
                below_lost += ro - lo
        pipe = total - sacked - (lost - below_lost)
        hr = (self.high_rxt - self.snd_una) & MASK
        if 0 < hr < HALF:
            hr = min(hr, total)
            pipe += hr - sum(min(ro, hr) - lo for lo, ro in offs if lo < hr)
        return pipe

    def _next_seg(self, offs: list[tuple[int, int]], total: int, lost: int, mss: int):
        """NextSeg() (RFC 6675 4): (start, limit, kind), offsets from SND.UNA, or None.

        For a retransmission [start, limit) bounds the hole (one segment of it goes);
        for new data `limit` is its size (0: the FIN alone).
        """
        hr = (self.high_rxt - self.snd_una) & MASK
        if hr >= HALF:
            hr = 0
        start, limit = hr, total  # the first unSACKed byte above HighRxt; its hole's end
        for lo, ro in offs:
            if ro <= start:
                continue
            if lo <= start:
                start = ro
                continue
            limit = lo
            break
        if start < lost:  # (1) a lost byte, not yet retransmitted
            return start, limit, _RTX
        size = self._new_data_size(mss)
        if size is not None:  # (2) new data, as the peer's window allows
            return total, size, _NEW
        highest = offs[-1][1] if offs else 0
        if start < highest:  # (3) an unSACKed byte below the highest SACKed one
            return start, limit, _RTX
        rescue = self.rescue_rxt  # (4) once per recovery: the highest unSACKed byte
        if rescue is None or 0 < ((self.snd_una - rescue) & MASK) < HALF:
            top, bottom = total, highest
            if offs and highest >= total:
                top = offs[-1][0]
                bottom = offs[-2][1] if len(offs) > 1 else 0
            if top > bottom and top > hr:  # (not when that byte was just sent again)
                return max(top - mss, bottom), top, _RESCUE
        return None

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

    def _enter_sack_recovery(self, now: float) -> None:
        """RFC 6675 5 (4): fast retransmit; recovery lasts until RecoveryPoint is ACKed.

        Not before everything sent ahead of the last recovery (or RTO) is acknowledged.
        """
        una = self.snd_una
        if not (((una - self.recover) & MASK) < HALF or self.recover == self.iss):
            return
        mss = self.snd_mss
        flight = (self.snd_max - una) & MASK
        self.ssthresh = self.cwnd = max(flight // 2, 2 * mss)
        self.recover = self.snd_max  # RecoveryPoint = HighData
        self.in_recovery = True
        self.snd_nxt = self.snd_max
        self.host.count("fast_retransmits")
        self.host.count("sack_recoveries")
        offs = self._sacked_offsets(una)
        limit = (una + offs[0][0]) & MASK if offs and offs[0][0] else self.snd_max
        end = self._resend(una, limit)  # (3) HighACK + 1
        self.rto_at = now + self.rtt.rto
        self.high_rxt = self.rescue_rxt = end
        self.rtx_log = [(una, end, self.snd_max)]
        self._mark()  # (5) then step (C) in output()

    def _rtx_lost(self) -> None:
        """A retransmission lost in its turn (which RFC 6675 alone leaves to the RTO).

        When more than (DupThresh - 1) * SMSS of data sent after a retransmission is
        SACKed while its range is still neither SACKed nor acknowledged, it is presumed
        lost as data is (the network delivering mostly in order): HighRxt goes back to its
        start, so that NextSeg() rule (1) sends it again.
        """
        una = self.snd_una
        offs = self._sacked_offsets(una)
        if not offs:
            return
        limit = (_DUP_THRESH - 1) * self.snd_mss
        keep = []
        lowest = None
        for start, end, mark in self.rtx_log:
            eo = (end - una) & MASK
            if eo == 0 or eo >= HALF:
                continue  # acknowledged
            so = (start - una) & MASK
            if so >= HALF:
                so = 0
            if sum(min(ro, eo) - max(lo, so) for lo, ro in offs if lo < eo and ro > so) >= eo - so:
                continue  # SACKed
            mo = (mark - una) & MASK
            if sum(ro - max(lo, mo) for lo, ro in offs if ro > mo) > limit:
                if lowest is None or so < lowest:
                    lowest = so
                continue  # NextSeg() takes it from here, and it is logged again
            keep.append((start, end, mark))
        self.rtx_log = keep
        if lowest is not None:
            hr = (self.high_rxt - una) & MASK
            if lowest < hr < HALF:
                self.high_rxt = (una + lowest) & MASK
                self.host.count("lost_retransmits")

    def _sack_send(self, now: float) -> bool:
        """RFC 6675 5 (C): while cwnd - pipe >= 1 SMSS, send the segment NextSeg() picks.

        Everything goes one segment of at most an MSS at a time while recovery lasts.
        """
        opts = self._options(ACK) if self.opts_on else b""
        smss = self.snd_mss
        mss = max(smss - len(opts) + self.ts_len, 1) if len(opts) > self.ts_len else smss
        una = self.snd_una
        offs = self._sacked_offsets(una)
        total = (self.snd_max - una) & MASK
        lost = self._lost_edge(offs, smss)
        pipe = self._pipe(offs, total, lost)
        sent = False
        while self.cwnd - pipe >= smss:
            pick = self._next_seg(offs, total, lost, mss)
            if pick is None:
                break
            start, limit, kind = pick
            if kind == _NEW:
                nxt = self.snd_nxt
                off = (nxt - self.buf_seq) & MASK
                flags = ACK
                if off + limit == len(self.sndbuf):
                    if limit:
                        flags |= PSH
                    if self.fin_queued:
                        flags |= FIN
                with memoryview(self.sndbuf) as view:
                    self._xmit(flags, nxt, view[off:off + limit], opts)
                end = (nxt + limit + (flags & FIN)) & MASK
                self._advance(nxt, end, now)
                n = (end - nxt) & MASK
                total = (self.snd_max - una) & MASK
            else:
                seq = (una + start) & MASK
                end = self._resend(seq, (una + limit) & MASK)
                n = (end - seq) & MASK
                if kind == _RESCUE:
                    self.rescue_rxt = self.recover
                else:
                    if 0 < ((end - self.high_rxt) & MASK) < HALF:
                        self.high_rxt = end
                    self.rtx_log.append((seq, end, self.snd_max))
                if start == 0 or self.rto_at is None:
                    self.rto_at = now + self.rtt.rto
            if not n:
                break
            pipe += n
            sent = True
        return sent

    def _skip_sacked(self, nxt: int, chunk: int) -> tuple[int, int, int]:
        """Going over sent data again after an RTO: step over what the peer SACKed since.

        Returns SND.NXT (past the SACKed block it was in, if any), the flight less the
        SACKed bytes below it, and how much may go before the next SACKed block.
        """
        una = self.snd_una
        at = (nxt - una) & MASK
        below = 0
        cap = chunk
        for lo, ro in self._sacked_offsets(una):
            if lo > at:
                cap = min(chunk, lo - at)
                break
            below += ro - lo
            at = max(at, ro)
        nxt = (una + at) & MASK
        self.snd_nxt = nxt
        return nxt, at - below, cap
