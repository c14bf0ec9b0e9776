"""The sender's scoreboard: one record per transmission over [SND.UNA, SND.MAX).

Linux keeps per-skb state (sent time, retransmitted, SACKed, lost); this module keeps the same per
`Seg` so RACK (RFC 8985) can time every segment. SACK (RFC 2018) and D-SACK (RFC 2883) are read
here; the counters sacked_out, lost_out and retrans_out are kept incrementally, so pipe() (RFC
6675's pipe with RACK's lost marks, as Linux computes in_flight) costs nothing to ask.

Pure: no I/O, no clock (`now` is passed in). All sequence comparisons are modulo 2**32; where the
hot path inlines them, `((a - b) & MASK) < HALF` reads "a >= b".
"""

from bisect import bisect_right
from collections import deque

from .seq import HALF, MASK

# How many retransmitted ranges to remember for D-SACK classification, and how far below
# SND.UNA one may be before it is forgotten (far less than HALF keeps comparisons unambiguous).
RTX_MEMORY = 1024
RTX_HORIZON = 1 << 30
# How much later than the send before it a send at the same `now` is stamped (RACK orders
# transmissions by time; 0.1 µs is far below any RTT and exact enough at any uptime).
XMIT_TICK = 1e-7
# Compact the list once this many acked records sit before the head (and they are half of it).
COMPACT_AT = 256


class Seg:
    """One transmitted range [start, end); a FIN counts as one byte of sequence space."""

    __slots__ = ("end", "inflight_rtx", "lost", "rtx", "sacked", "start", "xmit")

    def __init__(self, start: int, end: int, xmit: float, rtx: int = 0, sacked: bool = False,
                 lost: bool = False, inflight_rtx: bool = False) -> None:
        self.start = start
        self.end = end
        self.xmit = xmit            # time of the latest transmission
        self.rtx = rtx              # times retransmitted
        self.sacked = sacked
        self.lost = lost            # marked lost (stays set while a retransmission is in flight)
        self.inflight_rtx = inflight_rtx  # a retransmission sent since last marked lost

    @property
    def size(self) -> int:
        return (self.end - self.start) & MASK

    def __repr__(self) -> str:
        flags = "".join(c for c, on in (("S", self.sacked), ("L", self.lost),
                                        ("R", self.inflight_rtx)) if on)
        return f"Seg({self.start}, {self.end}, xmit={self.xmit}, rtx={self.rtx}, {flags or '-'})"


class AckResult:
    """What one ACK changed on the scoreboard."""

    __slots__ = ("acked", "delivered", "dsack", "dsack_rtx", "sacked")

    def __init__(self) -> None:
        self.acked = 0          # bytes newly acknowledged cumulatively
        self.sacked = 0         # bytes newly SACKed
        self.delivered: list[Seg] = []  # newly acked or SACKed, in sequence order (for RACK)
        self.dsack: tuple[int, int] | None = None
        self.dsack_rtx = False

    def __repr__(self) -> str:
        return (f"AckResult(acked={self.acked}, sacked={self.sacked}, "
                f"delivered={len(self.delivered)}, dsack={self.dsack}, "
                f"dsack_rtx={self.dsack_rtx})")


