"""`usertcp run`'s pure parts: where a dialled address goes, and --publish's syntax."""

from __future__ import annotations

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
