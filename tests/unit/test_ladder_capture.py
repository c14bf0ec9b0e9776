"""usertcp.ladder.capture: pcap and pcapng files of every link type read back as TCP Packets;
usertcp.ladder.conversations: those packets split into connections, and one chosen.

The files are built here by small writers of this test's own (and cross-checked against scapy's
reader and writers); the packets are built by scapy.
"""

from __future__ import annotations

import ipaddress
import struct

import pytest
from scapy.all import (
    ARP,
    ICMP,
    IP,
    TCP,
    UDP,
    CookedLinux,
    CookedLinuxV2,
    Dot1AD,
    Dot1Q,
    Ether,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    PcapNgWriter,
    rdpcap,
    wrpcap,
)

from usertcp.ladder.capture import (
    CUT_SHORT,
    FRAGMENT,
    NOT_IP,
    NOT_TCP,
    TRUNCATED,
    CaptureError,
    read_capture,
    tcp_packets,
)
from usertcp.ladder.conversations import select, split
from usertcp.ladder.model import Packet
from usertcp.phy import PcapWriter, QueueDevice
from usertcp.wire.ipv4 import PROTO_TCP
from usertcp.wire.tcp import ACK, FIN, PSH, RST, SYN, build_options, build_segment

A4, B4, A6, B6 = "10.0.0.1", "10.0.0.2", "fd00::1", "fd00::2"


# -- this test's own writers ---------------------------------------------------------------------

def pcap(records, link_type=101, order="<", nano=False, snaplen=262144):
    """Classic pcap bytes; records are (time, data) or (time, data, orig_len)."""
    units = 1_000_000_000 if nano else 1_000_000
    out = bytearray(struct.pack(order + "IHHiIII", 0xA1B23C4D if nano else 0xA1B2C3D4,
                                2, 4, 0, 0, snaplen, link_type))
    for record in records:
        ts, data = record[0], bytes(record[1])
        orig = record[2] if len(record) > 2 else len(data)
        sec, frac = divmod(round(ts * units), units)
        out += struct.pack(order + "IIII", sec, frac, len(data), orig) + data
    return bytes(out)


def _block(kind, body, order):
    body = bytes(body) + bytes(-len(body) % 4)
    length = len(body) + 12
    return struct.pack(order + "II", kind, length) + body + struct.pack(order + "I", length)


def _option(code, value, order):
    return struct.pack(order + "HH", code, len(value)) + value + bytes(-len(value) % 4)


def shb(order="<"):
    return _block(0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1), order)


def idb(link_type, order="<", tsresol=None, tsoffset=None, snaplen=0):
    options = b""
    if tsresol is not None:
        options += _option(9, bytes([tsresol]), order)
    if tsoffset is not None:
        options += _option(14, struct.pack(order + "q", tsoffset), order)
    if options:
        options += _option(0, b"", order)
    return _block(1, struct.pack(order + "HHI", link_type, 0, snaplen) + options, order)


def epb(iface, units, data, order="<", orig=None):
    data = bytes(data)
    head = struct.pack(order + "IIIII", iface, units >> 32, units & 0xFFFFFFFF, len(data),
                       len(data) if orig is None else orig)
    return _block(6, head + data, order)


def spb(data, order="<"):
    data = bytes(data)
    return _block(3, struct.pack(order + "I", len(data)) + data, order)


def old_pb(iface, units, data, order="<"):
    data = bytes(data)
    head = struct.pack(order + "HHIIII", iface, 0, units >> 32, units & 0xFFFFFFFF, len(data),
                       len(data))
    return _block(2, head + data, order)


def write(tmp_path, data, name="c.pcap"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


# -- packets -------------------------------------------------------------------------------------

SYN_OPTIONS = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1000, 0)), ("NOP", None),
               ("WScale", 7)]


def syn(src=A4, dst=B4):
    ip = IP(src=src, dst=dst) if ":" not in src else IPv6(src=src, dst=dst)
    return ip / TCP(sport=40000, dport=80, seq=1000, flags="S", window=64240,
                    options=SYN_OPTIONS)


def data_segment(src=A4, dst=B4, payload=b"hello", seq=1001, ack=5001):
    ip = IP(src=src, dst=dst) if ":" not in src else IPv6(src=src, dst=dst)
    return ip / TCP(sport=40000, dport=80, seq=seq, ack=ack, flags="PA", window=502) / payload


