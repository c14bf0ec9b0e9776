"""Reading capture files: classic pcap and pcapng, the IP packets in them, their TCP segments.

`read_capture` reads the file once and keeps, for each frame that carries TCP, a memoryview of
its IP packet (no copies); everything else is counted by reason in `Capture.skipped`.
`tcp_packets` then decodes those frames into `model.Packet`s.

Parsing is lenient on purpose: checksums are not verified (captures see offloaded, partial
ones), a short snapshot length still gives the headers and the IP header's lengths, an IPv4
total length of 0 (TSO) means "as captured", a malformed TCP option list ends the options only,
and a file cut short in its last record (tcpdump killed) reads as far as it is complete.
"""

from __future__ import annotations

import ipaddress
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from .model import Packet


class CaptureError(ValueError):
    """A capture that cannot be read; the message is one line, fit for the user."""


class Frame(NamedTuple):
    """One frame of the capture that carries TCP."""

    number: int  # 1-based position in the file, counting every frame
    time: float  # seconds (the capture's timestamps)
    ip: memoryview  # from the IP header on, as captured (may be cut short by the snaplen)
    version: int  # 4 or 6
    tcp: int  # offset of the TCP header in `ip`
    end: int  # the IP packet's length, from its header (as captured when that says 0)


@dataclass
class Capture:
    path: str
    format: str  # "pcap" or "pcapng"
    link_types: set[int] = field(default_factory=set)  # of the interfaces that had frames
    packets: list[Frame] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> frames
    frames: int = 0  # every frame in the file, skipped or not

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def skipped_text(self) -> str:
        """'skipped 3 of 20 frames: 2 not TCP, 1 IP fragment', or '' when none was."""
        if not self.skipped:
            return ""
        total = sum(self.skipped.values())
        parts = ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items(),
                                                             key=lambda kv: -kv[1]))
        return f"skipped {total} of {self.frames} frames: {parts}"


# -- link types ----------------------------------------------------------------------------------

NULL, EN10MB, RAW, LOOP, LINUX_SLL, IPV4, IPV6, LINUX_SLL2 = 0, 1, 101, 108, 113, 228, 229, 276
RAW_BSD = (12, 14)  # DLT_RAW's number on OpenBSD and BSD/OS, found in old files
NO_INTERFACE = -1  # a pcapng packet block naming an interface the file never described
SUPPORTED = frozenset({NULL, EN10MB, RAW, *RAW_BSD, LOOP, LINUX_SLL, IPV4, IPV6, LINUX_SLL2})

LINK_TYPE_NAMES = {
    0: "NULL", 1: "EN10MB", 6: "IEEE802_5", 8: "SLIP", 9: "PPP", 10: "FDDI", 12: "RAW",
    14: "RAW", 50: "PPP_HDLC", 51: "PPP_ETHER", 101: "RAW", 104: "C_HDLC", 105: "IEEE802_11",
    108: "LOOP", 113: "LINUX_SLL", 119: "IEEE802_11_PRISM", 127: "IEEE802_11_RADIOTAP",
    163: "IEEE802_11_AVS", 187: "BLUETOOTH_HCI_H4", 189: "USB_LINUX", 192: "PPI",
    195: "IEEE802_15_4", 201: "BLUETOOTH_HCI_H4_WITH_PHDR", 220: "USB_LINUX_MMAPPED",
    228: "IPV4", 229: "IPV6", 249: "USBPCAP", 253: "NETLINK", 276: "LINUX_SLL2",
    **{147 + i: f"USER{i}" for i in range(16)},
}


def link_type_name(number: int) -> str:
    return LINK_TYPE_NAMES.get(number, "unknown")


def _unsupported(number: int) -> str:
    return (f"link type {number} ({link_type_name(number)}) is not supported; usertcp reads "
            "raw IP, Ethernet, Linux cooked (SLL/SLL2) and loopback captures")


