import select

import pytest

from usertcp.phy import Device, InvalidMTU, MemoryDevice, QueueDevice


@pytest.fixture
def pair():
    a, b = MemoryDevice.pair(mtu=1400)
    yield a, b
    a.close()
    b.close()


def test_pair_is_a_device_with_real_fds(pair):
    a, b = pair
    assert isinstance(a, Device) and isinstance(b, Device)
    assert a.mtu == b.mtu == 1400
    assert a.fileno() >= 0 and b.fileno() >= 0 and a.fileno() != b.fileno()
    assert a.next_deadline() is None


def test_what_a_sends_b_receives_with_boundaries(pair):
    a, b = pair
    packets = [b"\x45" + bytes([i]) * i for i in range(1, 20)] + [b"x" * 1400]
    a.send_batch(packets)
    assert b.receive_batch(100) == packets
    assert a.receive_batch() == []  # nothing flows back


def test_both_directions(pair):
    a, b = pair
    a.send_batch([b"ab"])
    b.send_batch([b"ba"])
    assert b.receive_batch() == [b"ab"]
    assert a.receive_batch() == [b"ba"]


def test_receive_is_non_blocking_and_bounded(pair):
    a, b = pair
    assert b.receive_batch() == []
    a.send_batch([bytes([i]) for i in range(10)])
    assert b.receive_batch(max_packets=4) == [bytes([i]) for i in range(4)]
    assert b.receive_batch(max_packets=100) == [bytes([i]) for i in range(4, 10)]


def test_fd_becomes_readable(pair):
    a, b = pair
    assert select.select([b.fileno()], [], [], 0)[0] == []
    a.send_batch([b"p"])
    assert select.select([b.fileno()], [], [], 1.0)[0] == [b.fileno()]


def test_a_burst_of_a_thousand_full_size_packets_is_not_dropped(pair):
    a, b = pair
    packets = [i.to_bytes(4, "big") * 350 for i in range(1000)]
    a.send_batch(packets)
    assert a.tx_dropped == 0
    got = []
    for _ in range(100):
        got += b.receive_batch(64)
    assert got == packets


def test_send_to_a_closed_peer_is_dropped_and_counted(pair):
    a, b = pair
    b.close()
    a.send_batch([b"lost"])
    assert a.tx_dropped == 1
    assert b.receive_batch() == [] and b.fileno() is None


def test_invalid_mtu():
    with pytest.raises(InvalidMTU):
        MemoryDevice.pair(mtu=20)


def test_queue_device_pair():
    a, b = QueueDevice.pair()
    assert isinstance(a, Device) and a.fileno() is None
    a.send_batch([b"1", b"2"])
    assert b.receive_batch(1) == [b"1"]
    assert b.receive_batch() == [b"2"]
    assert b.receive_batch() == []


def test_queue_device_alone_collects_and_injects():
    d = QueueDevice()
    d.send_batch([b"out"])
    d.inject([b"in"])
    assert d.take_sent() == [b"out"] and d.sent == []
    assert d.receive_batch() == [b"in"]