def check_syn(p, src=A4, dst=B4, number=1, time=1.5):
    assert (p.src, p.sport, p.dst, p.dport) == (src, 40000, dst, 80)
    assert (p.seq, p.ack, p.flags, p.window) == (1000, 0, SYN, 64240)
    assert (p.mss, p.wscale, p.sack_permitted, p.ts_val, p.ts_ecr) == (1460, 7, True, 1000, 0)
    assert (p.length, p.payload, p.number) == (0, b"", number)
    assert p.size == (40 + 20 if ":" not in src else 40 + 40)
    assert p.ip_version == (6 if ":" in src else 4)
    assert p.time == pytest.approx(time, abs=1e-9)


def check_data(p, src=A4, dst=B4, number=2, payload=b"hello"):
    assert (p.src, p.dst, p.seq, p.ack, p.flags, p.window) == (src, dst, 1001, 5001, PSH | ACK,
                                                               502)
    assert (p.length, p.payload, p.number) == (len(payload), payload, number)
    assert (p.mss, p.wscale, p.sack_permitted, p.ts_val, p.sack) == (None, None, False, None, ())


# -- classic pcap --------------------------------------------------------------------------------

@pytest.mark.parametrize("order", ["<", ">"])
def test_raw_pcap_in_both_byte_orders(tmp_path, order):
    path = write(tmp_path, pcap([(1.5, syn()), (2.25, data_segment())], order=order))
    capture = read_capture(path)
    assert (capture.format, capture.link_types, capture.frames, capture.skipped) == (
        "pcap", {101}, 2, {})
    first, second = tcp_packets(capture)
    check_syn(first)
    check_data(second)
    assert second.time == 2.25


def test_nanosecond_pcap_keeps_the_nanoseconds(tmp_path):
    ns = pcap([(7.123456789, syn())], nano=True)
    us = pcap([(7.123456789, syn())])
    [p_ns] = tcp_packets(read_capture(write(tmp_path, ns, "ns.pcap")))
    [p_us] = tcp_packets(read_capture(write(tmp_path, us, "us.pcap")))
    assert p_ns.time == pytest.approx(7.123456789, abs=1e-12)
    assert p_us.time == pytest.approx(7.123457, abs=1e-12)


def _eth(ip):
    return Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / ip


LINK_CASES = {
    "raw-101": (101, lambda ip: ip),
    "raw-12": (12, lambda ip: ip),
    "raw-14": (14, lambda ip: ip),
    "ethernet": (1, _eth),
    "ethernet-802.1q": (1, lambda ip: Ether() / Dot1Q(vlan=7) / ip),
    "ethernet-qinq": (1, lambda ip: Ether() / Dot1AD(vlan=3) / Dot1Q(vlan=7) / ip),
    "linux-sll": (113, lambda ip: CookedLinux(pkttype=4, lladdrtype=1, lladdrlen=6) / ip),
    "linux-sll2": (276, lambda ip: CookedLinuxV2(ifindex=2, pkttype=0) / ip),
    "null-little": (0, lambda ip: struct.pack("<I", 2 if ip.version == 4 else 30) / ip),
    "null-big": (0, lambda ip: struct.pack(">I", 2 if ip.version == 4 else 24) / ip),
    "loop": (108, lambda ip: struct.pack(">I", 2 if ip.version == 4 else 28) / ip),
}


@pytest.mark.parametrize("case", sorted(LINK_CASES))
@pytest.mark.parametrize("family", [4, 6])
def test_every_link_type_gives_the_same_packets(tmp_path, case, family):
    link_type, frame = LINK_CASES[case]
    src, dst = (A4, B4) if family == 4 else (A6, B6)

    def framed(ip):
        f = frame(ip)
        return f if isinstance(f, bytes) else bytes(f)

    records = [(1.5, framed(syn(src, dst))), (2.0, framed(data_segment(src, dst)))]
    capture = read_capture(write(tmp_path, pcap(records, link_type=link_type)))
    assert capture.link_types == {link_type} and capture.skipped == {}
    first, second = tcp_packets(capture)
    check_syn(first, src, dst)
    check_data(second, src, dst)


