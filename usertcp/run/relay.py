"""TCP through the relay: each connection the program opens, carried on by a kernel socket.

The program's side is a usertcp connection accepted on every address (sockname is what
the program dialled); the other side is an ordinary socket of usertcp's own namespace,
connected *before* the program's SYN is answered, so a refusal reaches the program as a
reset and an unreachable host as an ICMP error, as they would from the real destination.

Flow control is end to end: when one side's transport buffers more than its high-water
mark, the other side stops reading, and TCP's windows close behind it. Per connection
usertcp holds at most its receive and send buffers (TcpConfig) plus, each way, one read
(at most 256 KiB from a socket, one receive buffer from usertcp) and a 64 KiB high-water
mark of transport buffer.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
import struct
from collections import Counter

import structlog

_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST


class Pair:
    """Two transports joined: what one receives the other writes, EOF and reset carried."""

    __slots__ = ("inside", "outside", "eof_from_inside", "eof_from_outside", "done",
                 "relay", "dialled", "bytes_out", "bytes_in")

    def __init__(self, relay: Relay, dialled: tuple):
        self.relay = relay
        self.dialled = dialled
        self.inside: asyncio.Transport | None = None  # the program's connection (usertcp)
        self.outside: asyncio.Transport | None = None  # the kernel socket
        self.eof_from_inside = False
        self.eof_from_outside = False
        self.done = False
        self.bytes_out = 0  # program -> world
        self.bytes_in = 0  # world -> program

    def close(self) -> None:
        """Abandon the pair (e.g. the program's handshake failed): reset the socket."""
        self.finish(reset=True)

    def finish(self, reset: bool) -> None:
        if self.done:
            return
        self.done = True
        self.relay.pairs.discard(self)
        for transport, is_kernel in ((self.outside, True), (self.inside, False)):
            if transport is None or transport.is_closing() and not reset:
                continue
            if reset:
                if is_kernel:
                    _reset_socket(transport)
                transport.abort()
            else:
                transport.close()
        self.relay.log.debug("relay.closed", dialled=_hostport(*self.dialled[:2]),
                             bytes_out=self.bytes_out, bytes_in=self.bytes_in, reset=reset)


def _reset_socket(transport: asyncio.Transport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        except OSError:
            pass


class _Side(asyncio.Protocol):
    """One end of a Pair; `other()` is the transport it feeds."""

    inside = False

    def __init__(self, pair: Pair):
        self.pair = pair
        self.transport: asyncio.Transport | None = None

    def other(self) -> asyncio.Transport | None:
        return self.pair.outside if self.inside else self.pair.inside

    def data_received(self, data) -> None:
        other = self.other()
        if other is None or other.is_closing():
            return
        if self.inside:
            self.pair.bytes_out += len(data)
        else:
            self.pair.bytes_in += len(data)
        other.write(data)

    def eof_received(self) -> bool:
        pair = self.pair
        if self.inside:
            pair.eof_from_inside = True
        else:
            pair.eof_from_outside = True
        other = self.other()
        if other is not None and not other.is_closing() and other.can_write_eof():
            other.write_eof()
        if pair.eof_from_inside and pair.eof_from_outside:
            pair.finish(reset=False)
        return True  # half-close: the other direction goes on

    # Our transport is full of what the other side sent: stop reading there, so that the
    # sender's window closes (TCP's flow control carried across the relay).
    def pause_writing(self) -> None:
        source = self.other()
        if source is not None and not source.is_closing():
            source.pause_reading()

    def resume_writing(self) -> None:
        source = self.other()
        if source is not None and not source.is_closing():
            source.resume_reading()

    def connection_lost(self, exc) -> None:
        pair = self.pair
        if pair.done:
            return
        if exc is not None:
            pair.relay.counters["resets_inside" if self.inside else "resets_outside"] += 1
            pair.finish(reset=True)
        else:
            pair.finish(reset=False)


# Every kernel socket reads into this one buffer: what a read brings is written on (copied
# into usertcp's send buffer) before the next read, so one buffer serves all, and a 64 KB
# segment costs no allocation of its own.
_READ_BUFFER = memoryview(bytearray(1 << 20))


class _Outside(_Side, asyncio.BufferedProtocol):
    """The kernel socket's protocol; writes go to the program's connection."""

    inside = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.pair.outside = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return _READ_BUFFER

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(_READ_BUFFER[:nbytes])


class _Inside(_Side):
    """The program's connection (a usertcp transport); writes go to the kernel socket."""

    inside = True

    def __init__(self, relay: Relay):
        self.relay = relay
        self.pair: Pair | None = None  # type: ignore[assignment]
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        pair = transport.get_extra_info("admitted")
        if pair is None or pair.done:  # not through admit, or abandoned meanwhile
            transport.abort()
            self.pair = Pair(self.relay, transport.get_extra_info("sockname"))
            self.pair.done = True
            return
        self.pair = pair
        pair.inside = transport
        transport.set_nodelay(True)  # latency is the program's and the server's to choose
        if pair.outside is not None and not pair.outside.is_closing():
            pair.outside.resume_reading()


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Relay:
    """Admits and carries every TCP connection the program opens.

    `destination((address, port[, flowinfo, scope]))` maps what the program dialled to where
    the kernel socket connects: the gateway (`gateway`, `gateway6`) to `loopback` (`loopback6`),
    the DNS address's (`dns`, `dns6`) port 53 to the resolver (of either family), other
    addresses of the program's own subnets to nowhere (host unreachable).
    """

    def __init__(self, *, gateway: str = "10.0.2.2", dns: str = "10.0.2.3",
                 subnet: str = "10.0.2.0/24", loopback: str = "127.0.0.1",
                 resolver: str | None = None, log=None, gateway6: str = "fd00::2",
                 dns6: str = "fd00::3", subnet6: str = "fd00::/64", loopback6: str = "::1"):
        self.gateway = gateway
        self.dns = dns
        self.subnet = ipaddress.IPv4Network(subnet)
        self.loopback = loopback
        self.gateway6 = ipaddress.IPv6Address(gateway6)
        self.dns6 = ipaddress.IPv6Address(dns6)
        self.subnet6 = ipaddress.IPv6Network(subnet6)
        self.loopback6 = loopback6
        self.resolver = resolver
        self.pairs: set[Pair] = set()
        self.counters: Counter[str] = Counter()
        self.log = log or structlog.get_logger("usertcp.run")

    def destination(self, dialled: tuple) -> tuple[str, int]:
        host, port = dialled[0], dialled[1]
        if ":" in host:
            return self._destination6(ipaddress.IPv6Address(host), port)
        if host == self.gateway:
            return self.loopback, port
        if host == self.dns and port == 53 and self.resolver:
            return self.resolver, 53
        if ipaddress.IPv4Address(host) in self.subnet:
            raise OSError(113, f"no host {host} on the program's network")  # EHOSTUNREACH
        return host, port

    def _destination6(self, addr: ipaddress.IPv6Address, port: int) -> tuple[str, int]:
        if addr == self.gateway6:
            return self.loopback6, port
        if addr == self.dns6 and port == 53 and self.resolver:
            return self.resolver, 53  # the resolver's family need not be the program's
        if addr in self.subnet6:
            raise OSError(113, f"no host {addr} on the program's network")  # EHOSTUNREACH
        return str(addr), port

    async def admit(self, sockname: tuple, peername: tuple) -> Pair:
        """Connect to where the program is going; raise as the kernel did, or hand back the
        joined pair for the program's connection once its handshake completes."""
        pair = Pair(self, sockname)
        try:
            host, port = self.destination(sockname)
            try:
                await asyncio.get_running_loop().create_connection(
                    lambda: _Outside(pair), host, port)
            except OSError as exc:
                raise self._failure(sockname, host, exc) from None
            pair.outside.pause_reading()  # a server that speaks first waits for the program
        except OSError as exc:
            self.counters["connect_failed"] += 1
            self.log.info("relay.refused", dialled=_hostport(*sockname[:2]),
                          program=_hostport(*peername[:2]), error=str(exc))
            raise
        self.counters["connections"] += 1
        self.pairs.add(pair)
        self.log.info("relay.connected", dialled=_hostport(*sockname[:2]),
                      program=_hostport(*peername[:2]), to=_hostport(host, port))
        return pair

    def _failure(self, dialled: tuple, host: str, exc: OSError) -> OSError:
        """What the program is told when usertcp's own socket could not connect: failures of
        IPv6 itself (switched off here, no address, no route) as the kernel reports them."""
        if exc.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.ENETUNREACH,
                             errno.EHOSTUNREACH) or ":" not in host:
            return exc
        if ":" in dialled[0] and ipaddress.IPv6Address(dialled[0]) == self.gateway6:
            # No ::1 in usertcp's namespace: nothing listens there, so the port is closed.
            return ConnectionRefusedError(errno.ECONNREFUSED, f"{host}: {exc.strerror or exc}")
        if exc.errno in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
            # No IPv6 at all here: as a host without an IPv6 route, so programs fall back to IPv4.
            return OSError(errno.ENETUNREACH, f"{host}: {exc.strerror or exc}")
        return exc

    def protocol(self) -> _Inside:
        return _Inside(self)

    def close(self, reset: bool = False) -> None:
        """End every pair: gracefully (what was sent still goes) or with resets."""
        for pair in list(self.pairs):
            pair.finish(reset=reset)


class Publisher:
    """`--publish [ADDR:]HOST_PORT:PORT`: a kernel listener whose connections go to the
    program's PORT, from the gateway's address (as slirp4netns's port forwarding does)."""

    def __init__(self, stack, relay: Relay, program: str, port: int):
        self.stack = stack
        self.relay = relay
        self.program = program
        self.port = port
        self.server: asyncio.base_events.Server | None = None

    async def start(self, host: str, host_port: int) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(self._outside, host, host_port, reuse_address=True)

    def _outside(self) -> asyncio.Protocol:
        pair = Pair(self.relay, (self.program, self.port))
        self.relay.pairs.add(pair)
        return _PublishedOutside(pair, self)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


class _PublishedOutside(_Outside):
    """A published connection: accepted on the kernel side, then opened into the program."""

    def __init__(self, pair: Pair, publisher: Publisher):
        super().__init__(pair)
        self.publisher = publisher
        self.early = bytearray()

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        transport.pause_reading()  # until the program's side exists
        asyncio.get_running_loop().create_task(self._open())

    async def _open(self) -> None:
        pub, pair = self.publisher, self.pair
        try:
            await pub.stack.create_connection(lambda: _PublishedInside(pair), pub.program,
                                              pub.port)
        except (OSError, ConnectionError, TimeoutError) as exc:
            pub.relay.counters["publish_failed"] += 1
            pub.relay.log.info("relay.publish_refused", port=pub.port, error=str(exc))
            pair.finish(reset=True)
            return
        if pair.outside is not None and not pair.outside.is_closing():
            pair.outside.resume_reading()


class _PublishedInside(_Side):
    inside = True

    def connection_made(self, transport) -> None:
        self.transport = transport
        if self.pair.done:
            transport.abort()
            return
        self.pair.inside = transport
        transport.set_nodelay(True)
