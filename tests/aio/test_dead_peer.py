"""A peer that vanishes is noticed: keepalive or the user timeout end the connection,
and the application's pending read raises TimeoutError, as with kernel sockets."""

from __future__ import annotations

import asyncio
import errno
import time

import pytest

from usertcp import Stack, TcpConfig
from usertcp.phy import MemoryDevice
from usertcp.phy.base import Middleware


class Partition(Middleware):
    """Passes packets both ways until `cut`; then every packet is lost, silently."""

    def __init__(self, inner):
        self.inner = inner
        self.cut = False

    def receive_batch(self, max_packets: int = 64) -> list[bytes]:
        packets = self.inner.receive_batch(max_packets)
        return [] if self.cut else packets

    def send_batch(self, packets: list[bytes]) -> None:
        if not self.cut:
            self.inner.send_batch(packets)

    def next_deadline(self) -> float | None:
        return self.inner.next_deadline()

    def close(self) -> None:
        self.inner.close()


@pytest.fixture
async def partitioned():
    dev_a, dev_b = MemoryDevice.pair()
    link = Partition(dev_a)
    stacks = []

    def make(config_a: TcpConfig):
        a = Stack(link, "10.0.0.1", config=config_a)
        b = Stack(dev_b, "10.0.0.2", config=TcpConfig(isn_secret=b"b"))
        stacks.extend((a, b))
        return a, b, link

    yield make
    for stack in stacks:
        await stack.aclose(timeout=0.2)


async def idle_server(reader, writer):
    await reader.read()  # holds the connection open, never writes


async def stack_timeout(reader: asyncio.StreamReader, bound: float = 5.0) -> float:
    """Wait (at most `bound` s) for the pending read to fail with the stack's own
    TimeoutError (errno ETIMEDOUT, as a kernel socket's); returns the seconds it took.
    The bound raises nothing itself, so a stack that never gives up fails the test."""
    start = time.monotonic()
    read = asyncio.ensure_future(reader.read())
    done, _ = await asyncio.wait({read}, timeout=bound)
    read.cancel()
    assert read in done, f"the stack did not give up within {bound} s"
    with pytest.raises(TimeoutError) as raised:
        read.result()
    assert raised.value.errno == errno.ETIMEDOUT, raised.value
    return time.monotonic() - start


async def test_keepalive_detects_a_vanished_peer(partitioned):
    a, b, link = partitioned(TcpConfig(isn_secret=b"a", keepalive=True, keepalive_idle=0.3,
                                       keepalive_interval=0.1, keepalive_probes=3))
    await b.start_server(idle_server, 7)
    reader, writer = await a.open_connection("10.0.0.2", 7)
    writer.write(b"hi")
    await writer.drain()
    await asyncio.sleep(0.6)  # idle past keepalive_idle: probes go and are answered
    assert a.counters["keepalive_probes"] >= 1
    assert "keepalive_timeouts" not in a.counters
    link.cut = True
    assert await stack_timeout(reader) < 2.0  # idle + 3 probes: about 0.6 s
    assert a.counters["keepalive_timeouts"] == 1
    assert a.core.connection_count() == 0


async def test_user_timeout_ends_a_write_into_the_void(partitioned):
    a, b, link = partitioned(TcpConfig(isn_secret=b"a"))
    await b.start_server(idle_server, 7)
    reader, writer = await a.open_connection("10.0.0.2", 7)
    writer.transport.set_user_timeout(0.5)
    link.cut = True
    writer.write(b"x" * 10_000)
    elapsed = await stack_timeout(reader)
    assert 0.4 < elapsed < 2.0  # not the minutes 15 retries would take
    assert a.counters["user_timeouts"] == 1


async def test_transport_set_keepalive(partitioned):
    a, b, link = partitioned(TcpConfig(isn_secret=b"a"))  # keepalive off by default
    await b.start_server(idle_server, 7)
    reader, writer = await a.open_connection("10.0.0.2", 7)
    writer.transport.set_keepalive(True, idle=0.2, interval=0.1, probes=2)
    link.cut = True
    assert await stack_timeout(reader) < 2.0  # idle 0.2 + 2 probes 0.1 apart: about 0.4 s
    assert a.counters["keepalive_probes"] == 2
    assert a.counters["keepalive_timeouts"] == 1
    assert a.core.connection_count() == 0
