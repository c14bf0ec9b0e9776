"""One entry point for the receive path: bytes in, a Segment (or header) out.

The usual packet (IHL 5, TCP, not a fragment; or IPv6 with TCP right after its
header) is parsed from a single struct unpack of both fixed headers; anything else
takes the general, slower path, which also names the reason for every drop.
"""

from __future__ import annotations

from .checksum import reduce
from .errors import DropReason, MalformedPacket
from .ipv4 import IPv4Header, parse_ipv4
from .ipv6 import V6, IPv6Header, parse_ipv6
from .tcp import (
    _PACKET,
    _PACKET6,
    _TS_WORD,
    ACK,
    FIN,
    RST,
    SYN,
    URG,
    Segment,
    _parse_options,
    _unpack_ts3,
    parse_tcp,
)

_unpack_packet = _PACKET.unpack_from
_unpack_packet6 = _PACKET6.unpack_from
_from = int.from_bytes
_PREDICTED = ACK | SYN | FIN | RST | URG  # of these, header prediction wants ACK alone


def predictable(packet, verify_checksum: bool = True):
    """The fields header prediction works from, or None: then parse_packet, which names the
    reason of any drop.

    Only the commonest packet of a transfer: IPv4 without options or IPv6 without extension
    headers, TCP with ACK (and maybe PSH) alone of the flags that matter, and no options
    but the timestamps as NOP NOP TS. It is checked as parse_packet checks it, except the
    source address and ports, which the caller's connection lookup vouches for. Returns
    ((src, sport, dst, dport), seq, ack, window, payload, tsval, tsecr), with no Segment
    made (addresses as parse_packet gives them).
    """
    n = len(packet)
    # The flags byte first: a handshake or a close is declined before any unpacking.
    if n >= 40 and packet[0] == 0x45 and packet[33] & _PREDICTED == ACK:
        (_vihl, tos, total, ident, frag, ttl, proto, csum, src, dst, sport, dport, seq, ack, doff,
         _flags, window, _tcsum, _urgent) = _unpack_packet(packet)
        if (proto != 6 or frag & 0x3FFF or total > n
                or (0x4500 + tos + total + ident + frag + (ttl << 8) + 6 + csum + (src >> 16)
                    + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF)) % 0xFFFF):
            return None
        ip_len = 20
        tcp_len = total - 20
        pseudo = (src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF)
    elif n >= 60 and packet[0] >> 4 == 6 and packet[6] == 6 and packet[53] & _PREDICTED == ACK:
        (_word, tcp_len, _nh, _hop, s_hi, s_lo, d_hi, d_lo, sport, dport, seq, ack, doff, _flags,
         window, _tcsum, _urgent) = _unpack_packet6(packet)
        total = 40 + tcp_len
        if total > n:
            return None
        ip_len = 40
        src = (s_hi << 64) | s_lo
        dst = (d_hi << 64) | d_lo
        pseudo = src + dst  # 2**16 == 1 (mod 0xFFFF): whole addresses sum as their words
    else:
        return None
    hlen = doff >> 4
    data_start = ip_len + (hlen << 2)
    if data_start > total:
        return None
    if hlen == 5:
        tsval = tsecr = None
    elif hlen == 8:
        head, tsval, tsecr = _unpack_ts3(packet, ip_len + 20)
        if head != _TS_WORD:
            return None
    else:
        return None
    view = memoryview(packet)
    if verify_checksum:
        words = _from(view[ip_len:total], "big")
        if tcp_len & 1:
            words <<= 8
        if (reduce(words) + pseudo + 6 + tcp_len) % 0xFFFF:
            return None
    if ip_len == 40:
        src |= V6
        dst |= V6
    return ((src, sport, dst, dport), seq, ack, window,
            view[data_start:total] if data_start < total else b"", tsval, tsecr)


