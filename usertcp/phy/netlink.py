"""Kernel-side configuration of the TUN link over rtnetlink (pyroute2).

pytun-pmd3's address setters are IPv6-only, so IPv4 goes through netlink.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from typing import TYPE_CHECKING

from .errors import (
    AddressInUse,
    DeviceError,
    InvalidAddress,
    check_mtu,
    permission_denied,
)

if TYPE_CHECKING:
    from pyroute2 import IPRoute, NetlinkError


IPV6_MIN_MTU = 1280  # RFC 8200 5


def parse_host_address(text: object) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    """Parse "10.7.0.1/24" or "fd00:7::1/64": the kernel's address and the on-link subnet."""
    example = ("expected an address with a prefix length, e.g. 10.7.0.1/24 or fd00:7::1/64")
    if not isinstance(text, str) or "/" not in text:
        raise InvalidAddress(f"malformed address {text!r}: {example}")
    try:
        iface = ipaddress.ip_interface(text.strip())
    except ValueError:
        raise InvalidAddress(f"malformed address {text!r}: {example}") from None
    if iface.version == 6:
        return _check_v6(text, iface)
    ip, net = iface.ip, iface.network
    # /32 leaves no on-link peer for the userspace stack; /0 would swallow every route.
    if not 1 <= net.prefixlen <= 31:
        raise InvalidAddress(f"address {text!r}: the prefix length must be from 1 to 31")
    if net.prefixlen <= 30 and ip in (net.network_address, net.broadcast_address):
        raise InvalidAddress(f"address {text!r} is the network or broadcast address of {net}")
    if ip.is_loopback or ip.is_multicast or ip.is_unspecified or ip.is_reserved:
        raise InvalidAddress(f"address {text!r} cannot be assigned to an interface")
    return iface


def check_stack_addresses(addresses, host_addresses, tun: str) -> list[str]:
    """The stack's addresses as text, each checked against the kernel side's address of its
    family: inside that network (or the kernel would not route it to `tun`), not that address."""
    hosts = {iface.version: iface for iface in map(parse_host_address, host_addresses)}
    out = []
    for text in addresses:
        try:
            addr = ipaddress.ip_address(text.strip() if isinstance(text, str) else text)
        except ValueError:
            raise ValueError(f"malformed address {text!r}: expected an IPv4 or IPv6 "
                             f"address, e.g. 10.7.0.2 or fd00:7::2") from None
        host_iface = hosts.get(addr.version)
        if host_iface is None:
            raise ValueError(f"address {addr} has no host address of its family: give a "
                             f"--host-address such as "
                             f"{'fd00:7::1/64' if addr.version == 6 else '10.7.0.1/24'}")
        if addr not in host_iface.network:
            raise ValueError(f"address {addr} is not inside the host side's network "
                             f"{host_iface.network}: the kernel would not route it to {tun}")
        if addr == host_iface.ip:
            raise ValueError(f"address {addr} is the kernel side's own address")
        out.append(str(addr))
    return out


def _check_v6(text: str, iface: ipaddress.IPv6Interface) -> ipaddress.IPv6Interface:
    ip, net = iface.ip, iface.network
    if not 1 <= net.prefixlen <= 127:
        raise InvalidAddress(f"address {text!r}: the prefix length must be from 1 to 127")
    if ip.is_loopback or ip.is_multicast or ip.is_unspecified or ip.ipv4_mapped:
        raise InvalidAddress(f"address {text!r} cannot be assigned to an interface")
    if ip == net.network_address and net.prefixlen < 127:
        raise InvalidAddress(f"address {text!r} is the subnet-router anycast address of {net}")
    return iface


def _family(iface) -> int:
    return socket.AF_INET6 if iface.version == 6 else socket.AF_INET


def _owner_of(ipr: IPRoute, iface, exclude_index: int) -> str | None:
    ip = str(iface.ip)
    for msg in ipr.get_addr(family=_family(iface)):
        local = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
        if local == ip and msg["index"] != exclude_index:
            links = ipr.get_links(msg["index"])
            return links[0].get_attr("IFLA_IFNAME") if links else f"#{msg['index']}"
    return None


def _has_address(ipr: IPRoute, index: int, iface) -> bool:
    for msg in ipr.get_addr(family=_family(iface), index=index):
        local = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
        if local == str(iface.ip) and msg["prefixlen"] == iface.network.prefixlen:
            return True
    return False


