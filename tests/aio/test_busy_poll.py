"""Busy polling (`Stack(busy_poll=...)`, `--busy-poll USEC`): after a pass with input the driver
keeps reading the device for a while before the loop sleeps, and gives the loop back in time."""

import asyncio
import time

import pytest

from usertcp import Stack, TcpConfig
from usertcp.aio import driver
from usertcp.cli import build_parser
from usertcp.phy import MemoryDevice
from usertcp.phy.base import Middleware


class CountingDevice(Middleware):
    """Counts the reads that found the device empty."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.empty_reads = 0
        self.reads = 0

    def receive_batch(self, max_packets: int = 64) -> list:
        self.reads += 1
        packets = self.inner.receive_batch(max_packets)
        if not packets:
            self.empty_reads += 1
        return packets

    def send_batch(self, packets: list) -> None:
        self.inner.send_batch(packets)

    def next_deadline(self) -> float | None:
        return self.inner.next_deadline()

    def close(self) -> None:
        self.inner.close()


class Flood(CountingDevice):
    """A device that always has one more (malformed) packet."""

    def receive_batch(self, max_packets: int = 64) -> list:
        self.reads += 1
        return [b"\x45" + bytes(19)]


async def echo_round_trips(busy_poll: float, count: int) -> tuple[CountingDevice, list[bytes]]:
    dev_a, dev_b = MemoryDevice.pair()
    counted = CountingDevice(dev_b)
    client = Stack(dev_a, "10.0.0.1", config=TcpConfig(isn_secret=b"a"))
    server = Stack(counted, "10.0.0.2", config=TcpConfig(isn_secret=b"b"), busy_poll=busy_poll)

    async def serve(reader, writer):
        while line := await reader.readline():
            writer.write(line)
            await writer.drain()
        writer.close()

    answers = []
    try:
        await server.start_server(serve, 7)
        reader, writer = await client.open_connection("10.0.0.2", 7)
        for i in range(count):
            writer.write(b"ping %d\n" % i)
            answers.append(await asyncio.wait_for(reader.readline(), 2.0))
        writer.close()
    finally:
        await client.aclose()
        await server.aclose()
    return counted, answers


async def test_echo_is_unchanged_with_busy_polling_and_the_device_is_polled_on():
    counted, answers = await echo_round_trips(busy_poll=0.002, count=30)
    assert answers == [b"ping %d\n" % i for i in range(30)]
    # Off, each pass reads until the device is empty: one empty read per pass. On, the
    # server keeps polling between a request and the next, so empty reads far outnumber them.
    off, off_answers = await echo_round_trips(busy_poll=0.0, count=30)
    assert off_answers == answers
    assert off.empty_reads <= off.reads - 30
    assert counted.empty_reads > 3 * off.empty_reads


async def test_a_flooding_device_still_gives_the_loop_back():
    flood = Flood(MemoryDevice.pair()[0])
    stack = Stack(flood, "10.0.0.2", busy_poll=0.005)
    try:
        start = time.perf_counter()
        stack._on_readable()
        took = time.perf_counter() - start
        # The first pass reads _BATCHES_PER_WAKE batches; the spin goes on at most _SPIN_LIMIT.
        assert took < driver._SPIN_LIMIT + 0.05
        assert flood.reads > driver._BATCHES_PER_WAKE  # it did spin: more reads than one pass
        assert stack.core.drops.total() == flood.reads  # every malformed packet counted
    finally:
        await stack.aclose()


async def test_without_busy_polling_a_pass_reads_once_and_stops():
    dev_a, dev_b = MemoryDevice.pair()
    counted = CountingDevice(dev_b)
    stack = Stack(counted, "10.0.0.2")
    try:
        dev_a.send_batch([b"\x45" + bytes(19)])
        await asyncio.sleep(0.05)
        assert (counted.reads, counted.empty_reads) == (1, 0)  # fewer than a batch: done
    finally:
        await stack.aclose()
        dev_a.close()


@pytest.mark.parametrize(("text", "seconds"), [("0", 0.0), ("50", 50e-6), ("10000", 0.01)])
def test_busy_poll_option_takes_microseconds(text, seconds):
    args = build_parser().parse_args(["echo", "--busy-poll", text])
    assert args.busy_poll == pytest.approx(seconds)


@pytest.mark.parametrize(("text", "message"), [
    ("abc", "expected microseconds, got 'abc'"),
    ("-1", "must be 0 to 10000 microseconds, got '-1'"),
    ("20000", "must be 0 to 10000 microseconds, got '20000'"),
])
def test_busy_poll_option_errors_are_one_line(text, message, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["echo", "--busy-poll", text])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err

