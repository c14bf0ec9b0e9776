#!/usr/bin/env python3
"""Soak usertcp with mixed load over a lossy link for a bounded time; exit non-zero on any error.

Two stacks run in one private network namespace made here, each on its own TUN device:

  echo   usertcp echo on utcp0 (10.7.0.2, kernel side 10.7.0.1/24)
  http   usertcp http on utcp1 (10.7.1.2, kernel side 10.7.1.1/24), serving one file of random bytes

and three kinds of kernel clients run against them until the time is up:

  bulk   --bulk-streams connections at a time, each echoing --bulk-mb MB of seeded random bytes,
         checked by SHA-256, then the next;
  short  one connection after another: connect, 100 bytes echoed, close;
  http   downloads of the file, checked by SHA-256, alternately one per connection
         (Connection: close) and several on one keep-alive connection.

The link is made bad by nftables dropping --loss % of the packets on both TUN interfaces, both
ways (default 2), or, with --fault SPEC, by the stacks' own seeded fault injector (`usertcp
--fault`, e.g. seed=7,loss=0.02,duplicate=0.01,reorder=0.05,reorder_depth=10,delay=0.001).

Every --sample seconds each stack is asked for its status (SIGUSR1): connections, counters, drops
and RSS; one line per sample is printed. At the end: bytes moved (an echo counts both ways, a
download once), connections served, errors (any failed or corrupted transfer, a client that did
not finish, a stack that crashed or exited badly, a traceback or an error in a stack's log) and
RSS over time. Exit status 0 only without any error.

Run as root, with the project's interpreter (not part of the test suite):

    .venv/bin/python scripts/soak.py --seconds 60
    .venv/bin/python scripts/soak.py --seconds 600 --loss 5 --json
    .venv/bin/python scripts/soak.py --seconds 120 --fault seed=7,loss=0.02,reorder=0.05,reorder_depth=10

Every wait is bounded; every process is started here and stopped by its PID; the namespace is
deleted on exit, also on Ctrl-C or an error. The namespace and stack helpers are the integration
tests' (tests/integration/netns.py, stackproc.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.integration.netns import NetNS, unavailable_reason
from tests.integration.stackproc import StackProcess

MAX_SECONDS = 24 * 3600
STACKS = {  # name: (service, tun, address, host side, port)
    "echo": ("echo", "utcp0", "10.7.0.2", "10.7.0.1/24", 7),
    "http": ("http", "utcp1", "10.7.1.2", "10.7.1.1/24", 80),
}
FILE_NAME = "soak.bin"

# One client kind per process; runs until its deadline, then prints one JSON object. Every socket
# operation has a timeout; a failure is recorded and the loop goes on.
CLIENT = r"""
import hashlib, json, random, socket, sys, threading, time
kind, host, port, seconds, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
extra = sys.argv[6:]
deadline = time.monotonic() + seconds
TIMEOUT = 60.0
stats = {"kind": kind, "bytes": 0, "connections": 0, "operations": 0, "errors": []}
lock = threading.Lock()

def error(what):
    with lock:
        stats["errors"].append(what)

def echo_bulk(stream):
    rng = random.Random(seed * 1000 + stream)
    size = int(float(extra[0]) * 1024 * 1024)
    n = 0
    while time.monotonic() < deadline:
        n += 1
        data = rng.randbytes(size)
        try:
            s = socket.create_connection((host, port), timeout=TIMEOUT)
            def send():
                try:
                    s.sendall(data)
                    s.shutdown(socket.SHUT_WR)
                except OSError as exc:
                    error(f"bulk {stream}.{n} send: {exc!r}")
            sender = threading.Thread(target=send)
            sender.start()
            h, got = hashlib.sha256(), 0
            while chunk := s.recv(1 << 20):
                h.update(chunk)
                got += len(chunk)
            sender.join(TIMEOUT)
            s.close()
            if got != size or h.digest() != hashlib.sha256(data).digest():
                error(f"bulk {stream}.{n}: corrupt ({got} of {size} bytes)")
            with lock:
                stats["bytes"] += 2 * size
                stats["connections"] += 1
                stats["operations"] += 1
        except OSError as exc:
            error(f"bulk {stream}.{n}: {exc!r}")

