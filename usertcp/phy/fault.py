"""A seeded fault injector that wraps any device: loss, corruption,
duplication, bounded reordering, delay and jitter, per direction.

Each packet goes through the stages in this order:

1. loss       - dropped with probability `loss`;
2. corrupt    - one random bit flipped with probability `corrupt` (a single
                bit flip always changes an Internet checksum, so the receiver
                detects it);
3. duplicate  - sent twice with probability `duplicate`;
4. reorder    - with probability `reorder`, held back until 1..`reorder_depth`
                later packets of the same direction have overtaken it, or
                until `reorder_timeout` seconds pass on an idle link;
5. delay      - released `delay` +/- uniform(`jitter`) seconds later (clamped
                at 0; jitter can reorder packets too, as with netem).

Held packets are released by later receive_batch/send_batch calls once due;
next_deadline() tells the driver when. Both calls release due packets of both
directions, so a driver may call either at the deadline.

Randomness comes from one random.Random per direction, seeded from `seed`, so
a run is reproducible from the seed, the packets and the clock readings, no
matter how receive and send calls interleave.
"""

from __future__ import annotations

import heapq
import random
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

from .base import Device, Middleware

MAX_REORDER_DEPTH = 10
_Sink = list[bytes] | deque[bytes]  # where released packets go
STAT_KEYS = ("dropped", "duplicated", "reordered", "corrupted", "delayed")


