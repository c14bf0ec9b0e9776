"""One TCP connection: the RFC 9293 state machine, sans-IO.

`on_segment` follows RFC 9293 3.10.7.4 in order: sequence check, RST, SYN,
ACK, URG, text, FIN. Output is produced by `output()`, which the stack calls
once per flush for every connection with something to say, so application
writes and ACKs coalesce. Packets go to `host.out`; events to `host.emit`.

Options negotiated in the handshake: MSS, window scaling, SACK (RFC 2018; loss
recovery by RFC 6675 when the peer takes part, NewReno otherwise) and timestamps
(RFC 7323: TSopt in every segment, RTT measured from TSecr, PAWS). The entry
points (`on_segment`, `output`, `on_timer`, ...) note the time they were given in
`clock`, which is what TSval is made from when a segment is sent.
"""

from __future__ import annotations

import struct
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
_TS_LEN = 12  # NOP NOP TS(10): what timestamps take from every segment's payload
_TS_HEAD = 0x0101080A  # NOP NOP kind 8 length 10, as one word
_pack_ts = struct.Struct("!III").pack
_PAWS_IDLE = 24 * 86400.0  # RFC 7323 5.5: a TS.Recent this old no longer rejects anything
_PAWS_WINDOW = 1  # TSval ticks older than TS.Recent still taken, as Linux (TCP_PAWS_WINDOW)
_DUP_THRESH = 3  # RFC 5681, RFC 6675
_MAX_SACKED = 32  # scoreboard blocks kept; more (a peer's games) lose the highest
_SACK_RECENT = 4  # out-of-order arrivals remembered to order the SACK blocks we send
_RTX, _NEW, _RESCUE = 0, 1, 2  # what NextSeg() picked (RFC 6675 4, rules 1 and 3; 2; 4)

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
        # keepalive and user timeout (timer section)
        "keepalive", "ka_params", "keepalive_at", "ka_out", "ka_since", "last_rx",
        "user_timeout", "stall_since",
        # options: SACK (RFC 2018, RFC 6675) and timestamps (RFC 7323)
        "sack_ok", "ts_ok", "ts_len", "opts_on", "ts_offset", "ts_base", "ts_recent",
        "ts_recent_age", "last_ack_sent", "clock", "sacked", "high_rxt", "rescue_rxt",
        "sack_recent", "rtx_ts", "rtx_log", "ts_sampled",
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
        self.keepalive = cfg.keepalive
        self.ka_params = (cfg.keepalive_idle, cfg.keepalive_interval, cfg.keepalive_probes)
        self.keepalive_at: float | None = now + cfg.keepalive_idle if cfg.keepalive else None
        self.ka_out = 0  # keepalive probes sent and not answered
        self.ka_since = 0.0  # when the first of them went
        self.last_rx = now  # last segment from the peer (the stack sets it)
        self.user_timeout = cfg.user_timeout
        self.stall_since = now  # start of the RTO or zero-window series (user timeout)
        self.clock = now  # the time given to the entry point running now (TSval)
        self.sack_ok = False  # both SYNs offered SACK
        self.ts_ok = False  # both SYNs carried timestamps
        self.ts_len = 0  # option bytes every segment carries: _TS_LEN with timestamps
        self.opts_on = False  # sack_ok or ts_ok: segments may need options
        # TSval is a 1 ms clock that reads ISS when the connection is made: no uptime shows,
        # and a later incarnation of the same 4-tuple starts above this one (RFC 6191).
        self.ts_base = int(now * 1000)
        self.ts_offset = (iss - self.ts_base) & MASK
        self.ts_recent = 0  # RFC 7323 TS.Recent, and when it was taken
        self.ts_recent_age = now
        self.last_ack_sent = 0  # RFC 7323 Last.ACK.sent
        self.sacked: list[tuple[int, int]] = []  # scoreboard: SACKed [left, right) over SND.UNA
        self.high_rxt = iss  # RFC 6675 HighRxt (exclusive end), RescueRxt
        self.rescue_rxt: int | None = None
        self.sack_recent: list[int] = []  # seqs of out-of-order arrivals, latest first
        self.rtx_ts: int | None = None  # TSval of the latest retransmission (RTTM, Karn)
        self.ts_sampled: int | None = None  # the TSecr of the last RTT sample
        self.rtx_log: list[tuple[int, int, int]] = []  # recovery retransmissions (_rtx_lost)

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

    def _xmit(self, flags: int, seq: int, payload=b"", options: bytes | None = None) -> None:
        """Send one segment; `options` None: the TSopt and SACK blocks due (none in a SYN)."""
        if options is None:
            options = self._options(flags) if self.opts_on else b""
        if flags & ACK:
            ack = self.rcv_nxt
            self.last_ack_sent = ack
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

    def _ts_now(self) -> int:
        """Our TSval now: 1 ms ticks from `clock`, modulo 2**32."""
        return (int(self.clock * 1000) + self.ts_offset) & MASK

    def _options(self, flags: int) -> bytes:
        """TSopt (RFC 7323 3.2: every segment once negotiated, RSTs too) and SACK blocks."""
        if self.ts_ok:
            opts = _pack_ts(_TS_HEAD, (int(self.clock * 1000) + self.ts_offset) & MASK,
                            self.ts_recent)
        else:
            opts = b""
        if self.sack_ok and self.ooo.blocks and not flags & RST:
            blocks = self._sack_blocks()
            n = len(blocks)
            opts += struct.pack(f"!BBBB{2 * n}I", 1, 1, 5, 2 + 8 * n,
                                *[edge for block in blocks for edge in block])
        return opts

    def _sack_blocks(self) -> list[tuple[int, int]]:
        """The SACK blocks for an ACK now (RFC 2018 4): first the block holding the latest
        out-of-order arrival, then those of the arrivals before it, then the rest in
        order; three fit beside a TSopt, four without."""
        ranges = self.ooo.ranges()
        limit = 3 if self.ts_ok else 4
        rcv_nxt = self.rcv_nxt
        out: list[tuple[int, int]] = []
        for seq in self.sack_recent:
            at = (seq - rcv_nxt) & MASK
            for block in ranges:
                if ((block[0] - rcv_nxt) & MASK) <= at < ((block[1] - rcv_nxt) & MASK):
                    if block not in out:
                        out.append(block)
                    break
        for block in ranges:
            if block not in out:
                out.append(block)
        return out[:limit]

    def _syn_options(self, reply_to: Segment | None) -> bytes:
        """Our SYN offers what the configuration allows; a SYN-ACK what was negotiated."""
        cfg = self.cfg
        wscale = None
        if cfg.window_scale and (reply_to is None or reply_to.wscale is not None):
            wscale = cfg.rcv_wscale
        if reply_to is None:
            sack = cfg.sack
            ts = (self._ts_now(), 0) if cfg.timestamps else None
        else:
            sack = self.sack_ok
            ts = (self._ts_now(), self.ts_recent) if self.ts_ok else None
        return build_options(mss=cfg.mss, wscale=wscale, sack_permitted=sack, timestamp=ts)

    def _send_syn(self) -> None:
        self._xmit(SYN, self.iss, options=self._syn_options(None))

    def _send_syn_ack(self, syn: Segment | None = None) -> None:
        if syn is None:  # a retransmission: echo window scaling only if the peer's SYN had it
            scaled = self.rcv_wscale or self.snd_wscale  # both 0 reads the same as none
            options = build_options(
                mss=self.cfg.mss, wscale=self.rcv_wscale if scaled else None,
                sack_permitted=self.sack_ok,
                timestamp=(self._ts_now(), self.ts_recent) if self.ts_ok else None)
        else:
            options = self._syn_options(syn)
        self._xmit(SYN | ACK, self.iss, options=options)

    def _take_syn_options(self, seg: Segment) -> None:
        """Adopt what the peer's SYN offered (RFC 9293 3.7.1, RFC 7323 2.2, RFC 2018 2).

        SACK and timestamps are on only when both SYNs carry them: the peer's SYN-ACK
        carries them only if our SYN did, and our SYN-ACK only if the peer's SYN did.
        With timestamps every segment carries 12 bytes of TSopt, which the MSS does
        not count (RFC 6691): snd_mss is what is left for data.
        """
        cfg = self.cfg
        self.sack_ok = cfg.sack and seg.sack_permitted
        self.ts_ok = ts_ok = cfg.timestamps and seg.ts_val is not None
        self.ts_len = _TS_LEN if ts_ok else 0
        self.opts_on = self.sack_ok or ts_ok
        if ts_ok:
            self.ts_recent = seg.ts_val
            self.ts_recent_age = self.clock
        self.snd_mss = max(min(seg.mss if seg.mss else _DEFAULT_PEER_MSS, cfg.mss)
                           - self.ts_len, 1)
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
        self.clock = now
        self._set_state(SYN_SENT, "connect", now)
        self._send_syn()
        self.snd_nxt = self.snd_max = (self.iss + 1) & MASK
        self.rtt_seq, self.rtt_time = self.iss, now
        self.rto_at = now + self.rtt.rto

    def open_passive(self, syn: Segment, now: float) -> None:
        """From LISTEN: a SYN arrived for our port (RFC 9293 3.10.7.2)."""
        self.clock = now
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

    def open_cookie(self, ack: Segment, mss: int, now: float) -> None:
        """From LISTEN: the ACK that returns a valid SYN cookie (RFC 4987, tcp/syncookie.py).

        The SYN-RECEIVED we never kept is rebuilt from it: the peer's ISN is SEG.SEQ - 1,
        ours (self.iss) SEG.ACK - 1, the peer's MSS what the cookie encoded; the cookie
        SYN-ACK offered no window scaling, so none is used. Then the ACK is processed as
        in SYN-RECEIVED, which establishes the connection (ConnectionAccepted) and takes
        any data or FIN the segment carries.
        """
        cfg = self.cfg
        self.irs = (ack.seq - 1) & MASK
        self.rcv_nxt = ack.seq
        self.rcv_adv = (ack.seq + min(cfg.receive_buffer, 65535)) & MASK
        self.snd_mss = min(mss, cfg.mss)
        self.snd_wscale = 0
        self.rcv_wscale = 0
        self.cwnd = cfg.initial_window * self.snd_mss
        self.snd_wl1 = self.irs
        self.snd_wl2 = self.iss
        self.snd_nxt = self.snd_max = (self.iss + 1) & MASK
        self.state = State.LISTEN
        self._set_state(SYN_RECEIVED, "syn cookie", now)
        self.on_segment(ack, now)
        if self.state is SYN_RECEIVED:  # the ACK was not taken after all: no trace left
            self._finish(None, "syn cookie not taken", now)

    # ------------------------------------------------------------ arrival

    def on_segment(self, seg: Segment, now: float) -> None:
        self.segments_in += 1
        self.clock = now
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

        # PAWS (RFC 7323 5.3 R1), before the sequence check: a TSval older than TS.Recent
        # marks an old duplicate, unless TS.Recent is too old to judge by (24 days idle).
        # One tick older is let through, as Linux does: with 1 ms ticks, a segment merely
        # reordered behind a later one is not thrown away (but TS.Recent never goes back).
        tsval = seg.ts_val
        if tsval is not None and self.ts_ok and not flags & RST:
            older = (self.ts_recent - tsval) & MASK
            if 0 < older < HALF and now - self.ts_recent_age <= _PAWS_IDLE:
                if older > _PAWS_WINDOW:
                    self.host.count("paws_rejected")
                    self._oow_ack(seg, now)
                    return
                tsval = None
        else:
            tsval = None

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
                if plen:
                    self.host.count("rx_out_of_window")  # its data lies beyond the window
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

        # TS.Recent (RFC 7323 4.3, 5.3 R3) takes the TSval of a segment at or before the
        # point our last ACK acknowledged: with delayed ACKs, the earliest one unanswered,
        # which is what the peer's RTT measurement wants echoed. (SEG.SEQ <= Last.ACK.sent
        # alone, as Linux: the RFC's "< SEG.SEQ + SEG.LEN" would never let a pure ACK in.)
        if tsval is not None and ((self.last_ack_sent - seg.seq) & MASK) < HALF:
            self.ts_recent = tsval
            self.ts_recent_age = now

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
                if self.sack_ok:  # the first SACK block will be this arrival's
                    recent = self.sack_recent
                    recent.insert(0, seq)
                    del recent[_SACK_RECENT:]
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
        segment; anything else returns False and takes the general path. With timestamps,
        PAWS and the TS.Recent update are the general path's too: a segment at RCV.NXT is
        at or after Last.ACK.sent, so it updates TS.Recent exactly when they are equal.
        SACK blocks (which the wire layer's fast parse never yields) go the general way.
        """
        if self.ooo_fin is not None or seg.sack_blocks is not None:
            return False
        tsval = seg.ts_val
        if tsval is not None and self.ts_ok:
            if ((tsval - self.ts_recent) & MASK) >= HALF:
                return False  # PAWS, or a stale TS.Recent: the general path decides
            if self.last_ack_sent == self.rcv_nxt:
                self.ts_recent = tsval
                self.ts_recent_age = now
        payload = seg.payload
        una = self.snd_una
        ack = seg.ack
        if payload:
            if ack != una or self.ooo.blocks or self.app_closed:
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
        if self.ooo.blocks:
            for piece in self.ooo.pop_ready(rcv_nxt):
                self.rcvbuf += piece
                rcv_nxt = (rcv_nxt + len(piece)) & MASK
            if not self.ooo.blocks:
                self.sack_recent.clear()
            self.ack_now = True  # filled (part of) a hole: ACK at once (RFC 5681 4.2)
        self.rcv_nxt = rcv_nxt
        if not self.data_event_pending:
            self.data_event_pending = True
            self.host.emit(ev.DataReceived(self.id))
        self.unacked_segments += 1
        # ACK every second segment, or two MSS worth of bytes: a device
        # with receive offload hands up one segment of up to 64 KB.
        cfg = self.cfg
        if (self.unacked_segments >= 2 or plen >= 2 * (cfg.mss - self.ts_len)
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
        sack_blocks = seg.sack_blocks if self.sack_ok else None
        if sack_blocks is not None:
            self._take_sack(sack_blocks, ack)
        if acked:
            self._on_new_ack(seg, ack, acked, now)
        elif in_flight and not seg.payload and not seg.flags & FIN and (
                (seg.window << self.snd_wscale) == self.snd_wnd):
            self._on_dup_ack(now)
        if self.sack_ok:
            if self.in_recovery:
                if sack_blocks is not None and self.rtx_log:
                    self._rtx_lost()
            elif self.snd_una != self.snd_max and (
                    self.dupacks >= _DUP_THRESH or (self.sacked and self._lost_edge(
                        self._sacked_offsets(self.snd_una), self.snd_mss))):
                # RFC 6675 5: DupThresh duplicate ACKs, or IsLost(HighACK + 1).
                self._enter_sack_recovery(now)
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
        if self.sacked:
            self.sacked = [((ack + lo) & MASK, (ack + ro) & MASK)
                           for lo, ro in self._sacked_offsets(ack)]
        self._rtt_ack(ack, now, seg.ts_ecr)
        if self.backoffs:
            self.backoffs = 0
            self.rtt.reset_backoff()
        # Congestion control: NewReno (RFC 5681, RFC 6582), or with SACK RFC 6675.
        if self.in_recovery:
            if ((ack - self.recover) & MASK) < HALF:  # full ACK: leave recovery
                self.in_recovery = False
                flight = (self.snd_max - ack) & MASK
                self.cwnd = min(self.ssthresh, max(flight, mss) + mss)
            elif self.sack_ok:
                pass  # RFC 6675 (B), (C): output() sends what pipe and NextSeg() say
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

    def _rtt_ack(self, ack: int, now: float, tsecr: int | None = None) -> None:
        """An RTT sample from an ACK that advanced SND.UNA.

        With timestamps (RFC 7323 4.1) from every such ACK: SEG.TSecr is the TSval of the
        copy that made the peer ACK, so a retransmission is timed as itself and Karn's
        ambiguity does not arise. A TSecr is used only if it is one we can have sent (no
        later than now, no earlier than the connection). Karn's caution remains in one
        form: a TSecr older than our latest retransmission is not used. Such an ACK may
        answer the retransmitted copy of data the peer already had (its ACKs were lost),
        and the peer echoes then the TSval of the last segment it took in order, from
        before the retransmission: the sample would include the whole timeout. Without
        timestamps, one segment at a time and never a retransmitted one (Karn).

        One sample per TSecr: the ACKs after the first that echo the same TSval (at high
        rates, many: the clock ticks once a millisecond) would only measure it later.
        """
        if self.ts_ok:
            if tsecr is not None and tsecr != self.ts_sampled:
                rtx = self.rtx_ts
                if rtx is not None:
                    if ((tsecr - rtx) & MASK) >= HALF:
                        return  # echoes a segment sent before the latest retransmission
                    self.rtx_ts = None
                ms = int(now * 1000)
                rtt = (ms + self.ts_offset - tsecr) & MASK
                if rtt <= ms - self.ts_base:
                    self.ts_sampled = tsecr
                    self.rtt.sample(rtt / 1000)
            return
        rs = self.rtt_seq
        if rs is not None and 0 < ((ack - rs) & MASK) < HALF:
            self.rtt.sample(now - self.rtt_time)
            self.rtt_seq = None

    def _on_dup_ack(self, now: float) -> None:
        self.dupacks += 1
        self.host.count("dup_acks")
        if self.sack_ok:  # _on_ack decides on recovery (RFC 6675); no window inflation
            self._mark()  # what is SACKed left the network: room for more (pipe)
            return
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
        self.clock = now
        state = self.state
        if state is SYN_SENT or state is SYN_RECEIVED or state is CLOSED:
            if self.ack_now:
                self._xmit(ACK, self.snd_max)
            return
        if self.in_recovery and self.sack_ok:
            sent = self._sack_send(now)
        else:
            sent = self._send_data(now)
        if not sent and (self.ack_now or (self.unacked_segments and not self.cfg.delayed_ack)):
            self._xmit(ACK, self.snd_max)
        if (self.rto_at is None and self.persist_at is None and self._unsent() > 0
                and (self.snd_wnd == 0 or self.snd_una == self.snd_max)):
            # A shut window, or one open less than silly window avoidance sends into with
            # nothing in flight to bring news of a wider one (the update may have been
            # lost): the persist timer probes, or sends what fits (_on_persist).
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
        # One set of options for the burst: the same TSval, TSecr and SACK blocks.
        opts = self._options(ACK) if self.opts_on else b""
        mss = self.snd_mss
        if len(opts) > self.ts_len:  # SACK blocks ride along: they take from the payload
            mss = max(mss - len(opts) + self.ts_len, 1)
        cfg = self.cfg
        # With segmentation offload a segment may carry many MSS; the device cuts it at
        # the MTU less the headers (options included), which is our MSS, and so only when
        # the peer's MSS is no smaller than ours.
        chunk = (cfg.tso_max // mss * mss if cfg.tso_max and self.snd_mss + self.ts_len == cfg.mss
                 else mss)
        buflen = len(view)
        sent_any = False
        flags_base = ACK
        while True:
            nxt = self.snd_nxt
            una = self.snd_una
            flight = (nxt - una) & MASK
            if self.sacked:
                # SACKed data has left the network (it is not in flight for cwnd) but still
                # fills the peer's buffer (the window counts it). Before a recovery this is
                # RFC 6675 (3), limited transmit by pipe: the first duplicate ACKs release
                # new data, whose SACKs show the loss sooner.
                cap = chunk
                if nxt != self.snd_max:
                    nxt, pipe, cap = self._skip_sacked(nxt, chunk)
                    flight = (nxt - una) & MASK
                else:
                    pipe = flight - sum((r - l) & MASK for l, r in self.sacked)
                usable = min(self.cwnd - pipe, self.snd_wnd - flight)
            else:
                cap = chunk
                usable = min(self.cwnd, self.snd_wnd) - flight
            off = (nxt - self.buf_seq) & MASK
            if off >= HALF:
                off = 0
            remaining = buflen - off
            if remaining > 0:
                if usable <= 0:
                    break
                size = min(cap, remaining, usable)
                if size > mss and size < remaining:
                    size -= size % mss  # whole segments; the rest waits for the window
                elif size < mss and size != cap:  # (a hole before SACKed data goes as it is)
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
                self._xmit(flags, nxt, view[off:off + size], opts)
                end = (nxt + size + (1 if flags & FIN else 0)) & MASK
                self._advance(nxt, end, now)
                sent_any = True
                continue
            if self.fin_queued and off == buflen and ((nxt - self.buf_seq) & MASK) == buflen:
                # All data sent and the FIN not yet (or being re-sent after an RTO rewind).
                self._xmit(ACK | FIN, nxt, b"", opts)
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
        elif self.ts_ok:  # sent again, after an RTO rewind (see _rtt_ack)
            self.rtx_ts = self._ts_now()
        if self.rto_at is None:
            self.rto_at = now + self.rtt.rto
        self.persist_at = None

    def _retransmit_first(self, now: float) -> int:
        """Resend the segment at SND.UNA, whatever the windows; return its end."""
        end = self._resend(self.snd_una, self.snd_max)
        self.rto_at = now + self.rtt.rto
        return end

    def _resend(self, seq: int, limit: int) -> int:
        """Send one segment again from `seq`, whatever the windows; return its end.

        At most an MSS of data (never a TSO super-segment), not past `limit` (SND.MAX, or
        the next SACKed block), and the FIN with it if the FIN was sent and lies before.
        """
        self.retransmitted += 1
        self.host.count("retransmits")
        self.rtt_seq = None  # Karn's rule: no sample across a retransmission
        if self.ts_ok:
            self.rtx_ts = self._ts_now()
        opts = self._options(ACK) if self.opts_on else b""
        mss = self.snd_mss
        span = (limit - seq) & MASK
        off = (seq - self.buf_seq) & MASK
        buf = self.sndbuf
        if len(opts) > self.ts_len:
            # SACK blocks would take from the payload: a segment sent whole before would go
            # as two, the second a sliver. It goes whole, without them (our next ACK has them).
            if min(mss, span, len(buf) - off if off < HALF else 0) > mss - len(opts) + self.ts_len:
                opts = opts[:self.ts_len]
            else:
                mss = max(mss - len(opts) + self.ts_len, 1)
        if off < HALF and off < len(buf):
            size = min(mss, len(buf) - off, span)
            flags = ACK
            if off + size == len(buf) and self.fin_queued and span > size:
                flags |= FIN
            with memoryview(buf) as view:
                self._xmit(flags, seq, view[off:off + size], opts)
            return (seq + size + (flags & FIN)) & MASK
        if self.fin_queued and span:
            self._xmit(ACK | FIN, seq, b"", opts)
            return (seq + 1) & MASK
        return seq

    # ------------------------------------------------------------ SACK (RFC 2018, RFC 6675)
    #
    # The scoreboard `sacked` holds the peer's SACKed ranges above SND.UNA as sorted,
    # merged (left, right) sequence numbers. The RFC 6675 routines work on it as offsets
    # from SND.UNA: IsLost() is one point (_lost_edge) below which every unSACKed byte is
    # lost, SetPipe() is _pipe, NextSeg() is _next_seg, and output() runs step (C) as
    # _sack_send while in recovery. HighRxt and RescueRxt are exclusive ends.

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
        t = self.keepalive_at
        if t is not None and (best is None or t < best):
            best = t
        return best

    def on_timer(self, now: float) -> None:
        self.clock = now
        if self.rto_at is not None and now >= self.rto_at:
            self._on_rto(now)
            if self.state is CLOSED:
                return
            ut = self.user_timeout
            if ut is not None and self.backoffs and self.rto_at is not None:
                # Retransmit no later than the user timeout, so it is noticed on time.
                self.rto_at = min(self.rto_at, self.stall_since + ut)
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
        if self.keepalive_at is not None and now >= self.keepalive_at:
            self._on_keepalive(now)

    def _on_rto(self, now: float) -> None:
        """The retransmission timer expired: give up, or back off and resend.

        Giving up: after `retries` (syn_retries, synack_retries) backoffs; or, when a
        user timeout is set, instead of counting (as Linux's TCP_USER_TIMEOUT), once
        SND.UNA has not moved for `user_timeout` seconds, counted from when the timer
        that first expired was started (the last ACK of new data, or the send from idle).
        """
        cfg = self.cfg
        state = self.state
        self.backoffs += 1
        if self.backoffs == 1:
            self.stall_since = self.rto_at - self.rtt.rto  # when this timer was started
        ut = self.user_timeout
        if ut is not None:
            expired = now >= self.stall_since + ut  # the sum, as the deadline is computed
        else:
            expired = self.backoffs > (cfg.syn_retries if state is SYN_SENT else
                                       cfg.synack_retries if state is SYN_RECEIVED else
                                       cfg.retries)
        if expired:
            self.host.count("timeouts")
            if ut is not None:
                self.host.count("user_timeouts")
            # A half-open passive connection was never shown to the application.
            silent = state is SYN_RECEIVED and self.listener is not None
            self._finish(None if silent else ev.ConnectionTimedOut(self.id),
                         "user timeout" if ut is not None else "retransmission timeout", now)
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
        # RFC 6675 5.1: forget the scoreboard (the peer may have reneged); what it SACKs
        # from now on is skipped as SND.NXT goes over the data again (_skip_sacked).
        self.sacked = []
        self.rtx_log = []
        self.snd_nxt = self.snd_una
        if self._send_data(now):
            self.retransmitted += 1
            self.host.count("retransmits")
        else:  # the peer's window shrank to zero under data in flight: resend anyway
            self.snd_nxt = self._retransmit_first(now)

    def _on_persist(self, now: float) -> None:
        """Zero-window probing (RFC 9293 3.8.6.1), for as long as the peer answers.

        With a user timeout, a window that stays shut for `user_timeout` seconds from
        the first probe ends the connection (ConnectionTimedOut), as on Linux.
        """
        self.persist_at = None
        if self.snd_wnd:
            if self._unsent() > 0 and self.snd_una == self.snd_max:
                self._send_into_small_window(now)
            return
        if not self._unsent():
            return
        ut = self.user_timeout
        if ut is not None:
            if not self.persist_probes:
                self.stall_since = now
            elif now >= self.stall_since + ut:
                self.host.count("timeouts")
                self.host.count("user_timeouts")
                self._finish(ev.ConnectionTimedOut(self.id), "user timeout", now)
                return
        self.persist_probes += 1
        self.host.count("window_probes")
        # Probe with an already-acknowledged sequence number: the peer answers with
        # an ACK carrying its current window, and no data is committed.
        self._xmit(ACK, (self.snd_una - 1) & MASK)
        self.rtt.backoff()
        self.persist_at = now + self.rtt.rto
        if ut is not None:
            self.persist_at = min(self.persist_at, self.stall_since + ut)

    def _send_into_small_window(self, now: float) -> None:
        """The override timeout of RFC 9293 3.8.6.2.1 (Linux: tcp_write_wakeup): the window
        stayed open by less than silly window avoidance waits for, with nothing in flight;
        send what fits, and the ACK tells the window."""
        nxt = self.snd_nxt
        off = (nxt - self.buf_seq) & MASK
        unsent = len(self.sndbuf) - off
        opts = self._options(ACK) if self.opts_on else b""
        size = min(self.snd_wnd, max(self.snd_mss - len(opts) + self.ts_len, 1), unsent)
        flags = ACK
        if size == unsent:
            flags |= PSH
            if self.fin_queued:
                flags |= FIN
        with memoryview(self.sndbuf) as view:
            self._xmit(flags, nxt, view[off:off + size], opts)
        self.host.count("small_window_sends")
        self._advance(nxt, (nxt + size + (flags & FIN)) & MASK, now)

    def set_keepalive(self, enabled: bool, idle: float | None = None,
                      interval: float | None = None, probes: int | None = None,
                      now: float | None = None) -> None:
        """Turn keepalive on or off; None leaves a parameter as it was."""
        old_idle, old_interval, old_probes = self.ka_params
        self.ka_params = (old_idle if idle is None else idle,
                          old_interval if interval is None else interval,
                          old_probes if probes is None else probes)
        self.keepalive = enabled
        self.ka_out = 0
        if not enabled or self.state is CLOSED:
            self.keepalive_at = None
            return
        since = self.last_rx if now is None else max(self.last_rx, now)
        self.keepalive_at = since + self.ka_params[0]

    def set_user_timeout(self, seconds: float | None) -> None:
        """Set or clear the user timeout; a stall already under way is measured from its
        start, so the timer is pulled in to that deadline at once."""
        self.user_timeout = seconds
        if seconds is None:
            return
        deadline = self.stall_since + seconds
        if self.backoffs and self.rto_at is not None and deadline < self.rto_at:
            self.rto_at = deadline
        if self.persist_probes and self.persist_at is not None and deadline < self.persist_at:
            self.persist_at = deadline

    def _on_keepalive(self, now: float) -> None:
        """RFC 1122 4.2.3.6, as Linux does it.

        Only in ESTABLISHED, CLOSE-WAIT and FIN-WAIT-2 with no data outstanding or
        queued (otherwise the retransmission or persist timer is in charge, and this
        one looks again `idle` seconds later). After `idle` seconds without a segment
        from the peer, a probe: an ACK with SEQ = SND.UNA - 1 and no data, which the
        peer must answer with an ACK; then one every `interval` seconds. Any segment
        from the peer resets the count. When `probes` probes are unanswered (with a
        user timeout instead: when some are and the peer has been silent for
        `user_timeout` seconds), the peer is reset and the connection ends with
        ConnectionTimedOut.
        """
        self.keepalive_at = None
        if not self.keepalive:
            return
        idle, interval, probes = self.ka_params
        state = self.state
        if ((state is not ESTABLISHED and state is not CLOSE_WAIT and state is not FIN_WAIT_2)
                or self.sndbuf or self.snd_una != self.snd_max):
            self.ka_out = 0
            self.keepalive_at = now + idle
            return
        last_rx = self.last_rx
        if self.ka_out and last_rx >= self.ka_since:
            self.ka_out = 0  # the peer answered
        if not self.ka_out and now < last_rx + idle:  # sums as in the deadlines: no
            self.keepalive_at = last_rx + idle  # rounding may leave a deadline due again
            return
        ut = self.user_timeout
        if (self.ka_out >= probes if ut is None else
                self.ka_out and now >= last_rx + ut):
            self.host.count("keepalive_timeouts")
            self.host.count("resets_sent")
            self._xmit(RST | ACK, self.snd_nxt)
            self._finish(ev.ConnectionTimedOut(self.id), "keepalive timeout", now)
            return
        if not self.ka_out:
            self.ka_since = now
        self.ka_out += 1
        self.host.count("keepalive_probes")
        self._xmit(ACK, (self.snd_una - 1) & MASK)
        self.keepalive_at = now + interval
        if ut is not None and now < last_rx + ut < self.keepalive_at:
            self.keepalive_at = last_rx + ut

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
        self.clock = now
        if self.state not in (SYN_SENT, CLOSED):
            self._xmit(RST | ACK, self.snd_nxt)
            self.host.count("resets_sent")
        self._finish(ev.ConnectionClosed(self.id) if cause == "abort" else
                     ev.ConnectionReset(self.id), cause, now)

    # ------------------------------------------------------------ ending

    def _finish(self, event, cause: str, now: float) -> None:
        self.rto_at = self.delack_at = self.persist_at = self.fin_wait_2_at = None
        self.keepalive_at = None
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
            "sack": self.sack_ok, "timestamps": self.ts_ok,
            "sacked": sum((r - l) & MASK for l, r in self.sacked),
            "timers": {name: round(t - now, 6) for name, t in (
                ("retransmit", self.rto_at), ("delayed_ack", self.delack_at),
                ("persist", self.persist_at), ("fin_wait_2", self.fin_wait_2_at),
                ("keepalive", self.keepalive_at))
                if t is not None},
        }