_ETH_IPV4, _ETH_IPV6 = 0x0800, 0x86DD
_VLAN_TAGS = (0x8100, 0x88A8, 0x9100)  # 802.1Q, 802.1ad (QinQ), the old QinQ number
_BSD_AF_INET6 = (10, 24, 28, 30)  # Linux, NetBSD/OpenBSD, FreeBSD, macOS
_u16 = struct.Struct("!H").unpack_from
_u32le = struct.Struct("<I").unpack_from
_u32be = struct.Struct("!I").unpack_from

NOT_IP = "not IP"
NOT_TCP = "not TCP"
FRAGMENT = "IP fragment (not the first)"
TRUNCATED = "truncated"
BAD_IP = "bad IP header"
BAD_TCP = "bad TCP header"
CUT_SHORT = "cut short (the file ends inside it)"


def _after_ethertype(frame: memoryview, at: int) -> memoryview | str:
    """The IP packet after an ethertype field at `at`, past any VLAN tags."""
    for _ in range(4):  # a bound on stacked tags
        if len(frame) < at + 2:
            return TRUNCATED
        kind = _u16(frame, at)[0]
        if kind not in _VLAN_TAGS:
            break
        at += 4  # the tag's TCI, then the next ethertype
    if kind not in (_ETH_IPV4, _ETH_IPV6):
        return NOT_IP
    return frame[at + 2:]


def ip_of_frame(link_type: int, frame: memoryview) -> memoryview | str:
    """The IP packet inside a link-layer frame, or why there is none."""
    if link_type in (RAW, *RAW_BSD, IPV4, IPV6):
        if not frame:
            return TRUNCATED
        version = frame[0] >> 4
        wanted = {IPV4: (4,), IPV6: (6,)}.get(link_type, (4, 6))
        return frame if version in wanted else NOT_IP
    if link_type == EN10MB:
        return _after_ethertype(frame, 12)
    if link_type == LINUX_SLL:
        # packet type, ARPHRD type, address length, address (8), protocol
        return _after_ethertype(frame, 14) if len(frame) >= 16 else TRUNCATED
    if link_type == LINUX_SLL2:
        # protocol, reserved, ifindex, ARPHRD type, packet type, address length, address (8)
        if len(frame) < 20:
            return TRUNCATED
        return frame[20:] if _u16(frame, 0)[0] in (_ETH_IPV4, _ETH_IPV6) else NOT_IP
    if link_type == NO_INTERFACE:
        return "no interface description"
    if link_type in (NULL, LOOP):
        if len(frame) < 4:
            return TRUNCATED
        family = _u32be(frame, 0)[0]
        if link_type == NULL and family > 0xFFFF:  # NULL is the capturing host's byte order
            family = _u32le(frame, 0)[0]
        return frame[4:] if family == 2 or family in _BSD_AF_INET6 else NOT_IP
    return f"link type {link_type} ({link_type_name(link_type)}) not supported"


# -- IP and TCP ----------------------------------------------------------------------------------

_PROTO_TCP = 6
_V6_SKIPPABLE = (0, 43, 60)  # hop-by-hop, routing, destination options: (len + 1) * 8 bytes
_V6_FRAGMENT, _V6_AH = 44, 51


class TcpAt(NamedTuple):
    version: int
    tcp: int  # offset of the TCP header in the IP packet
    end: int  # the IP packet's length, from its header (or as captured when that says 0)


