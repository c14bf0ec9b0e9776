import struct
from collections import Counter

import pytest

from usertcp.phy import Device, FaultInjector, FaultSpec, MemoryDevice, QueueDevice


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def packets(n: int) -> list[bytes]:
    # Distinct, recognisable packets: a version-4 first byte, then the index.
    return [b"\x45" + i.to_bytes(4, "big") + bytes(15) for i in range(n)]


def index(packet: bytes) -> int:
    return int.from_bytes(packet[1:5], "big")


def make(**faults):
    clock = FakeClock()
    inner = QueueDevice()
    return FaultInjector(inner, clock=clock, **faults), inner, clock


def send_through(n: int, **faults) -> tuple[list[bytes], FaultInjector]:
    dev, inner, clock = make(**faults)
    for p in packets(n):
        dev.send_batch([p])
    clock.now += 3600  # release anything held
    dev.send_batch([])
    return inner.take_sent(), dev


def test_is_a_device_and_passes_through_without_faults():
    dev, inner, _ = make(seed=1)
    assert isinstance(dev, Device)
    assert dev.mtu == inner.mtu and dev.fileno() is None
    dev.send_batch(packets(5))
    assert inner.take_sent() == packets(5)
    inner.inject(packets(3))
    assert dev.receive_batch() == packets(3)
    assert dev.next_deadline() is None
    keys = ["dropped", "duplicated", "reordered", "corrupted", "delayed"]
    assert dev.stats == dict.fromkeys(keys, 0)


def test_fileno_passes_through():
    a, b = MemoryDevice.pair()
    dev = FaultInjector(a, seed=0, loss=0.5)
    assert dev.fileno() == a.fileno()
    dev.close()
    b.close()
    assert a.fileno() is None


def test_same_seed_same_result_other_seed_other_result():
    faults = dict(loss=0.1, duplicate=0.1, reorder=0.2, corrupt=0.1, delay=0.01, jitter=0.01)
    out1, dev1 = send_through(500, seed=42, **faults)
    out2, dev2 = send_through(500, seed=42, **faults)
    out3, _ = send_through(500, seed=43, **faults)
    assert out1 == out2 and dev1.stats == dev2.stats
    assert out1 != out3


def test_directions_draw_independently_of_interleaving():
    faults = dict(seed=9, loss=0.3, reorder=0.3)
    alone, _, _ = make(**faults)
    mixed, mixed_inner, _ = make(**faults)
    for p in packets(200):
        alone.send_batch([p])
    for p in packets(200):
        mixed_inner.inject([p])
        mixed.receive_batch()
        mixed.send_batch([p])
    assert alone.inner.take_sent() == mixed_inner.take_sent()


def test_loss():
    out, dev = send_through(2000, seed=1, loss=0.25)
    assert dev.stats["dropped"] == 2000 - len(out)
    assert 400 < dev.stats["dropped"] < 600
    assert [index(p) for p in out] == sorted(index(p) for p in out)  # loss alone keeps order
    assert send_through(100, seed=1, loss=1.0)[0] == []


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def test_corruption_flips_exactly_one_bit_which_checksums_catch():
    # A header with a valid Internet checksum over all of it.
    header = bytearray(bytes.fromhex("45000014 00010000 40060000 0a090002 0a090001"))
    header[10:12] = checksum(bytes(header)).to_bytes(2, "big")
    assert checksum(bytes(header)) == 0
    out, dev = send_through(1, seed=0, corrupt=1.0)
    assert len(out) == 1
    dev, inner, _ = make(seed=5, corrupt=1.0)
    dev.send_batch([bytes(header)] * 300)
    sent = inner.take_sent()
    assert len(sent) == 300 and dev.stats["corrupted"] == 300
    for p in sent:
        diff = int.from_bytes(p, "big") ^ int.from_bytes(header, "big")
        assert bin(diff).count("1") == 1
        assert checksum(p) != 0
    assert len(set(sent)) > 100  # different bits each time


def test_duplicate():
    out, dev = send_through(10, seed=3, duplicate=1.0)
    assert out == [p for p in packets(10) for _ in range(2)]
    assert dev.stats["duplicated"] == 10
    out, dev = send_through(1000, seed=3, duplicate=0.2)
    assert len(out) == 1000 + dev.stats["duplicated"]
    assert 120 < dev.stats["duplicated"] < 280


