"""The whole TCP/IPv4 stack for one address, as a pure object.

Packets in (`receive`), packets out (`packets_to_send`), time passed in, timers
run by the caller (`next_deadline`, `handle_timers`), and events out
(`next_event`). No I/O, no clock, no tasks: see ARCHITECTURE.md.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter, deque

from .tcp import events as ev
from .tcp.config import TcpConfig
from .tcp import congestion
from .tcp.connection import Connection
from .tcp.errors import (ConnectionNotWritable, NoFreePort, PortInUse, TooManyConnections,
                         UnknownConnection)
from .tcp.isn import initial_sequence_number
from .tcp.listener import Listener
from .tcp.seq import MASK
from .tcp.state import CAN_SEND, State
from .tcp.syncookie import SLOT_SECONDS, check_cookie, make_cookie
from .tcp.timewait import TimeWait
from .wire.errors import DropReason, MalformedPacket
from .wire.icmp import echo_reply_for
from .wire.ipv4 import PROTO_ICMP, addr_to_int, int_to_addr
from .wire.packet import parse_packet
from .wire.tcp import ACK, FIN, RST, SYN, Segment, build_options, build_segment

__all__ = ["Stack", "TcpConfig", "State"]

_CLOSED = State.CLOSED  # a module global: attribute lookups on the Enum class are slow


class Stack:
    def __init__(self, address, *, config: TcpConfig | None = None):
        self.address = addr_to_int(address)
        self.address_str = int_to_addr(self.address)
        self.config = config or TcpConfig()
        self.out: list[bytes] = []
        self.dirty: list[Connection] = []
        self.counters: Counter[str] = Counter()
        self.drops: Counter[str] = Counter()  # by DropReason value
        self._events: deque = deque()
        self._conns: dict[tuple[int, int, int], Connection | TimeWait] = {}
        self._by_id: dict[int, Connection | TimeWait] = {}
        self._listeners: dict[int, Listener] = {}
        self._timers: list = []  # heap of (deadline, tiebreak, connection or TIME-WAIT entry)
        self._tiebreak = itertools.count()
        self._ids = itertools.count(1)
        lo, hi = self.config.ephemeral_ports
        self._next_port = lo + (initial_sequence_number(self.config.isn_secret, 0, 0, 0, 0, 0)
                                % (hi - lo + 1))
        self._awaiting_accept: dict[int, Connection] = {}  # ConnectionAccepted not yet taken
        # Received data still unread when its connection ended gracefully: the
        # application may read it after TIME-WAIT or CLOSED, as from a socket.
        self._leftover: dict[int, bytearray] = {}
        self._challenge_second = -1
        self._challenge_count = 0
        self._live = 0  # Connection objects (TIME-WAIT entries not counted): max_connections

    # ------------------------------------------------------------ packets

    def receive(self, packet, now: float, *, checksum_verified: bool = False) -> None:
        """Take one IPv4 packet from the device. Never raises for bad input."""
        try:
            seg = parse_packet(packet, not checksum_verified)
        except MalformedPacket as exc:
            self.drops[exc.reason.value] += 1
            return
        if seg.dst != self.address:
            self.drops[DropReason.NOT_FOR_US.value] += 1
            return
        if type(seg) is not Segment:
            self._receive_other(packet, seg)
            return
        conn = self._conns.get((seg.src, seg.sport, seg.dport))
        if conn is None:
            listener = self._listeners.get(seg.dport)
            if listener is None:
                self.counters["rx_closed_port"] += 1
                self.send_reset_for(seg, now)
            else:
                self._on_listen(listener, seg, now)
            return
        if type(conn) is TimeWait:
            if seg.flags & SYN and not seg.flags & ACK and self._may_reuse(conn, seg):
                self.counters["time_wait_reused"] += 1
                self._drop_time_wait(conn)
                self.state_changed(conn, State.TIME_WAIT, State.CLOSED, "reused", now)
                self.receive(packet, now, checksum_verified=True)
                return
            conn.on_segment(seg, now)
            return
        conn.last_rx = now  # keepalive idles from here
        conn.on_segment(seg, now)
        if conn.state is not _CLOSED:
            self._arm(conn)

    def _receive_other(self, packet, ip) -> None:
        if ip.protocol != PROTO_ICMP:
            self.drops[DropReason.UNSUPPORTED_PROTOCOL.value] += 1
            return
        try:
            self.out.append(echo_reply_for(packet, ip))
            self.counters["icmp_echo_replies"] += 1
        except MalformedPacket as exc:
            self.drops[exc.reason.value] += 1

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

    def connect(self, remote_address, remote_port: int, now: float,
                local_port: int | None = None) -> int:
        """Active open. Raises TooManyConnections at TcpConfig.max_connections."""
        remote = addr_to_int(remote_address)
        if not 0 < remote_port < 65536:
            raise ValueError(f"port {remote_port} out of range 1..65535")
        if self._live >= self.config.max_connections:
            raise TooManyConnections(f"{self._live} connections: TcpConfig.max_connections is "
                                     f"{self.config.max_connections}")
        if local_port is None:
            local_port = self._ephemeral_port(remote, remote_port)
        elif (remote, remote_port, local_port) in self._conns:
            raise PortInUse(f"{self.address_str}:{local_port} -> "
                            f"{int_to_addr(remote)}:{remote_port} is in use")
        conn = self._new_connection(local_port, remote, remote_port, now)
        conn.open_active(now)
        self._arm(conn)
        return conn.id

    def _ephemeral_port(self, remote: int, rport: int) -> int:
        lo, hi = self.config.ephemeral_ports
        span = hi - lo + 1
        for _ in range(span):
            port = self._next_port
            self._next_port = lo + (port - lo + 1) % span
            if (remote, rport, port) not in self._conns and port not in self._listeners:
                return port
        raise NoFreePort(f"no free local port for {int_to_addr(remote)}:{rport}")

    def _new_connection(self, lport: int, remote: int, rport: int, now: float,
                        listener: Listener | None = None, iss: int | None = None) -> Connection:
        if iss is None:
            iss = initial_sequence_number(self.config.isn_secret, self.address, lport, remote,
                                          rport, now)
        conn = Connection(self, next(self._ids), lport, remote, rport, iss, now, listener)
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
        conn = self._new_connection(seg.dport, seg.src, seg.sport, now, listener)
        conn.open_passive(seg, now)
        self._arm(conn)

    def _send_cookie(self, listener: Listener, syn: Segment, now: float) -> None:
        """A SYN-ACK whose ISN is a cookie (tcp/syncookie.py): MSS only, no other option."""
        cfg = self.config
        cookie = make_cookie(cfg.isn_secret, self.address, syn.dport, syn.src, syn.sport,
                             syn.seq, syn.mss, now)
        listener.cookie_sent_at = now
        self.counters["syn_cookies_sent"] += 1
        self.out.append(build_segment(
            self.address, syn.src, syn.dport, syn.sport, cookie, (syn.seq + 1) & MASK,
            SYN | ACK, min(cfg.receive_buffer, 65535), build_options(mss=cfg.mss), ttl=cfg.ttl,
            csum_offload=cfg.tx_checksum_offload))

    def _cookie_ack(self, listener: Listener, seg: Segment, now: float) -> bool:
        """An ACK for a port with no connection: the end of a cookie handshake?

        True when the segment was taken (a connection made, or dropped for want of
        room); False when it is no cookie of ours and should be reset.
        """
        cfg = self.config
        peer_isn = (seg.seq - 1) & MASK
        mss = check_cookie(cfg.isn_secret, self.address, seg.dport, seg.src, seg.sport, peer_isn,
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
                                    iss=(seg.ack - 1) & MASK)
        conn.last_rx = now
        conn.open_cookie(seg, mss, now)
        if conn.state is not _CLOSED:
            self._arm(conn)
        return True

    def _may_reuse(self, tw: TimeWait, seg: Segment) -> bool:
        # RFC 6191: by timestamps when both incarnations have them, else a SYN beyond the
        # old connection's sequence space (TimeWait.may_reuse).
        return seg.dport in self._listeners and tw.may_reuse(seg, self.config.timestamps)

    # ------------------------------------------------------------ application calls

    def _get(self, conn_id: int) -> Connection:
        conn = self._by_id.get(conn_id)
        if conn is None or type(conn) is TimeWait:
            raise UnknownConnection(conn_id)
        return conn

    def send(self, conn_id: int, data, now: float) -> int:
        """Queue data; returns how much fit in the send buffer."""
        conn = self._by_id.get(conn_id)
        if type(conn) is TimeWait:
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
        if conn is None or type(conn) is TimeWait:
            return self._recv_leftover(conn_id, max_bytes)
        return conn.recv(max_bytes)

    def _recv_leftover(self, conn_id: int, max_bytes: int) -> bytes:
        buf = self._leftover.get(conn_id)
        if buf is None:
            return b""
        if max_bytes < 0 or max_bytes >= len(buf):
            del self._leftover[conn_id]
            return bytes(buf)
        data = bytes(buf[:max_bytes])
        del buf[:max_bytes]
        return data

    def recv_pending(self, conn_id: int) -> int:
        """Bytes received and not yet read."""
        conn = self._by_id.get(conn_id)
        if conn is None or type(conn) is TimeWait:
            return len(self._leftover.get(conn_id, b""))
        return len(conn.rcvbuf)

    def shutdown(self, conn_id: int, now: float) -> None:
        conn = self._get(conn_id)
        conn.shutdown(now)
        self._after_call(conn)

    def close(self, conn_id: int, now: float) -> None:
        conn = self._by_id.get(conn_id)
        if conn is None or type(conn) is TimeWait:
            return
        conn.close(now)
        self._after_call(conn)

    def abort(self, conn_id: int, now: float) -> None:
        conn = self._by_id.get(conn_id)
        if conn is None or type(conn) is TimeWait:
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

    def _arm(self, obj) -> None:
        """Make sure the heap holds an entry no later than obj's next deadline.

        A deadline that moves later keeps its early entry: when that fires,
        on_timer finds nothing due and the entry is pushed again. That keeps
        the per-ACK cost of re-arming the retransmission timer at nothing.
        """
        d = obj.next_deadline()
        if d is not None and (obj.armed is None or d < obj.armed):
            obj.armed = d
            heapq.heappush(self._timers, (d, next(self._tiebreak), obj))

    def next_deadline(self) -> float | None:
        timers = self._timers
        while timers and timers[0][2].armed != timers[0][0]:
            heapq.heappop(timers)  # stale: re-armed earlier or finished
        return timers[0][0] if timers else None

    def handle_timers(self, now: float) -> None:
        timers = self._timers
        while timers and timers[0][0] <= now:
            deadline, _, obj = heapq.heappop(timers)
            if obj.armed != deadline:
                continue
            obj.armed = None
            obj.on_timer(now)
            if obj.state is not State.CLOSED and self._by_id.get(obj.id) is obj:
                self._arm(obj)

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
        return State.CLOSED if conn is None else conn.state

    def connections(self, now: float = 0.0) -> list[dict]:
        """A snapshot for tools: 4-tuple, state, queues, timers, RTT."""
        rows = []
        for conn in self._by_id.values():
            row = conn.info(now)
            row["local"] = (self.address_str, conn.lport)
            row["remote"] = (int_to_addr(conn.remote), conn.rport)
            rows.append(row)
        for port, listener in self._listeners.items():
            rows.append({"conn_id": None, "state": str(State.LISTEN),
                         "local": (self.address_str, port), "remote": ("0.0.0.0", 0),
                         "half_open": listener.half_open, "accept_queue": listener.accept_queue,
                         "backlog": listener.backlog, "connections": listener.connections,
                         "max_connections": listener.max_connections})
        return rows

    # ------------------------------------------------------------ for connections (Host)

    def emit(self, event) -> None:
        self._events.append(event)

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] += n

    def state_changed(self, conn, old: State, new: State, cause: str, now: float) -> None:
        self._events.append(ev.StateChanged(
            conn.id, old, new, cause, (self.address_str, conn.lport),
            (int_to_addr(conn.remote), conn.rport), conn.snd_nxt, conn.rcv_nxt, now))

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
        self.out.append(build_segment(self.address, seg.src, seg.dport, seg.sport, seq, ack,
                                      rflags, 0, ttl=cfg.ttl,
                                      csum_offload=cfg.tx_checksum_offload))

    def accepted(self, conn: Connection) -> None:
        listener = conn.listener
        listener.half_open -= 1
        listener.accept_queue += 1
        conn.accepted = True
        self._awaiting_accept[conn.id] = conn
        self._events.append(ev.ConnectionAccepted(conn.id, conn.lport,
                                                  (int_to_addr(conn.remote), conn.rport)))

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
        tw = TimeWait(self, conn, now)
        self._conns[tw.key] = tw
        self._by_id[tw.id] = tw
        self._events.append(ev.ConnectionClosed(conn.id))
        self.counters["time_wait_entered"] += 1
        self._arm(tw)

    def time_wait_expired(self, tw: TimeWait, now: float) -> None:
        self._drop_time_wait(tw)
        self.state_changed(tw, State.TIME_WAIT, State.CLOSED, "2msl timeout", now)

    def _drop_time_wait(self, tw: TimeWait) -> None:
        tw.armed = None
        if self._conns.get(tw.key) is tw:
            del self._conns[tw.key]
        if self._by_id.get(tw.id) is tw:
            del self._by_id[tw.id]

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
        return sum(1 for c in self._by_id.values() if type(c) is TimeWait)

    def connection_count(self) -> int:
        """Connections that count against max_connections (all but TIME-WAIT entries)."""
        return self._live

    def __repr__(self) -> str:
        return f"<Stack {self.address_str} connections={len(self._by_id)}>"

