"""The echo service as a protocol: every byte back in order, the FIN after them, and reading paused
while the peer does not read (its own echo would otherwise pile up without bound)."""

import asyncio
import os

from usertcp.apps.services import Echo


async def test_echo_returns_everything_then_closes(pair):
    a, b = pair
    await b.create_server(Echo, 5007)
    reader, writer = await a.open_connection("10.0.0.2", 5007)
    payload = os.urandom(500_000)
    writer.write(payload)
    writer.write_eof()
    got = await asyncio.wait_for(reader.read(), 10)  # to EOF: the echo closed after the data
    assert got == payload
    writer.close()


async def test_echo_pauses_reading_while_the_peer_does_not_read(pair):
    a, b = pair
    protocols = []

    def factory():
        protocols.append(Echo())
        return protocols[-1]

    await b.create_server(factory, 5008)
    reader, writer = await a.open_connection("10.0.0.2", 5008)
    transport = writer.transport
    transport.pause_reading()  # the client stops reading its echo
    chunk = os.urandom(64 * 1024)
    for _ in range(64):  # 4 MB offered; the echo must stop taking it
        writer.write(chunk)
    await asyncio.sleep(1.0)
    server_transport = protocols[0]._transport
    assert server_transport is not None
    assert not server_transport.is_reading()
    assert server_transport.get_write_buffer_size() < 4 * 1024 * 1024
    transport.resume_reading()
    got = bytearray()

    async def read_all() -> None:
        while len(got) < 64 * len(chunk):
            got.extend(await reader.read(1 << 20))

    await asyncio.wait_for(read_all(), 20)
    assert got == chunk * 64
    writer.close()
