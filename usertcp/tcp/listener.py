"""A listening port: bounds on half-open, not-yet-accepted and live connections."""

from __future__ import annotations


class Listener:
    """What the stack keeps per listening port.

    - `backlog`: connections established and waiting for the application
      (ConnectionAccepted not yet taken). A SYN that arrives while this is full is
      dropped, not refused: the client retransmits and may find room then.
    - `syn_backlog`: connections in SYN-RECEIVED. A SYN beyond it is answered with
      a SYN cookie (TcpConfig.syn_cookies) or else dropped.
    - `max_connections`: connections born of this listener that are still alive
      (every state but TIME-WAIT, half-open ones included); None is no limit. A SYN
      (or a cookie's ACK) beyond it is dropped.
    Every drop counts `listen_overflow`.
    """

    __slots__ = ("port", "backlog", "syn_backlog", "max_connections", "half_open",
                 "accept_queue", "connections", "cookie_sent_at")

    def __init__(self, port: int, backlog: int, syn_backlog: int,
                 max_connections: int | None = None):
        self.port = port
        self.backlog = backlog  # established, waiting for the application
        self.syn_backlog = syn_backlog  # SYN-RECEIVED
        self.max_connections = max_connections
        self.half_open = 0
        self.accept_queue = 0
        self.connections = 0  # alive, not in TIME-WAIT
        self.cookie_sent_at: float | None = None  # when this port last answered with a cookie

    def has_room(self) -> bool:
        """Room for one more connection, half-open or (from a cookie) established."""
        return self.accept_queue < self.backlog and (
            self.max_connections is None or self.connections < self.max_connections)
