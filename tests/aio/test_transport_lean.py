"""TcpTransport keeps what an idle connection needs and nothing more (slots, no dict)."""

import asyncio

from usertcp.aio.transport import TcpTransport


class Keep(asyncio.Protocol):
    def __init__(self, made: list):
        self.made = made

    def connection_made(self, transport) -> None:
        self.made.append(transport)


async def until(pred, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.005)


async def test_accepted_transports_are_slotted_and_share_their_sockname(pair):
    a, b = pair
    made: list[TcpTransport] = []
    await b.create_server(lambda: Keep(made), 7)
    clients = [await a.create_connection(asyncio.Protocol, "10.0.0.2", 7) for _ in range(3)]
    await until(lambda: len(made) == 3)
    first, second, _ = made
    assert not hasattr(first, "__dict__")
    assert first.get_extra_info("sockname") == ("10.0.0.2", 7)
    assert first.get_extra_info("sockname") is second.get_extra_info("sockname")
    ports = {t.get_extra_info("peername")[1] for t in made}
    assert {t.get_extra_info("sockname")[1] for t, _ in clients} == ports
    assert first.get_extra_info("peername")[0] == "10.0.0.1"
    assert first.get_extra_info("socket") is None
    assert first.get_extra_info("admitted") is None
    assert first.get_extra_info("compression", "none") == "none"
    assert all(t._pending is None for t in made)


async def test_the_write_queue_exists_only_while_bytes_wait(pair):
    a, b = pair
    made: list[TcpTransport] = []
    received = bytearray()

    class Count(Keep):
        def data_received(self, data) -> None:
            received.extend(data)

    await b.create_server(lambda: Count(made), 9)
    transport, _ = await a.create_connection(asyncio.Protocol, "10.0.0.2", 9)
    await until(lambda: made)
    big = b"z" * (a.config.send_buffer + 100_000)  # more than the engine's send buffer
    transport.write(big)
    assert transport._pending is not None
    assert transport.get_write_buffer_size() == 100_000
    await until(lambda: len(received) == len(big))
    assert transport.get_write_buffer_size() == 0 and transport._pending is None
    assert bytes(received) == big
