#!/usr/bin/env python3
"""`--workers 1` against `--workers 2`, and asyncio's loop against uvloop, in one run.

Each configuration (workers x loop; uvloop only where installed) serves in a private network
namespace made for each measurement (`bench-workers-<pid>-<n>`, deleted after it, also on
Ctrl-C or an error), with the kernel's sockets as clients in the same namespace:

  conn/s   --procs client processes, each keeping --concurrency connections in flight: connect,
           1 byte to `usertcp echo`, its echo back, close; counted over --seconds;
  MB/s     --streams connections at once, each a thread, upload to `usertcp discard` for
           --seconds; every byte sent is counted once the connection's FIN is answered
           (1 MB = 10^6 bytes).

Rounds alternate: every round measures every configuration, in an order rotated from round to
round, so all see the same machine. The table shows the median per configuration and the
ratios 2 workers / 1 worker and uvloop / asyncio; --json prints every round's figures too. The
aim of issue 12 is >= 1.6x conn/s from 2 workers on 2 cores; the clients and the kernel share
those cores with the workers.

Run as root, with the project's interpreter:

    .venv/bin/python scripts/bench_workers.py                    # 3 rounds of 3 s figures
    .venv/bin/python scripts/bench_workers.py --rounds 1 --seconds 2 --json
    .venv/bin/python scripts/bench_workers.py --loops asyncio    # without uvloop

The clients are this file too (`_cps ...`, `_upload ...`), standard library only, one JSON line;
the conn/s one is scripts/bench_client.c (`conc` mode, same JSON) where `cc` builds it, so that
the client leaves the cores to the stack (--client auto|c|python; the report says which).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
STACK = "10.7.0.2"
PORTS = {"echo": 7, "discard": 9}
MB = 1_000_000
READY_TIMEOUT = 20.0
AIM_CPS_RATIO = 1.6
C_CLIENT_SRC = os.path.join(HERE, "bench_client.c")
COMPILE_TIMEOUT = 60.0


# =========================================================================================
# Clients (inside the namespace; each prints one JSON object)
# =========================================================================================

def client_cps(host: str, port: str, seconds: str, concurrency: str, start_at: str) -> dict:
    """Keep `concurrency` one-byte echo connections in flight, non-blocking, for `seconds`."""
    addr, limit, width = (host, int(port)), float(seconds), int(concurrency)
    time.sleep(max(0.0, float(start_at) - time.time()))  # all client processes start together
    sel = selectors.DefaultSelector()
    done = errors = 0
    deadline = time.monotonic() + limit

    def open_one() -> None:
        sock = socket.socket()
        sock.setblocking(False)
        err = sock.connect_ex(addr)
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            raise OSError(err, os.strerror(err))
        sel.register(sock, selectors.EVENT_WRITE, "connecting")

    for _ in range(width):
        open_one()
    while time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.2):
            sock = key.fileobj
            if key.data == "connecting":
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    sock.send(b"x")
                    sel.modify(sock, selectors.EVENT_READ, "echo")
                    continue
                ok = False
            else:
                try:
                    ok = sock.recv(1) == b"x"
                except OSError:
                    ok = False
            sel.unregister(sock)
            sock.close()
            done += ok
            errors += not ok
            open_one()
    for key in list(sel.get_map().values()):
        key.fileobj.close()
    return {"connections": done, "errors": errors, "seconds": limit,
            "cpu_s": time.process_time()}


def client_upload(host: str, port: str, seconds: str, streams: str) -> dict:
    """`streams` threads each send to discard for `seconds`, then half-close and wait for FIN."""
    chunk = memoryview(bytes(range(256)) * 1024)  # 256 KiB
    limit = float(seconds)
    sent = [0] * int(streams)
    failures: list[str] = []
    start = time.monotonic()
    deadline = start + limit

    def stream(i: int) -> None:
        try:
            with socket.create_connection((host, int(port)), timeout=limit + 20) as sock:
                while time.monotonic() < deadline:
                    sock.sendall(chunk)
                    sent[i] += len(chunk)
                sock.shutdown(socket.SHUT_WR)
                while sock.recv(65536):
                    pass
        except OSError as exc:
            failures.append(repr(exc))

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(len(sent))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(limit + 30)
    elapsed = time.monotonic() - start
    return {"bytes": sum(sent), "seconds": elapsed, "mbps": sum(sent) / elapsed / MB,
            "errors": len(failures), "first_error": failures[0] if failures else None}


def client_wait(host: str, port: str, timeout: str, hits: str) -> dict:
    """Ready once `hits` connections in a row succeed (every worker listening)."""
    deadline, need, row = time.monotonic() + float(timeout), int(hits), 0
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            row += 1
            if row >= need:
                return {"ok": True}
        except OSError:
            row = 0
            time.sleep(0.05)
    return {"ok": False}


CLIENTS = {"_cps": client_cps, "_upload": client_upload, "_wait": client_wait}


# =========================================================================================
# The driver (outside)
# =========================================================================================

def _python() -> str:
    venv = os.path.join(REPO, ".venv", "bin", "python")
    return venv if os.path.exists(venv) else sys.executable


def _client(ns, role: str, *args: object, timeout: float) -> dict:
    res = ns.run([_python(), os.path.abspath(__file__), role, *map(str, args)],
                 capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"client {role} failed: {res.stderr.strip()[-500:]}")
    return json.loads(res.stdout)


def _tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of `pid` and its children so far (Linux /proc)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            total += sum(_tree_cpu(int(child)) for child in f.read().split())
    return total


def _machine_cpu() -> tuple[float, float]:
    """CPU seconds the whole machine spent busy, and of those in softirq (Linux /proc/stat):
    what the kernel's own TCP and the TUN cost shows here and in no process."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / tick, softirq / tick


