"""Round-trip time estimation and the retransmission timeout (RFC 6298)."""

from __future__ import annotations

from .seq import HALF, MASK

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


class RttSampling:
    """Where Connection takes its RTT samples (a mixin: the fields live on Connection)."""

    __slots__ = ()

    def _rtt_ack(self, ack: int, now: float, tsecr: int | None = None) -> float | None:
        """An RTT sample from an ACK that advanced SND.UNA; the sample (s), or None.

        With timestamps (RFC 7323 4.1) from every such ACK: SEG.TSecr is the TSval of the
        copy that made the peer ACK, so a retransmission is timed as itself and Karn's
        ambiguity does not arise. A TSecr is used only if it is one we can have sent (no
        later than now, no earlier than the connection). Karn's caution remains in one
        form: a TSecr older than our latest retransmission is not used. Such an ACK may
        answer the retransmitted copy of data the peer already had (its ACKs were lost),
        and the peer echoes then the TSval of the last segment it took in order, from
        before the retransmission: the sample would include the whole timeout. Without
        timestamps, one segment at a time and never a retransmitted one (Karn).

        One sample per TSecr: the ACKs after the first that echo the same TSval (at high
        rates, many: the clock ticks once a millisecond) would only measure it later.
        """
        if self.ts_ok:
            if tsecr is not None and tsecr != self.ts_sampled:
                rtx = self.rtx_ts
                if rtx is not None:
                    if ((tsecr - rtx) & MASK) >= HALF:
                        return None  # echoes a segment sent before the latest retransmission
                    self.rtx_ts = None
                ms = int(now * 1000)
                rtt = (ms + self.ts_offset - tsecr) & MASK
                if rtt <= ms - self.ts_base:
                    self.ts_sampled = tsecr
                    self.rtt.sample(rtt / 1000)
                    return rtt / 1000
            return None
        rs = self.rtt_seq
        if rs is not None and 0 < ((ack - rs) & MASK) < HALF:
            sample = now - self.rtt_time
            self.rtt.sample(sample)
            self.rtt_seq = None
            return sample
        return None
