"""Round-trip time estimation and the retransmission timeout (RFC 6298)."""

from __future__ import annotations

_GRANULARITY = 0.001


class RttEstimator:
    __slots__ = ("srtt", "rttvar", "rto", "rto_min", "rto_max")

    def __init__(self, rto_initial: float, rto_min: float, rto_max: float):
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.rto = rto_initial
        self.rto_min = rto_min
        self.rto_max = rto_max

    def sample(self, rtt: float) -> None:
        if rtt < 0:
            return
        if self.srtt is None:
            self.srtt = rtt
            self.rttvar = rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt
        rto = self.srtt + max(_GRANULARITY, 4 * self.rttvar)
        self.rto = min(max(rto, self.rto_min), self.rto_max)

    def backoff(self) -> None:
        self.rto = min(self.rto * 2, self.rto_max)

    def reset_backoff(self) -> None:
        """New data was acknowledged after timeouts: the path works again.

        RTO collapses to the estimate instead of staying backed off until a
        fresh sample (which Karn's rule may withhold for a long time while
        only retransmissions are in flight), as BSD and Linux do.
        """
        if self.srtt is not None:
            rto = self.srtt + max(_GRANULARITY, 4 * self.rttvar)
            self.rto = min(max(rto, self.rto_min), self.rto_max)
