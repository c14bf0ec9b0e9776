"""The streams API behaves as asyncio's own: same objects, same errors."""

import asyncio
import hashlib
import os
import time

import pytest

from usertcp import Stack, TcpConfig
from usertcp.phy import FaultInjector, MemoryDevice


async def echo(reader, writer):
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()
    await writer.wait_closed()


async def asyncio_style_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
    """Code written for asyncio.open_connection, unchanged."""
    writer.write(b"line one\n")
    writer.writelines([b"line ", b"two\n"])
    await writer.drain()
    first = await reader.readline()
    second = await reader.readuntil(b"\n")
    writer.write_eof()
    rest = await reader.read()
    writer.close()
    await writer.wait_closed()
    return first, second, rest


async def test_objects_are_asyncio_streams(pair):
    a, b = pair
    await b.start_server(echo, 7)
    reader, writer = await a.open_connection("10.0.0.2", 7)
    assert isinstance(reader, asyncio.StreamReader)
    assert isinstance(writer, asyncio.StreamWriter)
    assert writer.get_extra_info("peername") == ("10.0.0.2", 7)
    assert writer.get_extra_info("sockname")[0] == "10.0.0.1"
    assert writer.can_write_eof()
    assert not writer.is_closing()
    assert await asyncio_style_client(reader, writer) == (b"line one\n", b"line two\n", b"")
    assert writer.is_closing()


async def test_server_callback_gets_peer_and_half_close_works(pair):
    a, b = pair
    seen = []

    async def handler(reader, writer):
        seen.append(writer.get_extra_info("peername"))
        data = await reader.read()  # until the client's write_eof
        writer.write(hashlib.sha256(data).digest())
        writer.close()

    await b.start_server(handler, 5000)
    reader, writer = await a.open_connection("10.0.0.2", 5000)
    payload = os.urandom(1_000_000)
    writer.write(payload)
    writer.write_eof()
    assert await reader.read() == hashlib.sha256(payload).digest()
    assert seen and seen[0][0] == "10.0.0.1"


async def test_ten_megabytes_both_ways(pair):
    a, b = pair
    await b.start_server(echo, 7)
    reader, writer = await a.open_connection("10.0.0.2", 7)
    payload = os.urandom(10 * 1024 * 1024)

    async def send():
        for i in range(0, len(payload), 100_000):
            writer.write(payload[i:i + 100_000])
            await writer.drain()
        writer.write_eof()

    sender = asyncio.create_task(send())
    got = bytearray()
    while data := await reader.read(1 << 20):
        got += data
    await sender
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()


async def test_drain_blocks_while_the_peer_does_not_read(pair):
    a, b = pair
    release = asyncio.Event()

    async def slow(reader, writer):
        await release.wait()
        while await reader.read(65536):
            pass
        writer.close()

    await b.start_server(slow, 9)
    _, writer = await a.open_connection("10.0.0.2", 9)
    chunk = b"x" * 65536
    written = 0
    with pytest.raises(asyncio.TimeoutError):
        async with asyncio.timeout(1.0):
            while True:
                writer.write(chunk)
                written += len(chunk)
                await writer.drain()
    # Bounded by the peer's receive buffer and reader limit, our send buffer and the
    # transport's high-water mark: far below what an unbounded writer would queue.
    cfg = TcpConfig()
    assert written <= cfg.receive_buffer + 2 * 65536 + cfg.send_buffer + 2 * 65536 + len(chunk)
    assert writer.transport.get_write_buffer_size() > 0
    release.set()
    await writer.drain()
    writer.close()
    await writer.wait_closed()


async def test_refused_when_nobody_listens(pair):
    a, _ = pair
    with pytest.raises(ConnectionRefusedError):
        await a.open_connection("10.0.0.2", 4444)


async def test_reset_surfaces_as_connection_reset_error(pair):
    a, b = pair
    accepted = asyncio.Future()

    async def handler(reader, writer):
        accepted.set_result(writer)
        await asyncio.sleep(3600)

    await b.start_server(handler, 80)
    reader, writer = await a.open_connection("10.0.0.2", 80)
    (await accepted).transport.abort()
    with pytest.raises(ConnectionResetError):
        await reader.read(10)


async def test_connect_times_out_when_syns_go_nowhere():
    """SYN-SENT gives up by itself: the SYN and syn_retries=2 retransmissions, RTOs 0.05,
    0.1 and 0.2 s, so about 0.35 s. The outer bound raises nothing of its own, so only the
    stack's TimeoutError can satisfy the test."""
    dev_a, dev_b = MemoryDevice.pair()
    lossy = FaultInjector(dev_a, seed=1, loss=1.0, direction="tx")
    a = Stack(lossy, "10.0.0.1", config=TcpConfig(syn_retries=2, rto_initial=0.05, rto_min=0.05))
    attempt = asyncio.ensure_future(a.open_connection("10.0.0.2", 80))
    try:
        start = time.monotonic()
        done, _ = await asyncio.wait({attempt}, timeout=5)
        elapsed = time.monotonic() - start
        assert attempt in done, "SYN-SENT never gave up"
        with pytest.raises(TimeoutError, match=r"^connect to 10\.0\.0\.2:80 timed out$"):
            attempt.result()
        assert 0.3 < elapsed < 2.0, elapsed
        assert a.counters["rto_expired"] == 2 and a.counters["timeouts"] == 1, a.counters
        assert a.core.connection_count() == 0
    finally:
        attempt.cancel()
        await a.aclose(timeout=0.1)
        dev_b.close()


