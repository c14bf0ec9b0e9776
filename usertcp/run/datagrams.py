"""The relay of a program's UDP flows and ICMP echo requests through usertcp's own namespace.

The stack hands every UDP datagram and echo request the program sends to a DatagramRelay
(`stack.forward_datagrams(relay)`); the relay carries each UDP flow (program address:port,
destination address:port) over its own connected UDP socket, and each echo request over one ICMP
socket, and gives the answers back to the stack through a `sender`:

    sender.send_datagram(data, src, dst)        # src: what the program sent to; dst: the program
    sender.send_echo_reply(src, dst, ident, seq, data)

Addresses the program sees are slirp4netns's: the gateway (10.0.2.2, fd00::2) is usertcp's own
loopback (127.0.0.1, ::1), and the DNS address (10.0.2.3, fd00::3) port 53 is the resolver of
usertcp's /etc/resolv.conf, whatever its family; other addresses of fd00::/64 have no host.

Memory and descriptors are bounded: at most `max_flows` sockets (the least recently used goes when
a new flow needs one), at most MAX_QUEUED datagrams waiting while a flow's socket is made,
MAX_BUFFERED bytes waiting in a socket's send buffer, and `max_echoes` outstanding echo requests.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import ipaddress
import random
import socket
import struct
from collections.abc import Callable

import structlog

from ..wire import icmpv6
from ..wire.checksum import word_sum
from ..wire.icmp import (ECHO_REPLY, ECHO_REQUEST, UNREACH_ADMIN, UNREACH_HOST, UNREACH_NET,
                         UNREACH_PORT, build_echo_message)
from ..wire.ipv4 import addr_to_int

Address = tuple[str, int]
UnreachableHook = Callable[[Address, Address, int], object]

# Between Linux conntrack's UDP timeouts: 30 s for a flow seen one way, 120 s for a stream. The
# applications that keep UDP flows open across NATs (WireGuard's 25 s keepalive, QUIC and STUN
# pings) are tuned to 30 s NATs, so they stay up; one-shot flows (each DNS lookup is a new source
# port) give their socket back in half conntrack's stream time, and usertcp's descriptors are
# shared with every TCP relay.
DEFAULT_IDLE_TIMEOUT = 60.0
DEFAULT_MAX_FLOWS = 1024
MAX_QUEUED = 32  # datagrams of one flow held while its socket is being made
MAX_BUFFERED = 256 * 1024  # bytes a flow's socket may hold unsent before datagrams are dropped
DEFAULT_ECHO_TIMEOUT = 10.0  # as long as ping waits for its last reply (-W default)
DEFAULT_MAX_ECHOES = 1024
READ_BATCH = 64  # ICMP socket reads per readiness callback

SOL_RAW = 255
ICMP_FILTER = 1  # linux/icmp.h: a bit mask of ICMP types a raw socket does not want
ICMP6_FILTER = 1  # linux/icmpv6.h (level IPPROTO_ICMPV6): 256 bits, set = blocked

_ECHO = struct.Struct("!BBHHH")

# What a flow's socket error says about the destination, as an ICMP unreachable code.
_UNREACH_FOR_ERRNO = {
    errno.ECONNREFUSED: UNREACH_PORT,
    errno.EHOSTUNREACH: UNREACH_HOST,
    errno.ENETUNREACH: UNREACH_NET,
    errno.EACCES: UNREACH_ADMIN,  # a local firewall rejected it
    errno.EPERM: UNREACH_ADMIN,
}

COUNTERS = (
    "udp_datagrams_out", "udp_bytes_out", "udp_datagrams_in", "udp_bytes_in",
    "udp_flows_opened", "udp_flows_idle_closed", "udp_flows_evicted",
    "udp_broadcast_dropped", "udp_multicast_dropped", "udp_bad_destination",
    "udp_dns_other_port", "udp_dns_no_resolver", "udp_queue_full", "udp_send_buffer_full",
    "udp_connect_failed", "udp_refused", "udp_unreachable", "udp_socket_errors", "udp_no_host",
    "icmp_echo_relayed", "icmp_echo_replies", "icmp_echo_unrelayed", "icmp_echo_dropped",
    "icmp_echo_timed_out", "icmp_echo_evicted", "icmp_echo_send_failed", "icmp_echo_unmatched",
    "datagrams_after_close",
)


def first_nameserver(path: str = "/etc/resolv.conf") -> str | None:
    """The first IPv4 `nameserver` of a resolv.conf, or None (no file, none listed, IPv6 only).

    It answers the program's DNS addresses of both families (10.0.2.3 and fd00::3)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read(65536).splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            try:
                if addr_to_int(fields[1]) > 0xFFFFFFFF:
                    continue  # IPv6: not taken, as before the relay carried IPv6
            except ValueError:  # garbage, or a scoped IPv6 address (fe80::1%eth0)
                continue
            return fields[1]
    return None


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _ping_socket(family: int, proto: int, raw_filter):
    """(socket, mode, errors): a ping socket where net.ipv4.ping_group_range lets us ("dgram"),
    else a raw one that `raw_filter` narrows to echo replies ("raw", needs CAP_NET_RAW), else
    (None, "none", (why not a ping socket, why not a raw one))."""
    try:
        return socket.socket(family, socket.SOCK_DGRAM, proto), "dgram", None
    except OSError as dgram_exc:
        sock = None
        try:
            sock = socket.socket(family, socket.SOCK_RAW, proto)
            raw_filter(sock)
            return sock, "raw", None
        except OSError as raw_exc:
            if sock is not None:
                sock.close()
            return None, "none", (dgram_exc, raw_exc)


