"""asyncio.BufferedProtocol servers: received bytes go straight into the protocol's buffer."""

import asyncio
import os

from usertcp.apps.services import Discard
from usertcp.tcp.recvqueue import RecvQueue


class Collect(asyncio.BufferedProtocol):
    """Hands out small buffers (so a 64 KB arrival needs many) and grows a bytearray after
    each fill, which fails if the transport still holds a view of it."""

    def __init__(self, done: asyncio.Future, piece: int) -> None:
        self.piece = piece
        self.buffer = bytearray(piece)
        self.data = bytearray()
        self.sizehints: list[int] = []
        self.done = done

    def get_buffer(self, sizehint: int) -> bytearray:
        self.sizehints.append(sizehint)
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data += self.buffer[:nbytes]
        self.buffer.extend(b"\0")  # a resize: raises BufferError while a view is exported
        del self.buffer[self.piece:]

    def eof_received(self) -> bool:
        self.done.set_result(bytes(self.data))
        return False


async def test_buffered_protocol_gets_every_byte_in_order(pair):
    a, b = pair
    done = asyncio.get_running_loop().create_future()
    protocols = []

    def factory():
        protocols.append(Collect(done, 1000))
        return protocols[-1]

    await b.create_server(factory, 5001)
    reader, writer = await a.open_connection("10.0.0.2", 5001)
    payload = os.urandom(300_000)
    writer.write(payload)
    writer.write_eof()
    got = await asyncio.wait_for(done, 10)
    assert len(got) == len(payload)
    assert got == payload
    # The transport asks for what is left of each piece, never more than it holds.
    assert max(protocols[0].sizehints) <= 300_000
    assert len(protocols[0].sizehints) >= 300
    assert await asyncio.wait_for(reader.read(), 5) == b""  # the server closed after EOF
    writer.close()


async def test_discard_counts_and_closes_after_eof(pair):
    a, b = pair
    sinks = []

    def factory():
        sinks.append(Discard())
        return sinks[-1]

    await b.create_server(factory, 9)
    reader, writer = await a.open_connection("10.0.0.2", 9)
    for _ in range(5):
        writer.write(b"x" * 40_000)
        await writer.drain()
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(), 10) == b""
    assert sinks[0].received == 200_000
    writer.close()


def test_take_chunks_hands_over_everything():
    queue = RecvQueue()
    packet = bytes(range(256)) * 20
    queue.append(memoryview(packet)[40:])  # large: kept as a view
    queue.append(b"tiny")  # small: copied into a tail
    queue.append(b"more")
    chunks = queue.take_chunks()
    assert b"".join(chunks) == packet[40:] + b"tinymore"
    assert len(queue) == 0
    assert queue.take_chunks() == []
    assert queue.take() == b""
