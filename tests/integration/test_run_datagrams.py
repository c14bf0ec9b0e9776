"""DatagramRelay against the kernel, inside a private namespace that plays usertcp's own.

The relay's sockets are made in the test namespace (the test thread enters it for the asyncio
run), and a fake sender stands in for the stack: what the program would receive arrives in its
queues. Servers (a UDP echo, a tiny DNS responder) are asyncio endpoints in the same namespace.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import textwrap

import pytest

from usertcp.run.datagrams import DatagramRelay, first_nameserver

PROGRAM = ("10.0.2.100", 40000)
GATEWAY, DNS = "10.0.2.2", "10.0.2.3"
VETH = "192.0.2.1"  # an address of the namespace's own veth interface
STEP = 5.0  # bound on any single wait


class FakeSender:
    """The stack's send side: records what the program would receive."""

    def __init__(self):
        self.datagrams: asyncio.Queue = asyncio.Queue()
        self.replies: asyncio.Queue = asyncio.Queue()

    def send_datagram(self, data, src, dst):
        self.datagrams.put_nowait((bytes(data), src, dst))

    def send_echo_reply(self, src, dst, ident, seq, data):
        self.replies.put_nowait((src, dst, ident, seq, bytes(data)))

    def send_unreachable(self, *args):  # pragma: no cover - the relay uses its own hook
        raise AssertionError("the relay calls its unreachable hook, not the sender")


class UdpEcho(asyncio.DatagramProtocol):
    def __init__(self, transform=lambda data: data):
        self.transform = transform
        self.peers: list = []

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.peers.append(addr)
        self.transport.sendto(self.transform(data), addr)


def add_veth(netns) -> None:
    for args in (["link", "add", "v0", "type", "veth", "peer", "name", "v1"],
                 ["addr", "add", f"{VETH}/24", "dev", "v0"],
                 ["link", "set", "v0", "up"], ["link", "set", "v1", "up"]):
        netns.run(["ip", *args], check=True)


def run_in(netns, coro_fn, timeout=30.0):
    """Run `coro_fn()` on a fresh loop whose sockets are all made inside `netns`."""
    with netns.enter():
        return asyncio.run(asyncio.wait_for(coro_fn(), timeout))


async def serve_udp(host, port, transform=lambda data: data):
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(
        lambda: UdpEcho(transform), local_addr=(host, port), family=socket.AF_INET)
    return transport, proto


