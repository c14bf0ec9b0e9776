"""SACK and timestamps with the Linux kernel as the peer, checked in the stack's packet capture.

- Passive (the kernel connects to `usertcp echo`) and active (`usertcp connect` to a kernel
  listener): SACK-permitted and TSopt in both SYNs, TSecr echoing the SYN's TSval, and a TSopt
  on every later segment of both sides.
- `--no-sack --no-timestamps`: neither option in the stack's SYN-ACK nor after it.
- Under loss both ways (nftables in the namespace for what the kernel receives, the stack's
  fault injector for what it receives) the capture shows SACK blocks in the stack's ACKs and
  in the kernel's, every block above the ACK it rides on, and the echo is intact.
"""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path

from usertcp.wire.tcp import ACK, PSH, RST, SYN

from .netns import NetNS
from .stackproc import HOST, StackProcess, by_connection, start_service, tcp_segments
from .test_robust_loss import echo as run_echo_client
from .test_stack_connect import listen_with_nc

MASK = 2**32 - 1

def echo(ns: NetNS, size: int, seed: int, limit: float = 60.0) -> int:
    """Echo `size` seeded bytes through the stack, check them; returns the kernel's local port."""
    out = run_echo_client(ns, size, limit, seed)
    assert out["intact"], out
    return out["port"]


def check_handshake(segs, *, kernel_opens: bool) -> None:
    """SYN and SYN-ACK both offer SACK and timestamps; TSecr echoes the SYN's TSval."""
    syn, synack = segs[0], segs[1]
    assert syn.seg.flags == SYN and syn.from_stack is not kernel_opens, segs[:2]
    assert synack.seg.flags == SYN | ACK and synack.from_stack is kernel_opens, segs[:2]
    for c in (syn, synack):
        assert c.seg.sack_permitted, c
        assert c.seg.ts_val is not None, c
    assert syn.seg.ts_ecr == 0
    assert synack.seg.ts_ecr == syn.seg.ts_val


def check_every_segment_has_tsopt(segs) -> None:
    """After the SYNs every segment of both sides carries TSopt (RFC 7323 3.2), and each
    side's TSvals never go back (PAWS at the other end relies on it)."""
    last: dict[bool, int] = {}
    for c in segs[2:]:
        if c.seg.flags & RST:
            continue
        assert c.seg.ts_val is not None, c
        prev = last.get(c.from_stack)
        if prev is not None:
            assert ((c.seg.ts_val - prev) & MASK) < 2**31, (c, prev)
        last[c.from_stack] = c.seg.ts_val
    assert set(last) == {True, False}, "segments from both sides"


def test_options_negotiated_when_the_kernel_connects(netns: NetNS, tmp_path: Path) -> None:
    pcap = tmp_path / "passive.pcap"
    stack = start_service(netns, tmp_path, "echo", "--pcap", str(pcap))
    port = echo(netns, 300_000, seed=1)
    assert stack.stop(signal.SIGINT) == 0, stack.text()
    segs = by_connection(tcp_segments(pcap))[port]
    check_handshake(segs, kernel_opens=True)
    check_every_segment_has_tsopt(segs)
    # With timestamps the stack's data segments are made of MSS - 12 = 1448-byte pieces,
    # which is where the device cuts its super-segments (the capture holds them as written):
    # all but a burst's last (PSH: the rest of what was queued) are whole multiples.
    data = [c.seg for c in segs if c.from_stack and len(c.seg.payload)]
    assert data and all(len(s.payload) % 1448 == 0 for s in data if not s.flags & PSH)
    assert any(len(s.payload) > 1448 for s in data)  # super-segments (offload) were used


