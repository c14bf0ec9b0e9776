#!/usr/bin/env python3
"""Benchmark Internet-checksum methods and the wire layer's parse/build hot paths.

Prints two tables of microseconds per call (the minimum over several timeit runs):
  1. checksum methods over 40/576/1460/9000/65000-byte buffers;
  2. parse_packet and build_segment on typical segments.

    python scripts/bench_checksum.py [--repeat 7] [--min-time 0.05]

numpy is not a dependency of usertcp: its column is shown only when it can be imported.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import timeit
from array import array

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from usertcp.wire import ACK, PSH, build_options, build_segment, word_sum  # noqa: E402
from usertcp.wire.packet import parse_packet  # noqa: E402

try:
    import numpy
except ImportError:  # not a dependency
    numpy = None

SIZES = (40, 576, 1460, 9000, 65000)
LITTLE = sys.byteorder == "little"


# --- the methods: each returns the word sum folded to 16 bits, mod 0xFFFF -----------------------

def loop_sum(buf) -> int:
    """The textbook loop: one Python iteration per 16-bit word, built from two indexed bytes."""
    total = 0
    n = len(buf) & ~1
    for i in range(0, n, 2):
        total += (buf[i] << 8) | buf[i + 1]
    if len(buf) & 1:
        total += buf[-1] << 8
    return total % 0xFFFF


def word_loop_sum(buf) -> int:
    """One Python iteration per native-order 16-bit word (no per-byte indexing), swapped once."""
    if len(buf) & 1:
        buf = bytes(buf) + b"\0"
    total = 0
    for word in memoryview(buf).cast("H"):
        total += word
    total %= 0xFFFF
    return ((total >> 8) | ((total & 0xFF) << 8)) % 0xFFFF if LITTLE else total


def array_sum(buf) -> int:
    """sum() over array('H'): native-order words, swapped once at the end (RFC 1071 1.(B))."""
    if len(buf) & 1:
        buf = bytes(buf) + b"\0"
    total = sum(array("H", buf)) % 0xFFFF
    return ((total >> 8) | ((total & 0xFF) << 8)) % 0xFFFF if LITTLE else total


def from_bytes_sum(buf) -> int:
    """The whole buffer as one integer: 2**16 == 1 (mod 0xFFFF), so this is the word sum."""
    x = int.from_bytes(buf, "big")
    return (x << 8 if len(buf) & 1 else x) % 0xFFFF


def usertcp_sum(buf) -> int:
    """usertcp.wire.checksum.word_sum: int.from_bytes folded by reduce()."""
    return word_sum(buf)


def numpy_sum(buf) -> int:
    if len(buf) & 1:
        buf = bytes(buf) + b"\0"
    return int(numpy.frombuffer(buf, dtype=">u2").sum(dtype=numpy.uint64)) % 0xFFFF


METHODS = [("16-bit loop", loop_sum), ("word loop", word_loop_sum), ("array('H')", array_sum),
           ("from_bytes %", from_bytes_sum), ("usertcp word_sum", usertcp_sum)]
if numpy is not None:
    METHODS.append(("numpy", numpy_sum))


# --- timing -------------------------------------------------------------------------------------

def best_us(func, args, repeat: int, min_time: float) -> float:
    """Microseconds per call: calls per run grow until a run takes min_time; min of `repeat`."""
    timer = timeit.Timer(lambda: func(*args))
    number = 1
    while True:
        elapsed = timer.timeit(number)
        if elapsed >= min_time:
            break
        number *= 2 if elapsed * 10 >= min_time else 10
    runs = [elapsed] + timer.repeat(repeat - 1, number)
    return min(runs) / number * 1e6


def table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = "  ".join("-" * w for w in widths)
    print(title)
    print(line)
    for r in [header, None, *rows]:
        if r is None:
            print(line)
            continue
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))))
    print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--repeat", type=int, default=7, help="timeit runs per cell (min is shown)")
    parser.add_argument("--min-time", type=float, default=0.05,
                        help="seconds each run lasts at least")
    args = parser.parse_args()

    buffers = {size: os.urandom(size) for size in SIZES}
    for size, buf in buffers.items():  # every method must compute the same sum
        results = {name: func(buf) for name, func in METHODS}
        assert len(set(results.values())) == 1, (size, results)
        odd = buf[:-1]
        results = {name: func(odd) for name, func in METHODS}
        assert len(set(results.values())) == 1, (size - 1, results)

    rows = []
    for size in SIZES:
        cells = [best_us(func, (buffers[size],), args.repeat, args.min_time) for _, func in METHODS]
        rows.append([f"{size} B"] + [f"{c:.2f}" for c in cells])
    print(f"Python {sys.version.split()[0]}, min of {args.repeat} runs, µs per call"
          + ("" if numpy is not None else "  (numpy not importable: column skipped)"))
    print()
    table("Checksum word sum", ["buffer"] + [name for name, _ in METHODS], rows)

    src, dst = 0x0A000001, 0x0A000002
    ts = build_options(timestamp=(123456789, 987654321))
    payload = os.urandom(1460)
    full = build_segment(src, dst, 40000, 80, 1, 2, ACK | PSH, 65535, ts, payload)
    ack = build_segment(src, dst, 40000, 80, 1, 2, ACK, 65535)
    assert parse_packet(full).ts_val == 123456789 and len(full) == 1512
    ops = [
        ("parse_packet 1460 B + TS, verify checksum", parse_packet, (full,)),
        ("parse_packet 1460 B + TS, no verification", parse_packet, (full, False)),
        ("parse_packet pure ACK (40 B)", parse_packet, (ack,)),
        ("build_segment 1460 B + TS", build_segment,
         (src, dst, 40000, 80, 1, 2, ACK | PSH, 65535, ts, payload)),
        ("build_segment pure ACK (40 B)", build_segment,
         (src, dst, 40000, 80, 1, 2, ACK, 65535)),
        ("build_segment pure ACK + TS (52 B)", build_segment,
         (src, dst, 40000, 80, 1, 2, ACK, 65535, ts)),
        ("build_options(timestamp=...)", lambda: build_options(timestamp=(1, 2)), ()),
        ("struct.unpack_from 40 B headers (floor)",
         struct.Struct("!BBHHHBBHIIHHIIBBHHH").unpack_from, (full,)),
    ]
    rows = [[name, f"{best_us(func, a, args.repeat, args.min_time):.2f}"] for name, func, a in ops]
    print()
    table("Wire layer", ["operation", "µs"], rows)


if __name__ == "__main__":
    main()
