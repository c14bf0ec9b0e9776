import struct

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.utils import rdpcap

from usertcp.phy import FaultInjector, PcapFile, PcapWriter, QueueDevice, read_pcap


def sample_packets() -> list[bytes]:
    return [
        bytes(IP(src="10.7.0.1", dst="10.7.0.2") / TCP(sport=1234, dport=80, flags="S")),
        bytes(IP(src="10.7.0.2", dst="10.7.0.1") / TCP(sport=80, dport=1234, flags="SA")),
        bytes(IP(src="10.7.0.1", dst="10.7.0.2") / UDP(sport=5, dport=6) / (b"x" * 1000)),
        bytes(IP(src="10.7.0.1", dst="10.7.0.2") / ICMP() / b"ping"),
    ]


def test_pcap_file_round_trip_with_scapy_and_our_reader(tmp_path):
    path = tmp_path / "f.pcap"
    pkts = sample_packets()
    with PcapFile(path) as f:
        for i, p in enumerate(pkts):
            f.write(p, ts=1_700_000_000 + i + 0.123456)
    header = path.read_bytes()[:24]
    assert struct.unpack("<IHHiIII", header)[0] == 0xA1B2C3D4
    assert struct.unpack("<IHHiIII", header)[6] == 101  # LINKTYPE_RAW

    captured = rdpcap(str(path))
    assert [bytes(p) for p in captured] == pkts
    assert all(p.haslayer(IP) for p in captured)
    assert float(captured[0].time) == pytest.approx(1_700_000_000.123456, abs=1e-6)

    records = read_pcap(path)
    assert [p for _, p in records] == pkts
    expected = [1_700_000_000 + i + 0.123456 for i in range(4)]
    assert [ts for ts, _ in records] == pytest.approx(expected, abs=1e-6)


def test_writer_records_both_directions_and_passes_through(tmp_path):
    path = tmp_path / "w.pcap"
    inner = QueueDevice()
    clock = iter(range(100, 200)).__next__
    dev = PcapWriter(inner, path, clock=lambda: float(clock()))
    pkts = sample_packets()
    dev.send_batch(pkts[:1])
    inner.inject(pkts[1:3])
    assert dev.receive_batch() == pkts[1:3]
    dev.send_batch(pkts[3:])
    assert dev.receive_batch() == []
    assert inner.take_sent() == [pkts[0], pkts[3]]
    assert dev.mtu == inner.mtu and dev.fileno() is None and dev.next_deadline() is None
    dev.close()
    assert inner.closed

    assert [bytes(p) for p in rdpcap(str(path))] == pkts
    assert [ts for ts, _ in read_pcap(path)] == [100.0, 101.0, 101.0, 102.0]


def test_writer_around_fault_injector_sees_what_the_stack_sent(tmp_path):
    path = tmp_path / "f.pcap"
    inner = QueueDevice()
    dev = PcapWriter(FaultInjector(inner, seed=1, loss=1.0), path)
    dev.send_batch(sample_packets())
    dev.close()
    assert inner.take_sent() == []
    assert [p for _, p in read_pcap(path)] == sample_packets()


def test_oversized_packets_are_truncated_to_snaplen(tmp_path):
    path = tmp_path / "big.pcap"
    big = b"\x45" + bytes(300_000)
    with PcapFile(path) as f:
        f.write(big, ts=1.0)
    data = path.read_bytes()
    incl, orig = struct.unpack_from("<II", data, 24 + 8)
    assert (incl, orig) == (262144, len(big))
    assert read_pcap(path)[0][1] == big[:262144]


def test_read_pcap_rejects_other_files(tmp_path):
    path = tmp_path / "no.pcap"
    path.write_bytes(b"\0" * 40)
    with pytest.raises(ValueError):
        read_pcap(path)


def test_one_file_carries_both_families(tmp_path):
    """LINKTYPE_RAW: each record's first nibble says its version; scapy reads both."""
    from scapy.layers.inet6 import IPv6

    from usertcp.wire import ACK, addr_to_int, build_segment

    v4 = build_segment(addr_to_int("10.7.0.2"), addr_to_int("10.7.0.1"), 7, 40000, 1, 2, ACK,
                       100, b"", b"four")
    v6 = build_segment(addr_to_int("fd00:7::2"), addr_to_int("fd00:7::1"), 7, 40000, 1, 2, ACK,
                       100, b"", b"six")
    path = tmp_path / "both.pcap"
    with PcapFile(path) as f:
        f.write(v4, ts=1.0)
        f.write(v6, ts=2.0)
    first, second = rdpcap(str(path))
    assert first.haslayer(IP) and bytes(first[TCP].payload) == b"four"
    assert second.haslayer(IPv6) and second[IPv6].src == "fd00:7::2"
    assert bytes(second[TCP].payload) == b"six" and second[TCP].chksum is not None
    assert [p for _, p in read_pcap(path)] == [v4, v6]
