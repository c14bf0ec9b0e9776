"""TIME-WAIT entries as packed ints (tcp/timewait.py): keys, the expiry FIFO, the cost."""

import sys

import pytest
from tcp_helpers import pump

from usertcp.stack import Stack
from usertcp.tcp import State, TcpConfig
from usertcp.tcp.seq import MASK
from usertcp.tcp.timewait import TimeWaitTable, pack_key, unpack_key
from usertcp.wire import ACK, FIN, RST, SYN, addr_to_int, build_options, build_segment
from usertcp.wire.packet import parse_packet

V6 = addr_to_int("fd00::1")
V6_PEER = addr_to_int("fd00:7::ffff:2")


@pytest.mark.parametrize("four", [
    (0x0A000002, 40000, 0x0A000001, 80),
    (0, 0, 0, 0),
    (0xFFFFFFFF, 65535, 0xFFFFFFFF, 65535),
    (V6_PEER, 1, V6, 65535),
    (addr_to_int("::"), 65535, addr_to_int("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"), 0),
])
def test_key_round_trip(four):
    assert unpack_key(pack_key(*four)) == four


def test_keys_of_the_families_differ_and_ipv4_fits_40_bytes():
    v4 = pack_key(0x0A000002, 40000, 0x0A000001, 80)
    assert sys.getsizeof(v4) == 40  # a tuple of four ints costs 72 bytes before its ints
    assert v4 < 1 << 96 <= pack_key(V6_PEER, 40000, V6, 80)
    assert pack_key(1, 2, 3, 4) != pack_key(3, 4, 1, 2)


class FakeConn:
    """What TimeWaitTable.add reads of a connection."""

    def __init__(self, conn_id, rport, snd_nxt=1000, rcv_nxt=2000, ts_ok=True):
        self.id = conn_id
        self.remote, self.rport = 0x0A000002, rport
        self.local, self.lport = 0x0A000001, 80
        self.snd_nxt, self.rcv_nxt = snd_nxt, rcv_nxt
        self.rcv_adv, self.rcv_wscale = (rcv_nxt + 65535 * 128) & MASK, 7
        self.ts_ok, self.ts_recent, self.ts_offset = ts_ok, 0xFFFFFFF0, 0x12345678


def table(msl=10.0):
    return TimeWaitTable(Stack("10.0.0.1", config=TcpConfig(msl=msl)))


def fin(conn: FakeConn, tsval: int):
    """The peer's FIN again (its sequence number: our RCV.NXT - 1), parsed."""
    packet = build_segment(conn.remote, conn.local, conn.rport, conn.lport,
                           (conn.rcv_nxt - 1) & MASK, conn.snd_nxt, FIN | ACK, 1000,
                           build_options(timestamp=(tsval, 0)))
    return parse_packet(packet)


def test_an_entry_keeps_every_number():
    t = table()
    t.add(FakeConn(7, 40000, snd_nxt=MASK, rcv_nxt=0), 1.25)
    tw = t.by_id(7)
    assert (tw.remote, tw.rport, tw.local, tw.lport) == (0x0A000002, 40000, 0x0A000001, 80)
    assert (tw.snd_nxt, tw.rcv_nxt, tw.window) == (MASK, 0, 65535)
    assert (tw.ts_ok, tw.ts_recent, tw.ts_offset) == (True, 0xFFFFFFF0, 0x12345678)
    assert tw.deadline == 21.25 and tw.id == 7 and tw.state is State.TIME_WAIT
    assert len(t) == 1 and t.get(tw.key).id == 7


def test_entries_expire_in_order_exactly_at_their_deadline():
    t = table()
    for i, now in enumerate((0.1, 0.2, 0.3)):
        t.add(FakeConn(i + 1, 40000 + i), now)
    assert t.next_deadline() == 20.1
    assert t.expire(20.0999) == []
    assert [tw.id for tw in t.expire(20.2)] == [1, 2]
    assert t.next_deadline() == 20.3
    assert [tw.id for tw in t.expire(99.0)] == [3]
    assert (len(t), t.next_deadline(), len(t.fifo), t.ids) == (0, None, 0, {})


def test_a_restart_leaves_a_stale_place_that_delays_nothing():
    t = table()
    a, b = FakeConn(1, 40000), FakeConn(2, 40001)
    t.add(a, 0.0)
    t.add(b, 1.0)
    t.segment(t.by_id(1), fin(a, 0xFFFFFFF5), 5.0)  # the FIN again at 5: A now ends at 25
    assert t.by_id(1).deadline == 25.0 and t.by_id(1).ts_recent == 0xFFFFFFF5
    assert t.host.counters["time_wait_fin_reacked"] == 1
    assert t.expire(20.0) == []  # A's first place is stale
    assert t.next_deadline() == 21.0
    assert [tw.id for tw in t.expire(21.0)] == [2]
    assert [tw.id for tw in t.expire(25.0)] == [1]
    assert len(t.fifo) == 0


def test_a_reused_four_tuple_in_time_wait_again_does_not_block_the_entries_behind():
    t = table()
    a = FakeConn(1, 40000)
    t.add(a, 0.0)
    t.add(FakeConn(2, 40001), 1.0)
    t.remove(t.by_id(1))  # reused by a new SYN at 2 ...
    a.id = 3
    t.add(a, 3.0)  # ... and that incarnation closed too: same key, a later deadline
    assert t.next_deadline() == 21.0
    assert [tw.id for tw in t.expire(21.0)] == [2]
    assert t.by_id(1) is None and t.by_id(3).deadline == 23.0
    assert [tw.id for tw in t.expire(23.0)] == [3]


