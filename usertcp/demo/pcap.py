"""`usertcp demo --pcap FILE`: the conversation's packets, as usertcp's device saw them."""

from __future__ import annotations

import time
from os import PathLike

from ..ladder.recorder import Match, to_packet
from ..phy.base import Device, Middleware
from ..phy.pcap import PcapFile


class ConversationPcap(Middleware):
    """Writes to a pcap file the TCP packets passing both ways that `match` accepts.

    Inside the recorder and outside the faults: a packet dropped on its way out is
    written (it was sent), a held one when it is let in. Other traffic (IPv6 neighbour
    discovery, ...) is left out, so the file holds exactly the ladder's packets.
    """

    def __init__(self, inner: Device, path: str | PathLike[str], match: Match) -> None:
        self.inner = inner
        self.match = match
        self.pcap = PcapFile(path)

    def _write(self, packets: list[bytes]) -> None:
        now = time.time()
        for data in packets:
            p = to_packet(data, now)
            if p is not None and self.match(p.src, p.sport, p.dst, p.dport):
                self.pcap.write(data, now)
        self.pcap.flush()

    def receive_batch(self, max_packets: int = 64) -> list[bytes]:
        packets = self.inner.receive_batch(max_packets)
        self._write(packets)
        return packets

    def send_batch(self, packets: list[bytes]) -> None:
        self._write(packets)
        self.inner.send_batch(packets)

    def next_deadline(self) -> float | None:
        return self.inner.next_deadline()

    def close(self) -> None:
        try:
            self.inner.close()
        finally:
            self.pcap.close()
