"""`usertcp run`'s pure parts: where a dialled address goes, and --publish's syntax."""

from __future__ import annotations

import asyncio
import errno

import pytest

from usertcp.run.command import parse_publish
from usertcp.run.relay import Relay


def relay(resolver="192.0.2.53") -> Relay:
    return Relay(gateway="10.0.2.2", dns="10.0.2.3", subnet="10.0.2.0/24",
                 loopback="127.0.0.1", resolver=resolver)


@pytest.mark.parametrize("dialled,to", [
    (("10.0.2.2", 8000), ("127.0.0.1", 8000)),  # the gateway is usertcp's own loopback
    (("10.0.2.3", 53), ("192.0.2.53", 53)),  # DNS over TCP goes to the resolver
    (("198.51.100.9", 443), ("198.51.100.9", 443)),  # anything else: where the program went
    (("10.99.0.1", 80), ("10.99.0.1", 80)),
])
def test_destination(dialled, to):
    assert relay().destination(dialled) == to


@pytest.mark.parametrize("dialled", [("10.0.2.3", 80), ("10.0.2.77", 22), ("10.0.2.100", 1)])
def test_other_addresses_of_the_programs_network_are_unreachable(dialled):
    with pytest.raises(OSError) as info:
        relay().destination(dialled)
    assert info.value.errno == errno.EHOSTUNREACH


@pytest.mark.parametrize("dialled,to", [
    (("fd00::2", 8000, 0, 0), ("::1", 8000)),  # the gateway is usertcp's ::1
    (("fd00::3", 53, 0, 0), ("192.0.2.53", 53)),  # the resolver, whatever its family
    (("2001:db8::9", 443, 0, 0), ("2001:db8::9", 443)),
    (("fd99::1", 80, 0, 0), ("fd99::1", 80)),
    (("10.0.2.2", 8000), ("127.0.0.1", 8000)),  # IPv4 unchanged beside it
])
def test_destination_ipv6(dialled, to):
    assert relay().destination(dialled) == to


@pytest.mark.parametrize("dialled", [("fd00::3", 80, 0, 0), ("fd00::77", 22, 0, 0),
                                     ("fd00::100", 1, 0, 0)])
def test_other_ipv6_addresses_of_the_programs_network_are_unreachable(dialled):
    with pytest.raises(OSError) as info:
        relay().destination(dialled)
    assert info.value.errno == errno.EHOSTUNREACH


@pytest.mark.parametrize("dialled,host,err,want", [
    # No ::1 in usertcp's namespace: the gateway's port is closed.
    ("fd00::2", "::1", errno.EADDRNOTAVAIL, errno.ECONNREFUSED),
    ("fd00::2", "::1", errno.ENETUNREACH, errno.ECONNREFUSED),
    ("fd00::2", "::1", errno.EAFNOSUPPORT, errno.ECONNREFUSED),
    # No IPv6 at all: as no route, so the program falls back to IPv4 at once.
    ("2001:db8::1", "2001:db8::1", errno.EAFNOSUPPORT, errno.ENETUNREACH),
    ("2001:db8::1", "2001:db8::1", errno.ENETUNREACH, errno.ENETUNREACH),
    ("2001:db8::1", "2001:db8::1", errno.ECONNREFUSED, errno.ECONNREFUSED),
    # IPv4 failures are left as they are.
    ("10.0.2.2", "127.0.0.1", errno.ENETUNREACH, errno.ENETUNREACH),
])
def test_connect_failures_as_the_program_sees_them(dialled, host, err, want):
    exc = relay()._failure((dialled, 80), host, OSError(err, "x"))
    assert exc.errno == want
    if want == errno.ECONNREFUSED:
        assert isinstance(exc, ConnectionRefusedError)


def test_dns_without_a_resolver_is_unreachable():
    with pytest.raises(OSError):
        relay(resolver=None).destination(("10.0.2.3", 53))


@pytest.mark.parametrize("spec,parsed", [
    ("8080:80", ("0.0.0.0", 8080, 80)),
    ("127.0.0.1:8080:80", ("127.0.0.1", 8080, 80)),
    ("65535:1", ("0.0.0.0", 65535, 1)),
])
def test_parse_publish(spec, parsed):
    assert parse_publish(spec) == parsed


@pytest.mark.parametrize("spec", ["80", "a:b", "0:80", "8080:70000", "1:2:3:4", ""])
def test_parse_publish_rejects(spec):
    with pytest.raises(ValueError, match="--publish"):
        parse_publish(spec)


# -- the datagram relay's IPv6 addresses (no socket is made for these) -----------------------------

PROGRAM6 = ("fd00::100", 40000)


def _datagrams(dst, data=b"x"):
    from usertcp.run.datagrams import DatagramRelay

    calls = []

    async def scenario():
        relay = DatagramRelay(object(), resolver="", unreachable=lambda *a: calls.append(a))
        try:
            relay.datagram_received(data, PROGRAM6, dst)
            relay.echo_request(PROGRAM6[0], dst[0], 1, 1, b"")
            return dict(relay.counters), relay.flows()
        finally:
            relay.close()

    counters, flows = asyncio.run(scenario())
    return counters, flows, calls


@pytest.mark.parametrize("dst,counter,code", [
    (("fd00::77", 9), "udp_no_host", 1),  # no host: address unreachable (ICMPv6 code 3)
    (("fd00::3", 123), "udp_dns_other_port", 3),  # DNS address, another port
    (("fd00::3", 53), "udp_dns_no_resolver", 3),  # no resolver
    (("ff02::1", 9), "udp_multicast_dropped", None),
    (("::", 9), "udp_bad_destination", None),
])
def test_ipv6_datagrams_with_nowhere_to_go(dst, counter, code):
    counters, flows, calls = _datagrams(dst)
    assert counters[counter] == 1 and flows == []
    assert calls == ([(PROGRAM6, dst, code)] if code is not None else [])
    assert counters["icmp_echo_dropped"] == 1  # no echo request goes there either


@pytest.mark.parametrize("destination,err,code", [
    ("fd00::2", errno.EADDRNOTAVAIL, 3),  # no ::1 here: port unreachable (refused)
    ("fd00::2", errno.ENETUNREACH, 3),
    ("2001:db8::1", errno.EAFNOSUPPORT, 0),  # no IPv6 here: no route
    ("2001:db8::1", errno.ENETUNREACH, 0),
    ("2001:db8::1", errno.ECONNREFUSED, 3),
    ("10.0.2.2", errno.EADDRNOTAVAIL, None),  # IPv4 as before
])
def test_ipv6_flow_connect_failures(destination, err, code):
    from types import SimpleNamespace

    from usertcp.run.datagrams import DatagramRelay

    relay = DatagramRelay(object(), resolver="")
    remote = "::1" if destination == "fd00::2" else destination
    if destination == "10.0.2.2":
        remote = "127.0.0.1"
    flow = SimpleNamespace(remote=(remote, 9), destination=(destination, 9))
    assert relay._connect_failure(flow, OSError(err, "x")) == code
