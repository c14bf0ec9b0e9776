#!/usr/bin/env python3
"""Micro-benchmarks of the pure engine (no device, no asyncio): microseconds per segment.

Rows:
  rx data      Stack.receive() of in-order 1460-byte segments on an ESTABLISHED connection,
               with packets_to_send() every N packets as a driver does after a batch (so each
               segment carries its share of the ACKs), with and without checksum verification.
               The application's recv() runs between batches and is timed on its own.
  tx ack       The sending side: a connection with plenty of queued data receives ACKs that
               each advance by 2*MSS; "ack" is receive() of the ACK, "build" is the
               packets_to_send() that follows (two new 1460-byte segments per ACK), "send()"
               is the application refilling its send buffer.
  wire         parse_packet() and build_segment() alone.
  back-to-back two Stacks in one process moving 50 MB (one way, then both ways), MB/s of
               payload, with checksums, with checksum offload, and with 64 KB TSO segments.

Each figure is the best of --repeat runs (µs are per segment or per ACK). The receive and
send paths run twice: with the default options (SACK and timestamps negotiated: every
segment, sent or received, carries a TSopt, which the receive path checks for PAWS and
TS.Recent and the send path uses to measure RTT) and with neither.

    python scripts/bench_engine.py [--repeat 5] [--segments 20000] [--mb 50] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time
import timeit

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from usertcp.stack import Stack
from usertcp.tcp.config import TcpConfig
from usertcp.tcp.seq import MASK
from usertcp.wire.packet import parse_packet
from usertcp.wire.tcp import ACK, PSH, build_options, build_segment

A_ADDR, B_ADDR = "10.0.0.1", "10.0.0.2"
MSS = 1460
perf = time.perf_counter


# ---------------------------------------------------------------------------- setup

def pump(a: Stack, b: Stack, now: float, verified: bool = False) -> None:
    moved = True
    while moved:
        moved = False
        for src, dst in ((a, b), (b, a)):
            for p in src.packets_to_send(now):
                dst.receive(p, now, checksum_verified=verified)
                moved = True


def drain_events(stack: Stack) -> list:
    out = []
    while (e := stack.next_event()) is not None:
        out.append(e)
    return out


def established(config: TcpConfig | None = None):
    """A connected to B:80 through a real handshake; returns (a, b, a_id, b_id)."""
    a, b = Stack(A_ADDR, config=config), Stack(B_ADDR, config=config)
    b.listen(80)
    a_id = a.connect(B_ADDR, 80, 0.0)
    pump(a, b, 0.0, verified=bool(config and config.tx_checksum_offload))
    b_id = next(e.conn_id for e in drain_events(b) if type(e).__name__ == "ConnectionAccepted")
    drain_events(a)
    return a, b, a_id, b_id


def conn_of(stack: Stack, conn_id: int):
    return stack._by_id[conn_id]


# ---------------------------------------------------------------------------- rx data

def ts_option(conn, now: float) -> bytes:
    """The TSopt `conn` would put on a segment at `now` (b"" without timestamps)."""
    if not conn.ts_ok:
        return b""
    conn.clock = now
    return build_options(timestamp=(conn._ts_now(), conn.ts_recent))


def bench_rx(n_segments: int, batch: int, verified: bool, profile: cProfile.Profile | None = None,
             config: TcpConfig | None = None):
    """Returns (µs per segment for receive + packets_to_send, µs per segment for recv())."""
    a, b, a_id, b_id = established(config)
    ca, cb = conn_of(a, a_id), conn_of(b, b_id)
    payload = bytes(range(256)) * 6
    payload = payload[:MSS]
    seq = cb.rcv_nxt
    ack = cb.snd_nxt
    window = 65535 >> 0 if not ca.rcv_wscale else (256 * 1024) >> ca.rcv_wscale
    src, dst = ca.local, ca.remote
    packets = []
    # With timestamps a segment carries 12 bytes less data; the TSval ticks every 1 ms.
    size = MSS - (12 if ca.ts_ok else 0)
    payload = payload[:size]
    for i in range(n_segments):
        opts = ts_option(ca, 0.01 + i * 0.0001 / batch)
        packets.append(build_segment(src, dst, ca.lport, ca.rport, (seq + i * size) & MASK, ack,
                                     ACK | PSH, window, opts, payload))
    receive = b.receive
    to_send = b.packets_to_send
    recv = b.recv
    now = 0.01
    t_engine = 0.0
    t_recv = 0.0
    acks = 0
    if profile:
        profile.enable()
    for start in range(0, n_segments, batch):
        t0 = perf()
        for p in packets[start:start + batch]:
            receive(p, now, checksum_verified=verified)
        acks += len(to_send(now))
        t1 = perf()
        recv(b_id)
        t2 = perf()
        t_engine += t1 - t0
        t_recv += t2 - t1
        now += 0.0001
    if profile:
        profile.disable()
    assert cb.rcv_nxt == (seq + n_segments * size) & MASK, "segments were not all taken in order"
    assert b.drops.total() == 0
    assert not b.counters["paws_rejected"]
    return t_engine / n_segments * 1e6, t_recv / n_segments * 1e6, acks / n_segments


# ---------------------------------------------------------------------------- tx ack

def bench_tx(n_acks: int, batch: int, profile: cProfile.Profile | None = None, **options):
    """µs per ACK: (receive of the ACK, packets_to_send building new data, send() refill)."""
    config = TcpConfig(send_buffer=4 * 1024 * 1024, **options)
    a, b, a_id, b_id = established(config)
    ca, cb = conn_of(a, a_id), conn_of(b, b_id)
    mss = ca.snd_mss
    big = memoryview(bytes(64 * 1024 * 1024))
    sent = a.send(a_id, big[:config.send_buffer], 0.0)
    a.packets_to_send(0.0)
    base = ca.snd_una
    window = (1 << 30) >> cb.rcv_wscale if cb.rcv_wscale else 65535
    window = min(window, 65535)
    warm = 2000
    # With timestamps each ACK echoes our TSval of 1 ms before it is taken (the loop below
    # moves the clock 10 µs per round): a fresh RTT sample whenever the millisecond turns.
    def echo(i: int) -> bytes:
        if not ca.ts_ok:
            return b""
        rounds = i if i < warm else warm + (i - warm) // batch
        ms = int((0.001 + 0.00001 * rounds) * 1000) - 1
        return build_options(timestamp=(ca.ts_recent, (ca.ts_offset + ms) & MASK))

    acks = [build_segment(cb.local, cb.remote, cb.lport, cb.rport, cb.snd_nxt,
                          (base + 2 * mss * (i + 1)) & MASK, ACK, window, echo(i))
            for i in range(warm + n_acks)]
    receive = a.receive
    to_send = a.packets_to_send
    send = a.send
    now = 0.001
    t_ack = t_build = t_send = 0.0
    segs = 0
    # Warm up one ACK at a time (slow start needs the new data out before the next ACK),
    # then time batches.
    starts = list(range(warm)) + list(range(warm, warm + n_acks, batch))
    for i in starts:
        step = 1 if i < warm else batch
        if i == warm and profile:
            profile.enable()
        t0 = perf()
        for p in acks[i:i + step]:
            receive(p, now, checksum_verified=True)
        t1 = perf()
        out = to_send(now)
        t2 = perf()
        space = config.send_buffer - len(ca.sndbuf)
        if space >= 64 * 1024:
            sent += send(a_id, big[sent % (32 * 1024 * 1024):][:space], now)
        t3 = perf()
        now += 0.00001
        if i >= warm:
            t_ack += t1 - t0
            t_build += t2 - t1
            t_send += t3 - t2
            segs += len(out)
    if profile:
        profile.disable()
    assert ca.snd_una == (base + 2 * mss * (warm + n_acks)) & MASK, "ACKs were not all taken"
    return (t_ack / n_acks * 1e6, t_build / n_acks * 1e6, t_send / n_acks * 1e6,
            segs / n_acks, ca.cwnd // mss)


# ---------------------------------------------------------------------------- wire

def bench_wire(repeat: int):
    payload = bytes(MSS)
    args = (0x0A000001, 0x0A000002, 40000, 80, 123456, 654321, ACK | PSH, 1024)
    data_pkt = build_segment(*args, b"", payload)
    ack_pkt = build_segment(*args)
    rows = []

    def best(stmt, number=20000):
        return min(timeit.repeat(stmt, number=number, repeat=repeat)) / number * 1e6

    rows.append(("parse_packet 1460-byte data, checksum", best(lambda: parse_packet(data_pkt))))
    rows.append(("parse_packet 1460-byte data, no checksum",
                 best(lambda: parse_packet(data_pkt, False))))
    rows.append(("parse_packet pure ACK, checksum", best(lambda: parse_packet(ack_pkt))))
    rows.append(("build_segment 1460-byte data, checksum",
                 best(lambda: build_segment(*args, b"", payload))))
    rows.append(("build_segment 1460-byte data, offload",
                 best(lambda: build_segment(*args, b"", payload, csum_offload=True))))
    rows.append(("build_segment pure ACK, checksum", best(lambda: build_segment(*args))))
    return rows


# ---------------------------------------------------------------------------- back to back

def back_to_back(total: int, both_ways: bool, offload: bool, tso: bool) -> float:
    """MB/s of payload delivered (both directions counted) between two Stacks, no loss."""
    config = TcpConfig(tx_checksum_offload=offload, tso_max=65535 - 80 if tso else 0)
    a, b, a_id, b_id = established(config)
    src = memoryview(bytes(total))
    writers = [[a, a_id, 0]] + ([[b, b_id, 0]] if both_ways else [])
    readers = [(b, b_id), (a, a_id)]
    want = total * len(writers)
    got = 0
    now = 0.0
    verified = offload  # a partial checksum (offload) is the device's to finish
    t0 = perf()
    while got < want:
        for w in writers:
            stack, cid, n = w
            if n < total:
                w[2] = n + stack.send(cid, src[n:n + stack.send_space(cid)], now)
        for _ in range(2):  # data one way, then the ACKs it drew back
            for p in a.packets_to_send(now):
                b.receive(p, now, checksum_verified=verified)
            for p in b.packets_to_send(now):
                a.receive(p, now, checksum_verified=verified)
            for stack, cid in readers:
                got += len(stack.recv(cid))
        now += 0.0001
        a.handle_timers(now)
        b.handle_timers(now)
    elapsed = perf() - t0
    return want / elapsed / 1e6


# ---------------------------------------------------------------------------- main

def print_profile(title: str, prof: cProfile.Profile, per: int) -> None:
    print(f"\n--- profile: {title} (tottime per {per:,} operations; top 14) ---")
    stats = pstats.Stats(prof)
    stats.sort_stats("tottime")
    rows = []
    for (fname, line, func), (_cc, nc, tt, ct, _callers) in stats.stats.items():
        rows.append((tt, ct, nc, f"{os.path.basename(fname)}:{line}({func})"))
    rows.sort(reverse=True)
    total = sum(r[0] for r in rows)
    print(f"{'µs/op self':>11} {'µs/op cum':>10} {'calls/op':>9}  function")
    for tt, ct, nc, name in rows[:14]:
        print(f"{tt / per * 1e6:11.3f} {ct / per * 1e6:10.3f} {nc / per:9.2f}  {name}")
    print(f"{total / per * 1e6:11.3f} {'':>10} {'':>9}  total (profiler overhead included)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--segments", type=int, default=20000)
    parser.add_argument("--mb", type=int, default=50)
    parser.add_argument("--profile", action="store_true", help="also print cProfile tables")
    args = parser.parse_args()
    n = args.segments
    r = args.repeat

    print(f"Python {sys.version.split()[0]}, {n:,} segments per run, best of {r}\n")
    variants = (("SACK + timestamps (default)", {}),
                ("no SACK, no timestamps", {"sack": False, "timestamps": False}))
    for title, options in variants:
        print(f"{'receive path (in-order MSS data, ESTABLISHED): ' + title:<72}{'µs/seg':>8}"
              f"{'recv() µs':>11}{'ACKs/seg':>10}")
        for batch in (2, 16):
            for verified in (False, True):
                res = min((bench_rx(n, batch, verified, config=TcpConfig(**options))
                           for _ in range(r)), key=lambda x: x[0])
                label = (f"  receive + packets_to_send every {batch:>2}, "
                         f"{'no checksum' if verified else 'checksum'}")
                print(f"{label:<72}{res[0]:8.2f}{res[1]:11.2f}{res[2]:10.2f}")
        print()

    for title, options in variants:
        print(f"{'send path (ACKs of 2*MSS): ' + title:<54}{'ack µs':>8}{'build µs':>10}"
              f"{'send() µs':>11}{'segs/ACK':>10}{'cwnd':>7}")
        for batch in (1, 16):
            res = min((bench_tx(n, batch, **options) for _ in range(r)),
                      key=lambda x: x[0] + x[1])
            label = f"  packets_to_send after every {batch:>2} ACK{'s' if batch > 1 else ''}"
            print(f"{label:<54}{res[0]:8.2f}{res[1]:10.2f}{res[2]:11.2f}{res[3]:10.2f}"
                  f"{res[4]:7d}")
        print()

    print(f"{'wire alone':<48}{'µs':>8}")
    for label, us in bench_wire(r):
        print(f"  {label:<46}{us:8.2f}")

    total = args.mb * 1_000_000
    print(f"\n{f'back to back, {args.mb} MB each way, one process':<48}{'MB/s':>8}")
    for both in (False, True):
        for offload, tso in ((False, False), (True, False), (True, True)):
            mbps = max(back_to_back(total, both, offload, tso) for _ in range(max(1, r // 2)))
            label = (f"  {'both ways' if both else 'one way'}, "
                     f"{'checksum offload' if offload else 'checksums'}"
                     f"{', 64 KB TSO segments' if tso else ''}")
            print(f"{label:<48}{mbps:8.1f}")

    if args.profile:
        prof = cProfile.Profile()
        bench_rx(n, 16, False, prof)
        print_profile("receive of in-order data, packets_to_send every 16, checksum", prof, n)
        prof = cProfile.Profile()
        bench_rx(n, 2, True, prof)
        print_profile("receive of in-order data, packets_to_send every 2, no checksum", prof, n)
        prof = cProfile.Profile()
        bench_tx(n, 1, prof)
        print_profile("ACK on the sending side + packets_to_send (2 new segments)", prof, n)


if __name__ == "__main__":
    main()