def parse_packet(packet, verify_checksum: bool = True):
    """Validate `packet`; return a Segment for TCP, else the IPv4Header or IPv6Header.

    An IPv6 packet is a Segment only when it is TCP, not a fragment and raises no Parameter
    Problem; otherwise its IPv6Header goes to the stack, which decides about ICMPv6,
    reassembly and problems.

    Raises MalformedPacket with a named reason. `verify_checksum=False` is for
    devices that have already verified checksums (virtio-net DATA_VALID).
    """
    n = len(packet)
    if n < 40 or packet[0] != 0x45:
        if n >= 60 and packet[0] >> 4 == 6 and packet[6] == 6:
            return _tcp6(packet, n, verify_checksum)
        return _slow(packet, verify_checksum)
    (_vihl, tos, total, ident, frag, ttl, proto, csum, src, dst, sport, dport, seq, ack, doff,
     flags, window, _tcsum, urgent) = _unpack_packet(packet)
    if proto != 6 or frag & 0x3FFF or total > n or total < 40:
        return _slow(packet, verify_checksum)
    ip_sum = (0x4500 + tos + total + ident + frag + (ttl << 8) + 6 + csum + (src >> 16)
              + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF))
    if ip_sum % 0xFFFF:
        raise MalformedPacket(DropReason.BAD_IP_CHECKSUM)
    hlen = (doff >> 4) << 2
    tcp_len = total - 20
    if hlen < 20 or hlen > tcp_len:
        raise MalformedPacket(DropReason.BAD_DATA_OFFSET, f"data offset {hlen}, segment {tcp_len}")
    view = memoryview(packet)
    if verify_checksum:
        words = _from(view[20:total], "big")
        if tcp_len & 1:
            words <<= 8
        # Reduce the payload first so the pseudo-header adds to a small int.
        if (reduce(words) + (src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF)
                + 6 + tcp_len) % 0xFFFF:
            raise MalformedPacket(DropReason.BAD_TCP_CHECKSUM)
    src_first = src >> 24
    if src == 0 or src_first == 127 or src_first >= 224:
        raise MalformedPacket(DropReason.BAD_SOURCE)
    if not sport or not dport:
        raise MalformedPacket(DropReason.BAD_PORT)
    if flags & SYN and flags & (FIN | RST):
        raise MalformedPacket(DropReason.BAD_FLAGS)
    data_start = 20 + hlen
    seg = Segment(src, dst, sport, dport, seq, ack, flags, window, urgent,
                  view[data_start:total] if data_start < total else b"")
    if hlen > 20:
        if hlen == 32:
            head, ts_val, ts_ecr = _unpack_ts3(packet, 40)
            if head == _TS_WORD:  # NOP NOP TS: one unpack, no slice
                seg.ts_val = ts_val
                seg.ts_ecr = ts_ecr
            else:
                _parse_options(packet, 40, data_start, seg)
        else:
            _parse_options(packet, 40, data_start, seg)
    return seg


def _tcp6(packet, n: int, verify_checksum: bool):
    """TCP right after the IPv6 header: one unpack of both fixed headers, as for IPv4. Anything
    unusual goes to the general path, which names the reason."""
    (_word, plen, _nh, _hop, s_hi, s_lo, d_hi, d_lo, sport, dport, seq, ack, doff, flags, window,
     _tcsum, urgent) = _unpack_packet6(packet)
    total = 40 + plen
    hlen = (doff >> 4) << 2
    # ipv6.bad_source inlined, with the unspecified address (never a TCP source) added.
    if (total > n or hlen < 20 or hlen > plen or s_hi >> 56 == 0xFF
            or (not s_hi and (s_lo <= 1 or s_lo >> 32 == 0xFFFF))
            or not sport or not dport or flags & SYN and flags & (FIN | RST)):
        return _slow(packet, verify_checksum)
    src = (s_hi << 64) | s_lo
    dst = (d_hi << 64) | d_lo
    view = memoryview(packet)
    if verify_checksum:
        words = _from(view[40:total], "big")
        if plen & 1:
            words <<= 8
        # Whole addresses: 2**16 == 1 (mod 0xFFFF), as in pseudo_header_sum.
        if (reduce(words) + src + dst + 6 + plen) % 0xFFFF:
            raise MalformedPacket(DropReason.BAD_TCP_CHECKSUM)
    data_start = 40 + hlen
    seg = Segment(src | V6, dst | V6, sport, dport, seq, ack, flags, window, urgent,
                  view[data_start:total] if data_start < total else b"")
    if hlen > 20:
        if hlen == 32:
            head, ts_val, ts_ecr = _unpack_ts3(packet, 60)
            if head == _TS_WORD:
                seg.ts_val = ts_val
                seg.ts_ecr = ts_ecr
            else:
                _parse_options(packet, 60, data_start, seg)
        else:
            _parse_options(packet, 60, data_start, seg)
    return seg


def _slow(packet, verify_checksum: bool):
    if packet and packet[0] >> 4 == 6:
        ip6: IPv6Header = parse_ipv6(packet)
        if ip6.protocol == 6 and ip6.fragment is None and ip6.problem is None:
            return parse_tcp(packet, ip6, verify_checksum)
        return ip6
    ip: IPv4Header = parse_ipv4(packet)
    if ip.protocol == 6:
        return parse_tcp(packet, ip, verify_checksum)
    return ip
