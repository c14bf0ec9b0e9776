"""Two pure `Stack`s joined by a seeded, virtual-clock link, and a small app layer.

The link is the test harness the architecture promises: per direction it can
lose, duplicate, reorder and delay packets, reproducibly from one seed. Time is
a float the link owns; nothing here reads a clock.

    a, b = Stack("10.0.0.1"), Stack("10.0.0.2")
    link = Link(a, b, seed=7, faults=Faults(loss=0.05, duplicate=0.01, reorder=0.02))
    b.listen(80)
    link.app_b.accept_with(lambda cid, remote: dict(source=reply))
    s = link.app_a.open("10.0.0.2", 80, link.now, source=request)
    assert link.run_until(lambda: s.finished, max_time=60)

One step of `run_until`:
  1. advance the clock to the earliest of: the next packet arrival, a.next_deadline(),
     b.next_deadline();
  2. a.handle_timers(now), b.handle_timers(now);
  3. deliver every packet due by now, in arrival order;
  4. let each app drain its events (recv on DataReceived, send as space allows, shutdown);
  5. collect packets_to_send(now) from both stacks and put them on the link;
  6. check invariants of every connection of both stacks; stop if pred() holds.
"""

from __future__ import annotations

import hashlib
import heapq
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from usertcp.tcp.buffers import TRIM_AT
from usertcp.stack import Stack
from usertcp.tcp import events as ev
from usertcp.tcp.connection import Connection
from usertcp.tcp.seq import HALF, MASK
from usertcp.tcp.state import State

__all__ = ["CLEAN", "App", "Faults", "Link", "Stream", "Transfer", "check_clean",
           "check_invariants", "le"]


def le(a: int, b: int) -> bool:
    """a <= b on the 32-bit sequence circle (written out here, not imported, on purpose)."""
    return ((b - a) & MASK) < HALF


# ---------------------------------------------------------------------------- invariants

def check_invariants(stack: Stack) -> None:
    """Raise AssertionError if any connection of `stack` breaks a structural invariant."""
    cfg = stack.config
    for conn in list(stack._by_id.values()):
        if type(conn) is not Connection:
            continue  # TIME-WAIT entries hold no buffers
        where = f"{stack.address_str} conn {conn.id} {conn.state}"
        una, nxt, mx = conn.snd_una, conn.snd_nxt, conn.snd_max
        assert le(una, nxt), f"{where}: SND.UNA {una} > SND.NXT {nxt}"
        assert le(nxt, mx), f"{where}: SND.NXT {nxt} > SND.MAX {mx}"
        queued = conn._queued()  # the buffer's front may hold acknowledged bytes (TRIM_AT)
        assert ((mx - una) & MASK) <= queued + 2, (
            f"{where}: {((mx - una) & MASK)} bytes in flight but only {queued} queued")
        assert queued <= cfg.send_buffer, f"{where}: send buffer {queued} > {cfg.send_buffer}"
        assert len(conn.sndbuf) - queued <= TRIM_AT + 2 * 65535, (
            f"{where}: {len(conn.sndbuf) - queued} acknowledged bytes kept")
        # sndbuf[0] is BUF.SEQ: SND.UNA lies within the buffer, or one past it (our FIN).
        assert ((una - conn.buf_seq) & MASK) <= len(conn.sndbuf) + 1 or conn.snd_una == conn.iss
        assert len(conn.rcvbuf) <= cfg.receive_buffer, (
            f"{where}: receive buffer {len(conn.rcvbuf)} > {cfg.receive_buffer}")
        ooo = conn.ooo.size
        assert 0 <= ooo <= cfg.receive_buffer, (
            f"{where}: {ooo} out-of-order bytes > {cfg.receive_buffer}")
        assert sum(len(d) for _, d in conn.ooo.blocks) == ooo, f"{where}: ooo.size is stale"
        assert len(conn.rcvbuf) + ooo <= cfg.receive_buffer, (
            f"{where}: {len(conn.rcvbuf)} buffered + {ooo} out of order > {cfg.receive_buffer}")
        if conn.state not in (State.SYN_SENT, State.CLOSED):
            wnd = (conn.rcv_adv - conn.rcv_nxt) & MASK
            assert wnd < HALF, f"{where}: RCV.ADV {conn.rcv_adv} is behind RCV.NXT {conn.rcv_nxt}"


# ---------------------------------------------------------------------------- faults

@dataclass(frozen=True)
class Faults:
    """What happens to packets in one direction; probabilities are per packet."""

    loss: float = 0.0
    duplicate: float = 0.0  # the copy gets its own delay, so it may arrive first
    reorder: float = 0.0  # this share of packets is held back by an extra random delay
    reorder_extra: float = 0.005  # up to this much extra (seconds)
    delay: float = 0.001
    jitter: float = 0.0  # +/- uniform, clamped so a packet never arrives before it was sent


