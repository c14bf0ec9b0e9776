"""Header prediction from the raw header (wire.packet.predictable, Connection.predicted).

The fast path must only ever be a shortcut: it accepts exactly the packets it claims to,
returns the fields parse_packet would, and a whole lossy transfer run with it and without it
sends the same packets at the same times and ends in the same state.
"""

from __future__ import annotations

import heapq
import random
import struct
from dataclasses import dataclass, field

import pytest

import usertcp.stack as stack_module
from usertcp.stack import Stack
from usertcp.tcp import Connected, ConnectionAccepted, TcpConfig
from usertcp.tcp.connection import Connection
from usertcp.tcp.state import State
from usertcp.wire.errors import DropReason, MalformedPacket
from usertcp.wire.ipv4 import addr_to_int
from usertcp.wire.ipv6 import V6, build_ipv6
from usertcp.wire.packet import parse_packet, predictable
from usertcp.wire.tcp import ACK, FIN, PSH, RST, SYN, URG, Segment, build_options, build_segment

ADDRS = {4: ("10.0.0.1", "10.0.0.2"), 6: ("fd00::1", "fd00::2")}
MASK = 0xFFFFFFFF


# ---------------------------------------------------------------- packet helpers

def ones_sum(data: bytes) -> int:
    if len(data) & 1:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def checksum(data: bytes) -> int:
    return ~ones_sum(data) & 0xFFFF


def fix_tcp_checksum(packet: bytearray, ip_len: int) -> bytearray:
    """Recompute the TCP checksum after a test changed the TCP header or payload."""
    v6 = packet[0] >> 4 == 6
    packet[ip_len + 16:ip_len + 18] = b"\0\0"
    tcp = bytes(packet[ip_len:])
    if v6:
        pseudo = bytes(packet[8:40]) + struct.pack("!IxxxB", len(tcp), 6)
    else:
        pseudo = bytes(packet[12:20]) + struct.pack("!xBH", 6, len(tcp))
    packet[ip_len + 16:ip_len + 18] = checksum(pseudo + tcp).to_bytes(2, "big")
    return packet


def fix_ip_checksum(packet: bytearray) -> bytearray:
    ihl = (packet[0] & 15) * 4
    packet[10:12] = b"\0\0"
    packet[10:12] = checksum(bytes(packet[:ihl])).to_bytes(2, "big")
    return packet


