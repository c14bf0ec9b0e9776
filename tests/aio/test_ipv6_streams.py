"""The asyncio API over IPv6 and dual stack, two stacks on an in-memory link."""

from __future__ import annotations

import asyncio

import pytest

from usertcp import Stack, TcpConfig
from usertcp.phy import MemoryDevice


@pytest.fixture
async def dual():
    dev_a, dev_b = MemoryDevice.pair()
    a = Stack(dev_a, ["10.0.0.1", "fd00::1"], config=TcpConfig(isn_secret=b"a"))
    b = Stack(dev_b, ["10.0.0.2", "fd00::2"], config=TcpConfig(isn_secret=b"b"))
    yield a, b
    await a.aclose(timeout=0.5)
    await b.aclose(timeout=0.5)


async def test_open_connection_to_an_ipv6_literal_and_one_server_for_both(dual):
    a, b = dual
    seen = []

    async def echo(reader, writer):
        seen.append((writer.get_extra_info("sockname"), writer.get_extra_info("peername")))
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    await b.start_server(echo, 7)
    r6, w6 = await a.open_connection("fd00::2", 7)
    r4, w4 = await a.open_connection("10.0.0.2", 7)
    payload = bytes(range(256)) * 400
    w6.write(payload)
    w4.write(b"four")
    assert await r6.readexactly(len(payload)) == payload
    assert await r4.readexactly(4) == b"four"
    # asyncio's shapes: 4-tuples for IPv6, pairs for IPv4.
    assert w6.get_extra_info("peername") == ("fd00::2", 7, 0, 0)
    host, port, flow, scope = w6.get_extra_info("sockname")
    assert (host, flow, scope) == ("fd00::1", 0, 0)
    assert seen[0] == (("fd00::2", 7, 0, 0), ("fd00::1", port, 0, 0))
    assert seen[1][0] == ("10.0.0.2", 7)
    assert w4.get_extra_info("peername") == ("10.0.0.2", 7)
    for w in (w4, w6):
        w.close()
    await asyncio.sleep(0.05)


async def test_refused_over_ipv6(dual):
    a, _ = dual
    with pytest.raises(ConnectionRefusedError):
        await a.open_connection("fd00::2", 9)
