"""The state transitions that are a table (RFC 9293 3.10.4, 3.10.7.4), in one place.

Each maps the state a connection is in to the state an event moves it to; a state missing
from a table is one where the event changes nothing. The connection looks them up and
does what entering the new state takes (TIME-WAIT, CLOSED: Connection._enter).
"""

from __future__ import annotations

from .state import State

S = State

# CLOSE (the application's shutdown): our FIN is queued behind the data.
ON_CLOSE = {
    S.ESTABLISHED: S.FIN_WAIT_1,
    S.SYN_RECEIVED: S.FIN_WAIT_1,  # the FIN goes once the handshake completes
    S.CLOSE_WAIT: S.LAST_ACK,
}

# Eighth step, the peer's FIN arrives in order. FIN-WAIT-1 whose own FIN is already
# acknowledged by the same segment goes straight to TIME-WAIT (FIN_ARRIVES_OURS_ACKED).
ON_FIN = {
    S.SYN_RECEIVED: S.CLOSE_WAIT,
    S.ESTABLISHED: S.CLOSE_WAIT,
    S.FIN_WAIT_1: S.CLOSING,
    S.FIN_WAIT_2: S.TIME_WAIT,
}
ON_FIN_OURS_ACKED = {S.FIN_WAIT_1: S.TIME_WAIT}

# Fifth step, an ACK that acknowledges our FIN.
ON_FIN_ACKED = {
    S.FIN_WAIT_1: S.FIN_WAIT_2,
    S.CLOSING: S.TIME_WAIT,
    S.LAST_ACK: S.CLOSED,
}

# States in which a retransmitted FIN of the peer's (already taken) is ACKed again.
FIN_SEEN = frozenset({S.CLOSE_WAIT, S.CLOSING, S.LAST_ACK, S.TIME_WAIT})
