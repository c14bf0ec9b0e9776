"""The interface every congestion controller implements, and what they share.

One controller per connection. It reads and writes the connection's hot fields directly
(`cwnd`, `ssthresh` in bytes) and reads `snd_mss`, `snd_una`, `snd_max`; time comes in as
`now` (float seconds). The connection decides *when* (ACK of new data outside recovery, loss
detected, recovery over, RTO, spurious response found); the controller decides *how much*.

Shared decisions, RFC 5681 unless the subclass says otherwise:
- Initial window: `initial_window` segments (RFC 6928's IW10 by default, as Linux), ssthresh
  "arbitrarily high" (1 << 30, the value the connection starts with).
- on_congestion leaves cwnd alone: during recovery the connection's PRR (RFC 6937) owns it.
- on_recovery_end sets cwnd = ssthresh (RFC 5681 3.2 step 6, RFC 6937's end of recovery).
- on_rto: ssthresh is reduced only on the first expiry of a series (RFC 5681 eq. 4 is about
  the first; later expiries would halve an already collapsed window); cwnd = 1 SMSS always.
- undo (RFC 3708/4015, F-RTO): restores the larger of the current and saved cwnd/ssthresh and
  the algorithm's own state from before the response. The state saved is the one from before
  the first response of an episode: a later RTO in the same episode (first=False) keeps it.
"""

from __future__ import annotations

INFINITE_SSTHRESH = 1 << 30
MASK = 0xFFFFFFFF
HALF = 1 << 31


class CongestionControl:
    name = ""
    __slots__ = ("_undo", "initial_window")

    def __init__(self, initial_window: int = 10):
        self.initial_window = initial_window  # segments
        self._undo: tuple | None = None

    # -- the interface ---------------------------------------------------------------------

    def on_init(self, conn, now: float) -> None:
        conn.cwnd = self.initial_window * conn.snd_mss
        conn.ssthresh = INFINITE_SSTHRESH
        self._undo = None
        self._reset(conn, now)

    def on_ack(self, conn, acked: int, rtt: float | None, now: float) -> None:
        raise NotImplementedError

    def on_congestion(self, conn, now: float) -> None:
        self._save(conn)
        conn.ssthresh = self._reduce(conn, now)

    def on_recovery_end(self, conn, now: float) -> None:
        conn.cwnd = conn.ssthresh

    def on_rto(self, conn, now: float, first: bool) -> None:
        if first:
            self._save(conn)
            conn.ssthresh = self._reduce(conn, now)
        conn.cwnd = conn.snd_mss  # RFC 5681 3.1: the loss window
        self._timeout(conn, now)

    def undo(self, conn) -> None:
        saved = self._undo
        if saved is None:
            return
        self._undo = None
        cwnd, ssthresh, state = saved
        conn.cwnd = max(conn.cwnd, cwnd)
        conn.ssthresh = max(conn.ssthresh, ssthresh)
        self._restore(state)

    def info(self) -> dict:
        return {}

    # -- what subclasses fill in -------------------------------------------------------------

    def _reset(self, conn, now: float) -> None:
        """Forget all algorithm state (a new connection)."""

    def _reduce(self, conn, now: float) -> int:
        """A congestion event: update own state, return the new ssthresh."""
        raise NotImplementedError

    def _timeout(self, conn, now: float) -> None:
        """After an RTO collapsed cwnd to one segment."""

    def _state(self):
        """A snapshot of the algorithm's own state, for undo."""
        return

    def _restore(self, state) -> None:
        pass

    def _save(self, conn) -> None:
        self._undo = (conn.cwnd, conn.ssthresh, self._state())
