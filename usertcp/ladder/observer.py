"""The observer: both sides' RFC 9293 states, relative numbers and marks, from what each sent.

Each side runs its own state machine: what it sends moves it at its own row, what it
receives moves it when the segment is *delivered*. The capture point may see a packet
that is lost later, and two packets may cross in flight, so delivery is inferred from
what the receiver does next (see `LiveObserver`). Offline, `observe` feeds a whole
capture to a LiveObserver and finishes it, so both give the same rows.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from ..tcp import seq as sq
from ..wire.tcp import ACK, FIN, RST, SYN
from .model import (
    ACKED_UNSEEN,
    CLOSE_WAIT,
    CLOSED,
    CLOSING,
    DUP_ACK,
    ESTABLISHED,
    FIN_WAIT_1,
    FIN_WAIT_2,
    KEEP_ALIVE,
    LAST_ACK,
    LISTEN,
    LOST,
    MARKS,
    PREVIOUS_NOT_CAPTURED,
    RESET,
    RETRANSMISSION,
    SYN_RECEIVED,
    SYN_SENT,
    TIME_WAIT,
    ZERO_WINDOW,
    Conversation,
    Packet,
    Row,
)

HOLD = 0.5  # seconds a live row waits for the evidence that decides its delivery
MAX_WSCALE = 14  # RFC 7323 2.3: larger shifts are used as 14

Endpoint = tuple[str, int]

_OWN_ROW = "own"  # waits: nothing to wait for, delivered at its own row
_SPACE = "space"  # a SYN or FIN: waits for the receiver's answer or the sender's retransmission
_ACK = "ack"  # a pure ACK of the receiver's SYN/FIN: waits for the receiver's next packet


def relative(value: int, base: int) -> int:
    """value - base on the 32-bit circle."""
    return (value - base) & sq.MASK


def opener(packets: list[Packet]) -> tuple[Endpoint, Endpoint]:
    """(left, right): the sender of the first SYN without ACK, else the receiver of the first
    SYN-ACK, else the first packet's sender."""
    for p in packets:
        if p.flags & SYN and not p.flags & (ACK | RST):
            return p.source, p.destination
    for p in packets:
        if p.flags & SYN and p.flags & ACK:
            return p.destination, p.source
    return packets[0].source, packets[0].destination


def observe(packets: list[Packet], *, names: tuple[str, str] = ("client", "server"),
            complete_hint: bool | None = None, hold: float = HOLD) -> Conversation:
    """The Conversation of one connection's packets, all known (delivery decided by what
    came after). `complete_hint`, when given, overrides Conversation.complete."""
    if not packets:
        raise ValueError("no packets: nothing to draw")
    live = LiveObserver(opener(packets), names, hold=hold)
    for p in packets:
        live.feed(p)
    live.finish()
    conv = live.conversation()
    if complete_hint is not None:
        conv.complete = complete_hint
    return conv


@dataclass(slots=True)
class _Numbers:
    """What one side was seen to send, as the marks and relative numbers need it."""

    base: int | None = None  # relative 0: its ISN, else the first seq seen (or acked)
    isn: int | None = None  # seq of its SYN (or the ack-1 of a SYN-ACK answering it)
    snd_max: int | None = None  # end of the highest sequence space seen (or acked) from it
    wscale: int | None = None  # its SYN's window scale option
    fin_seq: int | None = None  # the sequence number its FIN occupies
    acked_peer_syn: bool = False
    first: Packet | None = None
    last: Packet | None = None
    dup_acks: int = 0


@dataclass(slots=True, eq=False)
class _Entry:
    """A packet between feed and settle: its numbers and marks, and its delivery decision."""

    index: int
    packet: Packet
    sender: int
    rel_seq: int
    rel_ack: int | None
    window: int
    shift: int | None
    sack: tuple[tuple[int, int], ...]
    marks: list[str]
    why: list[str]
    end: int  # seq + seq_space
    covers_syn: bool  # its ACK covers the receiver's SYN
    covers_fin: bool  # its ACK covers the receiver's FIN
    fin_rtx: bool  # a FIN this side sent before
    wait: str
    answer: int | None = None  # index of the receiver's next packet ("Y")
    resent_early: bool = False  # the sender resent this space before the receiver's answer
    decided: bool = False
    at: int | None = None  # the row it is delivered at; None: lost

    @property
    def receiver(self) -> int:
        return 1 - self.sender


