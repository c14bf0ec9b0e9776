"""Output: segmenting the send buffer within the windows, retransmissions, and building
each segment with its options (RFC 9293 3.8, RFC 7323, RFC 2018/2883 blocks we report).
"""

from __future__ import annotations

import struct

from ..wire.tcp import ACK, FIN, PSH, RST, SYN, Segment, build_options, build_segment
from .seq import HALF, MASK
from .state import CLOSED, SYN_RECEIVED, SYN_SENT
from .timestamps import ts_option, ts_value


class Output:
    """The sending half of Connection (a mixin: the fields live on Connection)."""

    __slots__ = ()

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
            self.dsack = None  # reported once (RFC 2883 4)
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
        return ts_value(self.clock, self.ts_offset)

    def _options(self, flags: int) -> bytes:
        """TSopt (RFC 7323 3.2: every segment once negotiated, RSTs too) and SACK blocks,
        a D-SACK block first when a duplicate is to be reported (RFC 2883)."""
        opts = ts_option(self.clock, self.ts_offset, self.ts_recent) if self.ts_ok else b""
        if self.sack_ok and (self.ooo.blocks or self.dsack) and not flags & RST:
            blocks = self._sack_blocks()
            n = len(blocks)
            opts += struct.pack(f"!BBBB{2 * n}I", 1, 1, 5, 2 + 8 * n,
                                *[edge for block in blocks for edge in block])
        return opts

    def _sack_blocks(self) -> list[tuple[int, int]]:
        """The SACK blocks for an ACK now (RFC 2018 4): first the block holding the latest
        out-of-order arrival, then those of the arrivals before it, then the rest in
        order; three fit beside a TSopt, four without. A D-SACK block goes before them
        all, even when the block after it is the same range (RFC 2883 4)."""
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
        if self.dsack:
            out.insert(0, self.dsack)
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
        return build_options(mss=self.mss_own, wscale=wscale, sack_permitted=sack, timestamp=ts)

    def _send_syn(self) -> None:
        self._xmit(SYN, self.iss, options=self._syn_options(None))

    def _send_syn_ack(self, syn: Segment | None = None) -> None:
        if syn is None:  # a retransmission: echo window scaling only if the peer's SYN had it
            scaled = self.rcv_wscale or self.snd_wscale  # both 0 reads the same as none
            options = build_options(
                mss=self.mss_own, wscale=self.rcv_wscale if scaled else None,
                sack_permitted=self.sack_ok,
                timestamp=(self._ts_now(), self.ts_recent) if self.ts_ok else None)
        else:
            options = self._syn_options(syn)
        self._xmit(SYN | ACK, self.iss, options=options)

    def output(self, now: float) -> None:
        """Send what the windows allow, then any ACK still owed."""
        self.dirty = False
        self.clock = now
        state = self.state
        if state is SYN_SENT or state is SYN_RECEIVED or state is CLOSED:
            if self.ack_now:
                self._xmit(ACK, self.snd_max)
            return
        if self.sack_ok and (self.in_recovery or self.in_loss):
            sent = self._recovery_send(now)
        else:
            sent = self._send_data(now)
            if sent and self.sack_ok:
                self._arm_tlp(now)
        if not sent and (self.ack_now or (self.unacked_segments and not self.cfg.delayed_ack)):
            self._xmit(ACK, self.snd_max)
        if (self.rto_at is None and self.persist_at is None and self._unsent() > 0
                and (self.snd_wnd == 0 or self.snd_una == self.snd_max)):
            # A shut window, or one open less than silly window avoidance sends into with
            # nothing in flight to bring news of a wider one (the update may have been
            # lost): the persist timer probes, or sends what fits (_on_persist).
            self.persist_at = now + self.rtt.rto

    def _payload_mss(self, opts: bytes) -> int:
        """The data one segment carries beside `opts`: the MSS less option bytes (RFC 6691).
        snd_mss already leaves out the TSopt every segment has; SACK blocks take more."""
        extra = len(opts) - self.ts_len
        return max(self.snd_mss - extra, 1) if extra > 0 else self.snd_mss

    def _send_data(self, now: float) -> bool:
        """Segment the send buffer by MSS within min(cwnd, SND.WND); Nagle; FIN."""
        buf = self.sndbuf
        if not self.fin_queued and (not buf or self._unsent() <= 0):
            return False  # nothing to send: the usual case for an ACK on the receiving side
        with memoryview(buf) as view:  # one view for the burst: nothing here resizes buf
            return self._send_segments(view, now)

    def _send_segments(self, view: memoryview, now: float) -> bool:
        # One set of options for the burst: the same TSval, TSecr and SACK blocks.
        opts = self._options(ACK) if self.opts_on else b""
        mss = self._payload_mss(opts)
        cfg = self.cfg
        # With segmentation offload a segment may carry many MSS; the device cuts it at
        # the MTU less the headers (options included), which is our MSS, and so only when
        # the peer's MSS is no smaller than ours.
        # (An MTU near 64 KB leaves room for no more than one MSS.)
        chunk = (cfg.tso_max // mss * mss if cfg.tso_max > mss
                 and self.snd_mss + self.ts_len == self.mss_own else mss)
        buflen = len(view)
        sent_any = False
        flags_base = ACK
        while True:
            nxt = self.snd_nxt
            una = self.snd_una
            flight = (nxt - una) & MASK
            board = self.board
            if board is not None and board.sacked_out:
                # SACKed data has left the network (it is not in flight for cwnd) but still
                # fills the peer's buffer (the window counts it): limited transmit by pipe
                # (RFC 6675 (3)), so the first duplicate ACKs release new data, whose SACKs
                # show a loss sooner.
                usable = min(self.cwnd - board.pipe(flight), self.snd_wnd - flight)
            else:
                usable = min(self.cwnd, self.snd_wnd) - flight
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
                elif size < mss and size != chunk:
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
        board = self.board
        if board is not None:
            board.on_send(seq, end, now)
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
            if min(mss, span, len(buf) - off if off < HALF else 0) > self._payload_mss(opts):
                opts = opts[:self.ts_len]
            else:
                mss = self._payload_mss(opts)
        if off < HALF and off < len(buf):
            size = min(mss, len(buf) - off, span)
            flags = ACK
            if off + size == len(buf):
                flags |= PSH  # as the original had it
                if self.fin_queued and span > size:
                    flags |= FIN
            with memoryview(buf) as view:
                self._xmit(flags, seq, view[off:off + size], opts)
            end = (seq + size + (flags & FIN)) & MASK
        elif self.fin_queued and span:
            self._xmit(ACK | FIN, seq, b"", opts)
            end = (seq + 1) & MASK
        else:
            return seq
        board = self.board
        if board is not None:
            board.on_send(seq, end, self.clock)
            if self.undo_marker is not None:
                self.undo_retrans += 1  # each must be D-SACKed before an undo
                if self.undo_tsval is None and self.ts_ok:
                    self.undo_tsval = self._ts_now()
        return end

    def _send_into_small_window(self, now: float) -> None:
        """The override timeout of RFC 9293 3.8.6.2.1 (Linux: tcp_write_wakeup): the window
        stayed open by less than silly window avoidance waits for, with nothing in flight;
        send what fits, and the ACK tells the window."""
        nxt = self.snd_nxt
        off = (nxt - self.buf_seq) & MASK
        unsent = len(self.sndbuf) - off
        opts = self._options(ACK) if self.opts_on else b""
        size = min(self.snd_wnd, self._payload_mss(opts), unsent)
        flags = ACK
        if size == unsent:
            flags |= PSH
            if self.fin_queued:
                flags |= FIN
        with memoryview(self.sndbuf) as view:
            self._xmit(flags, nxt, view[off:off + size], opts)
        self.host.count("small_window_sends")
        self._advance(nxt, (nxt + size + (flags & FIN)) & MASK, now)
