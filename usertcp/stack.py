"""The whole TCP/IPv4 stack for one address, as a pure object.

Packets in (`receive`), packets out (`packets_to_send`), time passed in, timers
run by the caller (`next_deadline`, `handle_timers`), and events out
(`next_event`). No I/O, no clock, no tasks: see ARCHITECTURE.md.

With `listen_any` it is also every other address routed to it: connections to
any address and port are accepted (or first asked about: `admit` / `refuse`),
keyed by the full 4-tuple, and answered as the address the peer dialled; with
`forward_datagrams` UDP and pings of other addresses become events too.
"""

from __future__ import annotations

import heapq
import itertools
import struct
from collections import Counter, deque

from .fragments import Reassembler
from .tcp import congestion
from .tcp import events as ev
from .tcp.config import TcpConfig
from .tcp.connection import Connection
from .tcp.errors import (
    ConnectionNotWritable,
    NoFreePort,
    PortInUse,
    TooManyConnections,
    UnknownConnection,
    UnknownRequest,
)
from .tcp.isn import initial_sequence_number
from .tcp.listener import Listener
from .tcp.recvqueue import RecvQueue
from .tcp.seq import MASK
from .tcp.state import CAN_SEND, State
from .tcp.syncookie import SLOT_SECONDS, check_cookie, make_cookie
from .tcp.timewait import TimeWait, TimeWaitTable, pack_key
from .wire import icmp, icmpv6, udp
from .wire.errors import DropReason, MalformedPacket
from .wire.icmp import echo_reply_for
from .wire.ipv4 import PROTO_ICMP, PROTO_UDP, addr_to_int, build_ipv4, int_to_addr
from .wire.ipv6 import IPv6Header, build_ipv6
from .wire.packet import parse_packet, predictable
from .wire.tcp import ACK, FIN, RST, SYN, Segment, build_options, build_segment

__all__ = ["Stack", "State", "TcpConfig"]

_CLOSED = State.CLOSED  # a module global: attribute lookups on the Enum class are slow
_ESTABLISHED = State.ESTABLISHED
_V6_MULTICAST = (1 << 8) | 0xFF  # the top 8 bits of a V6-tagged ff00::/8 address, with the tag
# ICMP unreachable codes (refuse, send_unreachable) as ICMPv6's: net -> no route, host ->
# address unreachable, port -> port unreachable, administratively prohibited -> prohibited.
_V6_UNREACH = {0: 0, 1: 3, 3: 4, 13: 1}
MIN_PMTU_V4 = 552
PMTU_EXPIRES = 600.0  # Linux's net.ipv4.route.mtu_expires: the path may have grown since
PMTU_CACHE = 4096  # destinations remembered; the oldest learned goes first  # Linux's min_pmtu: a "fragmentation needed" never lowers below it

# refuse(reply=...): how a connection request is turned down, as a kernel router would.
REFUSALS = {"reset": None, "net-unreachable": 0, "host-unreachable": 1, "port-unreachable": 3,
            "admin-prohibited": 13, "none": None}