class Scoreboard:
    """The Segs covering [SND.UNA, SND.MAX), contiguous and in sequence order.

    Live records are `_segs[_head:]`: a cumulative ACK moves `_head` forward (O(records acked))
    and the list is compacted now and then. Adjacent SACKed records are merged into one, so a
    SACK block the peer repeats on every ACK costs a lookup, not a walk over its segments.

    D-SACK classification (`AckResult.dsack_rtx`): a D-SACK usually arrives after the cumulative
    ACK has passed the duplicated data, when its Seg is gone. So every retransmission's range is
    also remembered in a bounded deque (the last RTX_MEMORY, contiguous ones coalesced), forgotten
    once RTX_HORIZON bytes below SND.UNA or on reset(). Ranges rather than only the highest
    retransmitted seq, because recovery retransmits holes scattered below data that was never
    resent: a D-SACK for a network-duplicated original between two holes must not count as a
    spurious retransmission (which would mislead undo and reordering logic).
    """

    __slots__ = (
        "_end",
        "_head",
        "_high_sacked",
        "_last_xmit",
        "_lost_hint",
        "_rtx_ranges",
        "_segs",
        "_una",
        "lost_out",
        "retrans_out",
        "sacked_out",
    )

    def __init__(self, una: int = 0) -> None:
        self._segs: list[Seg] = []
        self._head = 0
        self._una = una & MASK
        self._end = una & MASK      # right edge: SND.MAX as far as the map knows
        self.sacked_out = 0         # bytes SACKed
        self.lost_out = 0           # bytes marked lost (SACKed bytes never count as lost)
        self.retrans_out = 0        # bytes of retransmissions in flight
        self._lost_hint = self._una  # no Seg below it is lost without a retransmission in flight
        self._high_sacked: int | None = None
        # Made at the first retransmission: an empty deque costs most of a kilobyte, and most
        # connections never retransmit.
        self._rtx_ranges: deque[list[int]] | None = None
        self._last_xmit = float("-inf")  # the latest send time given out (_stamp)

    # ---- queries -------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._segs) - self._head

    def __iter__(self):
        segs = self._segs
        for i in range(self._head, len(segs)):
            yield segs[i]

    def first(self) -> Seg | None:
        return self._segs[self._head] if len(self._segs) > self._head else None

    def last(self) -> Seg | None:
        return self._segs[-1] if len(self._segs) > self._head else None

    @property
    def una(self) -> int:
        return self._una

    @property
    def snd_max(self) -> int:
        return self._end

    @property
    def highest_sacked(self) -> int | None:
        """End of the highest SACKed Seg, or None."""
        return self._high_sacked

    def pipe(self, outstanding: int) -> int:
        """RFC 6675 pipe with RACK's lost marks: outstanding = SND.MAX - SND.UNA."""
        return outstanding - self.sacked_out - self.lost_out + self.retrans_out

    def reset(self, una: int) -> None:
        """Empty the map (everything acked, or a fresh start at `una`)."""
        self._segs = []
        self._head = 0
        self._una = self._end = self._lost_hint = una & MASK
        self.sacked_out = self.lost_out = self.retrans_out = 0
        self._high_sacked = None
        self._rtx_ranges = None

    # ---- sending -------------------------------------------------------------------------

    def _stamp(self, now: float) -> float:
        """A send time later than every one before: the engine sends a whole burst at one
        `now`, but RACK must know a retransmission went after the new data before it."""
        last = self._last_xmit
        stamp = now if now > last else last + XMIT_TICK
        self._last_xmit = stamp
        return stamp

    def on_send(self, start: int, end: int, now: float) -> None:
        """A transmission of [start, end): new data is appended, resent data re-stamped."""
        segs = self._segs
        if start == self._end:
            if end != start:
                if len(segs) > self._head:
                    last = segs[-1]
                    # New data right after new data of the same moment is one record: RACK
                    # sees one send time for it either way, and a SACK or a retransmission
                    # splits it where needed.
                    if (last.xmit == self._last_xmit and now <= last.xmit
                            and not (last.rtx or last.sacked or last.lost)):
                        last.end = end
                        self._end = end
                        return
                segs.append(Seg(start, end, self._stamp(now)))
                self._end = end
            return
        if len(segs) == self._head:
            if self._head:
                segs.clear()
                self._head = 0
            segs.append(Seg(start, end, self._stamp(now)))
            self._una = self._lost_hint = start
            self._end = end
            return
        self._retransmit(start, end, now)

    def _retransmit(self, start: int, end: int, now: float) -> None:
        una, right = self._una, self._end
        if 0 < ((start - right) & MASK) < HALF:
            raise ValueError(f"send of [{start}, {end}) leaves a gap after SND.MAX {right}")
        if ((una - end) & MASK) < HALF:
            return  # wholly at or below SND.UNA: nothing mapped to resend
        if ((una - start) & MASK) < HALF:
            start = una  # the acked head of the range needs no record
        tail = None
        if 0 < ((end - right) & MASK) < HALF:
            tail, end = (right, end), right  # part is new data: append it after
        now = self._stamp(now)
        if start != end:
            i = self._cut(start, upper=False)
            j = self._cut(end, upper=True)
            segs = self._segs
            for k in range(i, j):
                s = segs[k]
                if s.sacked:
                    continue  # the caller normally never resends SACKed data
                s.xmit = now
                s.rtx += 1
                if not s.inflight_rtx:
                    s.inflight_rtx = True
                    self.retrans_out += (s.end - s.start) & MASK
            self._remember_rtx(start, end)
        if tail is not None:
            self._segs.append(Seg(tail[0], tail[1], now))
            self._end = tail[1]

    def _remember_rtx(self, start: int, end: int) -> None:
        ranges = self._rtx_ranges
        if ranges is None:
            ranges = self._rtx_ranges = deque(maxlen=RTX_MEMORY)
        if ranges and ranges[-1][1] == start:
            ranges[-1][1] = end  # recovery resends holes in order: coalesce
        else:
            ranges.append([start, end])

    # ---- loss marks ----------------------------------------------------------------------

    def mark_lost(self, seg: Seg) -> None:
        """Mark `seg` lost; a retransmission of it in flight is deemed lost too. Idempotent."""
        if seg.sacked:
            return
        length = (seg.end - seg.start) & MASK
        if not seg.lost:
            seg.lost = True
            self.lost_out += length
        if seg.inflight_rtx:
            seg.inflight_rtx = False
            self.retrans_out -= length
        if 0 < ((self._lost_hint - seg.start) & MASK) < HALF:
            self._lost_hint = seg.start  # seg.start < hint

    def mark_all_lost(self) -> None:
        """The RTO: every Seg not SACKed is lost, no retransmission is in flight."""
        lost = 0
        segs = self._segs
        for i in range(self._head, len(segs)):
            s = segs[i]
            if not s.sacked:
                s.lost = True
                s.inflight_rtx = False
                lost += (s.end - s.start) & MASK
        self.lost_out = lost
        self.retrans_out = 0
        self._lost_hint = self._una

    def unmark_lost(self) -> None:
        """Undo (a spurious recovery or RTO): forget every lost mark, as Linux's undo does.

        Retransmissions in flight stay counted in retrans_out: they are still in the network.
        """
        segs = self._segs
        for i in range(self._head, len(segs)):
            segs[i].lost = False
        self.lost_out = 0
        self._lost_hint = self._end

    def next_lost(self) -> Seg | None:
        """The lowest Seg lost, not SACKed, with no retransmission in flight; or None."""
        if not self.lost_out:
            return None
        segs = self._segs
        n = len(segs)
        hint = self._lost_hint  # kept within [SND.UNA, SND.MAX] by on_ack
        if hint == self._end:
            return None
        i = self._find(hint)
        while i < n:
            s = segs[i]
            if s.lost and not s.inflight_rtx and not s.sacked:
                self._lost_hint = s.start
                return s
            i += 1
        self._lost_hint = self._end
        return None

    # ---- acknowledgments -----------------------------------------------------------------

    def _acked_to(self, head: int, ack: int) -> None:
        """The live records now start at `head`: compact the list now and then, and forget
        retransmitted ranges far below the cumulative ACK."""
        segs = self._segs
        if head == len(segs):
            segs.clear()
            head = 0
        elif head >= COMPACT_AT and head * 2 >= len(segs):
            del segs[:head]
            head = 0
        self._head = head
        ranges = self._rtx_ranges
        while ranges and RTX_HORIZON <= ((ack - ranges[0][1]) & MASK) < HALF:
            ranges.popleft()

    def ack_clean(self, ack: int) -> Seg | None:
        """on_ack's fast path for a map with nothing SACKed, lost or resent and an ACK with no
        SACK blocks (a bulk transfer without loss): drop what `ack` covers and return the
        delivered Seg sent last (its acked part), which is all RACK needs; None if nothing."""
        segs = self._segs
        head = self._head
        n = len(segs)
        una = self._una
        if head == n or not 0 < ((ack - una) & MASK) < HALF:
            return None
        if ((ack - self._end) & MASK) < HALF:
            ack = self._end
        last = None
        while head < n:
            s = segs[head]
            if ((ack - s.end) & MASK) < HALF:  # s.end <= ack: wholly acked
                last = s
                head += 1
                continue
            if s.start != ack:  # straddles ack (a TSO segment acked in parts)
                last = Seg(s.start, ack, s.xmit)
                s.start = ack
            break
        self._una = self._lost_hint = ack
        self._acked_to(head, ack)
        return last

    def on_ack(self, ack: int, blocks: list[tuple[int, int]] | None, now: float) -> AckResult:
        """Apply one ACK: the cumulative point `ack`, then its SACK `blocks` (or None)."""
        res = AckResult()
        segs = self._segs
        head = self._head
        n = len(segs)
        una = self._una
        if head < n and 0 < ((ack - una) & MASK) < HALF:
            if ((ack - self._end) & MASK) < HALF:
                ack = self._end  # beyond SND.MAX cannot be; treat as all acked
            res.acked = (ack - una) & MASK
            delivered = res.delivered
            while head < n:
                s = segs[head]
                length = (s.end - s.start) & MASK
                if ((ack - s.end) & MASK) < HALF:  # s.end <= ack: wholly acked
                    if s.sacked:
                        self.sacked_out -= length
                    else:
                        delivered.append(s)
                        if s.lost:
                            self.lost_out -= length
                        if s.inflight_rtx:
                            self.retrans_out -= length
                    head += 1
                    continue
                if s.start != ack:  # straddles ack: trim, deliver the acked piece
                    part = (ack - s.start) & MASK
                    if s.sacked:
                        self.sacked_out -= part
                    else:
                        delivered.append(Seg(s.start, ack, s.xmit, s.rtx, False, s.lost,
                                             s.inflight_rtx))
                        if s.lost:
                            self.lost_out -= part
                        if s.inflight_rtx:
                            self.retrans_out -= part
                    s.start = ack
                break
            self._una = ack
            if 0 < ((ack - self._lost_hint) & MASK) < HALF:
                self._lost_hint = ack
            hs = self._high_sacked
            if hs is not None and ((ack - hs) & MASK) < HALF:
                self._high_sacked = None
            self._acked_to(head, ack)
        if blocks:
            self._sack(ack, blocks, res)
        return res

    def _sack(self, ack: int, blocks: list[tuple[int, int]], res: AckResult) -> None:
        right = self._end
        valid = []
        for left, r in blocks:
            size = (r - left) & MASK
            # Empty, inverted, or reaching past SND.MAX: ignore (RFC 2018; Linux does the same).
            if size == 0 or size >= HALF or ((right - r) & MASK) >= HALF:
                valid.append(None)
            else:
                valid.append((left & MASK, r & MASK))
        first = valid[0]
        if first is not None:
            left, r = first
            second = valid[1] if len(valid) > 1 else None
            # RFC 2883 4: a first block starting below the ACK, or lying inside the second
            # block, reports a duplicate (Linux tests the left edge too: a true SACK block
            # never starts below the cumulative ACK).
            if (0 < ((ack - left) & MASK) < HALF
                    or (second is not None and ((left - second[0]) & MASK) < HALF
                        and ((second[1] - r) & MASK) < HALF)):
                res.dsack = first
                res.dsack_rtx = self._was_retransmitted(left, r)
                valid[0] = None
        if len(self) == 0:
            return
        una = self._una
        todo = []
        for b in valid:
            if b is None or ((una - b[1]) & MASK) < HALF:
                continue  # wholly at or below SND.UNA: old news
            left = una if ((una - b[0]) & MASK) < HALF else b[0]
            todo.append(((left - una) & MASK, left, b[1]))
        todo.sort()  # delivered must come out in sequence order for RACK's reordering test
        for _, left, r in todo:
            self._mark_sacked(left, r, res)

    def _mark_sacked(self, left: int, right: int, res: AckResult) -> None:
        segs = self._segs
        i = self._find(left)
        if segs[i].sacked and ((segs[i].end - right) & MASK) < HALF:
            return  # already SACKed: the common case of a block the peer repeats
        i = self._cut(left, upper=False)
        j = self._cut(right, upper=True)
        delivered = res.delivered
        newly = 0
        for k in range(i, j):
            s = segs[k]
            if s.sacked:
                continue
            length = (s.end - s.start) & MASK
            s.sacked = True
            newly += length
            if s.lost:
                s.lost = False
                self.lost_out -= length
            if s.inflight_rtx:
                s.inflight_rtx = False
                self.retrans_out -= length
            delivered.append(s)
        if not newly:
            return
        res.sacked += newly
        self.sacked_out += newly
        hs = self._high_sacked
        top = segs[j - 1].end
        if hs is None or 0 < ((top - hs) & MASK) < HALF:
            self._high_sacked = top
        self._merge_sacked(i, j)

    def _merge_sacked(self, i: int, j: int) -> None:
        """Merge runs of adjacent SACKed Segs in segs[i-1:j+1] into one record each.

        The merged record is a new object: the Segs just handed out in `delivered` keep their
        own ranges and times for RACK.
        """
        segs = self._segs
        lo = i - 1 if i > self._head and segs[i - 1].sacked else i
        hi = j + 1 if j < len(segs) and segs[j].sacked else j
        k = lo
        while k < hi:
            if not segs[k].sacked:
                k += 1
                continue
            m = k + 1
            while m < hi and segs[m].sacked:
                m += 1
            if m - k > 1:
                run = segs[k:m]
                merged = Seg(run[0].start, run[-1].end, max(s.xmit for s in run),
                             max(s.rtx for s in run), True)
                segs[k:m] = [merged]
                hi -= m - k - 1
            k += 1

    def _was_retransmitted(self, left: int, right: int) -> bool:
        for a, b in self._rtx_ranges or ():
            # [left, right) overlaps [a, b): left < b and a < right
            if 0 < ((b - left) & MASK) < HALF and 0 < ((right - a) & MASK) < HALF:
                return True
        return False

    # ---- record surgery ------------------------------------------------------------------

    def _find(self, seq: int) -> int:
        """Index of the live Seg containing seq, for SND.UNA <= seq < SND.MAX."""
        base = self._segs[self._head].start
        return bisect_right(self._segs, (seq - base) & MASK, self._head, len(self._segs),
                            key=lambda s: (s.start - base) & MASK) - 1

    def _cut(self, seq: int, upper: bool) -> int:
        """Make `seq` a record boundary and return the index of the record starting there.

        A SACKed record is never split (its range needs no finer detail): then the index returned
        includes it, on the side `upper` asks for, and callers skip SACKed records.
        """
        if seq == self._end:
            return len(self._segs)
        i = self._find(seq)
        s = self._segs[i]
        if s.start == seq:
            return i
        if s.sacked:
            return i + 1 if upper else i
        self._segs.insert(i + 1, Seg(seq, s.end, s.xmit, s.rtx, False, s.lost, s.inflight_rtx))
        s.end = seq
        return i + 1
