"""A Linux TUN device (IFF_TUN | IFF_NO_PI) over pytun-pmd3, non-blocking; one queue or several."""

from __future__ import annotations

import errno
import fcntl
import os
import re
import socket
from functools import partial
from typing import Self

from pytun_pmd3 import TunTapDevice
from pytun_pmd3.linux import IFF_NO_PI, IFF_TUN, IFF_VNET_HDR

from . import vnet
from .base import write_each
from .errors import (
    DeviceError,
    InvalidName,
    NameTaken,
    TunUnavailable,
    check_mtu,
    permission_denied,
)

TUN_PATH = "/dev/net/tun"
IFF_MULTI_QUEUE = 0x0100  # linux/if_tun.h: one device, a file (queue) per reader
IFF_TUN_EXCL = 0x8000  # fail with EBUSY, rather than attach, when the name exists
IFNAMSIZ = 16  # kernel buffer size, including the trailing NUL
# Stricter than the kernel (which also takes '%' patterns and most
# punctuation) so names stay safe to paste into shell commands.
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
# Any IPv4 packet fits; read cost does not depend on this size.
_READ_SIZE = 65536 + 64  # the largest IPv4 packet plus the virtio-net header
# Per-packet write failures: queue full, or the kernel rejects the packet
# (EINVAL: not IPv4/IPv6, e.g. after fault injection). A link drops these.
_TX_DROP_ERRNOS = {errno.EAGAIN, errno.ENOBUFS, errno.EINVAL, errno.EMSGSIZE}