@pytest.mark.parametrize("link_type", [228, 229])
def test_ipv4_and_ipv6_link_types(tmp_path, link_type):
    src, dst = (A4, B4) if link_type == 228 else (A6, B6)
    other = syn(B6, A6) if link_type == 228 else syn(B4, A4)  # the wrong family: not IP here
    path = write(tmp_path, pcap([(1.5, syn(src, dst)), (1.6, other)], link_type=link_type))
    capture = read_capture(path)
    [p] = tcp_packets(capture)
    check_syn(p, src, dst)
    assert capture.skipped == {NOT_IP: 1}


def test_ethernet_padding_is_not_payload(tmp_path):
    frame = bytes(Ether() / IP(src=A4, dst=B4) / TCP(sport=1, dport=2, flags="A"))
    assert len(frame) == 54
    path = write(tmp_path, pcap([(1.0, frame + bytes(6) + b"FCS!")], link_type=1))
    [p] = tcp_packets(read_capture(path))
    assert (p.length, p.payload, p.size) == (0, b"", 40)


def test_scapy_written_pcap_reads_as_scapy_reads_it(tmp_path):
    frames = [_eth(syn()), _eth(data_segment(payload=b"x" * 1400)),
              _eth(IP(src=B4, dst=A4) / TCP(sport=80, dport=40000, flags="FA", seq=9, ack=7))]
    path = tmp_path / "scapy.pcap"
    wrpcap(str(path), frames)
    ours = tcp_packets(read_capture(path))
    theirs = rdpcap(str(path))
    assert len(ours) == len(theirs) == 3
    for mine, other in zip(ours, theirs, strict=True):
        tcp = other[TCP]
        assert (mine.seq, mine.ack, int(mine.flags), mine.window) == (
            tcp.seq, tcp.ack, int(tcp.flags), tcp.window)
        assert mine.payload == bytes(tcp.payload)
        assert mine.time == pytest.approx(float(other.time), abs=1e-6)
    assert ours[2].flags == FIN | ACK


def test_usertcps_own_pcap_writer_reads_back_exactly(tmp_path):
    src, dst = int(ipaddress.ip_address(A4)), int(ipaddress.ip_address(B4))
    sent = [build_segment(src, dst, 40000, 80, 7, 0, SYN, 65535,
                          build_options(mss=1460, wscale=7, sack_permitted=True,
                                        timestamp=(5, 0))),
            build_segment(src, dst, 40000, 80, 8, 99, ACK | PSH, 1000, payload=b"abc" * 100)]
    received = [build_segment(dst, src, 80, 40000, 98, 8, SYN | ACK, 65160,
                              build_options(mss=1400, sack_blocks=[(10, 20), (30, 40)]))]
    clock = iter([100.25, 100.5, 101.0]).__next__
    path = tmp_path / "own.pcap"
    inner = QueueDevice()
    dev = PcapWriter(inner, path, clock=clock)
    dev.send_batch(sent[:1])
    inner.inject(received)
    dev.receive_batch()
    dev.send_batch(sent[1:])
    dev.close()
    capture = read_capture(path)
    assert [f.ip.tobytes() for f in capture.packets] == [sent[0], received[0], sent[1]]
    a, b, c = tcp_packets(capture)
    assert [p.time for p in (a, b, c)] == [100.25, 100.5, 101.0]
    assert (a.seq, a.flags, a.mss, a.wscale, a.sack_permitted, a.ts_val, a.ts_ecr) == (
        7, SYN, 1460, 7, True, 5, 0)
    assert (b.src, b.sport, b.flags, b.mss, b.sack) == (B4, 80, SYN | ACK, 1400,
                                                       ((10, 20), (30, 40)))
    assert (c.length, c.payload, c.size, c.number) == (300, b"abc" * 100, 340, 3)


# -- pcapng --------------------------------------------------------------------------------------

