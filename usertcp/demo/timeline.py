"""The demo's ladder, drawn live: recorded packets and application calls, in order.

The observer gives each packet its row (relative numbers, marks); the row's states are
then replaced by the real ones: the kernel's read from /proc/net/tcp, usertcp's from its
engine. A packet the demo's fault dropped is marked lost. Rows and notes print strictly in
the order they happened, each once everything it shows is known.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from ..ladder.kernel import kernel_tcp_state
from ..ladder.model import (
    CLOSED,
    CLOSING,
    FIN_WAIT_1,
    LAST_ACK,
    LEFT,
    LISTEN,
    LOST,
    RIGHT,
    SYN_RECEIVED,
    SYN_SENT,
    Packet,
    Row,
)
from ..ladder.observer import LiveObserver
from ..ladder.text import Style, TextLadder
from ..wire.tcp import FIN, RST, SYN

NAMES = ("kernel", "usertcp")  # LEFT: the kernel always opens; RIGHT: usertcp
KERNEL, USERTCP = LEFT, RIGHT
HOLD = 2.0  # the observer waits this long for evidence: past the kernel's 1 s SYN retry
SETTLE_EVERY = 0.1  # seconds between the observer's looks at rows that wait for evidence
# After usertcp sent a packet that must move the kernel (a SYN, FIN or RST, or the ACK a
# closing socket waits for), /proc is read again every POLL seconds for up to SETTLE.
POLL = 0.001
SETTLE = 0.03
_WAITING_FOR_ACK = frozenset({SYN_SENT, SYN_RECEIVED, FIN_WAIT_1, CLOSING, LAST_ACK})


@dataclass(eq=False)
class Entry:
    """One packet as recorded, and what its row needs before it can be drawn."""

    packet: Packet
    outbound: bool  # sent by usertcp
    lost: bool = False  # dropped by the demo's fault on the way out
    kernel_state: str | None = None
    stack_state: str | None = None
    row: Row | None = None

    @property
    def ready(self) -> bool:
        return None not in (self.kernel_state, self.stack_state, self.row)


class Timeline:
    """Feeds recorded packets to the observer and prints rows and notes in order."""

    def __init__(self, say: Callable[[str], None], style: Style, *,
                 kernel: tuple[str, int], stack_endpoint: tuple[str, int],
                 stack_initial: str = LISTEN) -> None:
        self.loop = asyncio.get_running_loop()
        self.kernel = kernel
        self.stack_endpoint = stack_endpoint
        self.stack_initial = stack_initial
        endpoints = (kernel, stack_endpoint)
        self.observer = LiveObserver(endpoints, NAMES, hold=HOLD)
        self.ladder = TextLadder(say, style, endpoints=endpoints, names=NAMES,
                                 initial=(CLOSED, stack_initial))
        self.stack = None  # the aio Stack whose engine gives usertcp's states
        self.lost_check: Callable[[], bool] = lambda: False
        self.entries: list[Entry] = []  # every packet, in order
        self._queue: deque[Entry | tuple[str, int]] = deque()  # not yet printed
        self._by_packet: dict[int, Entry] = {}  # id(packet) -> its entry, until it has a row
        self._awaiting_engine: list[Entry] = []  # received; the engine has not handled them
        self._kernel_last = CLOSED
        self.kernel_history: list[str] = [CLOSED]  # every state the kernel was seen in
        self._seen_connection = False
        self.stack_srtt: float | None = None  # usertcp's smoothed RTT, as last seen
        self._ticker: asyncio.TimerHandle | None = None
        self._isn_known = [False, False]
        self.proc_reads = 0  # reads of /proc/net/tcp and the time they took (in the
        self.proc_read_time = 0.0  # times between rows, so the summary says how much)

    # ------------------------------------------------------------------ states

    def kernel_state(self) -> str:
        started = time.perf_counter()
        state = kernel_tcp_state(self.kernel, self.stack_endpoint)
        self.proc_reads += 1
        self.proc_read_time += time.perf_counter() - started
        self._kernel_last = state
        if not self.kernel_history or self.kernel_history[-1] != state:
            self.kernel_history.append(state)
        return state

    def stack_state(self) -> str:
        """usertcp's state of this connection, from the engine's table."""
        listening = False
        for row in self.stack.connections() if self.stack is not None else ():
            if row["conn_id"] is None:
                listening = listening or row["local"][1] == self.stack_endpoint[1]
            elif (tuple(row["local"][:2]) == self.stack_endpoint
                  and tuple(row["remote"][:2]) == self.kernel):
                self._seen_connection = True
                if row.get("srtt") is not None:
                    self.stack_srtt = row["srtt"]
                return row["state"]
        return LISTEN if listening and not self._seen_connection else CLOSED

    # ------------------------------------------------------------------ input

    def on_packet(self, packet: Packet, outbound: bool) -> None:
        """The recorder's callback: one packet sent (outbound) or about to be handled."""
        self._engine_done()  # what came in before has been handled by now
        entry = Entry(packet, outbound)
        self.entries.append(entry)
        self._queue.append(entry)
        self._by_packet[id(packet)] = entry
        side = USERTCP if outbound else KERNEL
        if packet.flags & SYN and not self._isn_known[side]:
            self._isn_known[side] = True
            self.ladder.set_isn(side, packet.seq)
        if outbound:
            entry.lost = self.lost_check()
            entry.stack_state = self.stack_state()
            self._sample_kernel_after_send(entry)
        else:
            entry.kernel_state = self.kernel_state()  # it has sent this one already
            self._awaiting_engine.append(entry)
            self.loop.call_soon(self._engine_done)
        self._rows(self.observer.feed(packet))
        if self._ticker is None:
            self._ticker = self.loop.call_later(SETTLE_EVERY, self._tick)

    def note(self, text: str, side: int) -> None:
        """An application's call, drawn beside its side's axis in its place among the rows."""
        self._engine_done()
        self._queue.append((text, side))
        self.flush()

    def finish(self) -> None:
        """The conversation is over: settle every row and draw all that is left."""
        self._engine_done()
        for entry in self.entries:
            if entry.kernel_state is None:
                entry.kernel_state = self.kernel_state()
        self._rows(self.observer.finish())
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        self.flush()

    # ------------------------------------------------------------------ internals

    def _engine_done(self) -> None:
        if self._awaiting_engine:
            state = self.stack_state()
            for entry in self._awaiting_engine:
                entry.stack_state = state
            self._awaiting_engine.clear()
            self.flush()

    def _sample_kernel_after_send(self, entry: Entry) -> None:
        before = self._kernel_last
        state = self.kernel_state()
        flags = entry.packet.flags
        must_move = bool(flags & (SYN | FIN | RST)) or before in _WAITING_FOR_ACK
        if state != before or not must_move or entry.lost:
            entry.kernel_state = state
            return
        # A TUN write is normally handled before write() returns; should it have been
        # queued, look again shortly, without blocking the loop.
        deadline = self.loop.time() + SETTLE

        def again() -> None:
            now_state = self.kernel_state()
            if now_state != before or self.loop.time() >= deadline:
                entry.kernel_state = now_state
                self.flush()
            else:
                self.loop.call_later(POLL, again)

        self.loop.call_later(POLL, again)

    def _rows(self, rows: list[Row]) -> None:
        for row in rows:
            entry = self._by_packet.pop(id(row.packet), None)
            if entry is not None:
                entry.row = row
        self.flush()

    def _tick(self) -> None:
        self._ticker = None
        self._rows(self.observer.settle(self.loop.time()))
        if not self.observer.idle():
            self._ticker = self.loop.call_later(SETTLE_EVERY, self._tick)

    def flush(self) -> None:
        """Draw everything at the head of the queue that is ready."""
        while self._queue:
            head = self._queue[0]
            if isinstance(head, tuple):
                self.ladder.note(*head)
            elif head.ready:
                self.ladder.row(self._real(head))
            else:
                return
            self._queue.popleft()

    @property
    def t0(self) -> float:
        """The first packet's time: the ladder's zero."""
        return self.entries[0].packet.time if self.entries else self.loop.time()

    @property
    def drawn_all(self) -> bool:
        return not self._queue

    def _real(self, entry: Entry) -> Row:
        row = entry.row
        row.states = (entry.kernel_state, entry.stack_state)
        if entry.lost:
            row.delivered = False
            if LOST not in row.marks:
                row.marks = (*row.marks, LOST)
        return row