@pytest.mark.parametrize("depth", [1, 3, 10])
def test_reorder_is_bounded_by_depth(depth):
    n = 3000
    dev, inner, clock = make(seed=depth, reorder=0.3, reorder_depth=depth)
    for p in packets(n):
        dev.send_batch([p])  # the clock stands still: only overtaking releases
    out = [index(p) for p in inner.take_sent()]
    held = n - len(out)
    assert 0 <= held < 20  # only the last few wait for overtakers
    for pos, i in enumerate(out):
        overtakers = sum(1 for j in out[:pos] if j > i)
        assert overtakers <= depth
    assert out != sorted(out)
    assert dev.stats["reordered"] > 0.25 * n
    assert dev.next_deadline() == (clock.now + 0.02 if held else None)  # idle-link timeout
    clock.now += 0.02
    dev.send_batch([])
    out += [index(p) for p in inner.take_sent()]
    assert sorted(out) == list(range(n))


def test_held_packet_on_an_idle_link_leaves_after_the_timeout():
    dev, inner, clock = make(seed=0, reorder=1.0, reorder_timeout=0.5)
    start = clock.now
    dev.send_batch(packets(1))
    assert inner.take_sent() == [] and dev.stats["reordered"] == 1
    assert dev.next_deadline() == start + 0.5
    clock.now = start + 0.4
    dev.receive_batch()
    assert inner.take_sent() == []
    clock.now = start + 0.5
    dev.receive_batch()  # either call releases due packets of both directions
    assert inner.take_sent() == packets(1)
    assert dev.next_deadline() is None


def test_reorder_depth_is_validated():
    with pytest.raises(ValueError):
        FaultSpec(reorder_depth=11)
    with pytest.raises(ValueError):
        FaultSpec(loss=1.5)
    with pytest.raises(ValueError):
        make(seed=0, direction="sideways")


def test_delay_releases_on_the_fake_clock_in_both_directions():
    dev, inner, clock = make(seed=0, delay=0.1)
    start = clock.now
    dev.send_batch(packets(2))
    inner.inject(packets(3))
    assert dev.receive_batch() == []
    assert inner.take_sent() == []
    assert dev.next_deadline() == pytest.approx(start + 0.1)
    clock.now = start + 0.05
    assert dev.receive_batch() == [] and inner.take_sent() == []
    clock.now = start + 0.1
    assert dev.receive_batch() == packets(3)
    assert inner.take_sent() == packets(2)  # released by the receive call too
    assert dev.next_deadline() is None
    assert dev.stats["delayed"] == 5


def test_jitter_spreads_delays_within_bounds():
    dev, inner, clock = make(seed=4, delay=0.05, jitter=0.02)
    start = clock.now
    dev.send_batch(packets(200))
    assert start + 0.03 <= dev.next_deadline() < start + 0.04
    clock.now = start + 0.03 - 1e-9
    dev.send_batch([])
    assert inner.take_sent() == []
    clock.now = start + 0.07
    dev.send_batch([])
    out = inner.take_sent()
    assert sorted(out) == sorted(packets(200)) and out != packets(200)


def test_direction_rx_only_leaves_tx_alone():
    dev, inner, _ = make(seed=0, loss=1.0, direction="rx")
    dev.send_batch(packets(5))
    assert inner.take_sent() == packets(5)
    inner.inject(packets(5))
    assert dev.receive_batch() == []
    assert dev.rx_stats["dropped"] == 5 and dev.tx_stats["dropped"] == 0


def test_per_direction_specs():
    dev, inner, _ = make(seed=0, rx=FaultSpec(duplicate=1.0), tx=FaultSpec(loss=1.0))
    dev.send_batch(packets(2))
    inner.inject(packets(2))
    assert inner.take_sent() == []
    assert dev.receive_batch() == [p for p in packets(2) for _ in range(2)]
    assert dev.stats["dropped"] == 2 and dev.stats["duplicated"] == 2


def test_duplicates_beyond_max_packets_wait_and_are_due_now():
    dev, inner, clock = make(seed=0, duplicate=1.0)
    inner.inject(packets(4))
    first = dev.receive_batch(max_packets=4)
    assert len(first) == 4
    assert dev.next_deadline() == clock.now
    assert first + dev.receive_batch(max_packets=4) == [p for p in packets(4) for _ in range(2)]
    assert dev.next_deadline() is None


def test_stats_add_up_under_mixed_faults():
    n = 1000
    out, dev = send_through(n, seed=11, loss=0.1, duplicate=0.1, reorder=0.1, corrupt=0.05)
    s = dev.stats
    assert len(out) == n - s["dropped"] + s["duplicated"]
    assert all(s[k] > 0 for k in ("dropped", "duplicated", "reordered", "corrupted"))
    counts = Counter(index(p) for p in out if p[0] == 0x45 and index(p) < n)
    assert max(counts.values()) <= 2
