"""Splitting a capture's TCP packets into connections, and choosing one of them.

Packets belong together by their pair of endpoints. A 4-tuple can be used again: a SYN starts a
new connection when its sender already opened this one with another ISN, when the earlier
connection ended (FINs both ways, or a RST) or lay idle longer than TIME-WAIT, or when the earlier
packets showed no SYN at all (their start was not captured, so this SYN is not part of it). A
retransmitted SYN (the same ISN) and the other side's SYN (SYN-ACK, simultaneous open) stay.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from ..wire.tcp import ACK, FIN, RST, SYN
from .model import Packet

Endpoint = tuple[str, int]

TIME_WAIT = 60.0  # seconds: Linux's TIME-WAIT; after that much silence a SYN is a new connection


def _hostport(endpoint: Endpoint) -> str:
    host, port = endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass
class Connection:
    number: int  # 1-based, in the order of first packets
    endpoints: tuple[Endpoint, Endpoint]  # (a, b): a opened it (or sent the first packet seen)
    packets: list[Packet] = field(default_factory=list)
    bytes: list[int] = field(default_factory=lambda: [0, 0])  # payload a->b, b->a
    syn_seen: bool = False  # a SYN without ACK from a was captured
    isn: list[int | None] = field(default_factory=lambda: [None, None])  # a's, b's, from SYNs
    fins: list[bool] = field(default_factory=lambda: [False, False])  # a sent FIN, b sent FIN
    reset: bool = False

    @property
    def first(self) -> float:
        return self.packets[0].time

    @property
    def last(self) -> float:
        return self.packets[-1].time

    @property
    def ended(self) -> bool:
        return self.reset or all(self.fins)

    @property
    def ports(self) -> tuple[int, int]:
        return (self.endpoints[0][1], self.endpoints[1][1])

    def side(self, packet: Packet) -> int:
        """0 when a sent the packet, 1 when b did."""
        return 0 if packet.source == self.endpoints[0] else 1

    def add(self, packet: Packet) -> None:
        side = self.side(packet)
        self.packets.append(packet)
        self.bytes[side] += packet.length
        if packet.flags & SYN and self.isn[side] is None:
            self.isn[side] = packet.seq
            if side == 0 and not packet.flags & ACK:
                self.syn_seen = True
        if packet.flags & FIN:
            self.fins[side] = True
        if packet.flags & RST:
            self.reset = True

    def state(self) -> str:
        if self.reset:
            return "reset"
        if all(self.fins):
            return "closed"
        if any(self.fins):
            return "half-closed"
        return "open"

    def summary(self, *, unicode: bool = True) -> str:
        """One line for a list of connections: number, endpoints (opener first), packets,
        payload bytes each way, duration, what was seen of the start and the end, the state:
        `  1  10.0.0.1:40000 → 10.0.0.2:80     12 packets  3000/0 bytes  0.052 s  SYN … FIN FIN
        (closed)`."""
        more = "…" if unicode else "..."
        events = ["SYN" if self.syn_seen else more]
        if self.syn_seen:
            events.append(more)
        events += ["FIN"] * sum(self.fins) + (["RST"] if self.reset else [])
        arrow = "→" if unicode else "->"
        ends = f"{_hostport(self.endpoints[0])} {arrow} {_hostport(self.endpoints[1])}"
        count = len(self.packets)
        return (f"{self.number:3d}  {ends:<31}{count:4d} packet{'s' if count != 1 else ' '}  "
                f"{self.bytes[0]}/{self.bytes[1]} bytes  {self.last - self.first:.3f} s  "
                f"{' '.join(events)}  ({self.state()})")


def _starts_new(conn: Connection, packet: Packet) -> bool:
    """Whether a SYN belongs to a new use of `conn`'s 4-tuple."""
    known = conn.isn[conn.side(packet)]
    if known is not None:
        return known != packet.seq
    if conn.ended or packet.time - conn.last > TIME_WAIT:
        return True
    return conn.isn[0] is None and conn.isn[1] is None  # its start was never seen


def split(packets: Iterable[Packet]) -> list[Connection]:
    """The packets grouped into connections, numbered in the order of their first packets."""
    current: dict[frozenset[Endpoint], Connection] = {}
    connections: list[Connection] = []
    for packet in packets:
        key = frozenset((packet.source, packet.destination))
        conn = current.get(key)
        if conn is None or (packet.flags & SYN and _starts_new(conn, packet)):
            opener = packet.source
            if packet.flags & SYN and packet.flags & ACK:
                opener = packet.destination  # the SYN-ACK answers the opener's unseen SYN
            other = packet.destination if opener == packet.source else packet.source
            conn = Connection(len(connections) + 1, (opener, other))
            connections.append(conn)
            current[key] = conn
        conn.add(packet)
    return connections


def _listing(connections: Iterable[Connection]) -> str:
    return "\n".join(c.summary() for c in connections)


def select(connections: list[Connection], *, port: int | None = None,
           number: int | None = None) -> Connection:
    """The connection chosen by number and/or port; ValueError, listing the choices, otherwise.

    Without either, a capture with exactly one connection gives that one.
    """
    if not connections:
        raise ValueError("the capture holds no TCP connection")
    chosen = connections
    if port is not None:
        chosen = [c for c in connections if port in c.ports]
        if not chosen:
            ports = sorted({p for c in connections for p in c.ports})
            raise ValueError(f"no connection uses port {port}; the ports seen are "
                             + ", ".join(map(str, ports)))
    if number is not None:
        picked = [c for c in chosen if c.number == number]
        if not picked:
            where = f" on port {port}" if port is not None else ""
            numbers = ", ".join(str(c.number) for c in chosen)
            raise ValueError(f"no connection number {number}{where}; the choices are {numbers}:"
                             f"\n{_listing(chosen)}")
        return picked[0]
    if len(chosen) > 1:
        what = f"on port {port}" if port is not None else "in the capture"
        raise ValueError(f"{len(chosen)} connections {what}; choose one by its number:"
                         f"\n{_listing(chosen)}")
    return chosen[0]