CLEAN = Faults()


# ---------------------------------------------------------------------------- app layer

class Stream:
    """One connection as an application sees it.

    Writes `source` as send() accepts it, reads with recv() when DataReceived
    says so, shuts down once everything is written, and records how it ended.
    """

    def __init__(self, app: App, conn_id: int, source=b"", *, shutdown_when_done: bool = True,
                 close_on_eof: bool = False, keep: bool = False, read_chunk: int = -1):
        self.app = app
        self.conn_id = conn_id
        self.source = memoryview(bytes(source))
        self.sent = 0
        self.shutdown_when_done = shutdown_when_done
        self.close_on_eof = close_on_eof
        self.read_chunk = read_chunk  # -1: read everything at once
        self.received = 0
        self.hash = hashlib.sha256()
        self.data = bytearray() if keep else None
        self.readable = False
        self.connected = False
        self.shut = False
        self.closed_called = False
        self.peer_closed = False
        self.end: ev.Event | None = None  # ConnectionClosed, ConnectionReset, ConnectionTimedOut
        self.transitions: list[tuple[State, State, str]] = []

    # -- what tests look at
    @property
    def finished(self) -> bool:
        """The connection ended and everything it received has been read."""
        return self.end is not None and not self.readable

    @property
    def clean(self) -> bool:
        return (type(self.end) is ev.ConnectionClosed and self.peer_closed and self.shut
                and self.sent == len(self.source))

    def digest(self) -> str:
        return self.hash.hexdigest()

    def state(self) -> State:
        return self.app.stack.state(self.conn_id)

    # -- driven by App.poll
    def on_event(self, event) -> None:
        t = type(event)
        if t is ev.DataReceived:
            self.readable = True
        elif t is ev.Connected or t is ev.ConnectionAccepted:
            self.connected = True
        elif t is ev.PeerClosed:
            self.peer_closed = True
            self.readable = True  # whatever is left before the FIN
        elif t is ev.StateChanged:
            self.transitions.append((event.old, event.new, event.cause))
        elif t in (ev.ConnectionClosed, ev.ConnectionReset, ev.ConnectionTimedOut) \
                and self.end is None:
            self.end = event

    def pump(self, now: float) -> None:
        stack = self.app.stack
        cid = self.conn_id
        while self.readable:
            data = stack.recv(cid, self.read_chunk)
            if data:
                self.received += len(data)
                self.hash.update(data)
                if self.data is not None:
                    self.data += data
            if not data or self.read_chunk < 0 or len(data) < self.read_chunk:
                self.readable = False
            if self.read_chunk > 0 and self.end is None:
                break  # a slow reader: one chunk per step while the connection lives
        if self.close_on_eof and self.shut and self.peer_closed and not self.closed_called \
                and not self.readable and self.end is None:
            self.closed_called = True
            stack.close(cid, now)
        if self.end is not None or self.shut:
            return
        total = len(self.source)
        if self.sent < total:
            space = stack.send_space(cid)
            if space:
                self.sent += stack.send(cid, self.source[self.sent:self.sent + space], now)
        if self.sent == total and self.shutdown_when_done:
            state = stack.state(cid)
            if state is State.ESTABLISHED or state is State.CLOSE_WAIT:
                stack.shutdown(cid, now)
                self.shut = True


class App:
    """All streams on one stack: drains its events and pumps its streams."""

    def __init__(self, stack: Stack):
        self.stack = stack
        self.streams: dict[int, Stream] = {}
        self.all_streams: list[Stream] = []
        self._accept: Callable[[int, tuple[str, int]], dict | None] | None = None
        self._early: dict[int, list] = {}  # events of connections not yet accepted
        self.unclaimed: list = []

    def open(self, address, port: int, now: float, source=b"", **kw) -> Stream:
        cid = self.stack.connect(address, port, now)
        return self._add(cid, source, kw)

    def accept_with(self, factory: Callable[[int, tuple[str, int]], dict | None]) -> None:
        """factory(conn_id, remote) -> Stream keyword arguments (source=..., ...)."""
        self._accept = factory

    def _add(self, cid: int, source, kw) -> Stream:
        stream = Stream(self, cid, source, **kw)
        self.streams[cid] = stream
        self.all_streams.append(stream)
        for event in self._early.pop(cid, ()):
            stream.on_event(event)
        return stream

    def poll(self, now: float) -> None:
        stack = self.stack
        streams = self.streams
        while (event := stack.next_event()) is not None:
            stream = streams.get(event.conn_id)
            if stream is None:
                if type(event) is ev.ConnectionAccepted and self._accept is not None:
                    kw = self._accept(event.conn_id, event.remote) or {}
                    stream = self._add(event.conn_id, kw.pop("source", b""), kw)
                else:
                    self._early.setdefault(event.conn_id, []).append(event)
                    continue
            stream.on_event(event)
        for stream in list(streams.values()):
            stream.pump(now)
            if stream.end is not None and not stream.readable:
                del streams[stream.conn_id]