@contextlib.contextmanager
def _service(service: str, workers: int, loop: str):
    """A fresh namespace with `usertcp SERVICE --workers N --loop L` serving in it."""
    sys.path.insert(0, REPO)
    from usertcp.netns import NetNS

    ns = NetNS.create("bench-workers")
    try:
        log = open(os.path.join("/tmp", f"{ns.name}.log"), "wb")  # noqa: SIM115
        proc = ns.popen([_python(), "-m", "usertcp", service, "--workers", str(workers),
                         "--loop", loop, "--log-level", "warning"],
                        stdout=subprocess.DEVNULL, stderr=log, cwd=REPO)
        ready = _client(ns, "_wait", STACK, PORTS[service], READY_TIMEOUT, 8,
                        timeout=READY_TIMEOUT + 10)
        if not ready["ok"] or proc.poll() is not None:
            raise RuntimeError(f"usertcp {service} --workers {workers} --loop {loop} "
                               f"did not start; see {log.name}")
        yield ns, proc.pid
    finally:
        ns.close()  # SIGTERM to the supervisor (which stops its workers), then the namespace
        with contextlib.suppress(Exception):
            log.close()
            os.unlink(log.name)


def build_c_client(tmp: str) -> str:
    """Compile bench_client.c into `tmp` (the namespaces see the same files); its path, or
    RuntimeError saying why not."""
    cc = shutil.which("cc")
    if cc is None:
        raise RuntimeError("no C compiler `cc` on PATH")
    binary = os.path.join(tmp, "bench_client")
    try:
        res = subprocess.run([cc, "-std=c99", "-O2", "-Wall", "-Wextra", "-o", binary,
                              C_CLIENT_SRC], capture_output=True, text=True,
                             timeout=COMPILE_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"cc {C_CLIENT_SRC}: {exc}") from None
    if res.returncode != 0 or not os.access(binary, os.X_OK):
        raise RuntimeError(f"cc {C_CLIENT_SRC} failed: {res.stderr.strip()[-500:]}")
    return binary


def choose_client(args, tmp: str) -> None:
    """Set args.client to 'c' (with args.c_client, the binary) or 'python', as --client asks;
    'auto' falls back to Python when the C client does not build. One line on stderr says which."""
    args.c_client = None
    if args.client == "python":
        print("conn/s client: python (--client python)", file=sys.stderr, flush=True)
        return
    try:
        args.c_client = build_c_client(tmp)
    except RuntimeError as exc:
        if args.client == "c":
            raise
        args.client = "python"
        print(f"conn/s client: python ({exc})", file=sys.stderr, flush=True)
        return
    args.client = "c"
    print(f"conn/s client: c ({C_CLIENT_SRC})", file=sys.stderr, flush=True)