@dataclass(frozen=True)
class FaultSpec:
    """Faults for one direction; all probabilities are per packet."""

    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    reorder_depth: int = 3
    reorder_timeout: float = 0.02
    corrupt: float = 0.0
    delay: float = 0.0
    jitter: float = 0.0

    def __post_init__(self) -> None:
        for name in ("loss", "duplicate", "reorder", "corrupt"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {p!r}")
        if not 1 <= self.reorder_depth <= MAX_REORDER_DEPTH:
            raise ValueError(f"reorder_depth must be from 1 to {MAX_REORDER_DEPTH}")
        for name in ("reorder_timeout", "delay", "jitter"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")


class _Lane:
    """The state of one direction: its spec, RNG, held packets and counters."""

    def __init__(self, spec: FaultSpec, seed: str) -> None:
        self.spec = spec
        self.rng = random.Random(seed)
        self.held: list[list] = []  # [overtakes_left, deadline, packet], in hold order
        self.delayed: list[tuple[float, int, bytes]] = []  # heap of (due, seq, packet)
        self.seq = 0  # keeps equal due times FIFO in the heap
        self.stats = dict.fromkeys(STAT_KEYS, 0)

    def admit(self, packet: bytes, now: float, out: _Sink) -> None:
        s, rng = self.spec, self.rng
        if s.loss and rng.random() < s.loss:
            self.stats["dropped"] += 1
            return
        if s.corrupt and packet and rng.random() < s.corrupt:
            bit = rng.randrange(len(packet) * 8)
            flipped = bytearray(packet)
            flipped[bit >> 3] ^= 1 << (bit & 7)
            packet = bytes(flipped)
            self.stats["corrupted"] += 1
        copies = 1
        if s.duplicate and rng.random() < s.duplicate:
            copies = 2
            self.stats["duplicated"] += 1
        for _ in range(copies):
            if s.reorder and rng.random() < s.reorder:
                overtakes = rng.randint(1, s.reorder_depth)
                self.held.append([overtakes, now + s.reorder_timeout, packet])
                self.stats["reordered"] += 1
            else:
                self._emit(packet, now, out)

    def _emit(self, packet: bytes, now: float, out: _Sink) -> None:
        # Every emitted packet overtakes all held ones. Then the oldest held
        # packet whose count ran out goes next: oldest first, so a released
        # packet is never overtaken by younger ones it did not count.
        held = self.held
        while True:
            self._delay(packet, now, out)
            if not held:
                return
            for h in held:
                h[0] -= 1
            due = next((i for i, h in enumerate(held) if h[0] <= 0), None)
            if due is None:
                return
            packet = held.pop(due)[2]

    def _delay(self, packet: bytes, now: float, out: _Sink) -> None:
        s = self.spec
        wait = s.delay
        if s.jitter:
            wait = max(0.0, wait + self.rng.uniform(-s.jitter, s.jitter))
        if wait > 0:
            self.seq += 1
            heapq.heappush(self.delayed, (now + wait, self.seq, packet))
            self.stats["delayed"] += 1
        else:
            out.append(packet)

    def release(self, now: float, out: _Sink) -> None:
        """Move what is due at `now` to `out`: timed-out holds, then delayed packets."""
        if self.held and any(h[1] <= now for h in self.held):
            expired = [h for h in self.held if h[1] <= now]
            self.held[:] = [h for h in self.held if h[1] > now]
            for h in expired:
                self._emit(h[2], now, out)
        delayed = self.delayed
        while delayed and delayed[0][0] <= now:
            out.append(heapq.heappop(delayed)[2])

    def deadline(self) -> float | None:
        times = [h[1] for h in self.held]
        if self.delayed:
            times.append(self.delayed[0][0])
        return min(times) if times else None

    def clear(self) -> None:
        self.held.clear()
        self.delayed.clear()


class FaultInjector(Middleware):
    """Wrap `inner` with seeded faults.

    The keyword shorthand (loss=..., delay=..., ...) builds one FaultSpec for
    `direction` ("both", "rx" = packets received from inner, "tx" = packets
    sent to inner). `rx=`/`tx=` FaultSpecs, when given, replace the shorthand
    for their direction.
    """

    def __init__(
        self,
        inner: Device,
        *,
        seed: int,
        loss: float = 0.0,
        duplicate: float = 0.0,
        reorder: float = 0.0,
        reorder_depth: int = 3,
        reorder_timeout: float = 0.02,
        corrupt: float = 0.0,
        delay: float = 0.0,
        jitter: float = 0.0,
        direction: str = "both",
        rx: FaultSpec | None = None,
        tx: FaultSpec | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if direction not in ("both", "rx", "tx"):
            raise ValueError(f"direction must be 'both', 'rx' or 'tx', got {direction!r}")
        spec = FaultSpec(
            loss=loss,
            duplicate=duplicate,
            reorder=reorder,
            reorder_depth=reorder_depth,
            reorder_timeout=reorder_timeout,
            corrupt=corrupt,
            delay=delay,
            jitter=jitter,
        )
        if rx is None:
            rx = spec if direction in ("both", "rx") else FaultSpec()
        if tx is None:
            tx = spec if direction in ("both", "tx") else FaultSpec()
        if rx.corrupt and getattr(inner, "rx_checksum_verified", False):
            # Kernel segments arrive with partial checksums there: corruption
            # could not be detected, so it would silently corrupt data.
            raise ValueError("rx corruption needs a device without checksum offload")
        if tx.corrupt and getattr(inner, "tx_checksum_offload", False):
            # The kernel would complete the partial checksum over the flipped bits.
            raise ValueError("tx corruption needs a device without checksum offload")
        self.inner = inner
        self.seed = seed
        self._clock = clock
        self._rx = _Lane(rx, f"{seed}:rx")
        self._tx = _Lane(tx, f"{seed}:tx")
        self._ready: deque[bytes] = deque()  # received packets not yet handed up

    @property
    def rx_stats(self) -> dict[str, int]:
        return dict(self._rx.stats)

    @property
    def tx_stats(self) -> dict[str, int]:
        return dict(self._tx.stats)

    @property
    def stats(self) -> dict[str, int]:
        """Counters summed over both directions."""
        return {k: self._rx.stats[k] + self._tx.stats[k] for k in STAT_KEYS}

    def _pump(self, now: float) -> None:
        self._rx.release(now, self._ready)
        due: list[bytes] = []
        self._tx.release(now, due)
        if due:
            self.inner.send_batch(due)

    def receive_batch(self, max_packets: int = 64) -> list[bytes]:
        now = self._clock()
        self._pump(now)
        ready = self._ready
        room = max_packets - len(ready)
        if room > 0:
            for packet in self.inner.receive_batch(room):
                self._rx.admit(packet, now, ready)
        n = min(max_packets, len(ready))
        return [ready.popleft() for _ in range(n)]

    def send_batch(self, packets: list[bytes]) -> None:
        now = self._clock()
        self._rx.release(now, self._ready)
        out: list[bytes] = []
        self._tx.release(now, out)
        for packet in packets:
            self._tx.admit(packet, now, out)
        if out:
            self.inner.send_batch(out)

    def next_deadline(self) -> float | None:
        times = [t for t in (self._rx.deadline(), self._tx.deadline(), self.inner.next_deadline())
                 if t is not None]
        if self._ready:
            times.append(self._clock())  # packets already due: call receive_batch now
        return min(times) if times else None

    def close(self) -> None:
        self._rx.clear()
        self._tx.clear()
        self._ready.clear()
        self.inner.close()
