"""Connection states, named as in RFC 9293."""

import enum


class State(enum.Enum):
    CLOSED = "CLOSED"
    LISTEN = "LISTEN"
    SYN_SENT = "SYN-SENT"
    SYN_RECEIVED = "SYN-RECEIVED"
    ESTABLISHED = "ESTABLISHED"
    FIN_WAIT_1 = "FIN-WAIT-1"
    FIN_WAIT_2 = "FIN-WAIT-2"
    CLOSE_WAIT = "CLOSE-WAIT"
    CLOSING = "CLOSING"
    LAST_ACK = "LAST-ACK"
    TIME_WAIT = "TIME-WAIT"

    def __str__(self) -> str:
        return self.value

    # Members are singletons compared by identity: hash them so too, in C. Enum's own hashes
    # the name in Python, and the transition tables are looked up by state on every change.
    __hash__ = object.__hash__


# The states as plain module names, for the engine's `state is X` tests (a global lookup, not
# an attribute lookup on the Enum, on the per-segment path).
CLOSED = State.CLOSED
LISTEN = State.LISTEN
SYN_SENT = State.SYN_SENT
SYN_RECEIVED = State.SYN_RECEIVED
ESTABLISHED = State.ESTABLISHED
FIN_WAIT_1 = State.FIN_WAIT_1
FIN_WAIT_2 = State.FIN_WAIT_2
CLOSE_WAIT = State.CLOSE_WAIT
CLOSING = State.CLOSING
LAST_ACK = State.LAST_ACK
TIME_WAIT = State.TIME_WAIT

# States in which our side can still send new data.
CAN_SEND = frozenset({State.SYN_SENT, State.SYN_RECEIVED, State.ESTABLISHED, State.CLOSE_WAIT})
# States in which data from the peer is accepted into the receive buffer.
CAN_RECEIVE = frozenset({State.ESTABLISHED, State.FIN_WAIT_1, State.FIN_WAIT_2})
