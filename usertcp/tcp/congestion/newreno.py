"""NewReno congestion control: RFC 5681 3.1 window growth and reduction.

- Slow start (cwnd < ssthresh): cwnd += bytes acknowledged, with no per-ACK limit. RFC 3465
  would cap one ACK at L = 2 SMSS; Linux does not, and with segmentation offload one ACK may
  cover dozens of segments, so the cap would throttle exactly the fast paths.
- Congestion avoidance: cwnd += max(SMSS * SMSS // cwnd, 1) per ACK (RFC 5681 eq. 3), one ACK
  at a time whatever it covers: this is the engine's historical arithmetic and its ladders
  depend on it.
- Loss (fast recovery, RACK) and the first RTO: ssthresh = max(FlightSize / 2, 2 * SMSS)
  (RFC 5681 eq. 4), FlightSize = SND.MAX - SND.UNA modulo 2**32.
- No HyStart: NewReno is the plain reference algorithm.
"""

from __future__ import annotations

from .base import MASK, CongestionControl


class NewReno(CongestionControl):
    name = "newreno"
    __slots__ = ()

    def on_ack(self, conn, acked: int, rtt: float | None, now: float) -> None:
        cwnd = conn.cwnd
        if cwnd < conn.ssthresh:
            conn.cwnd = cwnd + acked
        else:
            mss = conn.snd_mss
            conn.cwnd = cwnd + max(mss * mss // cwnd, 1)

    def _reduce(self, conn, now: float) -> int:
        flight = (conn.snd_max - conn.snd_una) & MASK
        return max(flight // 2, 2 * conn.snd_mss)