def measure_cps(workers: int, loop: str, args) -> dict:
    with _service("echo", workers, loop) as (ns, pid):
        start_at = time.time() + 1.0  # the client processes need a moment to start
        if args.client == "c":
            cmd = [args.c_client, "conc"]
        else:
            cmd = [_python(), os.path.abspath(__file__), "_cps"]
        cmd += [STACK, PORTS["echo"], args.seconds, args.concurrency, start_at]
        procs = [ns.popen(list(map(str, cmd)), stdout=subprocess.PIPE, text=True)
                 for _ in range(args.procs)]
        time.sleep(max(0.0, start_at - time.time()))
        cpu0 = _tree_cpu(pid)
        busy0, soft0 = _machine_cpu()
        results = []
        for proc in procs:
            out, _ = proc.communicate(timeout=args.seconds + 30)
            result = json.loads(out) if out.strip() else {}
            if proc.returncode != 0 or "connections" not in result:
                raise RuntimeError(f"conn/s client ({args.client}) failed: "
                                   f"{result.get('error', f'exit {proc.returncode}')}")
            results.append(result)
        usertcp_cpu = _tree_cpu(pid) - cpu0
        busy1, soft1 = _machine_cpu()
    done = sum(r["connections"] for r in results)
    return {"cps": done / args.seconds, "connections": done,
            "errors": sum(r["errors"] for r in results),
            # how busy the stack and the clients kept the cores (of seconds * cores)
            "usertcp_cpu_s": usertcp_cpu, "client_cpu_s": sum(r["cpu_s"] for r in results),
            "machine_busy_s": busy1 - busy0, "softirq_s": soft1 - soft0}


def measure_upload(workers: int, loop: str, args) -> dict:
    with _service("discard", workers, loop) as (ns, _pid):
        return _client(ns, "_upload", STACK, PORTS["discard"], args.seconds, args.streams,
                       timeout=args.seconds + 60)


def run(args) -> dict:
    configs = [(w, loop) for loop in args.loops for w in (1, 2)]
    rounds = []
    for r in range(args.rounds):
        order = configs[r % len(configs):] + configs[:r % len(configs)]
        figures = {}
        for workers, loop in order:
            key = f"{workers}w-{loop}"
            print(f"round {r + 1}/{args.rounds}: {key} ...", file=sys.stderr, flush=True)
            figures[key] = {"cps": measure_cps(workers, loop, args),
                            "upload": measure_upload(workers, loop, args)}
        rounds.append(figures)
    medians = {}
    for workers, loop in configs:
        key = f"{workers}w-{loop}"
        medians[key] = {
            "workers": workers, "loop": loop,
            "cps": statistics.median(rd[key]["cps"]["cps"] for rd in rounds),
            "cps_usertcp_cpu_s": statistics.median(rd[key]["cps"]["usertcp_cpu_s"]
                                                   for rd in rounds),
            "cps_client_cpu_s": statistics.median(rd[key]["cps"]["client_cpu_s"]
                                                  for rd in rounds),
            "cps_machine_busy_s": statistics.median(rd[key]["cps"]["machine_busy_s"]
                                                    for rd in rounds),
            "cps_softirq_s": statistics.median(rd[key]["cps"]["softirq_s"] for rd in rounds),
            "upload_mbps": statistics.median(rd[key]["upload"]["mbps"] for rd in rounds),
            "errors": sum(rd[key]["cps"]["errors"] + rd[key]["upload"]["errors"]
                          for rd in rounds)}
    ratios = {}
    for loop in args.loops:
        one, two = medians[f"1w-{loop}"], medians[f"2w-{loop}"]
        ratios[f"2w/1w {loop}"] = {"cps": two["cps"] / one["cps"],
                                   "upload_mbps": two["upload_mbps"] / one["upload_mbps"]}
    if len(args.loops) == 2:
        for w in (1, 2):
            a, u = medians[f"{w}w-asyncio"], medians[f"{w}w-uvloop"]
            ratios[f"uvloop/asyncio {w}w"] = {"cps": u["cps"] / a["cps"],
                                              "upload_mbps": u["upload_mbps"] / a["upload_mbps"]}
    return {"config": {"rounds": args.rounds, "seconds": args.seconds, "procs": args.procs,
                       "concurrency": args.concurrency, "streams": args.streams,
                       "loops": args.loops, "cores": os.cpu_count(), "client": args.client},
            "medians": medians, "ratios": ratios, "rounds": rounds,
            "aim_met": {loop: ratios[f"2w/1w {loop}"]["cps"] >= AIM_CPS_RATIO
                        for loop in args.loops}}


