"""`--trace [FILTER]`: every matching connection drawn live as a ladder while the stack serves.

The tracer is a device middleware (it sees every packet both ways) plus a
state listener on the asyncio Stack (usertcp's real state, from its engine).
The peer's state is inferred by the observer from what each side sent. Rows
are printed once the observer has settled them (a packet whose delivery is
in doubt waits for the receiver's next packet, or half a second).

Each connection's lines start with its number, `[3] `, since several
connections may be drawn at once.
"""

from __future__ import annotations

import sys
from typing import TextIO

from ..wire.tcp import ACK, SYN
from .filter import compile_filter, matches_connection
from .model import Packet, Row
from .observer import LiveObserver
from .recorder import PacketRecorder
from .text import Style, TextLadder, stream_takes_unicode

# StateChanged causes that are the application's doing, not a packet's.
APPLICATION_CAUSES = frozenset({"close", "connect"})
SETTLE_EVERY = 0.25  # seconds between looks for rows whose evidence never came
OURS = "usertcp"
THEIRS = "peer"


class _Traced:
    """One connection being drawn."""

    def __init__(self, number: int, first: Packet, ours: tuple[str, int], out, style: Style):
        self.number = number
        self.ours = ours
        # A SYN-ACK first (its SYN went by before tracing began): the receiver opened.
        syn_ack = first.flags & SYN and first.flags & ACK
        opener, other = ((first.destination, first.source) if syn_ack
                         else (first.source, first.destination))
        self.our_side = 0 if opener == ours else 1
        names = (OURS, THEIRS) if self.our_side == 0 else (THEIRS, OURS)
        self.observer = LiveObserver((opener, other), names)
        prefix = f"[{number}] "
        self.ladder = TextLadder(lambda line: out(prefix + line), style, endpoints=(opener, other),
                                 names=names, initial=self.observer.initial_states())
        self.engine_states: dict[int, str] = {}  # id(packet) -> usertcp's state after it
        self.closed = False


class Tracer:
    """Draws every connection that FILTER matches; see the module docstring."""

    def __init__(self, filter_text: str = "", out: TextIO | None = None, *,
                 color: bool | None = None, hold: float = 0.5) -> None:
        self.stream = out if out is not None else sys.stderr
        self.filter = compile_filter(filter_text or "")
        if color is None:
            color = self.stream.isatty()
        self.style = Style(color, stream_takes_unicode(self.stream))
        self.hold = hold
        self.recorder: PacketRecorder | None = None
        self.stack = None
        self._loop = None
        self._timer = None
        self._states: dict[tuple, str] = {}  # (ours, theirs) -> usertcp's latest state
        self._traced: dict[tuple, _Traced] = {}
        self._pending: list[tuple[_Traced, Packet, tuple]] = []  # received, state not yet seen
        self._settled_by_app: set[int] = set()  # pending packets whose state an app call fixed
        self._count = 0
        self.connections_drawn = 0

    # ---------------------------------------------------------- wiring

    def wrap(self, device):
        """For `Stack.open(wrap=...)`: the recorder around the device."""
        self.recorder = PacketRecorder(device, match=self._match, on_packet=self._on_packet,
                                       one_at_a_time=True)
        return self.recorder

    def attach(self, stack) -> None:
        """Listen to the stack's state changes; the recorder's clock becomes the loop's."""
        self.stack = stack
        self._loop = stack.loop
        if self.recorder is not None:
            self.recorder.clock = stack.loop.time
        stack.add_state_listener(self._on_state)

    def close(self) -> None:
        """Draw whatever is left, e.g. on shutdown."""
        self._complete_pending()
        for traced in list(self._traced.values()):
            self._emit(traced, traced.observer.finish())
        self._traced.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.stack is not None:
            self.stack.remove_state_listener(self._on_state)
        self._flush()

    # ---------------------------------------------------------- input

    def _match(self, src: str, sport: int, dst: str, dport: int) -> bool:
        return matches_connection(self.filter, (src, sport), (dst, dport))

    def _on_state(self, event) -> None:
        key = (tuple(event.local[:2]), tuple(event.remote[:2]))
        new = str(event.new)
        self._states[key] = new
        # A received packet's row shows the state it left the engine in, before the
        # application reacted: one that closes at once (CLOSE-WAIT, then LAST-ACK in the same
        # pass) shows CLOSE-WAIT on the peer's FIN and LAST-ACK on its own FIN.
        for traced, packet, pending_key in reversed(self._pending):
            if pending_key != key or id(packet) in self._settled_by_app:
                continue
            if event.cause in APPLICATION_CAUSES:
                traced.engine_states[id(packet)] = str(event.old)
                self._settled_by_app.add(id(packet))
            else:
                traced.engine_states[id(packet)] = new
            break

    def _on_packet(self, packet: Packet, outbound: bool) -> None:
        self._complete_pending()  # what came in before has been handled by now
        ours = packet.source if outbound else packet.destination
        theirs = packet.destination if outbound else packet.source
        key = (ours, theirs)
        traced = self._traced.get(key)
        if traced is not None and traced.closed and packet.flags & SYN and not packet.flags & ACK:
            self._retire(key)  # the 4-tuple is used again: a new connection
            traced = None
        if traced is None:
            self._count += 1
            traced = _Traced(self._count, packet, ours, self._out, self.style)
            self._traced[key] = traced
            self.connections_drawn += 1
            self._out("")
            traced.ladder.header()
        if outbound:
            state = self._states.get(key)
            if state is not None:
                traced.engine_states[id(packet)] = state
            self._emit(traced, traced.observer.feed(packet))
        else:
            self._pending.append((traced, packet, key))
            if self._loop is not None:
                self._loop.call_soon(self._complete_pending)
        self._schedule_settle()

    def _complete_pending(self) -> None:
        pending, self._pending = self._pending, []
        self._settled_by_app.clear()
        for traced, packet, key in pending:
            state = traced.engine_states.get(id(packet)) or self._states.get(key)
            if state is not None:
                traced.engine_states[id(packet)] = state
            self._emit(traced, traced.observer.feed(packet, arrived=True))
            if state == "CLOSED":
                traced.closed = True

    # ---------------------------------------------------------- output

    def _emit(self, traced: _Traced, rows: list[Row]) -> None:
        for row in rows:
            state = traced.engine_states.pop(id(row.packet), None)
            if state is not None:
                states = list(row.states)
                states[traced.our_side] = state
                row.states = (states[0], states[1])
            traced.ladder.row(row)
        if self._states.get((traced.ours, _other(traced))) == "CLOSED":
            traced.closed = True
        self._flush()

    def _retire(self, key) -> None:
        traced = self._traced.pop(key, None)
        if traced is not None:
            self._emit(traced, traced.observer.finish())

    def _out(self, line: str) -> None:
        try:
            self.stream.write(line + "\n")
        except (OSError, ValueError):
            pass

    def _flush(self) -> None:
        try:
            self.stream.flush()
        except (OSError, ValueError):
            pass

    def _schedule_settle(self) -> None:
        if self._loop is None or self._timer is not None:
            return
        self._timer = self._loop.call_later(SETTLE_EVERY, self._settle)

    def _settle(self) -> None:
        self._timer = None
        self._complete_pending()
        now = self._loop.time()
        for key, traced in list(self._traced.items()):
            self._emit(traced, traced.observer.settle(now))
            if traced.closed and traced.observer.idle():
                del self._traced[key]
        if self._traced:
            self._schedule_settle()


def _other(traced: _Traced) -> tuple[str, int]:
    left, right = traced.observer.endpoints
    return right if traced.our_side == 0 else left
