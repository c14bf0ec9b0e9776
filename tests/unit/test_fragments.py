"""usertcp.fragments.Reassembler: scapy makes the fragments, the reassembled bytes must equal the
original packet's; overlaps, bad lengths, caps and timeouts by hand; permutations by hypothesis."""

from __future__ import annotations

import functools

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP, IPOption_Router_Alert, fragment
from scapy.layers.inet6 import (IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop,
                                fragment6)
from scapy.packet import Raw

from usertcp.fragments import PIECE_OVERHEAD, Reassembler
from usertcp.wire.errors import DropReason, MalformedPacket

SRC, DST = "10.7.0.1", "10.7.0.2"
SRC6, DST6 = "fd00:7::1", "fd00:7::2"


def v4_datagram(size, *, ident=4242, options=(), proto_layer=None):
    layer = TCP(sport=1234, dport=80) if proto_layer is None else proto_layer
    pkt = IP(src=SRC, dst=DST, id=ident, options=list(options)) / layer / Raw(bytes(
        (i * 7) & 255 for i in range(size)))
    return IP(bytes(pkt))


def v4_fragments(original, fragsize):
    return [bytes(f) for f in fragment(original, fragsize)]


def v4_piece(original, offset, data, more=True):
    """A hand-made fragment of `original` carrying `data` at byte `offset`."""
    ip = original.copy()
    ip.remove_payload()
    ip.flags, ip.frag, ip.len, ip.chksum = ("MF" if more else 0), offset // 8, None, None
    return bytes(ip / Raw(data))


def v6_datagram(size, *, ident=99, unfragmentable=(), fragmentable=()):
    """(original without a Fragment header, the same with one) for scapy's fragment6."""
    payload = TCP(sport=1234, dport=80) / Raw(bytes((i * 13) & 255 for i in range(size)))
    pre, post = IPv6(src=SRC6, dst=DST6), payload
    for layer in unfragmentable:
        pre = pre / layer
    for layer in reversed(fragmentable):
        post = layer / post
    original = IPv6(bytes(pre / post))
    with_fragment = IPv6(bytes(pre / IPv6ExtHdrFragment(id=ident) / post))
    return original, with_fragment


def v6_fragments(with_fragment, fragsize):
    return [bytes(f) for f in fragment6(with_fragment, fragsize)]


def frag_offset_of(packet: bytes) -> int:
    """Offset of the Fragment header in a scapy-made fragment (after HbH/DestOpt/Routing)."""
    nxt, off = packet[6], 40
    while nxt != 44:
        nxt, off = packet[off], off + (packet[off + 1] + 1) * 8
    return off


def add6(r, packet, now=0.0):
    off = frag_offset_of(packet)
    return r.add_v6(packet, off + 8, off, now)


def feed(r, packets, now=0.0, *, v6=False):
    out = [add6(r, p, now) if v6 else r.add_v4(p, now) for p in packets]
    return [o for o in out if o is not None]


def reason(excinfo):
    return excinfo.value.reason


# -- IPv4 ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("order", ["in", "reversed", "middle-first"])
def test_v4_reassembles_to_the_original_bytes(order):
    original = v4_datagram(3000)
    frags = v4_fragments(original, 512)
    if order == "reversed":
        frags.reverse()
    elif order == "middle-first":
        frags = frags[2:] + frags[:2]
    r = Reassembler()
    results = feed(r, frags)
    assert results == [bytes(original)]
    assert r.counters["reassembled"] == 1
    assert r.bytes_held == 0 and len(r) == 0 and r.next_deadline() is None


def test_v4_keeps_the_first_fragments_options_and_fixes_total_and_checksum():
    original = v4_datagram(700, options=[IPOption_Router_Alert()])
    frags = v4_fragments(original, 256)
    # Later fragments without the options (as RFC 791 allows for options not copied).
    bare = IP(src=SRC, dst=DST, id=original.id, proto=original.proto)
    rest = [bytes(bare.copy() / Raw(IP(f).load)) for f in frags[1:]]
    for f, g in zip(frags[1:], rest):
        ip = IP(g)
        ip.flags, ip.frag = IP(f).flags, IP(f).frag
        ip.len = ip.chksum = None
        rest[rest.index(g)] = bytes(ip)
    r = Reassembler()
    out = feed(r, rest + frags[:1])
    assert out == [bytes(original)]
    assert IP(out[0]).options == original.options
    assert IP(out[0]).flags == 0 and IP(out[0]).frag == 0


