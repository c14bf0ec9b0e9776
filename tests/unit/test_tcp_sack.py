"""SACK (RFC 2018): negotiation, and the blocks we send for out-of-order data and for
duplicates (D-SACK, RFC 2883). What we do with the peer's blocks (the scoreboard, RACK-TLP,
PRR, undo) is in test_tcp_scoreboard.py, test_tcp_rack.py and test_tcp_recovery.py.
"""

import pytest
import tcp_helpers
from tcp_helpers import (  # noqa: F401 (family: a fixture)
    family,
    ACK,
    OUR_ISS,
    PEER_ISS,
    Peer,
    S,
    drain,
    events,
    expect,
    make_stack,
    open_active,
    open_passive,
)

from usertcp.wire import build_options

Y = OUR_ISS
X = PEER_ISS
D = Y + 1  # our first data byte
P = X + 1  # the peer's first data byte
MASK = 2**32 - 1

# Every ladder here runs over IPv4 and over IPv6 (tcp_helpers.family).
pytestmark = pytest.mark.usefixtures("family")


def d(n: int) -> int:
    """Our sequence number n bytes into the data."""
    return (D + n) & MASK


def p(n: int) -> int:
    return (P + n) & MASK


def conn(stack, cid):
    return stack._by_id[cid]


def info(stack, cid):
    [row] = [r for r in stack.connections() if r["conn_id"] == cid]
    return row


def sacked(stack, cid):
    """The scoreboard as offsets into our data."""
    return [((left - D) & MASK, (right - D) & MASK) for left, right in conn(stack, cid).sacked]


# ------------------------------------------------------------------ negotiation

@pytest.mark.parametrize("ours", [True, False])
@pytest.mark.parametrize("theirs", [True, False])
def test_negotiation_passive(isn, ours, theirs):
    stack = make_stack(sack=ours)
    stack.listen(80)
    peer = Peer(stack, iss=X)
    isn.set(Y)
    peer.syn(0.0, sack_permitted=theirs)
    # SACK-permitted in the SYN-ACK only when the SYN had it (RFC 2018 2).
    [synack] = expect(stack, 0.0, S("S.", seq=Y, ack=X + 1, sack_perm=ours and theirs))
    peer.took(synack)
    peer.send(ACK, 0.5)
    [cid] = [e.conn_id for e in events(stack) if type(e).__name__ == "ConnectionAccepted"]
    assert info(stack, cid)["sack"] is (ours and theirs)


@pytest.mark.parametrize("ours", [True, False])
@pytest.mark.parametrize("theirs", [True, False])
def test_negotiation_active(isn, ours, theirs):
    stack, _peer, cid = open_active(isn, sack=ours, sack_permitted=theirs)
    assert info(stack, cid)["sack"] is (ours and theirs)


def test_syn_options_in_linux_order(isn, family):
    """Our SYN with everything on: MSS, SACK-permitted + TS, NOP window scale (20 bytes);
    over IPv6 the MSS is 20 less (its header is 20 bytes longer)."""
    stack = make_stack(sack=True, timestamps=True)
    isn.set(Y)
    stack.connect(tcp_helpers.REMOTE, 80, 0.0, local_port=50000)
    [packet] = stack.packets_to_send(0.0)
    ip_len = 20 if family == 4 else 40
    options = bytes(packet[ip_len + 20:ip_len + 40])  # after the IP and TCP fixed headers
    assert len(packet) == ip_len + 40
    mss = 1460 if family == 4 else 1440
    assert options == build_options(mss=mss, wscale=3, sack_permitted=True, timestamp=(Y, 0))
    assert options[:8] == bytes((2, 4, mss >> 8, mss & 255, 4, 2, 8, 10))
    assert options[16:] == bytes((1, 3, 3, 3))


@pytest.mark.parametrize("both", ["both", "sack only", "ts only", "none"])
def test_negotiation_with_timestamps_matrix(isn, both):
    want_sack = both in ("both", "sack only")
    want_ts = both in ("both", "ts only")
    stack, _peer, cid = open_passive(isn, sack=True, timestamps=True, sack_permitted=want_sack,
                                    ts=1000 if want_ts else None)
    row = info(stack, cid)
    assert (row["sack"], row["timestamps"]) == (want_sack, want_ts)


# ------------------------------------------------------------------ blocks we send

