"""The one small interface every device implements, real or middleware."""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class Device(Protocol):
    """A source and sink of whole IPv4 packets.

    `fileno()` is a pollable fd (or None when the device is driven only by
    deadlines); `receive_batch` never blocks and returns [] when nothing is
    ready; `next_deadline()` lets middleware that holds packets back (delay,
    reordering) ask the driver to call again at a monotonic time.
    """

    mtu: int

    def fileno(self) -> int | None: ...

    def receive_batch(self, max_packets: int = 64) -> list[bytes]: ...

    def send_batch(self, packets: list[bytes]) -> None: ...

    def next_deadline(self) -> float | None: ...

    def close(self) -> None: ...


def write_each(write, packets, drop_errnos) -> int:
    """Call write(packet) for each packet; return how many a full or refusing link dropped.

    Errors in `drop_errnos` are what a real link does with a packet it cannot carry;
    any other error is a bug or a dead device and propagates.
    """
    dropped = 0
    for packet in packets:
        try:
            write(packet)
        except OSError as exc:
            if exc.errno not in drop_errnos:
                raise
            dropped += 1
    return dropped


class Middleware:
    """Base for devices that wrap another: capabilities pass through."""

    inner: Device

    @property
    def mtu(self) -> int:
        return self.inner.mtu

    @property
    def tx_checksum_offload(self) -> bool:
        return getattr(self.inner, "tx_checksum_offload", False)

    @property
    def rx_checksum_verified(self) -> bool:
        return getattr(self.inner, "rx_checksum_verified", False)

    @property
    def tso_max(self) -> int:
        return getattr(self.inner, "tso_max", 0)

    def fileno(self) -> int | None:
        return self.inner.fileno()
