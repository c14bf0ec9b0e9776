"""The TCP engine: connection state machine, buffers, timers. Sans-IO."""

from .config import TcpConfig
from .errors import (ConnectionNotWritable, NoFreePort, PortInUse, TcpError, TooManyConnections,
                     UnknownConnection)
from .events import (ConnectionAccepted, ConnectionClosed, ConnectionReset, ConnectionTimedOut,
                     Connected, DataReceived, Event, PeerClosed, StateChanged)
from .state import State

__all__ = [
    "Connected", "ConnectionAccepted", "ConnectionClosed", "ConnectionNotWritable",
    "ConnectionReset", "ConnectionTimedOut", "DataReceived", "Event", "NoFreePort",
    "PeerClosed", "PortInUse", "State", "StateChanged", "TcpConfig", "TcpError",
    "TooManyConnections", "UnknownConnection",
]