@pytest.mark.parametrize("timestamps", [False, True])
def test_sack_blocks_for_out_of_order_data(isn, timestamps):
    """Each out-of-order arrival is ACKed at once; its block comes first, then the blocks
    of the arrivals before it; four fit, three beside a TSopt (RFC 2018 3, 4)."""
    stack, peer, cid = open_passive(isn, sack=True, timestamps=timestamps, sack_permitted=True,
                                    ts=1000 if timestamps else None)
    tso = timestamps  # TSopt on every segment when negotiated
    A, B, C, Dk, E, F = (p(1000), p(1100)), (p(1300), p(1400)), (p(1200), p(1400)), \
        (p(1600), p(1700)), (p(1800), p(1900)), (p(2000), p(2100))
    peer.send(ACK, 1.0, seq=p(1000), data=b"a" * 100)
    expect(stack, 1.0, S(".", ack=P, sack=[A], ts=tso))
    peer.send(ACK, 1.0, seq=p(1300), data=b"b" * 100)
    expect(stack, 1.0, S(".", ack=P, sack=[B, A]))
    peer.send(ACK, 1.0, seq=p(1200), data=b"c" * 100)  # joins B: the block grows
    expect(stack, 1.0, S(".", ack=P, sack=[C, A]))
    peer.send(ACK, 1.0, seq=p(1600), data=b"d" * 100)
    expect(stack, 1.0, S(".", ack=P, sack=[Dk, C, A]))
    peer.send(ACK, 1.0, seq=p(1800), data=b"e" * 100)
    expect(stack, 1.0, S(".", ack=P, sack=[E, Dk, C] if timestamps else [E, Dk, C, A]))
    peer.send(ACK, 1.0, seq=p(2000), data=b"f" * 100)
    expect(stack, 1.0, S(".", ack=P, sack=[F, E, Dk] if timestamps else [F, E, Dk, C]))
    # The hole before A is filled: A joins RCV.NXT; the rest stay, most recent first.
    peer.send(ACK, 1.25, seq=P, data=b"0" * 1000)
    expect(stack, 1.25, S(".", ack=p(1100), sack=[F, E, Dk] if timestamps else [F, E, Dk, C]))
    peer.send(ACK, 1.25, seq=p(1100), data=b"1" * 100)
    expect(stack, 1.25, S(".", ack=p(1400), sack=[F, E, Dk]))
    peer.send(ACK, 1.25, seq=p(1400), data=b"2" * 200)
    expect(stack, 1.25, S(".", ack=p(1700), sack=[F, E]))
    peer.send(ACK, 1.25, seq=p(1700), data=b"3" * 100)
    expect(stack, 1.25, S(".", ack=p(1900), sack=[F]))
    peer.send(ACK, 1.25, seq=p(1900), data=b"4" * 100)
    expect(stack, 1.25, S(".", ack=p(2100), sack=False))
    assert len(stack.recv(cid)) == 2100


def test_no_sack_blocks_unless_negotiated(isn):
    stack, peer, _cid = open_passive(isn, sack=True, sack_permitted=False)
    peer.send(ACK, 1.0, seq=p(1000), data=b"a" * 100)
    expect(stack, 1.0, S(".", ack=P, sack=False))


# ------------------------------------------------------------------ D-SACK we send

def blocks_of(seg):
    return [((left - P) & MASK, (right - P) & MASK) for left, right in seg.sack_blocks or []]


def test_dsack_reports_each_duplicate_once(isn):
    """RFC 2883: a duplicate below RCV.NXT is reported as the first SACK block of the ACK it
    gets at once; a duplicate of held out-of-order data as the first block, the block holding
    it second (the same range here); a segment partly old reports the old part. Each D-SACK
    goes in one ACK only."""
    stack, peer, cid = open_passive(isn, sack=True, sack_permitted=True)
    peer.send(ACK, 1.0, seq=P, data=b"a" * 100)
    drain(stack, 1.0)  # delayed ACK
    peer.send(ACK, 1.1, seq=P, data=b"a" * 100)  # all of it old
    [ack] = drain(stack, 1.1)
    assert (ack.ack, blocks_of(ack)) == (p(100), [(0, 100)])
    peer.send(ACK, 1.2, seq=p(300), data=b"c" * 100)
    [ack] = drain(stack, 1.2)
    assert blocks_of(ack) == [(300, 400)]
    peer.send(ACK, 1.3, seq=p(300), data=b"c" * 100)  # held already
    [ack] = drain(stack, 1.3)
    assert blocks_of(ack) == [(300, 400), (300, 400)]
    peer.send(ACK, 1.4, seq=p(50), data=b"a" * 50 + b"b" * 50)  # half old, half new
    [ack] = drain(stack, 1.4)
    assert (ack.ack, blocks_of(ack)) == (p(150), [(50, 100), (300, 400)])
    peer.send(ACK, 1.5, seq=p(150), data=b"b" * 150)  # fills the hole: no D-SACK left
    [ack] = drain(stack, 1.5)
    assert (ack.ack, blocks_of(ack)) == (p(400), [])
    assert stack.counters["dsack_sent"] == 3
    assert stack.recv(cid) == b"a" * 100 + b"b" * 200 + b"c" * 100


def test_no_dsack_without_sack(isn):
    stack, peer, _cid = open_passive(isn, sack=True, sack_permitted=False)
    peer.send(ACK, 1.0, seq=P, data=b"a" * 100)
    peer.send(ACK, 1.1, seq=P, data=b"a" * 100)
    [ack] = drain(stack, 1.1)
    assert ack.sack_blocks is None and stack.counters["dsack_sent"] == 0