def free_udp_port(host="127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


async def until(predicate, timeout=STEP):
    """Poll every 20 ms until predicate() is true; fail after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


# --- UDP --------------------------------------------------------------------------------------

def test_udp_through_gateway_to_loopback(netns):
    async def scenario():
        server, echo = await serve_udp("127.0.0.1", 0)
        port = server.get_extra_info("sockname")[1]
        sender = FakeSender()
        relay = DatagramRelay(sender, resolver="")
        try:
            # The first ones arrive while the flow's socket is being made: queued, in order.
            for i in range(5):
                relay.datagram_received(b"ping %d" % i, PROGRAM, (GATEWAY, port))
            got = [await asyncio.wait_for(sender.datagrams.get(), STEP) for _ in range(5)]
            assert got == [(b"ping %d" % i, (GATEWAY, port), PROGRAM) for i in range(5)]
            # Another source port of the program: its own flow, its own socket.
            other = ("10.0.2.100", 40001)
            relay.datagram_received(b"other", other, (GATEWAY, port))
            assert await asyncio.wait_for(sender.datagrams.get(), STEP) == (
                b"other", (GATEWAY, port), other)
            assert len(set(echo.peers)) == 2
            assert {p[0] for p in echo.peers} == {"127.0.0.1"}
            assert len(relay.flows()) == 2
            c = relay.counters
            assert (c["udp_flows_opened"], c["udp_datagrams_out"], c["udp_datagrams_in"]) == (
                2, 6, 6)
            assert c["udp_bytes_in"] == c["udp_bytes_out"] == 5 * 6 + 5
        finally:
            relay.close()
            server.close()
        assert relay.flows() == []
        relay.datagram_received(b"late", PROGRAM, (GATEWAY, port))
        assert relay.counters["datagrams_after_close"] == 1

    run_in(netns, scenario)


def test_udp_to_other_address_is_relayed_as_is(netns):
    add_veth(netns)

    async def scenario():
        server, _echo = await serve_udp(VETH, 0, lambda d: d.upper())
        port = server.get_extra_info("sockname")[1]
        sender = FakeSender()
        relay = DatagramRelay(sender, resolver="")
        try:
            relay.datagram_received(b"hello", PROGRAM, (VETH, port))
            assert await asyncio.wait_for(sender.datagrams.get(), STEP) == (
                b"HELLO", (VETH, port), PROGRAM)
        finally:
            relay.close()
            server.close()

    run_in(netns, scenario)


def test_dns_forwarded_to_the_resolver(netns, tmp_path):
    conf = tmp_path / "resolv.conf"
    conf.write_text("# usertcp's namespace\nsearch example\nnameserver fe80::1%eth0\n"
                    "nameserver ::1\nnameserver 127.0.0.53\nnameserver 127.0.0.1\n")
    assert first_nameserver(str(conf)) == "127.0.0.53"
    assert first_nameserver(str(tmp_path / "missing")) is None

    async def scenario():
        # A "resolver" that answers each query with its id and a fixed answer.
        server, _seen = await serve_udp("127.0.0.53", 53, lambda q: q[:2] + b"\x81\x80answer")
        sender = FakeSender()
        unreachable = []
        relay = DatagramRelay(sender, resolv_conf=str(conf),
                              unreachable=lambda *args: unreachable.append(args))
        assert relay.resolver == "127.0.0.53"
        try:
            relay.datagram_received(b"\x12\x34query", PROGRAM, (DNS, 53))
            assert await asyncio.wait_for(sender.datagrams.get(), STEP) == (
                b"\x12\x34\x81\x80answer", (DNS, 53), PROGRAM)
            # DNS address, another port: nothing is there, and the program hears so at once.
            relay.datagram_received(b"ntp?", PROGRAM, (DNS, 123))
            assert unreachable == [(PROGRAM, (DNS, 123), 3)]
            assert relay.counters["udp_dns_other_port"] == 1
            assert len(relay.flows()) == 1
        finally:
            relay.close()
            server.close()

        # No resolver at all (an empty or IPv6-only resolv.conf): unreachable too.
        empty = tmp_path / "empty.conf"
        empty.write_text("nameserver ::1\n")
        unreachable.clear()
        relay = DatagramRelay(sender, resolv_conf=str(empty),
                              unreachable=lambda *args: unreachable.append(args))
        try:
            assert relay.resolver is None
            relay.datagram_received(b"query", PROGRAM, (DNS, 53))
            assert unreachable == [(PROGRAM, (DNS, 53), 3)]
            assert relay.counters["udp_dns_no_resolver"] == 1
        finally:
            relay.close()

    run_in(netns, scenario)


def test_idle_flows_close_and_the_oldest_goes_at_max_flows(netns):
    async def scenario():
        server, _echo = await serve_udp("127.0.0.1", 0)
        port = server.get_extra_info("sockname")[1]
        sender = FakeSender()
        relay = DatagramRelay(sender, resolver="", idle_timeout=0.3, max_flows=2)
        loop = asyncio.get_running_loop()
        try:
            relay.datagram_received(b"a", PROGRAM, (GATEWAY, port))
            await asyncio.wait_for(sender.datagrams.get(), STEP)
            start = loop.time()
            await until(lambda: not relay.flows())
            assert loop.time() - start >= 0.2
            assert relay.counters["udp_flows_idle_closed"] == 1
            # The same flow again: a new socket.
            relay.datagram_received(b"b", PROGRAM, (GATEWAY, port))
            await asyncio.wait_for(sender.datagrams.get(), STEP)
            assert relay.counters["udp_flows_opened"] == 2

            # Traffic keeps a flow open past the timeout.
            for _ in range(8):
                relay.datagram_received(b"c", PROGRAM, (GATEWAY, port))
                await asyncio.wait_for(sender.datagrams.get(), STEP)
                await asyncio.sleep(0.1)
            assert relay.counters["udp_flows_opened"] == 2

            # Three flows, room for two: the least recently used goes.
            a, b, c = (("10.0.2.100", p) for p in (50001, 50002, 50003))
            relay.datagram_received(b"1", a, (GATEWAY, port))
            relay.datagram_received(b"2", b, (GATEWAY, port))
            relay.datagram_received(b"3", a, (GATEWAY, port))  # a is used again: b is oldest
            relay.datagram_received(b"4", c, (GATEWAY, port))
            assert {f["program"] for f in relay.flows()} == {a, c}
            assert relay.counters["udp_flows_evicted"] >= 1  # b's (and PROGRAM's, if not idle)
            got = {await asyncio.wait_for(sender.datagrams.get(), STEP) for _ in range(3)}
            assert {(d, dst) for d, _src, dst in got} == {(b"1", a), (b"3", a), (b"4", c)}
            await until(lambda: not relay.flows())
        finally:
            relay.close()
            server.close()

    run_in(netns, scenario)


def test_port_unreachable_calls_the_hook(netns):
    async def scenario():
        port = free_udp_port()
        sender = FakeSender()
        calls: asyncio.Queue = asyncio.Queue()
        relay = DatagramRelay(sender, resolver="",
                              unreachable=lambda *args: calls.put_nowait(args))
        try:
            relay.datagram_received(b"anyone?", PROGRAM, (GATEWAY, port))
            assert await asyncio.wait_for(calls.get(), STEP) == (PROGRAM, (GATEWAY, port), 3)
            assert relay.counters["udp_refused"] == 1
            assert sender.datagrams.empty()
        finally:
            relay.close()

    run_in(netns, scenario)


def test_unroutable_destination_calls_the_hook(netns):
    # The namespace has no route but loopback: connecting the flow's socket fails.
    async def scenario():
        sender = FakeSender()
        calls = []
        relay = DatagramRelay(sender, resolver="", unreachable=lambda *args: calls.append(args))
        try:
            relay.datagram_received(b"x", PROGRAM, ("198.51.100.7", 9))
            await until(lambda: calls)
            assert calls == [(PROGRAM, ("198.51.100.7", 9), 0)]  # network unreachable
            assert relay.counters["udp_connect_failed"] == 1
            assert relay.flows() == []
        finally:
            relay.close()

    run_in(netns, scenario)


@pytest.mark.parametrize("dst,counter", [
    (("10.0.2.255", 137), "udp_broadcast_dropped"),
    (("255.255.255.255", 67), "udp_broadcast_dropped"),
    (("224.0.0.251", 5353), "udp_multicast_dropped"),
    (("239.255.255.250", 1900), "udp_multicast_dropped"),
    (("0.0.0.0", 9), "udp_bad_destination"),
    (("240.0.0.1", 9), "udp_bad_destination"),
])
def test_broadcast_and_multicast_are_dropped(netns, dst, counter):
    async def scenario():
        relay = DatagramRelay(FakeSender(), resolver="")
        try:
            relay.datagram_received(b"who is there", PROGRAM, dst)
            relay.datagram_received(b"who is there", PROGRAM, dst)
            assert relay.counters[counter] == 2
            assert relay.flows() == []
            assert relay.counters["udp_flows_opened"] == 0
        finally:
            relay.close()

    run_in(netns, scenario)


# --- ICMP echo --------------------------------------------------------------------------------

def _set_ping_group_range(netns, low: int, high: int) -> None:
    # Per network namespace: this changes only the test's.
    netns.run(["sh", "-c", f"echo {low} {high} > /proc/sys/net/ipv4/ping_group_range"],
              check=True)


@pytest.mark.parametrize("mode", ["dgram", "raw"])
def test_echo_relayed(netns, mode):
    add_veth(netns)
    # A fresh namespace's range is "1 0" (nobody): root then needs the raw socket.
    _set_ping_group_range(netns, *((0, 0) if mode == "dgram" else (1, 0)))

    async def scenario():
        sender = FakeSender()
        relay = DatagramRelay(sender, resolver="127.0.0.53", echo_timeout=0.5)
        program = "10.0.2.100"
        try:
            cases = [(VETH, VETH, 0x1234, 1, b"ping data " * 5),
                     ("127.0.0.1", "127.0.0.1", 0x1234, 2, b""),
                     (GATEWAY, GATEWAY, 0xBEEF, 65535, bytes(range(256))),  # -> loopback
                     (DNS, DNS, 7, 3, b"odd")]  # -> the resolver, 127.0.0.53
            for dst, _src, ident, seq, data in cases:
                relay.echo_request(program, dst, ident, seq, data)
            got = [await asyncio.wait_for(sender.replies.get(), STEP) for _ in cases]
            want = [(src, program, ident, seq, data) for _dst, src, ident, seq, data in cases]
            assert sorted(got) == sorted(want)
            assert relay.icmp_mode == mode
            c = relay.counters
            assert (c["icmp_echo_relayed"], c["icmp_echo_replies"]) == (4, 4)

            # Many outstanding at once, the same ident and seq from two "programs".
            for n in range(50):
                relay.echo_request(program, VETH, 1, n % 3, b"%d" % n)
                relay.echo_request("10.0.2.101", VETH, 1, n % 3, b"%d" % n)
            got = [await asyncio.wait_for(sender.replies.get(), STEP) for _ in range(100)]
            assert sorted(got) == sorted(
                (VETH, p, 1, n % 3, b"%d" % n) for n in range(50)
                for p in (program, "10.0.2.101"))

            # No route to it in this namespace: the send fails, nothing is kept.
            relay.echo_request(program, "198.51.100.7", 9, 9, b"lost")
            assert c["icmp_echo_send_failed"] == 1
            # Broadcast and multicast pings are not relayed.
            relay.echo_request(program, "10.0.2.255", 1, 1, b"")
            relay.echo_request(program, "224.0.0.1", 1, 1, b"")
            assert c["icmp_echo_dropped"] == 2
        finally:
            relay.close()

    run_in(netns, scenario)


def test_echo_times_out(netns):
    # The namespace's kernel is told not to answer pings: requests go out, nothing comes back.
    add_veth(netns)
    netns.run(["sh", "-c", "echo 1 > /proc/sys/net/ipv4/icmp_echo_ignore_all"], check=True)

    async def scenario():
        sender = FakeSender()
        relay = DatagramRelay(sender, resolver="", echo_timeout=0.2, max_echoes=3)
        try:
            for seq in range(5):  # two more than the table holds: the oldest two go
                relay.echo_request("10.0.2.100", VETH, 5, seq, b"")
            c = relay.counters
            assert (c["icmp_echo_relayed"], c["icmp_echo_evicted"]) == (5, 2)
            await until(lambda: c["icmp_echo_timed_out"] == 3)
            assert sender.replies.empty()
        finally:
            relay.close()

    run_in(netns, scenario)


# An unprivileged process (nobody: no CAP_NET_RAW) runs the relay and pings the namespace's
# loopback; it prints the relay's ICMP mode, its counters and the replies it got.
_UNPRIVILEGED = textwrap.dedent("""
    import asyncio, json
    from usertcp.run.datagrams import DatagramRelay

    class Sender:
        def __init__(self):
            self.replies = []
        def send_datagram(self, *args):
            pass
        def send_echo_reply(self, src, dst, ident, seq, data):
            self.replies.append([src, dst, ident, seq, data.hex()])

    async def main():
        sender = Sender()
        relay = DatagramRelay(sender, resolver="", echo_timeout=1.0)
        relay.echo_request("10.0.2.100", "127.0.0.1", 77, 5, b"hi")
        for _ in range(50):
            if sender.replies:
                break
            await asyncio.sleep(0.02)
        relay.close()
        print(json.dumps(dict(mode=relay.icmp_mode, counters=relay.counters,
                              replies=sender.replies)))

    asyncio.run(asyncio.wait_for(main(), 10))
""")


@pytest.mark.parametrize("allowed", [True, False])
def test_echo_unprivileged(netns, allowed):
    if allowed:
        _set_ping_group_range(netns, 65534, 65534)
    res = netns.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                     "--inh-caps=-all", sys.executable, "-c", _UNPRIVILEGED],
                    capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    if allowed:
        assert out["mode"] == "dgram"
        assert out["replies"] == [["127.0.0.1", "10.0.2.100", 77, 5, b"hi".hex()]]
    else:
        assert out["mode"] == "none"
        assert out["counters"]["icmp_echo_unrelayed"] == 1
        assert out["replies"] == []
