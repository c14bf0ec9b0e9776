"""SACK (RFC 2018) and SACK-based loss recovery (RFC 6675): negotiation, the blocks we send
for out-of-order data, the scoreboard of the peer's blocks, and recovery ladders.

Sender ladders use a peer MSS of 1000 and no timestamps, so that every number is round:
our data starts at D = Y + 1 = 2**32 - 2 and the sequence space wraps in the first segment.
"""

import pytest
from tcp_helpers import (
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


def test_syn_options_in_linux_order(isn):
    """Our SYN with everything on: MSS, SACK-permitted + TS, NOP window scale (20 bytes)."""
    stack = make_stack(sack=True, timestamps=True)
    isn.set(Y)
    stack.connect("10.0.0.2", 80, 0.0, local_port=50000)
    [packet] = stack.packets_to_send(0.0)
    options = bytes(packet[40:60])  # after the IPv4 and TCP fixed headers
    assert len(packet) == 60
    assert options == build_options(mss=1460, wscale=3, sack_permitted=True, timestamp=(Y, 0))
    assert options[:8] == bytes((2, 4, 5, 180, 4, 2, 8, 10)) and options[16:] == bytes((1, 3, 3, 3))


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


# ------------------------------------------------------------------ the scoreboard

def sender(isn, **config):
    """Passive open, peer MSS 1000, SACK on, no timestamps; 10 segments sent at 1.0."""
    config.setdefault("sack", True)
    stack, peer, cid = open_passive(isn, mss=1000, sack_permitted=True, **config)
    events(stack)
    stack.send(cid, bytes(range(250)) * 40, 1.0)
    out = expect(stack, 1.0, *[S(".", seq=d(1000 * i), len=1000) for i in range(9)],
                 S("P.", seq=d(9000), len=1000))
    assert out[0].seq == 2**32 - 2  # D: the data wraps in the first segment
    return stack, peer, cid


def test_scoreboard_takes_merges_and_ignores(isn):
    stack, peer, cid = sender(isn)
    peer.ack = D
    peer.send(ACK, 1.5, sack=[(d(2000), d(3000))])
    assert sacked(stack, cid) == [(2000, 3000)]
    # Below SND.UNA (a D-SACK), beyond SND.MAX, empty or inverted: ignored.
    peer.send(ACK, 1.5, sack=[(d(-500), d(0)), (d(9000), d(11000)), (d(5000), d(4000)),
                              (d(6000), d(6000))])
    assert sacked(stack, cid) == [(2000, 3000)]
    peer.send(ACK, 1.5, sack=[(d(3000), d(4000)), (d(6000), d(7000))])  # adjacent: merged
    assert sacked(stack, cid) == [(2000, 4000), (6000, 7000)]
    peer.send(ACK, 1.5, sack=[(d(1500), d(2500)), (d(6500), d(8000))])  # overlapping
    assert sacked(stack, cid) == [(1500, 4000), (6000, 8000)]
    assert info(stack, cid)["sacked"] == 4500
    # The cumulative ACK passes the first block: it goes (and a block cut by it is cut).
    peer.ack = d(5000)
    peer.send(ACK, 1.75, sack=[(d(6000), d(8000))])
    assert sacked(stack, cid) == [(6000, 8000)]
    peer.ack = d(10000)
    peer.send(ACK, 2.0)
    assert sacked(stack, cid) == []


def test_scoreboard_is_bounded(isn):
    stack, peer, cid = sender(isn)
    peer.ack = D
    for k in range(10):  # 40 blocks of 10 bytes, every 100 bytes from 1000 on
        peer.send(ACK, 1.5, sack=[(d(1000 + 100 * (4 * k + j)), d(1010 + 100 * (4 * k + j)))
                                  for j in range(4)])
    drain(stack, 1.5)
    blocks = sacked(stack, cid)
    assert len(blocks) == 32
    assert blocks[0] == (1000, 1010) and blocks[-1] == (4100, 4110)  # the lowest are kept


# ------------------------------------------------------------------ RFC 6675 recovery

def test_recovery_retransmits_the_holes(isn):
    """Segments 1 and 4 (of 0..9) are lost. The third duplicate ACK starts recovery with
    the first hole; the second goes once enough is SACKed above it to call it lost;
    pipe keeps the rest back; the ACK of everything ends recovery."""
    stack, peer, cid = sender(isn)
    peer.ack = d(1000)
    peer.send(ACK, 1.5)  # segment 0: slow start, cwnd 11000; nothing new to send
    expect(stack, 1.5)
    peer.send(ACK, 1.5, sack=[(d(2000), d(3000))])
    peer.send(ACK, 1.5, sack=[(d(2000), d(4000))])
    expect(stack, 1.5)  # two duplicate ACKs, 2000 bytes SACKed: not yet a loss
    peer.send(ACK, 1.5, sack=[(d(5000), d(6000)), (d(2000), d(4000))])
    # DupThresh: cwnd = ssthresh = 9000 / 2; the first hole goes again, one MSS of it.
    expect(stack, 1.5, S(".", seq=d(1000), len=1000, data=(bytes(range(250)) * 40)[1000:2000]))
    row = info(stack, cid)
    assert (row["cwnd"], row["ssthresh"]) == (4500, 4500)
    assert stack.counters["fast_retransmits"] == 1
    # pipe = 9000 - 3000 SACKed - 1000 lost + 1000 retransmitted = 6000 > cwnd: nothing.
    peer.send(ACK, 1.5, sack=[(d(5000), d(7000)), (d(2000), d(4000))])
    expect(stack, 1.5)
    # More than 2 * SMSS SACKed above it: [4000, 5000) is lost too. pipe = 3000.
    peer.send(ACK, 1.5, sack=[(d(5000), d(8000)), (d(2000), d(4000))])
    expect(stack, 1.5, S(".", seq=d(4000), len=1000))
    # Segment 9 is in flight, not lost: nothing is sent for it.
    peer.send(ACK, 1.5, sack=[(d(5000), d(9000)), (d(2000), d(4000))])
    expect(stack, 1.5)
    # The first retransmission arrives: a partial ACK. The other hole was already resent;
    # no rescue retransmission of it either.
    peer.ack = d(4000)
    peer.send(ACK, 1.75, sack=[(d(5000), d(10000))])
    expect(stack, 1.75)
    assert info(stack, cid)["cwnd"] == 4500
    peer.ack = d(10000)
    peer.send(ACK, 2.0)  # RecoveryPoint acknowledged: recovery ends
    expect(stack, 2.0)
    assert not conn(stack, cid).in_recovery
    assert info(stack, cid)["cwnd"] == 2000  # min(ssthresh, flight + MSS)
    assert stack.counters["retransmits"] == 2
    assert stack.counters["rto_expired"] == 0


def test_recovery_rescue_retransmission_of_a_lost_tail(isn):
    """Segment 1 and the last two are lost: after the first hole is filled nothing is SACKed
    above the tail, so rule (4) resends its last segment, whose SACK shows the other."""
    stack, peer, cid = sender(isn)
    peer.ack = d(1000)
    peer.send(ACK, 1.5)
    for right in (3000, 4000, 5000):
        peer.send(ACK, 1.5, sack=[(d(2000), d(right))])
    expect(stack, 1.5, S(".", seq=d(1000), len=1000))
    peer.send(ACK, 1.5, sack=[(d(2000), d(6000))])
    peer.send(ACK, 1.5, sack=[(d(2000), d(7000))])
    peer.send(ACK, 1.5, sack=[(d(2000), d(8000))])
    expect(stack, 1.5)
    peer.ack = d(8000)
    peer.send(ACK, 1.75)  # the retransmission arrived; 8000..10000 are missing
    expect(stack, 1.75, S(".", seq=d(9000), len=1000))  # the rescue: the highest segment
    peer.send(ACK, 2.0, sack=[(d(9000), d(10000))])
    expect(stack, 2.0, S(".", seq=d(8000), len=1000))  # rule (3): below the SACKed one
    peer.ack = d(10000)
    peer.send(ACK, 2.25)
    expect(stack, 2.25)
    assert not conn(stack, cid).in_recovery
    assert stack.counters["rto_expired"] == 0


def test_recovery_sends_new_data_as_pipe_allows(isn):
    """Rule (2): with no hole to fill, new data goes, one MSS at a time, as pipe allows."""
    stack, peer, cid = open_passive(isn, mss=1000, sack=True, sack_permitted=True)
    events(stack)
    stack.send(cid, bytes(20000), 1.0)
    expect(stack, 1.0, *[S(".", seq=d(1000 * i), len=1000) for i in range(10)])
    peer.ack = D
    peer.send(ACK, 1.5, sack=[(d(1000), d(2000))])
    # Limited transmit: SACKed data has left the network, so one new segment may go.
    expect(stack, 1.5, S(".", seq=d(10000), len=1000))
    peer.send(ACK, 1.5, sack=[(d(1000), d(3000))])
    expect(stack, 1.5, S(".", seq=d(11000), len=1000))
    peer.send(ACK, 1.5, sack=[(d(1000), d(4000))])
    # Three duplicate ACKs (and 3000 bytes SACKed): cwnd = ssthresh = 12000 / 2 = 6000;
    # segment 0 again; pipe = 12000 - 3000 SACKed - 1000 lost + 1000 resent = 9000.
    expect(stack, 1.5, S(".", seq=d(0), len=1000))
    for right in (5000, 6000, 7000):  # pipe 8000, 7000, 6000: still no room
        peer.send(ACK, 1.5, sack=[(d(1000), d(right))])
        expect(stack, 1.5)
    peer.send(ACK, 1.5, sack=[(d(1000), d(8000))])
    # pipe 5000: one segment, and no hole to fill: new data.
    expect(stack, 1.5, S(".", seq=d(12000), len=1000))
    assert info(stack, cid)["cwnd"] == 6000


def test_sacked_data_still_fills_the_peers_window(isn):
    """Limited transmit counts SACKed data out of the pipe, not out of the peer's window: with
    the window full, nothing new goes however much is SACKed (found by the property test:
    segments beyond the window made each side drop the other's ACKs, for good)."""
    stack, peer, cid = open_passive(isn, mss=1000, window=10000, sack=True, sack_permitted=True)
    events(stack)
    stack.send(cid, bytes(20000), 1.0)
    expect(stack, 1.0, *[S(".", seq=d(1000 * i), len=1000) for i in range(10)])
    peer.ack = D
    for right in (2000, 3000):
        peer.send(ACK, 1.5, sack=[(d(1000), d(right))])
        expect(stack, 1.5)
    peer.send(ACK, 1.5, sack=[(d(1000), d(4000))])
    expect(stack, 1.5, S(".", seq=d(0), len=1000))  # recovery: the hole only
    for right in range(5000, 11000, 1000):
        peer.send(ACK, 1.5, sack=[(d(1000), d(right))])
        expect(stack, 1.5)  # pipe would allow new data; the window does not
    peer.ack = d(10000)
    peer.send(ACK, 2.0)  # recovery over, the window moves: cwnd min(5000, 0 + 2 MSS)
    expect(stack, 2.0, *[S(".", seq=d(10000 + 1000 * i), len=1000) for i in range(2)])


def test_rto_clears_the_scoreboard_and_skips_what_is_sacked_after(isn):
    stack, peer, cid = sender(isn)
    peer.ack = D
    peer.send(ACK, 1.5, sack=[(d(2000), d(4000))])
    assert sacked(stack, cid) == [(2000, 4000)]
    stack.handle_timers(2.5)  # RTO 1.5 from 1.0
    # RFC 6675 5.1: the scoreboard goes; back to SND.UNA with one segment.
    expect(stack, 2.5, S(".", seq=d(0), len=1000))
    assert sacked(stack, cid) == []
    peer.ack = d(1000)
    peer.send(ACK, 3.0, sack=[(d(2000), d(4000))])
    # cwnd 2000: the hole [1000, 2000), then over the SACKed block to 4000.
    expect(stack, 3.0, S(".", seq=d(1000), len=1000), S(".", seq=d(4000), len=1000))


def test_lost_retransmission_is_sent_again(isn):
    """A retransmission lost in its turn: once data sent after it is SACKed beyond
    DupThresh segments, it goes again without waiting for the RTO."""
    stack, peer, cid = open_passive(isn, mss=1000, sack=True, sack_permitted=True)
    events(stack)
    stack.send(cid, bytes(30000), 1.0)
    expect(stack, 1.0, *[S(".", seq=d(1000 * i), len=1000) for i in range(10)])
    peer.ack = D
    sent = []
    for right in (2000, 3000, 4000):
        peer.send(ACK, 1.5, sack=[(d(1000), d(right))])
        sent += [((s.seq - D) & MASK, len(s.payload)) for s in drain(stack, 1.5)]
    assert sent == [(10000, 1000), (11000, 1000), (0, 1000)]  # two limited transmits
    # The retransmission of segment 0 is lost; the new data sent after it arrives.
    sent = []
    for right in range(5000, 17000, 1000):
        peer.send(ACK, 1.75, sack=[(d(1000), d(right))])
        sent.append([(s.seq - D) & MASK for s in drain(stack, 1.75)])
    # New data as pipe allows from 8000 SACKed on; when more than 2 * SMSS of the data
    # sent after the retransmission (from 12000) is SACKed, segment 0 goes again, once.
    assert sent == [[], [], [], [12000], [13000], [14000], [15000], [16000], [17000],
                    [18000], [0, 19000], [20000]]
    assert stack.counters["lost_retransmits"] == 1
    assert stack.counters["rto_expired"] == 0


def test_tso_recovery_retransmits_one_mss(isn):
    """With segmentation offload and timestamps: the loss of the first wire segment of a
    super-segment is made good by one 1448-byte segment, then new data one MSS at a time."""
    stack, peer, cid = open_passive(isn, sack=True, timestamps=True, sack_permitted=True,
                                    ts=1000, tso_max=65535 - 80)
    events(stack)
    stack.send(cid, bytes(100000), 1.0)
    expect(stack, 1.0, S(".", seq=D, len=14480))
    peer.ack = D
    peer.ts_val = 1600
    peer.send(ACK, 1.5, sack=[(d(1448), d(14480))])  # 9 of the 10 wire segments arrived
    # IsLost(SND.UNA) at once (more than 2 * SMSS SACKed above it): recovery.
    out = expect(stack, 1.5, S(".", seq=D, len=1448), *[
        S(".", seq=d(14480 + 1448 * i), len=1448) for i in range(4)])
    assert all(s.ts_val is not None for s in out)
    assert info(stack, cid)["cwnd"] == 7240


def test_newreno_without_sack(isn):
    """SACK not negotiated: the NewReno ladder (window inflation) is untouched."""
    stack, peer, cid = open_passive(isn, mss=1000, sack=True, sack_permitted=False)
    events(stack)
    stack.send(cid, bytes(10000), 1.0)
    drain(stack, 1.0)
    peer.ack = D
    for _ in range(3):
        peer.send(ACK, 1.5)
    expect(stack, 1.5, S(".", seq=D, len=1000))
    assert info(stack, cid)["cwnd"] == 5000 + 3000  # ssthresh + 3 * MSS
    peer.send(ACK, 1.5)
    expect(stack, 1.5)  # inflated by one MSS, still no room: 9000 in flight, cwnd 9000
    assert info(stack, cid)["cwnd"] == 9000
