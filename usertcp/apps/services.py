"""Small stream services, each a protocol class (for `create_server`)."""

from __future__ import annotations

import asyncio

_CHUNK = 256 * 1024


class Echo(asyncio.Protocol):
    """Send back everything until the peer's EOF, then close (RFC 862).

    A protocol, not a stream callback: what arrives is written back within the same pass of
    the loop that received it, so the echo carries the ACK (no task to wake, no reader and
    writer per connection, no pure ACK before the echo). Flow control: while the transport's
    write buffer is above its high-water mark, reading pauses and the receive window closes.
    """

    __slots__ = ("_transport",)

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._transport.write(data)

    def eof_received(self) -> bool:
        return False  # the transport closes: our FIN follows what is still to be echoed

    def pause_writing(self) -> None:
        self._transport.pause_reading()

    def resume_writing(self) -> None:
        if not self._transport.is_closing():
            self._transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None


class Discard(asyncio.BufferedProtocol):
    """Drop everything until the peer's EOF, then close (RFC 863).

    A buffered protocol: each arrival is copied once, into one reused buffer, and dropped (a
    StreamReader would copy it twice more, into its buffer and out, and wake a task).
    """

    __slots__ = ("_buffer", "received")

    def __init__(self) -> None:
        self._buffer: bytearray | None = None
        self.received = 0

    def get_buffer(self, sizehint: int) -> bytearray:
        if self._buffer is None:  # at the first data: an idle connection holds none
            self._buffer = bytearray(_CHUNK)
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.received += nbytes

    def eof_received(self) -> bool:
        return False  # the transport closes

    def connection_lost(self, exc: Exception | None) -> None:
        self._buffer = None


discard = Discard  # what the CLI serves: a protocol class goes to create_server
