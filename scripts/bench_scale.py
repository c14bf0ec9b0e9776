#!/usr/bin/env python3
"""Memory at scale: RSS of a usertcp process per idle connection and per TIME-WAIT entry.

Phases (each in a private network namespace made here, `utcp-scale-<pid>-<n>`, deleted after):

  idle       a usertcp server process (`_server`: usertcp.aio.Stack on a TUN device, one
             `create_server` with a minimal asyncio.Protocol that keeps its transport and
             nothing else) accepts N connections from kernel sockets and holds them idle.
             The TUN's kernel side has --addresses addresses (10.7.0.1, 10.7.0.3, ...); the
             clients (`_client`, as many processes as RLIMIT_NOFILE needs) bind each socket
             to one of them and a port of its own, so no 4-tuple repeats. The server's RSS
             (VmRSS of /proc/PID/status) is read once it holds W connections (--warm: code
             and tables in use) and once it holds N; the figure is (RSS_N - RSS_W) / (N - W).
  streams    the same with `start_server` and asyncio streams: a callback that awaits
             reader.read() (a task, a StreamReader and a StreamWriter per connection).
  time-wait  the server's protocol closes each connection as it is accepted, so usertcp
             closes first and holds TIME-WAIT (--msl long enough that none expires during
             the run): RSS per entry in bytes, the same way, once the engine holds N entries.
  engine     two pure engines in this process (no device, no asyncio), one connecting N
             times to the other's 8 listening ports: microseconds per connect + handshake +
             accept, also without the cyclic garbage collector's time (its full passes grow
             with what is alive: amortized O(1) per object, but lumpy over a tenth).

O(1) per connection: column "us/conn first/last" is, for the server phases, the server's CPU
time (time.process_time) per accepted connection over the first and the last tenth of N; for
the engine, wall time per connect + accept over the same tenths. "conn/s" is the clients' rate
after the warm mark.

Run as root, with the project's interpreter (100,000 connections take 15-25 s a phase):

    .venv/bin/python scripts/bench_scale.py                         # all phases, N = 100,000
    .venv/bin/python scripts/bench_scale.py --connections 10000 --phases idle,time-wait
    .venv/bin/python scripts/bench_scale.py --json

The same file is the server and the client that run inside the namespace (`_server ...`,
`_client ...`). Every namespace and process is made here and ended by name and PID on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import os
import resource
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import ClassVar

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

TUN = "scale0"
STACK_ADDR = "10.7.0.100"
PREFIX = 24
PORT = 9
PHASES = ("idle", "streams", "time-wait", "engine")
READY_TIMEOUT = 20.0
POLL = 0.05
SETTLE = 0.5  # the server's counts unchanged this long: the plateau is reached
FIRST_PORT = 1024


def log(msg: str) -> None:
    print(f"bench_scale: {msg}", file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


def kernel_addresses(n: int) -> list[str]:
    """The TUN's kernel-side addresses: 10.7.0.1 (the one Stack.open sets), then 10.7.0.3..."""
    extra = [f"10.7.0.{k}" for k in range(3, 3 + n - 1)]
    return ["10.7.0.1", *extra]


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


# ---------------------------------------------------------------------------- the server

class IdleProtocol(asyncio.Protocol):
    """Keeps its transport and nothing else; counts accepts (CPU time every `step`)."""

    __slots__ = ("transport",)
    accepted = 0
    marks: ClassVar[list] = []
    step = 1000

    def connection_made(self, transport) -> None:
        self.transport = transport
        cls = IdleProtocol
        cls.accepted += 1
        if cls.accepted % cls.step == 0:
            cls.marks.append((cls.accepted, time.process_time()))

    def data_received(self, data) -> None:
        pass

    def connection_lost(self, exc) -> None:
        self.transport = None


class ClosingProtocol(IdleProtocol):
    """Closes at once: usertcp sends the first FIN and ends in TIME-WAIT."""

    __slots__ = ()

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        transport.close()


async def _streams_callback(reader, writer) -> None:
    IdleProtocol.connection_made(IdleProtocol(), writer.transport)
    with contextlib.suppress(ConnectionError, TimeoutError):
        await reader.read()
    writer.close()