def ipv4_around(tcp: bytes, src: int, dst: int, *, ip_options: bytes = b"", frag: int = 0x4000,
                proto: int = 6) -> bytes:
    """An IPv4 header of our own (options, fragment field, protocol) around a TCP segment."""
    ihl = 20 + len(ip_options)
    head = struct.pack("!BBHHHBBH", 0x40 | ihl // 4, 0, ihl + len(tcp), 7, frag, 64, proto, 0)
    head += src.to_bytes(4, "big") + dst.to_bytes(4, "big") + ip_options
    return bytes(fix_ip_checksum(bytearray(head))) + tcp


def addrs(family: int) -> tuple[int, int]:
    a, b = ADDRS[family]
    return addr_to_int(a), addr_to_int(b)


def packet_of(family: int, flags: int = ACK | PSH, options: bytes = b"", payload: bytes = b"x",
              seq: int = 0xFFFFFFF0, ack: int = 0x01020304, window: int = 0xFEDC) -> bytes:
    src, dst = addrs(family)
    return build_segment(src, dst, 40000, 80, seq, ack, flags, window, options, payload)


def fields_of(seg: Segment) -> tuple:
    return ((seg.src, seg.sport, seg.dst, seg.dport), seg.seq, seg.ack, seg.window,
            bytes(seg.payload), seg.ts_val, seg.ts_ecr)


def normalised(fields: tuple) -> tuple:
    key, seq, ack, window, payload, tsval, tsecr = fields
    return key, seq, ack, window, bytes(payload), tsval, tsecr


# ---------------------------------------------------------------- 1: what it accepts

@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("ts", [None, (0xFFFFFFFE, 123456)], ids=["no-ts", "ts"])
@pytest.mark.parametrize("size", [0, 1, 7, 100, 1439], ids=lambda n: f"len{n}")
@pytest.mark.parametrize("flags", [ACK, ACK | PSH], ids=["ack", "ack-psh"])
def test_predictable_gives_what_parse_packet_gives(family, ts, size, flags):
    payload = bytes((i * 37 + 11) & 0xFF for i in range(size))
    options = build_options(timestamp=ts) if ts else b""
    packet = packet_of(family, flags, options, payload)
    src, dst = addrs(family)
    want = ((src, 40000, dst, 80), 0xFFFFFFF0, 0x01020304, 0xFEDC, payload,
            ts[0] if ts else None, ts[1] if ts else None)
    seg = parse_packet(packet)
    assert fields_of(seg) == want
    for data in (packet, bytearray(packet), memoryview(packet)):
        for verify in (True, False):
            got = predictable(data, verify)
            assert got is not None
            assert normalised(got) == want
    if family == 6:
        assert src & V6 and predictable(packet)[0][0] == src  # V6-tagged, as parsed


def test_predictable_ignores_trailing_bytes_past_total_length():
    """Link padding after the IP datagram is not payload, as in parse_packet."""
    packet = packet_of(4, payload=b"abc") + b"\0" * 9
    assert normalised(predictable(packet)) == fields_of(parse_packet(packet))
    assert normalised(predictable(packet))[4] == b"abc"


# ---------------------------------------------------------------- 2: what it declines

def with_tcp(family: int, offset: int, value: bytes, base: bytes | None = None) -> bytes:
    ip_len = 40 if family == 6 else 20
    p = bytearray(base if base is not None else packet_of(family, payload=b"hello"))
    p[ip_len + offset:ip_len + offset + len(value)] = value
    return bytes(fix_tcp_checksum(p, ip_len))


def hop_by_hop() -> bytes:
    src, dst = addrs(6)
    tcp = packet_of(6, payload=b"hello")[40:]
    hbh = bytes((6, 0, 1, 4, 0, 0, 0, 0))  # next header TCP, a PadN option
    return build_ipv6(src, dst, 0, hbh + tcp)


def ts_not_aligned() -> bytes:
    ts = build_options(timestamp=(5, 6))[2:]  # TS, then the two NOPs after it
    return packet_of(4, options=ts + b"\x01\x01", payload=b"hello")


def ipv4_variant(**kw) -> bytes:
    src, dst = addrs(4)
    return ipv4_around(packet_of(4, payload=b"hello")[20:], src, dst, **kw)


def bad_ip_checksum() -> bytes:
    p = bytearray(packet_of(4, payload=b"hello"))
    p[10] ^= 0x40
    return bytes(p)


def doff8_short(family: int) -> bytes:
    """Data offset 8 on a segment of only 20 bytes, with no bytes after it in the buffer."""
    return with_tcp(family, 12, b"\x80", packet_of(family, payload=b""))


def doff8_padded(family: int) -> bytes:
    """Data offset 8 on a 20-byte segment; padding after it that reads as NOP NOP TS."""
    p = doff8_short(family)
    return p + build_options(timestamp=(1, 2))


# (name, packet, what parse_packet makes of it: a DropReason, or Segment when it parses)
DECLINED = [
    *[(f"{name}+ACK v{f}", packet_of(f, flag | ACK), Segment)
      for f in (4, 6) for name, flag in (("SYN", SYN), ("FIN", FIN), ("RST", RST), ("URG", URG))],
    *[(f"no ACK v{f}", packet_of(f, PSH), Segment) for f in (4, 6)],
    ("no flags", packet_of(4, 0), Segment),
    ("MSS option", packet_of(4, options=build_options(mss=1460)), Segment),
    ("SACK blocks", packet_of(4, options=build_options(sack_blocks=[(1, 2)])), Segment),
    ("TS and SACK blocks",
     packet_of(6, options=build_options(timestamp=(1, 2), sack_blocks=[(3, 4)])), Segment),
    ("window scale", packet_of(4, options=build_options(wscale=7)), Segment),
    ("SACK-permitted and TS (12 bytes, not NOP NOP TS)",
     packet_of(4, options=build_options(sack_permitted=True, timestamp=(1, 2))), Segment),
    ("TS not NOP-NOP-aligned", ts_not_aligned(), Segment),
    ("NOP NOP TS then 4 more NOPs", packet_of(6, options=build_options(timestamp=(1, 2))
                                              + b"\x01" * 4), Segment),
    ("IPv4 with IP options (IHL 6)", ipv4_variant(ip_options=b"\x01\x01\x01\x00"), Segment),
    ("more fragments", ipv4_variant(frag=0x2000), DropReason.FRAGMENT),
    ("fragment offset", ipv4_variant(frag=0x0001), DropReason.FRAGMENT),
    ("not TCP (UDP)", ipv4_variant(proto=17), None),
    ("bad IPv4 header checksum", bad_ip_checksum(), DropReason.BAD_IP_CHECKSUM),
    *[(f"total length past the buffer v{f}", packet_of(f, payload=b"hello")[:-1],
       DropReason.BAD_TOTAL_LENGTH if f == 4 else DropReason.BAD_PAYLOAD_LENGTH) for f in (4, 6)],
    *[(f"data offset 15 past total v{f}", with_tcp(f, 12, b"\xf0"), DropReason.BAD_DATA_OFFSET)
      for f in (4, 6)],
    *[(f"data offset 8 past total, padded buffer v{f}", doff8_padded(f),
       DropReason.BAD_DATA_OFFSET) for f in (4, 6)],
    *[(f"data offset 8 past total, nothing after v{f}", doff8_short(f),
       DropReason.BAD_DATA_OFFSET) for f in (4, 6)],
    ("IPv6 hop-by-hop header", hop_by_hop(), Segment),
    ("IPv6 not TCP (UDP)", build_ipv6(*addrs(6), 17, packet_of(6, payload=b"hello")[40:]), None),
    ("39 bytes", packet_of(4, payload=b"")[:39], DropReason.BAD_TOTAL_LENGTH),
    ("59 bytes IPv6", packet_of(6, payload=b"")[:59], DropReason.BAD_PAYLOAD_LENGTH),
    ("empty", b"", DropReason.TRUNCATED),
]


@pytest.mark.parametrize("name,packet,general", DECLINED, ids=[c[0] for c in DECLINED])
def test_predictable_declines(name, packet, general):
    assert predictable(packet) is None, name
    assert predictable(packet, False) is None, name
    # What the general path then does with it: the case is the one it is named for.
    if general is Segment:
        assert type(parse_packet(packet)) is Segment
    elif isinstance(general, DropReason):
        with pytest.raises(MalformedPacket) as info:
            parse_packet(packet)
        assert info.value.reason is general
    else:
        assert type(parse_packet(packet)) is not Segment


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("where", ["checksum field", "odd last byte"])
def test_bad_tcp_checksum_declined_only_when_verifying(family, where):
    good = packet_of(family, options=build_options(timestamp=(9, 8)), payload=b"hello")
    p = bytearray(good)
    p[-1 if where == "odd last byte" else (40 if family == 6 else 20) + 16] ^= 0x01
    bad = bytes(p)
    assert predictable(bad) is None
    assert predictable(bad, verify_checksum=True) is None
    with pytest.raises(MalformedPacket) as info:
        parse_packet(bad)
    assert info.value.reason is DropReason.BAD_TCP_CHECKSUM
    got = predictable(bad, verify_checksum=False)
    assert normalised(got) == fields_of(parse_packet(bad, verify_checksum=False))
    want_payload = b"hello" if where == "checksum field" else b"hell" + bytes([ord("o") ^ 1])
    assert normalised(got)[4:] == (want_payload, 9, 8)


# ---------------------------------------------------------------- 3: equivalence

LATENCY = 0.010
RATE = 20e6  # bytes per second each way: packets of a burst leave one after another
HOLD = 0.0015  # a held-back packet arrives this much later: the ones after it overtake it


class Link:
    """A seeded lossy link, both ways: drops, duplicates and holds packets back."""

    def __init__(self, seed: int, drop=0.05, duplicate=0.02, reorder=0.03):
        self.rng = random.Random(seed)
        self.drop, self.duplicate, self.reorder = drop, duplicate, reorder
        self.queue: list = []  # heap of (arrival, n, destination, packet)
        self.count = 0
        self.free_at: dict[int, float] = {}  # per destination: the wire is busy until

    def send(self, now: float, dst: Stack, packet: bytes) -> None:
        leave = max(now, self.free_at.get(id(dst), 0.0)) + len(packet) / RATE
        self.free_at[id(dst)] = leave
        r = self.rng.random()
        if r < self.drop:
            return
        arrive = leave + LATENCY + (HOLD if r < self.drop + self.reorder else 0.0)
        for _ in range(2 if self.rng.random() < self.duplicate else 1):
            self.count += 1
            heapq.heappush(self.queue, (arrive, self.count, dst, packet))

    def next_time(self) -> float | None:
        return self.queue[0][0] if self.queue else None

    def due(self, now: float):
        while self.queue and self.queue[0][0] <= now:
            yield heapq.heappop(self.queue)[2:]


@dataclass
class App:
    """One end's application: what it has queued in `out` goes out as send() takes it; it
    closes once all is sent and `expect_total` bytes came in."""

    stack: Stack
    out: bytes = b""
    sent: int = 0
    received: bytes = b""
    conn_id: int | None = None
    closed: bool = False
    done_queueing: bool = False
    expect_total: int = 0

    def read(self) -> None:
        self.received += self.stack.recv(self.conn_id)

    def flush(self, now: float) -> None:
        while self.sent < len(self.out):
            n = self.stack.send(self.conn_id, self.out[self.sent:], now)
            if not n:
                return
            self.sent += n

    def maybe_close(self, now: float) -> None:
        if (self.done_queueing and self.sent == len(self.out) and not self.closed
                and len(self.received) == self.expect_total):
            self.stack.close(self.conn_id, now)
            self.closed = True


@dataclass
class Run:
    trace: list = field(default_factory=list)  # (time, sender, packet bytes)
    events: list = field(default_factory=list)
    snapshots: list = field(default_factory=list)
    client_got: bytes = b""
    server_got: bytes = b""
    states: tuple = ()
    counters: tuple = ()
    drops: tuple = ()
    delivered_data: int = 0  # packets with payload handed to a stack
    in_order_data: int = 0  # of those, arriving in ESTABLISHED at RCV.NXT without SACK blocks
    raw_fast_data: int = 0  # of those, taken without parse_packet: the raw-header fast path
    predicted_true: int = 0


def payload_len(packet: bytes) -> int:
    if packet[0] >> 4 == 6:
        return int.from_bytes(packet[4:6], "big") - (packet[52] >> 4) * 4
    ihl = (packet[0] & 15) * 4
    return int.from_bytes(packet[2:4], "big") - ihl - (packet[ihl + 12] >> 4) * 4


def seq_of(packet: bytes) -> int:
    tcp = 40 if packet[0] >> 4 == 6 else (packet[0] & 15) * 4
    return int.from_bytes(packet[tcp + 4:tcp + 8], "big")


def only_connection(stack: Stack) -> Connection | None:
    return next(iter(stack._by_id.values()), None)


def transfer(family: int, sack: bool, timestamps: bool, seed: int, lossy: bool = True,
             read_interval: float = 0.0, receive_buffer: int = 256 * 1024, count=None) -> Run:
    """Requests answered one at a time (echo), then bulk both ways at once, then close.

    The applications read every `read_interval` seconds (a slow reader fills the window),
    or at every step when it is 0.
    `count` (a dict) counts parse_packet calls when given: packets it never saw took the
    fast path from the raw header."""
    rng = random.Random(seed)
    requests = [rng.randbytes(rng.randint(1, 2500)) for _ in range(10)]
    req_total = sum(map(len, requests))
    bulk_c = rng.randbytes(rng.randint(200_000, 300_000))
    bulk_s = rng.randbytes(rng.randint(200_000, 300_000))

    def config():
        return TcpConfig(sack=sack, timestamps=timestamps, isn_secret=b"prediction", msl=0.5,
                         receive_buffer=receive_buffer)

    caddr, saddr = ADDRS[family]
    cs, ss = Stack(caddr, config=config()), Stack(saddr, config=config())
    ss.listen(80)
    link = Link(seed + 1000) if lossy else Link(seed, drop=0.0, duplicate=0.0, reorder=0.0)
    run = Run()
    client = App(cs, expect_total=req_total + len(bulk_s))
    server = App(ss, expect_total=req_total + len(bulk_c))
    next_request = 0
    echoed = 0
    connected = False
    now = 0.0
    client.conn_id = cs.connect(saddr, 80, now)
    next_read = 0.0
    for _step in range(40_000):
        reading = now >= next_read
        if reading:
            next_read = now + read_interval
        for name, stack in (("client", cs), ("server", ss)):
            while (e := stack.next_event()) is not None:
                run.events.append((name, repr(e)))
                if type(e) is ConnectionAccepted:
                    server.conn_id = e.conn_id
                elif type(e) is Connected:
                    connected = True
        if connected:
            if reading:
                client.read()
            # The next request once the answer to the previous one is all in.
            while (next_request < len(requests)
                   and len(client.received) >= sum(map(len, requests[:next_request]))):
                client.out += requests[next_request]
                next_request += 1
            if (next_request == len(requests) and len(client.received) >= req_total
                    and not client.done_queueing):
                client.out += bulk_c
                client.done_queueing = True
            client.flush(now)
            client.maybe_close(now)
        if server.conn_id is not None:
            if reading:
                server.read()
            upto = min(len(server.received), req_total)
            if upto > echoed:
                server.out += server.received[echoed:upto]
                echoed = upto
            if echoed == req_total and not server.done_queueing:
                server.out += bulk_s
                server.done_queueing = True
            server.flush(now)
            server.maybe_close(now)
        run.snapshots.append((now, cs.connections(now), ss.connections(now)))
        for name, src, dst in (("client", cs, ss), ("server", ss, cs)):
            for packet in src.packets_to_send(now):
                packet = bytes(packet)
                run.trace.append((now, name, packet))
                link.send(now, dst, packet)
        unread = (len(client.received) < client.expect_total
                  or len(server.received) < server.expect_total)
        times = [t for t in (link.next_time(), cs.next_deadline(), ss.next_deadline(),
                             next_read if unread and read_interval else None)
                 if t is not None]
        if not times:
            break
        now = max(now, min(times))
        assert now < 300.0, "the transfer did not finish in 300 s of virtual time"
        for dst, packet in link.due(now):
            has_data = payload_len(packet) > 0
            if has_data:
                conn = only_connection(dst)
                run.in_order_data += (conn is not None and conn.state is State.ESTABLISHED
                                      and seq_of(packet) == conn.rcv_nxt
                                      and parse_packet(packet).sack_blocks is None)
            before = count["parse"] if count is not None else 0
            dst.receive(packet, now)
            if has_data:
                run.delivered_data += 1
                if count is not None and count["parse"] == before:
                    run.raw_fast_data += 1
        cs.handle_timers(now)
        ss.handle_timers(now)
    else:
        raise AssertionError("the simulation did not settle in 40000 steps")
    run.client_got, run.server_got = client.received, server.received
    assert run.client_got == b"".join(requests) + bulk_s
    assert run.server_got == b"".join(requests) + bulk_c
    run.states = (cs.state(client.conn_id), ss.state(server.conn_id))
    run.counters = (dict(cs.counters), dict(ss.counters))
    run.drops = (dict(cs.drops), dict(ss.drops))
    return run


def counted_run(monkeypatch, *args) -> Run:
    """The normal run, counting how often each part of the fast path was taken."""
    count = {"parse": 0, "predicted": 0}
    real_parse = stack_module.parse_packet
    real_predicted = Connection.predicted

    def counting_parse(*a, **kw):
        count["parse"] += 1
        return real_parse(*a, **kw)

    def counting_predicted(self, *a):
        taken = real_predicted(self, *a)
        count["predicted"] += taken
        return taken

    with monkeypatch.context() as m:
        m.setattr(stack_module, "parse_packet", counting_parse)
        m.setattr(Connection, "predicted", counting_predicted)
        run = transfer(*args, count=count)
    run.predicted_true = count["predicted"]
    return run


def general_run(monkeypatch, *args) -> Run:
    with monkeypatch.context() as m:
        m.setattr(stack_module, "predictable", lambda packet, verify_checksum=True: None)
        m.setattr(Connection, "predicted", lambda self, *a: False)
        return transfer(*args)


def assert_same(fast: Run, general: Run) -> None:
    assert len(fast.trace) == len(general.trace)
    for i, (f, g) in enumerate(zip(fast.trace, general.trace)):
        assert f == g, f"packet {i} differs: {f[:2]} vs {g[:2]}"
    assert fast.events == general.events
    for f, g in zip(fast.snapshots, general.snapshots):
        assert f == g, f"connection state differs at t={f[0]}"
    assert len(fast.snapshots) == len(general.snapshots)
    assert (fast.client_got, fast.server_got) == (general.client_got, general.server_got)
    assert fast.states == general.states
    assert fast.counters == general.counters
    assert fast.drops == general.drops


@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("sack,timestamps", [(True, True), (False, False), (True, False),
                                             (False, True)],
                         ids=["sack-ts", "plain", "sack", "ts"])
def test_fast_path_does_what_the_general_path_does(monkeypatch, family, sack, timestamps):
    for seed in (1, 2, 3):
        args = (family, sack, timestamps, seed)
        fast = counted_run(monkeypatch, *args)
        general = general_run(monkeypatch, *args)
        assert_same(fast, general)
        # A hard scenario: losses recovered, segments out of order, duplicate ACKs.
        for name in ("retransmits", "rx_out_of_order", "dup_acks"):
            assert sum(c.get(name, 0) for c in fast.counters) > 0, (name, fast.counters)
        assert fast.states == (State.CLOSED, State.CLOSED)
        # The fast path really taken, straight from the header: for most of the data that
        # came at RCV.NXT with no SACK blocks (the rest filled a hole, or acknowledged data
        # while its receiver was in loss recovery: the general path's).
        assert fast.in_order_data > 50
        assert fast.raw_fast_data > fast.in_order_data // 2, (
            fast.raw_fast_data, fast.in_order_data, fast.delivered_data)
        assert fast.predicted_true >= fast.raw_fast_data
        assert general.raw_fast_data == 0


