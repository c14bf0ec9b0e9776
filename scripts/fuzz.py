#!/usr/bin/env python3
"""Fuzz the whole pure stack with atheris (coverage-guided) or a seeded random loop.

Each fuzzer input is decoded into a sequence of operations on a fresh `World` from
tests/stack/test_fuzz.py: two `Stack`s on a virtual-clock wire, each with a listener
and an established connection in each direction with data flowing. The first bytes
choose the configuration (MSS, buffer sizes, Nagle, an ISN just below 2**32); then
each operation is one of: a packet of raw bytes (a length prefix, then the bytes),
a crafted segment for a live 4-tuple / listener / closed port (flags, seq and ack as
deltas from the connection's own numbers, window, options, payload length), a
mutation of a packet a stack really sent (bit flips, truncation, extension, field
rewrites, checksums fixed up or handed in as device-verified), a replay, a loss or a
delay on the wire, time passing, or an application call (send, recv, shutdown,
close, abort, connect, listen). After every operation all invariants are checked
(`World.check`: SND.UNA <= SND.NXT <= SND.MAX mod 2**32, buffer bounds, out-of-order
bytes, timers armed, tables consistent, counters non-negative, ...), and an
AssertionError or any other exception is a crash. Every `--check-every` inputs,
and once at the end, the fuzzed stacks must still complete fresh connections (both
as client and as server) with a clean peer and move data intact.

atheris is a developer tool, not a dependency of the project:

    . .venv/bin/activate
    pip install atheris          # a manylinux wheel for CPython 3.11 on x86-64

    python scripts/fuzz.py --seconds 600                      # atheris, 10 minutes
    python scripts/fuzz.py --seconds 60 --engine random --seed 7
    python scripts/fuzz.py --packets 1000000 --corpus /tmp/usertcp-corpus
    python scripts/fuzz.py --reproduce /tmp/usertcp-fuzz/crash-...   # rerun one input

Without atheris installed, `--engine auto` (the default) falls back to `random`:
random inputs, and mutations of earlier inputs, from one seed, through the same
decoder and checks. The run always stops by itself: after `--seconds` of wall time
or `--packets` packets fed, whichever comes first. At the end it prints how many
packets it fed (by origin: fuzzer-made or delivered over the wire), the drops by
reason, operations and events by kind, and executions per second. Crash inputs go
to `--artifacts` (default: $TMPDIR/usertcp-fuzz/).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


class Stats:
    def __init__(self, args):
        self.args = args
        self.start = time.monotonic()
        self.last_report = self.start
        self.inputs = 0
        self.fed = Counter()
        self.drops = Counter()
        self.ops = Counter()
        self.events = Counter()
        self.counters = Counter()
        self.fresh_checks = 0

    def add(self, world) -> None:
        self.inputs += 1
        self.fed.update(world.fed)
        self.ops.update(world.ops)
        self.events.update(world.events)
        for stack in world.stacks:
            self.drops.update(stack.drops)
            self.counters.update(stack.counters)

    @property
    def packets(self) -> int:
        return sum(self.fed.values())

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def done(self) -> bool:
        return self.elapsed() >= self.args.seconds or self.packets >= self.args.packets

    def progress(self) -> None:
        now = time.monotonic()
        if now - self.last_report >= 30:
            self.last_report = now
            t = self.elapsed()
            print(f"[fuzz] {t:7.0f} s  inputs {self.inputs:,}  packets {self.packets:,}  "
                  f"{self.inputs / t:,.0f} exec/s  {self.packets / t:,.0f} packets/s",
                  file=sys.stderr, flush=True)

    def report(self, engine: str) -> None:
        t = max(self.elapsed(), 1e-9)
        fuzzer_made = self.packets - self.fed["wire"]
        lines = [
            f"engine: {engine}   seed: {self.args.seed}   wall time: {t:.1f} s",
            f"inputs (executions): {self.inputs:,}   {self.inputs / t:,.1f} exec/s",
            f"packets fed to Stack.receive: {self.packets:,}   ({self.packets / t:,.0f}/s)",
            f"  fuzzer-made: {fuzzer_made:,}   delivered over the wire: {self.fed['wire']:,}",
            "  by origin: " + ", ".join(f"{k} {v:,}" for k, v in self.fed.most_common()),
            f"dropped (malformed / not ours): {sum(self.drops.values()):,}",
        ]
        lines += [f"  {k:22} {v:,}" for k, v in self.drops.most_common()]
        lines.append("operations: " + ", ".join(f"{k} {v:,}" for k, v in self.ops.most_common()))
        lines.append("events: " + ", ".join(f"{k} {v:,}" for k, v in self.events.most_common()))
        lines.append("engine counters: " + ", ".join(
            f"{k} {v:,}" for k, v in self.counters.most_common()))
        lines.append(f"fresh-connection checks passed: {self.fresh_checks}")
        print("\n".join(lines), flush=True)


def make_target(stats: Stats, args):
    from tests.stack.test_fuzz import run_ops

    def one_input(data: bytes) -> None:
        world = run_ops(data, max_ops=args.max_ops)
        stats.add(world)
        if stats.inputs % args.check_every == 0:
            world.fresh_connection_check()
            stats.fresh_checks += 1
        stats.progress()

    return one_input


def final_check(stats: Stats) -> None:
    from tests.stack.test_fuzz import run_ops

    world = run_ops(random.Random(stats.args.seed).randbytes(2000))
    world.fresh_connection_check()
    stats.fresh_checks += 1


def save_crash(args, data: bytes) -> Path:
    import hashlib

    path = Path(args.artifacts) / f"crash-{hashlib.sha1(data).hexdigest()}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------------------- engines

def run_random(args, stats: Stats) -> int:
    """Random inputs and mutations of earlier ones, reproducibly from --seed."""
    target = make_target(stats, args)
    rng = random.Random(args.seed)
    pool: list[bytes] = []
    while not stats.done():
        if pool and rng.random() < 0.5:
            data = bytearray(rng.choice(pool))
            for _ in range(rng.randrange(1, 8)):
                op = rng.randrange(4)
                if op == 0 and data:
                    data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
                elif op == 1 and data:
                    data[rng.randrange(len(data))] = rng.randrange(256)
                elif op == 2:
                    at = rng.randrange(len(data) + 1)
                    data[at:at] = rng.randbytes(rng.randrange(1, 40))
                elif data:
                    at = rng.randrange(len(data))
                    del data[at:at + rng.randrange(1, 40)]
            data = bytes(data[:args.max_len])
        else:
            data = rng.randbytes(rng.randrange(1, args.max_len))
        try:
            target(data)
        except Exception:  # noqa: BLE001 - any exception is a crash: keep its input
            traceback.print_exc()
            path = save_crash(args, data)
            print(f"\nCRASH after {stats.inputs} inputs; input saved to {path}", flush=True)
            stats.report("random")
            return 1
        if len(pool) < 256:
            pool.append(data)
        else:
            pool[rng.randrange(256)] = data
    final_check(stats)
    stats.report("random")
    return 0


def run_atheris(args, stats: Stats) -> int:
    import atheris

    # Coverage for all of usertcp: importing the stack imports usertcp.tcp and usertcp.wire.
    with atheris.instrument_imports(include=["usertcp"]):
        import usertcp.stack  # noqa: F401
    target = make_target(stats, args)

    def one_input(data: bytes) -> None:
        if stats.done():
            # libFuzzer's own stop does not come back to Python: finish here.
            final_check(stats)
            stats.report("atheris")
            sys.stdout.flush()
            os._exit(0)
        target(data)

    Path(args.artifacts).mkdir(parents=True, exist_ok=True)
    corpus = Path(args.corpus or tempfile.mkdtemp(prefix="usertcp-corpus-"))
    corpus.mkdir(parents=True, exist_ok=True)
    if not any(corpus.iterdir()):
        # Seeds of every length: libFuzzer alone starts from tiny inputs, which here decode
        # to a World and one or two operations.
        rng = random.Random(args.seed)
        for i in range(64):
            (corpus / f"seed-{i:02}").write_bytes(rng.randbytes(rng.randrange(16, args.max_len)))
    argv = [sys.argv[0], f"-seed={args.seed}", f"-max_len={args.max_len}", "-len_control=0",
            f"-max_total_time={int(args.seconds) + 120}", "-timeout=120",
            f"-artifact_prefix={args.artifacts.rstrip('/')}/", "-print_final_stats=1",
            str(corpus)]
    print(f"corpus: {corpus}   crash inputs: {args.artifacts}", file=sys.stderr, flush=True)
    atheris.Setup(argv, one_input)
    atheris.Fuzz()  # does not return
    return 0


def reproduce(path: str, args) -> int:
    from tests.stack.test_fuzz import run_ops

    data = Path(path).read_bytes()
    world = run_ops(data, max_ops=args.max_ops)
    print(f"ran {sum(world.ops.values())} operations, fed {sum(world.fed.values())} packets: "
          f"{dict(world.ops)}")
    world.fresh_connection_check()
    print("no failure: invariants held and fresh connections completed")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engine", choices=("auto", "atheris", "random"), default="auto")
    p.add_argument("--seconds", type=float, default=60.0, help="wall-time budget (default 60)")
    p.add_argument("--packets", type=int, default=10**12,
                   help="stop after feeding this many packets (default: no bound)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--max-len", type=int, default=4096, help="largest input in bytes")
    p.add_argument("--max-ops", type=int, default=400, help="operations per input at most")
    p.add_argument("--check-every", type=int, default=500,
                   help="a fresh-connection check after every N inputs (default 500)")
    p.add_argument("--corpus", help="atheris: a directory to keep the corpus in")
    p.add_argument("--artifacts", default=os.path.join(tempfile.gettempdir(), "usertcp-fuzz"),
                   help="where crash inputs go")
    p.add_argument("--reproduce", metavar="FILE", help="run one saved input and exit")
    args = p.parse_args(argv)
    if args.reproduce:
        return reproduce(args.reproduce, args)
    engine = args.engine
    if engine != "random":
        try:
            import atheris  # noqa: F401
        except ImportError:
            if engine == "atheris":
                print("atheris is not installed: pip install atheris", file=sys.stderr)
                return 2
            print("atheris not available: using --engine random", file=sys.stderr)
            engine = "random"
        else:
            engine = "atheris"
    stats = Stats(args)
    if engine == "random":
        return run_random(args, stats)
    return run_atheris(args, stats)


if __name__ == "__main__":
    sys.exit(main())