@pytest.mark.parametrize("order", ["<", ">"])
def test_pcapng_blocks_resolutions_and_sections(tmp_path, order):
    other = ">" if order == "<" else "<"
    data = b"".join([
        shb(order),
        idb(101, order),  # microseconds
        idb(1, order, tsresol=9),  # nanoseconds, Ethernet
        idb(229, order, tsresol=0x80 | 10, tsoffset=1000),  # 2**-10 s, plus 1000 s
        _block(4, b"\x00\x00\x00\x00", order),  # name resolution: skipped
        epb(0, 1_500_000, syn(), order),
        epb(1, 2_000_000_001, _eth(data_segment()), order),
        _block(5, bytes(16), order),  # interface statistics: skipped
        epb(2, 512, syn(A6, B6), order),
        spb(data_segment(payload=b"spb"), order),  # interface 0, the time before it
        _block(0x40000BAD, b"custom", order),
        old_pb(1, 3_000_000_000, _eth(data_segment(payload=b"old")), order),
        # a second section, in the other byte order, with interfaces of its own
        shb(other),
        idb(113, other),
        epb(0, 4_000_000, CookedLinux() / data_segment(payload=b"sll"), other),
    ])
    capture = read_capture(write(tmp_path, data, "c.pcapng"))
    assert (capture.format, capture.frames, capture.skipped) == ("pcapng", 6, {})
    assert capture.link_types == {101, 1, 229, 113}
    p = tcp_packets(capture)
    check_syn(p[0], number=1, time=1.5)
    check_data(p[1], number=2)
    assert p[1].time == pytest.approx(2.000000001, abs=1e-9)
    check_syn(p[2], A6, B6, number=3, time=1000.5)
    check_data(p[3], number=4, payload=b"spb")
    assert p[3].time == 1000.5
    check_data(p[4], number=5, payload=b"old")
    assert p[4].time == 3.0
    check_data(p[5], number=6, payload=b"sll")
    assert p[5].time == 4.0


def test_pcapng_mixing_link_types_skips_the_unsupported_interface(tmp_path):
    data = b"".join([shb(), idb(127), idb(1), epb(0, 1, b"\x00" * 30), epb(1, 2, _eth(syn())),
                     epb(0, 3, b"\x00" * 30), epb(5, 4, syn())])
    capture = read_capture(write(tmp_path, data, "mixed.pcapng"))
    [p] = tcp_packets(capture)
    assert p.number == 2
    assert capture.skipped == {"link type 127 (IEEE802_11_RADIOTAP) not supported": 2,
                               "no interface description": 1}
    assert capture.frames == 4
    assert capture.skipped_text() == (
        "skipped 3 of 4 frames: 2 link type 127 (IEEE802_11_RADIOTAP) not supported,"
        " 1 no interface description")


def test_scapy_pcapng_writer_cross_check(tmp_path):
    path = tmp_path / "scapy.pcapng"
    frames = [_eth(syn()), _eth(data_segment(payload=b"z" * 100))]
    frames[0].time, frames[1].time = 10.25, 11.5
    with PcapNgWriter(str(path)) as w:
        for f in frames:
            w.write(f)
    ours = tcp_packets(read_capture(path))
    check_syn(ours[0], time=10.25)
    check_data(ours[1], payload=b"z" * 100)
    assert [p.time for p in ours] == [float(f.time) for f in rdpcap(str(path))] == [10.25, 11.5]


# -- what is skipped -----------------------------------------------------------------------------

def test_non_tcp_and_fragments_are_counted(tmp_path):
    first_frag = IP(src=A4, dst=B4, flags="MF", frag=0, proto=PROTO_TCP) / bytes(
        TCP(sport=40000, dport=80, seq=5, flags="PA") / (b"f" * 32))
    later_frag = IP(src=A4, dst=B4, frag=5, proto=PROTO_TCP) / (b"g" * 16)
    v6_later = IPv6(src=A6, dst=B6) / IPv6ExtHdrFragment(offset=3, nh=6) / (b"h" * 16)
    frames = [
        _eth(IP(src=A4, dst=B4) / UDP(sport=5, dport=53)),
        _eth(IPv6(src=A6, dst=B6) / UDP()),
        _eth(IP(src=A4, dst=B4) / ICMP()),
        Ether(type=0x0806) / ARP(),
        _eth(first_frag), _eth(later_frag), _eth(v6_later),
        _eth(IPv6(src=A6, dst=B6) / IPv6ExtHdrHopByHop() / IPv6ExtHdrRouting()
             / IPv6ExtHdrDestOpt() / IPv6ExtHdrFragment(offset=0, m=1)
             / data_segment(A6, B6)[TCP]),
    ]
    records = [(1.0, bytes(f)) for f in frames]
    capture = read_capture(write(tmp_path, pcap(records, link_type=1)))
    assert capture.skipped == {NOT_TCP: 3, NOT_IP: 1, FRAGMENT: 2}
    frag, v6 = tcp_packets(capture)
    assert (frag.number, frag.seq, frag.length, frag.payload) == (5, 5, 32, b"f" * 32)
    check_data(v6, A6, B6, number=8)
    assert v6.size == 40 + 3 * 8 + 8 + 20 + 5  # three 8-byte option headers and a fragment one


