"""The send and receive buffers: what the application queues and reads, and the windows
they make (RFC 9293 3.8.6: the window we advertise, receiver-side silly window avoidance).

The bytes live on Connection: `sndbuf` (`buf_seq` is the sequence number of its first byte)
and `rcvbuf` (a recvqueue.RecvQueue) up to RCV.NXT; out-of-order data waits in
`reassembly.Reassembly`. The front of `sndbuf` may hold bytes already acknowledged (up to
SND.UNA): they are cut off only once there are TRIM_AT of them, or all is acknowledged, because
cutting the front of a bytearray can copy what remains (CPython shrinks it by reallocating),
and a per-ACK cut made a bulk sender copy its buffer over and over. `sndbuf` is an empty bytes
while nothing is queued (an idle connection keeps no bytearray), a bytearray from the first
send() until all is acknowledged.
"""

from __future__ import annotations

from .seq import HALF, MASK
from .state import CAN_RECEIVE, SYN_RECEIVED, SYN_SENT

TRIM_AT = 256 * 1024


class Buffers:
    """The buffer half of Connection (a mixin: the fields live on Connection)."""

    __slots__ = ()

    def _queued(self) -> int:
        """Bytes in the send buffer not yet acknowledged (sent or not)."""
        n = len(self.sndbuf)
        done = (self.snd_una - self.buf_seq) & MASK
        if done >= HALF:  # SND.UNA still on our SYN, before the first byte
            return n
        return n - done if done < n else 0

    def _trim(self, ack: int) -> None:
        """SND.UNA moved to `ack`: cut the acknowledged front, when it is worth a copy."""
        done = (ack - self.buf_seq) & MASK
        if not done or done >= HALF:
            return
        buf = self.sndbuf
        n = len(buf)
        if done >= n:  # all data acknowledged (and maybe our FIN): nothing left to copy
            self.sndbuf = b""  # an idle connection keeps no buffer
            self.buf_seq = (self.buf_seq + n) & MASK
        elif done >= TRIM_AT:
            del buf[:done]
            self.buf_seq = (self.buf_seq + done) & MASK

    def send(self, data, now: float) -> int:
        space = self.cfg.send_buffer - self._queued()
        if space <= 0:
            return 0
        n = min(space, len(data))
        if type(self.sndbuf) is bytes:  # the first data (or the first after all was acked)
            self.sndbuf = bytearray(data[:n] if n < len(data) else data)
        else:
            self.sndbuf += data[:n] if n < len(data) else data
        if self.state is not SYN_SENT and self.state is not SYN_RECEIVED:
            self._mark()
        return n

    def send_space(self) -> int:
        return max(self.cfg.send_buffer - self._queued(), 0)

    def recv(self, max_bytes: int) -> bytes:
        data = self.rcvbuf.take(max_bytes)
        self._after_read(data)
        return data

    def recv_chunks(self) -> list:
        """All received data as pieces (bytes-like), for a reader that copies them itself."""
        chunks = self.rcvbuf.take_chunks()
        self._after_read(chunks)
        return chunks

    def _after_read(self, taken) -> None:
        self.data_event_pending = False
        if taken and self.state in CAN_RECEIVE:
            # A window update when reading opened the window enough to matter.
            adv = (self.rcv_adv - self.rcv_nxt) & MASK
            space = self.cfg.receive_buffer - len(self.rcvbuf)
            if space - adv >= min(self.cfg.receive_buffer >> 1, 2 * self.mss_own):
                self.ack_now = True
                self._mark()

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