async def test_server_close_stops_accepting_and_serve_forever_returns(pair):
    a, b = pair
    server = await b.start_server(echo, 7)
    assert server.is_serving()
    task = asyncio.create_task(server.serve_forever())
    await asyncio.sleep(0)
    server.close()
    await server.wait_closed()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not server.is_serving()
    with pytest.raises(ConnectionRefusedError):
        await a.open_connection("10.0.0.2", 7)


async def test_server_as_context_manager_and_port_in_use(pair):
    _, b = pair
    async with await b.start_server(echo, 7):
        with pytest.raises(OSError):
            await b.start_server(echo, 7)
    # closed on exit: the port is free again
    server = await b.start_server(echo, 7)
    server.close()


async def test_fifty_concurrent_connections(pair):
    a, b = pair
    await b.start_server(echo, 7)

    async def one(i):
        reader, writer = await a.open_connection("10.0.0.2", 7)
        data = os.urandom(20_000 + i)
        writer.write(data)
        writer.write_eof()
        got = await reader.read()
        writer.close()
        await writer.wait_closed()
        return got == data

    assert all(await asyncio.gather(*(one(i) for i in range(50))))


async def test_unread_data_survives_the_close_handshake(pair):
    """The peer's data and FIN arrive while our reader is paused: nothing is lost."""
    a, b = pair
    payload = os.urandom(600_000)

    async def sender(reader, writer):
        writer.write(payload)
        writer.close()

    await b.start_server(sender, 19)
    reader, writer = await a.open_connection("10.0.0.2", 19)
    await asyncio.sleep(0.3)  # let the transfer stall against our reader's limit
    # Stalled: our reader paused, our receive buffer full and its window shut, and the
    # sender still holding data (so its FIN has not gone either).
    assert not writer.transport.is_reading()
    [ours] = [r for r in a.core.connections() if r["conn_id"] == writer.transport.conn_id]
    assert (ours["state"], ours["rcv_wnd"]) == ("ESTABLISHED", 0), ours
    assert ours["recv_queue"] == TcpConfig().receive_buffer, ours
    [theirs] = [r for r in b.core.connections()
                if r["conn_id"] is not None and r["remote"] == writer.get_extra_info("sockname")]
    assert theirs["send_queue"] > 0 and theirs["snd_wnd"] == 0, theirs
    writer.write_eof()  # our FIN too: the connection ends while data is still unread
    got = await reader.read()
    assert got == payload
    writer.close()


async def test_close_with_unread_data_resets_the_peer(pair):
    """As with a kernel socket (RFC 2525 2.17): the peer learns data was lost.

    The reader pauses past its limit, so most of the megabyte is still in the stack.
    """
    a, b = pair
    outcome = asyncio.Future()

    async def talker(reader, writer):
        writer.write(b"u" * 1_000_000)
        try:
            await reader.read()
            outcome.set_result("eof")
        except ConnectionResetError:
            outcome.set_result("reset")

    await b.start_server(talker, 19)
    reader, writer = await a.open_connection("10.0.0.2", 19)
    await reader.readexactly(1)
    await asyncio.sleep(0.2)
    assert a.core.recv_pending(writer.transport.conn_id) > 0
    writer.close()
    assert await asyncio.wait_for(outcome, 5) == "reset"


async def test_hostnames_are_refused_with_a_clear_error(pair):
    a, _ = pair
    with pytest.raises(ValueError, match="not an IP address"):
        await a.open_connection("example.invalid", 80)


async def test_an_ipv6_destination_from_an_ipv4_only_stack_is_refused(pair):
    a, _ = pair
    with pytest.raises(ValueError, match="no IPv6 address"):
        await a.open_connection("fd00:7::1", 80)


async def test_stack_open_validates_addresses_before_touching_devices():
    with pytest.raises(ValueError, match="not inside"):
        await Stack.open(tun="utcpx0", address="10.9.0.2", host_address="10.7.0.1/24")
    with pytest.raises(ValueError, match="kernel side's own address"):
        await Stack.open(tun="utcpx0", address="10.7.0.1", host_address="10.7.0.1/24")
    with pytest.raises(ValueError, match="no host address of its family"):
        await Stack.open(tun="utcpx0", address=["10.7.0.2", "fd00:7::2"],
                         host_address="10.7.0.1/24")
    with pytest.raises(ValueError, match="not inside"):
        await Stack.open(tun="utcpx0", address=["10.7.0.2", "fd00:8::2"],
                         host_address=["10.7.0.1/24", "fd00:7::1/64"])
