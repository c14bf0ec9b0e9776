"""An asyncio Transport over one engine connection.

Being a real `asyncio.Transport` lets asyncio's own StreamReaderProtocol,
StreamReader and StreamWriter run on top unchanged, so code written for
`asyncio.open_connection` / `start_server` gets the same objects it expects.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING

from ..tcp.state import State

if TYPE_CHECKING:
    from .driver import Stack

_HIGH_WATER = 64 * 1024
_LOW_WATER = _HIGH_WATER // 4
_DONE_SENDING = frozenset({State.FIN_WAIT_2, State.TIME_WAIT, State.CLOSED})
_SOCKNAMES: dict[tuple, tuple] = {}  # recent socknames, each kept once (see _shared)
_SOCKNAMES_MAX = 256


def _shared(sockname: tuple) -> tuple:
    """An equal sockname tuple seen before, if any: a server's accepted transports all share
    one, instead of a tuple and an address string each. Bounded: clients' socknames (a port
    each) only pass through."""
    known = _SOCKNAMES.get(sockname)
    if known is not None:
        return known
    if len(_SOCKNAMES) >= _SOCKNAMES_MAX:
        _SOCKNAMES.clear()
    _SOCKNAMES[sockname] = sockname
    return sockname


def _copy_into(protocol: asyncio.BufferedProtocol, chunk) -> None:
    """One received piece through get_buffer()/buffer_updated(), as often as its size needs."""
    view = memoryview(chunk)
    size = len(view)
    done = 0
    while done < size:
        # Views released before buffer_updated(): the protocol may then resize its buffer.
        with memoryview(protocol.get_buffer(size - done)) as given, given.cast("B") as buf:
            n = min(len(buf), size - done)
            if not n:
                raise RuntimeError("get_buffer() returned an empty buffer")
            buf[:n] = view[done:done + n]
        protocol.buffer_updated(n)
        done += n


class TcpTransport(asyncio.Transport):
    """Writes go into the engine's send buffer; what does not fit waits here.

    Flow control both ways is TCP's own: a paused reader leaves data in the
    engine, whose receive window then closes; `drain()` waits while the send
    buffer is full and more than the high-water mark waits here.

    Slots, and nothing made before it is needed: a server may hold 100,000 idle ones.
    """

    __slots__ = ("_admitted", "_closing", "_core", "_engine_done", "_eof_delivered",
                 "_eof_requested", "_high", "_lost", "_low", "_peer_eof", "_peername",
                 "_pending", "_pending_size", "_protocol", "_reading_paused", "_sockname",
                 "_stack", "_writing_paused", "conn_id")

    def __init__(self, stack: Stack, conn_id: int, protocol: asyncio.BaseProtocol,
                 sockname: tuple[str, int], peername: tuple[str, int], admitted=None):
        self._extra = None  # get_extra_info answers from the slots: no dict per transport
        self._sockname = _shared(sockname)
        self._peername = peername
        self._admitted = admitted
        self._stack = stack
        self._core = stack.core
        self.conn_id = conn_id
        self._protocol = protocol
        # Accepted from the app, not yet into the engine: whole chunks, so that a relay
        # writing 256 KB reads costs no copy here (a bytearray re-copies on every append).
        # A deque only while something waits (an empty one costs ~600 bytes).
        self._pending: deque | None = None
        self._pending_size = 0
        self._eof_requested = False  # write_eof() called: FIN once _pending is empty
        self._closing = False  # close() called
        self._lost = False  # connection_lost() delivered
        self._reading_paused = False
        self._peer_eof = False  # PeerClosed seen
        self._eof_delivered = False
        self._engine_done = False  # ConnectionClosed seen: only leftover data remains
        self._writing_paused = False
        self._high = _HIGH_WATER
        self._low = _LOW_WATER

    # -------------------------------------------------------- asyncio.Transport

    def get_extra_info(self, name, default=None):
        if name == "sockname":
            return self._sockname
        if name == "peername":
            return self._peername
        if name == "admitted":
            return self._admitted
        if name == "socket":
            return None  # there is no kernel socket behind it
        return default

    def write(self, data) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data argument must be a bytes-like object, not "
                            f"{type(data).__name__!r}")
        if self._eof_requested or self._closing:
            raise RuntimeError("cannot call write() after write_eof() or close()")
        if self._lost or not data:
            return
        if self._pending:
            # Bytes are immutable; anything else the caller may reuse after write() returns.
            self._pending.append(data if type(data) is bytes else bytes(data))
            self._pending_size += len(data)
        else:
            try:
                n = self._core.send(self.conn_id, data, self._stack.now())
            except Exception:  # the engine says the connection can no longer send
                return
            if n < len(data):
                rest = (memoryview(data)[n:] if type(data) is bytes
                        else bytes(memoryview(data)[n:]))  # only the rest is copied
                self._pending = deque((rest,))
                self._pending_size += len(rest)
                self._stack.blocked.add(self)
            self._stack.schedule_flush()
        self._check_high_water()

    def writelines(self, list_of_data) -> None:
        self.write(b"".join(list_of_data))

    def write_eof(self) -> None:
        if self._eof_requested or self._lost:
            return
        self._eof_requested = True
        self._push_pending()

    def can_write_eof(self) -> bool:
        return True

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._eof_requested = True
        self._push_pending()

    def abort(self) -> None:
        self._closing = True
        self._drop_pending()
        self._stack.blocked.discard(self)
        self._core.abort(self.conn_id, self._stack.now())
        self._stack.schedule_flush()
        self._connection_lost(None)

    def is_closing(self) -> bool:
        return self._closing or self._lost

    def get_write_buffer_size(self) -> int:
        return self._pending_size

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (self._low, self._high)

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        if high is None:
            high = _HIGH_WATER if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high, self._low = high, low
        self._check_high_water()

    def pause_reading(self) -> None:
        self._reading_paused = True

    def resume_reading(self) -> None:
        if self._reading_paused:
            self._reading_paused = False
            self.pull()
            self._stack.schedule_flush()  # the window may have opened

    def is_reading(self) -> bool:
        return not self._reading_paused and not self._lost

    def get_protocol(self):
        return self._protocol

    def set_protocol(self, protocol) -> None:
        self._protocol = protocol

    def set_nodelay(self, nodelay: bool = True) -> None:
        """TCP_NODELAY: turn Nagle's algorithm off for this connection."""
        self._core.set_nodelay(self.conn_id, nodelay)

    def set_keepalive(self, enabled: bool = True, idle: float | None = None,
                      interval: float | None = None, probes: int | None = None) -> None:
        """SO_KEEPALIVE (+ TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT) for this connection.

        A peer that stays silent `idle` s and then leaves `probes` probes sent every
        `interval` s unanswered is reset; the reader then raises TimeoutError. None
        keeps the current value (TcpConfig's keepalive_* at first).
        """
        if self._lost or self._engine_done:
            return
        self._core.set_keepalive(self.conn_id, enabled, idle, interval, probes,
                                 self._stack.now())
        self._stack.schedule_flush()  # the driver's timer may need to move earlier

    def set_congestion(self, name: str) -> None:
        """Linux's TCP_CONGESTION: "cubic" or "newreno" for this connection."""
        self._core.set_congestion(self.conn_id, name, self._stack.now())

    def set_user_timeout(self, seconds: float | None) -> None:
        """TCP_USER_TIMEOUT: give up (TimeoutError) when data stays unacknowledged, the
        peer's window shut or keepalive probes unanswered for `seconds`; None: off."""
        if self._lost or self._engine_done:
            return
        self._core.set_user_timeout(self.conn_id, seconds)
        self._stack.schedule_flush()

    # -------------------------------------------------------- from the driver

    def pull(self) -> None:
        """Move received data from the engine to the protocol, then EOF if due."""
        if self._reading_paused or self._lost:
            return
        protocol = self._protocol
        if isinstance(protocol, asyncio.BufferedProtocol):
            # Straight into the protocol's buffer: the pieces are never joined into bytes.
            for chunk in self._core.recv_chunks(self.conn_id):
                _copy_into(protocol, chunk)
        else:
            data = self._core.recv(self.conn_id)
            if data:
                protocol.data_received(data)
        # recv() drained the engine, so the peer's FIN comes next in the stream.
        if self._peer_eof and not self._eof_delivered:
            self._eof_delivered = True
            keep_open = self._protocol.eof_received()
            if not keep_open and not self._closing and not self._engine_done:
                self.close()
        if self._engine_done and self._eof_delivered:
            self._connection_lost(None)

    def peer_closed(self) -> None:
        self._peer_eof = True
        self.pull()

    def _push_pending(self) -> None:
        """Move waiting bytes into the engine; send the FIN when they are all in."""
        if self._lost:
            return
        core = self._core
        now = self._stack.now()
        pending = self._pending
        if pending:
            conn_id = self.conn_id
            try:
                while pending:
                    chunk = pending[0]
                    n = core.send(conn_id, chunk, now)
                    self._pending_size -= n
                    if n < len(chunk):
                        if n:
                            pending[0] = memoryview(chunk)[n:]
                        break
                    pending.popleft()
            except Exception:  # the engine says the connection can no longer send
                self._drop_pending()
            if not pending:
                self._pending = None
            self._stack.schedule_flush()
        if self._pending:
            self._stack.blocked.add(self)
        else:
            self._stack.blocked.discard(self)
            if self._eof_requested:
                if self._closing:
                    core.close(self.conn_id, now)
                else:
                    core.shutdown(self.conn_id, now)
                self._stack.schedule_flush()
                self.state_changed(core.state(self.conn_id))
        self._check_low_water()

    def send_space_freed(self) -> None:
        self._push_pending()

    def state_changed(self, state: State) -> None:
        # A closed transport is finished once its FIN is acknowledged.
        if self._closing and not self._pending and state in _DONE_SENDING:
            self._connection_lost(None)

    def failed(self, exc: BaseException) -> None:
        self._drop_pending()
        self._stack.blocked.discard(self)
        self._connection_lost(exc)

    def finished(self) -> None:
        """The engine is done with the connection (TIME-WAIT or CLOSED).

        Unread data stays readable: connection_lost waits until a paused
        reader has taken it and the EOF.
        """
        self._engine_done = True
        self._peer_eof = True
        self._drop_pending()
        self._stack.blocked.discard(self)
        self.pull()

    def _connection_lost(self, exc) -> None:
        if self._lost:
            return
        self._lost = True
        self._stack.forget_transport(self)
        self._stack.loop.call_soon(self._protocol.connection_lost, exc)

    def _drop_pending(self) -> None:
        self._pending = None
        self._pending_size = 0

    def _check_high_water(self) -> None:
        if not self._writing_paused and self._pending_size > self._high:
            self._writing_paused = True
            self._protocol.pause_writing()

    def _check_low_water(self) -> None:
        if self._writing_paused and self._pending_size <= self._low:
            self._writing_paused = False
            self._protocol.resume_writing()

    def __repr__(self) -> str:
        peer = self.get_extra_info("peername")
        return f"<TcpTransport conn={self.conn_id} peer={peer[0]}:{peer[1]}>"