def _filter_echo_replies(sock: socket.socket) -> None:
    # Only echo replies: the raw socket would otherwise get every ICMP message.
    sock.setsockopt(SOL_RAW, ICMP_FILTER, struct.pack("I", 0xFFFFFFFF & ~(1 << ECHO_REPLY)))


def _filter_echo_replies6(sock: socket.socket) -> None:
    blocked = [0xFFFFFFFF] * 8
    blocked[icmpv6.ECHO_REPLY >> 5] &= ~(1 << (icmpv6.ECHO_REPLY & 31))
    sock.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, struct.pack("8I", *blocked))


def _never_relayed(a: int) -> bool:
    # 0.0.0.0/8 and 240.0.0.0/4 (class E): no host to send to.
    return a >> 24 == 0 or a >> 28 == 15


class _Flow(asyncio.DatagramProtocol):
    """One UDP flow of the program and the connected socket that carries it."""

    def __init__(self, relay: DatagramRelay, program: Address, destination: Address,
                 remote: Address):
        self.relay = relay
        self.program = program  # the program's address and port
        self.destination = destination  # what the program sent to (replies come from here)
        self.remote = remote  # where the socket is connected
        self.transport: asyncio.DatagramTransport | None = None
        self.queue: list[bytes] = []  # datagrams waiting for the socket
        self.task: asyncio.Task | None = None
        self.last_used = 0.0
        self.closed = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        self.relay._reply(self, data)

    def error_received(self, exc: Exception) -> None:
        self.relay._flow_error(self, exc)


class _Echo:
    __slots__ = ("deadline", "ident", "pinged", "program", "seq", "target")

    def __init__(self, program, pinged, target, ident, seq, deadline):
        self.program = program
        self.pinged = pinged  # the address the program pinged: the reply's source
        self.target = target  # the address actually pinged (the gateway's is loopback)
        self.ident = ident
        self.seq = seq
        self.deadline = deadline


