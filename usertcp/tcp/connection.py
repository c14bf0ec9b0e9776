"""One TCP connection: its control block, how it opens, the application's calls, how it ends.

The connection is sans-IO: packets go to `host.out`, events to `host.emit`, time comes in
as `now`. Its behaviour is split by concern into mixins whose methods share the fields
kept here (so the hot path reads plain slots):

- `arrival.Arrival`: segment arrival, RFC 9293 3.10.7, one method per step;
- `output.Output`: segmenting within the windows, building segments and their options;
- `recovery.Recovery`: loss recovery with SACK (RACK-TLP, PRR, undo, F-RTO);
- `congestion`: CUBIC or NewReno behind one small interface (`self.cc`);
- `timers.Timers`: retransmission, persist, delayed ACK, FIN-WAIT-2 and keepalive timers;
- `rtt.RttSampling`: RTT samples (Karn's rule, or TSecr) into the RFC 6298 estimator;
- `buffers.Buffers`: the application's send and receive calls and the windows they make;
- the state transitions that are a table are in `transitions`.

Options negotiated in the handshake: MSS, window scaling, SACK (RFC 2018; D-SACK, RFC
2883) and timestamps (RFC 7323: TSopt in every segment, RTT measured from TSecr, PAWS).
The entry points (`on_segment`, `output`, `on_timer`, ...) note the time they were given in
`clock`, which is what TSval is made from when a segment is sent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..wire.tcp import ACK, RST, Segment
from . import congestion
from . import events as ev
from .arrival import Arrival
from .buffers import Buffers
from .output import Output
from .rack import Rack, Tlp
from .reassembly import Reassembly
from .recovery import Recovery
from .recvqueue import RecvQueue
from .rtt import RttEstimator, RttSampling
from .scoreboard import Scoreboard
from .seq import MASK
from .state import CLOSED, FIN_WAIT_2, SYN_RECEIVED, SYN_SENT, TIME_WAIT, State
from .timers import Timers
from .timestamps import TS_LEN
from .transitions import ON_CLOSE

if TYPE_CHECKING:
    from .host import Host

_DEFAULT_PEER_MSS = 536  # RFC 9293 3.7.1, when the SYN carries no MSS option
_DEFAULT_PEER_MSS6 = 1220  # RFC 8200 5: IPv6's minimum MTU less 60
_V6_HEADER_EXTRA = 20  # an IPv6 header is 20 bytes longer than IPv4's: an MSS 20 smaller


class Connection(Arrival, Output, Recovery, Timers, RttSampling, Buffers):
    __slots__ = (
        "host", "cfg", "id", "local", "lport", "remote", "rport", "key", "state", "listener",
        "mss_own",
        "app_closed", "iss", "snd_una", "snd_nxt", "snd_max", "snd_wnd", "snd_wl1", "snd_wl2",
        "max_snd_wnd", "snd_wscale", "rcv_wscale", "snd_mss", "sndbuf", "buf_seq", "fin_queued",
        "irs", "rcv_nxt", "rcv_adv", "rcvbuf", "ooo", "ooo_fin", "peer_fin", "cwnd", "ssthresh",
        "dupacks", "recover", "in_recovery", "rtt", "rtt_seq", "rtt_time", "backoffs",
        "rto_at", "delack_at", "persist_at", "fin_wait_2_at", "armed", "unacked_segments",
        "ack_now", "data_event_pending", "nodelay", "dirty", "persist_probes", "accepted",
        "retransmitted", "segments_in", "segments_out", "opened_at", "last_oow_ack",
        # keepalive and user timeout (timer section)
        "keepalive", "ka_params", "keepalive_at", "ka_out", "ka_since", "last_rx",
        "user_timeout", "stall_since",
        # options: SACK (RFC 2018, RFC 6675) and timestamps (RFC 7323)
        "sack_ok", "ts_ok", "ts_len", "opts_on", "ts_offset", "ts_base", "ts_recent",
        "ts_recent_age", "last_ack_sent", "clock", "sack_recent", "rtx_ts", "ts_sampled",
        "dsack",
        # loss recovery with SACK (recovery.py): scoreboard, RACK-TLP, PRR, undo, F-RTO
        "cc", "board", "rack", "tlp", "tlp_at", "reo_at", "in_loss", "frto", "prr_delivered",
        "prr_out", "recover_fs", "undo_marker", "undo_retrans", "undo_tsval",
        "tlp_probes", "rack_lost", "undos", "rtos", "rack_seg", "rack_now",
    )

    def __init__(self, host: Host, conn_id: int, lport: int, remote: int, rport: int, iss: int,
                 now: float, listener=None, local: int | None = None):
        cfg = host.config
        self.host = host
        self.cfg = cfg
        self.id = conn_id
        # A catch-all stack answers as whatever address the peer dialled.
        self.local = host.address if local is None else local
        self.lport = lport
        self.remote = remote
        self.rport = rport
        self.key = (remote, rport, self.local, lport)
        self.state = CLOSED
        self.listener = listener  # the Listener of a passive open
        self.accepted = False
        self.app_closed = False
        self.iss = iss
        self.snd_una = iss
        self.snd_nxt = iss
        self.snd_max = iss  # highest sequence number sent: SND.NXT can step back on RTO
        self.snd_wnd = 0
        self.snd_wl1 = 0
        self.snd_wl2 = 0
        self.max_snd_wnd = 0
        self.snd_wscale = 0
        self.rcv_wscale = 0
        # TcpConfig.mss is for IPv4 (MTU - 40); IPv6 takes 20 more header bytes.
        self.mss_own = cfg.mss if self.local < 0x100000000 else cfg.mss - _V6_HEADER_EXTRA
        self.snd_mss = min(self.default_peer_mss(), self.mss_own)
        self.sndbuf = b""  # a bytearray from the first send() (Buffers.send)
        self.buf_seq = (iss + 1) & MASK  # sequence number of sndbuf[0]
        self.fin_queued = False
        self.irs = 0
        self.rcv_nxt = 0
        self.rcv_adv = 0  # right edge of the window we advertised
        self.rcvbuf = RecvQueue()
        self.ooo = Reassembly()
        self.ooo_fin: int | None = None  # sequence number of a FIN that arrived early
        self.peer_fin = False
        self.cwnd = 0
        self.ssthresh = 1 << 30
        self.dupacks = 0
        self.recover = iss
        self.in_recovery = False
        self.rtt = RttEstimator(cfg.rto_initial, cfg.rto_min, cfg.rto_max)
        self.rtt_seq: int | None = None  # segment being timed (Karn: never a retransmission)
        self.rtt_time = 0.0
        self.backoffs = 0
        self.rto_at: float | None = None
        self.delack_at: float | None = None
        self.persist_at: float | None = None
        self.fin_wait_2_at: float | None = None
        self.armed: float | None = None  # deadline this connection has in the stack's heap
        self.unacked_segments = 0
        self.ack_now = False
        self.data_event_pending = False
        self.nodelay = not cfg.nagle
        self.dirty = False
        self.persist_probes = 0
        self.retransmitted = 0
        self.segments_in = 0
        self.segments_out = 0
        self.opened_at = now
        self.last_oow_ack: float | None = None
        self.keepalive = cfg.keepalive
        self.ka_params = None  # (idle, interval, probes) once set_keepalive sets one; else cfg's
        self.keepalive_at: float | None = now + cfg.keepalive_idle if cfg.keepalive else None
        self.ka_out = 0  # keepalive probes sent and not answered
        self.ka_since = 0.0  # when the first of them went
        self.last_rx = now  # last segment from the peer (the stack sets it)
        self.user_timeout = cfg.user_timeout
        self.stall_since = now  # start of the RTO or zero-window series (user timeout)
        self.clock = now  # the time given to the entry point running now (TSval)
        self.sack_ok = False  # both SYNs offered SACK
        self.ts_ok = False  # both SYNs carried timestamps
        self.ts_len = 0  # option bytes every segment carries: TS_LEN with timestamps
        self.opts_on = False  # sack_ok or ts_ok: segments may need options
        # TSval is a 1 ms clock that reads ISS when the connection is made: no uptime shows,
        # and a later incarnation of the same 4-tuple starts above this one (RFC 6191).
        self.ts_base = int(now * 1000)
        self.ts_offset = (iss - self.ts_base) & MASK
        self.ts_recent = 0  # RFC 7323 TS.Recent, and when it was taken
        self.ts_recent_age = now
        self.last_ack_sent = 0  # RFC 7323 Last.ACK.sent
        self.sack_recent: list[int] | tuple = ()  # seqs of out-of-order arrivals, latest first
        self.rtx_ts: int | None = None  # TSval of the latest retransmission (RTTM, Karn)
        self.ts_sampled: int | None = None  # the TSecr of the last RTT sample
        self.cc = congestion.create(cfg.congestion, cfg.initial_window)
        self.board: Scoreboard | None = None  # with SACK only (made when it is negotiated)
        self.rack: Rack | None = None
        self.tlp: Tlp | None = None
        self.tlp_at: float | None = None  # tail loss probe (RFC 8985 7)
        self.reo_at: float | None = None  # RACK reordering timer (RFC 8985 6.3)
        self.in_loss = False  # after an RTO, until SND.UNA passes `recover`
        self.frto = False  # F-RTO: the next ACK judges the timeout
        self.prr_delivered = self.prr_out = 0  # RFC 6937
        self.recover_fs = 1
        self.undo_marker: int | None = None  # SND.UNA when the undoable episode began
        self.undo_retrans = 0  # its retransmissions not yet D-SACKed
        self.undo_tsval: int | None = None  # TSval of its first retransmission (Eifel)
        self.tlp_probes = self.rack_lost = self.undos = self.rtos = 0
        self.rack_seg = None  # the last in-order delivery, not yet given to RACK
        self.rack_now = 0.0
        self.dsack: tuple[int, int] | None = None  # a duplicate to report (RFC 2883)

    def _set_state(self, new: State, cause: str, now: float) -> None:
        old = self.state
        self.state = new
        self.host.state_changed(self, old, new, cause, now)

    def _enter(self, new: State, cause: str, now: float) -> None:
        """Move to a state from the transition tables, doing what entering it takes."""
        if new is TIME_WAIT:
            self.host.enter_time_wait(self, cause, now)
        elif new is CLOSED:
            self._finish(ev.ConnectionClosed(self.id), cause, now)
        else:
            self._set_state(new, cause, now)
            if new is FIN_WAIT_2 and self.app_closed:
                self.fin_wait_2_at = now + self.cfg.fin_wait_2_timeout

    def _note_dsack(self, left: int, right: int) -> None:
        """A duplicate arrived: the next ACK's first SACK block reports it (RFC 2883)."""
        self.dsack = (left, right)
        self.ack_now = True
        self.host.count("dsack_sent")

    def _take_syn_options(self, seg: Segment) -> None:
        """Adopt what the peer's SYN offered (RFC 9293 3.7.1, RFC 7323 2.2, RFC 2018 2).

        SACK and timestamps are on only when both SYNs carry them: the peer's SYN-ACK
        carries them only if our SYN did, and our SYN-ACK only if the peer's SYN did.
        With timestamps every segment carries 12 bytes of TSopt, which the MSS does
        not count (RFC 6691): snd_mss is what is left for data.
        """
        cfg = self.cfg
        self.sack_ok = cfg.sack and seg.sack_permitted
        self.ts_ok = ts_ok = cfg.timestamps and seg.ts_val is not None
        self.ts_len = TS_LEN if ts_ok else 0
        self.opts_on = self.sack_ok or ts_ok
        if ts_ok:
            self.ts_recent = seg.ts_val
            self.ts_recent_age = self.clock
        self.snd_mss = max(min(seg.mss if seg.mss else self.default_peer_mss(), self.mss_own,
                               self._path_mss()) - self.ts_len, 1)
        if cfg.window_scale and seg.wscale is not None:
            self.snd_wscale = min(seg.wscale, 14)
            self.rcv_wscale = cfg.rcv_wscale
        else:
            self.snd_wscale = 0
            self.rcv_wscale = 0
        self._recovery_init()

    def _recovery_init(self) -> None:
        """Congestion control starts, and with SACK the scoreboard and RACK-TLP."""
        self.cc.on_init(self, self.clock)  # cwnd: the initial window of snd_mss segments
        if self.sack_ok:
            self.board = Scoreboard((self.iss + 1) & MASK)
            self.rack = Rack()
            self.tlp = Tlp()
        else:
            self.board = self.rack = self.tlp = None

    def set_congestion(self, name: str, now: float) -> None:
        """Choose the congestion control for this connection (Linux's TCP_CONGESTION):
        the new one carries on from the current cwnd and ssthresh."""
        cwnd, ssthresh = self.cwnd, self.ssthresh
        self.cc = congestion.create(name, self.cfg.initial_window)
        self.cc.on_init(self, now)
        self.cwnd, self.ssthresh = cwnd, ssthresh

    def icmp_error(self, err: int, now: float) -> None:
        """An ICMP destination unreachable about this connection. As Linux: fatal for our
        SYN (connect() fails with `err`); for a synchronized connection a soft error, counted,
        that leaves the retransmission timer to decide."""
        if self.state is SYN_SENT:
            self.host.count("icmp_connect_errors")
            self._finish(ev.ConnectionUnreachable(self.id, err), "icmp unreachable", now)
        else:
            self.host.count("icmp_soft_errors")

    def path_mtu_lowered(self, mtu: int, now: float) -> bool:
        """A Packet Too Big / fragmentation needed said the path carries `mtu` bytes (RFC 8201,
        RFC 1191): segments shrink to fit, and what is in flight (too big, so lost) is sent
        again at once, without a congestion response (no congestion lost it). True when the
        MSS went down."""
        fits = mtu - (60 if self.local > 0xFFFFFFFF else 40) - self.ts_len
        if fits >= self.snd_mss or fits < 1:
            return False
        self.snd_mss = fits
        self.host.count("pmtu_lowered")
        if self.snd_max != self.snd_una and self.state not in (SYN_SENT, SYN_RECEIVED):
            self.rtt_seq = None  # Karn: what follows is retransmission
            if self.board is not None:
                self.in_loss = True
                self.frto = False
                self.recover = self.snd_max
                self.board.mark_all_lost()
                self.tlp.reset()
                self.tlp_at = self.reo_at = None
            else:
                self.snd_nxt = self.snd_una  # go back: everything past SND.UNA again
        self._mark()
        return True

    def fin_acked(self) -> bool:
        # Once all data is acknowledged the FIN sits at BUF_SEQ.
        return (self.fin_queued
                and self.snd_una == (self.buf_seq + len(self.sndbuf) + 1) & MASK)

    def _mark(self) -> None:
        if not self.dirty:
            self.dirty = True
            self.host.dirty.append(self)

    def open_active(self, now: float) -> None:
        self.clock = now
        self._set_state(SYN_SENT, "connect", now)
        self._send_syn()
        self.snd_nxt = self.snd_max = (self.iss + 1) & MASK
        self.rtt_seq, self.rtt_time = self.iss, now
        self.rto_at = now + self.rtt.rto

    def _path_mss(self) -> int:
        """The MSS a path MTU learned from this peer's address allows (RFC 8201 5.2: per
        destination), or no limit."""
        mtu = self.host.path_mtu(self.remote, self.clock)
        return 1 << 30 if mtu is None else mtu - (60 if self.local > 0xFFFFFFFF else 40)

    def default_peer_mss(self) -> int:
        return _DEFAULT_PEER_MSS if self.local < 0x100000000 else _DEFAULT_PEER_MSS6

    def open_passive(self, syn: Segment, now: float) -> None:
        """From LISTEN: a SYN arrived for our port (RFC 9293 3.10.7.2)."""
        self.clock = now
        self.irs = syn.seq
        self.rcv_nxt = (syn.seq + 1) & MASK
        self._take_syn_options(syn)
        self.snd_wnd = syn.window  # never scaled in a SYN
        self.max_snd_wnd = syn.window
        self.snd_wl1 = syn.seq
        self.snd_wl2 = self.iss
        self.state = State.LISTEN
        self._set_state(SYN_RECEIVED, "syn", now)
        self._send_syn_ack(syn)
        self.snd_nxt = self.snd_max = (self.iss + 1) & MASK
        self.rtt_seq, self.rtt_time = self.iss, now
        self.rto_at = now + self.rtt.rto

    def open_cookie(self, ack: Segment, mss: int, now: float) -> None:
        """From LISTEN: the ACK that returns a valid SYN cookie (RFC 4987, tcp/syncookie.py).

        The SYN-RECEIVED we never kept is rebuilt from it: the peer's ISN is SEG.SEQ - 1,
        ours (self.iss) SEG.ACK - 1, the peer's MSS what the cookie encoded; the cookie
        SYN-ACK offered no window scaling, so none is used. Then the ACK is processed as
        in SYN-RECEIVED, which establishes the connection (ConnectionAccepted) and takes
        any data or FIN the segment carries.
        """
        cfg = self.cfg
        self.irs = (ack.seq - 1) & MASK
        self.rcv_nxt = ack.seq
        self.rcv_adv = (ack.seq + min(cfg.receive_buffer, 65535)) & MASK
        self.snd_mss = min(mss, self.mss_own, self._path_mss())
        self.snd_wscale = 0
        self.rcv_wscale = 0
        self._recovery_init()
        self.snd_wl1 = self.irs
        self.snd_wl2 = self.iss
        self.snd_nxt = self.snd_max = (self.iss + 1) & MASK
        self.state = State.LISTEN
        self._set_state(SYN_RECEIVED, "syn cookie", now)
        self.on_segment(ack, now)
        if self.state is SYN_RECEIVED:  # the ACK was not taken after all: no trace left
            self._finish(None, "syn cookie not taken", now)

    def shutdown(self, now: float) -> None:
        """Queue our FIN after the data (RFC 9293 3.10.4 CLOSE)."""
        state = self.state
        if self.fin_queued:
            return
        if state is SYN_SENT:
            self._finish(ev.ConnectionClosed(self.id), "close", now)
            return
        self.fin_queued = True
        new = ON_CLOSE.get(state)
        if new is not None:
            self._set_state(new, "close", now)
        if state is not SYN_RECEIVED:
            self._mark()

    def close(self, now: float) -> None:
        """Release the connection; unread data means the peer is reset (RFC 2525)."""
        self.app_closed = True
        if self.rcvbuf or self.ooo:
            self.abort(now, "close with unread data")
            return
        self.shutdown(now)
        if self.state is FIN_WAIT_2 and self.fin_wait_2_at is None:
            self.fin_wait_2_at = now + self.cfg.fin_wait_2_timeout

    def abort(self, now: float, cause: str = "abort") -> None:
        self.clock = now
        if self.state not in (SYN_SENT, CLOSED):
            self._xmit(RST | ACK, self.snd_nxt)
            self.host.count("resets_sent")
        self._finish(ev.ConnectionClosed(self.id) if cause == "abort" else
                     ev.ConnectionReset(self.id), cause, now)

    def _finish(self, event, cause: str, now: float) -> None:
        self.rto_at = self.delack_at = self.persist_at = self.fin_wait_2_at = None
        self.keepalive_at = self.tlp_at = self.reo_at = None
        self._set_state(CLOSED, cause, now)
        self.host.forget(self, event)

    def info(self, now: float) -> dict:
        return {
            "conn_id": self.id, "state": str(self.state), "snd_una": self.snd_una,
            "snd_nxt": self.snd_nxt, "snd_wnd": self.snd_wnd, "rcv_nxt": self.rcv_nxt,
            "rcv_wnd": (self.rcv_adv - self.rcv_nxt) & MASK, "send_queue": self._queued(),
            "recv_queue": len(self.rcvbuf), "out_of_order": self.ooo.size, "cwnd": self.cwnd,
            "ssthresh": self.ssthresh, "srtt": self.rtt.srtt, "rto": self.rtt.rto,
            "retransmitted": self.retransmitted, "mss": self.snd_mss,
            "sack": self.sack_ok, "timestamps": self.ts_ok,
            "sacked": self.board.sacked_out if self.board is not None else 0,
            "lost": self.board.lost_out if self.board is not None else 0,
            "congestion": self.cc.name, "in_recovery": self.in_recovery or self.in_loss,
            "rtos": self.rtos, "tlp_probes": self.tlp_probes, "rack_lost": self.rack_lost,
            "spurious_undone": self.undos,
            "timers": {name: round(t - now, 6) for name, t in (
                ("retransmit", self.rto_at), ("delayed_ack", self.delack_at),
                ("persist", self.persist_at), ("fin_wait_2", self.fin_wait_2_at),
                ("keepalive", self.keepalive_at), ("loss_probe", self.tlp_at),
                ("reorder", self.reo_at))
                if t is not None},
        }
