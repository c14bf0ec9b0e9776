"""The receive queue: what goes in comes out, in order, however it is read."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from usertcp.tcp.recvqueue import RecvQueue


@given(pieces=st.lists(st.binary(max_size=5000), max_size=20),
       reads=st.lists(st.integers(-1, 9000), max_size=20),
       as_view=st.booleans())
def test_reads_return_the_stream_in_order(pieces, reads, as_view):
    q = RecvQueue()
    stream = b"".join(pieces)
    for p in pieces:
        q.append(memoryview(bytes(p))[:] if as_view else bytearray(p))
    assert len(q) == len(stream) and bool(q) == bool(stream)
    got = bytearray()
    for n in reads:
        before = len(q)
        data = q.take(n)
        assert type(data) is bytes
        assert len(data) == (before if n < 0 or n >= before else n)
        got += data
        assert len(q) == before - len(data)
    got += q.take()
    assert bytes(got) == stream and len(q) == 0 and not q


def test_large_views_of_packets_are_kept_without_a_copy_small_ones_coalesced():
    packet = bytes(range(256)) * 40
    q = RecvQueue()
    q.append(memoryview(packet)[100:9000])  # a segment's payload: kept as the view
    for _ in range(100):
        q.append(memoryview(packet)[:1])  # tiny segments: copied into one shared tail
    assert len(q._chunks) == 2
    assert q.take() == packet[100:9000] + packet[:1] * 100


def test_views_of_mutable_buffers_are_copied():
    buf = bytearray(b"x" * 4096)
    q = RecvQueue()
    q.append(memoryview(buf))
    buf[:] = b"y" * 4096  # a device that reused its buffer must not change what was received
    assert q.take() == b"x" * 4096