# ---------------------------------------------------------------------------- the link

class Link:
    def __init__(self, a: Stack, b: Stack, *, seed: int = 0, faults: Faults = CLEAN,
                 faults_ab: Faults | None = None, faults_ba: Faults | None = None,
                 now: float = 0.0, check: bool = True, max_steps: int = 5_000_000):
        self.stacks = (a, b)
        self.apps = (App(a), App(b))
        self.faults = (faults_ab or faults, faults_ba or faults)
        self.seed = seed
        self._rng = (random.Random(seed * 2 + 1), random.Random(seed * 2 + 2))
        self.now = now
        self.check = check
        self.max_steps = max_steps
        self._queue: list = []  # heap of (arrival, n, destination index, packet)
        self._n = 0
        self.steps = 0
        self.stats = (Counter(), Counter())  # per direction: sent, lost, duplicated, ...
        self.taps: list[Callable[[int, bytes, float], None]] = []  # (direction, packet, now)

    @property
    def a(self) -> Stack:
        return self.stacks[0]

    @property
    def b(self) -> Stack:
        return self.stacks[1]

    @property
    def app_a(self) -> App:
        return self.apps[0]

    @property
    def app_b(self) -> App:
        return self.apps[1]

    # -- putting packets on the wire
    def _put(self, direction: int, packet: bytes) -> None:
        f = self.faults[direction]
        rng = self._rng[direction]
        stats = self.stats[direction]
        stats["sent"] += 1
        if len(packet) >= 40 and packet[9] == 6 and packet[33] & 0x04:
            stats["rst"] += 1
        for tap in self.taps:
            tap(direction, packet, self.now)
        if f.loss and rng.random() < f.loss:
            stats["lost"] += 1
            return
        copies = 1
        if f.duplicate and rng.random() < f.duplicate:
            stats["duplicated"] += 1
            copies = 2
        for _ in range(copies):
            delay = f.delay
            if f.jitter:
                delay += rng.uniform(-f.jitter, f.jitter)
                if delay < 0:
                    delay = 0.0
            if f.reorder and rng.random() < f.reorder:
                stats["reordered"] += 1
                delay += rng.uniform(0, f.reorder_extra)
            self._n += 1
            heapq.heappush(self._queue, (self.now + delay, self._n, 1 - direction, packet))

    def inject(self, to: int, packet: bytes, delay: float = 0.0) -> None:
        """Put a hand-made packet on the wire towards stack `to` (0 = a, 1 = b)."""
        self._n += 1
        heapq.heappush(self._queue, (self.now + delay, self._n, to, packet))

    def flush(self) -> None:
        """Let the apps act, then move everything the stacks have to send onto the link."""
        now = self.now
        for app in self.apps:
            app.poll(now)
        for direction, stack in enumerate(self.stacks):
            for packet in stack.packets_to_send(now):
                self._put(direction, packet)
        if self.check:
            for stack in self.stacks:
                check_invariants(stack)

    def next_time(self) -> float | None:
        t = self._queue[0][0] if self._queue else None
        for stack in self.stacks:
            d = stack.next_deadline()
            if d is not None and (t is None or d < t):
                t = d
        return t

    def in_flight(self) -> int:
        return len(self._queue)

    # -- the loop
    def run_until(self, pred: Callable[[], bool], max_time: float) -> bool:
        """Step until pred() is true (True) or `max_time` more virtual seconds pass (False).

        Also returns False when nothing is left to happen (no packet in flight, no
        timer armed). More than `max_steps` steps raise: that is a livelock.
        """
        end = self.now + max_time
        stacks = self.stacks
        queue = self._queue
        self.flush()
        for _ in range(self.max_steps):
            if pred():
                return True
            t = self.next_time()
            if t is None:
                return False
            if t > end:
                self.now = end
                return False
            now = self.now = max(self.now, t)
            self.steps += 1
            for stack in stacks:
                stack.handle_timers(now)
            while queue and queue[0][0] <= now:
                _, _, to, packet = heapq.heappop(queue)
                stacks[to].receive(packet, now)
            self.flush()
        raise RuntimeError(f"link seed {self.seed}: more than {self.max_steps} steps "
                           f"(virtual time {self.now:.3f})")

    def advance(self, seconds: float) -> None:
        """Run for `seconds` of virtual time, whatever happens."""
        end = self.now + seconds
        self.run_until(lambda: False, seconds)
        self.now = max(self.now, end)


