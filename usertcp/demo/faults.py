"""The demo's faults: deterministic, "the first packet that matches", never random.

Both are device middleware placed inside the demo's recorder, so a dropped packet is still
recorded as sent (and shown lost), and a held one is recorded when the stack gets it.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from ..ladder.model import Packet
from ..ladder.recorder import to_packet
from ..phy.base import Device, Middleware

Predicate = Callable[[Packet], bool]

RELEASE_GAP = 0.002  # seconds between held packets let in, so the stack answers each alone
MAX_HOLD = 5.0  # a hold never lasts longer than this, whatever happens


class DropFirst(Middleware):
    """Drops the first `count` packets the stack sends that `matches`; all else passes."""

    def __init__(self, inner: Device, matches: Predicate, *, count: int = 1) -> None:
        self.inner = inner
        self.matches = matches
        self.left = count
        self.dropped: list[Packet] = []

    def receive_batch(self, max_packets: int = 64) -> list[bytes]:
        return self.inner.receive_batch(max_packets)

    def send_batch(self, packets: list[bytes]) -> None:
        if self.left:
            kept = []
            for data in packets:
                packet = to_packet(data, time.monotonic())
                if self.left and packet is not None and self.matches(packet):
                    self.left -= 1
                    self.dropped.append(packet)
                else:
                    kept.append(data)
            packets = kept
        if packets:
            self.inner.send_batch(packets)

    def next_deadline(self) -> float | None:
        return self.inner.next_deadline()

    def close(self) -> None:
        self.inner.close()


class HoldFirst(Middleware):
    """Holds back the first packet coming in that `matches`, and all that come in after it,
    until the stack has sent a packet that `release_after` matches; then lets them in, in
    order, one at a time. `on_hold(packet)` is called when the hold begins.
    """

    def __init__(self, inner: Device, matches: Predicate, release_after: Predicate, *,
                 on_hold: Callable[[Packet], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.inner = inner
        self.matches = matches
        self.release_after = release_after
        self.on_hold = on_hold
        self.clock = clock
        self.held: deque[bytes] = deque()
        self.state = "waiting"  # -> "holding" -> "releasing" -> "done"
        self.hold_until = 0.0  # the bound on the hold
        self.next_release = 0.0

    def receive_batch(self, max_packets: int = 64) -> list[bytes]:
        packets = self.inner.receive_batch(max_packets)
        if self.state == "waiting":
            for i, data in enumerate(packets):
                packet = to_packet(data, self.clock())
                if packet is not None and self.matches(packet):
                    self.held.extend(packets[i:])
                    self.state = "holding"
                    self.hold_until = self.clock() + MAX_HOLD
                    if self.on_hold is not None:
                        self.on_hold(packet)
                    return packets[:i]
            return packets
        if self.state == "done":
            return packets
        self.held.extend(packets)  # behind what is held, in order
        now = self.clock()
        if self.state == "holding" and now >= self.hold_until:
            self.state = "releasing"
        if self.state != "releasing" or now < self.next_release:
            return []
        out = [self.held.popleft()]
        self.next_release = now + RELEASE_GAP
        if not self.held:
            self.state = "done"
        return out

    def send_batch(self, packets: list[bytes]) -> None:
        self.inner.send_batch(packets)
        if self.state == "holding" and any(
                (p := to_packet(data, self.clock())) is not None and self.release_after(p)
                for data in packets):
            self.state = "releasing"
            self.next_release = self.clock()

    def next_deadline(self) -> float | None:
        mine = None
        if self.state == "holding":
            mine = self.hold_until
        elif self.state == "releasing":
            mine = self.next_release
        inner = self.inner.next_deadline()
        if mine is None or (inner is not None and inner < mine):
            return inner
        return mine

    def close(self) -> None:
        self.inner.close()
