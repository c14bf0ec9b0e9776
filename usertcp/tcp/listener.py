"""A listening port: bounds on half-open and not-yet-accepted connections."""

from __future__ import annotations


class Listener:
    __slots__ = ("port", "backlog", "syn_backlog", "half_open", "accept_queue")

    def __init__(self, port: int, backlog: int, syn_backlog: int):
        self.port = port
        self.backlog = backlog  # established, waiting for the application
        self.syn_backlog = syn_backlog  # SYN-RECEIVED
        self.half_open = 0
        self.accept_queue = 0

    def has_room(self) -> bool:
        return self.half_open < self.syn_backlog and self.accept_queue < self.backlog
