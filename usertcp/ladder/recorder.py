"""A middleware device that reports every TCP packet passing it, both ways, as a `Packet`.

Wrapped around a stack's device (`Stack.open(wrap=...)`), it sees what the stack sends and
receives. Offload capabilities pass through (it is a `phy.base.Middleware`), so packets may
be larger than the MTU (TSO) and carry partial checksums: they are parsed without checking
checksums. Packets that are not TCP, or that `match` turns down, pass unreported.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..phy.base import Device, Middleware
from ..wire.errors import MalformedPacket
from ..wire.ipv4 import int_to_addr
from ..wire.packet import parse_packet
from ..wire.tcp import Segment
from .model import Packet

PAYLOAD_KEPT = 256  # bytes of each payload kept: enough for any preview, cheap for bulk data

Match = Callable[[str, int, str, int], bool]  # (src, sport, dst, dport), addresses as text
OnPacket = Callable[[Packet, bool], None]  # (packet, outbound)


def to_packet(data: bytes, when: float) -> Packet | None:
    """The TCP segment in the IP packet `data`, or None (not TCP, or malformed)."""
    try:
        seg = parse_packet(data, verify_checksum=False)
    except MalformedPacket:
        return None
    if not isinstance(seg, Segment):
        return None
    payload = seg.payload
    return Packet(
        time=when, src=int_to_addr(seg.src), sport=seg.sport, dst=int_to_addr(seg.dst),
        dport=seg.dport, seq=seg.seq, ack=seg.ack, flags=seg.flags, window=seg.window,
        length=len(payload), payload=bytes(payload[:PAYLOAD_KEPT]), mss=seg.mss,
        wscale=seg.wscale, sack_permitted=seg.sack_permitted, ts_val=seg.ts_val,
        ts_ecr=seg.ts_ecr, sack=tuple(seg.sack_blocks or ()), size=len(data),
        ip_version=data[0] >> 4)


class PacketRecorder(Middleware):
    """Calls `on_packet(packet, outbound)` for each TCP packet that `match` accepts.

    Received packets are reported before the stack gets them; sent ones once the inner
    device has taken them (so a peer on the far side of a TUN has normally handled them).
    `one_at_a_time`: receive one packet per batch and hand sent packets to the inner
    device one by one, so that each packet's effect on either end can be observed before
    the next. `clock` (an attribute; e.g. the event loop's `time`) stamps the packets.
    """

    def __init__(self, inner: Device, *, on_packet: OnPacket, match: Match | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 one_at_a_time: bool = False) -> None:
        self.inner = inner
        self.on_packet = on_packet
        self.match = match
        self.clock = clock
        self.one_at_a_time = one_at_a_time
        self.recorded = 0  # packets reported
        self.other_packets = 0  # packets that passed unreported

    def _record(self, data: bytes, outbound: bool) -> None:
        packet = to_packet(data, self.clock())
        if packet is None or (self.match is not None
                              and not self.match(packet.src, packet.sport,
                                                 packet.dst, packet.dport)):
            self.other_packets += 1
            return
        self.recorded += 1
        self.on_packet(packet, outbound)

    def receive_batch(self, max_packets: int = 64) -> list[bytes]:
        packets = self.inner.receive_batch(1 if self.one_at_a_time else max_packets)
        for data in packets:
            self._record(data, False)
        return packets

    def send_batch(self, packets: list[bytes]) -> None:
        if self.one_at_a_time:
            for data in packets:
                self.inner.send_batch([data])
                self._record(data, True)
            return
        self.inner.send_batch(packets)
        for data in packets:
            self._record(data, True)

    def next_deadline(self) -> float | None:
        return self.inner.next_deadline()

    def close(self) -> None:
        self.inner.close()

