"""Device errors with one-line messages the CLI can print as they are.

Every error carries a machine-readable `reason` (also the subclass) so callers
can react to the kind of failure without parsing the text.
"""

from __future__ import annotations

import errno as _errno

MTU_MIN = 68  # RFC 791: every IPv4 host must accept 68-byte datagrams
MTU_MAX = 65535  # the IPv4 total-length field is 16 bits


class DeviceError(Exception):
    """Base class; str(e) is a complete, user-facing sentence."""

    reason = "other"

    def __init__(self, message: str, *, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class PermissionDenied(DeviceError):
    reason = "permission"


class TunUnavailable(DeviceError):
    reason = "no-tun"


class InvalidName(DeviceError):
    reason = "name-invalid"


class NameTaken(DeviceError):
    reason = "name-taken"


class InvalidAddress(DeviceError):
    reason = "address-invalid"


class AddressInUse(DeviceError):
    reason = "address-in-use"


class InvalidMTU(DeviceError):
    reason = "mtu-invalid"


def check_mtu(mtu: object) -> int:
    # bool is an int subclass; True as an MTU is a bug, not 1
    if not isinstance(mtu, int) or isinstance(mtu, bool) or not MTU_MIN <= mtu <= MTU_MAX:
        raise InvalidMTU(
            f"MTU {mtu!r} is out of range: it must be an integer from {MTU_MIN} to {MTU_MAX}"
        )
    return mtu


def permission_denied(what: str, err: int | None = _errno.EPERM) -> PermissionDenied:
    return PermissionDenied(
        f"{what}: permission denied; run as root or give the process CAP_NET_ADMIN",
        errno=err,
    )