# ---------------------------------------------------------------------------- one transfer

class Transfer:
    """A connects to B and each writes its source; both shut down once written.

    `check()` asserts what a clean transfer means: every byte arrived intact
    (sha256), both sides saw the peer's FIN and ended with ConnectionClosed,
    both are CLOSED or in TIME-WAIT, and no RST crossed the link.
    """

    def __init__(self, link: Link, a_to_b: bytes, b_to_a: bytes, *, port: int = 80,
                 listen: bool = True, **stream_kw):
        self.link = link
        self.a_to_b = a_to_b
        self.b_to_a = b_to_a
        if listen:
            link.b.listen(port)
        self._servers = link.app_b.all_streams
        link.app_b.accept_with(lambda cid, remote: dict(source=b_to_a, **stream_kw))
        self.client = link.app_a.open(link.b.address_str, port, link.now, source=a_to_b,
                                      **stream_kw)

    @property
    def server(self) -> Stream | None:
        return self._servers[0] if self._servers else None

    def done(self) -> bool:
        server = self.server
        return self.client.finished and server is not None and server.finished

    def run(self, max_time: float = 3600.0) -> None:
        ok = self.link.run_until(self.done, max_time)
        assert ok, f"seed {self.link.seed}: transfer did not finish: {self.describe()}"

    def describe(self) -> str:
        link = self.link
        parts = [f"t={link.now:.3f} steps={link.steps} link={[dict(s) for s in link.stats]}"]
        for name, stream, stack in (("A", self.client, link.a), ("B", self.server, link.b)):
            if stream is None:
                parts.append(f"{name}: not accepted")
                continue
            parts.append(f"{name}: sent={stream.sent} received={stream.received} "
                         f"end={type(stream.end).__name__} state={stream.state()} "
                         f"peer_closed={stream.peer_closed} counters={dict(stack.counters)}")
        return "; ".join(parts)

    def check(self) -> None:
        check_clean(self.link, [(self.client, self.b_to_a), (self.server, self.a_to_b)])


def check_clean(link: Link, pairs) -> None:
    """Each (stream, bytes it should have received): intact data and a clean FIN/FIN close."""
    seed = link.seed
    for stream, expected in pairs:
        assert stream is not None, f"seed {seed}: a connection was never accepted"
        who = f"seed {seed}: {stream.app.stack.address_str} conn {stream.conn_id}"
        assert stream.received == len(expected), (
            f"{who}: received {stream.received} bytes of {len(expected)}")
        assert stream.digest() == hashlib.sha256(expected).hexdigest(), f"{who}: data corrupted"
        assert stream.sent == len(stream.source), f"{who}: wrote {stream.sent} of {len(stream.source)}"
        assert type(stream.end) is ev.ConnectionClosed, f"{who}: ended with {stream.end!r}"
        assert stream.peer_closed and stream.shut, f"{who}: not a FIN/FIN close"
        assert stream.state() in (State.CLOSED, State.TIME_WAIT), f"{who}: in {stream.state()}"
        states = [new for _, new, _ in stream.transitions]
        assert State.ESTABLISHED in states, f"{who}: never established: {states}"
        assert states[-1] in (State.CLOSED, State.TIME_WAIT), f"{who}: {states}"
        assert State.FIN_WAIT_1 in states or State.LAST_ACK in states, f"{who}: {states}"
        causes = [cause for _, _, cause in stream.transitions]
        assert stream.transitions[-1][2] in ("fin", "fin acked", "2msl timeout"), (
            f"{who}: ended by {stream.transitions[-1]}")
        assert not {"reset", "abort", "data after close", "close with unread data",
                    "retransmission timeout"} & set(causes), f"{who}: {stream.transitions}"
    for stack in link.stacks:
        assert stack.counters["resets_received"] == 0, f"seed {seed}: {dict(stack.counters)}"
    if not any(f.loss or f.duplicate or f.reorder or f.jitter for f in link.faults):
        # On a clean link nothing can reach a closed connection, so no RST. On a faulty one
        # a stale segment can: a duplicate, or the second of two ACKs a TIME-WAIT sends
        # when a go-back-N retransmission repeats the FIN. It arrives after LAST-ACK ->
        # CLOSED, is rightly answered with an RST, and the TIME-WAIT ignores that (RFC 1337).
        assert link.stats[0]["rst"] == 0 and link.stats[1]["rst"] == 0, (
            f"seed {seed}: RST on the link: {[dict(s) for s in link.stats]}")