class Stack:
    def __init__(self, address, *, config: TcpConfig | None = None):
        """`address`: the stack's address, or a list of them, at most one per family (IPv4 and
        IPv6: dual stack); the first is `address`, the one active opens use by default."""
        given = [address] if isinstance(address, (str, int)) or not hasattr(address, "__iter__") \
            else list(address)
        if not given:
            raise ValueError("a stack needs an address")
        addresses = tuple(addr_to_int(a) for a in given)
        if len({a > 0xFFFFFFFF for a in addresses}) != len(addresses):
            raise ValueError("give at most one address per family (one IPv4, one IPv6)")
        self.addresses = addresses
        self._own = frozenset(addresses)
        self.address = addresses[0]
        self.address_str = int_to_addr(self.address)
        self.config = config or TcpConfig()
        self.out: list[bytes] = []
        self.dirty: list[Connection] = []
        self.counters: Counter[str] = Counter()
        self.drops: Counter[str] = Counter()  # by DropReason value
        self._events: deque = deque()
        # (remote, rport, local, lport) -> connection; TIME-WAIT entries are in _tw
        self._conns: dict[tuple[int, int, int, int], Connection] = {}
        self._by_id: dict[int, Connection] = {}
        self._tw = TimeWaitTable(self)
        self._listeners: dict[int, Listener] = {}
        self._any: Listener | None = None  # listen_any: every address, every port
        self._any_defer = False  # ask (ConnectionRequested) before answering a SYN
        self._requests: dict[int, tuple[Segment, Listener]] = {}  # id -> SYN awaiting admit
        self._requested: dict[tuple[int, int, int, int], int] = {}  # 4-tuple -> request id
        self.forwarding = False  # forward_datagrams: UDP and foreign pings become events
        self.fragments = Reassembler()  # IPv4 and IPv6; bounded (fragments.py)
        self._pmtu: dict[int, tuple[int, float]] = {}  # remote -> (path MTU, expires)
        # Heap of (deadline, connection id): an id, not the connection, so that a connection
        # that ends is freed at once, not when its stale entries come up.
        self._timers: list[tuple[float, int]] = []
        self._ids = itertools.count(1)
        lo, hi = self.config.ephemeral_ports
        self._next_port = lo + (initial_sequence_number(self.config.isn_secret, 0, 0, 0, 0, 0)
                                % (hi - lo + 1))
        self._awaiting_accept: dict[int, Connection] = {}  # ConnectionAccepted not yet taken
        # Received data still unread when its connection ended gracefully: the
        # application may read it after TIME-WAIT or CLOSED, as from a socket.
        self._leftover: dict[int, RecvQueue] = {}
        self._challenge_second = -1
        self._challenge_count = 0
        self._live = 0  # Connection objects (TIME-WAIT entries not counted): max_connections

    # ------------------------------------------------------------ packets

    def receive(self, packet, now: float, *, checksum_verified: bool = False) -> None:
        """Take one IP packet from the device. Never raises for bad input."""
        # Header prediction from the raw header: most packets of a transfer never become a
        # Segment. Whatever it declines goes the general way below, parsed in full.
        fields = predictable(packet, not checksum_verified)
        if fields is not None:
            conn = self._conns.get(fields[0])
            if (conn is not None and conn.state is _ESTABLISHED and fields[1] == conn.rcv_nxt
                    and conn.predicted(*fields[1:], now)):
                conn.last_rx = now
                self._arm(conn)
                return
            checksum_verified = True  # predictable() checked it: not twice
        try:
            seg = parse_packet(packet, not checksum_verified)
        except MalformedPacket as exc:
            if exc.reason is DropReason.FRAGMENT:
                self._fragment(packet, now, None)
            else:
                self.drops[exc.reason.value] += 1
            return
        if seg.dst != self.address and seg.dst not in self._own and self._any is None:
            if seg.dst >> 120 == _V6_MULTICAST:
                # The kernel's MLD reports and router solicitations on the TUN: no link
                # layer here to take part in; counted, not worth a warning.
                self.counters["ipv6_multicast_ignored"] += 1
            else:
                self.drops[DropReason.NOT_FOR_US.value] += 1
            return
        if type(seg) is not Segment:
            self._receive_other(packet, seg, checksum_verified, now)
            return
        conn = self._conns.get((seg.src, seg.sport, seg.dst, seg.dport))
        if conn is None:
            if self._tw.entries:
                tw = self._tw.get(pack_key(seg.src, seg.sport, seg.dst, seg.dport))
                if tw is not None:
                    self._time_wait_segment(tw, packet, seg, now)
                    return
            listener = self._listeners.get(seg.dport) if seg.dst in self._own else None
            if listener is None:
                listener = self._any
            if listener is None:
                self.counters["rx_closed_port"] += 1
                self.send_reset_for(seg, now)
            elif self._any_defer and listener is self._any:
                self._on_request(listener, seg, now)
            else:
                self._on_listen(listener, seg, now)
            return
        conn.last_rx = now  # keepalive idles from here
        conn.on_segment(seg, now)
        if conn.state is not _CLOSED:
            self._arm(conn)

    def _time_wait_segment(self, tw: TimeWait, packet, seg: Segment, now: float) -> None:
        if seg.flags & SYN and not seg.flags & ACK and self._may_reuse(tw, seg):
            self.counters["time_wait_reused"] += 1
            self._tw.remove(tw)
            self.state_changed(tw, State.TIME_WAIT, State.CLOSED, "reused", now)
            self.receive(packet, now, checksum_verified=True)
            return
        self._tw.segment(tw, seg, now)

    def _receive_other(self, packet, ip, checksum_verified: bool, now: float) -> None:
        try:
            if type(ip) is IPv6Header:
                self._receive_v6(packet, ip, checksum_verified, now)
                return
            if ip.protocol == PROTO_ICMP:
                if (ip.total_length > ip.header_length
                        and packet[ip.header_length] in (icmp.UNREACHABLE, icmp.TIME_EXCEEDED)):
                    self._icmp_error(*icmp.parse_error(packet, ip), now)
                    return
                if self.forwarding and ip.dst not in self._own:
                    ident, seq, data = icmp.parse_echo_request(packet, ip)
                    self.counters["icmp_echo_forwarded"] += 1
                    self._events.append(ev.EchoRequested(
                        0, int_to_addr(ip.src), int_to_addr(ip.dst), ident, seq, bytes(data)))
                    return
                self.out.append(echo_reply_for(packet, ip))
                self.counters["icmp_echo_replies"] += 1
            elif ip.protocol == PROTO_UDP and self.forwarding:
                sport, dport, data = udp.parse_udp(packet, ip, not checksum_verified)
                self.counters["udp_forwarded"] += 1
                self._events.append(ev.DatagramReceived(
                    0, (int_to_addr(ip.src), sport), (int_to_addr(ip.dst), dport), bytes(data)))
            else:
                self.drops[DropReason.UNSUPPORTED_PROTOCOL.value] += 1
        except MalformedPacket as exc:
            self.drops[exc.reason.value] += 1

    def _receive_v6(self, packet, ip: IPv6Header, checksum_verified: bool, now: float) -> None:
        if ip.problem is not None:
            self.drops[DropReason.IPV6_PARAMETER_PROBLEM.value] += 1
            code, pointer = ip.problem
            reply = icmpv6.build_param_problem(self._v6_source(ip.dst), packet, code, pointer)
            if reply is not None:
                self.out.append(reply)
            return
        if ip.fragment is not None:
            self._fragment(packet, now, ip)
            return
        if ip.protocol == PROTO_UDP and self.forwarding:
            sport, dport, data = udp.parse_udp(packet, ip, not checksum_verified)
            self.counters["udp_forwarded"] += 1
            self._events.append(ev.DatagramReceived(
                0, (int_to_addr(ip.src), sport), (int_to_addr(ip.dst), dport), bytes(data)))
            return
        if ip.protocol != icmpv6.PROTO_ICMPV6:
            self.drops[DropReason.UNSUPPORTED_PROTOCOL.value] += 1
            return
        kind, code, body = icmpv6.parse_icmpv6(packet, ip)
        if kind == icmpv6.ECHO_REQUEST and self.forwarding and ip.dst not in self._own:
            ident, seq, data = icmpv6.parse_echo_request6(body)
            self.counters["icmp_echo_forwarded"] += 1
            self._events.append(ev.EchoRequested(
                0, int_to_addr(ip.src), int_to_addr(ip.dst), ident, seq, bytes(data)))
        elif kind == icmpv6.ECHO_REQUEST and (ip.dst in self._own or self._any is not None):
            ident, seq, data = icmpv6.parse_echo_request6(body)
            self.out.append(icmpv6.build_echo_reply6(ip.dst, ip.src, ident, seq, data))
            self.counters["icmp_echo_replies"] += 1
        elif kind in icmpv6.QUIET_TYPES:
            self.counters["icmpv6_quiet"] += 1  # router solicitations, MLD, ND: no link here
        elif kind == icmpv6.PACKET_TOO_BIG:
            mtu, qsrc, qdst, sport, dport, seq = icmpv6.parse_packet_too_big(body)
            # RFC 8201 4: never below the minimum link MTU.
            self._path_mtu(qsrc, qdst, sport, dport, seq, max(mtu, 1280), now)
        elif kind == icmpv6.DEST_UNREACHABLE:
            qsrc, qdst, sport, dport, seq = icmpv6.parse_dest_unreachable6(body)
            self._to_connection(qsrc, qdst, sport, dport, seq, now,
                                icmpv6.unreachable_errno(code))
        else:
            self.drops[DropReason.ICMP_IGNORED.value] += 1

    def _v6_source(self, dst: int) -> int:
        """Where an ICMPv6 error comes from: the address the packet was sent to if it is ours."""
        if dst in self._own:
            return dst
        try:
            return self.own_address_for(dst)
        except ValueError:
            return dst

    def _fragment(self, packet, now: float, ip6) -> None:
        """One IP fragment into reassembly; the datagram, once whole, is received anew (its
        checksums verified then: the device vouched for none of a fragment's)."""
        try:
            if ip6 is None:
                whole = self.fragments.add_v4(packet, now)
            else:
                whole = self.fragments.add_v6(packet, ip6.header_length, ip6.fragment[3], now)
        except MalformedPacket as exc:
            self.drops[exc.reason.value] += 1
            return
        self.counters["fragments"] += 1
        if whole is not None:
            self.counters["reassembled"] += 1
            self.receive(whole, now)

    def _icmp_error(self, kind, code, mtu, qsrc, qdst, sport, dport, seq, now: float) -> None:
        if kind == icmp.UNREACHABLE and code == icmp.UNREACH_FRAG_NEEDED:
            # RFC 1191; no MTU given (an old router): Linux's floor then, as for a tiny one.
            self._path_mtu(qsrc, qdst, sport, dport, seq, max(mtu, MIN_PMTU_V4), now)
        elif kind == icmp.UNREACHABLE:
            self._to_connection(qsrc, qdst, sport, dport, seq, now, icmp.unreachable_errno(code))
        else:
            self.counters["icmp_time_exceeded"] += 1

    def _quoted_connection(self, qsrc, qdst, sport, dport, seq):
        """The connection an ICMP error quotes, if the quote is of a segment it sent (its
        sequence number within SND.UNA..SND.MAX, as Linux checks: blind errors do nothing)."""
        conn = None if sport is None else self._conns.get((qdst, dport, qsrc, sport))
        if (conn is None
                or ((seq - conn.snd_una) & MASK) > ((conn.snd_max - conn.snd_una) & MASK)):
            self.drops[DropReason.ICMP_UNMATCHED.value] += 1
            return None
        return conn

    def _to_connection(self, qsrc, qdst, sport, dport, seq, now: float, err: int) -> None:
        conn = self._quoted_connection(qsrc, qdst, sport, dport, seq)
        if conn is not None:
            conn.icmp_error(err, now)

    def _path_mtu(self, qsrc, qdst, sport, dport, seq, mtu: int, now: float) -> None:
        """RFC 8201 / RFC 1191: the path to qdst carries `mtu`. Kept per destination (as Linux
        keeps it in the route, for PMTU_EXPIRES): every connection to it shrinks, and new ones
        start small. Only an error quoting a segment we sent is believed."""
        conn = self._quoted_connection(qsrc, qdst, sport, dport, seq)
        if conn is None:
            return
        known = self.path_mtu(qdst, now)
        if known is None or mtu < known:
            cache = self._pmtu
            cache.pop(qdst, None)
            if len(cache) >= PMTU_CACHE:
                del cache[next(iter(cache))]  # the oldest learned
            cache[qdst] = (mtu, now + PMTU_EXPIRES)
            for other in list(self._by_id.values()):
                if (other.remote == qdst and other is not conn
                        and other.path_mtu_lowered(mtu, now)):
                    self._arm(other)
        if conn.path_mtu_lowered(mtu, now):
            self._arm(conn)

    def path_mtu(self, remote: int, now: float) -> int | None:
        """The path MTU learned for `remote` and not yet expired, or None."""
        entry = self._pmtu.get(remote)
        if entry is None:
            return None
        if now >= entry[1]:
            del self._pmtu[remote]
            return None
        return entry[0]

    def packets_to_send(self, now: float) -> list[bytes]:
        """Everything to write to the device now; the list is the caller's."""
        dirty = self.dirty
        if dirty:
            self.dirty = []
            for conn in dirty:
                if conn.state is not _CLOSED:
                    conn.output(now)
                    self._arm(conn)
                else:
                    conn.dirty = False
        out = self.out
        self.out = []
        return out

    # ------------------------------------------------------------ opening

    def listen(self, port: int, backlog: int | None = None, *,
               max_connections: int | None = None) -> None:
        """Accept connections on `port`.

        `backlog` bounds the accept queue (default TcpConfig.backlog), TcpConfig.syn_backlog
        the half-open connections, `max_connections` (None: unlimited) all live connections
        of this port; see Listener.
        """
        if not 0 < port < 65536:
            raise ValueError(f"port {port} out of range 1..65535")
        if port in self._listeners:
            raise PortInUse(f"port {port} is already listening")
        if max_connections is not None and max_connections < 1:
            raise ValueError("max_connections must be >= 1 (or None)")
        cfg = self.config
        self._listeners[port] = Listener(port, backlog if backlog is not None else cfg.backlog,
                                         cfg.syn_backlog, max_connections)

    def unlisten(self, port: int) -> None:
        """Stop accepting on `port`; established connections are not touched."""
        self._listeners.pop(port, None)

    def listen_any(self, backlog: int | None = None, *, defer: bool = False,
                   max_connections: int | None = None) -> None:
        """Accept connections to every address and port routed to this stack.

        A port that `listen` names on the stack's own address still goes to its own
        listener. Each connection answers as the address the peer dialled. With
        `defer`, a SYN is not answered at once: ConnectionRequested asks the
        application, which calls `admit` (the handshake goes on) or `refuse` (a reset,
        an ICMP unreachable, or silence), e.g. after trying the real destination.
        Retransmitted SYNs of a request are absorbed meanwhile.
        """
        if self._any is not None:
            raise PortInUse("the stack already listens on every address")
        if max_connections is not None and max_connections < 1:
            raise ValueError("max_connections must be >= 1 (or None)")
        cfg = self.config
        self._any = Listener(0, backlog if backlog is not None else cfg.backlog,
                             cfg.syn_backlog, max_connections)
        self._any_defer = defer

    def unlisten_any(self) -> None:
        """Stop accepting for other addresses; requests not yet answered are dropped."""
        self._any = None
        self._any_defer = False
        self._requests.clear()
        self._requested.clear()

    def _on_request(self, listener: Listener, seg: Segment, now: float) -> None:
        flags = seg.flags
        if flags & RST:
            return
        key = (seg.src, seg.sport, seg.dst, seg.dport)
        if not flags & SYN or flags & ACK:
            if flags & ACK:
                self.send_reset_for(seg, now)
            return
        if key in self._requested:
            self.counters["syn_while_requested"] += 1  # the peer retransmits; we still ask
            return
        if (not listener.has_room() or self._live >= self.config.max_connections
                or listener.half_open >= listener.syn_backlog):
            self.counters["listen_overflow"] += 1
            return
        listener.half_open += 1
        rid = next(self._ids)
        if seg.payload:
            seg.payload = b""  # SYN data is not kept (no Fast Open); it is sent again
        self._requests[rid] = (seg, listener)
        self._requested[key] = rid
        self.counters["connections_requested"] += 1
        self._events.append(ev.ConnectionRequested(
            rid, (int_to_addr(seg.dst), seg.dport), (int_to_addr(seg.src), seg.sport)))

    def admit(self, request_id: int, now: float) -> int:
        """Answer a ConnectionRequested SYN: the handshake goes on, as a connection of the
        same id (ConnectionAccepted follows when the peer's ACK arrives)."""
        seg, listener = self._take_request(request_id)
        if self._live >= self.config.max_connections or self._in_use(
                seg.src, seg.sport, seg.dst, seg.dport):
            listener.half_open -= 1
            self.counters["listen_overflow"] += 1
            self.send_reset_for(seg, now)
            return request_id
        conn = self._new_connection(seg.dport, seg.src, seg.sport, now, listener,
                                    local=seg.dst, conn_id=request_id)
        conn.open_passive(seg, now)
        self._arm(conn)
        return conn.id

    def refuse(self, request_id: int, now: float, reply: str = "reset") -> None:
        """Turn a ConnectionRequested SYN down: `reply` is "reset" (the peer sees ECONNREFUSED),
        "net-unreachable", "host-unreachable", "port-unreachable" or "admin-prohibited" (an
        ICMP destination unreachable from the address dialled), or "none" (the peer's SYN
        retries run out, as for a host that does not answer)."""
        if reply not in REFUSALS:
            raise ValueError(f"unknown reply {reply!r}; choose one of {', '.join(REFUSALS)}")
        seg, listener = self._take_request(request_id)
        listener.half_open -= 1
        self.counters[f"requests_refused_{reply}"] += 1
        if reply == "reset":
            self.send_reset_for(seg, now)
        elif reply != "none":
            # What the peer's kernel matches the error to: its IP header and the TCP ports
            # and sequence number.
            head = struct.pack("!HHI", seg.sport, seg.dport, seg.seq)
            packet = self._unreachable(seg.src, seg.dst, 6, head, REFUSALS[reply])
            if packet is not None:
                self.out.append(packet)

    @staticmethod
    def _unreachable(src: int, dst: int, protocol: int, head: bytes, code: int):
        """An ICMP (or ICMPv6) destination unreachable from `dst` about a packet src -> dst
        that began with `head`; `code` is ICMP's, mapped to ICMPv6's as Linux maps them."""
        if dst > 0xFFFFFFFF:
            quote = build_ipv6(src, dst, protocol, head)
            return icmpv6.build_dest_unreachable6(dst, quote, _V6_UNREACH.get(code, 3))
        return icmp.build_unreachable(dst, build_ipv4(src, dst, protocol, head), code)

    def _take_request(self, request_id: int) -> tuple[Segment, Listener]:
        entry = self._requests.pop(request_id, None)
        if entry is None:
            raise UnknownRequest(request_id)
        seg = entry[0]
        self._requested.pop((seg.src, seg.sport, seg.dst, seg.dport), None)
        return entry

    def requests_pending(self) -> int:
        return len(self._requests)

    # ------------------------------------------------------------ datagrams (forwarding)

    def forward_datagrams(self, enabled: bool = True) -> None:
        """Report UDP (DatagramReceived) and pings of addresses other than the stack's own
        (EchoRequested) as events, for a relay; the stack's own address still answers pings.
        Needs listen_any for packets to other addresses to be taken at all."""
        self.forwarding = enabled

    def send_datagram(self, data, src: tuple[str, int], dst: tuple[str, int]) -> None:
        """A UDP datagram from src (any address: e.g. the one the peer sent to) to dst."""
        self.out.append(udp.build_udp(addr_to_int(src[0]), addr_to_int(dst[0]), src[1], dst[1],
                                      data, ttl=self.config.ttl))

    def send_echo_reply(self, src: str, dst: str, ident: int, seq: int, data) -> None:
        sa, da = addr_to_int(src), addr_to_int(dst)
        build = icmpv6.build_echo_reply6 if sa > 0xFFFFFFFF else icmp.build_echo_reply
        self.out.append(build(sa, da, ident, seq, data))

    def send_unreachable(self, src: tuple[str, int], dst: tuple[str, int], code: int,
                         protocol: int = PROTO_UDP) -> None:
        """An ICMP destination unreachable about a datagram the peer sent from `src` to `dst`
        (sent by `dst`'s address), e.g. port unreachable (3) for a UDP flow refused beyond."""
        sa, da = addr_to_int(src[0]), addr_to_int(dst[0])
        head = struct.pack("!HHHH", src[1], dst[1], 8, 0)
        packet = self._unreachable(sa, da, protocol, head, code)
        if packet is not None:
            self.out.append(packet)

    def connect(self, remote_address, remote_port: int, now: float,
                local_port: int | None = None, local_address=None) -> int:
        """Active open. Raises TooManyConnections at TcpConfig.max_connections.

        `local_address` (default: the stack's) may be any address for a stack that
        listens on every address (listen_any): the peer must route it back here.
        """
        remote = addr_to_int(remote_address)
        local = self.own_address_for(remote) if local_address is None else addr_to_int(
            local_address)
        if (local > 0xFFFFFFFF) != (remote > 0xFFFFFFFF):
            raise ValueError(f"cannot connect from {int_to_addr(local)} to {int_to_addr(remote)}: "
                             "the address families differ")
        if not 0 < remote_port < 65536:
            raise ValueError(f"port {remote_port} out of range 1..65535")
        if self._live >= self.config.max_connections:
            raise TooManyConnections(f"{self._live} connections: TcpConfig.max_connections is "
                                     f"{self.config.max_connections}")
        if local_port is None:
            local_port = self._ephemeral_port(remote, remote_port, local)
        elif self._in_use(remote, remote_port, local, local_port):
            raise PortInUse(f"{int_to_addr(local)}:{local_port} -> "
                            f"{int_to_addr(remote)}:{remote_port} is in use")
        conn = self._new_connection(local_port, remote, remote_port, now, local=local)
        conn.open_active(now)
        self._arm(conn)
        return conn.id

    def _ephemeral_port(self, remote: int, rport: int, local: int) -> int:
        lo, hi = self.config.ephemeral_ports
        stride, offset = self.config.port_stride  # a worker's share of the range
        span = hi - lo + 1
        for _ in range(span):
            port = self._next_port
            self._next_port = lo + (port - lo + 1) % span
            if (port % stride == offset and port not in self._listeners
                    and not self._in_use(remote, rport, local, port)):
                return port
        raise NoFreePort(f"no free local port for {int_to_addr(remote)}:{rport}")

    def _in_use(self, remote: int, rport: int, local: int, lport: int) -> bool:
        """Is the 4-tuple a connection's or a TIME-WAIT entry's?"""
        return (remote, rport, local, lport) in self._conns or (
            bool(self._tw.entries) and pack_key(remote, rport, local, lport) in self._tw)

    def _new_connection(self, lport: int, remote: int, rport: int, now: float,
                        listener: Listener | None = None, iss: int | None = None,
                        local: int | None = None, conn_id: int | None = None) -> Connection:
        if local is None:
            local = self.address
        if iss is None:
            iss = initial_sequence_number(self.config.isn_secret, local, lport, remote,
                                          rport, now)
        conn = Connection(self, next(self._ids) if conn_id is None else conn_id, lport, remote,
                          rport, iss, now, listener, local)
        self._conns[conn.key] = conn
        self._by_id[conn.id] = conn
        self._live += 1
        if listener is not None:
            listener.connections += 1
        return conn

    def _on_listen(self, listener: Listener, seg: Segment, now: float) -> None:
        """RFC 9293 3.10.7.2, LISTEN; with SYN cookies (RFC 4987) when the backlog is full.

        A SYN finds room (accept queue, listener and stack limits) or is dropped, not
        refused: the client retransmits and may find room then (counter listen_overflow).
        With room but the SYN backlog full it is answered with a cookie and no state.
        An ACK is checked as the return of a cookie while this port has sent cookies in
        the last two cookie slots (128 s); otherwise, or when it does not check out,
        it is reset as RFC 9293 says.
        """
        flags = seg.flags
        if flags & RST:
            return
        if flags & ACK:
            if (not flags & SYN and listener.cookie_sent_at is not None
                    and now - listener.cookie_sent_at < 2 * SLOT_SECONDS
                    and self._cookie_ack(listener, seg, now)):
                return
            self.send_reset_for(seg, now)
            return
        if not flags & SYN:
            return
        if not listener.has_room() or self._live >= self.config.max_connections:
            self.counters["listen_overflow"] += 1
            return
        if listener.half_open >= listener.syn_backlog:
            if self.config.syn_cookies:
                self._send_cookie(listener, seg, now)
            else:
                self.counters["listen_overflow"] += 1
            return
        listener.half_open += 1
        conn = self._new_connection(seg.dport, seg.src, seg.sport, now, listener, local=seg.dst)
        conn.open_passive(seg, now)
        self._arm(conn)

    def _send_cookie(self, listener: Listener, syn: Segment, now: float) -> None:
        """A SYN-ACK whose ISN is a cookie (tcp/syncookie.py): MSS only, no other option."""
        cfg = self.config
        cookie = make_cookie(cfg.isn_secret, syn.dst, syn.dport, syn.src, syn.sport,
                             syn.seq, syn.mss, now)
        listener.cookie_sent_at = now
        self.counters["syn_cookies_sent"] += 1
        mss = cfg.mss - (20 if syn.dst > 0xFFFFFFFF else 0)  # IPv6's header is 20 bytes longer
        self.out.append(build_segment(
            syn.dst, syn.src, syn.dport, syn.sport, cookie, (syn.seq + 1) & MASK,
            SYN | ACK, min(cfg.receive_buffer, 65535), build_options(mss=mss), ttl=cfg.ttl,
            csum_offload=cfg.tx_checksum_offload))

    def _cookie_ack(self, listener: Listener, seg: Segment, now: float) -> bool:
        """An ACK for a port with no connection: the end of a cookie handshake?

        True when the segment was taken (a connection made, or dropped for want of
        room); False when it is no cookie of ours and should be reset.
        """
        cfg = self.config
        peer_isn = (seg.seq - 1) & MASK
        mss = check_cookie(cfg.isn_secret, seg.dst, seg.dport, seg.src, seg.sport, peer_isn,
                           (seg.ack - 1) & MASK, now)
        if mss is None:
            self.counters["syn_cookies_rejected"] += 1
            return False
        if not listener.has_room() or self._live >= cfg.max_connections:
            # As for a SYN: dropped. The client retransmits its data (or ACK) and may
            # find room then, while the cookie is valid.
            self.counters["listen_overflow"] += 1
            return True
        self.counters["syn_cookies_accepted"] += 1
        listener.half_open += 1  # accepted() takes it back as the connection is established
        conn = self._new_connection(seg.dport, seg.src, seg.sport, now, listener,
                                    iss=(seg.ack - 1) & MASK, local=seg.dst)
        conn.last_rx = now
        conn.open_cookie(seg, mss, now)
        if conn.state is not _CLOSED:
            self._arm(conn)
        return True

    def _may_reuse(self, tw: TimeWait, seg: Segment) -> bool:
        # RFC 6191: by timestamps when both incarnations have them, else a SYN beyond the
        # old connection's sequence space (TimeWait.may_reuse).
        listening = (seg.dport in self._listeners and seg.dst in self._own) or self._any
        return bool(listening) and tw.may_reuse(seg, self.config.timestamps)

    # ------------------------------------------------------------ application calls

    def _get(self, conn_id: int) -> Connection:
        conn = self._by_id.get(conn_id)
        if conn is None:
            raise UnknownConnection(conn_id)
        return conn

    def send(self, conn_id: int, data, now: float) -> int:
        """Queue data; returns how much fit in the send buffer."""
        if conn_id in self._tw.ids:
            raise ConnectionNotWritable(f"connection {conn_id} is in TIME-WAIT")
        conn = self._get(conn_id)
        if conn.state not in CAN_SEND or conn.fin_queued:
            raise ConnectionNotWritable(f"connection {conn_id} is {conn.state} and not writable"
                                        + (" (shut down)" if conn.fin_queued else ""))
        return conn.send(data, now)

    def send_space(self, conn_id: int) -> int:
        return self._get(conn_id).send_space()

    def recv(self, conn_id: int, max_bytes: int = -1) -> bytes:
        conn = self._by_id.get(conn_id)
        if conn is None:
            return self._recv_leftover(conn_id, max_bytes)
        return conn.recv(max_bytes)

    def recv_chunks(self, conn_id: int) -> list:
        """All received data as bytes-like pieces (no join): for a reader that copies them."""
        conn = self._by_id.get(conn_id)
        if conn is not None:
            return conn.recv_chunks()
        buf = self._leftover.pop(conn_id, None)
        return buf.take_chunks() if buf is not None else []

    def _recv_leftover(self, conn_id: int, max_bytes: int) -> bytes:
        buf = self._leftover.get(conn_id)
        if buf is None:
            return b""
        data = buf.take(max_bytes)
        if not buf:
            del self._leftover[conn_id]
        return data

    def recv_pending(self, conn_id: int) -> int:
        """Bytes received and not yet read."""
        conn = self._by_id.get(conn_id)
        if conn is None:
            return len(self._leftover.get(conn_id, b""))
        return len(conn.rcvbuf)

    def shutdown(self, conn_id: int, now: float) -> None:
        conn = self._get(conn_id)
        conn.shutdown(now)
        self._after_call(conn)

    def close(self, conn_id: int, now: float) -> None:
        conn = self._by_id.get(conn_id)
        if conn is None:
            return
        conn.close(now)
        self._after_call(conn)

    def abort(self, conn_id: int, now: float) -> None:
        conn = self._by_id.get(conn_id)
        if conn is None:
            return
        conn.abort(now)

    def set_nodelay(self, conn_id: int, nodelay: bool) -> None:
        self._get(conn_id).nodelay = nodelay

    def set_keepalive(self, conn_id: int, enabled: bool, idle: float | None = None,
                      interval: float | None = None, probes: int | None = None,
                      now: float | None = None) -> None:
        """SO_KEEPALIVE with TCP_KEEPIDLE/KEEPINTVL/KEEPCNT for one connection.

        Values left None keep the connection's current ones (TcpConfig's at first).
        Idle time counts from the last segment received (or from `now`, when given
        and later). See Connection.set_keepalive.
        """
        for name, value in (("idle", idle), ("interval", interval)):
            if value is not None and value <= 0:
                raise ValueError(f"keepalive {name} must be > 0")
        if probes is not None and probes < 1:
            raise ValueError("keepalive probes must be >= 1")
        conn = self._get(conn_id)
        conn.set_keepalive(enabled, idle, interval, probes, now)
        self._after_call(conn)

    def set_congestion(self, conn_id: int, name: str, now: float = 0.0) -> None:
        """TCP_CONGESTION for one connection: "cubic" or "newreno" (TcpConfig.congestion)."""
        if name not in congestion.ALGORITHMS:
            raise ValueError(f"unknown congestion control {name!r}; "
                             f"choose one of {', '.join(congestion.ALGORITHMS)}")
        self._get(conn_id).set_congestion(name, now)

    def set_user_timeout(self, conn_id: int, seconds: float | None) -> None:
        """TCP_USER_TIMEOUT for one connection (None: off); see TcpConfig.user_timeout."""
        if seconds is not None and seconds <= 0:
            raise ValueError("user_timeout must be > 0 (or None)")
        conn = self._get(conn_id)
        conn.set_user_timeout(seconds)
        self._after_call(conn)

    def _after_call(self, conn: Connection) -> None:
        if conn.state is not State.CLOSED:
            self._arm(conn)

    # ------------------------------------------------------------ timers

    def _arm(self, conn: Connection) -> None:
        """Make sure the heap holds an entry no later than the connection's next deadline.

        A deadline that moves later keeps its early entry: when that fires,
        on_timer finds nothing due and the entry is pushed again. That keeps
        the per-ACK cost of re-arming the retransmission timer at nothing.
        """
        d = conn.next_deadline()
        if d is not None and (conn.armed is None or d < conn.armed):
            conn.armed = d
            heapq.heappush(self._timers, (d, conn.id))

    def next_deadline(self) -> float | None:
        timers = self._timers
        by_id = self._by_id
        while timers:
            deadline, conn_id = timers[0]
            conn = by_id.get(conn_id)
            if conn is not None and conn.armed == deadline:
                break
            heapq.heappop(timers)  # stale: re-armed earlier or finished
        when = timers[0][0] if timers else None
        if self._tw.fifo:
            held = self._tw.next_deadline()
            if held is not None and (when is None or held < when):
                when = held
        if self.fragments.bytes_held:
            held = self.fragments.next_deadline()
            if held is not None and (when is None or held < when):
                when = held
        return when

    def handle_timers(self, now: float) -> None:
        if self.fragments.bytes_held:
            self.fragments.expire(now)
        timers = self._timers
        by_id = self._by_id
        while timers and timers[0][0] <= now:
            deadline, conn_id = heapq.heappop(timers)
            conn = by_id.get(conn_id)
            if conn is None or conn.armed != deadline:
                continue
            conn.armed = None
            conn.on_timer(now)
            if conn.state is not State.CLOSED and by_id.get(conn_id) is conn:
                self._arm(conn)
        if self._tw.fifo:
            for tw in self._tw.expire(now):
                self.state_changed(tw, State.TIME_WAIT, State.CLOSED, "2msl timeout", now)

    # ------------------------------------------------------------ events and state

    def next_event(self):
        if not self._events:
            return None
        event = self._events.popleft()
        if type(event) is ev.ConnectionAccepted:
            conn = self._awaiting_accept.pop(event.conn_id, None)
            if conn is not None:
                conn.listener.accept_queue -= 1
        return event

    def state(self, conn_id: int) -> State:
        conn = self._by_id.get(conn_id)
        if conn is not None:
            return conn.state
        return State.TIME_WAIT if conn_id in self._tw.ids else State.CLOSED

    def own_address_for(self, remote: int) -> int:
        """The stack's address of `remote`'s family (ValueError when it has none)."""
        v6 = remote > 0xFFFFFFFF
        for addr in self.addresses:
            if (addr > 0xFFFFFFFF) == v6:
                return addr
        raise ValueError(f"this stack has no IPv{6 if v6 else 4} address to reach "
                         f"{int_to_addr(remote)} from")

    def endpoints(self, conn_id: int) -> tuple[tuple[str, int], tuple[str, int]]:
        """(local, remote) of a connection: addresses and ports."""
        conn = self._get(conn_id)
        return (int_to_addr(conn.local), conn.lport), (int_to_addr(conn.remote), conn.rport)

    def connections(self, now: float = 0.0) -> list[dict]:
        """A snapshot for tools: 4-tuple, state, queues, timers, RTT."""
        rows = []
        for conn in (*self._by_id.values(), *self._tw):
            row = conn.info(now)
            row["local"] = (int_to_addr(conn.local), conn.lport)
            row["remote"] = (int_to_addr(conn.remote), conn.rport)
            rows.append(row)
        for port, listener in self._listeners.items():
            rows.append({"conn_id": None, "state": str(State.LISTEN),
                         "local": (self.address_str if len(self.addresses) == 1 else "*", port),
                         "remote": ("0.0.0.0", 0),
                         "half_open": listener.half_open, "accept_queue": listener.accept_queue,
                         "backlog": listener.backlog, "connections": listener.connections,
                         "max_connections": listener.max_connections})
        if self._any is not None:
            any_ = self._any
            rows.append({"conn_id": None, "state": str(State.LISTEN), "local": ("*", 0),
                         "remote": ("0.0.0.0", 0), "half_open": any_.half_open,
                         "accept_queue": any_.accept_queue, "backlog": any_.backlog,
                         "connections": any_.connections, "requests": len(self._requests),
                         "max_connections": any_.max_connections})
        return rows

    # ------------------------------------------------------------ for connections (Host)

    def emit(self, event) -> None:
        self._events.append(event)

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] += n

    def state_changed(self, conn, old: State, new: State, cause: str, now: float) -> None:
        self._events.append(ev.StateChanged(
            conn.id, old, new, cause, conn.local, conn.lport, conn.remote, conn.rport,
            conn.snd_nxt, conn.rcv_nxt, now))

    def challenge_ack_allowed(self, now: float) -> bool:
        second = int(now)
        if second != self._challenge_second:
            self._challenge_second = second
            self._challenge_count = 0
        if self._challenge_count >= self.config.challenge_ack_limit:
            self.counters["challenge_acks_suppressed"] += 1
            return False
        self._challenge_count += 1
        self.counters["challenge_acks"] += 1
        return True

    def send_reset_for(self, seg: Segment, now: float) -> None:
        """RFC 9293 3.10.7.1: the reset that answers a segment nobody owns."""
        flags = seg.flags
        if flags & RST:
            return
        if flags & ACK:
            seq, ack, rflags = seg.ack, 0, RST
        else:
            seq = 0
            ack = (seg.seq + len(seg.payload) + (1 if flags & SYN else 0)
                   + (1 if flags & FIN else 0)) & MASK
            rflags = RST | ACK
        self.counters["resets_sent"] += 1
        cfg = self.config
        self.out.append(build_segment(seg.dst, seg.src, seg.dport, seg.sport, seq, ack,
                                      rflags, 0, ttl=cfg.ttl,
                                      csum_offload=cfg.tx_checksum_offload))

    def accepted(self, conn: Connection) -> None:
        listener = conn.listener
        listener.half_open -= 1
        listener.accept_queue += 1
        conn.accepted = True
        self._awaiting_accept[conn.id] = conn
        self._events.append(ev.ConnectionAccepted(conn.id, conn.lport,
                                                  (int_to_addr(conn.remote), conn.rport),
                                                  int_to_addr(conn.local), listener.port))

    def enter_time_wait(self, conn: Connection, cause: str, now: float) -> None:
        if conn.ack_now or conn.unacked_segments:
            conn._xmit(ACK, conn.snd_max)  # the ACK of the peer's FIN goes before the swap
        conn.rto_at = conn.delack_at = conn.persist_at = conn.fin_wait_2_at = None
        conn.keepalive_at = None
        conn.armed = None
        self._release(conn)
        conn._set_state(State.TIME_WAIT, cause, now)
        if conn.rcvbuf:
            self._leftover[conn.id] = conn.rcvbuf
        if self._conns.get(conn.key) is conn:
            del self._conns[conn.key]
        if self._by_id.get(conn.id) is conn:
            del self._by_id[conn.id]
        self._tw.add(conn, now)
        self._events.append(ev.ConnectionClosed(conn.id))
        self.counters["time_wait_entered"] += 1

    def _release(self, conn: Connection) -> None:
        """A connection leaving the table stops counting against its limits and queues."""
        if self._by_id.get(conn.id) is not conn:
            return
        self._live -= 1
        listener = conn.listener
        if listener is not None:
            listener.connections -= 1
            if not conn.accepted:
                listener.half_open -= 1
            elif self._awaiting_accept.pop(conn.id, None) is not None:
                listener.accept_queue -= 1

    def forget(self, conn: Connection, event) -> None:
        conn.armed = None
        self._release(conn)
        if self._conns.get(conn.key) is conn:
            del self._conns[conn.key]
        if self._by_id.get(conn.id) is conn:
            del self._by_id[conn.id]
        if conn.rcvbuf and type(event) is ev.ConnectionClosed:
            self._leftover[conn.id] = conn.rcvbuf
        if event is not None:
            self._events.append(event)

    def time_wait_count(self) -> int:
        return len(self._tw)

    def time_wait_entry(self, conn_id: int) -> TimeWait | None:
        """A view of connection `conn_id`'s TIME-WAIT entry (a snapshot), or None."""
        return self._tw.by_id(conn_id)

    def connection_count(self) -> int:
        """Connections that count against max_connections (all but TIME-WAIT entries)."""
        return self._live

    def __repr__(self) -> str:
        return (f"<Stack {self.address_str} connections={len(self._by_id)} "
                f"time_wait={len(self._tw)}>")

