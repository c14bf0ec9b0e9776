"""An idle connection holds no buffers: they are made with the first data and dropped when
it is all taken (acknowledged, read), so that 100,000 idle connections stay small."""

import sys

from tcp_helpers import pump

from usertcp.stack import Stack
from usertcp.tcp import TcpConfig
from usertcp.tcp.reassembly import Reassembly
from usertcp.tcp.recvqueue import RecvQueue


def established(**config):
    cfg = TcpConfig(isn_secret=b"idle", **config)
    a, b = Stack("10.0.0.1", config=cfg), Stack("10.0.0.2", config=cfg)
    b.listen(80)
    cid = a.connect("10.0.0.2", 80, 0.0)
    pump(a, b, 0.0)
    while a.next_event() is not None:
        pass
    while b.next_event() is not None:
        pass
    [bid] = b._by_id
    return a, b, a._by_id[cid], b._by_id[bid]


def assert_idle(conn) -> None:
    assert conn.sndbuf == b"" and type(conn.sndbuf) is bytes
    assert conn.rcvbuf._chunks is None and len(conn.rcvbuf) == 0
    assert conn.ooo.blocks == () and not conn.ooo
    assert conn.sack_recent == ()
    assert conn.ka_params is None


def test_a_fresh_connection_has_no_buffers():
    _, _, ca, cb = established()
    assert ca.sack_ok and ca.ts_ok  # the default options: SACK and timestamps
    assert_idle(ca)
    assert_idle(cb)


def test_buffers_come_with_data_and_go_when_it_is_taken():
    a, b, ca, cb = established()
    assert a.send(ca.id, b"x" * 5000, 1.0) == 5000
    assert type(ca.sndbuf) is bytearray and len(ca.sndbuf) == 5000
    pump(a, b, 1.0)
    b.handle_timers(1.1)  # the delayed ACK of the last segment
    pump(a, b, 1.1)
    assert cb.rcvbuf._chunks is not None and len(cb.rcvbuf) == 5000
    assert ca.sndbuf == b""  # all acknowledged: the bytearray is gone
    assert b.recv(cb.id) == b"x" * 5000
    assert_idle(ca)
    assert_idle(cb)
    # And again: the buffers are made anew.
    assert a.send(ca.id, b"y" * 10, 2.0) == 10
    pump(a, b, 2.0)
    assert b.recv(cb.id, 4) == b"yyyy" and b.recv(cb.id) == b"yyyyyy"
    assert cb.rcvbuf._chunks is None


def test_the_recv_queue_and_reassembly_start_empty_and_cheap():
    queue = RecvQueue()
    assert queue.take() == b"" and queue.take(10) == b"" and not queue
    queue.append(memoryview(b"abc"))
    queue.append(b"")
    assert len(queue) == 3 and queue.take(2) == b"ab" and queue.take() == b"c"
    assert queue._chunks is None
    ooo = Reassembly()
    ooo.add(10, b"bcd", 9)
    assert ooo.pop_ready(10) == [b"bcd"] and ooo.blocks == ()


def test_keepalive_parameters_come_from_the_config_until_set():
    a, _, ca, _ = established(keepalive=True, keepalive_idle=30.0, keepalive_interval=5.0,
                              keepalive_probes=2)
    assert ca.ka_params is None and ca._ka_params() == (30.0, 5.0, 2)
    a.set_keepalive(ca.id, True, interval=7.0, now=1.0)
    assert ca.ka_params == (30.0, 7.0, 2)
    assert ca.keepalive_at == 31.0


def test_an_idle_connection_is_small():
    """The engine's share of an idle ESTABLISHED connection (SACK and timestamps on): the
    objects only it holds. bench_scale.py measures the process's RSS."""
    _, b, _, cb = established()
    seen = {id(b), id(b.config), *(id(x) for x in b._listeners.values())}

    def size(obj) -> int:
        if id(obj) in seen or isinstance(obj, (type, str, bool, type(None))):
            return 0
        if isinstance(obj, int) and -5 <= obj <= 256:
            return 0
        seen.add(id(obj))
        total = sys.getsizeof(obj)
        if isinstance(obj, (tuple, list)):
            return total + sum(size(x) for x in obj)
        for cls in type(obj).__mro__:
            for name in getattr(cls, "__slots__", ()):
                value = getattr(obj, name, None)
                if not hasattr(type(value), "_member_map_"):  # enum members are shared
                    total += size(value)
        return total

    total = size(cb)
    assert total < 2800, total  # 3608 bytes with an empty deque, list and bytearray each