def test_v4_a_packet_that_is_not_a_fragment_comes_back_unchanged():
    original = bytes(v4_datagram(50)) + b"\0\0\0\0"  # link padding is cut off
    r = Reassembler()
    assert r.add_v4(original, 0.0) == original[:-4]
    assert len(r) == 0


def test_v4_keys_keep_datagrams_apart():
    a = v4_datagram(600, ident=1)
    b = v4_datagram(600, ident=2)
    c = v4_datagram(600, ident=1, proto_layer=UDP(sport=5, dport=6))  # same id, other protocol
    fa, fb, fc = (v4_fragments(x, 256) for x in (a, b, c))
    interleaved = [f for trio in zip(fa, fb, fc) for f in trio]
    r = Reassembler()
    assert sorted(feed(r, interleaved)) == sorted([bytes(a), bytes(b), bytes(c)])
    assert r.counters["reassembled"] == 3


def test_v4_memoryview_input():
    original = v4_datagram(1000)
    r = Reassembler()
    assert feed(r, [memoryview(f) for f in v4_fragments(original, 400)]) == [bytes(original)]


# -- IPv6 ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("unfragmentable,fragmentable", [
    ((), ()),
    ((IPv6ExtHdrHopByHop(),), ()),
    ((IPv6ExtHdrHopByHop(), IPv6ExtHdrDestOpt()), (IPv6ExtHdrDestOpt(),)),
])
def test_v6_reassembles_to_the_original_bytes(unfragmentable, fragmentable):
    original, with_fragment = v6_datagram(2500, unfragmentable=unfragmentable,
                                          fragmentable=fragmentable)
    frags = v6_fragments(with_fragment, 600)
    assert len(frags) > 3
    r = Reassembler()
    assert feed(r, frags[::-1], v6=True) == [bytes(original)]
    assert r.counters["reassembled"] == 1 and r.bytes_held == 0


def test_v6_atomic_fragment_comes_back_at_once_without_its_fragment_header():
    original, with_fragment = v6_datagram(100, unfragmentable=(IPv6ExtHdrHopByHop(),))
    r = Reassembler()
    assert add6(r, bytes(with_fragment)) == bytes(original)
    assert len(r) == 0


def test_v6_and_v4_never_share_a_datagram():
    a = v4_datagram(600, ident=7)
    _, b6 = v6_datagram(600, ident=7)
    r = Reassembler()
    out = feed(r, v4_fragments(a, 256)[:-1])
    out += feed(r, v6_fragments(b6, 300)[:-1], v6=True)
    assert out == [] and len(r) == 2


@pytest.mark.parametrize("frag_offset,header_end", [(39, 48), (40, 47), (48, 56), (40, 2000)])
def test_v6_fragment_header_not_where_the_caller_said(frag_offset, header_end):
    _, with_fragment = v6_datagram(600)
    packet = v6_fragments(with_fragment, 300)[0]
    with pytest.raises(MalformedPacket) as e:
        Reassembler().add_v6(packet, header_end, frag_offset, 0.0)
    assert reason(e) == DropReason.FRAGMENT_BAD_HEADER


# -- duplicates and overlaps (RFC 5722) -------------------------------------------------------------

def test_identical_duplicate_is_ignored_not_an_overlap():
    original = v4_datagram(1500)
    frags = v4_fragments(original, 512)
    r = Reassembler()
    assert feed(r, [frags[0], frags[1], frags[1], frags[0], frags[2]]) == [bytes(original)]
    assert r.counters["duplicate"] == 2 and r.counters["overlap_dropped"] == 0


def test_same_range_other_bytes_is_an_overlap():
    original = v4_datagram(1500)
    frags = v4_fragments(original, 512)
    changed = bytearray(frags[1])
    changed[-1] ^= 1  # (the header checksum is the caller's to check, not the reassembler's)
    changed = bytes(changed)
    r = Reassembler()
    feed(r, frags[:2])
    with pytest.raises(MalformedPacket) as e:
        r.add_v4(changed, 0.0)
    assert reason(e) == DropReason.FRAGMENT_OVERLAP


