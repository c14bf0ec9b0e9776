"""In-process devices for tests: a socketpair link with a real fd, and a pure queue."""

from __future__ import annotations

import errno
import socket
from collections import deque

from .base import write_each
from .errors import check_mtu

_BUF_BYTES = 4 << 20  # room for a few thousand packets before the link drops
# A full queue or a closed peer is a dropped packet on a real link too.
_TX_DROP_ERRNOS = {errno.EAGAIN, errno.ENOBUFS, errno.ECONNREFUSED, errno.EPIPE, errno.ENOTCONN}


class MemoryDevice:
    """One end of a datagram link: what one end sends, the other receives.

    Backed by a non-blocking AF_UNIX SOCK_DGRAM socketpair, so each packet
    keeps its boundaries and the fd works with select/asyncio readers.
    """

    def __init__(self, sock: socket.socket, mtu: int = 1500) -> None:
        self.mtu = check_mtu(mtu)
        sock.setblocking(False)
        self._sock: socket.socket | None = sock
        self.tx_dropped = 0

    @classmethod
    def pair(cls, mtu: int = 1500) -> tuple[MemoryDevice, MemoryDevice]:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        for s in (a, b):
            for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
                s.setsockopt(socket.SOL_SOCKET, opt, _BUF_BYTES)
        return cls(a, mtu), cls(b, mtu)

    def fileno(self) -> int | None:
        return self._sock.fileno() if self._sock is not None else None

    def receive_batch(self, max_packets: int = 64) -> list[bytes]:
        if self._sock is None:
            return []
        recv = self._sock.recv
        packets: list[bytes] = []
        try:
            while len(packets) < max_packets:
                packets.append(recv(65536))
        except BlockingIOError:
            pass
        return packets

    def send_batch(self, packets: list[bytes]) -> None:
        if self._sock is None:
            self.tx_dropped += len(packets)
            return
        self.tx_dropped += write_each(self._sock.send, packets, _TX_DROP_ERRNOS)

    def next_deadline(self) -> float | None:
        return None

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class QueueDevice:
    """A device with no fd, for pure tests.

    `inject()` queues packets for `receive_batch`; sent packets go to the
    peer's receive queue when paired, else they collect in `sent`.
    """

    def __init__(self, mtu: int = 1500) -> None:
        self.mtu = check_mtu(mtu)
        self.inbox: deque[bytes] = deque()
        self.sent: list[bytes] = []
        self.peer: QueueDevice | None = None
        self.closed = False

    @classmethod
    def pair(cls, mtu: int = 1500) -> tuple[QueueDevice, QueueDevice]:
        a, b = cls(mtu), cls(mtu)
        a.peer, b.peer = b, a
        return a, b

    def inject(self, packets: list[bytes]) -> None:
        self.inbox.extend(packets)

    def take_sent(self) -> list[bytes]:
        sent, self.sent = self.sent, []
        return sent

    def fileno(self) -> int | None:
        return None

    def receive_batch(self, max_packets: int = 64) -> list[bytes]:
        inbox = self.inbox
        n = min(max_packets, len(inbox))
        return [inbox.popleft() for _ in range(n)]

    def send_batch(self, packets: list[bytes]) -> None:
        if self.closed:
            return
        if self.peer is not None:
            if not self.peer.closed:
                self.peer.inbox.extend(packets)
        else:
            self.sent.extend(packets)

    def next_deadline(self) -> float | None:
        return None

    def close(self) -> None:
        self.closed = True
        self.inbox.clear()