@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("sack,timestamps", [(True, True), (False, False)],
                         ids=["sack-ts", "plain"])
def test_clean_link_takes_the_fast_path_for_nearly_all_data(monkeypatch, family, sack,
                                                            timestamps):
    args = (family, sack, timestamps, 7, False)
    fast = counted_run(monkeypatch, *args)
    assert_same(fast, general_run(monkeypatch, *args))
    for name in ("retransmits", "rx_out_of_order", "dup_acks"):
        assert not any(c.get(name) for c in fast.counters), (name, fast.counters)
    assert fast.in_order_data == fast.delivered_data > 300
    assert fast.raw_fast_data > 0.95 * fast.delivered_data, (fast.raw_fast_data,
                                                             fast.delivered_data)


@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("sack,timestamps", [(True, True), (False, False)],
                         ids=["sack-ts", "plain"])
def test_fast_path_equivalent_with_a_slow_reader(monkeypatch, family, sack, timestamps):
    """Applications that read now and then: segments meet a full or shrinking window."""
    for seed in (4, 5):
        args = (family, sack, timestamps, seed, True, 0.2, 16 * 1024)
        fast = counted_run(monkeypatch, *args)
        assert_same(fast, general_run(monkeypatch, *args))
        assert fast.raw_fast_data > 50
        # The window did close: the receiver advertised zero, the senders waited.
        assert any(parse_packet(p).window == 0 for _, _, p in fast.trace)


