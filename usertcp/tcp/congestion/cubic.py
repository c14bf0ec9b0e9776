"""CUBIC (RFC 9438) with HyStart++ (RFC 9406) in its initial slow start.

Units: windows are kept in bytes (cwnd, W_max, W_est, cwnd_epoch); the curve's constant C is
per segment, so W_cubic(t) = C * SMSS * (t - K)**3 + W_max in bytes, and K (seconds) is
cbrt((W_max - cwnd_epoch) / (C * SMSS)), RFC 9438 4.2 eq. 2.

RFC 9438, section by section, and the choices it leaves:
- 4.2: the epoch starts at the first ACK in congestion avoidance after a congestion event,
  an RTO or HyStart++'s exit; cwnd_epoch is cwnd then. If cwnd_epoch >= W_max (no loss yet,
  e.g. after HyStart++ exit), K = 0 and W_max = cwnd_epoch, as after a timeout (4.8), so the
  curve starts flat at the current window instead of far below it.
- 4.3: W_est starts at cwnd_epoch and grows by alpha_cubic * acked / cwnd; alpha becomes 1
  once W_est >= cwnd_prior. In the Reno-friendly region (W_cubic(t) < W_est) cwnd = W_est, but
  never lower than cwnd: congestion avoidance does not shrink the window.
- 4.4/4.5: target = W_cubic(t + RTT) clamped to [cwnd, 1.5 cwnd], RTT being the smoothed RTT
  (4.4 says smoothed; this keeps its own EWMA, gain 1/8, of the samples on_ack is given, and
  with no sample yet there is no lookahead); cwnd grows by (target - cwnd) * acked / cwnd, per
  byte acknowledged rather than per ACK so that one ACK for 44 offloaded segments counts as
  44, and never past target. Fractions of a byte are carried to the next ACK.
- 4.6: ssthresh = max(floor(cwnd * beta), 2 SMSS) with beta = 0.7, from cwnd (not flight
  size); cwnd itself is left to the connection's PRR; recovery ends at cwnd = ssthresh.
- 4.7: fast convergence on: a loss below the previous W_max sets W_max = cwnd * (1 + beta) / 2.
- 4.8: an RTO reduces ssthresh as 4.6 (on the first expiry only), and the first congestion
  avoidance after it uses K = 0, W_max = cwnd_epoch.
- Slow start after a loss (ssthresh finite) stops at ssthresh; the rest of that ACK's bytes go
  to congestion avoidance (as Linux), so one big cumulative ACK after an RTO cannot overshoot.
- Not done here: 4.2's exclusion of application-limited time from t (the connection knows
  when it was idle, the controller does not); ECN.

HyStart++ (RFC 9406 4.2), always on, only while ssthresh is still the initial "infinity":
- A round starts at the first ACK after the previous round ended, with windowEnd =
  SND.MAX then; it ends on the ACK for which SND.UNA >= windowEnd.
- Each ACK first grows cwnd (slow start: + acked; CSS: + acked / 4, remainder carried) and
  then records its RTT sample. No L limit on the growth per ACK (see NewReno: with
  segmentation offload one ACK may acknowledge 44 segments, and Linux applies none).
- After N_RTT_SAMPLE = 8 samples in a round with both round minimums known: slow start enters
  CSS when currentRoundMinRTT >= lastRoundMinRTT + clamp(lastRoundMinRTT / 8, 4 ms, 16 ms);
  CSS goes back to slow start when currentRoundMinRTT < cssBaselineMinRtt.
- CSS ends, with ssthresh = cwnd, at the end of its CSS_ROUNDS = 5th round; the round during
  which CSS began counts as its first.
- A loss or RTO ends HyStart++: ssthresh is finite from then on, and later slow starts are
  plain (RFC 9406 4.2: use HyStart++ for the initial slow start only). undo of a spurious
  response restores the infinite ssthresh and with it HyStart++'s phase.
"""

from __future__ import annotations

import math