def _index(ipr: IPRoute, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise DeviceError(f"interface {ifname!r} does not exist", errno=errno.ENODEV)
    return found[0]


TX_QUEUE_LEN = 4096


def parse_route(text: object) -> ipaddress.IPv4Network:
    """A destination network routed into the TUN, e.g. "10.8.0.0/16" (or "default")."""
    if text == "default":
        return ipaddress.IPv4Network("0.0.0.0/0")
    try:
        return ipaddress.IPv4Network(str(text).strip())
    except ValueError:
        raise InvalidAddress(f"malformed route {text!r}: expected a network such as "
                             f"10.8.0.0/16 (host bits zero), or 'default'") from None


def configure_host_side(ifname: str, host_address, mtu: int, routes=()):
    """Set the MTU, add the kernel's addresses and bring `ifname` up; route `routes`
    (networks, e.g. "10.8.0.0/16") into it too, for a stack that listens on every address.

    `host_address` is one "address/prefix" or a list, at most one per family; IPv6 on the
    link stays off unless one is IPv6. Returns the interface (or the list of them).
    Idempotent for an address already on `ifname`; refuses an address that
    another interface in this network namespace already holds.
    """
    single = isinstance(host_address, str)
    ifaces = [parse_host_address(a) for a in ([host_address] if single else host_address)]
    if len({i.version for i in ifaces}) != len(ifaces):
        raise InvalidAddress("give at most one host address per family (IPv4, IPv6)")
    networks = [parse_route(r) for r in routes]
    check_mtu(mtu)
    if any(i.version == 6 for i in ifaces) and mtu < IPV6_MIN_MTU:
        raise InvalidAddress(f"MTU {mtu} is below IPv6's minimum of {IPV6_MIN_MTU}")
    from pyroute2 import IPRoute, NetlinkError  # lazy: importing pyroute2 costs ~0.1 s

    try:
        with IPRoute() as ipr:
            index = _index(ipr, ifname)
            for iface in ifaces:
                owner = _owner_of(ipr, iface, index)
                if owner is not None:
                    raise AddressInUse(
                        f"address {iface.ip} is already in use on interface {owner!r}; "
                        f"choose another subnet",
                        errno=errno.EADDRINUSE,
                    )
            # TUN's default queue of 500 overflows under a thousand busy connections.
            ipr.link("set", index=index, mtu=mtu, txqlen=TX_QUEUE_LEN)
            _set_ipv6(ifname, any(i.version == 6 for i in ifaces))
            for iface in ifaces:
                if not _has_address(ipr, index, iface):
                    # No duplicate address detection: the TUN's far end is us, and DAD would
                    # hold the address back for a second.
                    ipr.addr("add", index=index, address=str(iface.ip),
                             prefixlen=iface.network.prefixlen,
                             **({"flags": IFA_F_NODAD} if iface.version == 6 else {}))
            ipr.link("set", index=index, state="up")
            for net in networks:
                try:
                    ipr.route("add", dst=str(net.network_address), dst_len=net.prefixlen,
                              oif=index)
                except NetlinkError as exc:
                    if exc.code != errno.EEXIST:
                        raise
                    raise AddressInUse(f"a route to {net} already exists in this network "
                                       f"namespace; remove it or choose another network",
                                       errno=errno.EEXIST) from None
    except NetlinkError as exc:
        raise _netlink_error(exc, f"cannot configure {ifname!r} with {host_address}") from None
    return ifaces[0] if single else ifaces


IFA_F_NODAD = 0x02


def _set_ipv6(ifname: str, enabled: bool) -> None:
    """IPv6 on the link only for a stack with an IPv6 address: otherwise the kernel's
    chatter (router solicitations, MLD) would go into the TUN for nothing."""
    try:
        with open(f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6", "w") as f:
            f.write("0" if enabled else "1")
    except OSError:
        if enabled:
            raise DeviceError(f"cannot enable IPv6 on {ifname!r}: /proc/sys/net/ipv6 is not "
                              f"writable or IPv6 is off in this kernel") from None


def remove_device(ifname: str) -> bool:
    """Delete `ifname` if it exists (e.g. a leftover persistent TUN); True if deleted."""
    from pyroute2 import IPRoute, NetlinkError

    try:
        with IPRoute() as ipr:
            found = ipr.link_lookup(ifname=ifname)
            if not found:
                return False
            ipr.link("del", index=found[0])
            return True
    except NetlinkError as exc:
        if exc.code == errno.ENODEV:  # vanished meanwhile, e.g. its fd closed
            return False
        raise _netlink_error(exc, f"cannot remove {ifname!r}") from None


def _netlink_error(exc: NetlinkError, what: str) -> DeviceError:
    code = exc.code
    if code in (errno.EPERM, errno.EACCES):
        return permission_denied(what, code)
    return DeviceError(f"{what}: {os.strerror(code) if code else exc}", errno=code)