def write_status(path: str, status: dict) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(status, f)
    os.replace(path + ".tmp", path)


async def serve(args: argparse.Namespace) -> None:
    import logging

    import structlog

    from usertcp.aio import Stack
    from usertcp.tcp.config import TcpConfig

    # Warnings only: a state-change line per connection would measure the logger.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
                        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))
    IdleProtocol.step = max(args.max // 100, 1)
    IdleProtocol.marks = [(0, time.process_time())]
    cfg = TcpConfig(max_connections=args.max + 1024, msl=args.msl, syn_backlog=8192,
                    backlog=8192)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    async with Stack.open(TUN, STACK_ADDR, f"10.7.0.1/{PREFIX}", config=cfg) as stack:
        if args.app == "streams":
            await stack.start_server(_streams_callback, PORT, backlog=8192)
        else:
            factory = ClosingProtocol if args.app == "close" else IdleProtocol
            await stack.create_server(factory, PORT, backlog=8192)
        core = stack.core
        while not stop.is_set():
            status = {"ready": True, "accepted": IdleProtocol.accepted,
                      "live": core.connection_count(), "time_wait": core.time_wait_count(),
                      "marks": IdleProtocol.marks, "rss_kb": rss_kb(os.getpid())}
            write_status(args.status, status)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)


def server_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="bench_scale.py _server")
    p.add_argument("--app", choices=("protocol", "streams", "close"), required=True)
    p.add_argument("--status", required=True)
    p.add_argument("--max", type=int, required=True)
    p.add_argument("--msl", type=float, default=3600.0)
    asyncio.run(serve(p.parse_args(argv)))
    return 0


# ---------------------------------------------------------------------------- the client