def locate_tcp(ip: memoryview) -> TcpAt | str:
    """Where the TCP header of an IP packet is, or why the packet is skipped."""
    if not ip:
        return TRUNCATED
    version = ip[0] >> 4
    if version == 4:
        if len(ip) < 20:
            return TRUNCATED
        at = (ip[0] & 15) * 4
        if at < 20:
            return BAD_IP
        if _u16(ip, 6)[0] & 0x1FFF:
            return FRAGMENT
        if ip[9] != _PROTO_TCP:
            return NOT_TCP
        end = _u16(ip, 2)[0] or len(ip)  # 0 with TSO: the captured bytes are the packet
    elif version == 6:
        if len(ip) < 40:
            return TRUNCATED
        end = (40 + _u16(ip, 4)[0]) if _u16(ip, 4)[0] else len(ip)  # 0: jumbogram or TSO
        nxt, at = ip[6], 40
        for _ in range(8):  # a bound on chained extension headers
            if nxt == _PROTO_TCP:
                break
            if nxt not in (*_V6_SKIPPABLE, _V6_FRAGMENT, _V6_AH):
                return NOT_TCP
            if len(ip) < at + 8:
                return TRUNCATED
            if nxt == _V6_FRAGMENT:
                if _u16(ip, at + 2)[0] & 0xFFF8:
                    return FRAGMENT
                size = 8
            elif nxt == _V6_AH:
                size = (ip[at + 1] + 2) * 4
            else:
                size = (ip[at + 1] + 1) * 8
            nxt, at = ip[at], at + size
        else:
            return BAD_IP
    else:
        return NOT_IP
    if len(ip) < at + 20:
        return TRUNCATED
    tcp_len = (ip[at + 12] >> 4) * 4
    if tcp_len < 20:
        return BAD_TCP
    if len(ip) < at + tcp_len:
        return TRUNCATED
    if end < at + tcp_len:
        return BAD_IP  # its length does not even cover the headers
    return TcpAt(version, at, end)


_TCP = struct.Struct("!HHIIBBH")
_OPT_MSS, _OPT_WSCALE, _OPT_SACK_OK, _OPT_SACK, _OPT_TS = 2, 3, 4, 5, 8


_NOP_NOP_TS = b"\x01\x01\x08\x0a"  # the layout Linux puts on every segment after the SYNs


