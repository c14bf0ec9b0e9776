"""usertcp.ladder.filter: the tcpdump-like filter language, its precedence and its errors."""

from __future__ import annotations

import pytest

from usertcp.ladder.filter import FilterError, compile_filter, matches_connection

# (src, sport, dst, dport)
P1 = ("10.0.0.1", 40000, "10.0.0.2", 80)  # a client's request
P2 = ("10.0.0.2", 80, "10.0.0.1", 40000)  # the reply
P3 = ("fd00:0::1", 5555, "fd00::2", 443)
P4 = ("192.168.1.9", 22, "10.9.8.7", 6000)
ALL = (P1, P2, P3, P4)


def which(text: str) -> list[int]:
    flt = compile_filter(text)
    return [i + 1 for i, p in enumerate(ALL) if flt(*p)]


@pytest.mark.parametrize("text, expected", [
    ("", [1, 2, 3, 4]),
    ("   ", [1, 2, 3, 4]),
    ("host 10.0.0.1", [1, 2]),
    ("src host 10.0.0.1", [1]),
    ("dst host 10.0.0.1", [2]),
    ("host fd00::1", [3]),  # fd00:0::1 is the same address
    ("host fd00:0:0::2", [3]),
    ("src 10.0.0.2", [2]),  # tcpdump's 'src ADDRESS'
    ("port 80", [1, 2]),
    ("src port 80", [2]),
    ("dst port 80", [1]),
    ("net 10.0.0.0/8", [1, 2, 4]),
    ("src net 10.0.0.0/8", [1, 2]),
    ("dst net 10.9.0.0/16", [4]),
    ("net 10.0.0.7/24", [1, 2]),  # host bits allowed
    ("net fd00::/16", [3]),
    ("net 192.168.1.9", [4]),  # a single address
    ("portrange 400-500", [3]),
    ("src portrange 1-100", [2, 4]),
    ("dst portrange 5000-6000", [4]),
    ("tcp", [1, 2, 3, 4]),
    ("ip", [1, 2, 4]),
    ("ip6", [3]),
    ("src or dst port 22", [4]),
    ("src and dst net 10.0.0.0/8", [1, 2]),
])
def test_primitives(text, expected):
    assert which(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("not port 80", [3, 4]),
    ("! port 80", [3, 4]),
    ("!port 80", [3, 4]),
    ("not not port 80", [1, 2]),
    ("port 80 and src host 10.0.0.1", [1]),
    ("port 80 && src host 10.0.0.1", [1]),
    ("port 443 or port 22", [3, 4]),
    ("port 443 || port 22", [3, 4]),
    # not > and > or: 'a or b and c' is 'a or (b and c)'
    ("port 22 or port 80 and dst port 40000", [2, 4]),
    ("(port 22 or port 80) and dst port 40000", [2]),
    ("port 80 and dst port 40000 or port 22", [2, 4]),
    ("not port 80 and not port 22", [3]),
    ("not (port 80 or port 22)", [3]),
    ("((port 80))", [1, 2]),
    ("(port 80)and(src port 80)", [2]),
    # a bare value repeats the last kind, as in tcpdump
    ("port 80 or 443", [1, 2, 3]),
    ("host 10.0.0.1 and not 10.0.0.2", []),
    ("src port 80 or 22", [2, 4]),
])
def test_combinations_and_precedence(text, expected):
    assert which(text) == expected


@pytest.mark.parametrize("text, message", [
    ("port x", "expected a port number after 'port', got 'x'"),
    ("port", "expected a port number after 'port', got the end of the filter"),
    ("port 65536", "expected a port number after 'port', got '65536'"),
    ("port -1", "expected a port number after 'port', got '-1'"),
    ("host example.com",
     "expected an IP address after 'host', got 'example.com' (names are not looked up)"),
    ("net 10.0.0.0/33",
     "expected a network like 10.0.0.0/8 or fd00::/64 after 'net', got '10.0.0.0/33'"),
    ("portrange 9-1", "expected a port range like 1000-2000 after 'portrange', got '9-1'"),
    ("portrange 9", "expected a port range like 1000-2000 after 'portrange', got '9'"),
    ("hots 10.0.0.1",
     "expected host, net, port, portrange, src, dst, not or '(', got 'hots'"),
    ("port 80 and hots 1",
     "expected host, net, port, portrange, src, dst, not or '(' after 'and', got 'hots'"),
    ("port 80 or",
     ("expected host, net, port, portrange, src, dst, not or '(' after 'or',"
     " got the end of the filter")),
    ("src", "expected host, net, port or portrange after 'src', got the end of the filter"),
    ("dst and", "expected host, net, port or portrange after 'dst', got 'and'"),
    ("(port 80", "expected ')' to close the '(', got the end of the filter"),
    ("(port 80 port 22)", "expected ')' to close the '(', got 'port'"),
    ("port 80)", "unbalanced ')': there is no '(' before it"),
    ("port 80 22", "expected 'and' or 'or' before '22'"),
    ("port 80 & port 22", "unexpected '&' in the filter (use && or || for and, or)"),
    ("()", "expected host, net, port, portrange, src, dst, not or '(' after '(', got ')'"),
])
def test_errors_name_the_word(text, message):
    with pytest.raises(FilterError) as info:
        compile_filter(text)
    assert str(info.value) == message
    assert isinstance(info.value, ValueError)


def test_matches_connection_tries_both_orientations():
    a, b = ("10.0.0.1", 40000), ("10.0.0.2", 80)
    assert matches_connection(compile_filter("src port 80"), a, b)
    assert matches_connection(compile_filter("dst host 10.0.0.1 and src port 80"), a, b)
    assert not matches_connection(compile_filter("src port 80 and dst port 80"), a, b)
    assert not matches_connection(compile_filter("host 10.0.0.3"), a, b)
    assert matches_connection(compile_filter(""), a, b)