def nofile_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one (raising that takes CAP_SYS_RESOURCE)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def client_main(argv: list[str]) -> int:
    """Open connections `first` .. `first + count - 1` (at most `window` in progress), each
    from its own address and port. hold: keep them open until a line on stdin; close: wait
    for the server's FIN and close."""
    p = argparse.ArgumentParser(prog="bench_scale.py _client")
    p.add_argument("--addresses", required=True)
    p.add_argument("--first", type=int, required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--mode", choices=("hold", "close"), required=True)
    p.add_argument("--window", type=int, default=256)
    p.add_argument("--timeout", type=float, default=600.0)
    args = p.parse_args(argv)
    limit = nofile_limit()
    if (args.count if args.mode == "hold" else args.window) > limit - 64:
        raise BenchError(f"{args.count} sockets exceed RLIMIT_NOFILE {limit}")
    addrs = args.addresses.split(",")
    started = time.monotonic()
    deadline = started + args.timeout
    sel = selectors.DefaultSelector()
    held: list[socket.socket] = []
    opened = done = errors = in_progress = 0
    while done + errors < args.count:
        if time.monotonic() > deadline:
            print(json.dumps({"phase": "timeout", "done": done, "errors": errors}), flush=True)
            return 1
        while in_progress < args.window and opened < args.count:
            i = args.first + opened
            opened += 1
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.bind((addrs[i % len(addrs)], FIRST_PORT + i // len(addrs)))
            err = sock.connect_ex((STACK_ADDR, PORT))
            if err not in (0, errno.EINPROGRESS):
                sock.close()
                errors += 1
                continue
            sel.register(sock, selectors.EVENT_WRITE, "connect")
            in_progress += 1
        for key, _ in sel.select(0.5):
            sock = key.fileobj
            if key.data == "connect":
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    ok = False
                elif args.mode == "hold":
                    held.append(sock)
                    ok = True
                else:
                    sel.modify(sock, selectors.EVENT_READ, "eof")
                    continue
            else:
                try:
                    ok = not sock.recv(1)  # the server's FIN, and no data
                except OSError:
                    ok = False
            sel.unregister(sock)
            if not ok or args.mode == "close":
                sock.close()
            in_progress -= 1
            done += ok
            errors += not ok
    print(json.dumps({"phase": "done", "done": done, "errors": errors,
                      "seconds": round(time.monotonic() - started, 3)}), flush=True)
    if args.mode == "hold":
        sys.stdin.readline()  # held until the parent has read the RSS
    return 0


# ---------------------------------------------------------------------------- the parent

def read_status(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def wait_status(path: str, pred, what: str, deadline: float, proc) -> dict:
    """Poll the server's status file until pred(status); then until it stops changing."""
    last = None
    stable_since = None
    while True:
        if proc.poll() is not None:
            raise BenchError(f"the usertcp server exited ({proc.returncode}) waiting for {what}")
        status = read_status(path)
        now = time.monotonic()
        if status is not None and pred(status):
            key = (status["accepted"], status["live"], status["time_wait"])
            if key != last:
                last, stable_since = key, now
            elif now - stable_since >= SETTLE:
                return status
        if now > deadline:
            raise BenchError(f"timed out waiting for {what}: {status}")
        time.sleep(POLL)


def read_line(proc, deadline: float, what: str) -> dict:
    import select

    buf = b""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BenchError(f"timed out waiting for the client's {what}")
        ready, _, _ = select.select([proc.stdout], [], [], min(remaining, 1.0))
        if ready:
            chunk = os.read(proc.stdout.fileno(), 1 << 16)
            if not chunk:
                raise BenchError(f"the client exited ({proc.wait()}) before its {what}")
            buf += chunk
            if b"\n" in buf:
                line, _, rest = buf.partition(b"\n")
                if rest:
                    raise BenchError(f"unexpected client output: {rest[:200]!r}")
                return json.loads(line)


def per_window(marks: list, n: int, tenth: str, scale: float) -> float | None:
    """Time per item over the first or last tenth of n, from (count, time) marks."""
    by_count = {int(c): t for c, t in marks}
    lo, hi = (0, n // 10) if tenth == "first" else (n - n // 10, n)
    if lo not in by_count or hi not in by_count or hi == lo:
        return None
    return (by_count[hi] - by_count[lo]) / (hi - lo) * scale


def start_clients(ns, addrs: list[str], first: int, count: int, mode: str,
                  args: argparse.Namespace) -> list:
    """Client processes for connections first .. first + count - 1: as many as the file
    descriptor limit needs when they hold their sockets."""
    per = count if mode == "close" else max(nofile_limit() - 1024, 1024)
    procs = []
    for start in range(first, first + count, per):
        procs.append(ns.popen([sys.executable, os.path.abspath(__file__), "_client",
                               "--addresses", ",".join(addrs), "--first", str(start),
                               "--count", str(min(per, first + count - start)),
                               "--mode", mode, "--timeout", str(args.timeout)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              start_new_session=True))
    return procs


def wait_clients(procs: list, deadline: float) -> float:
    """Wait for every client's "done" line; the longest client's seconds."""
    seconds = 0.0
    for proc in procs:
        line = read_line(proc, deadline, "end")
        if line.get("phase") != "done" or line.get("errors"):
            raise BenchError(f"client: {line}")
        seconds = max(seconds, line["seconds"])
    return seconds


def release_clients(procs: list) -> None:
    for proc in procs:
        with contextlib.suppress(OSError):
            proc.stdin.write(b"exit\n")
            proc.stdin.close()


def run_phase(phase: str, args: argparse.Namespace, tmp: str) -> dict:
    from usertcp.netns import NetNS

    n = args.connections
    warm = min(args.warm, n // 2)
    app = {"idle": "protocol", "streams": "streams", "time-wait": "close"}[phase]
    mode = "close" if phase == "time-wait" else "hold"
    status_path = os.path.join(tmp, f"{phase}.json")
    deadline = time.monotonic() + args.timeout
    started = time.monotonic()
    if phase == "time-wait":
        def reached(k):
            return lambda s: s["time_wait"] >= k and s["live"] == 0

        def held(s):
            return s["time_wait"]
    else:
        def reached(k):
            return lambda s: s["live"] >= k and s["accepted"] >= k

        def held(s):
            return s["live"]
    with NetNS.create("utcp-scale") as ns:
        server = ns.popen([sys.executable, os.path.abspath(__file__), "_server", "--app", app,
                           "--status", status_path, "--max", str(n), "--msl", str(args.msl)],
                          stdin=subprocess.DEVNULL, start_new_session=True)
        wait_status(status_path, lambda s: s.get("ready"), "the server",
                    min(deadline, time.monotonic() + READY_TIMEOUT), server)
        addrs = kernel_addresses(args.addresses)
        for addr in addrs[1:]:
            ns.run(["ip", "addr", "add", f"{addr}/{PREFIX}", "dev", TUN], check=True,
                   capture_output=True)
        rss_start = rss_kb(server.pid)
        clients = start_clients(ns, addrs, 0, warm, mode, args)
        wait_clients(clients, deadline)
        warm_status = wait_status(status_path, reached(warm), f"{warm} connections", deadline,
                                  server)
        rss_warm = rss_kb(server.pid)
        rest = start_clients(ns, addrs, warm, n - warm, mode, args)
        clients += rest
        client_seconds = wait_clients(rest, deadline)
        full = wait_status(status_path, reached(n), f"{n} connections", deadline, server)
        rss_full = rss_kb(server.pid)
        release_clients(clients)
    per = (rss_full - rss_warm) * 1024 / (held(full) - held(warm_status))
    return {
        "phase": phase, "app": app, "connections": n, "warm": warm,
        "rss_start_kb": rss_start, "rss_warm_kb": rss_warm, "rss_full_kb": rss_full,
        "bytes_per_connection": round(per, 1), "client_processes": len(clients),
        "accept_cpu_us_first": per_window(full["marks"], n, "first", 1e6),
        "accept_cpu_us_last": per_window(full["marks"], n, "last", 1e6),
        "connections_per_second": round((n - warm) / client_seconds) if client_seconds else None,
        "seconds": round(time.monotonic() - started, 1),
    }


def engine_phase(args: argparse.Namespace) -> dict:
    """Pure engines: connect + handshake + accept, timed over the first and last tenth, also
    without the time the cyclic garbage collector took (its full passes grow with what is
    alive: amortized O(1) per object, but lumpy over a tenth)."""
    import gc

    from usertcp.stack import Stack
    from usertcp.tcp.config import TcpConfig

    n = args.connections
    cfg = TcpConfig(max_connections=n + 1024, syn_backlog=1 << 20, backlog=1 << 20,
                    msl=args.msl)
    a, b = Stack("10.0.0.1", config=cfg), Stack("10.0.0.2", config=cfg)
    ports = list(range(8000, 8008))  # 8 x 28232 ephemeral ports: room for 225,000
    for port in ports:
        b.listen(port)
    in_gc = [0.0, 0.0]  # total, start of the collection under way

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            in_gc[1] = time.perf_counter()
        else:
            in_gc[0] += time.perf_counter() - in_gc[1]

    marks = [(0, time.perf_counter(), 0.0)]
    step = max(n // 100, 1)
    started = time.monotonic()
    gc.callbacks.append(on_gc)
    try:
        for i in range(n):
            a.connect("10.0.0.2", ports[i % len(ports)], 0.0)
            for p in a.packets_to_send(0.0):
                b.receive(p, 0.0, checksum_verified=True)
            for p in b.packets_to_send(0.0):
                a.receive(p, 0.0, checksum_verified=True)
            for p in a.packets_to_send(0.0):
                b.receive(p, 0.0, checksum_verified=True)
            while a.next_event() is not None:
                pass
            while b.next_event() is not None:
                pass
            if (i + 1) % step == 0:
                marks.append((i + 1, time.perf_counter(), in_gc[0]))
            if time.monotonic() - started > args.timeout:
                raise BenchError(f"engine phase: {i} connections in {args.timeout} s")
    finally:
        gc.callbacks.remove(on_gc)
    if b.connection_count() != n or a.connection_count() != n:
        raise BenchError(f"engine phase: {a.connection_count()}/{b.connection_count()} of {n}")
    wall = [(c, t) for c, t, _ in marks]
    no_gc = [(c, t - g) for c, t, g in marks]
    return {"phase": "engine", "connections": n,
            "connect_accept_us_first": per_window(wall, n, "first", 1e6),
            "connect_accept_us_last": per_window(wall, n, "last", 1e6),
            "without_gc_us_first": per_window(no_gc, n, "first", 1e6),
            "without_gc_us_last": per_window(no_gc, n, "last", 1e6),
            "gc_share": round(marks[-1][2] / (marks[-1][1] - marks[0][1]), 3),
            "seconds": round(time.monotonic() - started, 1)}


def fmt(value, spec: str = "{:,.1f}") -> str:
    return "-" if value is None else spec.format(value)


def render(results: list[dict]) -> str:
    rows = [("phase", "app", "N", "RSS warm MB", "RSS N MB", "per conn",
             "us/conn first/last", "conn/s")]
    for r in results:
        if r["phase"] == "engine":
            rows.append(("engine", "pure Stack x2", f"{r['connections']:,}", "-", "-", "-",
                         f"{fmt(r['connect_accept_us_first'])} / "
                         + f"{fmt(r['connect_accept_us_last'])}", "-"))
            rows.append(("", "  without GC", "", "", "", "",
                         f"{fmt(r['without_gc_us_first'])} / "
                         + f"{fmt(r['without_gc_us_last'])}", ""))
            continue
        per = r["bytes_per_connection"]
        per_text = f"{per:,.0f} B" if r["phase"] == "time-wait" else f"{per / 1024:,.2f} KB"
        rows.append((r["phase"], r["app"], f"{r['connections']:,}",
                     f"{r['rss_warm_kb'] / 1024:,.1f}", f"{r['rss_full_kb'] / 1024:,.1f}",
                     per_text,
                     f"{fmt(r['accept_cpu_us_first'])} / {fmt(r['accept_cpu_us_last'])}",
                     fmt(r["connections_per_second"], "{:,.0f}")))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if i < 2 else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(row, widths))) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connections", type=int, default=100_000, metavar="N")
    p.add_argument("--phases", default=",".join(PHASES),
                   help=f"comma-separated, of {', '.join(PHASES)} (default: all)")
    p.add_argument("--addresses", type=int, default=8,
                   help="addresses on the TUN's kernel side the client binds to (default 8)")
    p.add_argument("--warm", type=int, default=2000,
                   help="connections before the first RSS reading (default 2000)")
    p.add_argument("--msl", type=float, default=3600.0,
                   help="the server's MSL: TIME-WAIT lasts 2 MSL (default 3600 s)")
    p.add_argument("--timeout", type=float, default=900.0, help="bound per phase (s)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = p.parse_args(argv)
    phases = [x.strip() for x in args.phases.split(",") if x.strip()]
    bad = [x for x in phases if x not in PHASES]
    if bad or not phases:
        p.error(f"unknown phase {', '.join(bad) or '(none)'}; choose from {', '.join(PHASES)}")
    if args.connections < 10:
        p.error("--connections must be at least 10")
    if not 1 <= args.addresses <= 96:
        p.error("--addresses must be in 1..96")
    if (65536 - FIRST_PORT) * args.addresses < args.connections:
        p.error(f"{args.connections} connections need more --addresses")
    args.phases = phases
    return args


def main(argv: list[str]) -> int:
    if argv[:1] == ["_server"]:
        return server_main(argv[1:])
    if argv[:1] == ["_client"]:
        return client_main(argv[1:])
    args = parse_args(argv)
    from usertcp.netns import reap_stale, unavailable_reason

    if any(x != "engine" for x in args.phases):
        reason = unavailable_reason()
        if reason:
            print(f"bench_scale: {reason}", file=sys.stderr)
            return 2
        reap_stale("utcp-scale")
    tmp = tempfile.mkdtemp(prefix="bench-scale-")

    def interrupted(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    results = []
    try:
        for phase in args.phases:
            log(f"{phase}: {args.connections:,} connections")
            result = engine_phase(args) if phase == "engine" else run_phase(phase, args, tmp)
            results.append(result)
    except BenchError as exc:
        print(f"bench_scale: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench_scale: interrupted", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps({"results": results, "config": {
            "connections": args.connections, "addresses": args.addresses, "warm": args.warm,
            "msl": args.msl, "python": sys.version.split()[0]}}, indent=2))
    else:
        print(render(results))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except BenchError as exc:
        print(f"bench_scale: {exc}", file=sys.stderr)
        sys.exit(1)
