"""Segment arrival: RFC 9293 3.10.7, one method per step, in the RFC's order.

SYN-SENT is apart (3.10.7.3, `_on_syn_sent`); every other state goes through the steps of
3.10.7.4: first the sequence number (with RFC 7323 PAWS before it), second RST, third
security (not used: IP security compartments are gone from RFC 9293's IP), fourth SYN,
fifth ACK, sixth URG (no urgent semantics: RFC 6093 advises against it; the urgent pointer
is ignored and the data taken as ordinary data), seventh the segment text, eighth FIN.
Header prediction (`predicted`) is the fast path in front: in ESTABLISHED, the in-order
data segment and the pure ACK of new data, each doing exactly what the steps would.
"""

from __future__ import annotations

from ..wire.tcp import ACK, FIN, RST, SYN, URG, Segment
from . import events as ev
from .seq import HALF, MASK
from .state import CLOSING, ESTABLISHED, FIN_WAIT_1, FIN_WAIT_2, LAST_ACK, SYN_RECEIVED, SYN_SENT
from .timestamps import PAWS_IDLE, PAWS_WINDOW
from .transitions import ON_FIN, ON_FIN_ACKED, ON_FIN_OURS_ACKED

_PREDICTED = ACK | SYN | FIN | RST | URG  # of these, header prediction wants ACK alone
_OOW_ACK_INTERVAL = 0.5  # Linux net.ipv4.tcp_invalid_ratelimit: see _oow_ack
_SACK_RECENT = 4  # out-of-order arrivals remembered to order the SACK blocks we send