from .base import HALF, INFINITE_SSTHRESH, MASK, CongestionControl

C = 0.4  # segments / s**3
BETA_TENTHS = 7  # beta_cubic = 0.7, kept in tenths so ssthresh is an exact integer
BETA = BETA_TENTHS / 10
ALPHA = 3 * (1 - BETA) / (1 + BETA)  # alpha_cubic, RFC 9438 4.3

N_RTT_SAMPLE = 8
MIN_RTT_THRESH = 0.004
MAX_RTT_THRESH = 0.016
MIN_RTT_DIVISOR = 8
CSS_GROWTH_DIVISOR = 4
CSS_ROUNDS = 5

_INF = math.inf


class Cubic(CongestionControl):
    name = "cubic"
    __slots__ = (
        "_after_rto",
        "_carry",
        "_css",
        "_css_baseline",
        "_css_carry",
        "_css_rounds",
        "_cur_min",
        "_cwnd_epoch",
        "_cwnd_prior",
        "_epoch",
        "_k",
        "_last_min",
        "_min_rtt",
        "_phase",
        "_samples",
        "_srtt",
        "_w_est",
        "_w_max",
        "_window_end",
    )

    def __init__(self, initial_window: int = 10):
        super().__init__(initial_window)
        self._reset(None, 0.0)

    def _reset(self, conn, now: float) -> None:
        self._w_max = 0.0  # bytes; 0: no congestion event yet
        self._k = 0.0
        self._epoch: float | None = None
        self._cwnd_epoch = 0
        self._w_est = 0.0
        self._cwnd_prior = 0.0
        self._carry = 0.0
        self._after_rto = False
        self._srtt: float | None = None
        self._min_rtt = _INF
        self._phase = "ss"
        self._window_end: int | None = None
        self._last_min = _INF
        self._cur_min = _INF
        self._samples = 0
        self._css = False
        self._css_baseline = _INF
        self._css_rounds = 0
        self._css_carry = 0

    # -- ACKs --------------------------------------------------------------------------------

    def on_ack(self, conn, acked: int, rtt: float | None, now: float) -> None:
        if rtt is not None and rtt >= 0:
            srtt = self._srtt
            self._srtt = rtt if srtt is None else srtt + (rtt - srtt) / 8
            self._min_rtt = min(self._min_rtt, rtt)
        if acked <= 0:
            return
        cwnd = conn.cwnd
        ssthresh = conn.ssthresh
        if cwnd < ssthresh:
            if ssthresh >= INFINITE_SSTHRESH:
                self._hystart(conn, acked, rtt)
                return
            self._phase = "ss"
            room = ssthresh - cwnd
            if acked <= room:
                conn.cwnd = cwnd + acked
                return
            conn.cwnd = ssthresh
            acked -= room
        self._avoid(conn, acked, now)

    def _w_cubic(self, t: float, mss: int) -> float:
        return C * mss * (t - self._k) ** 3 + self._w_max

    def _avoid(self, conn, acked: int, now: float) -> None:
        """RFC 9438 4.2-4.5: one ACK in congestion avoidance."""
        self._phase = "ca"
        mss = conn.snd_mss
        cwnd = max(conn.cwnd, 1)
        if self._epoch is None:
            self._epoch = now
            self._cwnd_epoch = cwnd
            self._w_est = float(cwnd)
            self._carry = 0.0
            if self._after_rto or self._w_max <= cwnd:
                self._w_max = float(cwnd)
                self._k = 0.0
            else:
                self._k = math.cbrt((self._w_max - cwnd) / (C * mss))
            self._after_rto = False
        t = now - self._epoch
        if t < 0:
            t = 0.0
        alpha = 1.0 if self._w_est >= self._cwnd_prior else ALPHA
        self._w_est += alpha * acked * mss / cwnd
        if self._w_cubic(t, mss) < self._w_est:  # Reno-friendly region
            w_est = int(self._w_est)
            if w_est > cwnd:
                conn.cwnd = w_est
                self._carry = 0.0
            return
        rtt = self._srtt or 0.0
        target = self._w_cubic(t + rtt, mss)
        if target <= cwnd:
            return
        target = min(target, 1.5 * cwnd)
        room = target - cwnd
        grow = room * acked / cwnd + self._carry
        grow = min(grow, room)
        whole = int(grow)
        self._carry = grow - whole
        conn.cwnd = cwnd + whole

    def _hystart(self, conn, acked: int, rtt: float | None) -> None:
        """RFC 9406 4.2: slow start and Conservative Slow Start, one ACK."""
        if self._window_end is None:  # a new round
            self._window_end = conn.snd_max
            self._last_min = self._cur_min
            self._cur_min = _INF
            self._samples = 0
        if self._css:
            carry = self._css_carry + acked
            grow = carry // CSS_GROWTH_DIVISOR
            self._css_carry = carry - grow * CSS_GROWTH_DIVISOR
            conn.cwnd += grow
        else:
            conn.cwnd += acked
        if rtt is not None and rtt >= 0:
            self._cur_min = min(self._cur_min, rtt)
            self._samples += 1
        if self._samples >= N_RTT_SAMPLE:
            cur = self._cur_min
            if not self._css:
                last = self._last_min
                if last != _INF:
                    thresh = max(MIN_RTT_THRESH, min(last / MIN_RTT_DIVISOR, MAX_RTT_THRESH))
                    if cur >= last + thresh:
                        self._css = True
                        self._css_baseline = cur
                        self._css_rounds = 0
                        self._css_carry = 0
            elif cur < self._css_baseline:  # the delay increase was spurious
                self._css = False
                self._css_baseline = _INF
        self._phase = "css" if self._css else "ss"
        if ((conn.snd_una - self._window_end) & MASK) < HALF:  # SND.UNA >= windowEnd
            self._window_end = None
            if self._css:
                self._css_rounds += 1
                if self._css_rounds >= CSS_ROUNDS:
                    conn.ssthresh = conn.cwnd
                    self._css = False
                    self._phase = "ca"

    # -- congestion events ---------------------------------------------------------------------

    def _reduce(self, conn, now: float) -> int:
        """RFC 9438 4.6 and 4.7 (fast convergence)."""
        cwnd = conn.cwnd
        self._cwnd_prior = float(cwnd)
        if cwnd < self._w_max:
            self._w_max = cwnd * (1 + BETA) / 2
        else:
            self._w_max = float(cwnd)
        self._epoch = None
        self._after_rto = False
        self._end_hystart()
        self._phase = "ca"
        return max(cwnd * BETA_TENTHS // 10, 2 * conn.snd_mss)

    def _timeout(self, conn, now: float) -> None:
        """RFC 9438 4.8: the next congestion avoidance starts with K = 0."""
        self._epoch = None
        self._after_rto = True
        self._end_hystart()
        self._phase = "ss"

    def on_recovery_end(self, conn, now: float) -> None:
        conn.cwnd = conn.ssthresh
        self._phase = "ca"

    def _end_hystart(self) -> None:
        self._css = False
        self._css_baseline = _INF
        self._css_carry = 0

    def _state(self):
        return (self._w_max, self._k, self._epoch, self._cwnd_epoch, self._w_est,
                self._cwnd_prior, self._carry, self._after_rto, self._phase,
                self._css, self._css_baseline, self._css_rounds, self._css_carry)

    def _restore(self, state) -> None:
        (self._w_max, self._k, self._epoch, self._cwnd_epoch, self._w_est,
         self._cwnd_prior, self._carry, self._after_rto, self._phase,
         self._css, self._css_baseline, self._css_rounds, self._css_carry) = state

    def info(self) -> dict:
        return {
            "phase": self._phase,
            "w_max": int(self._w_max),
            "k": round(self._k, 3),
            "min_rtt": None if self._min_rtt == _INF else self._min_rtt,
        }