@dataclass(slots=True)
class _Machine:
    """One side's inferred RFC 9293 state, and what it needs to recover from a bad guess."""

    state: str
    fin_sent: bool = False
    fin_received: bool = False
    peer_fin_first: bool = False  # the peer's FIN came before this side's own
    reset: bool = False  # closed by a RST


class LiveObserver:
    """Rows for packets fed one by one; a row is returned once settled (its states final).

    Delivery of a packet X from S to R is decided only for packets that can change R's
    state; the rest are delivered at their own row:
    - SYN or FIN: delivered at X's row when R's next packet Y acknowledges it; else at Y's
      row if R acknowledges it before S resends it (they crossed in flight), lost if S
      resends it first; at Y's row if neither happens; at X's row when R sends nothing after.
    - a pure ACK covering R's FIN (or first covering R's SYN): lost when R's next packet
      resends what it acknowledged, else delivered at its row.
    Rows settle in order, once every earlier decision is made; `settle(now)` decides
    what waited `hold` seconds as if the capture had ended there.
    """

    def __init__(self, endpoints: tuple[Endpoint, Endpoint],
                 names: tuple[str, str] = ("client", "server"), *, hold: float = HOLD) -> None:
        left, right = (tuple(e) for e in endpoints)
        if left == right:
            raise ValueError(f"both endpoints are {left[0]}:{left[1]}")
        self.endpoints: tuple[Endpoint, Endpoint] = (left, right)
        self.names = (names[0], names[1])
        self.hold = hold
        self.rows: list[Row] = []  # settled so far
        self.complete = True  # False once the first packet is not a SYN
        self._nums = (_Numbers(), _Numbers())
        self._machines: tuple[_Machine, _Machine] | None = None  # from the first settled row on
        self._initial: tuple[str, str] | None = None
        self._first: _Entry | None = None
        self._count = 0
        self._t0 = 0.0
        self._unsettled: deque[_Entry] = deque()
        self._undecided: list[_Entry] = []
        self._deliveries: dict[int, list[_Entry]] = {}  # row index -> entries delivered there

    # ------------------------------------------------------------ public

    def feed(self, packet: Packet, *, arrived: bool = False) -> list[Row]:
        """Take the next packet; return the rows this settled, in order.

        `arrived`: the receiver is known to have got it at once (live, a packet that reached
        usertcp's own engine), so its delivery need not be inferred.
        """
        entry = self._enter(packet)
        if arrived:
            entry.wait = _OWN_ROW
        for pending in list(self._undecided):
            self._consider(pending, entry)
        self._unsettled.append(entry)
        if entry.wait == _OWN_ROW:
            self._decide(entry, entry.index)
        else:
            self._undecided.append(entry)
        return self._settle_ready()

    def settle(self, now: float) -> list[Row]:
        """Decide what has waited `hold` seconds (as if the capture ended); settled rows."""
        for entry in list(self._undecided):
            if now - entry.packet.time >= self.hold:
                self._force(entry)
        return self._settle_ready()

    def finish(self) -> list[Row]:
        """The capture ended: decide and settle everything."""
        for entry in list(self._undecided):
            self._force(entry)
        return self._settle_ready()

    def idle(self) -> bool:
        """No row waits to be settled."""
        return not self._unsettled

    def initial_states(self) -> tuple[str, str]:
        """Both states before the first row (as known so far until the first row settles)."""
        return self._initial if self._initial is not None else self._guess_initial()

    @property
    def isn(self) -> tuple[int | None, int | None]:
        return self._nums[0].isn, self._nums[1].isn

    def conversation(self) -> Conversation:
        """The settled rows so far as a Conversation."""
        return Conversation(endpoints=self.endpoints, names=tuple(self.names),
                            initial=self.initial_states(), rows=list(self.rows), isn=self.isn,
                            complete=self.complete)

    # ------------------------------------------------------------ numbers and marks

    def _side_of(self, packet: Packet) -> int:
        source, destination = packet.source, packet.destination
        for side in (0, 1):
            if source == self.endpoints[side] and destination == self.endpoints[1 - side]:
                return side
        where = f"frame {packet.number}" if packet.number else "a packet"
        raise ValueError(f"{where} ({source[0]}:{source[1]} > {destination[0]}:{destination[1]})"
                         f" is not part of this connection")

    def _enter(self, p: Packet) -> _Entry:
        side = self._side_of(p)
        me, peer = self._nums[side], self._nums[1 - side]
        f = p.flags
        self._count += 1
        if self._count == 1:
            self._t0 = p.time
            self.complete = bool(f & SYN and not f & (ACK | RST))
        if me.base is None:
            me.base = p.seq
            if f & SYN:
                me.isn = p.seq
        if f & ACK and peer.base is None:
            # Its ack names where the peer is (Wireshark's way): a SYN-ACK names the peer's ISN.
            peer.base = relative(p.ack, 1) if f & SYN else p.ack
            if f & SYN:
                peer.isn = peer.base
            peer.snd_max = p.ack
        if f & SYN:
            me.wscale = p.wscale
        end = (p.seq + p.seq_space) & sq.MASK
        marks: list[str] = []
        why: list[str] = []
        self._mark(p, me, peer, marks, why)

        fin_rtx = False
        if f & FIN:
            fin_seq = (end - 1) & sq.MASK
            fin_rtx = me.fin_seq is not None or (me.snd_max is not None
                                                 and sq.lt(fin_seq, me.snd_max))
            me.fin_seq = fin_seq
        if not f & RST and (me.snd_max is None or sq.gt(end, me.snd_max)):
            me.snd_max = end
        covers_syn = bool(f & ACK and peer.isn is not None and sq.gt(p.ack, peer.isn))
        covers_fin = bool(f & ACK and peer.fin_seq is not None and sq.gt(p.ack, peer.fin_seq))
        pure_ack = f & ACK and not f & (SYN | FIN | RST) and p.length == 0
        if f & RST:
            wait = _OWN_ROW
        elif f & (SYN | FIN):
            wait = _SPACE
        elif pure_ack and (covers_fin or (covers_syn and not me.acked_peer_syn)):
            wait = _ACK
        else:
            wait = _OWN_ROW
        if covers_syn:
            me.acked_peer_syn = True
        if me.first is None:
            me.first = p
        me.last = p

        shift = None
        window = p.window
        if not f & SYN and me.wscale is not None and peer.wscale is not None:
            shift = min(me.wscale, MAX_WSCALE)
            window = p.window << shift
        sack = ()
        if peer.base is not None:
            sack = tuple((relative(a, peer.base), relative(b, peer.base)) for a, b in p.sack)
        entry = _Entry(index=self._count, packet=p, sender=side, rel_seq=relative(p.seq, me.base),
                       rel_ack=relative(p.ack, peer.base) if f & ACK else None, window=window,
                       shift=shift, sack=sack, marks=marks, why=why, end=end,
                       covers_syn=covers_syn, covers_fin=covers_fin, fin_rtx=fin_rtx, wait=wait)
        if self._first is None:
            self._first = entry
        return entry

    def _mark(self, p: Packet, me: _Numbers, peer: _Numbers, marks: list[str],
              why: list[str]) -> None:
        """The anomaly marks of p, judged against what was seen before it."""
        f = p.flags
        if f & RST:
            marks.append(RESET)
        elif p.window == 0:
            marks.append(ZERO_WINDOW)
            why.append("no receive window left")
        keep_alive = (me.snd_max is not None and not f & (SYN | FIN | RST) and p.length <= 1
                      and p.seq == relative(me.snd_max, 1))
        if keep_alive:
            marks.append(KEEP_ALIVE)
            why.append("keep-alive: one below what was sent")
        elif me.snd_max is not None and not f & RST:
            if p.seq_space and sq.lt(p.seq, me.snd_max):
                marks.append(RETRANSMISSION)
                what = "SYN" if f & SYN else ("FIN" if f & FIN and not p.length else "data")
                why.append(f"{what} sent before")
            elif not f & SYN and sq.gt(p.seq, me.snd_max):
                marks.append(PREVIOUS_NOT_CAPTURED)
                why.append(f"{sq.sub(p.seq, me.snd_max)} bytes before it were not captured")
        if f & ACK and peer.snd_max is not None and sq.gt(p.ack, peer.snd_max):
            marks.append(ACKED_UNSEEN)
            why.append(f"acknowledges {sq.sub(p.ack, peer.snd_max)} bytes never captured")
        last = me.last
        if (f & ACK and not f & (SYN | FIN | RST) and not p.length and not keep_alive
                and last is not None and last.flags & ACK and last.ack == p.ack
                and last.window == p.window and peer.snd_max is not None
                and sq.gt(peer.snd_max, p.ack)):
            me.dup_acks += 1
            marks.append(DUP_ACK)
            why.append(f"dup ack #{me.dup_acks}")
        else:
            me.dup_acks = 0

    # ------------------------------------------------------------ delivery

    def _consider(self, x: _Entry, new: _Entry) -> None:
        """Let the new packet decide x's delivery if it is the evidence x waits for."""
        p = new.packet
        if x.wait == _ACK:
            if new.sender == x.receiver:
                resends_acked = RETRANSMISSION in new.marks and sq.lt(p.seq, x.packet.ack)
                self._decide(x, None if resends_acked else x.index)
            return
        if new.sender == x.receiver:
            acks_x = bool(p.flags & ACK and sq.ge(p.ack, x.end))
            if x.answer is None:
                x.answer = new.index
                if x.resent_early:
                    # Sent again before the receiver said anything: the first copy is taken
                    # as lost (had it arrived, the receiver would have answered it).
                    self._decide(x, None)
                elif acks_x:
                    self._decide(x, x.index)
            elif acks_x:
                self._decide(x, x.answer)
        elif p.seq_space and _overlaps(p.seq, new.end, x.packet.seq, x.end):
            if p.flags & ACK and not x.packet.flags & ACK and x.packet.flags & SYN:
                return  # a simultaneous open's SYN-ACK answers the peer's SYN: not a loss
            if x.answer is None:
                x.resent_early = True
            else:
                self._decide(x, None)

    def _force(self, x: _Entry) -> None:
        """Decide x as if the capture ended now: delivered at the answer's row, else its own."""
        self._decide(x, x.answer if x.wait == _SPACE and x.answer is not None else x.index)

    def _decide(self, x: _Entry, at: int | None) -> None:
        x.decided = True
        x.at = at
        if x in self._undecided:
            self._undecided.remove(x)
        if at is None:
            x.marks.append(LOST)
            if x.wait == _ACK:
                x.why.append(f"lost: {self.names[x.receiver]} sent again what this acknowledged")
            else:
                x.why.append(f"lost: {self.names[x.sender]} sent it again")
        else:
            self._deliveries.setdefault(at, []).append(x)

    # ------------------------------------------------------------ states

    def _guess_initial(self) -> tuple[str, str]:
        first = self._first
        if first is None:
            return CLOSED, LISTEN
        f = first.packet.flags
        states = [ESTABLISHED, ESTABLISHED]
        if f & SYN and not f & (ACK | RST):
            # Answered by a reset (refused) or by its own SYN (simultaneous open): no listener.
            answer = self._nums[first.receiver].first
            active = answer is not None and bool(
                answer.flags & RST or (answer.flags & SYN and not answer.flags & ACK))
            states[first.sender] = CLOSED
            states[first.receiver] = CLOSED if active else LISTEN
        elif f & SYN and f & ACK and not f & RST:
            states[first.sender] = LISTEN
            states[first.receiver] = SYN_SENT
        return states[0], states[1]

    def _settle_ready(self) -> list[Row]:
        out = []
        while self._unsettled and self._unsettled[0].decided:
            out.append(self._settle(self._unsettled.popleft()))
        return out

    def _settle(self, e: _Entry) -> Row:
        if self._machines is None:
            self._initial = self._guess_initial()
            self._machines = (_Machine(self._initial[0]), _Machine(self._initial[1]))
        machines = self._machines
        why = list(e.why)
        self._send(machines[e.sender], e, why)
        for x in sorted(self._deliveries.pop(e.index, ()), key=lambda d: d.index):
            if x is not e:
                why.append(f"{self.names[x.sender]}'s {_what(x.packet)} (row {x.index})"
                           f" crossed this one in flight")
            self._receive(machines[x.receiver], x, why)
        row = Row(packet=e.packet, index=e.index, sender=e.sender, time=e.packet.time - self._t0,
                  rel_seq=e.rel_seq, rel_ack=e.rel_ack, window=e.window, window_shift=e.shift,
                  states=(machines[0].state, machines[1].state),
                  marks=tuple(sorted(dict.fromkeys(e.marks), key=MARKS.index)),
                  delivered=e.at is not None, why="; ".join(why), sack=e.sack)
        self.rows.append(row)
        return row

    def _send(self, m: _Machine, e: _Entry, why: list[str]) -> None:
        """The sender's own machine, moved by what it sends."""
        f = e.packet.flags
        name = self.names[e.sender]
        if f & RST:
            if m.state != LISTEN:  # a listener resetting a stray segment keeps listening
                m.state = CLOSED
                m.reset = True
            return
        if f & SYN:
            if f & ACK:
                if m.state in (CLOSED, LISTEN, SYN_SENT):
                    m.state = SYN_RECEIVED
            elif m.state in (CLOSED, LISTEN):
                m.state = SYN_SENT
        if f & FIN:
            if e.fin_rtx:
                if m.state in (FIN_WAIT_2, TIME_WAIT, CLOSED) and not m.reset:
                    # It would not resend a FIN that was acknowledged: that ACK never came.
                    m.state = _explain(m)
                    why.append(f"{name} resends its FIN: it was still in {m.state}")
            elif m.state in (ESTABLISHED, SYN_RECEIVED):
                m.state = FIN_WAIT_1
            elif m.state == CLOSE_WAIT:
                m.state = LAST_ACK
            elif m.state in (CLOSED, LISTEN, SYN_SENT) and not m.reset:
                m.fin_sent = True
                m.state = _explain(m)
            m.fin_sent = True
        elif not f & SYN and f & ACK and m.state in (CLOSED, LISTEN, SYN_SENT) and not m.reset:
            # Only a synchronized side sends a plain ACK: the guess was wrong.
            m.state = _explain(m)
            why.append(f"{name} sends as a synchronized side: {m.state}")

    def _receive(self, m: _Machine, x: _Entry, why: list[str]) -> None:
        """The receiver's machine, moved by a delivered segment (RFC 9293 3.10.7 order)."""
        f = x.packet.flags
        # In SYN-SENT only an ACK of exactly ISN+1 is acceptable (RFC 9293 3.10.7.3).
        isn = self._nums[x.receiver].isn
        acks_syn = bool(f & ACK and isn is not None and x.packet.ack == (isn + 1) & sq.MASK)
        if f & RST:
            if m.state == LISTEN or (m.state == SYN_SENT and not acks_syn):
                return  # ignored: nothing to reset / not an acceptable reset
            if m.state != CLOSED:
                m.state = CLOSED
                m.reset = True
            return
        if m.state == CLOSED:
            return
        if f & SYN:
            if f & ACK:
                if m.state == SYN_SENT:
                    if not acks_syn:
                        return
                    m.state = ESTABLISHED
            elif m.state in (LISTEN, SYN_SENT):
                m.state = SYN_RECEIVED
        elif m.state in (LISTEN, SYN_SENT):
            return  # not synchronized: only a SYN means anything
        if f & ACK:
            if m.state == SYN_RECEIVED and x.covers_syn:
                m.state = ESTABLISHED
            if x.covers_fin:
                m.state = {FIN_WAIT_1: FIN_WAIT_2, CLOSING: TIME_WAIT,
                           LAST_ACK: CLOSED}.get(m.state, m.state)
        if f & FIN:
            if not m.fin_sent:
                m.peer_fin_first = True
            m.fin_received = True
            if m.state in (ESTABLISHED, SYN_RECEIVED):
                m.state = CLOSE_WAIT
            elif m.state == FIN_WAIT_1:
                m.state = CLOSING
            elif m.state == FIN_WAIT_2:
                m.state = TIME_WAIT
            elif m.state == TIME_WAIT:
                why.append(f"{self.names[x.receiver]} in TIME-WAIT: the resent FIN restarts 2·MSL")


def _explain(m: _Machine) -> str:
    """The state that explains a side sending, from the FINs it sent and received (its own
    FIN taken as not acknowledged, since it still sends)."""
    if not m.fin_sent:
        return CLOSE_WAIT if m.fin_received else ESTABLISHED
    if not m.fin_received:
        return FIN_WAIT_1
    return LAST_ACK if m.peer_fin_first else CLOSING


def _overlaps(a_start: int, a_end: int, b_start: int, b_end: int) -> bool:
    """[a_start, a_end) and [b_start, b_end) share a sequence number (modular)."""
    return sq.between(b_start, a_start, b_end) or sq.between(a_start, b_start, a_end)


def _what(p: Packet) -> str:
    if p.flags & SYN:
        return "SYN-ACK" if p.flags & ACK else "SYN"
    return "FIN" if p.flags & FIN else "segment"
