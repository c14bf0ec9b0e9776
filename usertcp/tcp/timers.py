"""The connection's one set of timers, each a deadline on the connection: retransmission
(RFC 6298), tail loss probe and RACK reordering (RFC 8985), persist (RFC 9293 3.8.6.1),
delayed ACK, FIN-WAIT-2, keepalive (RFC 1122 4.2.3.6) and the user timeout (RFC 5482). The
stack keeps one heap entry per connection, for the earliest.
"""

from __future__ import annotations

from ..wire.tcp import ACK, RST
from . import events as ev
from .seq import MASK
from .state import CLOSE_WAIT, CLOSED, ESTABLISHED, FIN_WAIT_2, SYN_RECEIVED, SYN_SENT


class Timers:
    """Timer handling of Connection (a mixin: the fields live on Connection)."""

    __slots__ = ()

    def next_deadline(self) -> float | None:
        best = self.rto_at  # unrolled: this runs after every segment
        t = self.delack_at
        if t is not None and (best is None or t < best):
            best = t
        t = self.persist_at
        if t is not None and (best is None or t < best):
            best = t
        t = self.fin_wait_2_at
        if t is not None and (best is None or t < best):
            best = t
        t = self.keepalive_at
        if t is not None and (best is None or t < best):
            best = t
        t = self.tlp_at
        if t is not None and (best is None or t < best):
            best = t
        t = self.reo_at
        if t is not None and (best is None or t < best):
            best = t
        return best

    def on_timer(self, now: float) -> None:
        self.clock = now
        if self.reo_at is not None and now >= self.reo_at:
            self._on_reo_timer(now)
        if self.tlp_at is not None and now >= self.tlp_at:
            self._on_tlp(now)  # re-arms the RTO: a probe first, not a timeout
        if self.rto_at is not None and now >= self.rto_at:
            self._on_rto(now)
            if self.state is CLOSED:
                return
            ut = self.user_timeout
            if ut is not None and self.backoffs and self.rto_at is not None:
                # Retransmit no later than the user timeout, so it is noticed on time.
                self.rto_at = min(self.rto_at, self.stall_since + ut)
        if self.delack_at is not None and now >= self.delack_at:
            self.delack_at = None
            if self.unacked_segments:
                self.ack_now = True
                self._mark()
        if self.persist_at is not None and now >= self.persist_at:
            self._on_persist(now)
        if self.fin_wait_2_at is not None and now >= self.fin_wait_2_at:
            self.fin_wait_2_at = None
            if self.state is FIN_WAIT_2:
                self.host.count("fin_wait_2_timeouts")
                self._finish(ev.ConnectionClosed(self.id), "fin-wait-2 timeout", now)
        if self.keepalive_at is not None and now >= self.keepalive_at:
            self._on_keepalive(now)

    def _on_rto(self, now: float) -> None:
        """The retransmission timer expired: give up, or back off and resend.

        Giving up: after `retries` (syn_retries, synack_retries) backoffs; or, when a
        user timeout is set, instead of counting (as Linux's TCP_USER_TIMEOUT), once
        SND.UNA has not moved for `user_timeout` seconds, counted from when the timer
        that first expired was started (the last ACK of new data, or the send from idle).
        """
        cfg = self.cfg
        state = self.state
        self.backoffs += 1
        if self.backoffs == 1:
            self.stall_since = self.rto_at - self.rtt.rto  # when this timer was started
        ut = self.user_timeout
        if ut is not None:
            expired = now >= self.stall_since + ut  # the sum, as the deadline is computed
        else:
            expired = self.backoffs > (cfg.syn_retries if state is SYN_SENT else
                                       cfg.synack_retries if state is SYN_RECEIVED else
                                       cfg.retries)
        if expired:
            self.host.count("timeouts")
            if ut is not None:
                self.host.count("user_timeouts")
            # A half-open passive connection was never shown to the application.
            silent = state is SYN_RECEIVED and self.listener is not None
            self._finish(None if silent else ev.ConnectionTimedOut(self.id),
                         "user timeout" if ut is not None else "retransmission timeout", now)
            return
        self.host.count("rto_expired")
        self.rtos += 1
        self.rtt.backoff()
        self.rtt_seq = None  # Karn
        self.rto_at = now + self.rtt.rto
        if state is SYN_SENT:
            self.retransmitted += 1
            self._send_syn()
            return
        if state is SYN_RECEIVED:
            self.retransmitted += 1
            self._send_syn_ack()
            return
        self.dupacks = 0
        if self.board is not None:
            self._sack_rto(now)
            return
        # RFC 5681 3.1: collapse to one segment and go back to SND.UNA.
        self.cc.on_rto(self, now, self.backoffs == 1)
        self.in_recovery = False
        self.recover = self.snd_max
        self.snd_nxt = self.snd_una
        if self._send_data(now):
            self.retransmitted += 1
            self.host.count("retransmits")
        else:  # the peer's window shrank to zero under data in flight: resend anyway
            self.snd_nxt = self._retransmit_first(now)

    def _on_persist(self, now: float) -> None:
        """Zero-window probing (RFC 9293 3.8.6.1), for as long as the peer answers.

        With a user timeout, a window that stays shut for `user_timeout` seconds from
        the first probe ends the connection (ConnectionTimedOut), as on Linux.
        """
        self.persist_at = None
        if self.snd_wnd:
            if self._unsent() > 0 and self.snd_una == self.snd_max:
                self._send_into_small_window(now)
            return
        if not self._unsent():
            return
        ut = self.user_timeout
        if ut is not None:
            if not self.persist_probes:
                self.stall_since = now
            elif now >= self.stall_since + ut:
                self.host.count("timeouts")
                self.host.count("user_timeouts")
                self._finish(ev.ConnectionTimedOut(self.id), "user timeout", now)
                return
        self.persist_probes += 1
        self.host.count("window_probes")
        # Probe with an already-acknowledged sequence number: the peer answers with
        # an ACK carrying its current window, and no data is committed.
        self._xmit(ACK, (self.snd_una - 1) & MASK)
        self.rtt.backoff()
        self.persist_at = now + self.rtt.rto
        if ut is not None:
            self.persist_at = min(self.persist_at, self.stall_since + ut)

    def set_keepalive(self, enabled: bool, idle: float | None = None,
                      interval: float | None = None, probes: int | None = None,
                      now: float | None = None) -> None:
        """Turn keepalive on or off; None leaves a parameter as it was."""
        old_idle, old_interval, old_probes = self._ka_params()
        self.ka_params = (old_idle if idle is None else idle,
                          old_interval if interval is None else interval,
                          old_probes if probes is None else probes)
        self.keepalive = enabled
        self.ka_out = 0
        if not enabled or self.state is CLOSED:
            self.keepalive_at = None
            return
        since = self.last_rx if now is None else max(self.last_rx, now)
        self.keepalive_at = since + self.ka_params[0]

    def _ka_params(self) -> tuple[float, float, int]:
        """(idle, interval, probes): the connection's own, or TcpConfig's."""
        params = self.ka_params
        if params is None:
            cfg = self.cfg
            return cfg.keepalive_idle, cfg.keepalive_interval, cfg.keepalive_probes
        return params

    def set_user_timeout(self, seconds: float | None) -> None:
        """Set or clear the user timeout; a stall already under way is measured from its
        start, so the timer is pulled in to that deadline at once."""
        self.user_timeout = seconds
        if seconds is None:
            return
        deadline = self.stall_since + seconds
        if self.backoffs and self.rto_at is not None and deadline < self.rto_at:
            self.rto_at = deadline
        if self.persist_probes and self.persist_at is not None and deadline < self.persist_at:
            self.persist_at = deadline

    def _on_keepalive(self, now: float) -> None:
        """RFC 1122 4.2.3.6, as Linux does it.

        Only in ESTABLISHED, CLOSE-WAIT and FIN-WAIT-2 with no data outstanding or
        queued (otherwise the retransmission or persist timer is in charge, and this
        one looks again `idle` seconds later). After `idle` seconds without a segment
        from the peer, a probe: an ACK with SEQ = SND.UNA - 1 and no data, which the
        peer must answer with an ACK; then one every `interval` seconds. Any segment
        from the peer resets the count. When `probes` probes are unanswered (with a
        user timeout instead: when some are and the peer has been silent for
        `user_timeout` seconds), the peer is reset and the connection ends with
        ConnectionTimedOut.
        """
        self.keepalive_at = None
        if not self.keepalive:
            return
        idle, interval, probes = self._ka_params()
        state = self.state
        if ((state is not ESTABLISHED and state is not CLOSE_WAIT and state is not FIN_WAIT_2)
                or self._queued() or self.snd_una != self.snd_max):
            self.ka_out = 0
            self.keepalive_at = now + idle
            return
        last_rx = self.last_rx
        if self.ka_out and last_rx >= self.ka_since:
            self.ka_out = 0  # the peer answered
        if not self.ka_out and now < last_rx + idle:  # sums as in the deadlines: no
            self.keepalive_at = last_rx + idle  # rounding may leave a deadline due again
            return
        ut = self.user_timeout
        if (self.ka_out >= probes if ut is None else
                self.ka_out and now >= last_rx + ut):
            self.host.count("keepalive_timeouts")
            self.host.count("resets_sent")
            self._xmit(RST | ACK, self.snd_nxt)
            self._finish(ev.ConnectionTimedOut(self.id), "keepalive timeout", now)
            return
        if not self.ka_out:
            self.ka_since = now
        self.ka_out += 1
        self.host.count("keepalive_probes")
        self._xmit(ACK, (self.snd_una - 1) & MASK)
        self.keepalive_at = now + interval
        if ut is not None and now < last_rx + ut < self.keepalive_at:
            self.keepalive_at = last_rx + ut
