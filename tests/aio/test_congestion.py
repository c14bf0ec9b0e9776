"""Congestion control per connection from asyncio code, as Linux's TCP_CONGESTION."""

import pytest


async def test_transport_set_congestion(pair):
    a, b = pair

    async def echo(reader, writer):
        writer.write(await reader.read(100))
        await writer.drain()
        writer.close()

    await b.start_server(echo, 7)
    reader, writer = await a.open_connection("10.0.0.2", 7)
    [row] = [r for r in a.connections() if r["state"] == "ESTABLISHED"]
    assert row["congestion"] == "cubic"  # TcpConfig's default, as Linux's
    writer.transport.set_congestion("newreno")
    [row] = [r for r in a.connections() if r["conn_id"] == row["conn_id"]]
    assert row["congestion"] == "newreno"
    with pytest.raises(ValueError, match="choose one of cubic, newreno"):
        writer.transport.set_congestion("bbr")
    writer.write(b"still works")
    assert await reader.read(100) == b"still works"
    writer.close()
    await writer.wait_closed()