def test_what_does_not_restart_changes_nothing():
    t = table()
    a = FakeConn(1, 40000)
    t.add(a, 0.0)
    before = dict(t.entries)
    rst = parse_packet(build_segment(a.remote, a.local, a.rport, a.lport, a.rcv_nxt, 0, RST, 0))
    t.segment(t.by_id(1), rst, 3.0)  # RFC 1337
    old = fin(a, 0x7FFFFFF0)  # PAWS: a TSval far behind TS.Recent
    t.segment(t.by_id(1), old, 4.0)
    assert t.entries == before and len(t.fifo) == 1
    assert t.host.counters["time_wait_rst_ignored"] == 1
    assert t.host.counters["paws_rejected"] == 1
    acks = [parse_packet(p) for p in t.host.packets_to_send(4.0)]
    assert [(s.flags, s.seq, s.ack, s.ts_ecr) for s in acks] == [
        (ACK, 1000, 2000, 0xFFFFFFF0)]  # the old FIN is answered, with TS.Recent echoed


def test_an_entry_costs_under_300_bytes():
    t = table()
    n = 20000
    for i in range(n):
        t.add(FakeConn(100_000 + i, 1024 + i % 60000, snd_nxt=i * 7919 & MASK), float(i))
    key, value = next(iter(t.entries.items()))
    assert sys.getsizeof(key) == 40 and sys.getsizeof(value) <= 64
    per = (sys.getsizeof(t.entries) + sys.getsizeof(t.ids) + sys.getsizeof(t.fifo)
           + sum(map(sys.getsizeof, t.entries)) + sum(map(sys.getsizeof, t.entries.values()))
           + sum(map(sys.getsizeof, t.ids))) / n
    assert per < 300, per


# ------------------------------------------------------------------ through the engine

def drain_events(stack: Stack) -> list:
    out = []
    while (e := stack.next_event()) is not None:
        out.append(e)
    return out


@pytest.mark.parametrize("addrs", [("10.0.0.1", "10.0.0.2"), ("fd00::1", "fd00::2")])
def test_engine_time_wait_lives_in_the_table(addrs):
    cfg = TcpConfig(msl=5.0, isn_secret=b"tw")
    a, b = Stack(addrs[0], config=cfg), Stack(addrs[1], config=cfg)
    b.listen(80)
    ids = [a.connect(addrs[1], 80, 0.0) for _ in range(3)]
    pump(a, b, 0.0)
    for cid in ids:
        a.close(cid, 1.0)
    pump(a, b, 1.0)
    for cid in list(b._by_id):
        b.close(cid, 1.5)
    pump(a, b, 1.5)
    assert a.time_wait_count() == 3 and a.connection_count() == 0
    assert not a._by_id and not a._conns
    # The heap holds ids, not the connections: those are freed now, not when the stale
    # entries come up.
    assert a._timers and all(type(cid) is int for _, cid in a._timers)
    assert [a.state(cid) for cid in ids] == [State.TIME_WAIT] * 3
    rows = [r for r in a.connections(2.0) if r["state"] == "TIME-WAIT"]
    assert sorted(r["conn_id"] for r in rows) == ids
    assert all(r["remote"] == (addrs[1], 80) and r["timers"] == {"time_wait": 9.5}
               for r in rows)
    drain_events(a)
    # The 4-tuple is taken while in TIME-WAIT: an explicit local port is refused.
    with pytest.raises(Exception, match="in use"):
        a.connect(addrs[1], 80, 2.0, local_port=rows[0]["local"][1])
    assert a.next_deadline() == 11.5
    a.handle_timers(11.5)
    closed = [e for e in drain_events(a) if getattr(e, "new", None) is State.CLOSED]
    assert sorted(e.conn_id for e in closed) == ids
    assert all(e.old is State.TIME_WAIT and e.cause == "2msl timeout" for e in closed)
    assert a.time_wait_count() == 0 and a.next_deadline() is None


def test_engine_syn_for_a_time_wait_entry_reuses_it_and_others_stay():
    cfg = TcpConfig(msl=5.0, isn_secret=b"tw", timestamps=False)
    a, b = Stack("10.0.0.1", config=cfg), Stack("10.0.0.2", config=cfg)
    a.listen(81)
    first = b.connect("10.0.0.1", 81, 0.0, local_port=50000)
    second = b.connect("10.0.0.1", 81, 0.0, local_port=50001)
    pump(a, b, 0.0)
    for cid in list(a._by_id):
        a.close(cid, 1.0)  # a (the listener's side) closes first and holds TIME-WAIT
    pump(a, b, 1.0)
    b.close(first, 1.5)
    b.close(second, 1.5)
    pump(a, b, 1.5)
    assert a.time_wait_count() == 2
    entry = next(iter(a._tw))
    syn = build_segment(entry.remote, entry.local, entry.rport, entry.lport,
                        (entry.rcv_nxt + 100_000) & MASK, 0, SYN, 65535, build_options(mss=1460))
    a.receive(syn, 2.0)
    assert a.counters["time_wait_reused"] == 1
    assert a.time_wait_count() == 1 and a.connection_count() == 1
    assert a.state(entry.id) is State.CLOSED
    [synack] = [parse_packet(p) for p in a.packets_to_send(2.0)]
    assert synack.flags == SYN | ACK and synack.ack == (entry.rcv_nxt + 100_001) & MASK
    a.handle_timers(11.5)  # the other entry ends on time; the reused one's place is stale
    assert a.time_wait_count() == 0
