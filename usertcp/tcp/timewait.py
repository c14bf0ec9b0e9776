"""TIME-WAIT (RFC 9293 3.6): what is left of a connection for 2*MSL after it closed, compactly.

A busy server holds a TIME-WAIT entry for every connection it closed in the last 2*MSL: a
hundred thousand of them must cost little. `TimeWaitTable` keeps each entry as two ints, a
4-tuple packed into one (the key) and the numbers packed into another (the value), plus the
connection id's entry in an id -> key dict and the key's place in a FIFO of expiries: no
object per entry, no heap entry per entry.

Every entry lasts 2*MSL from when it was made or last restarted (a retransmitted FIN), so a
FIFO in arrival order is in deadline order. A restart appends the key again; each entry
records the ticket (the FIFO position) of its latest place, so that older places, and those of
an entry that is gone (expired, reused by a new SYN), are recognised as stale when they reach
the head and are dropped there.

`TimeWait` is a view of one entry, made only when a segment arrives for it, when it expires,
or for a listing; it holds the RFC behaviour (RFC 1337, PAWS, RFC 6191 reuse).
"""

from __future__ import annotations

import struct
from collections import deque

from ..wire.tcp import ACK, FIN, RST, SYN, Segment, build_segment
from .seq import HALF, MASK
from .state import State
from .timestamps import ts_option

_DOUBLE = struct.Struct("<d")  # the deadline is kept exactly: its IEEE 754 bits

# The value's fields, lowest bits first; the connection id takes the bits above the rest.
_RCV_NXT = 32
_WINDOW = 64  # the window field of our ACKs (16 bits)
_TS_OK = 80
_TS_RECENT = 81
_TS_OFFSET = 113
_DEADLINE = 145
_TICKET = 209  # 48 bits: the FIFO position of the entry's latest place
_ID = 257
_M16 = 0xFFFF
_M48 = (1 << 48) - 1
_M64 = (1 << 64) - 1

_V4_KEYS = 1 << 96  # an IPv4 key is 96 bits; an IPv6 one is longer (addresses carry the V6 tag)
_V6_WIDTH = 129  # a V6-tagged address int


def pack_key(remote: int, rport: int, local: int, lport: int) -> int:
    """The 4-tuple as one int (40 bytes for IPv4, where a tuple of four ints costs ~190)."""
    width = 32 if remote <= 0xFFFFFFFF else _V6_WIDTH
    return ((((remote << 16) | rport) << width | local) << 16) | lport


def unpack_key(key: int) -> tuple[int, int, int, int]:
    """(remote, rport, local, lport) of a packed key."""
    width = 32 if key < _V4_KEYS else _V6_WIDTH
    lport = key & _M16
    key >>= 16
    local = key & ((1 << width) - 1)
    key >>= width
    return key >> 16, key & _M16, local, lport


class TimeWait:
    """One TIME-WAIT entry, unpacked for the moment it is worked on."""

    __slots__ = (
        "deadline",
        "host",
        "id",
        "key",
        "local",
        "lport",
        "rcv_nxt",
        "remote",
        "rport",
        "snd_nxt",
        "ts_offset",
        "ts_ok",
        "ts_recent",
        "window",
    )

    state = State.TIME_WAIT

    def __init__(self, host, key: int, value: int):
        self.host = host
        self.key = key
        self.remote, self.rport, self.local, self.lport = unpack_key(key)
        self.snd_nxt = value & MASK
        self.rcv_nxt = (value >> _RCV_NXT) & MASK
        self.window = (value >> _WINDOW) & _M16
        # Timestamps live on (RFC 7323): our ACKs carry TSopt from the same clock, and
        # TS.Recent keeps PAWS working and decides on reuse by a new SYN (RFC 6191).
        self.ts_ok = bool((value >> _TS_OK) & 1)
        self.ts_recent = (value >> _TS_RECENT) & MASK
        self.ts_offset = (value >> _TS_OFFSET) & MASK
        self.deadline = _DOUBLE.unpack(((value >> _DEADLINE) & _M64).to_bytes(8, "little"))[0]
        self.id = value >> _ID

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
            self.local, self.remote, self.lport, self.rport, self.snd_nxt, self.rcv_nxt,
            ACK, self.window, opts, ttl=cfg.ttl, csum_offload=cfg.tx_checksum_offload))

    def next_deadline(self) -> float:
        return self.deadline

    def info(self, now: float) -> dict:
        return {"conn_id": self.id, "state": str(self.state), "snd_nxt": self.snd_nxt,
                "rcv_nxt": self.rcv_nxt, "send_queue": 0, "recv_queue": 0,
                "timers": {"time_wait": round(self.deadline - now, 6)}}


