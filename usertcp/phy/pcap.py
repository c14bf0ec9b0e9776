"""Classic pcap capture (raw IPv4, microsecond timestamps) of a device's traffic."""

from __future__ import annotations

import struct
import time
from os import PathLike
from typing import Callable

from .base import Device, Middleware

LINKTYPE_RAW = 101  # packets start at the IP header; read by tcpdump, Wireshark, scapy
SNAPLEN = 262144  # tcpdump's default; fits offloaded (larger than MTU) packets
_MAGIC_US = 0xA1B2C3D4
_MAGIC_NS = 0xA1B23C4D
_RECORD = struct.Struct("<IIII")  # ts_sec, ts_usec, incl_len, orig_len


class PcapFile:
    """A pcap file being written; `write` appends one record."""

    def __init__(self, path: str | PathLike[str], *, linktype: int = LINKTYPE_RAW) -> None:
        self.path = path
        self._file = open(path, "wb")
        # magic, version 2.4, thiszone, sigfigs, snaplen, linktype
        self._file.write(struct.pack("<IHHiIII", _MAGIC_US, 2, 4, 0, 0, SNAPLEN, linktype))

    def write(self, packet: bytes, ts: float | None = None) -> None:
        if ts is None:
            ts = time.time()
        sec, usec = divmod(round(ts * 1_000_000), 1_000_000)
        data = packet[:SNAPLEN]
        self._file.write(_RECORD.pack(sec, usec, len(data), len(packet)))
        self._file.write(data)

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> PcapFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_pcap(path: str | PathLike[str]) -> list[tuple[float, bytes]]:
    """Read any classic pcap file (either byte order, us or ns) as (timestamp, packet)."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 24:
        raise ValueError(f"{path}: too short for a pcap header")
    for order in "<>":
        (magic,) = struct.unpack_from(order + "I", data)
        if magic in (_MAGIC_US, _MAGIC_NS):
            break
    else:
        raise ValueError(f"{path}: not a classic pcap file")
    scale = 1e-6 if magic == _MAGIC_US else 1e-9
    record = struct.Struct(order + "IIII")
    out: list[tuple[float, bytes]] = []
    pos = 24
    while pos + record.size <= len(data):
        sec, frac, incl, _orig = record.unpack_from(data, pos)
        pos += record.size
        out.append((sec + frac * scale, data[pos : pos + incl]))
        pos += incl
    return out


class PcapWriter(Middleware):
    """Pass packets through to `inner`, recording both directions in `path`.

    Sent packets are recorded as handed to `inner` (before any fault wrapped
    inside it acts); received ones as `inner` returns them. Timestamps come
    from `clock` (wall time by default, as capture tools expect).
    """

    def __init__(
        self,
        inner: Device,
        path: str | PathLike[str],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.inner = inner
        self.pcap = PcapFile(path)
        self._clock = clock

    def receive_batch(self, max_packets: int = 64) -> list[bytes]:
        packets = self.inner.receive_batch(max_packets)
        if packets:
            ts = self._clock()
            for packet in packets:
                self.pcap.write(packet, ts)
        return packets

    def send_batch(self, packets: list[bytes]) -> None:
        if packets:
            ts = self._clock()
            for packet in packets:
                self.pcap.write(packet, ts)
        self.inner.send_batch(packets)

    def next_deadline(self) -> float | None:
        return self.inner.next_deadline()

    def flush(self) -> None:
        self.pcap.flush()

    def close(self) -> None:
        try:
            self.inner.close()
        finally:
            self.pcap.close()
