"""Devices: the TUN device, in-memory links, and middleware that wraps any device."""

from .base import Device
from .errors import (
    AddressInUse,
    DeviceError,
    InvalidAddress,
    InvalidMTU,
    InvalidName,
    NameTaken,
    PermissionDenied,
    TunUnavailable,
)
from .fault import FaultInjector, FaultSpec
from .memory import MemoryDevice, QueueDevice
from .netlink import configure_host_side, parse_host_address, remove_device
from .pcap import PcapFile, PcapWriter, read_pcap
from .tun import TunDevice

__all__ = [
    "AddressInUse",
    "Device",
    "DeviceError",
    "FaultInjector",
    "FaultSpec",
    "InvalidAddress",
    "InvalidMTU",
    "InvalidName",
    "MemoryDevice",
    "NameTaken",
    "PcapFile",
    "PcapWriter",
    "PermissionDenied",
    "QueueDevice",
    "TunDevice",
    "TunUnavailable",
    "configure_host_side",
    "parse_host_address",
    "read_pcap",
    "remove_device",
]