def _pack(snd_nxt: int, rcv_nxt: int, window: int, ts_ok: bool, ts_recent: int,
          ts_offset: int, deadline: float, ticket: int, conn_id: int) -> int:
    return (snd_nxt | rcv_nxt << _RCV_NXT | window << _WINDOW | int(ts_ok) << _TS_OK
            | ts_recent << _TS_RECENT | ts_offset << _TS_OFFSET
            | int.from_bytes(_DOUBLE.pack(deadline), "little") << _DEADLINE
            | (ticket & _M48) << _TICKET | conn_id << _ID)


def _deadline_of(value: int) -> float:
    return _DOUBLE.unpack(((value >> _DEADLINE) & _M64).to_bytes(8, "little"))[0]


class TimeWaitTable:
    """All TIME-WAIT entries of a stack: by packed 4-tuple, by connection id, by deadline."""

    __slots__ = ("appended", "entries", "fifo", "host", "ids")

    def __init__(self, host):
        self.host = host
        self.entries: dict[int, int] = {}  # packed 4-tuple -> packed value
        self.ids: dict[int, int] = {}  # connection id -> packed 4-tuple
        self.fifo: deque[int] = deque()  # keys, oldest deadline first (some places stale)
        self.appended = 0  # places ever appended: the ticket of the next one

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, key: int) -> bool:
        return key in self.entries

    def __iter__(self):
        host = self.host
        for key, value in list(self.entries.items()):
            yield TimeWait(host, key, value)

    def add(self, conn, now: float) -> None:
        """`conn` enters TIME-WAIT: its entry, lasting 2*MSL from now."""
        key = pack_key(conn.remote, conn.rport, conn.local, conn.lport)
        window = min(((conn.rcv_adv - conn.rcv_nxt) & MASK) >> conn.rcv_wscale, 65535)
        ts_ok = conn.ts_ok
        self.entries[key] = _pack(conn.snd_nxt, conn.rcv_nxt, window, ts_ok,
                                  conn.ts_recent if ts_ok else 0,
                                  conn.ts_offset if ts_ok else 0,
                                  now + 2 * self.host.config.msl, self.appended, conn.id)
        self.ids[conn.id] = key
        self.fifo.append(key)
        self.appended += 1

    def get(self, key: int) -> TimeWait | None:
        value = self.entries.get(key)
        return None if value is None else TimeWait(self.host, key, value)

    def by_id(self, conn_id: int) -> TimeWait | None:
        key = self.ids.get(conn_id)
        return None if key is None else self.get(key)

    def segment(self, tw: TimeWait, seg: Segment, now: float) -> None:
        """A segment for the entry `tw` views; what it changed is stored back."""
        deadline, ts_recent = tw.deadline, tw.ts_recent
        tw.on_segment(seg, now)
        if tw.deadline == deadline and tw.ts_recent == ts_recent:
            return
        ticket = self.appended
        self.entries[tw.key] = _pack(tw.snd_nxt, tw.rcv_nxt, tw.window, tw.ts_ok,
                                     tw.ts_recent, tw.ts_offset, tw.deadline, ticket, tw.id)
        self.fifo.append(tw.key)  # the entry's earlier place is stale from now on
        self.appended += 1

    def remove(self, tw: TimeWait) -> None:
        """The entry goes (reused by a new SYN); its places in the FIFO go stale."""
        if self.entries.pop(tw.key, None) is not None:
            del self.ids[tw.id]

    def _head(self) -> int | None:
        """The value of the entry at the FIFO's head, stale places dropped; None if empty."""
        fifo = self.fifo
        entries = self.entries
        while fifo:
            value = entries.get(fifo[0])
            if value is not None and (value >> _TICKET) & _M48 == (
                    self.appended - len(fifo)) & _M48:
                return value
            fifo.popleft()
        return None

    def next_deadline(self) -> float | None:
        value = self._head()
        return None if value is None else _deadline_of(value)

    def expire(self, now: float) -> list[TimeWait]:
        """Remove and return the entries whose 2*MSL is over at `now`."""
        out = []
        while (value := self._head()) is not None and _deadline_of(value) <= now:
            key = self.fifo.popleft()
            del self.entries[key]
            tw = TimeWait(self.host, key, value)
            del self.ids[tw.id]
            out.append(tw)
        return out