def _options(raw: memoryview) -> dict:
    """MSS, window scale, SACK-permitted, SACK blocks and timestamps; a bad list just ends."""
    if len(raw) == 12 and raw[:4] == _NOP_NOP_TS:
        ts_val, ts_ecr = struct.unpack_from("!II", raw, 4)
        return {"ts_val": ts_val, "ts_ecr": ts_ecr}
    out: dict = {}
    i = 0
    while i < len(raw):
        kind = raw[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= len(raw) or raw[i + 1] < 2 or i + raw[i + 1] > len(raw):
            break
        size = raw[i + 1]
        if kind == _OPT_MSS and size == 4:
            out["mss"] = _u16(raw, i + 2)[0]
        elif kind == _OPT_WSCALE and size == 3:
            out["wscale"] = raw[i + 2]
        elif kind == _OPT_SACK_OK and size == 2:
            out["sack_permitted"] = True
        elif kind == _OPT_SACK and size >= 10 and (size - 2) % 8 == 0:
            out["sack"] = tuple(struct.unpack_from("!II", raw, j)
                                for j in range(i + 2, i + size, 8))
        elif kind == _OPT_TS and size == 10:
            out["ts_val"], out["ts_ecr"] = struct.unpack_from("!II", raw, i + 2)
        i += size
    return out


def tcp_packet(frame: Frame, names: dict[bytes, str] | None = None) -> Packet:
    """The frame's TCP segment as a Packet. `names` caches address texts."""
    ip, at = frame.ip, frame.tcp
    if names is None:
        names = {}
    if frame.version == 4:
        raw_src, raw_dst = bytes(ip[12:16]), bytes(ip[16:20])
    else:
        raw_src, raw_dst = bytes(ip[8:24]), bytes(ip[24:40])
    for raw in (raw_src, raw_dst):
        if raw not in names:
            names[raw] = str(ipaddress.ip_address(raw))
    sport, dport, seq, ack, offset, flags, window = _TCP.unpack_from(ip, at)
    header = (offset >> 4) * 4
    data_at = at + header
    return Packet(
        time=frame.time, src=names[raw_src], sport=sport, dst=names[raw_dst], dport=dport,
        seq=seq, ack=ack, flags=flags, window=window, length=frame.end - data_at,
        payload=bytes(ip[data_at:min(frame.end, len(ip))]),
        size=frame.end, number=frame.number, ip_version=frame.version,
        **_options(ip[at + 20:data_at]),
    )


def tcp_packets(capture: Capture) -> list[Packet]:
    """Every TCP segment of the capture, in file order."""
    names: dict[bytes, str] = {}
    return [tcp_packet(frame, names) for frame in capture.packets]


# -- the file formats ----------------------------------------------------------------------------

_PCAP_MAGICS = {0xA1B2C3D4: (1_000_000, 16), 0xA1B23C4D: (1_000_000_000, 16),
                0xA1B2CD34: (1_000_000, 24)}  # (timestamp units a second, record header size)
_PCAPNG_SHB = 0x0A0D0D0A
_BYTE_ORDER_MAGIC = 0x1A2B3C4D
_MAX_RECORD = 0x40000  # libpcap's largest snapshot length: a bigger record is corruption
_GZIP = b"\x1f\x8b"


class _Raw(NamedTuple):
    time: float
    link_type: int
    data: memoryview


def read_capture(path: str | os.PathLike[str]) -> Capture:
    """Read a pcap or pcapng file; raises CaptureError with a one-line message."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise CaptureError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise CaptureError(f"{name}: is a directory, not a capture file") from None
    except OSError as exc:
        raise CaptureError(f"{name}: cannot read it: {exc.strerror or exc}") from None
    buf = memoryview(data)
    if len(buf) < 4:
        raise CaptureError(f"{name}: too short to be a capture file ({len(buf)} bytes)")
    if _u32le(buf, 0)[0] == _PCAPNG_SHB:
        capture = Capture(name, "pcapng")
        frames = _pcapng_frames(buf, name, capture)
    elif _u32le(buf, 0)[0] in _PCAP_MAGICS or _u32be(buf, 0)[0] in _PCAP_MAGICS:
        capture = Capture(name, "pcap")
        frames = _pcap_frames(buf, name, capture)
    else:
        hint = " (gzip-compressed: gunzip it first)" if bytes(buf[:2]) == _GZIP else ""
        raise CaptureError(f"{name} is neither a pcap nor a pcapng file "
                           f"(magic 0x{_u32be(buf, 0)[0]:08x}){hint}")
    for raw in frames:
        capture.frames += 1
        if raw.link_type != NO_INTERFACE:
            capture.link_types.add(raw.link_type)
        ip = ip_of_frame(raw.link_type, raw.data)
        where = ip if isinstance(ip, str) else locate_tcp(ip)
        if isinstance(where, str):
            capture.skip(where)
        else:
            capture.packets.append(Frame(capture.frames, raw.time, ip, *where))
    return capture


def _pcap_frames(buf: memoryview, name: str, capture: Capture) -> Iterator[_Raw]:
    order = "<" if _u32le(buf, 0)[0] in _PCAP_MAGICS else ">"
    units, record_size = _PCAP_MAGICS[struct.unpack_from(order + "I", buf)[0]]
    if len(buf) < 24:
        raise CaptureError(f"{name}: the pcap file header is cut short ({len(buf)} of 24 bytes)")
    snaplen, link_type = struct.unpack_from(order + "II", buf, 16)
    link_type &= 0xFFFF  # the upper bits may carry FCS information
    if link_type not in SUPPORTED:
        raise CaptureError(f"{name}: {_unsupported(link_type)}")
    record = struct.Struct(order + "IIII")
    limit = max(snaplen, _MAX_RECORD)
    pos, number = 24, 0
    while pos + record_size <= len(buf):
        number += 1
        sec, frac, incl, _orig = record.unpack_from(buf, pos)
        if incl > limit:
            raise CaptureError(f"{name}: record {number} at byte {pos} claims {incl} bytes, "
                               f"more than the snapshot length {snaplen}: the file is corrupt")
        start = pos + record_size
        if start + incl > len(buf):
            capture.skip(CUT_SHORT)
            return
        yield _Raw(sec + frac / units, link_type, buf[start:start + incl])
        pos = start + incl
    if pos < len(buf):  # part of a record header
        capture.skip(CUT_SHORT)


class _Interface(NamedTuple):
    link_type: int
    units: int  # timestamp units a second (if_tsresol): 10**n or 2**n
    offset: int  # seconds added to every timestamp (if_tsoffset)
    snaplen: int


def _pcapng_options(body: memoryview, order: str) -> Iterator[tuple[int, memoryview]]:
    pos = 0
    while pos + 4 <= len(body):
        code, size = struct.unpack_from(order + "HH", body, pos)
        if code == 0 or pos + 4 + size > len(body):
            return
        yield code, body[pos + 4:pos + 4 + size]
        pos += 4 + (size + 3) // 4 * 4


def _interface(body: memoryview, order: str) -> _Interface:
    link_type, _reserved, snaplen = struct.unpack_from(order + "HHI", body)
    units, offset = 1_000_000, 0
    for code, value in _pcapng_options(body[8:], order):
        if code == 9 and len(value) == 1:  # if_tsresol
            exp = value[0] & 0x7F
            units = 2 ** exp if value[0] & 0x80 else 10 ** exp
        elif code == 14 and len(value) == 8:  # if_tsoffset
            offset = struct.unpack_from(order + "q", value)[0]
    return _Interface(link_type, units, offset, snaplen)


def _pcapng_frames(buf: memoryview, name: str, capture: Capture) -> Iterator[_Raw]:
    if len(buf) < 28:
        raise CaptureError(f"{name}: the pcapng section header is cut short "
                           f"({len(buf)} bytes)")
    order = "<"
    interfaces: list[_Interface] = []
    readable = False  # whether any interface in the file has a link type this reads
    unsupported: set[int] = set()
    last_time = 0.0
    pos = 0
    while pos + 12 <= len(buf):
        kind = struct.unpack_from(order + "I", buf, pos)[0]
        if kind == _PCAPNG_SHB:  # a new section: its byte order, its own interfaces
            magic = _u32le(buf, pos + 8)[0]
            if magic == _BYTE_ORDER_MAGIC:
                order = "<"
            elif _u32be(buf, pos + 8)[0] == _BYTE_ORDER_MAGIC:
                order = ">"
            else:
                raise CaptureError(f"{name}: section header at byte {pos} has no byte-order "
                                   f"magic (0x{magic:08x}): the file is corrupt")
            interfaces = []
        length = struct.unpack_from(order + "I", buf, pos + 4)[0]
        if length < 12 or length % 4:
            raise CaptureError(f"{name}: block at byte {pos} has a nonsense length {length}: "
                               "the file is corrupt")
        if pos + length > len(buf):
            break  # cut short: counted below
        if struct.unpack_from(order + "I", buf, pos + length - 4)[0] != length:
            raise CaptureError(f"{name}: block at byte {pos} has two different lengths: "
                               "the file is corrupt")
        body = buf[pos + 8:pos + length - 4]
        pos += length
        if kind == 1 and len(body) >= 8:
            interface = _interface(body, order)
            interfaces.append(interface)
            if interface.link_type in SUPPORTED:
                readable = True
            else:
                unsupported.add(interface.link_type)
            continue
        if kind == 6 and len(body) >= 20:  # enhanced packet block
            iface, high, low, caplen, _orig = struct.unpack_from(order + "IIIII", body)
            data = body[20:20 + caplen]
        elif kind == 2 and len(body) >= 20:  # the obsolete packet block
            iface, _drops, high, low, caplen, _orig = struct.unpack_from(order + "HHIIII", body)
            data = body[20:20 + caplen]
        elif kind == 3 and len(body) >= 4:  # simple packet block: interface 0, no timestamp
            iface, orig = 0, struct.unpack_from(order + "I", body)[0]
            data = body[4:4 + orig]
            if interfaces and interfaces[0].snaplen:
                data = data[:interfaces[0].snaplen]
            high = None
        else:
            continue  # name resolution, statistics, custom and unknown blocks
        if iface >= len(interfaces):
            yield _Raw(last_time, NO_INTERFACE, data)
            continue
        interface = interfaces[iface]
        if high is not None:  # a simple packet block takes the time of the one before
            last_time = ((high << 32) | low) / interface.units + interface.offset
        yield _Raw(last_time, interface.link_type, data)
    if pos < len(buf):
        capture.skip(CUT_SHORT)
    if unsupported and not readable:
        raise CaptureError(f"{name}: {_unsupported(min(unsupported))}")