# ---------------------------------------------------------------- 4: malformed input

def established(family: int):
    """A client and a server through a real handshake; returns (client, server, c, s)."""
    caddr, saddr = ADDRS[family]
    config = TcpConfig(isn_secret=b"prediction")
    cs, ss = Stack(caddr, config=config), Stack(saddr, config=config)
    ss.listen(80)
    cid = cs.connect(saddr, 80, 0.0)
    for _ in range(5):
        for src, dst in ((cs, ss), (ss, cs)):
            for packet in src.packets_to_send(0.0):
                dst.receive(packet, 0.0)
    sid = next(e.conn_id for e in iter(ss.next_event, None) if type(e) is ConnectionAccepted)
    return cs, ss, cs._by_id[cid], ss._by_id[sid]


@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
def test_bad_checksum_to_established_connection_is_counted(monkeypatch, family):
    _, ss, c, s = established(family)
    assert s.state is State.ESTABLISHED and s.ts_ok
    rcv_nxt = s.rcv_nxt
    options = build_options(timestamp=(s.ts_recent + 1, c.ts_recent))

    def data(payload: bytes) -> bytes:
        return build_segment(c.local, c.remote, c.lport, c.rport, rcv_nxt, c.rcv_nxt, ACK | PSH,
                             1000, options, payload)

    bad = bytearray(data(b"hello"))
    bad[-1] ^= 0x01
    ss.receive(bytes(bad), 0.1)
    assert ss.drops == {DropReason.BAD_TCP_CHECKSUM.value: 1}
    assert DropReason.BAD_TCP_CHECKSUM.value == "bad-tcp-checksum"
    assert s.rcv_nxt == rcv_nxt
    assert ss.recv_pending(s.id) == 0
    assert ss.packets_to_send(0.1) == []

    parses = []
    real_parse = stack_module.parse_packet
    monkeypatch.setattr(stack_module, "parse_packet", lambda *a: parses.append(1) or real_parse(*a))
    ss.receive(data(b"hello"), 0.2)
    assert s.rcv_nxt == (rcv_nxt + 5) & MASK
    assert ss.recv(s.id) == b"hello"
    assert parses == []  # the good one took the fast path
    assert ss.drops == {DropReason.BAD_TCP_CHECKSUM.value: 1}


@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
def test_short_packet_with_data_offset_8_is_dropped_not_raised(family):
    """A 20-byte segment claiming 32 bytes of header, nothing after it: the stack drops and
    counts it (parse_packet names it bad-data-offset), it must not raise."""
    _, ss, _, s = established(family)
    rcv_nxt = s.rcv_nxt
    ss.receive(doff8_short(family), 0.1)
    assert ss.drops == {DropReason.BAD_DATA_OFFSET.value: 1}
    assert s.rcv_nxt == rcv_nxt
