"""One TCP connection: the RFC 9293 state machine, sans-IO.

`on_segment` follows RFC 9293 3.10.7.4 in order: sequence check, RST, SYN,
ACK, URG, text, FIN. Output is produced by `output()`, which the stack calls
once per flush for every connection with something to say, so application
writes and ACKs coalesce. Packets go to `host.out`; events to `host.emit`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..wire.tcp import ACK, FIN, PSH, RST, SYN, URG, Segment, build_options, build_segment
from . import events as ev
from .reassembly import Reassembly
from .rtt import RttEstimator
from .seq import HALF, MASK
from .state import CAN_RECEIVE, CAN_SEND, State

if TYPE_CHECKING:
    from .host import Host

_DEFAULT_PEER_MSS = 536  # RFC 9293 3.7.1, when the SYN carries no MSS option
_OOW_ACK_INTERVAL = 0.5  # Linux net.ipv4.tcp_invalid_ratelimit: see _oow_ack

ESTABLISHED = State.ESTABLISHED
SYN_SENT = State.SYN_SENT
SYN_RECEIVED = State.SYN_RECEIVED
FIN_WAIT_1 = State.FIN_WAIT_1
FIN_WAIT_2 = State.FIN_WAIT_2
CLOSE_WAIT = State.CLOSE_WAIT
CLOSING = State.CLOSING
LAST_ACK = State.LAST_ACK
TIME_WAIT = State.TIME_WAIT
CLOSED = State.CLOSED
_PREDICTED = ACK | SYN | FIN | RST | URG  # of these, header prediction wants ACK alone


class Connection:
    __slots__ = (
        "host", "cfg", "id", "local", "lport", "remote", "rport", "key", "state", "listener",
        "app_closed", "iss", "snd_una", "snd_nxt", "snd_max", "snd_wnd", "snd_wl1", "snd_wl2",
        "max_snd_wnd", "snd_wscale", "rcv_wscale", "snd_mss", "sndbuf", "buf_seq", "fin_queued",
        "irs", "rcv_nxt", "rcv_adv", "rcvbuf", "ooo", "ooo_fin", "peer_fin", "cwnd", "ssthresh",
        "dupacks", "recover", "in_recovery", "rtt", "rtt_seq", "rtt_time", "backoffs",
        "rto_at", "delack_at", "persist_at", "fin_wait_2_at", "armed", "unacked_segments",
        "ack_now", "data_event_pending", "nodelay", "dirty", "persist_probes", "accepted",
        "retransmitted", "segments_in", "segments_out", "opened_at", "last_oow_ack",
    )

    def __init__(self, host: Host, conn_id: int, lport: int, remote: int, rport: int, iss: int,
                 now: float, listener=None):
        cfg = host.config
        self.host = host
        self.cfg = cfg
        self.id = conn_id
        self.local = host.address
        self.lport = lport
        self.remote = remote
        self.rport = rport
        self.key = (remote, rport, lport)
        self.state = CLOSED
        self.listener = listener  # the Listener of a passive open
        self.accepted = False
        self.app_closed = False
        self.iss = iss
        self.snd_una = iss
        self.snd_nxt = iss
        self.snd_max = iss  # highest sequence number sent: SND.NXT can step back on RTO
        self.snd_wnd = 0
        self.snd_wl1 = 0
        self.snd_wl2 = 0
        self.max_snd_wnd = 0
        self.snd_wscale = 0
        self.rcv_wscale = 0
        self.snd_mss = min(_DEFAULT_PEER_MSS, cfg.mss)
        self.sndbuf = bytearray()
        self.buf_seq = (iss + 1) & MASK  # sequence number of sndbuf[0]
        self.fin_queued = False
        self.irs = 0
        self.rcv_nxt = 0
        self.rcv_adv = 0  # right edge of the window we advertised
        self.rcvbuf = bytearray()
        self.ooo = Reassembly()
        self.ooo_fin: int | None = None  # sequence number of a FIN that arrived early
        self.peer_fin = False
        self.cwnd = 0
        self.ssthresh = 1 << 30
        self.dupacks = 0
        self.recover = iss
        self.in_recovery = False
        self.rtt = RttEstimator(cfg.rto_initial, cfg.rto_min, cfg.rto_max)
        self.rtt_seq: int | None = None  # segment being timed (Karn: never a retransmission)
        self.rtt_time = 0.0
        self.backoffs = 0
        self.rto_at: float | None = None
        self.delack_at: float | None = None
        self.persist_at: float | None = None
        self.fin_wait_2_at: float | None = None
        self.armed: float | None = None  # deadline this connection has in the stack's heap
        self.unacked_segments = 0
        self.ack_now = False
        self.data_event_pending = False
        self.nodelay = not cfg.nagle
        self.dirty = False
        self.persist_probes = 0
        self.retransmitted = 0
        self.segments_in = 0
        self.segments_out = 0
        self.opened_at = now
        self.last_oow_ack: float | None = None

    # ------------------------------------------------------------------ helpers

    def _set_state(self, new: State, cause: str, now: float) -> None:
        old = self.state
        self.state = new
        self.host.state_changed(self, old, new, cause, now)

    def _window_field(self) -> int:
        """The window to advertise, never moving the right edge left.

        Receiver-side silly window avoidance (RFC 9293 3.8.6.2.2): the edge
        only advances by at least min(buffer / 2, MSS).
        """
        rcv_nxt = self.rcv_nxt
        space = self.cfg.receive_buffer - len(self.rcvbuf)
        adv = self.rcv_adv
        current = (adv - rcv_nxt) & MASK
        if current >= HALF:  # stale edge behind RCV.NXT (cannot happen once synchronized)
            current = 0
        if space - current >= min(self.cfg.receive_buffer >> 1, self.cfg.mss) or space == current:
            field = space >> self.rcv_wscale
            if field > 65535:
                field = 65535
            wnd = field << self.rcv_wscale
            if wnd > current:
                self.rcv_adv = (rcv_nxt + wnd) & MASK
                return field
        return current >> self.rcv_wscale

    def _xmit(self, flags: int, seq: int, payload=b"", options: bytes = b"") -> None:
        if flags & ACK:
            ack = self.rcv_nxt
            self.unacked_segments = 0
            self.ack_now = False
            self.delack_at = None
        else:
            ack = 0
        if flags & SYN:  # the window in a SYN is never scaled (RFC 7323 2.2)
            window = min(self.cfg.receive_buffer, 65535)
            self.rcv_adv = (self.rcv_nxt + window) & MASK
        else:
            window = self._window_field()
        self.segments_out += 1
        self.host.out.append(build_segment(
            self.local, self.remote, self.lport, self.rport, seq, ack, flags, window, options,
            payload, ttl=self.cfg.ttl, csum_offload=self.cfg.tx_checksum_offload))

    def _syn_options(self, reply_to: Segment | None) -> bytes:
        wscale = None
        if self.cfg.window_scale and (reply_to is None or reply_to.wscale is not None):
            wscale = self.cfg.rcv_wscale
        return build_options(mss=self.cfg.mss, wscale=wscale)

    def _send_syn(self) -> None:
        self._xmit(SYN, self.iss, options=self._syn_options(None))

    def _send_syn_ack(self, syn: Segment | None = None) -> None:
        if syn is None:  # a retransmission: echo window scaling only if the peer's SYN had it
            scaled = self.rcv_wscale or self.snd_wscale  # both 0 reads the same as none
            options = build_options(mss=self.cfg.mss, wscale=self.rcv_wscale if scaled else None)
        else:
            options = self._syn_options(syn)
        self._xmit(SYN | ACK, self.iss, options=options)

    def _take_syn_options(self, seg: Segment) -> None:
        """Adopt what the peer's SYN offered (RFC 9293 3.7.1, RFC 7323 2.2)."""
        cfg = self.cfg
        self.snd_mss = min(seg.mss if seg.mss else _DEFAULT_PEER_MSS, cfg.mss)
        if cfg.window_scale and seg.wscale is not None:
            self.snd_wscale = min(seg.wscale, 14)
            self.rcv_wscale = cfg.rcv_wscale
        else:
            self.snd_wscale = 0
            self.rcv_wscale = 0
        self.cwnd = cfg.initial_window * self.snd_mss

    def fin_acked(self) -> bool:
        # Once all data is acknowledged the FIN sits at BUF_SEQ.
        return self.fin_queued and not self.sndbuf and self.snd_una == (self.buf_seq + 1) & MASK

    def _mark(self) -> None:
        if not self.dirty:
            self.dirty = True
            self.host.dirty.append(self)

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

    # ------------------------------------------------------------ opening

    def open_active(self, now: float) -> None:
        self._set_state(SYN_SENT, "connect", now)
        self._send_syn()
        self.snd_nxt = self.snd_max = (self.iss + 1) & MASK
        self.rtt_seq, self.rtt_time = self.iss, now
        self.rto_at = now + self.rtt.rto

    def open_passive(self, syn: Segment, now: float) -> None:
        """From LISTEN: a SYN arrived for our port (RFC 9293 3.10.7.2)."""
        self.irs = syn.seq
        self.rcv_nxt = (syn.seq + 1) & MASK
        self._take_syn_options(syn)
        self.snd_wnd = syn.window  # never scaled in a SYN
        self.max_snd_wnd = syn.window
        self.snd_wl1 = syn.seq
        self.snd_wl2 = self.iss
        self.state = State.LISTEN
        self._set_state(SYN_RECEIVED, "syn", now)
        self._send_syn_ack(syn)
        self.snd_nxt = self.snd_max = (self.iss + 1) & MASK
        self.rtt_seq, self.rtt_time = self.iss, now
        self.rto_at = now + self.rtt.rto

    # ------------------------------------------------------------ arrival

    def on_segment(self, seg: Segment, now: float) -> None:
        self.segments_in += 1
        if (self.state is ESTABLISHED and seg.flags & _PREDICTED == ACK
                and seg.seq == self.rcv_nxt and self._predicted(seg, now)):
            return
        if self.state is SYN_SENT:
            self._on_syn_sent(seg, now)
            return
        flags = seg.flags
        seq = seg.seq
        payload = seg.payload
        plen = len(payload)
        rcv_nxt = self.rcv_nxt
        if flags & SYN and self.state is SYN_RECEIVED and seq == self.irs:
            # The peer's SYN again, which the sequence check below would refuse (it does not
            # count the SYN). Alone: our SYN-ACK was lost, send it again. With an ACK: the
            # peer's SYN-ACK of a simultaneous open (RFC 9293 figure 8); its ACK is the news.
            if not flags & ACK:
                self._send_syn_ack()
                return
            flags &= ~SYN
            seq = rcv_nxt

        # 1. Sequence number check.
        wnd = (self.rcv_adv - rcv_nxt) & MASK
        if wnd >= HALF:
            wnd = 0
        seg_len = plen + (flags & FIN)
        offset = (seq - rcv_nxt) & MASK  # where the segment starts, relative to RCV.NXT
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
                payload, plen, flags = b"", 0, flags & ~FIN
                self.ack_now = not flags & RST
            else:
                if not flags & RST:
                    # RFC 9293: <SEQ=SND.NXT><ACK=RCV.NXT>. The RFC's SND.NXT is our snd_max:
                    # snd_nxt steps back on an RTO, and an ACK from there is refused as old.
                    self._oow_ack(seg, now)
                self.host.count("rx_out_of_window")
                return
        elif seg_len:
            # Trim to the window: bytes before RCV.NXT and beyond the right edge.
            if offset >= HALF:  # starts before RCV.NXT
                cut = (rcv_nxt - seq) & MASK
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
                plen = keep
                flags &= ~FIN

        # 2. RST (RFC 5961 3.2: only an exact match resets; else challenge).
        if flags & RST:
            if seq == rcv_nxt:
                self._on_reset(now)
            else:
                self.host.count("rst_challenged")
                self._challenge_ack(now)
            return

        # 4. SYN in a synchronized state: challenge ACK (RFC 5961 4.2).
        if flags & SYN:
            self.host.count("syn_challenged")
            self._challenge_ack(now)
            return

        # 5. ACK.
        if not flags & ACK:
            return
        if self.state is SYN_RECEIVED:
            if not (0 < ((seg.ack - self.snd_una) & MASK) <= ((self.snd_max - self.snd_una) & MASK)):
                self.host.send_reset_for(seg, now)
                return
            self._established_from_syn_received(seg, now)
        if not self._on_ack(seg, now):
            return
        state = self.state
        if state is FIN_WAIT_1 or state is CLOSING or state is LAST_ACK:
            if self.fin_acked():
                if state is FIN_WAIT_1:
                    self._set_state(FIN_WAIT_2, "fin acked", now)
                    if self.app_closed:
                        self.fin_wait_2_at = now + self.cfg.fin_wait_2_timeout
                elif state is CLOSING:
                    self.host.enter_time_wait(self, "fin acked", now)
                    return
                else:
                    self._finish(ev.ConnectionClosed(self.id), "fin acked", now)
                    return

        # 7. Segment text.
        state = self.state
        if plen and (state is ESTABLISHED or state is FIN_WAIT_1 or state is FIN_WAIT_2):
            # (CAN_RECEIVE spelled out: a frozenset lookup hashes the Enum in Python)
            if self.app_closed:
                # Nobody will read it: tell the peer at once (RFC 2525 2.17).
                self.host.count("data_after_close")
                self.abort(now, "data after close")
                return
            if offset == 0:
                self._take_in_order(payload, plen, now)
            else:
                self.ooo.add(seq, bytes(payload), rcv_nxt)
                if flags & FIN:
                    self.ooo_fin = (seq + plen) & MASK
                self.host.count("rx_out_of_order")
                # A duplicate ACK for each one, also within one batch: the sender's fast
                # retransmit counts them (RFC 5681 4.2).
                self._xmit(ACK, self.snd_max)
                return
        elif plen:
            return  # data in CLOSE-WAIT, CLOSING, LAST-ACK: the peer already sent FIN

        # 8. FIN.
        fin_here = flags & FIN and ((seq + plen) & MASK) == self.rcv_nxt
        if not fin_here and self.ooo_fin is not None and self.ooo_fin == self.rcv_nxt:
            fin_here = True
        if fin_here and not self.peer_fin:
            self._on_fin(now)
        elif fin_here:
            self.ack_now = True  # a retransmitted FIN: ACK it again
        if self.ack_now or self.unacked_segments:
            self._mark()

    def _predicted(self, seg: Segment, now: float) -> bool:
        """Header prediction: the two segments a bulk transfer is made of, handled in short.

        In ESTABLISHED, with only ACK (and maybe PSH) set and SEG.SEQ = RCV.NXT, either
        in-order data that fits the window and acknowledges nothing new, or a pure ACK of
        new data. Each step below is what on_segment's general path does for exactly that
        segment; anything else returns False and takes the general path.
        """
        if self.ooo_fin is not None:
            return False
        payload = seg.payload
        una = self.snd_una
        ack = seg.ack
        if payload:
            if ack != una or self.ooo or self.app_closed:
                return False
            plen = len(payload)
            rcv_nxt = self.rcv_nxt
            wnd = (self.rcv_adv - rcv_nxt) & MASK
            if plen > wnd or wnd >= HALF:
                return False
            self._update_window(seg)
            self._take_in_order(payload, plen, now)
            self._mark()
            return True
        acked = (ack - una) & MASK
        if not 0 < acked <= ((self.snd_max - una) & MASK):
            return False
        self._on_new_ack(seg, ack, acked, now)
        self._update_window(seg)
        if self.ack_now or self.unacked_segments:
            self._mark()
        return True

    def _take_in_order(self, payload, plen: int, now: float) -> None:
        """Segment text that starts at RCV.NXT: into the buffer, with what it unblocks."""
        self.rcvbuf += payload
        rcv_nxt = (self.rcv_nxt + plen) & MASK
        if self.ooo:
            for piece in self.ooo.pop_ready(rcv_nxt):
                self.rcvbuf += piece
                rcv_nxt = (rcv_nxt + len(piece)) & MASK
            self.ack_now = True  # filled (part of) a hole: ACK at once (RFC 5681 4.2)
        self.rcv_nxt = rcv_nxt
        if not self.data_event_pending:
            self.data_event_pending = True
            self.host.emit(ev.DataReceived(self.id))
        self.unacked_segments += 1
        # ACK every second segment, or two MSS worth of bytes: a device
        # with receive offload hands up one segment of up to 64 KB.
        cfg = self.cfg
        if (self.unacked_segments >= 2 or plen >= 2 * cfg.mss or not cfg.delayed_ack
                or self.ack_now):
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
            self._rtt_ack(seg.ack, now)
            self.rto_at = None
            self.backoffs = 0
            self._update_window(seg, force=True)
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
        self._update_window(seg, force=True)
        self._set_state(ESTABLISHED, "ack of syn", now)
        if self.listener is not None:
            self.host.accepted(self)
        else:
            self.host.emit(ev.Connected(self.id))

    def _update_window(self, seg: Segment, force: bool = False) -> None:
        # RFC 9293 3.10.7.4: take the window only from a newer segment.
        wl1 = self.snd_wl1
        if (force or 0 < ((seg.seq - wl1) & MASK) < HALF
                or (seg.seq == wl1 and ((seg.ack - self.snd_wl2) & MASK) < HALF)):
            wnd = seg.window << self.snd_wscale
            if wnd != self.snd_wnd:
                if self.snd_wnd == 0 and wnd:
                    self.persist_at = None
                    self.persist_probes = 0
                self._mark()
            self.snd_wnd = wnd
            if wnd > self.max_snd_wnd:
                self.max_snd_wnd = wnd
            self.snd_wl1 = seg.seq
            self.snd_wl2 = seg.ack

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
            self._on_new_ack(seg, ack, acked, now)
        elif in_flight and not seg.payload and not seg.flags & FIN and (
                (seg.window << self.snd_wscale) == self.snd_wnd):
            self._on_dup_ack(now)
        self._update_window(seg)
        return True

    def _on_new_ack(self, seg: Segment, ack: int, acked: int, now: float) -> None:
        mss = self.snd_mss
        # Data bytes acknowledged: the SYN and FIN occupy sequence space, not the buffer.
        data_acked = (ack - self.buf_seq) & MASK
        if data_acked < HALF and data_acked:
            if data_acked > len(self.sndbuf):
                data_acked = len(self.sndbuf)
            del self.sndbuf[:data_acked]
            self.buf_seq = (self.buf_seq + data_acked) & MASK
        self.snd_una = ack
        if ((self.snd_nxt - ack) & MASK) >= HALF:  # after an RTO rewind, the ACK overtook SND.NXT
            self.snd_nxt = ack
        self._rtt_ack(ack, now)
        if self.backoffs:
            self.backoffs = 0
            self.rtt.reset_backoff()
        # Congestion control: NewReno (RFC 5681, RFC 6582).
        if self.in_recovery:
            if ((ack - self.recover) & MASK) < HALF:  # full ACK: leave recovery
                self.in_recovery = False
                flight = (self.snd_max - ack) & MASK
                self.cwnd = min(self.ssthresh, max(flight, mss) + mss)
            else:  # partial ACK: the next hole was lost too
                self._retransmit_first(now)
                self.cwnd = max(self.cwnd - acked + mss, mss)
        elif self.cwnd < self.ssthresh:
            # Slow start by bytes acknowledged (RFC 3465), unlimited per ACK as in Linux:
            # with segmentation offload one ACK may cover dozens of segments.
            self.cwnd += acked
        else:
            self.cwnd += max(mss * mss // self.cwnd, 1)
        self.dupacks = 0
        if self.snd_una == self.snd_max:
            self.rto_at = None
        else:
            self.rto_at = now + self.rtt.rto
        self._mark()

    def _rtt_ack(self, ack: int, now: float) -> None:
        rs = self.rtt_seq
        if rs is not None and 0 < ((ack - rs) & MASK) < HALF:
            self.rtt.sample(now - self.rtt_time)
            self.rtt_seq = None

    def _on_dup_ack(self, now: float) -> None:
        self.dupacks += 1
        self.host.count("dup_acks")
        mss = self.snd_mss
        if self.dupacks == 3 and not self.in_recovery:
            # RFC 6582: a new recovery only once everything sent before the last began is acked.
            if ((self.snd_una - self.recover) & MASK) < HALF or self.recover == self.iss:
                flight = (self.snd_max - self.snd_una) & MASK
                self.ssthresh = max(flight // 2, 2 * mss)
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
        if state is ESTABLISHED or state is SYN_RECEIVED:
            self._set_state(CLOSE_WAIT, "fin", now)
        elif state is FIN_WAIT_1:
            if self.fin_acked():
                self.host.enter_time_wait(self, "fin", now)
            else:
                self._set_state(CLOSING, "fin", now)
        elif state is FIN_WAIT_2:
            self.host.enter_time_wait(self, "fin", now)

    # ------------------------------------------------------------ output

    def output(self, now: float) -> None:
        """Send what the windows allow, then any ACK still owed."""
        self.dirty = False
        state = self.state
        if state is SYN_SENT or state is SYN_RECEIVED or state is CLOSED:
            if self.ack_now:
                self._xmit(ACK, self.snd_max)
            return
        sent = self._send_data(now)
        if not sent and (self.ack_now or (self.unacked_segments and not self.cfg.delayed_ack)):
            self._xmit(ACK, self.snd_max)
        if (self.snd_wnd == 0 and self.rto_at is None and self.persist_at is None
                and self._unsent()):
            self.persist_at = now + self.rtt.rto

    def _unsent(self) -> int:
        """Data bytes queued but not yet sent (past SND.NXT)."""
        sent = (self.snd_nxt - self.buf_seq) & MASK
        return len(self.sndbuf) - sent if sent < HALF else len(self.sndbuf)

    def _send_data(self, now: float) -> bool:
        """Segment the send buffer by MSS within min(cwnd, SND.WND); Nagle; FIN."""
        buf = self.sndbuf
        if not buf and not self.fin_queued:
            return False  # nothing to send: the usual case for an ACK on the receiving side
        with memoryview(buf) as view:  # one view for the burst: nothing here resizes buf
            return self._send_segments(view, now)

    def _send_segments(self, view: memoryview, now: float) -> bool:
        mss = self.snd_mss
        # With segmentation offload a segment may carry many MSS; the device
        # cuts it at MTU boundaries, so only when our MSS fills the MTU.
        chunk = self.cfg.tso_max // mss * mss if self.cfg.tso_max and mss == self.cfg.mss else mss
        buflen = len(view)
        sent_any = False
        flags_base = ACK
        while True:
            nxt = self.snd_nxt
            una = self.snd_una
            flight = (nxt - una) & MASK
            window = min(self.cwnd, self.snd_wnd)
            usable = window - flight
            off = (nxt - self.buf_seq) & MASK
            if off >= HALF:
                off = 0
            remaining = buflen - off
            if remaining > 0:
                if usable <= 0:
                    break
                size = min(chunk, remaining, usable)
                if size > mss and size < remaining:
                    size -= size % mss  # whole segments; the rest waits for the window
                elif size < mss:
                    # Sender silly window avoidance and Nagle (RFC 9293 3.8.6.2.1).
                    if size < remaining and size < (self.max_snd_wnd >> 1):
                        break
                    if not self.nodelay and flight and size == remaining and not self.fin_queued:
                        break
                flags = flags_base
                last = size == remaining
                if last:
                    flags |= PSH
                    if self.fin_queued:
                        flags |= FIN
                self._xmit(flags, nxt, view[off:off + size])
                end = (nxt + size + (1 if flags & FIN else 0)) & MASK
                self._advance(nxt, end, now)
                sent_any = True
                continue
            if self.fin_queued and off == buflen and ((nxt - self.buf_seq) & MASK) == buflen:
                # All data sent and the FIN not yet (or being re-sent after an RTO rewind).
                self._xmit(ACK | FIN, nxt)
                self._advance(nxt, (nxt + 1) & MASK, now)
                sent_any = True
            break
        return sent_any

    def _advance(self, seq: int, end: int, now: float) -> None:
        """Bookkeeping after sending [seq, end): SND.NXT/SND.MAX, RTT timing, RTO."""
        self.snd_nxt = end
        if 0 < ((end - self.snd_max) & MASK) < HALF:
            if self.rtt_seq is None and seq == self.snd_max:
                self.rtt_seq, self.rtt_time = seq, now
            self.snd_max = end
        if self.rto_at is None:
            self.rto_at = now + self.rtt.rto
        self.persist_at = None

    def _retransmit_first(self, now: float) -> int:
        """Resend the segment at SND.UNA, whatever the windows; return its end."""
        una = self.snd_una
        self.retransmitted += 1
        self.host.count("retransmits")
        self.rtt_seq = None  # Karn's rule: no sample across a retransmission
        off = (una - self.buf_seq) & MASK
        buf = self.sndbuf
        if off < HALF and off < len(buf):
            size = min(self.snd_mss, len(buf) - off, (self.snd_max - una) & MASK)
            flags = ACK
            if off + size == len(buf) and self.fin_queued and (
                    (self.snd_max - una) & MASK) > size:
                flags |= FIN
            with memoryview(buf) as view:
                self._xmit(flags, una, view[off:off + size])
            end = una + size + (flags & FIN)
        elif self.fin_queued:
            self._xmit(ACK | FIN, una)
            end = una + 1
        else:
            end = una
        self.rto_at = now + self.rtt.rto
        return end & MASK

    # ------------------------------------------------------------ timers

    def next_deadline(self) -> float | None:
        best = self.rto_at  # unrolled: this runs after every segment
        t = self.delack_at
        if t is not None and (best is None or t < best):
            best = t
        t = self.persist_at
        if t is not None and (best is None or t < best):
            best = t
        t = self.fin_wait_2_at
        if t is not None and (best is None or t < best):
            best = t
        return best

    def on_timer(self, now: float) -> None:
        if self.rto_at is not None and now >= self.rto_at:
            self._on_rto(now)
            if self.state is CLOSED:
                return
        if self.delack_at is not None and now >= self.delack_at:
            self.delack_at = None
            if self.unacked_segments:
                self.ack_now = True
                self._mark()
        if self.persist_at is not None and now >= self.persist_at:
            self._on_persist(now)
        if self.fin_wait_2_at is not None and now >= self.fin_wait_2_at:
            self.fin_wait_2_at = None
            if self.state is FIN_WAIT_2:
                self.host.count("fin_wait_2_timeouts")
                self._finish(ev.ConnectionClosed(self.id), "fin-wait-2 timeout", now)

    def _on_rto(self, now: float) -> None:
        cfg = self.cfg
        state = self.state
        self.backoffs += 1
        limit = (cfg.syn_retries if state is SYN_SENT else
                 cfg.synack_retries if state is SYN_RECEIVED else cfg.retries)
        if self.backoffs > limit:
            self.host.count("timeouts")
            # A half-open passive connection was never shown to the application.
            silent = state is SYN_RECEIVED and self.listener is not None
            self._finish(None if silent else ev.ConnectionTimedOut(self.id),
                         "retransmission timeout", now)
            return
        self.host.count("rto_expired")
        self.rtt.backoff()
        self.rtt_seq = None  # Karn
        self.rto_at = now + self.rtt.rto
        if state is SYN_SENT:
            self.retransmitted += 1
            self._send_syn()
            return
        if state is SYN_RECEIVED:
            self.retransmitted += 1
            self._send_syn_ack()
            return
        # RFC 5681 3.1: collapse to one segment and go back to SND.UNA.
        mss = self.snd_mss
        flight = (self.snd_max - self.snd_una) & MASK
        if self.backoffs == 1:
            self.ssthresh = max(flight // 2, 2 * mss)
        self.cwnd = mss
        self.in_recovery = False
        self.dupacks = 0
        self.recover = self.snd_max
        self.snd_nxt = self.snd_una
        if self._send_data(now):
            self.retransmitted += 1
            self.host.count("retransmits")
        else:  # the peer's window shrank to zero under data in flight: resend anyway
            self.snd_nxt = self._retransmit_first(now)

    def _on_persist(self, now: float) -> None:
        self.persist_at = None
        if self.snd_wnd or not self._unsent():
            return
        self.persist_probes += 1
        self.host.count("window_probes")
        # Probe with an already-acknowledged sequence number: the peer answers with
        # an ACK carrying its current window, and no data is committed.
        self._xmit(ACK, (self.snd_una - 1) & MASK)
        self.rtt.backoff()
        self.persist_at = now + self.rtt.rto

    # ------------------------------------------------------------ application

    def send(self, data, now: float) -> int:
        space = self.cfg.send_buffer - len(self.sndbuf)
        if space <= 0:
            return 0
        n = min(space, len(data))
        self.sndbuf += data[:n] if n < len(data) else data
        if self.state is not SYN_SENT and self.state is not SYN_RECEIVED:
            self._mark()
        return n

    def send_space(self) -> int:
        return max(self.cfg.send_buffer - len(self.sndbuf), 0)

    def recv(self, max_bytes: int) -> bytes:
        buf = self.rcvbuf
        if max_bytes < 0 or max_bytes >= len(buf):
            data = bytes(buf)
            buf.clear()
        else:
            data = bytes(buf[:max_bytes])
            del buf[:max_bytes]
        self.data_event_pending = False
        if data and self.state in CAN_RECEIVE:
            # A window update when reading opened the window enough to matter.
            adv = (self.rcv_adv - self.rcv_nxt) & MASK
            space = self.cfg.receive_buffer - len(buf)
            if space - adv >= min(self.cfg.receive_buffer >> 1, 2 * self.cfg.mss):
                self.ack_now = True
                self._mark()
        return data

    def shutdown(self, now: float) -> None:
        """Queue our FIN after the data (RFC 9293 3.10.4 CLOSE)."""
        state = self.state
        if self.fin_queued:
            return
        if state is SYN_SENT:
            self._finish(ev.ConnectionClosed(self.id), "close", now)
            return
        self.fin_queued = True
        if state is ESTABLISHED or state is SYN_RECEIVED:
            self._set_state(FIN_WAIT_1, "close", now)
        elif state is CLOSE_WAIT:
            self._set_state(LAST_ACK, "close", now)
        if state is not SYN_RECEIVED:
            self._mark()

    def close(self, now: float) -> None:
        """Release the connection; unread data means the peer is reset (RFC 2525)."""
        self.app_closed = True
        if self.rcvbuf or self.ooo:
            self.abort(now, "close with unread data")
            return
        self.shutdown(now)
        if self.state is FIN_WAIT_2 and self.fin_wait_2_at is None:
            self.fin_wait_2_at = now + self.cfg.fin_wait_2_timeout

    def abort(self, now: float, cause: str = "abort") -> None:
        if self.state not in (SYN_SENT, CLOSED):
            self._xmit(RST | ACK, self.snd_nxt)
            self.host.count("resets_sent")
        self._finish(ev.ConnectionClosed(self.id) if cause == "abort" else
                     ev.ConnectionReset(self.id), cause, now)

    # ------------------------------------------------------------ ending

    def _finish(self, event, cause: str, now: float) -> None:
        self.rto_at = self.delack_at = self.persist_at = self.fin_wait_2_at = None
        self._set_state(CLOSED, cause, now)
        self.host.forget(self, event)

    def info(self, now: float) -> dict:
        return {
            "conn_id": self.id, "state": str(self.state), "snd_una": self.snd_una,
            "snd_nxt": self.snd_nxt, "snd_wnd": self.snd_wnd, "rcv_nxt": self.rcv_nxt,
            "rcv_wnd": (self.rcv_adv - self.rcv_nxt) & MASK, "send_queue": len(self.sndbuf),
            "recv_queue": len(self.rcvbuf), "out_of_order": self.ooo.size, "cwnd": self.cwnd,
            "ssthresh": self.ssthresh, "srtt": self.rtt.srtt, "rto": self.rtt.rto,
            "retransmitted": self.retransmitted, "mss": self.snd_mss,
            "timers": {name: round(t - now, 6) for name, t in (
                ("retransmit", self.rto_at), ("delayed_ack", self.delack_at),
                ("persist", self.persist_at), ("fin_wait_2", self.fin_wait_2_at))
                if t is not None},
        }
