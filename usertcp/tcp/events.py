"""Events the engine reports to its driver; each names its connection."""

from __future__ import annotations

from dataclasses import dataclass

from .state import State


@dataclass(frozen=True, slots=True)
class Event:
    conn_id: int


@dataclass(frozen=True, slots=True)
class ConnectionAccepted(Event):
    """A passive open completed; the connection waits in the accept queue."""

    local_port: int
    remote: tuple[str, int]
    local_address: str = ""  # the address the peer dialled (any, under listen_any)
    listener_port: int = -1  # the listener's port; 0 for listen_any


@dataclass(frozen=True, slots=True)
class ConnectionRequested(Event):
    """Under listen_any(defer=True): a SYN awaits admit(conn_id) or refuse(conn_id)."""

    local: tuple[str, int]  # what the peer dialled
    remote: tuple[str, int]


@dataclass(frozen=True, slots=True)
class DatagramReceived(Event):
    """Under forward_datagrams: a UDP datagram for any address (conn_id 0)."""

    src: tuple[str, int]
    dst: tuple[str, int]
    data: bytes


@dataclass(frozen=True, slots=True)
class EchoRequested(Event):
    """Under forward_datagrams: a ping of an address other than the stack's (conn_id 0)."""

    src: str
    dst: str
    ident: int
    seq: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Connected(Event):
    """An active open completed."""


@dataclass(frozen=True, slots=True)
class DataReceived(Event):
    """Data is ready for recv(); reported once until recv() drains it."""


@dataclass(frozen=True, slots=True)
class PeerClosed(Event):
    """The peer's FIN arrived in order: no more data will come."""


@dataclass(frozen=True, slots=True)
class ConnectionReset(Event):
    """An RST ended the connection; `refused` when it answered our SYN."""

    refused: bool = False


@dataclass(frozen=True, slots=True)
class ConnectionUnreachable(Event):
    """An ICMP error ended our SYN: `errno` as Linux's connect() reports it."""

    errno: int


@dataclass(frozen=True, slots=True)
class ConnectionTimedOut(Event):
    """Retransmissions (or keepalive probes) gave up."""


@dataclass(frozen=True, slots=True)
class ConnectionClosed(Event):
    """The connection is finished for the application (TIME-WAIT or CLOSED)."""


@dataclass(frozen=True, slots=True)
class StateChanged(Event):
    old: State
    new: State
    cause: str
    local: tuple[str, int]
    remote: tuple[str, int]
    seq: int  # SND.NXT after the transition
    ack: int  # RCV.NXT after the transition
    time: float
