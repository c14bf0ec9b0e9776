"""TIME-WAIT as a small entry: no buffers, a few numbers and a deadline."""

from __future__ import annotations

from ..wire.tcp import ACK, FIN, RST, SYN, Segment, build_segment
from .seq import HALF, MASK
from .state import State
from .timestamps import ts_option


class TimeWait:
    """What is left of a connection for 2*MSL after it closed (RFC 9293 3.6)."""

    __slots__ = ("host", "id", "key", "lport", "remote", "rport", "snd_nxt", "rcv_nxt",
                 "window", "deadline", "armed", "ts_ok", "ts_recent", "ts_offset")

    state = State.TIME_WAIT

    def __init__(self, host, conn, now: float):
        self.host = host
        self.id = conn.id
        self.key = conn.key
        self.lport = conn.lport
        self.remote = conn.remote
        self.rport = conn.rport
        self.snd_nxt = conn.snd_nxt
        self.rcv_nxt = conn.rcv_nxt
        self.window = min(((conn.rcv_adv - conn.rcv_nxt) & MASK) >> conn.rcv_wscale, 65535)
        self.deadline = now + 2 * host.config.msl
        self.armed = None
        # Timestamps live on (RFC 7323): our ACKs carry TSopt from the same clock, and
        # TS.Recent keeps PAWS working and decides on reuse by a new SYN (RFC 6191).
        self.ts_ok = conn.ts_ok
        self.ts_recent = conn.ts_recent
        self.ts_offset = conn.ts_offset

    def may_reuse(self, syn: Segment, timestamps: bool) -> bool:
        """RFC 6191: may this SYN open a new incarnation of the 4-tuple now?

        When both incarnations use timestamps, by TSval: newer than TS.Recent, yes; equal,
        by sequence number; older, no. Otherwise by sequence number: beyond the old
        connection's RCV.NXT.
        """
        if self.ts_ok and timestamps and syn.ts_val is not None:
            newer = (syn.ts_val - self.ts_recent) & MASK
            if newer:
                return newer < HALF
        return 0 < ((syn.seq - self.rcv_nxt) & MASK) < HALF

    def on_segment(self, seg: Segment, now: float) -> None:
        flags = seg.flags
        if flags & RST:
            # RFC 1337: an RST must not cut TIME-WAIT short.
            self.host.count("time_wait_rst_ignored")
            return
        tsval = seg.ts_val
        if (self.ts_ok and tsval is not None and not flags & SYN
                and ((tsval - self.ts_recent) & MASK) >= HALF):
            # PAWS (RFC 7323 5): an old duplicate. It restarts nothing; unless it is a
            # bare ACK (never answered here), the ACK answers it.
            self.host.count("paws_rejected")
            if seg.payload or flags & FIN:
                self.ack(now)
            return
        if flags & FIN and ((seg.seq + len(seg.payload) + 1) & MASK) == self.rcv_nxt:
            # The peer's FIN again: our last ACK was lost. ACK it and restart 2MSL.
            self.host.count("time_wait_fin_reacked")
            self.deadline = now + 2 * self.host.config.msl
            if self.ts_ok and tsval is not None:
                self.ts_recent = tsval
        elif flags & SYN:
            # Not taken for reuse: answer with our ACK (RFC 9293 3.10.7.4, RFC 5961 4).
            self.host.count("time_wait_syn_acked")
        elif seg.seq == self.rcv_nxt and not seg.payload:
            # A bare in-window ACK, e.g. from a peer also in TIME-WAIT after a simultaneous
            # close: nothing to answer. ACKing it would start an endless ACK exchange.
            return
        self.ack(now)

    def ack(self, now: float) -> None:
        cfg = self.host.config
        opts = ts_option(now, self.ts_offset, self.ts_recent) if self.ts_ok else b""
        self.host.out.append(build_segment(
            self.key[2], self.remote, self.lport, self.rport, self.snd_nxt, self.rcv_nxt,
            ACK, self.window, opts, ttl=cfg.ttl, csum_offload=cfg.tx_checksum_offload))

    def next_deadline(self) -> float:
        return self.deadline

    def on_timer(self, now: float) -> None:
        if now >= self.deadline:
            self.host.time_wait_expired(self, now)

    def info(self, now: float) -> dict:
        return {"conn_id": self.id, "state": str(self.state), "snd_nxt": self.snd_nxt,
                "rcv_nxt": self.rcv_nxt, "send_queue": 0, "recv_queue": 0,
                "timers": {"time_wait": round(self.deadline - now, 6)}}
