"""IPv6 and dual-stack helpers for the integration tests.

- the documentation addresses and the command-line arguments of a dual-stack service;
- :class:`TunCapture`: every packet on the TUN interface, taken by the kernel (an AF_PACKET socket
  on ``utcp0``), not by the stack's own ``--pcap``, with the virtio-net header that says how big
  each segment of a GSO super-packet is; and an independent parser of what it captured (IPv4,
  IPv6, TCP with its options, ICMP / ICMPv6 errors), so the tests do not judge the stack with its
  own parser;
- :func:`routed_client`: a client namespace behind a real kernel router (the stack's namespace)
  whose links are narrower than the TUN, for path MTU discovery.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Self

from .netns import NetNS
from .stackproc import HOST, STACK

STACK6 = "fd00:7::2"
HOST6 = "fd00:7::1"
DUAL = ("--address", STACK, "--address", STACK6,
        "--host-address", f"{HOST}/24", "--host-address", f"{HOST6}/64")
"""Arguments of a service that is 10.7.0.2 and fd00:7::2 at once."""

_ETH_P_ALL = 0x0003
_PACKET_OUTGOING = 4  # sll_pkttype of what the kernel sent into the TUN (the stack's input)
_SOL_PACKET = 263  # not in Python's socket module
_PACKET_VNET_HDR = 15
_SO_RCVBUFFORCE = 33  # root may exceed rmem_max: a 2 MB download's headers fit
_VNET = struct.Struct("<BBHHHH")  # struct virtio_net_hdr (little-endian on every host we run on)
_GSO_TCP = (1, 4)  # VIRTIO_NET_HDR_GSO_TCPV4, _TCPV6
_HEAD = 256  # bytes kept of each packet: headers and the start of an ICMP error's quote

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10


# -- parsing (independent of usertcp.wire) -------------------------------------------------------

@dataclass
class Tcp:
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    window: int
    header_len: int
    options: dict = field(default_factory=dict)  # "mss", "wscale", "sack_perm", "ts" (val, ecr)


@dataclass
class Icmp:
    kind: int
    code: int
    mtu: int | None  # Packet Too Big's MTU, or fragmentation needed's next-hop MTU
    quote: bytes


@dataclass
class Packet:
    """One captured IP packet; ``from_stack`` when the stack wrote it into the TUN."""

    from_stack: bool
    length: int  # the whole IP packet (a GSO super-packet counts whole)
    version: int
    src: str
    dst: str
    proto: int
    hop_limit: int
    df: bool  # IPv4 "don't fragment" (IPv6 routers never fragment: True)
    header_len: int  # IP header(s) before the transport header
    tcp: Tcp | None = None
    icmp: Icmp | None = None
    gso_size: int = 0  # payload bytes per segment of a GSO super-packet, 0 if not one
    raw: bytes = b""  # the first _HEAD bytes

    @property
    def payload_len(self) -> int:
        return self.length - self.header_len - (self.tcp.header_len if self.tcp else 0)

    @property
    def segment_len(self) -> int:
        """The size on the wire of the biggest IP packet this one becomes once segmented."""
        if self.gso_size and self.tcp and self.payload_len > self.gso_size:
            return self.header_len + self.tcp.header_len + self.gso_size
        return self.length

    @property
    def segment_payload(self) -> int:
        """Payload bytes of one segment (the GSO size of a super-packet)."""
        if self.gso_size and self.payload_len > self.gso_size:
            return self.gso_size
        return self.payload_len


def parse_tcp(b: bytes) -> Tcp:
    sport, dport, seq, ack, off, flags, window = struct.unpack_from("!HHIIBBH", b)
    hlen = (off >> 4) * 4
    opts: dict = {}
    i = 20
    while i < min(hlen, len(b)):
        kind = b[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        size = b[i + 1]
        if size < 2:
            break
        body = b[i + 2:i + size]
        if kind == 2:
            opts["mss"] = struct.unpack("!H", body)[0]
        elif kind == 3:
            opts["wscale"] = body[0]
        elif kind == 4:
            opts["sack_perm"] = True
        elif kind == 8:
            opts["ts"] = struct.unpack("!II", body)
        i += size
    return Tcp(sport, dport, seq, ack, flags, window, hlen, opts)


def parse_ip(b: bytes, length: int, from_stack: bool, gso_size: int = 0) -> Packet | None:
    """An IPv4 or IPv6 packet (its first bytes ``b``, ``length`` in all); None if neither."""
    if not b:
        return None
    version = b[0] >> 4
    if version == 4:
        hlen = (b[0] & 15) * 4
        proto, df = b[9], bool(struct.unpack_from("!H", b, 6)[0] & 0x4000)
        pkt = Packet(from_stack, length, 4, socket.inet_ntop(socket.AF_INET, b[12:16]),
                     socket.inet_ntop(socket.AF_INET, b[16:20]), proto, b[8], df, hlen)
    elif version == 6:
        # The tests' packets carry no extension headers: TCP or ICMPv6 right after the header.
        pkt = Packet(from_stack, length, 6, socket.inet_ntop(socket.AF_INET6, b[8:24]),
                     socket.inet_ntop(socket.AF_INET6, b[24:40]), b[6], b[7], True, 40)
    else:
        return None
    pkt.gso_size, pkt.raw = gso_size, b
    body = b[pkt.header_len:]
    if pkt.proto == 6 and len(body) >= 20:
        pkt.tcp = parse_tcp(body)
    elif (pkt.proto, version) in ((1, 4), (58, 6)) and len(body) >= 8:
        kind, code = body[0], body[1]
        mtu = None
        if version == 6 and kind == 2:  # Packet Too Big
            mtu = struct.unpack_from("!I", body, 4)[0]
        elif version == 4 and kind == 3 and code == 4:  # fragmentation needed
            mtu = struct.unpack_from("!H", body, 6)[0]
        pkt.icmp = Icmp(kind, code, mtu, body[8:])
    return pkt


def tcp_checksum_ok(pkt: Packet) -> bool:
    """The TCP checksum of a whole captured packet (not a super-packet), pseudo-header included."""
    assert pkt.tcp is not None and len(pkt.raw) == pkt.length, "needs the whole packet"
    seg = pkt.raw[pkt.header_len:]
    fam = socket.AF_INET6 if pkt.version == 6 else socket.AF_INET
    pseudo = socket.inet_pton(fam, pkt.src) + socket.inet_pton(fam, pkt.dst)
    pseudo += struct.pack("!IxxxB", len(seg), 6) if pkt.version == 6 else struct.pack(
        "!xBH", 6, len(seg))
    data = pseudo + seg + b"\0" * (len(seg) % 2)
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total == 0xFFFF


# -- capture on the TUN --------------------------------------------------------------------------

class TunCapture:
    """Packets on ``ifname`` in ``ns``, both ways, read by a thread from an AF_PACKET socket.

    Open it once the stack's TUN exists; ``stop()`` returns what was captured, parsed. Only the
    first 256 bytes of each packet are kept (whole packets for the handshake, headers for bulk).
    """

    def __init__(self, ns: NetNS, ifname: str = "utcp0") -> None:
        with ns.enter():
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_ALL))
            try:
                self.sock.setsockopt(_SOL_PACKET, _PACKET_VNET_HDR, 1)
                self.sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, 32 << 20)
                self.sock.bind((ifname, _ETH_P_ALL))
            except BaseException:
                self.sock.close()
                raise
        self._size = _HEAD + _VNET.size
        self._frames: list[tuple[bool, int, bytes, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        buf = bytearray(self._size)
        while not self._stop.is_set():
            if not select.select([self.sock], [], [], 0.05)[0]:
                continue
            # MSG_TRUNC: the packet's real length, though only the head is copied.
            n, addr = self.sock.recvfrom_into(buf, self._size, socket.MSG_TRUNC)
            _flags, gso_type, _hl, gso_size, _cs, _co = _VNET.unpack_from(buf)
            head = bytes(buf[_VNET.size:min(n, self._size)])
            gso = gso_size if gso_type & 0x7F in _GSO_TCP else 0
            self._frames.append((addr[2] != _PACKET_OUTGOING, n - _VNET.size, head, gso))

    def stop(self, settle: float = 0.2) -> list[Packet]:
        """Stop reading (after ``settle`` seconds for stragglers) and return the packets."""
        if not self._stop.is_set():
            self._stop.wait(settle)
            self._stop.set()
            self._thread.join(5)
            self.sock.close()
        out = []
        for from_stack, length, head, gso in self._frames:
            pkt = parse_ip(head, length, from_stack, gso)
            if pkt is not None:
                out.append(pkt)
        return out

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop(settle=0)


# -- a routed client -----------------------------------------------------------------------------

CLIENT4 = "10.8.0.2"
ROUTER4 = "10.8.0.1"
CLIENT6 = "fd00:8::2"
ROUTER6 = "fd00:8::1"


@contextlib.contextmanager
def routed_client(router: NetNS, mtu4: int = 1000, mtu6: int = 1280) -> Iterator[NetNS]:
    """A client namespace linked to ``router`` by two veth pairs: IPv4 over one of MTU ``mtu4``
    (10.8.0.2 - 10.8.0.1), IPv6 over one of MTU ``mtu6`` (fd00:8::2 - fd00:8::1).

    The router forwards both families; the client routes the stack's networks (10.7.0.0/24,
    fd00:7::/64, on the router's TUN) through it. The client's routes advertise the MSS of a host
    on a 1500-byte LAN (advmss), as a host behind a narrower link further along does: so the stack
    sends segments the router cannot forward, and must learn the path MTU from its ICMP errors.
    The client namespace, and with it the veth pairs, are deleted on exit.
    """
    client = NetNS.create()
    try:
        for peer, router_end, mtu in (("c4", "r4", mtu4), ("c6", "r6", mtu6)):
            router.run(["ip", "link", "add", router_end, "mtu", str(mtu), "type", "veth",
                        "peer", "name", peer, "mtu", str(mtu), "netns", client.name],
                       check=True, capture_output=True)
        for ns, cmds in (
            (router, [
                ["ip", "addr", "add", f"{ROUTER4}/24", "dev", "r4"],
                ["ip", "-6", "addr", "add", f"{ROUTER6}/64", "dev", "r6", "nodad"],
                ["ip", "link", "set", "r4", "up"],
                ["ip", "link", "set", "r6", "up"],
                ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"],
                ["sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1"],
            ]),
            (client, [
                ["ip", "addr", "add", f"{CLIENT4}/24", "dev", "c4"],
                ["ip", "-6", "addr", "add", f"{CLIENT6}/64", "dev", "c6", "nodad"],
                ["ip", "link", "set", "c4", "up"],
                ["ip", "link", "set", "c6", "up"],
                ["ip", "route", "add", "10.7.0.0/24", "via", ROUTER4, "advmss", "1460"],
                ["ip", "-6", "route", "add", "fd00:7::/64", "via", ROUTER6, "advmss", "1440"],
            ]),
        ):
            for cmd in cmds:
                ns.run(cmd, check=True, capture_output=True)
        yield client
    finally:
        client.close()