def render(report: dict) -> str:
    seconds = report["config"]["seconds"]
    # cores: CPU seconds per second during conn/s; per CPU-s: conn/s over usertcp's cores
    # machine: all cores busy (of `cores`), softirq among it: the kernel's TCP and the TUN
    lines = [(f"{'configuration':<14} {'conn/s':>7} {'MB/s':>7} {'errors':>6}  "
             f"{'usertcp cores':>13} {'client cores':>12} {'machine busy':>12} "
             f"{'softirq':>7} {'conn per usertcp CPU-s':>22}")]
    for key, m in report["medians"].items():
        cores = m["cps_usertcp_cpu_s"] / seconds
        lines.append(f"{key:<14} {m['cps']:>7.0f} {m['upload_mbps']:>7.1f} {m['errors']:>6}  "
                     f"{cores:>13.2f} {m['cps_client_cpu_s'] / seconds:>12.2f} "
                     f"{m['cps_machine_busy_s'] / seconds:>12.2f} "
                     f"{m['cps_softirq_s'] / seconds:>7.2f} "
                     f"{m['cps'] / max(cores, 1e-9):>22.0f}")
    lines.append("")
    for key, r in report["ratios"].items():
        lines.append(f"{key:<20} conn/s x{r['cps']:.2f}   MB/s x{r['upload_mbps']:.2f}")
    c = report["config"]
    lines.append(f"\nmedian of {c['rounds']} rounds, {c['seconds']} s each; {c['procs']} client "
                 f"processes ({c['client']}) x {c['concurrency']} connections, "
                 f"{c['streams']} upload streams; "
                 f"{c['cores']} cores; aim 2w/1w conn/s >= {AIM_CPS_RATIO}: "
                 + ", ".join(f"{k} {'met' if v else 'not met'}"
                             for k, v in report["aim_met"].items()))
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0, help="per figure (default 3)")
    parser.add_argument("--procs", type=int, default=1, help="conn/s client processes")
    parser.add_argument("--concurrency", type=int, default=64,
                        help="connections in flight per conn/s client process")
    parser.add_argument("--streams", type=int, default=16, help="upload connections at once")
    parser.add_argument("--loops", default=None,
                        help="comma-separated: asyncio,uvloop (default: uvloop where installed)")
    parser.add_argument("--client", choices=("auto", "c", "python"), default="auto",
                        help="the conn/s client: scripts/bench_client.c or Python "
                             "(default auto: c where `cc` builds it)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    if args.loops is None:
        probe = subprocess.run([_python(), "-c", "import uvloop"], check=False,
                               capture_output=True)
        args.loops = ["asyncio", "uvloop"] if probe.returncode == 0 else ["asyncio"]
    else:
        args.loops = [x.strip() for x in args.loops.split(",") if x.strip()]
        if not set(args.loops) <= {"asyncio", "uvloop"} or not args.loops:
            parser.error("--loops: asyncio and/or uvloop")
    if min(args.rounds, args.procs, args.concurrency, args.streams) < 1 or args.seconds <= 0:
        parser.error("counts must be >= 1 and --seconds > 0")
    return args


def main(argv: list[str]) -> int:
    if argv and argv[0] in CLIENTS:
        print(json.dumps(CLIENTS[argv[0]](*argv[1:])), flush=True)
        return 0
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench_workers: run as root (network namespaces, TUN devices)", file=sys.stderr)
        return 2

    def interrupted(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    tmp = tempfile.mkdtemp(prefix="bench-workers-")  # the C client's build, for this run only
    try:
        choose_client(args, tmp)
        report = run(args)
    except KeyboardInterrupt:
        print("bench_workers: interrupted; namespaces removed", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        print(f"bench_workers: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