class DatagramRelay:
    """Relays the program's UDP flows and echo requests; see the module's docstring.

    `unreachable(program, destination, code)` is called when the far side of a UDP flow says it
    is unreachable (ConnectionRefusedError: code 3, port unreachable), or when a datagram has
    nowhere to go (DNS address without a resolver, or a port other than 53): `program` and
    `destination` are the flow's (address, port) pairs as the program sees them, so the ICMP
    error goes from destination to program, e.g.
    `build_unreachable(dst, build_udp(src, dst, sport, dport, b""), code)` (Linux matches an
    error to its socket by the quoted addresses and ports). None: nothing is called.

    `resolver`: the address whose port 53 answers the DNS address; None reads the first
    `nameserver` of `resolv_conf` once, here (see first_nameserver); "" means none (DNS datagrams
    are answered with port unreachable).

    IPv6: `gateway6`, `dns6` and `loopback6` as their IPv4 namesakes; other addresses of
    `subnet6` have no host (address unreachable); any other address is sent to as it is.
    """

    def __init__(self, sender, *, gateway: str = "10.0.2.2", dns: str = "10.0.2.3",
                 loopback: str = "127.0.0.1", resolver: str | None = None,
                 idle_timeout: float = DEFAULT_IDLE_TIMEOUT, max_flows: int = DEFAULT_MAX_FLOWS,
                 unreachable: UnreachableHook | None = None, broadcast: str = "10.0.2.255",
                 echo_timeout: float = DEFAULT_ECHO_TIMEOUT,
                 max_echoes: int = DEFAULT_MAX_ECHOES, resolv_conf: str = "/etc/resolv.conf",
                 logger=None, gateway6: str = "fd00::2", dns6: str = "fd00::3",
                 loopback6: str = "::1", subnet6: str = "fd00::/64"):
        if idle_timeout <= 0 or echo_timeout <= 0:
            raise ValueError("timeouts must be positive")
        if max_flows < 1 or not 1 <= max_echoes < 65536:
            raise ValueError("max_flows must be at least 1, max_echoes in 1..65535")
        for value in (gateway, dns, loopback, broadcast):
            addr_to_int(value)  # ValueError for a malformed address
        if resolver is None:
            resolver = first_nameserver(resolv_conf)  # read once, at start
        elif resolver:
            addr_to_int(resolver)
        self.sender = sender
        self.gateway = gateway
        self.dns = dns
        self.loopback = loopback
        self.resolver = resolver or None
        # Compressed text, as the stack gives addresses and sockets report them.
        self.gateway6 = str(ipaddress.IPv6Address(gateway6))
        self.dns6 = str(ipaddress.IPv6Address(dns6))
        self.loopback6 = str(ipaddress.IPv6Address(loopback6))
        self.subnet6 = ipaddress.IPv6Network(subnet6)
        self.broadcast = addr_to_int(broadcast)
        self.idle_timeout = idle_timeout
        self.max_flows = max_flows
        self.echo_timeout = echo_timeout
        self.max_echoes = max_echoes
        self.unreachable = unreachable or (lambda program, destination, code: None)
        self.log = logger or structlog.get_logger("usertcp").bind(part="datagrams")
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self._loop: asyncio.AbstractEventLoop | None = None
        # Least recently used first: the idle sweep and eviction both take from the front.
        self._flows: collections.OrderedDict[tuple[Address, Address], _Flow] = (
            collections.OrderedDict())
        self._flow_timer: asyncio.TimerHandle | None = None
        # ICMP: one socket for every echo request; our sequence number keys the table.
        self._icmp: socket.socket | None = None
        self._icmp_mode: str | None = None  # "dgram", "raw" or "none" once tried
        self._icmp_ident = 0
        self._icmp6: socket.socket | None = None  # ICMPv6, as the three above
        self._icmp6_mode: str | None = None
        self._icmp6_ident = 0
        self._next_seq = random.getrandbits(16)
        self._echoes: collections.OrderedDict[int, _Echo] = collections.OrderedDict()
        self._echo_timer: asyncio.TimerHandle | None = None
        self._closed = False

    # ------------------------------------------------------------ the stack's side

    def datagram_received(self, data: bytes, src: Address, dst: Address) -> None:
        """A UDP datagram from the program (`src`) to `dst`."""
        if self._closed:
            self.counters["datagrams_after_close"] += 1
            return
        key = (src, dst)
        flow = self._flows.get(key)
        if flow is None:
            remote = self._remote_for(src, dst)
            if remote is None:
                return
            flow = self._open_flow(src, dst, remote)
        else:
            self._flows.move_to_end(key)
        flow.last_used = self._loop.time()
        self._send(flow, data)

    def echo_request(self, src: str, dst: str, ident: int, seq: int, data: bytes) -> None:
        """An ICMP echo request from the program (`src`) to `dst`."""
        c = self.counters
        if self._closed:
            c["datagrams_after_close"] += 1
            return
        if ":" in dst:
            target = self._echo_target6(dst)
            if target is None:
                c["icmp_echo_dropped"] += 1
                return
        else:
            a = addr_to_int(dst)
            if a == 0xFFFFFFFF or a == self.broadcast or a >> 28 == 14 or _never_relayed(a):
                c["icmp_echo_dropped"] += 1
                return
            target = dst
            if dst == self.gateway:  # the stack answers these itself; map it anyway, as UDP does
                target = self.loopback
            elif dst == self.dns:
                if not self.resolver:
                    c["icmp_echo_dropped"] += 1
                    return
                target = self.resolver
        v6 = ":" in target
        sock = self._icmp6_socket() if v6 else self._icmp_socket()
        if sock is None:
            c["icmp_echo_unrelayed"] += 1
            return
        now = self._loop.time()
        if len(self._echoes) >= self.max_echoes:
            self._echoes.popitem(last=False)
            c["icmp_echo_evicted"] += 1
        our_seq = self._free_seq()
        # With a ping socket the kernel writes its own identifier over ours; the sequence number,
        # ours and unique among the outstanding requests, finds the request again.
        if v6:
            target = str(ipaddress.IPv6Address(target))  # as recvfrom will name it
            # The kernel fills in ICMPv6's checksum (it covers the addresses it picks).
            message = struct.pack("!BBHHH", icmpv6.ECHO_REQUEST, 0, 0, self._icmp6_ident,
                                  our_seq) + bytes(data)
        else:
            message = build_echo_message(ECHO_REQUEST, self._icmp_ident, our_seq, data)
        try:
            sock.sendto(message, (target, 0))
        except OSError as exc:  # unroutable, or the send buffer is full: ping sees a loss
            c["icmp_echo_send_failed"] += 1
            self.log.debug("echo send failed", dst=target, error=str(exc))
            return
        self._echoes[our_seq] = _Echo(src, dst, target, ident, seq, now + self.echo_timeout)
        c["icmp_echo_relayed"] += 1
        if self._echo_timer is None:
            self._echo_timer = self._loop.call_at(now + self.echo_timeout, self._sweep_echoes)

    def flows(self) -> list[dict]:
        """The open UDP flows, least recently used first."""
        now = self._loop.time() if self._loop else 0.0
        return [{"program": f.program, "destination": f.destination, "remote": f.remote,
                 "idle": round(now - f.last_used, 3), "connected": f.transport is not None}
                for f in self._flows.values()]

    @property
    def icmp_mode(self) -> str | None:
        """How echo requests are relayed: "dgram" (ping socket), "raw", "none"; None: not yet."""
        return self._icmp_mode

    @property
    def icmp6_mode(self) -> str | None:
        """As icmp_mode, for echo requests to IPv6 addresses."""
        return self._icmp6_mode

    def close(self) -> None:
        """Close every socket; what arrives afterwards is counted and dropped."""
        if self._closed:
            return
        self._closed = True
        for timer in (self._flow_timer, self._echo_timer):
            if timer is not None:
                timer.cancel()
        self._flow_timer = self._echo_timer = None
        for flow in list(self._flows.values()):
            self._close_flow(flow)
        self._echoes.clear()
        for sock in (self._icmp, self._icmp6):
            if sock is not None:
                if self._loop is not None and not self._loop.is_closed():
                    self._loop.remove_reader(sock.fileno())
                sock.close()
        self._icmp = self._icmp6 = None

    # ------------------------------------------------------------ UDP

    def _remote_for(self, src: Address, dst: Address) -> Address | None:
        """Where a new flow's socket connects, or None (counted) when it goes nowhere."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        c = self.counters
        addr, port = dst
        if ":" in addr:
            return self._remote_for6(src, dst)
        a = addr_to_int(addr)
        if a == 0xFFFFFFFF or a == self.broadcast:
            c["udp_broadcast_dropped"] += 1
            return None
        if a >> 28 == 14:
            c["udp_multicast_dropped"] += 1
            return None
        if _never_relayed(a) or port == 0:
            c["udp_bad_destination"] += 1
            return None
        if addr == self.gateway:
            return self.loopback, port
        if addr == self.dns:
            return self._to_resolver(src, dst)
        return addr, port

    def _to_resolver(self, src: Address, dst: Address) -> Address | None:
        """A datagram to the DNS address (either family): port 53 goes to the resolver; else,
        or with no resolver, the program gets port unreachable at once instead of timing out."""
        if dst[1] != 53:
            self.counters["udp_dns_other_port"] += 1
        elif not self.resolver:
            self.counters["udp_dns_no_resolver"] += 1
        else:
            return self.resolver, 53
        self._call_unreachable(src, dst, UNREACH_PORT)
        return None

    def _remote_for6(self, src: Address, dst: Address) -> Address | None:
        c = self.counters
        addr, port = dst
        a = ipaddress.IPv6Address(addr)
        if a.is_multicast:
            c["udp_multicast_dropped"] += 1
            return None
        if a.is_unspecified or a.is_loopback or port == 0:
            c["udp_bad_destination"] += 1
            return None
        text = str(a)
        if text == self.gateway6:
            return self.loopback6, port
        if text == self.dns6:
            return self._to_resolver(src, dst)
        if a in self.subnet6:
            c["udp_no_host"] += 1
            self._call_unreachable(src, dst, UNREACH_HOST)
            return None
        return text, port

    def _open_flow(self, src: Address, dst: Address, remote: Address) -> _Flow:
        if len(self._flows) >= self.max_flows:
            _key, oldest = next(iter(self._flows.items()))
            self._close_flow(oldest)
            self.counters["udp_flows_evicted"] += 1
        flow = _Flow(self, src, dst, remote)
        self._flows[(src, dst)] = flow
        self.counters["udp_flows_opened"] += 1
        flow.task = self._loop.create_task(self._connect(flow))
        if self._flow_timer is None:
            self._flow_timer = self._loop.call_at(self._loop.time() + self.idle_timeout,
                                                  self._sweep_flows)
        return flow

    async def _connect(self, flow: _Flow) -> None:
        try:
            await self._loop.create_datagram_endpoint(lambda: flow, remote_addr=flow.remote,
                                                      family=_family(flow.remote[0]))
        except OSError as exc:
            self.counters["udp_connect_failed"] += 1
            self.log.debug("udp connect failed", remote=flow.remote, error=str(exc))
            if not flow.closed:
                self._close_flow(flow)
                code = self._connect_failure(flow, exc)
                if code is not None:
                    self._call_unreachable(flow.program, flow.destination, code)
            return
        if flow.closed:  # timed out or evicted while the socket was being made
            flow.transport.close()
            return
        queued, flow.queue = flow.queue, []
        for data in queued:
            self._send(flow, data)

    def _connect_failure(self, flow: _Flow, exc: OSError) -> int | None:
        """The unreachable code for a flow whose socket could not connect, or None."""
        if ":" in flow.remote[0] and exc.errno in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL,
                                                   errno.ENETUNREACH, errno.EHOSTUNREACH):
            if flow.destination[0] == self.gateway6:
                return UNREACH_PORT  # no ::1 in usertcp's namespace: nothing listens there
            if exc.errno in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                return UNREACH_NET  # no IPv6 here at all: as a host without an IPv6 route
        return _UNREACH_FOR_ERRNO.get(exc.errno)

    def _send(self, flow: _Flow, data) -> None:
        c = self.counters
        transport = flow.transport
        if transport is None:
            if len(flow.queue) >= MAX_QUEUED:
                c["udp_queue_full"] += 1
                return
            flow.queue.append(bytes(data))
            return
        if transport.get_write_buffer_size() > MAX_BUFFERED:
            c["udp_send_buffer_full"] += 1
            return
        transport.sendto(data)
        c["udp_datagrams_out"] += 1
        c["udp_bytes_out"] += len(data)

    def _reply(self, flow: _Flow, data: bytes) -> None:
        if flow.closed:
            return
        flow.last_used = self._loop.time()
        self._flows.move_to_end((flow.program, flow.destination))
        self.counters["udp_datagrams_in"] += 1
        self.counters["udp_bytes_in"] += len(data)
        # A connected socket receives only from its peer: the reply comes from the destination.
        self.sender.send_datagram(data, flow.destination, flow.program)

    def _flow_error(self, flow: _Flow, exc: Exception) -> None:
        code = _UNREACH_FOR_ERRNO.get(getattr(exc, "errno", None))
        if code is None:
            self.counters["udp_socket_errors"] += 1
            self.log.debug("udp socket error", remote=flow.remote, error=str(exc))
            return
        self.counters["udp_refused" if code == UNREACH_PORT else "udp_unreachable"] += 1
        if not flow.closed:
            self._call_unreachable(flow.program, flow.destination, code)

    def _call_unreachable(self, program: Address, destination: Address, code: int) -> None:
        try:
            self.unreachable(program, destination, code)
        except Exception:  # the hook's bug must not stop the relay
            self.log.exception("unreachable hook failed")

    def _close_flow(self, flow: _Flow) -> None:
        flow.closed = True
        self._flows.pop((flow.program, flow.destination), None)
        flow.queue = []
        if flow.transport is not None:
            flow.transport.close()
        elif flow.task is not None and not flow.task.done():
            flow.task.cancel()

    def _sweep_flows(self) -> None:
        self._flow_timer = None
        if self._closed:
            return
        now = self._loop.time()
        # The front is the least recently used; stop at the first that is still in use.
        while self._flows:
            flow = next(iter(self._flows.values()))
            if flow.last_used + self.idle_timeout > now:
                self._flow_timer = self._loop.call_at(flow.last_used + self.idle_timeout,
                                                      self._sweep_flows)
                return
            self._close_flow(flow)
            self.counters["udp_flows_idle_closed"] += 1

    # ------------------------------------------------------------ ICMP echo

    def _icmp_socket(self) -> socket.socket | None:
        """The ICMP socket, opened at the first echo request: a ping socket where
        net.ipv4.ping_group_range lets us, else a raw one (CAP_NET_RAW), else None."""
        if self._icmp_mode is not None:
            return self._icmp
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        sock, self._icmp_mode, errors = _ping_socket(socket.AF_INET, socket.IPPROTO_ICMP,
                                                     _filter_echo_replies)
        if sock is None:
            self.log.warning("ping is not relayed: neither a ping socket nor a raw socket",
                             ping_socket=str(errors[0]), raw_socket=str(errors[1]))
            return None
        if self._icmp_mode == "raw":
            self._icmp_ident = random.getrandbits(16)
        sock.setblocking(False)
        self._icmp = sock
        self._loop.add_reader(sock.fileno(), self._icmp_readable)
        return sock

    def _echo_target6(self, dst: str) -> str | None:
        """Where an echo request to IPv6 `dst` goes, or None: dropped."""
        a = ipaddress.IPv6Address(dst)
        if a.is_multicast or a.is_unspecified or a.is_loopback:
            return None
        text = str(a)
        if text == self.gateway6:  # the stack answers these itself; mapped as for IPv4
            return self.loopback6
        if text == self.dns6:
            return self.resolver  # of either family; None (dropped) without one
        if a in self.subnet6:
            return None  # no host there
        return text

    def _icmp6_socket(self) -> socket.socket | None:
        """As _icmp_socket, for ICMPv6 (the same ping_group_range governs its ping sockets)."""
        if self._icmp6_mode is not None:
            return self._icmp6
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        sock, self._icmp6_mode, errors = _ping_socket(socket.AF_INET6, socket.IPPROTO_ICMPV6,
                                                      _filter_echo_replies6)
        if sock is None:
            self.log.warning("IPv6 ping is not relayed: neither a ping socket nor a raw "
                             "socket", ping_socket=str(errors[0]), raw_socket=str(errors[1]))
            return None
        if self._icmp6_mode == "raw":
            self._icmp6_ident = random.getrandbits(16)
        sock.setblocking(False)
        self._icmp6 = sock
        self._loop.add_reader(sock.fileno(), self._icmp6_readable)
        return sock

    def _icmp6_readable(self) -> None:
        raw = self._icmp6_mode == "raw"
        for _ in range(READ_BATCH):
            sock = self._icmp6
            if sock is None or self._closed:
                return
            try:
                message, addr = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.log.debug("icmpv6 socket error", error=str(exc))
                continue
            # Both kinds of socket read the ICMPv6 message alone, its checksum checked already.
            if len(message) < 8 or message[0] != icmpv6.ECHO_REPLY or message[1] != 0:
                continue
            self._echo_replied(message, addr[0], self._icmp6_ident if raw else None)

    def _free_seq(self) -> int:
        # The table holds fewer than 65536 entries, so this ends within max_echoes + 1 steps.
        seq = self._next_seq
        while seq in self._echoes:
            seq = (seq + 1) & 0xFFFF
        self._next_seq = (seq + 1) & 0xFFFF
        return seq

    def _icmp_readable(self) -> None:
        sock = self._icmp
        raw = self._icmp_mode == "raw"
        for _ in range(READ_BATCH):
            if sock is None or self._closed:
                return
            try:
                packet, addr = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # an ICMP error queued on the socket: the request is lost
                self.log.debug("icmp socket error", error=str(exc))
                continue
            # A raw socket reads the IP header too; a ping socket only the ICMP message.
            message = memoryview(packet)[(packet[0] & 15) * 4:] if raw else memoryview(packet)
            if len(message) < 8 or message[0] != ECHO_REPLY or message[1] != 0:
                continue
            if word_sum(message):  # raw sockets see packets before ICMP checks them
                continue
            self._echo_replied(message, addr[0], self._icmp_ident if raw else None)

    def _echo_replied(self, message, source: str, raw_ident: int | None) -> None:
        """An echo reply (ICMP or ICMPv6) read from our socket: back to the program that
        pinged, with its own identifier and sequence number. `raw_ident`: a raw socket sees
        every reply on this host; ours carry this identifier."""
        _t, _c, _csum, ident, our_seq = _ECHO.unpack_from(message)
        if raw_ident is not None and ident != raw_ident:
            return  # a reply to another program's ping on this host
        echo = self._echoes.get(our_seq)
        if echo is None or source != echo.target:
            self.counters["icmp_echo_unmatched"] += 1
            return
        del self._echoes[our_seq]
        self.counters["icmp_echo_replies"] += 1
        self.sender.send_echo_reply(echo.pinged, echo.program, echo.ident, echo.seq,
                                    bytes(message[8:]))

    def _sweep_echoes(self) -> None:
        self._echo_timer = None
        if self._closed:
            return
        now = self._loop.time()
        # In order of sending, so in order of deadline.
        while self._echoes:
            our_seq, echo = next(iter(self._echoes.items()))
            if echo.deadline > now:
                self._echo_timer = self._loop.call_at(echo.deadline, self._sweep_echoes)
                return
            del self._echoes[our_seq]
            self.counters["icmp_echo_timed_out"] += 1