@pytest.mark.parametrize("offset,length", [(0, 8), (8, 512), (504, 16), (1000, 24), (0, 1024)])
def test_overlap_drops_the_datagram_and_later_fragments_until_timeout(offset, length):
    original = v4_datagram(1500)
    frags = v4_fragments(original, 512)  # 0..512, 512..1024, 1024..1520 (TCP header 20)
    payload = bytes(original)[20:]
    r = Reassembler(timeout=30.0)
    feed(r, frags[:2], now=1.0)
    held = r.bytes_held
    assert held > 0
    with pytest.raises(MalformedPacket) as e:
        r.add_v4(v4_piece(original, offset, payload[offset:offset + length]), 2.0)
    assert reason(e) == DropReason.FRAGMENT_OVERLAP
    assert r.counters["overlap_dropped"] == 1 and r.bytes_held == 0
    # The rest of it, and even a fresh copy of every fragment, is ignored until the timeout...
    assert feed(r, frags, now=30.9) == []
    assert r.counters["ignored"] == 3
    assert r.next_deadline() == 31.0
    # ...after which the datagram may come again.
    assert feed(r, frags, now=31.0) == [bytes(original)]
    assert r.counters["timed_out"] == 0  # the dropped entry expiring is not a reassembly timeout


def test_overlap_detected_when_the_overlapping_fragment_came_first():
    _, with_fragment = v6_datagram(1200)
    frags = v6_fragments(with_fragment, 400)
    r = Reassembler()
    add6(r, frags[1])
    # A fragment spanning the first two, as a second fragmentation would cut it.
    pieces = v6_fragments(with_fragment, 800)
    with pytest.raises(MalformedPacket) as e:
        add6(r, pieces[0])
    assert reason(e) == DropReason.FRAGMENT_OVERLAP
    assert feed(r, frags, v6=True) == []


# -- malformed fragments -----------------------------------------------------------------------------

def test_non_last_fragment_not_a_multiple_of_8_bytes():
    original = v4_datagram(1000)
    payload = bytes(original)[20:]
    r = Reassembler()
    with pytest.raises(MalformedPacket) as e:
        r.add_v4(v4_piece(original, 0, payload[:100]), 0.0)
    assert reason(e) == DropReason.FRAGMENT_BAD_LENGTH
    # The last fragment may have any length.
    assert r.add_v4(v4_piece(original, 8, payload[8:13], more=False), 0.0) is None


def test_empty_fragment():
    original = v4_datagram(1000)
    r = Reassembler()
    for more in (True, False):
        with pytest.raises(MalformedPacket) as e:
            r.add_v4(v4_piece(original, 64, b"", more=more), 0.0)
        assert reason(e) == DropReason.FRAGMENT_BAD_LENGTH


def test_v4_too_big():
    original = v4_datagram(100)
    r = Reassembler()
    with pytest.raises(MalformedPacket) as e:
        r.add_v4(v4_piece(original, 65528, b"x" * 8), 0.0)  # 20 + 65528 + 8 > 65535
    assert reason(e) == DropReason.FRAGMENT_TOO_BIG
    assert r.add_v4(v4_piece(original, 65504, b"x" * 8), 0.0) is None  # ends at 65532: fits


def test_v4_too_big_because_of_the_first_fragments_options():
    # Later fragments have a bare 20-byte header and fit; the first brings 40 bytes of options.
    long_opts = IP(src=SRC, dst=DST, id=5, proto=6, options=[IPOption_Router_Alert()] * 10)
    bare = IP(src=SRC, dst=DST, id=5, proto=6)
    r = Reassembler()
    end = 65512  # 20 + 65512 fits, 60 + 65512 does not
    last = bare.copy()
    last.frag = 8
    assert r.add_v4(bytes(last / Raw(b"y" * (end - 64))), 0.0) is None
    first = long_opts.copy()
    first.flags = "MF"
    with pytest.raises(MalformedPacket) as e:
        r.add_v4(bytes(first / Raw(b"z" * 64)), 0.0)
    assert reason(e) == DropReason.FRAGMENT_TOO_BIG
    assert r.counters["too_big_dropped"] == 1 and r.bytes_held == 0


