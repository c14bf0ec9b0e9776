"""The send and receive buffers: what the application queues and reads, and the windows
they make (RFC 9293 3.8.6: the window we advertise, receiver-side silly window avoidance).

The bytes live in two bytearrays on Connection: `sndbuf` from SND.UNA's data (`buf_seq` is the
sequence number of its first byte) and `rcvbuf` up to RCV.NXT; out-of-order data waits in
`reassembly.Reassembly`.
"""

from __future__ import annotations

from .seq import HALF, MASK
from .state import CAN_RECEIVE, SYN_RECEIVED, SYN_SENT


class Buffers:
    """The buffer half of Connection (a mixin: the fields live on Connection)."""

    __slots__ = ()

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
            if space - adv >= min(self.cfg.receive_buffer >> 1, 2 * self.mss_own):
                self.ack_now = True
                self._mark()
        return data

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
        if space - current >= min(self.cfg.receive_buffer >> 1, self.mss_own) or space == current:
            field = space >> self.rcv_wscale
            if field > 65535:
                field = 65535
            wnd = field << self.rcv_wscale
            if wnd > current:
                self.rcv_adv = (rcv_nxt + wnd) & MASK
                return field
        return current >> self.rcv_wscale

    def _unsent(self) -> int:
        """Data bytes queued but not yet sent (past SND.NXT)."""
        sent = (self.snd_nxt - self.buf_seq) & MASK
        return len(self.sndbuf) - sent if sent < HALF else len(self.sndbuf)
