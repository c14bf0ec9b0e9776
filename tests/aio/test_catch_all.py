"""A server on every address (port=None), with and without admission, over an in-memory link.

Stack A plays the program: it dials addresses that are not B's own; B answers as each of them.
"""

from __future__ import annotations

import asyncio
import errno

import pytest

FAR = "192.0.2.7"


async def echo(reader, writer):
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def test_catch_all_server_answers_as_the_address_dialled(pair):
    a, b = pair
    seen = []

    async def handle(reader, writer):
        seen.append((writer.get_extra_info("sockname"), writer.get_extra_info("peername")))
        await echo(reader, writer)

    server = await b.start_server(handle, port=None)
    assert server.sockname == ("0.0.0.0", 0)
    r1, w1 = await a.open_connection(FAR, 443)
    r2, w2 = await a.open_connection("198.51.100.1", 443)
    w1.write(b"one")
    w2.write(b"two")
    assert await r1.readexactly(3) == b"one"
    assert await r2.readexactly(3) == b"two"
    assert w1.get_extra_info("peername") == (FAR, 443)
    local1 = w1.get_extra_info("sockname")
    assert seen[0] == ((FAR, 443), local1)
    assert seen[1][0] == ("198.51.100.1", 443)
    for w in (w1, w2):
        w.close()
    server.close()


async def test_a_port_server_keeps_its_port_beside_a_catch_all(pair):
    a, b = pair
    names = []

    async def on_port(reader, writer):
        names.append("port")
        await echo(reader, writer)

    async def on_any(reader, writer):
        names.append("any")
        await echo(reader, writer)

    await b.start_server(on_port, 80)
    await b.start_server(on_any, None)
    with pytest.raises(OSError):
        await b.start_server(on_any, None)
    for host in ("10.0.0.2", FAR):
        r, w = await a.open_connection(host, 80)
        w.write(b"x")
        assert await r.readexactly(1) == b"x"
        w.close()
    assert names == ["port", "any"]


async def test_admit_runs_before_the_syn_is_answered(pair):
    a, b = pair
    asked = []

    async def admit(sockname, peername):
        asked.append((sockname, peername, b.core.state(1)))
        await asyncio.sleep(0.05)  # e.g. connecting to the real destination
        return {"upstream": sockname}

    got = []

    async def handle(reader, writer):
        got.append(writer.get_extra_info("admitted"))
        await echo(reader, writer)

    await b.start_server(handle, None, admit=admit)
    r, w = await a.open_connection(FAR, 8080)
    w.write(b"hello")
    assert await r.readexactly(5) == b"hello"
    assert asked[0][0] == (FAR, 8080) and asked[0][1] == w.get_extra_info("sockname")
    assert got == [{"upstream": (FAR, 8080)}]
    assert b.counters["connections_requested"] == 1
    w.close()


async def test_admit_refusing_resets_the_syn(pair):
    a, b = pair

    async def admit(sockname, peername):
        raise ConnectionRefusedError(errno.ECONNREFUSED, "nobody there")

    await b.start_server(echo, None, admit=admit)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ConnectionRefusedError):
        await a.open_connection(FAR, 9)
    assert loop.time() - started < 0.5  # answered at once, no SYN retry waited for
    assert b.counters["requests_refused_reset"] == 1


@pytest.mark.parametrize("exc,reply,seen", [
    (OSError(errno.EHOSTUNREACH, "no route"), "host-unreachable", errno.EHOSTUNREACH),
    (OSError(errno.ENETUNREACH, "no net"), "net-unreachable", errno.ENETUNREACH),
    (PermissionError(errno.EACCES, "filtered"), "admin-prohibited", errno.EHOSTUNREACH),
    (TimeoutError(errno.ETIMEDOUT, "silence"), "none", None),
])
async def test_admit_failures_are_answered_as_a_router_would(pair, exc, reply, seen):
    """The peer (A, usertcp too) sees what Linux's connect() reports for each ICMP error;
    after silence its SYN retries go on."""
    a, b = pair

    async def admit(sockname, peername):
        raise exc

    await b.start_server(echo, None, admit=admit)
    connecting = asyncio.ensure_future(a.open_connection(FAR, 9))
    for _ in range(100):
        if b.counters[f"requests_refused_{reply}"] and (seen is None or connecting.done()):
            break
        await asyncio.sleep(0.01)
    assert b.counters[f"requests_refused_{reply}"] == 1
    if seen is None:
        assert not connecting.done()
        connecting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await connecting
    else:
        with pytest.raises(OSError) as info:
            await connecting
        assert info.value.errno == seen
        assert a.counters["icmp_connect_errors"] == 1


async def test_value_of_an_abandoned_admission_is_closed(pair):
    """The program gives up (its connect is cancelled: RST) after admit succeeded and before
    its handshake completes: what admit returned is closed, not leaked."""
    a, b = pair
    closed = []

    class Upstream:
        def close(self):
            closed.append(True)

    release = asyncio.Event()

    async def admit(sockname, peername):
        await release.wait()
        return Upstream()

    await b.start_server(echo, None, admit=admit)
    # A SYN alone, from A's engine; then A forgets it and answers B's SYN-ACK with a reset.
    a.core.connect(FAR, 7, a.now())
    a.schedule_flush()
    for _ in range(100):
        if b.counters["connections_requested"]:
            break
        await asyncio.sleep(0.01)
    a.core.abort(1, a.now())
    release.set()
    for _ in range(200):
        if closed:
            break
        await asyncio.sleep(0.01)
    assert closed == [True]


class Collect:
    def __init__(self):
        self.datagrams = []
        self.echoes = []

    def datagram_received(self, data, src, dst):
        self.datagrams.append((data, src, dst))

    def echo_request(self, src, dst, ident, seq, data):
        self.echoes.append((src, dst, ident, seq, data))


async def test_datagrams_forwarded_both_ways(pair):
    a, b = pair
    await b.start_server(echo, None)
    at_b, at_a = Collect(), Collect()
    b.forward_datagrams(at_b)
    a.forward_datagrams(at_a)
    a.send_datagram(b"query", ("10.0.0.1", 5353), ("10.0.2.3", 53))
    for _ in range(100):
        if at_b.datagrams:
            break
        await asyncio.sleep(0.01)
    assert at_b.datagrams == [(b"query", ("10.0.0.1", 5353), ("10.0.2.3", 53))]
    b.send_datagram(b"answer", ("10.0.2.3", 53), ("10.0.0.1", 5353))
    for _ in range(100):
        if at_a.datagrams:
            break
        await asyncio.sleep(0.01)
    assert at_a.datagrams == [(b"answer", ("10.0.2.3", 53), ("10.0.0.1", 5353))]
