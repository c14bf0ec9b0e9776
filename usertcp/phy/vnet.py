"""The virtio-net header that a TUN device opened with IFF_VNET_HDR puts before each packet.

With TUNSETOFFLOAD(CSUM|TSO4) the kernel hands us TCP segments larger than
the MTU with the checksum left partial, and accepts the same from us: it
segments them and completes the checksums. One read or write then moves up to
64 KB, which is what makes a Python stack fast (packet count is the budget).
"""

from __future__ import annotations

import struct

from ..wire.checksum import reduce

VNET_HDR = struct.Struct("<BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
VNET_HDR_LEN = VNET_HDR.size  # 10

F_NEEDS_CSUM = 1  # checksum is partial: the pseudo-header sum only
F_DATA_VALID = 2  # checksum already verified
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_TCPV6 = 4

TUNSETOFFLOAD = 0x400454D0  # _IOW('T', 208, unsigned int)
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04

NO_OFFLOAD_HEADER = bytes(VNET_HDR_LEN)
_pack = VNET_HDR.pack
_unpack_from = VNET_HDR.unpack_from


def header_for(packet, mtu: int) -> bytes:
    """The header for an outgoing packet from a stack that leaves TCP checksums partial."""
    if packet[0] >> 4 == 6:
        # IPv6 as the stack builds it: no extension headers, TCP right after 40 bytes.
        if len(packet) < 60 or packet[6] != 6:
            return NO_OFFLOAD_HEADER
        thl = (packet[52] >> 4) << 2
        if len(packet) > mtu:
            return _pack(F_NEEDS_CSUM, GSO_TCPV6, 40 + thl, mtu - 40 - thl, 40, 16)
        return _pack(F_NEEDS_CSUM, GSO_NONE, 40 + thl, 0, 40, 16)
    if len(packet) < 40 or packet[9] != 6:  # not TCP: complete as it is
        return NO_OFFLOAD_HEADER
    ihl = (packet[0] & 15) << 2
    thl = (packet[ihl + 12] >> 4) << 2
    if len(packet) > mtu:
        return _pack(F_NEEDS_CSUM, GSO_TCPV4, ihl + thl, mtu - ihl - thl, ihl, 16)
    return _pack(F_NEEDS_CSUM, GSO_NONE, ihl + thl, 0, ihl, 16)


def checksum_ok(header_flags: int, packet) -> bool:
    """Whether an incoming packet's TCP checksum can be trusted.

    The kernel marks its own segments partial (NEEDS_CSUM) or verified
    (DATA_VALID); anything else is checked here, so the stack never must.
    """
    if header_flags & (F_NEEDS_CSUM | F_DATA_VALID):
        return True
    if len(packet) >= 60 and packet[0] >> 4 == 6:
        return _checksum_ok6(packet)
    if len(packet) < 20 or packet[9] != 6:
        return True  # not TCP: the stack checks ICMP itself
    if packet[0] >> 4 != 4 or packet[0] & 15 < 5 or ((packet[6] << 8) | packet[7]) & 0x3FFF:
        return True  # not IPv4, a bad header length, a fragment: the stack names the reason
    ihl = (packet[0] & 15) << 2
    total = (packet[2] << 8) | packet[3]
    if total > len(packet) or total < ihl:
        return True  # malformed: the stack's parser names the reason
    src_dst = int.from_bytes(packet[12:20], "big")
    pseudo = (reduce(src_dst) + 6 + total - ihl)
    words = int.from_bytes(packet[ihl:total], "big")
    if (total - ihl) & 1:
        words <<= 8
    return (reduce(words) + pseudo) % 0xFFFF == 0


def _checksum_ok6(packet) -> bool:
    """TCP directly after the IPv6 header; anything else the stack's parser checks itself."""
    if packet[6] != 6:
        return True
    end = 40 + ((packet[4] << 8) | packet[5])
    if end > len(packet):
        return True  # malformed: the parser names the reason
    pseudo = reduce(int.from_bytes(packet[8:40], "big")) + 6 + end - 40
    words = int.from_bytes(packet[40:end], "big")
    if (end - 40) & 1:
        words <<= 8
    return (reduce(words) + pseudo) % 0xFFFF == 0