def test_v6_too_big_and_bad_length():
    _, with_fragment = v6_datagram(1000)
    frag = IPv6(v6_fragments(with_fragment, 500)[0])
    big = frag.copy()
    big[IPv6ExtHdrFragment].offset = 8190  # 65520 + data > 65535
    big.plen = None
    r = Reassembler()
    with pytest.raises(MalformedPacket) as e:
        add6(r, bytes(big))
    assert reason(e) == DropReason.FRAGMENT_TOO_BIG
    odd = frag.copy()
    odd[Raw].load = odd[Raw].load[:-3]
    odd.plen = None
    with pytest.raises(MalformedPacket) as e:
        add6(r, bytes(odd))
    assert reason(e) == DropReason.FRAGMENT_BAD_LENGTH


def test_end_contradicted():
    original = v4_datagram(1500)
    payload = bytes(original)[20:]
    frags = v4_fragments(original, 512)
    r = Reassembler()
    r.add_v4(frags[-1], 0.0)  # the last: the datagram ends at 1520
    with pytest.raises(MalformedPacket) as e:
        r.add_v4(v4_piece(original, 1024, payload[1024:1200], more=False), 0.0)
    assert reason(e) == DropReason.FRAGMENT_BAD_END
    assert r.counters["bad_end_dropped"] == 1
    assert feed(r, frags) == []  # the datagram is gone until its timeout

    r = Reassembler()
    r.add_v4(frags[-1], 0.0)
    with pytest.raises(MalformedPacket) as e:  # data past the end
        r.add_v4(v4_piece(original, 1520, b"x" * 8), 0.0)
    assert reason(e) == DropReason.FRAGMENT_BAD_END

    r = Reassembler()
    r.add_v4(frags[1], 0.0)  # 512..1024 with more
    with pytest.raises(MalformedPacket) as e:  # a last fragment ending before held data
        r.add_v4(v4_piece(original, 8, payload[8:24], more=False), 0.0)
    assert reason(e) == DropReason.FRAGMENT_BAD_END


@pytest.mark.parametrize("packet,expected", [
    (b"\x45" * 19, DropReason.TRUNCATED),
    (bytes(IP(src=SRC, dst=DST, flags="MF") / Raw(b"x" * 8))[:-1], DropReason.BAD_TOTAL_LENGTH),
    (b"\x65" + bytes(19), DropReason.NOT_IPV4),
    (b"\x44" + bytes(19), DropReason.BAD_IHL),
])
def test_v4_header_checks(packet, expected):
    with pytest.raises(MalformedPacket) as e:
        Reassembler().add_v4(packet, 0.0)
    assert reason(e) == expected


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120), st.integers(0, 130), st.integers(0, 130))
def test_random_bytes_raise_only_malformed_packet(data, header_end, frag_offset):
    r = Reassembler(max_bytes=2000, max_datagrams=4)
    for packet in (data, b"\x45" + data, b"\x46" + data, b"\x60" + data):
        for v6 in (False, True):
            try:
                if v6:
                    r.add_v6(packet, header_end, frag_offset, 0.0)
                else:
                    r.add_v4(packet, 0.0)
            except MalformedPacket:
                pass
    assert 0 <= r.bytes_held <= 2000


@functools.cache
def small_fragments():
    _, with_fragment = v6_datagram(300, unfragmentable=(IPv6ExtHdrHopByHop(),))
    return v4_fragments(v4_datagram(300), 64), v6_fragments(with_fragment, 120)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_fragments_raise_only_malformed_packet(data):
    frags, frags6 = small_fragments()
    r = Reassembler(max_bytes=3000, max_datagrams=3)
    for _ in range(data.draw(st.integers(1, 12))):
        v6 = data.draw(st.booleans())
        packet = bytearray(data.draw(st.sampled_from(frags6 if v6 else frags)))
        for _ in range(data.draw(st.integers(0, 3))):
            packet[data.draw(st.integers(0, len(packet) - 1))] = data.draw(st.integers(0, 255))
        try:
            if v6:
                r.add_v6(bytes(packet), 56, 48, 0.0)
            else:
                r.add_v4(bytes(packet), 0.0)
        except MalformedPacket:
            pass
        assert 0 <= r.bytes_held <= 3000