class Arrival:
    """The arrival half of Connection (a mixin: the fields live on Connection)."""

    __slots__ = ()

    def on_segment(self, seg: Segment, now: float) -> None:
        state = self.state
        if (state is ESTABLISHED and seg.flags & _PREDICTED == ACK and seg.seq == self.rcv_nxt
                and seg.sack_blocks is None
                and self.predicted(seg.seq, seg.ack, seg.window, seg.payload, seg.ts_val,
                                   seg.ts_ecr, now)):
            return
        self.segments_in += 1
        self.clock = now
        if state is SYN_SENT:
            self._on_syn_sent(seg, now)
            return
        taken = self._step1_sequence(seg, now)
        if taken is None:
            return
        seq, payload, flags, offset, tsval = taken
        if flags & RST:
            self._step2_rst(seq, now)
            return
        # Third, security: nothing to check (no IP security compartments).
        if flags & SYN:
            self._step4_syn(now)
            return
        # TS.Recent (RFC 7323 4.3, 5.3 R3) takes the TSval of a segment at or before the
        # point our last ACK acknowledged: with delayed ACKs, the earliest one unanswered,
        # which is what the peer's RTT measurement wants echoed. (SEG.SEQ <= Last.ACK.sent
        # alone, as Linux: the RFC's "< SEG.SEQ + SEG.LEN" would never let a pure ACK in.)
        if tsval is not None and ((self.last_ack_sent - seg.seq) & MASK) < HALF:
            self.ts_recent = tsval
            self.ts_recent_age = now
        if not flags & ACK or not self._step5_ack(seg, now):
            return
        # Sixth, URG: ignored (see the module's docstring).
        plen = len(payload)
        if plen and not self._step7_text(seq, payload, plen, flags, offset, now):
            return
        self._step8_fin(seq, plen, flags, now)
        if self.ack_now or self.unacked_segments:
            self._mark()

    # ---------------------------------------------------------------- first

    def _step1_sequence(self, seg: Segment, now: float):
        """PAWS, then the acceptability test and trimming to the window (RFC 9293 3.10.7.4
        first, RFC 7323 5.3 R1-R2). Returns (seq, payload, flags, offset, tsval) of what is
        left to process, offset from RCV.NXT, or None when the segment is dropped."""
        flags = seg.flags
        seq = seg.seq
        payload = seg.payload
        plen = len(payload)
        rcv_nxt = self.rcv_nxt
        if flags & SYN and self.state is SYN_RECEIVED and seq == self.irs:
            # The peer's SYN again, which the test below would refuse (it does not count
            # the SYN). Alone: our SYN-ACK was lost, send it again. With an ACK: the peer's
            # SYN-ACK of a simultaneous open (RFC 9293 figure 8); its ACK is the news.
            if not flags & ACK:
                self._send_syn_ack()
                return None
            flags &= ~SYN
            seq = rcv_nxt

        # PAWS (RFC 7323 5.3 R1): a TSval older than TS.Recent marks an old duplicate,
        # unless TS.Recent is too old to judge by (24 days idle). One tick older is let
        # through, as Linux does: with 1 ms ticks, a segment merely reordered behind a
        # later one is not thrown away (but TS.Recent never goes back).
        tsval = seg.ts_val
        if tsval is not None and self.ts_ok and not flags & RST:
            older = (self.ts_recent - tsval) & MASK
            if 0 < older < HALF and now - self.ts_recent_age <= PAWS_IDLE:
                if older > PAWS_WINDOW:
                    self.host.count("paws_rejected")
                    self._oow_ack(seg, now)
                    return None
                tsval = None
        else:
            tsval = None

        wnd = (self.rcv_adv - rcv_nxt) & MASK
        if wnd >= HALF:
            wnd = 0
        seg_len = plen + (flags & FIN)
        offset = (seq - rcv_nxt) & MASK
        if offset == 0 and (seg_len == 0 or wnd):
            acceptable = True
        elif seg_len == 0:
            acceptable = offset < wnd
        else:
            end = (offset + seg_len - 1) & MASK
            acceptable = wnd > 0 and (offset < wnd or end < wnd or (
                offset >= HALF and end < HALF))  # starts before RCV.NXT, ends inside
        if not acceptable:
            if offset == 0 and not wnd:
                # A zero-window probe: keep its ACK and window, drop its data, and answer
                # it (RFC 9293 3.8.6.1): the answer is how the prober learns the window.
                if plen:
                    self.host.count("rx_out_of_window")  # its data lies beyond the window
                self.ack_now = not flags & RST
                return seq, b"", flags & ~FIN, 0, tsval
            if seg_len and offset >= HALF and self.sack_ok:
                # All of it below RCV.NXT: a duplicate. Our ACK reports it as a D-SACK
                # (RFC 2883), so the sender can tell a spurious retransmission.
                self._note_dsack(seq, (seq + seg_len) & MASK)
            if not flags & RST:
                # RFC 9293: <SEQ=SND.NXT><ACK=RCV.NXT>. The RFC's SND.NXT is our snd_max:
                # snd_nxt steps back on an RTO, and an ACK from there is refused as old.
                self._oow_ack(seg, now)
            self.host.count("rx_out_of_window")
            return None
        if seg_len:
            # Trim to the window: bytes before RCV.NXT and beyond the right edge.
            if offset >= HALF:  # starts before RCV.NXT
                cut = (rcv_nxt - seq) & MASK
                if self.sack_ok:
                    self._note_dsack(seq, (seq + min(cut, plen)) & MASK)
                if cut >= plen:  # all data old; the FIN is what is new
                    payload, plen = b"", 0
                else:
                    payload = payload[cut:]
                    plen -= cut
                seq = rcv_nxt
                offset = 0
            if offset + plen > wnd:
                keep = max(wnd - offset, 0)
                payload = payload[:keep]
                flags &= ~FIN
        return seq, payload, flags, offset, tsval

    # ---------------------------------------------------------------- second, fourth

    def _step2_rst(self, seq: int, now: float) -> None:
        """RFC 5961 3.2: only an RST at exactly RCV.NXT resets; one elsewhere in the window
        is answered with a challenge ACK."""
        if seq == self.rcv_nxt:
            self._on_reset(now)
        else:
            self.host.count("rst_challenged")
            self._challenge_ack(now)

    def _step4_syn(self, now: float) -> None:
        """A SYN in a synchronized state: a challenge ACK (RFC 5961 4.2), never a reset."""
        self.host.count("syn_challenged")
        self._challenge_ack(now)

    # ---------------------------------------------------------------- fifth

    def _step5_ack(self, seg: Segment, now: float) -> bool:
        """The ACK field; False when processing stops here."""
        if self.state is SYN_RECEIVED:
            # Acceptable: SND.UNA < SEG.ACK =< SND.NXT. Our ISS itself is not (RFC 9293).
            if not (0 < ((seg.ack - self.snd_una) & MASK)
                    <= ((self.snd_max - self.snd_una) & MASK)):
                self.host.send_reset_for(seg, now)
                return False
            self._established_from_syn_received(seg, now)
        if not self._on_ack(seg, now):
            return False
        new = ON_FIN_ACKED.get(self.state) if self.fin_queued and self.fin_acked() else None
        if new is not None:
            self._enter(new, "fin acked", now)
            return self.state is FIN_WAIT_2
        return True

    # ---------------------------------------------------------------- seventh

    def _step7_text(self, seq: int, payload, plen: int, flags: int, offset: int,
                    now: float) -> bool:
        """Segment text: into the buffer in order, or held out of order; False to stop."""
        state = self.state
        # (CAN_RECEIVE spelled out: a frozenset lookup hashes the Enum in Python)
        if not (state is ESTABLISHED or state is FIN_WAIT_1 or state is FIN_WAIT_2):
            return False  # CLOSE-WAIT, CLOSING, LAST-ACK: the peer already sent FIN
        if self.app_closed:
            # Nobody will read it: tell the peer at once (RFC 2525 2.17).
            self.host.count("data_after_close")
            self.abort(now, "data after close")
            return False
        if offset == 0:
            self._take_in_order(payload, plen, now)
            return True
        if self.sack_ok and self.ooo.covers(seq, plen, self.rcv_nxt):
            self._note_dsack(seq, (seq + plen) & MASK)  # held already: a duplicate
        self.ooo.add(seq, bytes(payload), self.rcv_nxt)
        if self.sack_ok:  # the first SACK block will be this arrival's
            recent = self.sack_recent
            if type(recent) is tuple:
                recent = self.sack_recent = []
            recent.insert(0, seq)
            del recent[_SACK_RECENT:]
        if flags & FIN:
            self.ooo_fin = (seq + plen) & MASK
        self.host.count("rx_out_of_order")
        # A duplicate ACK for each one, also within one batch: the sender's fast
        # retransmit counts them (RFC 5681 4.2).
        self._xmit(ACK, self.snd_max)
        return False

    # ---------------------------------------------------------------- eighth

    def _step8_fin(self, seq: int, plen: int, flags: int, now: float) -> None:
        """The FIN, when it is the next thing in sequence (or an early one now reached)."""
        rcv_nxt = self.rcv_nxt
        if flags & FIN and ((seq + plen) & MASK) == rcv_nxt:
            pass
        elif self.ooo_fin is None or self.ooo_fin != rcv_nxt:
            return
        if self.peer_fin:
            self.ack_now = True  # a retransmitted FIN: ACK it again
        else:
            self._on_fin(now)

    def _on_fin(self, now: float) -> None:
        self.peer_fin = True
        self.ooo_fin = None
        self.rcv_nxt = (self.rcv_nxt + 1) & MASK
        if ((self.rcv_adv - self.rcv_nxt) & MASK) >= HALF:
            # The FIN sat just past the right edge of the window (data filled it exactly);
            # it is taken, as Linux takes it. Keep RCV.ADV from falling behind RCV.NXT.
            self.rcv_adv = self.rcv_nxt
        self.ack_now = True  # a FIN is acknowledged at once
        self._mark()
        self.host.emit(ev.PeerClosed(self.id))
        state = self.state
        new = ON_FIN_OURS_ACKED.get(state) if self.fin_queued and self.fin_acked() else None
        if new is None:
            new = ON_FIN.get(state)
        if new is not None:
            self._enter(new, "fin", now)

    def predicted(self, seq: int, ack: int, window: int, payload, tsval: int | None,
                  tsecr: int | None, now: float) -> bool:
        """Header prediction: the two segments a bulk transfer is made of, handled in short.

        The caller has checked: ESTABLISHED, of SYN/FIN/RST/URG/ACK only ACK set, SEG.SEQ =
        RCV.NXT, no SACK blocks (Stack.receive calls this straight from the header's fields,
        with no Segment made). Taken here, outside any loss recovery: in-order data that fits
        the window (acknowledging new data or not), or a pure ACK of new data. Each
        step is what on_segment's general path does for exactly that segment; anything else
        returns False having changed nothing, and takes the general path. With timestamps,
        PAWS and the TS.Recent update are the general path's too: a segment at RCV.NXT is at
        or after Last.ACK.sent, so it updates TS.Recent exactly when they are equal.
        """
        if self.ooo_fin is not None:
            return False
        if tsval is not None:
            if not self.ts_ok:
                tsval = None
            elif ((tsval - self.ts_recent) & MASK) >= HALF:
                return False  # PAWS, or a stale TS.Recent: the general path decides
        una = self.snd_una
        acked = (ack - una) & MASK
        if acked:
            if acked > ((self.snd_max - una) & MASK):
                return False
            board = self.board
            if board is None:
                if self.in_recovery:
                    return False
            elif (board.sacked_out or board.lost_out or board.retrans_out or self.in_loss
                  or self.in_recovery or self.tlp.active):
                return False
        elif not payload:
            return False  # a duplicate ACK or a window update: the general path
        if payload:
            if self.ooo.blocks or self.app_closed:
                return False
            plen = len(payload)
            wnd = (self.rcv_adv - seq) & MASK
            if plen > wnd or wnd >= HALF:
                return False
            self._took(tsval, now)
            if acked:  # a request or an answer: data that also acknowledges ours
                self._on_new_ack(ack, acked, tsecr, None, now)
            self._update_window(seq, ack, window)
            self._take_in_order(payload, plen, now)
            self._mark()
            return True
        self._took(tsval, now)
        self._on_new_ack(ack, acked, tsecr, None, now)
        self._update_window(seq, ack, window)
        return True

    def _took(self, tsval: int | None, now: float) -> None:
        """What every segment header prediction takes does first."""
        self.segments_in += 1
        self.clock = now
        if tsval is not None and self.last_ack_sent == self.rcv_nxt:
            self.ts_recent = tsval
            self.ts_recent_age = now

    def _take_in_order(self, payload, plen: int, now: float) -> None:
        """Segment text that starts at RCV.NXT: into the buffer, with what it unblocks."""
        self.rcvbuf.append(payload)
        rcv_nxt = (self.rcv_nxt + plen) & MASK
        if self.ooo.blocks:
            for piece in self.ooo.pop_ready(rcv_nxt):
                self.rcvbuf.append(piece)
                rcv_nxt = (rcv_nxt + len(piece)) & MASK
            if not self.ooo.blocks:
                self.sack_recent = ()
            self.ack_now = True  # filled (part of) a hole: ACK at once (RFC 5681 4.2)
        self.rcv_nxt = rcv_nxt
        if not self.data_event_pending:
            self.data_event_pending = True
            self.host.emit(ev.DataReceived(self.id))
        self.unacked_segments += 1
        # ACK every second segment, or two MSS worth of bytes: a device
        # with receive offload hands up one segment of up to 64 KB.
        cfg = self.cfg
        if (self.unacked_segments >= 2 or plen >= 2 * (self.mss_own - self.ts_len)
                or not cfg.delayed_ack or self.ack_now):
            self.ack_now = True
        elif self.delack_at is None:
            self.delack_at = now + cfg.delayed_ack_timeout

    def _on_syn_sent(self, seg: Segment, now: float) -> None:
        """RFC 9293 3.10.7.3."""
        flags = seg.flags
        if flags & ACK:
            ack_off = (seg.ack - self.iss) & MASK
            if ack_off == 0 or ack_off > ((self.snd_max - self.iss) & MASK):
                if not flags & RST:
                    self.host.send_reset_for(seg, now)
                return
        if flags & RST:
            if flags & ACK:
                self.host.count("connection_refused")
                self._finish(ev.ConnectionReset(self.id, refused=True), "refused", now)
            return
        if not flags & SYN:
            return
        self.irs = seg.seq
        self.rcv_nxt = (seg.seq + 1) & MASK
        self.rcv_adv = (self.rcv_nxt + min(self.cfg.receive_buffer, 65535)) & MASK
        self._take_syn_options(seg)
        if flags & ACK:
            self.snd_una = seg.ack
            self._rtt_ack(seg.ack, now, seg.ts_ecr)
            self.rto_at = None
            self.backoffs = 0
            self._update_window(seg.seq, seg.ack, seg.window, force=True)
            self._set_state(ESTABLISHED, "syn-ack", now)
            self.host.emit(ev.Connected(self.id))
            self._xmit(ACK, self.snd_max)
            self._mark()  # data queued before the handshake may go now
        else:
            # Simultaneous open: both sides sent SYN (RFC 9293 figure 7).
            self.snd_wnd = seg.window
            self.max_snd_wnd = seg.window
            self.snd_wl1 = seg.seq
            self.snd_wl2 = self.iss
            self._set_state(SYN_RECEIVED, "simultaneous open", now)
            self._send_syn_ack(seg)

    def _established_from_syn_received(self, seg: Segment, now: float) -> None:
        self._update_window(seg.seq, seg.ack, seg.window, force=True)
        self._set_state(ESTABLISHED, "ack of syn", now)
        if self.listener is not None:
            self.host.accepted(self)
        else:
            self.host.emit(ev.Connected(self.id))

    def _update_window(self, seq: int, ack: int, window: int, force: bool = False) -> None:
        # RFC 9293 3.10.7.4: take the window only from a newer segment.
        wl1 = self.snd_wl1
        if (force or 0 < ((seq - wl1) & MASK) < HALF
                or (seq == wl1 and ((ack - self.snd_wl2) & MASK) < HALF)):
            wnd = window << self.snd_wscale
            if wnd != self.snd_wnd:
                if self.snd_wnd == 0 and wnd:
                    self.persist_at = None
                    self.persist_probes = 0
                self._mark()
            self.snd_wnd = wnd
            if wnd > self.max_snd_wnd:
                self.max_snd_wnd = wnd
            self.snd_wl1 = seq
            self.snd_wl2 = ack

    def _on_ack(self, seg: Segment, now: float) -> bool:
        """Process SEG.ACK; False when the segment must be dropped."""
        ack = seg.ack
        una = self.snd_una
        acked = (ack - una) & MASK
        in_flight = (self.snd_max - una) & MASK
        if acked > in_flight:
            if acked < HALF:  # acks something we never sent
                self.host.count("ack_of_unsent")
                self._oow_ack(seg, now)
                return False
            # An old ACK: fine unless older than any window we offered (RFC 5961 5.2).
            if ((una - ack) & MASK) > self.max_snd_wnd:
                self.host.count("ack_too_old")
                self._challenge_ack(now)
                return False
            return True
        if acked:
            self._on_new_ack(ack, acked, seg.ts_ecr, seg.sack_blocks, now)
        elif self.board is not None:
            if in_flight and not seg.payload and not seg.flags & FIN:
                self.dupacks += 1
                self.host.count("dup_acks")
            if seg.sack_blocks is not None:
                self._sack_on_ack(seg.sack_blocks, seg.ts_ecr, 0, None, now)
                self._mark()  # what is SACKed left the network: room for more (pipe)
        elif in_flight and not seg.payload and not seg.flags & FIN and (
                (seg.window << self.snd_wscale) == self.snd_wnd):
            self._on_dup_ack(now)
        self._update_window(seg.seq, ack, seg.window)
        return True

    def _on_new_ack(self, ack: int, acked: int, tsecr: int | None, sack_blocks,
                    now: float) -> None:
        if self.snd_una == self.iss:  # the ACK of our SYN: that byte is no data for cwnd
            acked -= 1
        # Data bytes acknowledged: the SYN and FIN occupy sequence space, not the buffer.
        self._trim(ack)
        self.snd_una = ack
        if ((self.snd_nxt - ack) & MASK) >= HALF:  # after an RTO rewind, the ACK overtook SND.NXT
            self.snd_nxt = ack
        rtt = self._rtt_ack(ack, now, tsecr)
        if self.backoffs:
            self.backoffs = 0
            self.rtt.reset_backoff()
        self.dupacks = 0
        if self.snd_una == self.snd_max:
            self.rto_at = None
        else:
            self.rto_at = now + self.rtt.rto
        if self.board is not None:  # SACK: RACK-TLP, PRR, undo (recovery.py)
            self._sack_on_ack(sack_blocks, tsecr, acked, rtt, now)
        elif self.in_recovery:  # NewReno (RFC 6582)
            mss = self.snd_mss
            if ((ack - self.recover) & MASK) < HALF:  # full ACK: leave recovery
                self.in_recovery = False
                flight = (self.snd_max - ack) & MASK
                self.cwnd = min(self.ssthresh, max(flight, mss) + mss)
            else:  # partial ACK: the next hole was lost too
                self._retransmit_first(now)
                self.cwnd = max(self.cwnd - acked + mss, mss)
        else:
            self.cc.on_ack(self, acked, rtt, now)
        self._mark()

    def _on_dup_ack(self, now: float) -> None:
        """NewReno's fast retransmit and recovery (RFC 5681 3.2, RFC 6582), without SACK."""
        self.dupacks += 1
        self.host.count("dup_acks")
        mss = self.snd_mss
        if self.dupacks == 3 and not self.in_recovery:
            # RFC 6582: a new recovery only once everything sent before the last began is acked.
            if ((self.snd_una - self.recover) & MASK) < HALF or self.recover == self.iss:
                self.cc.on_congestion(self, now)
                self.recover = self.snd_max
                self.in_recovery = True
                self.host.count("fast_retransmits")
                self._retransmit_first(now)
                self.cwnd = self.ssthresh + 3 * mss
        elif self.in_recovery:
            self.cwnd += mss  # inflate: a segment has left the network
            self._mark()

    def _on_reset(self, now: float) -> None:
        state = self.state
        if state is SYN_RECEIVED and self.listener is not None:
            # A passive open that is reset goes back to LISTEN: just forget it.
            self._finish(None, "reset", now)
        elif state is CLOSING or state is LAST_ACK:
            self._finish(ev.ConnectionClosed(self.id), "reset", now)
        else:
            self.host.count("resets_received")
            self._finish(ev.ConnectionReset(self.id, refused=state is SYN_RECEIVED), "reset", now)

    def _oow_ack(self, seg: Segment, now: float) -> None:
        """The ACK that answers an unacceptable segment or an ACK of data never sent.

        For a segment that occupies no sequence space (or is a SYN) at most one per
        _OOW_ACK_INTERVAL per connection, as Linux does (tcp_oow_rate_limited): two ends
        out of step, e.g. after one took an injected segment, would otherwise answer
        each other's ACKs with ACKs forever, at wire speed (an ACK storm).
        """
        if not (seg.payload or seg.flags & FIN) or seg.flags & SYN:
            last = self.last_oow_ack
            if last is not None and 0 <= now - last < _OOW_ACK_INTERVAL:
                self.host.count("oow_acks_suppressed")
                return
            self.last_oow_ack = now
        self._xmit(ACK, self.snd_max)

    def _challenge_ack(self, now: float) -> None:
        if self.host.challenge_ack_allowed(now):
            self._xmit(ACK, self.snd_max)