def test_options_negotiated_when_the_stack_connects(netns: NetNS, tmp_path: Path) -> None:
    to_kernel = os.urandom(200_000)
    (tmp_path / "stack_in").write_bytes(to_kernel)
    (tmp_path / "nc_in").write_bytes(b"")
    nc = listen_with_nc(netns, 5002, tmp_path / "nc_in", tmp_path / "nc_out")
    pcap = tmp_path / "active.pcap"
    with open(tmp_path / "stack_in", "rb") as fin, open(tmp_path / "stack_out", "wb") as fout:
        stack = StackProcess(netns, ["connect", HOST, "5002", "--pcap", str(pcap)],
                             tmp_path / "connect.log", stdin=fin, stdout=fout)
    assert stack.wait(timeout=30) == 0, stack.text()
    assert nc.wait(timeout=15) == 0
    assert (tmp_path / "nc_out").read_bytes() == to_kernel
    [segs] = by_connection(tcp_segments(pcap)).values()
    check_handshake(segs, kernel_opens=False)
    check_every_segment_has_tsopt(segs)


def test_options_off_by_flag(netns: NetNS, tmp_path: Path) -> None:
    pcap = tmp_path / "off.pcap"
    stack = start_service(netns, tmp_path, "echo", "--no-sack", "--no-timestamps",
                          "--pcap", str(pcap))
    port = echo(netns, 100_000, seed=2)
    assert stack.stop(signal.SIGINT) == 0, stack.text()
    segs = by_connection(tcp_segments(pcap))[port]
    syn, synack = segs[0], segs[1]
    assert syn.seg.sack_permitted and syn.seg.ts_val is not None  # the kernel offers both
    assert not synack.seg.sack_permitted and synack.seg.ts_val is None
    assert all(c.seg.ts_val is None and not c.seg.sack_blocks for c in segs[2:]), segs


def test_sack_blocks_under_loss(netns: NetNS, tmp_path: Path) -> None:
    """Packets lost both ways: both sides hold out-of-order data at times and say so with
    SACK blocks; every block lies above the cumulative ACK it comes with, but a D-SACK (RFC
    2883) first, from either side, which reports a duplicate received: below the ACK, or
    inside the block after it.

    nftables drops 5 % of what the kernel receives from the stack: true loss. What it drops
    of the kernel's own output is not lost but refused to the sender (EPERM), which keeps
    the segment and sends it again later: no hole ever reaches the stack. So the stack's
    own seeded fault injector drops 5 % of what it receives as well (the capture, written
    above it, shows what got through).
    """
    pcap = tmp_path / "loss.pcap"
    seed = random.randrange(1 << 30)
    # Without offload every packet is one MSS, so the loss hits single segments (with it,
    # nftables would drop whole 64 KB super-segments).
    stack = start_service(netns, tmp_path, "echo", "--no-offload", "--pcap", str(pcap),
                          "--fault", f"seed={seed},loss=0.05,direction=rx")
    netns.nft_loss("utcp0", 5)
    port = echo(netns, 1_000_000, seed=seed, limit=90.0)
    netns.nft_loss("utcp0", 0)
    assert stack.stop(signal.SIGINT) == 0, stack.text()
    segs = by_connection(tcp_segments(pcap))[port]
    check_handshake(segs, kernel_opens=True)
    with_sack = {True: 0, False: 0}
    dsack = {True: 0, False: 0}
    for c in segs:
        blocks = c.seg.sack_blocks
        if not blocks:
            continue
        with_sack[c.from_stack] += 1
        assert c.seg.flags & ACK and len(blocks) <= 3, c  # beside a TSopt: three at most
        first = blocks[0]
        below = ((c.seg.ack - first[1]) & MASK) < 2**31
        inside = len(blocks) > 1 and ((first[0] - blocks[1][0]) & MASK) < 2**31 and (
            (blocks[1][1] - first[1]) & MASK) < 2**31
        if below or inside:
            assert 0 < ((first[1] - first[0]) & MASK) < 2**31, c
            blocks = blocks[1:]  # a D-SACK (RFC 2883): a duplicate it received
            dsack[c.from_stack] += 1
        for left, right in blocks:
            assert 0 < ((left - c.seg.ack) & MASK) < ((right - c.seg.ack) & MASK) < 2**31, c
    print(f"seed {seed}: SACK blocks in {with_sack[True]} of the stack's segments, "
          f"{with_sack[False]} of the kernel's; D-SACKs {dsack[True]} and {dsack[False]}")
    assert with_sack[True], f"seed {seed}: no SACK blocks from the stack"
    assert with_sack[False], f"seed {seed}: no SACK blocks from the kernel"