# -- bounds: time, memory, count ------------------------------------------------------------------

def test_timeout_from_the_first_fragment():
    original = v4_datagram(1500)
    frags = v4_fragments(original, 512)
    r = Reassembler(timeout=30.0)
    assert r.next_deadline() is None
    r.add_v4(frags[0], 10.0)
    r.add_v4(frags[1], 25.0)  # later fragments do not extend the deadline
    assert r.next_deadline() == 40.0
    assert r.expire(39.9) == 0
    assert r.expire(40.0) == 1
    assert r.counters["timed_out"] == 1 and r.bytes_held == 0 and r.next_deadline() is None
    assert r.add_v4(frags[2], 41.0) is None  # starts a new datagram


def test_adding_expires_what_is_due():
    a, b = v4_datagram(1500, ident=1), v4_datagram(1500, ident=2)
    r = Reassembler(timeout=30.0)
    r.add_v4(v4_fragments(a, 512)[0], 0.0)
    r.add_v4(v4_fragments(b, 512)[0], 30.0)
    assert len(r) == 1 and r.counters["timed_out"] == 1


def test_memory_cap_evicts_oldest_first():
    datagrams = [v4_datagram(1500, ident=i) for i in range(4)]
    firsts = [v4_fragments(d, 512)[0] for d in datagrams]
    cost = len(firsts[0]) - 20 + PIECE_OVERHEAD + 20  # data, overhead, the kept header
    r = Reassembler(max_bytes=3 * cost)
    for i, f in enumerate(firsts[:3]):
        r.add_v4(f, float(i))
    assert r.bytes_held == 3 * cost
    r.add_v4(firsts[3], 3.0)
    assert r.counters["over_memory"] == 1 and r.bytes_held == 3 * cost
    # Datagram 0 was evicted; 1, 2 and 3 are held, 1 the oldest.
    assert len(r) == 3 and r.next_deadline() == 1.0 + 30.0
    assert feed(r, v4_fragments(datagrams[0], 512)[1:], now=4.0) == []


def test_memory_cap_prefers_evicting_others_to_the_datagram_being_added_to():
    a, b = v4_datagram(1500, ident=1), v4_datagram(1500, ident=2)
    fa, fb = v4_fragments(a, 512), v4_fragments(b, 512)
    r = Reassembler(max_bytes=2000)  # a and b's first fragments fit, all of a and that do not
    feed(r, fa[:2], now=0.0)  # the oldest
    r.add_v4(fb[0], 1.0)
    assert r.add_v4(fa[2], 2.0) == bytes(a)  # b was evicted to make room for a's last piece
    assert r.counters["over_memory"] == 1 and len(r) == 0


def test_datagram_too_big_for_the_cap_alone():
    original = v4_datagram(3000)
    r = Reassembler(max_bytes=2000)
    assert feed(r, v4_fragments(original, 1024)) == []
    assert r.counters["over_memory"] >= 1 and r.bytes_held <= 2000


def test_max_datagrams_evicts_oldest():
    datagrams = [v4_datagram(600, ident=i) for i in range(3)]
    r = Reassembler(max_datagrams=2)
    for i, d in enumerate(datagrams):
        r.add_v4(v4_fragments(d, 256)[0], float(i))
    assert len(r) == 2 and r.counters["over_datagrams"] == 1
    assert r.next_deadline() == 31.0


def test_bytes_held_accounting():
    original = v4_datagram(1500)
    frags = v4_fragments(original, 512)
    r = Reassembler()
    r.add_v4(frags[1], 0.0)
    assert r.bytes_held == 512 + PIECE_OVERHEAD
    r.add_v4(frags[0], 0.0)
    assert r.bytes_held == 2 * (512 + PIECE_OVERHEAD) + 20


# -- properties ------------------------------------------------------------------------------------

