"""A small tcpdump-like packet filter over addresses and ports.

    host A      src host A    dst host A        A: an IPv4 or IPv6 address
    net N       src net N     dst net N         N: 10.0.0.0/8, fd00::/64 (host bits allowed)
    port P      src port P    dst port P        P: 0 to 65535
    portrange A-B (also with src/dst)
    tcp (always true), ip (IPv4), ip6 (IPv6)
    not / !    and / &&    or / ||    ( ... )

Precedence: `not` binds tightest, then `and`, then `or` (as in most languages; tcpdump itself
gives `and` and `or` the same precedence, left to right, so `a or b and c` differs there: write
parentheses to be clear). `src or dst` and `src and dst` qualify as in tcpdump, and a bare value
after `and`/`or`/`not` repeats the last primitive's kind: `port 80 or 443`, `host a and not b`.
Addresses compare as addresses, so `host fd00::1` matches `fd00:0::1`. An empty filter matches
everything. A filter tests one packet as given (source, then destination); `matches_connection`
tests a connection both ways round.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from functools import lru_cache

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Filter = Callable[[str, int, str, int], bool]
_Test = Callable[[Address, int, Address, int], bool]


class FilterError(ValueError):
    """A filter that does not parse; the message names the word at fault."""


_TOKEN = re.compile(r"\s*(?:(\(|\)|&&|\|\||!)|([^\s()!&|]+)|(\S))")
_KINDS = ("host", "net", "port", "portrange")
_KEYWORDS = frozenset({*_KINDS, "src", "dst", "and", "or", "not", "tcp", "ip", "ip6"})
_AND, _OR, _NOT = ("and", "&&"), ("or", "||"), ("not", "!")
_END = None


def _tokens(text: str) -> list[str]:
    out = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        assert match is not None  # \S always matches a non-blank character
        if match.group(3):
            raise FilterError(f"unexpected {match.group(3)!r} in the filter "
                              "(use && or || for and, or)")
        out.append(match.group(1) or match.group(2))
        pos = match.end()
    return out


def _shown(token: str | None) -> str:
    return "the end of the filter" if token is None else repr(token)


@lru_cache(maxsize=4096)
def _address(text: str) -> Address:
    return ipaddress.ip_address(text)


def _sides(direction: str, test: Callable[[Address, int], bool]) -> _Test:
    """A test of one endpoint applied to the source, the destination, either or both."""
    if direction == "src":
        return lambda s, sp, d, dp: test(s, sp)
    if direction == "dst":
        return lambda s, sp, d, dp: test(d, dp)
    if direction == "both":
        return lambda s, sp, d, dp: test(s, sp) and test(d, dp)
    return lambda s, sp, d, dp: test(s, sp) or test(d, dp)


def _either(left: _Test, right: _Test) -> _Test:
    return lambda *p: left(*p) or right(*p)


def _both(left: _Test, right: _Test) -> _Test:
    return lambda *p: left(*p) and right(*p)


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.pos = 0
        self.last: tuple[str, str] | None = None  # (direction, kind) of the last primitive

    def peek(self, ahead: int = 0) -> str | None:
        i = self.pos + ahead
        return self.tokens[i] if i < len(self.tokens) else _END

    def take(self) -> str | None:
        token = self.peek()
        self.pos += 1
        return token

    def parse(self) -> _Test:
        test = self.or_expr()
        token = self.peek()
        if token == ")":
            raise FilterError("unbalanced ')': there is no '(' before it")
        if token is not _END:
            raise FilterError(f"expected 'and' or 'or' before {_shown(token)}")
        return test

    def or_expr(self) -> _Test:
        test = self.and_expr()
        while self.peek() in _OR:
            self.take()
            test = _either(test, self.and_expr())
        return test

    def and_expr(self) -> _Test:
        test = self.not_expr()
        while self.peek() in _AND:
            self.take()
            test = _both(test, self.not_expr())
        return test

    def not_expr(self) -> _Test:
        if self.peek() in _NOT:
            self.take()
            inner = self.not_expr()
            return lambda *p: not inner(*p)
        return self.primary()

    def primary(self) -> _Test:
        before = self.tokens[self.pos - 1] if self.pos else None
        token = self.peek()
        if token == "(":
            self.take()
            test = self.or_expr()
            closing = self.take()
            if closing != ")":
                raise FilterError(f"expected ')' to close the '(', got {_shown(closing)}")
            return test
        if token in ("tcp", "ip", "ip6"):
            self.take()
            if token == "tcp":
                return lambda *p: True
            version = 4 if token == "ip" else 6
            return lambda s, sp, d, dp: s.version == version
        if token in ("src", "dst"):
            return self.value(self.direction(), self.kind())
        if token in _KINDS:
            return self.value("either", self.kind())
        if token not in (_END, ")") and token not in _KEYWORDS and self.last:
            # 'port 80 or 443': the last primitive's kind again
            test = _value_test(*self.last, token)
            if test is not None:
                self.take()
                return test
        where = f" after {before!r}" if before else ""
        raise FilterError(f"expected host, net, port, portrange, src, dst, not or '('{where}, "
                          f"got {_shown(token)}")

    def direction(self) -> str:
        first = self.take()
        assert first in ("src", "dst")
        other = "dst" if first == "src" else "src"
        joined = self.peek()
        if joined in (*_AND, *_OR) and self.peek(1) == other:
            self.pos += 2  # 'src or dst', 'src and dst'
            return "either" if joined in _OR else "both"
        return first

    def kind(self) -> str:
        before = self.tokens[self.pos - 1] if self.pos else ""
        token = self.take()
        if token in _KINDS:
            return token
        if token is not _END and before in ("src", "dst") and token not in _KEYWORDS:
            self.pos -= 1
            return "host"  # tcpdump's 'src 10.0.0.1'
        raise FilterError(f"expected host, net, port or portrange after {before!r}, "
                          f"got {_shown(token)}")

    def value(self, direction: str, kind: str) -> _Test:
        token = self.take()
        self.last = (direction, kind)
        test = _value_test(direction, kind, token)
        if test is None:
            note = " (names are not looked up)" if kind == "host" and token else ""
            raise FilterError(f"expected {_WANTED[kind]} after {kind!r}, got {_shown(token)}"
                              + note)
        return test


_WANTED = {
    "host": "an IP address",
    "net": "a network like 10.0.0.0/8 or fd00::/64",
    "port": "a port number",
    "portrange": "a port range like 1000-2000",
}


def _value_test(direction: str, kind: str, token: str | None) -> _Test | None:
    """The test of `kind token` (host, net, port or portrange), or None if token is no value."""
    if token is None:
        return None
    if kind == "host":
        try:
            address = _address(token)
        except ValueError:
            return None
        return _sides(direction, lambda a, p: a == address)
    if kind == "net":
        try:
            network = ipaddress.ip_network(token, strict=False)
        except ValueError:
            return None
        return _sides(direction, lambda a, p: a.version == network.version and a in network)
    if kind == "port":
        port = _port(token)
        return None if port is None else _sides(direction, lambda a, p: p == port)
    low, _, high = token.partition("-")
    first, last = _port(low), _port(high)
    if first is None or last is None or first > last:
        return None
    return _sides(direction, lambda a, p: first <= p <= last)


def _port(token: str | None) -> int | None:
    if token is None or not token.isdigit() or not token.isascii():
        return None
    port = int(token)
    return port if port <= 0xFFFF else None


def compile_filter(text: str) -> Filter:
    """A function (src, sport, dst, dport) -> bool, addresses as text; FilterError if bad."""
    if not text.strip():
        return lambda src, sport, dst, dport: True
    test = _Parser(text).parse()

    def matches(src: str, sport: int, dst: str, dport: int) -> bool:
        return test(_address(src), sport, _address(dst), dport)

    return matches


def matches_connection(flt: Filter, a: tuple[str, int], b: tuple[str, int]) -> bool:
    """Whether packets from a to b, or from b to a, pass the filter."""
    return flt(a[0], a[1], b[0], b[1]) or flt(b[0], b[1], a[0], a[1])