def validate_name(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise InvalidName(f"invalid interface name {name!r}: it must be a non-empty string")
    if len(name.encode()) >= IFNAMSIZ:
        raise InvalidName(
            f"interface name {name!r} is too long: at most {IFNAMSIZ - 1} characters"
        )
    if name in (".", "..") or not _NAME_RE.fullmatch(name):
        raise InvalidName(
            f"invalid interface name {name!r}: use only letters, digits, '-', '_' and '.'"
        )
    return name


def _open_error(exc: OSError, name: str, exclusive: bool = False) -> DeviceError:
    code = exc.errno
    if code in (errno.EPERM, errno.EACCES):
        return permission_denied(f"cannot create TUN device {name!r}", code)
    if code in (errno.ENOENT, errno.ENODEV, errno.ENXIO):
        return TunUnavailable(
            f"{TUN_PATH} is not usable ({os.strerror(code)}): load the tun module "
            f"(modprobe tun) or, in a container, pass the device through",
            errno=code,
        )
    if code == errno.EBUSY and exclusive:
        return NameTaken(f"interface {name!r} already exists; choose another name", errno=code)
    if code == errno.EBUSY:
        return NameTaken(
            f"interface {name!r} is already attached to another process; choose another name",
            errno=code,
        )
    if code == errno.EINVAL and _link_exists(name):
        return NameTaken(
            f"interface {name!r} already exists and is not a TUN device; choose another name",
            errno=code,
        )
    return DeviceError(f"cannot create TUN device {name!r}: {os.strerror(code or 0)}", errno=code)


def _link_exists(name: str) -> bool:
    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True


class TunDevice:
    """The kernel-facing device: each read or write is one whole IPv4 packet.

    The interface disappears when the device is closed (it is not persistent).
    Its kernel-side address and link state are set by `netlink.configure_host_side`.
    """

    # Capabilities the driver reads: with offload the stack leaves TCP checksums
    # partial and may send segments up to tso_max bytes; received checksums are
    # vouched for by the device.
    tx_checksum_offload = False
    rx_checksum_verified = False
    tso_max = 0

    def __init__(self, name: str = "utcp0", mtu: int = 1500, *, offload: bool = False,
                 _queue_flags: int = 0) -> None:
        validate_name(name)
        check_mtu(mtu)
        if not os.path.exists(TUN_PATH):
            raise TunUnavailable(
                f"{TUN_PATH} does not exist: load the tun module (modprobe tun) or, "
                f"in a container, pass the device through (e.g. --device {TUN_PATH})",
                errno=errno.ENOENT,
            )
        try:
            # pytun-pmd3 raises PytunError (an OSError) from the ioctl and a
            # plain OSError from opening /dev/net/tun; both carry errno.
            flags = IFF_TUN | IFF_NO_PI | (IFF_VNET_HDR if offload else 0) | _queue_flags
            self._tun = TunTapDevice(name=name, flags=flags)
        except OSError as exc:
            raise _open_error(exc, name, bool(_queue_flags & IFF_TUN_EXCL)) from None
        self._fd: int | None = self._tun.fileno()
        try:
            os.set_blocking(self._fd, False)
            # Kernel MTU must match ours, or the kernel sends packets we reject.
            self._tun.mtu = mtu
            if offload:
                fcntl.ioctl(self._fd, vnet.TUNSETOFFLOAD,
                            vnet.TUN_F_CSUM | vnet.TUN_F_TSO4 | vnet.TUN_F_TSO6)
        except OSError as exc:
            self.close()
            if exc.errno in (errno.EPERM, errno.EACCES):
                raise permission_denied(f"cannot set the MTU of {name!r}", exc.errno) from None
            raise DeviceError(
                f"cannot set MTU {mtu} on {name!r}: {os.strerror(exc.errno or 0)}", errno=exc.errno
            ) from None
        self._ready(self._tun.name, mtu, offload)

    def _ready(self, name: str, mtu: int, offload: bool) -> None:
        self.name: str = name
        self.mtu = mtu
        self.tx_dropped = 0
        self.rx_bad_checksum = 0
        self.offload = offload
        if offload:
            self.tx_checksum_offload = True
            self.rx_checksum_verified = True
            self.tso_max = 65535 - 40 - 40  # the largest IPv4 packet, less headers and options
            self.receive_batch = self._receive_batch_vnet
            self.send_batch = self._send_batch_vnet

    @classmethod
    def open_queues(cls, name: str, count: int, mtu: int = 1500, *,
                    offload: bool = False) -> list[TunDevice]:
        """`count` queues of one new multi-queue device (IFF_MULTI_QUEUE), each a TunDevice.

        Queue i is the kernel's queue_index i while all stay open. Closing one detaches it
        (the kernel then renumbers the last into its place); the interface disappears with
        the last. Which queue gets a packet is the kernel's choice: see `steering`.
        """
        if count < 1:
            raise ValueError(f"a device needs at least one queue, not {count}")
        queues: list[TunDevice] = []
        try:
            for index in range(count):
                # The first creates the device and must not join one that exists already.
                extra = IFF_MULTI_QUEUE | (IFF_TUN_EXCL if index == 0 else 0)
                queues.append(cls(name, mtu, offload=offload, _queue_flags=extra))
        except BaseException:
            for queue in queues:
                queue.close()
            raise
        return queues

    @classmethod
    def adopt(cls, fd: int, name: str, mtu: int, *, offload: bool) -> TunDevice:
        """Wrap a TUN fd created and configured elsewhere (e.g. in another namespace).

        `offload` must match how it was opened (IFF_VNET_HDR, TUNSETOFFLOAD CSUM|TSO4).
        close() closes `fd`.
        """
        import io

        check_mtu(mtu)
        self = cls.__new__(cls)
        os.set_blocking(fd, False)
        # Anything with close() serves as _tun here; FileIO closes the fd exactly once.
        self._tun = io.FileIO(fd, "r+", closefd=True)
        self._fd = fd
        self._ready(name, mtu, offload)
        return self

    def fileno(self) -> int | None:
        return self._fd

    def receive_batch(self, max_packets: int = 64) -> list[bytes]:
        fd = self._fd
        if fd is None:
            return []
        packets: list[bytes] = []
        read = os.read
        try:
            while len(packets) < max_packets:
                packets.append(read(fd, _READ_SIZE))
        except BlockingIOError:
            pass
        return packets

    def send_batch(self, packets: list[bytes]) -> None:
        fd = self._fd
        if fd is None:
            self.tx_dropped += len(packets)
            return
        self.tx_dropped += write_each(partial(os.write, fd), packets, _TX_DROP_ERRNOS)

    def _receive_batch_vnet(self, max_packets: int = 64) -> list:
        fd = self._fd
        if fd is None:
            return []
        packets: list = []
        read = os.read
        checksum_ok = vnet.checksum_ok
        try:
            while len(packets) < max_packets:
                raw = read(fd, _READ_SIZE)
                # A view past the header: no copy of a 64 KB segment.
                packet = memoryview(raw)[vnet.VNET_HDR_LEN:]
                if raw[0] & (vnet.F_NEEDS_CSUM | vnet.F_DATA_VALID) or checksum_ok(0, packet):
                    packets.append(packet)
                else:
                    self.rx_bad_checksum += 1
        except BlockingIOError:
            pass
        return packets

    def _send_batch_vnet(self, packets: list) -> None:
        fd = self._fd
        if fd is None:
            self.tx_dropped += len(packets)
            return
        writev = os.writev
        header_for = vnet.header_for
        mtu = self.mtu

        def write(packet) -> None:
            writev(fd, (header_for(packet, mtu), packet))

        self.tx_dropped += write_each(write, packets, _TX_DROP_ERRNOS)

    def next_deadline(self) -> float | None:
        return None

    def close(self) -> None:
        if self._fd is not None:
            self._fd = None
            self._tun.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TunDevice(name={self.name!r}, mtu={self.mtu}, fd={self._fd})"