def shuffled_with_duplicates(data, frags):
    order = data.draw(st.permutations(range(len(frags))))
    dups = data.draw(st.lists(st.tuples(st.integers(0, len(frags) - 1),
                                        st.integers(0, len(frags))), max_size=4))
    seq = [frags[i] for i in order]
    for which, where in dups:
        seq.insert(where, frags[which])
    return seq


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.integers(1, 4000), st.integers(8, 1500), st.booleans())
def test_any_order_with_duplicates_reassembles_the_original(data, size, fragsize, v6):
    if v6:
        original, with_fragment = v6_datagram(size, unfragmentable=(IPv6ExtHdrHopByHop(),))
        frags = v6_fragments(with_fragment, max(fragsize, 56 + 8 + 8))
    else:
        original = v4_datagram(size)
        frags = v4_fragments(original, fragsize)
    seq = shuffled_with_duplicates(data, frags)
    r = Reassembler()
    results = [(i, out) for i, p in enumerate(seq)
               if (out := (add6(r, p) if v6 else r.add_v4(p, 0.0))) is not None]
    assert results and all(out == bytes(original) for _, out in results)
    # The first result comes with the last missing piece (duplicates after it may start over).
    first = results[0][0]
    assert len({bytes(p) for p in seq[:first + 1]}) == len(frags)
    assert len({bytes(p) for p in seq[:first]}) < len(frags)
    # One fragment only: not a fragment (IPv4) or an atomic fragment (IPv6), passed through.
    assert r.counters["reassembled"] == (len(results) if len(frags) > 1 else 0)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.integers(100, 3000), st.integers(64, 600), st.booleans())
def test_an_overlap_anywhere_drops_the_datagram(data, size, fragsize, v6):
    if v6:
        original, with_fragment = v6_datagram(size)
        frags = v6_fragments(with_fragment, fragsize + 48)
        data_start = 48
    else:
        original = v4_datagram(size)
        frags = v4_fragments(original, fragsize)
        data_start = 20
    if len(frags) < 2:
        return
    payload = bytes(original)[40 if v6 else 20:]
    end = len(payload)
    order = data.draw(st.permutations(range(len(frags))))
    seq = [frags[i] for i in order]
    # The overlapping piece arrives after some fragment it overlaps and before the last one.
    at = data.draw(st.integers(1, len(seq) - 1))
    victim = seq[data.draw(st.integers(0, at - 1))]
    if v6:
        v_off = int.from_bytes(victim[42:44], "big") & 0xFFF8
        v_end = v_off + len(victim) - data_start
    else:
        v_off = (int.from_bytes(victim[6:8], "big") & 0x1FFF) * 8
        v_end = v_off + len(victim) - data_start
    units = end // 8
    a = data.draw(st.integers(0, min(v_end - 1, units * 8 - 8) // 8)) * 8
    # Up to a multiple of 8 inside the datagram (more fragments), or to its end (the last one).
    ends = list(range(max(a + 8, v_off + 8), units * 8 + 1, 8))
    b = data.draw(st.sampled_from(ends + [end]) if ends else st.just(end))
    last = b == end
    assume(a or not last)  # offset 0 and no more fragments would be a whole packet
    piece = bytearray(payload[a:b])
    if (a, b) == (v_off, v_end):
        piece[0] ^= 0xFF  # same range, other bytes: still an overlap
    if v6:
        ext = IPv6(bytes(with_fragment))
        ext.remove_payload()
        ext.plen = None
        overlap = bytes(ext / IPv6ExtHdrFragment(id=99, offset=a // 8, m=int(not last), nh=6)
                        / Raw(bytes(piece)))
    else:
        overlap = v4_piece(original, a, bytes(piece), more=not last)
    seq.insert(at, overlap)
    r = Reassembler()
    raised = []
    for p in seq:
        try:
            assert (add6(r, p) if v6 else r.add_v4(p, 0.0)) is None
        except MalformedPacket as exc:
            raised.append(exc.reason)
    assert raised == [DropReason.FRAGMENT_OVERLAP]
    assert r.counters["overlap_dropped"] == 1 and r.counters["reassembled"] == 0
    assert r.bytes_held == 0