def test_small_snaplen_keeps_headers_and_lengths(tmp_path):
    big = data_segment(payload=bytes(range(256)) * 4)  # 1024 bytes
    raw = bytes(big)
    records = [(1.0, raw[:100], len(raw)), (2.0, raw[:39], len(raw)),
               (3.0, bytes(syn())[:50], 60)]  # the SYN's options cut: too short for its header
    capture = read_capture(write(tmp_path, pcap(records, snaplen=100)))
    [p] = tcp_packets(capture)
    assert (p.length, p.size, p.payload) == (1024, 1064, bytes(range(60)))
    assert capture.skipped == {TRUNCATED: 2}


def test_tso_zero_total_length_takes_the_captured_length(tmp_path):
    raw = bytearray(bytes(data_segment(payload=b"t" * 3000)))
    raw[2:4] = b"\x00\x00"
    [p] = tcp_packets(read_capture(write(tmp_path, pcap([(1.0, raw)]))))
    assert (p.length, p.size, p.payload) == (3000, 3040, b"t" * 3000)


def test_tcp_options_unknown_and_malformed(tmp_path):
    def with_options(raw_options):
        tcp = struct.pack("!HHIIBBHHH", 1, 2, 3, 4, (5 + len(raw_options) // 4) << 4, ACK,
                          100, 0, 0)
        ip_len = 20 + len(tcp) + len(raw_options)
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, ip_len, 0, 0, 64, 6, 0,
                         bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
        return ip + tcp + raw_options

    unknown = bytes([30, 4, 9, 9]) + bytes([2, 4, 0x05, 0xB4])  # kind 30 ignored, then MSS
    sack = bytes([1, 1, 5, 18]) + struct.pack("!IIII", 100, 200, 300, 400)
    broken = bytes([3, 3, 9]) + bytes([2, 0, 1, 1])  # wscale, then MSS with length 0: stop
    runaway = bytes([1, 8, 40, 0])  # a timestamp option longer than the list
    path = write(tmp_path, pcap([(1.0, with_options(o)) for o in (unknown, sack, broken,
                                                                   runaway)]))
    a, b, c, d = tcp_packets(read_capture(path))
    assert (a.mss, a.wscale) == (1460, None)
    assert b.sack == ((100, 200), (300, 400))
    assert (c.wscale, c.mss) == (9, None)
    assert (d.ts_val, d.length) == (None, 0)


# -- files cut short and broken files ------------------------------------------------------------

def test_pcap_cut_short_in_its_last_record_reads_what_is_complete(tmp_path):
    whole = pcap([(1.0, syn()), (2.0, data_segment()), (3.0, data_segment(payload=b"x" * 500))])
    for cut in (len(whole) - 100, len(whole) - 556 + 8):  # in the data; in the record header
        capture = read_capture(write(tmp_path, whole[:cut]))
        assert [p.number for p in tcp_packets(capture)] == [1, 2]
        assert capture.skipped == {CUT_SHORT: 1}


def test_pcapng_cut_short_in_its_last_block(tmp_path):
    whole = shb() + idb(101) + epb(0, 1, syn()) + epb(0, 2, data_segment())
    for cut in (len(whole) - 30, len(whole) - 4, len(whole) - 75):
        capture = read_capture(write(tmp_path, whole[:cut], "c.pcapng"))
        assert [p.number for p in tcp_packets(capture)] == [1]
        assert capture.skipped == {CUT_SHORT: 1}


def error(tmp_path, data, name="bad.pcap") -> str:
    with pytest.raises(CaptureError) as info:
        read_capture(write(tmp_path, data, name))
    message = str(info.value)
    assert "\n" not in message
    return message.replace(str(tmp_path) + "/", "")


def test_error_messages(tmp_path):
    with pytest.raises(CaptureError, match=r"nope\.pcap: no such file$"):
        read_capture(tmp_path / "nope.pcap")
    with pytest.raises(CaptureError, match="is a directory"):
        read_capture(tmp_path)
    assert error(tmp_path, b"hello world\n", "x.txt") == (
        "x.txt is neither a pcap nor a pcapng file (magic 0x68656c6c)")
    assert error(tmp_path, b"\x1f\x8b\x08\x00rest", "c.pcap.gz").endswith(
        "(gzip-compressed: gunzip it first)")
    assert error(tmp_path, b"") == "bad.pcap: too short to be a capture file (0 bytes)"
    assert error(tmp_path, pcap([])[:10]) == (
        "bad.pcap: the pcap file header is cut short (10 of 24 bytes)")
    assert error(tmp_path, shb()[:20]) == (
        "bad.pcap: the pcapng section header is cut short (20 bytes)")
    assert error(tmp_path, pcap([(1.0, b"x" * 10)], link_type=127)) == (
        "bad.pcap: link type 127 (IEEE802_11_RADIOTAP) is not supported; usertcp reads raw IP,"
        " Ethernet, Linux cooked (SLL/SLL2) and loopback captures")
    assert error(tmp_path, shb() + idb(105) + epb(0, 1, b"x" * 10)) == (
        "bad.pcap: link type 105 (IEEE802_11) is not supported; usertcp reads raw IP,"
        " Ethernet, Linux cooked (SLL/SLL2) and loopback captures")
    bogus = bytearray(pcap([(1.0, syn()), (2.0, syn())]))
    bogus[24 + 16 + 60 + 8:24 + 16 + 60 + 12] = struct.pack("<I", 0x7FFFFFFF)
    assert error(tmp_path, bytes(bogus)) == (
        "bad.pcap: record 2 at byte 100 claims 2147483647 bytes, more than the snapshot length"
        " 262144: the file is corrupt")
    odd = shb() + struct.pack("<II", 6, 13) + bytes(20)
    assert error(tmp_path, odd) == (
        "bad.pcap: block at byte 28 has a nonsense length 13: the file is corrupt")
    disagree = bytearray(shb() + idb(101))
    disagree[-4:] = struct.pack("<I", 24)
    assert error(tmp_path, bytes(disagree)) == (
        "bad.pcap: block at byte 28 has two different lengths: the file is corrupt")
    no_bom = bytearray(shb())
    no_bom[8:12] = b"\x00\x00\x00\x00"
    assert error(tmp_path, bytes(no_bom)) == (
        "bad.pcap: section header at byte 0 has no byte-order magic (0x00000000):"
        " the file is corrupt")


# -- conversations -------------------------------------------------------------------------------

def pkt(src, dst, flags, seq=0, ack=0, length=0, time=0.0):
    (shost, sport), (dhost, dport) = src, dst
    return Packet(time=time, src=shost, sport=sport, dst=dhost, dport=dport, seq=seq, ack=ack,
                  flags=flags, window=1000, length=length)


C, S = (A4, 40000), (B4, 80)


def handshake_and_close(isn_c=100, isn_s=900, t=0.0, data=10):
    return [
        pkt(C, S, SYN, isn_c, time=t),
        pkt(S, C, SYN | ACK, isn_s, isn_c + 1, time=t + 0.001),
        pkt(C, S, ACK, isn_c + 1, isn_s + 1, time=t + 0.002),
        pkt(C, S, PSH | ACK, isn_c + 1, isn_s + 1, data, time=t + 0.003),
        pkt(S, C, ACK, isn_s + 1, isn_c + 1 + data, time=t + 0.004),
        pkt(C, S, FIN | ACK, isn_c + 1 + data, isn_s + 1, time=t + 0.005),
        pkt(S, C, FIN | ACK, isn_s + 1, isn_c + 2 + data, time=t + 0.006),
        pkt(C, S, ACK, isn_c + 2 + data, isn_s + 2, time=t + 0.052),
    ]


def test_one_connection_with_its_summary():
    [conn] = split(handshake_and_close())
    assert (conn.number, conn.endpoints, conn.syn_seen) == (1, (C, S), True)
    assert (len(conn.packets), conn.bytes, conn.first, conn.last) == (8, [10, 0], 0.0, 0.052)
    assert conn.state() == "closed"
    assert conn.summary() == ("  1  10.0.0.1:40000 → 10.0.0.2:80      8 packets  10/0 bytes"
                              "  0.052 s  SYN … FIN FIN  (closed)")
    assert "->" in conn.summary(unicode=False) and "..." in conn.summary(unicode=False)


def test_a_reused_four_tuple_after_fins_rst_or_time_wait_is_a_new_connection():
    packets = handshake_and_close(100, 900, t=0.0)
    packets += handshake_and_close(5000, 7000, t=1.0)  # after FINs both ways
    packets += [pkt(C, S, SYN, 9000, time=2.0), pkt(S, C, RST | ACK, 0, 9001, time=2.001),
                pkt(C, S, SYN, 9500, time=3.0)]  # refused, then tried again
    conns = split(packets)
    assert [c.number for c in conns] == [1, 2, 3, 4]
    assert [len(c.packets) for c in conns] == [8, 8, 2, 1]
    assert [c.packets[0].seq for c in conns] == [100, 5000, 9000, 9500]
    assert [c.state() for c in conns] == ["closed", "closed", "reset", "open"]

    # the server's port opens towards the client's later on: its first SYN from that side
    late = [pkt(C, S, SYN, 1, time=0.0), pkt(S, C, SYN, 50, time=100.0)]
    assert [c.endpoints for c in split(late)] == [(C, S), (S, C)]
    soon = [pkt(C, S, SYN, 1, time=0.0), pkt(S, C, SYN, 50, time=0.1)]  # simultaneous open
    assert len(split(soon)) == 1


def test_a_retransmitted_syn_stays_and_another_isn_starts_anew():
    packets = [pkt(C, S, SYN, 100, time=0.0), pkt(C, S, SYN, 100, time=1.0),
               pkt(S, C, SYN | ACK, 900, 101, time=1.01), pkt(S, C, SYN | ACK, 900, 101, time=2),
               pkt(C, S, ACK, 101, 901, time=2.01)]
    [conn] = split(packets)
    assert len(conn.packets) == 5 and conn.isn == [100, 900]
    retry = [pkt(C, S, SYN, 100, time=0.0), pkt(C, S, SYN, 300, time=3.0)]
    assert [c.packets[0].seq for c in split(retry)] == [100, 300]


def test_a_capture_begun_mid_connection():
    packets = [pkt(S, C, ACK, 5, 7, 100, time=1.0), pkt(C, S, ACK, 7, 105, time=1.1),
               pkt(S, C, SYN | ACK, 900, 101, time=5.0), pkt(C, S, ACK, 101, 901, time=5.1)]
    first, second = split(packets)
    assert (first.endpoints, first.syn_seen, first.bytes) == ((S, C), False, [100, 0])
    assert first.summary().endswith("…  (open)")
    # a SYN-ACK first: the side it answers opened the connection
    assert (second.endpoints, second.syn_seen, second.isn) == ((C, S), False, [None, 900])


def test_interleaved_connections_are_numbered_by_first_packet():
    other = (A4, 40001)
    packets = [pkt(other, S, SYN, 1, time=0.0), pkt(C, S, SYN, 2, time=0.1),
               pkt(S, other, SYN | ACK, 3, 2, time=0.2), pkt(S, C, SYN | ACK, 4, 3, time=0.3)]
    conns = split(packets)
    assert [(c.number, c.endpoints[0], len(c.packets)) for c in conns] == [
        (1, other, 2), (2, C, 2)]


def test_select_by_port_and_number():
    v6 = [pkt(("fd00::1", 5555), ("fd00::2", 443), SYN, 1, time=0.5)]
    conns = split(handshake_and_close(t=0.0) + handshake_and_close(500, 600, t=1.0) + v6)
    assert select(conns, port=443).number == 3
    assert select(conns, port=80, number=2).number == 2
    assert select(conns, number=1) is conns[0]
    assert select(conns[2:]) is conns[2]
    with pytest.raises(ValueError, match=r"^no connection uses port 22; the ports seen are "
                                         r"80, 443, 5555, 40000$"):
        select(conns, port=22)
    with pytest.raises(ValueError) as info:
        select(conns, port=80)
    lines = str(info.value).splitlines()
    assert lines[0] == "2 connections on port 80; choose one by its number:"
    assert [line.split()[0] for line in lines[1:]] == ["1", "2"]
    with pytest.raises(ValueError, match=r"^3 connections in the capture; choose one"):
        select(conns)
    with pytest.raises(ValueError, match=r"^no connection number 3 on port 80; the choices are "
                                         r"1, 2:\n"):
        select(conns, port=80, number=3)
    assert "[fd00::1]:5555 → [fd00::2]:443" in conns[2].summary()
    with pytest.raises(ValueError, match="^the capture holds no TCP connection$"):
        select([])
