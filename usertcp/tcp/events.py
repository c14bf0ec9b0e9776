"""Events the engine reports to its driver; each names its connection.

Events are read-only by convention, not frozen: a frozen dataclass pays for every field at
construction, and the engine makes several events per connection.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..wire.ipv4 import int_to_addr
from .state import State


@dataclass(slots=True)
class Event:
    conn_id: int


@dataclass(slots=True)
class ConnectionAccepted(Event):
    """A passive open completed; the connection waits in the accept queue."""

    local_port: int
    remote: tuple[str, int]
    local_address: str = ""  # the address the peer dialled (any, under listen_any)
    listener_port: int = -1  # the listener's port; 0 for listen_any


@dataclass(slots=True)
class ConnectionRequested(Event):
    """Under listen_any(defer=True): a SYN awaits admit(conn_id) or refuse(conn_id)."""

    local: tuple[str, int]  # what the peer dialled
    remote: tuple[str, int]


@dataclass(slots=True)
class DatagramReceived(Event):
    """Under forward_datagrams: a UDP datagram for any address (conn_id 0)."""

    src: tuple[str, int]
    dst: tuple[str, int]
    data: bytes


@dataclass(slots=True)
class EchoRequested(Event):
    """Under forward_datagrams: a ping of an address other than the stack's (conn_id 0)."""

    src: str
    dst: str
    ident: int
    seq: int
    data: bytes


@dataclass(slots=True)
class Connected(Event):
    """An active open completed."""


@dataclass(slots=True)
class DataReceived(Event):
    """Data is ready for recv(); reported once until recv() drains it."""


@dataclass(slots=True)
class PeerClosed(Event):
    """The peer's FIN arrived in order: no more data will come."""


@dataclass(slots=True)
class ConnectionReset(Event):
    """An RST ended the connection; `refused` when it answered our SYN."""

    refused: bool = False


@dataclass(slots=True)
class ConnectionUnreachable(Event):
    """An ICMP error ended our SYN: `errno` as Linux's connect() reports it."""

    errno: int


@dataclass(slots=True)
class ConnectionTimedOut(Event):
    """Retransmissions (or keepalive probes) gave up."""


@dataclass(slots=True)
class ConnectionClosed(Event):
    """The connection is finished for the application (TIME-WAIT or CLOSED)."""


class StateChanged(Event):
    """A state transition. `local` and `remote` are (address, port), made only when read:
    most transitions are never logged."""

    __slots__ = (
        "_local",
        "_lport",
        "_remote",
        "_rport",
        "ack",
        "cause",
        "new",
        "old",
        "seq",
        "time",
    )

    def __init__(self, conn_id: int, old: State, new: State, cause: str, local: int, lport: int,
                 remote: int, rport: int, seq: int, ack: int, time: float) -> None:
        self.conn_id = conn_id
        self.old = old
        self.new = new
        self.cause = cause
        self._local = local  # addresses as the engine keeps them (ints)
        self._lport = lport
        self._remote = remote
        self._rport = rport
        self.seq = seq  # SND.NXT after the transition
        self.ack = ack  # RCV.NXT after the transition
        self.time = time

    @property
    def local(self) -> tuple[str, int]:
        return (int_to_addr(self._local), self._lport)

    @property
    def remote(self) -> tuple[str, int]:
        return (int_to_addr(self._remote), self._rport)

    def _fields(self) -> tuple:
        return (self.conn_id, self.old, self.new, self.cause, self._local, self._lport,
                self._remote, self._rport, self.seq, self.ack, self.time)

    def __eq__(self, other: object) -> bool:
        if type(other) is not StateChanged:
            return NotImplemented
        return self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]  # mutable, as the other events

    def __repr__(self) -> str:
        return (f"StateChanged(conn_id={self.conn_id}, old={self.old}, new={self.new}, "
                f"cause={self.cause!r}, local={self.local}, remote={self.remote}, "
                f"seq={self.seq}, ack={self.ack}, time={self.time})")