def short():
    n = 0
    while time.monotonic() < deadline:
        n += 1
        msg = b"%d " % n + bytes(100)
        try:
            with socket.create_connection((host, port), timeout=TIMEOUT) as s:
                s.sendall(msg)
                s.shutdown(socket.SHUT_WR)
                got = b""
                while chunk := s.recv(4096):
                    got += chunk
            if got != msg:
                error(f"short {n}: got {got[:40]!r}")
            stats["bytes"] += 2 * len(msg)
            stats["connections"] += 1
            stats["operations"] += 1
        except OSError as exc:
            error(f"short {n}: {exc!r}")

def read_response(f):
    status = f.readline()
    headers = {}
    while (line := f.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = f.read(int(headers.get("content-length", "-1")))
    return status, body

def http():
    want, size = extra[0], int(extra[1])
    n = 0
    while time.monotonic() < deadline:
        n += 1
        keep_alive = n % 2 == 0
        requests = 4 if keep_alive else 1
        try:
            with socket.create_connection((host, port), timeout=TIMEOUT) as s:
                f = s.makefile("rb")
                for r in range(requests):
                    last = r == requests - 1
                    conn = "close" if last else "keep-alive"
                    s.sendall(f"GET /soak.bin HTTP/1.1\r\nHost: soak\r\nConnection: {conn}\r\n\r\n".encode())
                    status, body = read_response(f)
                    if not status.startswith(b"HTTP/1.1 200") or len(body) != size or hashlib.sha256(body).hexdigest() != want:
                        error(f"http {n}.{r}: {status.strip()!r}, {len(body)} of {size} bytes")
                        break
                    stats["bytes"] += size
                    stats["operations"] += 1
                if f.read(1):
                    error(f"http {n}: bytes after the last response")
            stats["connections"] += 1
        except OSError as exc:
            error(f"http {n}: {exc!r}")

if kind == "bulk":
    streams = int(extra[1])
    threads = [threading.Thread(target=echo_bulk, args=(i,)) for i in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 3 * TIMEOUT)
elif kind == "short":
    short()
else:
    http()
stats["errors_total"] = len(stats["errors"])
stats["errors"] = stats["errors"][:20]
print(json.dumps(stats), flush=True)
"""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def nft_loss(ns: NetNS, interfaces: list[str], percent: int) -> None:
    """Drop `percent` % of the packets received or sent on any of `interfaces`."""
    names = ", ".join(f'"{i}"' for i in interfaces)
    match = "" if percent == 100 else f"numgen random mod 100 < {percent} "
    rules = f"""
add table inet soak_loss
flush table inet soak_loss
table inet soak_loss {{
    chain input {{
        type filter hook input priority 0; policy accept;
        {f'iifname {{ {names} }} {match}drop' if percent else ''}
    }}
    chain output {{
        type filter hook output priority 0; policy accept;
        {f'oifname {{ {names} }} {match}drop' if percent else ''}
    }}
}}
"""
    ns.run(["nft", "-f", "-"], input=rules, text=True, check=True, capture_output=True)


def status(stack: StackProcess, timeout: float = 10.0) -> dict | None:
    """The stack's SIGUSR1 status, read from the end of its log; None if it did not answer."""
    offset = stack.log_path.stat().st_size
    try:
        os.kill(stack.pid, signal.SIGUSR1)
    except ProcessLookupError:
        return None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(stack.log_path, "rb") as f:
            f.seek(offset)
            for line in f.read().splitlines():
                if b'"event": "connections"' in line:
                    try:
                        return json.loads(line)
                    except ValueError:
                        break
        if stack.proc.poll() is not None:
            return None
        time.sleep(0.05)
    return None


def summarize(snap: dict) -> dict:
    states: dict[str, int] = {}
    for row in snap["table"]:
        if row["conn_id"] is not None:
            states[row["state"]] = states.get(row["state"], 0) + 1
    return {"rss_kb": snap["rss_kb"], "states": states}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=60.0, help="how long the load runs (default 60)")
    p.add_argument("--loss", type=int, default=2,
                   help="nftables: drop this %% of packets on the TUN interfaces (default 2)")
    p.add_argument("--fault", help="instead of --loss: the stacks' own --fault SPEC")
    p.add_argument("--no-offload", action="store_true", help="run the stacks with --no-offload")
    p.add_argument("--seed", type=int, default=1, help="seed of the clients' data (default 1)")
    p.add_argument("--bulk-streams", type=int, default=2, help="concurrent bulk echo streams")
    p.add_argument("--bulk-mb", type=float, default=4.0, help="MB per bulk echo (default 4)")
    p.add_argument("--file-mb", type=float, default=1.0, help="size of the http file (default 1)")
    p.add_argument("--sample", type=float, default=5.0, help="seconds between status samples")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    a = p.parse_args(argv)
    if not 0 < a.seconds <= MAX_SECONDS:
        p.error(f"--seconds must be in (0, {MAX_SECONDS}]")
    if not 0 <= a.loss <= 100:
        p.error("--loss must be a percentage")
    if reason := unavailable_reason():
        log(f"soak: {reason}")
        return 2

    errors: list[str] = []
    samples: dict[str, list[dict]] = {name: [] for name in STACKS}
    with tempfile.TemporaryDirectory(prefix="usertcp-soak-") as tmp, NetNS.create("soak") as ns:
        tmp_path = Path(tmp)
        root = tmp_path / "www"
        root.mkdir()
        blob = os.urandom(int(a.file_mb * 1024 * 1024))
        (root / FILE_NAME).write_bytes(blob)
        blob_sha = hashlib.sha256(blob).hexdigest()

        stacks: dict[str, StackProcess] = {}
        for name, (service, tun, address, host, port) in STACKS.items():
            args = [service, "--tun", tun, "--address", address, "--host-address", host]
            if service == "http":
                args += ["--root", str(root)]
            if a.fault:
                args += ["--fault", a.fault]
            if a.no_offload:
                args += ["--no-offload"]
            stack = StackProcess(ns, args, tmp_path / f"{name}.log")
            stack.wait_ready()
            stacks[name] = stack
            ns.wait_port(address, port)
        if not a.fault:
            nft_loss(ns, [STACKS[n][1] for n in STACKS], a.loss)
        link = f"--fault {a.fault}" if a.fault else f"nft loss {a.loss} %"
        log(f"soak: {a.seconds:.0f} s, {link}, offload {'off' if a.no_offload else 'on'}, "
            f"namespace {ns.name}")

        echo_addr, echo_port = STACKS["echo"][2], STACKS["echo"][4]
        http_addr, http_port = STACKS["http"][2], STACKS["http"][4]
        common = [str(a.seconds), str(a.seed)]
        clients = {
            "bulk": [echo_addr, str(echo_port), *common, str(a.bulk_mb), str(a.bulk_streams)],
            "short": [echo_addr, str(echo_port), *common],
            "http": [http_addr, str(http_port), *common, blob_sha, str(len(blob))],
        }
        procs = {
            kind: ns.popen([sys.executable, "-c", CLIENT, kind, *args],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for kind, args in clients.items()
        }
        outputs: dict[str, tuple[str, str]] = {}

        def collect(kind: str, proc: subprocess.Popen) -> None:
            try:
                outputs[kind] = proc.communicate(timeout=a.seconds + 300)
            except subprocess.TimeoutExpired:
                outputs[kind] = ("", "did not finish in time")

        readers = [threading.Thread(target=collect, args=item, daemon=True) for item in procs.items()]
        for t in readers:
            t.start()

        t0 = time.monotonic()
        next_sample = t0
        while any(t.is_alive() for t in readers) and time.monotonic() < t0 + a.seconds + 310:
            if time.monotonic() >= next_sample:
                line = [f"{time.monotonic() - t0:7.1f} s"]
                for name, stack in stacks.items():
                    snap = status(stack)
                    if snap is None:
                        errors.append(f"{name} stack did not answer SIGUSR1 "
                                      f"(exit {stack.proc.poll()})")
                        continue
                    s = summarize(snap)
                    s["t"] = round(time.monotonic() - t0, 1)
                    s["counters"] = snap["counters"]
                    s["drops"] = snap["drops"]
                    samples[name].append(s)
                    line.append(f"{name}: rss {s['rss_kb'] / 1024:.1f} MB, "
                                f"{sum(s['states'].values())} conns")
                log("  ".join(line))
                next_sample += a.sample
            time.sleep(0.1)
        for t in readers:
            t.join(1)

        results: dict[str, dict] = {}
        for kind, proc in procs.items():
            out, err = outputs.get(kind, ("", "no output"))
            try:
                results[kind] = json.loads(out.strip().splitlines()[-1])
            except (ValueError, IndexError):
                errors.append(f"{kind} client: no result (exit {proc.poll()}): {err.strip()[-500:]}")
                continue
            errors += [f"{kind}: {e}" for e in results[kind]["errors"]]
            if results[kind]["errors_total"] > len(results[kind]["errors"]):
                errors.append(f"{kind}: ... {results[kind]['errors_total']} errors in all")
        if not a.fault:
            nft_loss(ns, [STACKS[n][1] for n in STACKS], 0)
        finals = {name: status(stack) for name, stack in stacks.items()}
        for name, stack in stacks.items():
            code = stack.stop(signal.SIGINT, timeout=15)
            if code != 0:
                errors.append(f"{name} stack exited with {code}")
            text = stack.text()
            if "Traceback" in text:
                errors.append(f"{name} stack log has a traceback: "
                              f"{text[text.index('Traceback'):][:1500]}")
            for event in stack.events():
                if event.get("level") in ("error", "critical"):
                    errors.append(f"{name} stack logged an error: {event}")

    report = {
        "seconds": a.seconds,
        "link": link,
        "offload": not a.no_offload,
        "clients": {k: {f: v for f, v in r.items() if f != "errors"} for k, r in results.items()},
        "bytes": sum(r["bytes"] for r in results.values()),
        "connections": sum(r["connections"] for r in results.values()),
        "stacks": {
            name: {
                "rss_kb": [s["rss_kb"] for s in samples[name]],
                "final_counters": (finals[name] or {}).get("counters"),
                "final_drops": (finals[name] or {}).get("drops"),
            } for name in STACKS
        },
        "errors": errors,
    }
    if a.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"soak: {a.seconds:.0f} s, {link}, offload {'off' if a.no_offload else 'on'}")
        for kind, r in report["clients"].items():
            print(f"  {kind:6} {r['bytes'] / 1e6:10.1f} MB  {r['connections']:7} connections  "
                  f"{r['operations']:7} operations  {r['errors_total']} errors")
        print(f"  total  {report['bytes'] / 1e6:10.1f} MB  {report['connections']:7} connections")
        for name, st in report["stacks"].items():
            rss = st["rss_kb"]
            if rss:
                print(f"  {name} stack RSS (MB): first {rss[0] / 1024:.1f}, min {min(rss) / 1024:.1f}, "
                      f"max {max(rss) / 1024:.1f}, last {rss[-1] / 1024:.1f} "
                      f"({len(rss)} samples: {' '.join(f'{x / 1024:.0f}' for x in rss)})")
            counters = st["final_counters"] or {}
            keys = ("retransmits", "rto_expired", "fast_retransmits", "rx_out_of_order",
                    "syn_cookies_sent", "listen_overflow", "timeouts", "resets_received")
            print(f"  {name} stack counters: "
                  + ", ".join(f"{k} {counters[k]}" for k in keys if counters.get(k)))
            if st["final_drops"]:
                print(f"  {name} stack drops: {st['final_drops']}")
        print(f"  errors: {len(errors)}")
        for e in errors[:30]:
            print(f"    {e}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
