#!/usr/bin/env python3
"""Loss recovery through TUN: how long an echo of N MB each way takes at L % loss, with and
without SACK (and timestamps), beside the kernel talking to itself over a lossy veth pair.

A kernel socket sends N MB (seeded random bytes) to the `echo` service and reads the echo at
the same time, then half-closes and waits for the service's FIN; the clock runs from connect to
that FIN, and the echo is checked by SHA-256.

Loss, L % each way: nftables in the stack's namespace drops L % of what the kernel receives
on the TUN interface (`numgen random`: the kernel's random numbers, so runs differ; each
variant runs --repeat times and the table shows median, min and max). The other way it takes
the stack's own fault injector (`--fault loss=...,direction=rx`, seeded per run): an nftables
drop of the kernel's *output* is no loss, the sending socket gets EPERM, keeps the segment and
sends it again a moment later, so no hole would ever reach the stack.

Columns (variants):
  sack+ts     usertcp with its defaults: SACK (RFC 6675 recovery) and timestamps;
  no-sack     usertcp echo --no-sack: NewReno;
  neither     usertcp echo --no-sack --no-timestamps;
  kernel      a Python echo server in one namespace and the client in another, joined by a
              veth pair with the same MTU; nftables drops L % of what each end receives.

Every packet is one MSS by default (usertcp --no-offload; gso_max_segs 1 on the veth pair),
so the loss is per wire packet. With --offload the kernel and the stack exchange segments of
up to 64 KB over TUN (and over veth), which nftables sees and drops whole: far fewer, far
bigger losses.

Run as root, with the project's interpreter:

    .venv/bin/python scripts/bench_loss.py                    # 1 MB each way, 5 %, 5 runs
    .venv/bin/python scripts/bench_loss.py --loss 10 --size-mb 4 --repeat 3 --offload
    .venv/bin/python scripts/bench_loss.py --variants sack+ts,no-sack --json

Namespaces are made here (`bench-<pid>-...`) and deleted on exit; every process is started here
and stopped by its PID. The client side (`_client echo ...`) uses only the standard library.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import selectors
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import bench_tun as bt  # the namespace and process machinery

MB = 1_000_000
PORT = 7
USERTCP_NET = bt.USERTCP_NET
VETH_NET = bt.VETH_NET
VARIANTS = {
    "sack+ts": [],
    "no-sack": ["--no-sack"],
    "neither": ["--no-sack", "--no-timestamps"],
    "kernel": None,
}


# =========================================================================================
# Inside the namespace: the client (stdlib only; prints one JSON object)
# =========================================================================================

def client_echo(host: str, port: str, nbytes: str, seconds: str, seed: str) -> dict:
    """Send and receive at once (one thread, non-blocking); bounded by `seconds`."""
    size, limit = int(nbytes), float(seconds)
    data = memoryview(random.Random(int(seed)).randbytes(size))
    want = hashlib.sha256(data).hexdigest()
    got = hashlib.sha256()
    sent = received = 0
    start = time.perf_counter()
    deadline = start + limit
    s = socket.create_connection((host, int(port)), timeout=limit)
    with s:
        s.setblocking(False)
        sel = selectors.DefaultSelector()
        sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE)
        eof = False
        while not eof:
            left = deadline - time.perf_counter()
            if left <= 0:
                return {"ok": False, "error": f"deadline: sent {sent}, received {received}"}
            for _key, events in sel.select(min(left, 0.5)):
                if events & selectors.EVENT_WRITE and sent < size:
                    try:
                        sent += s.send(data[sent:sent + 262144])
                    except BlockingIOError:
                        pass
                    if sent == size:
                        s.shutdown(socket.SHUT_WR)
                        sel.modify(s, selectors.EVENT_READ)
                if events & selectors.EVENT_READ:
                    try:
                        chunk = s.recv(1 << 20)
                    except BlockingIOError:
                        continue
                    if not chunk:
                        eof = True
                        break
                    got.update(chunk)
                    received += len(chunk)
        sel.close()
    elapsed = time.perf_counter() - start
    ok = received == size and got.hexdigest() == want
    return {"ok": ok, "seconds": elapsed, "received": received,
            **({} if ok else {"error": f"echo mismatch: {received} of {size} bytes"})}


def client_main(argv: list[str]) -> int:
    role, args = argv[0], argv[1:]
    try:
        result = {"echo": client_echo}[role](*args)
    except Exception as exc:  # noqa: BLE001 -- reported to the parent
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(result), flush=True)
    return 0


# =========================================================================================
# The orchestrator
# =========================================================================================

def nft_loss(ns: str, ifname: str, percent: int) -> None:
    """Drop `percent` % of the packets received on `ifname` in `ns`."""
    match = "" if percent >= 100 else f"numgen random mod 100 < {percent} "
    rules = f"""
add table inet bench_loss
flush table inet bench_loss
table inet bench_loss {{
    chain input {{
        type filter hook input priority 0; policy accept;
        iifname "{ifname}" {match}drop
    }}
}}
"""
    subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=rules, text=True,
                   check=True, capture_output=True, timeout=30)


class LossRunner(bt.Runner):
    def echo_runs(self, ns: str, host: str, server: subprocess.Popen, what: str,
                  first: int = 0, count: int | None = None) -> list[dict]:
        a = self.args
        runs = []
        for i in range(first, first + (a.repeat if count is None else count)):
            argv = [sys.executable, os.path.abspath(__file__), "_client", "echo", host, str(PORT),
                    str(a.size_mb * MB), str(a.seconds), str(a.seed + i)]
            try:
                _, out, err = self.run(argv, ns, timeout=a.seconds + bt.CLIENT_GRACE,
                                       check=False)
                lines = out.strip().splitlines()
                result = json.loads(lines[-1]) if lines else {
                    "ok": False, "error": f"no result: {err.strip()[-300:]}"}
            except bt.BenchError as exc:
                result = {"ok": False, "error": str(exc)}
            if server.poll() is not None:
                raise bt.BenchError(f"{what} died{self.server_log_tail()}")
            bt.log(f"{what}: run {i + 1}: "
                   + (f"{result['seconds']:.2f} s" if result.get("ok") else result["error"]))
            runs.append(result)
        return runs

    def run_usertcp(self, variant: str, flags: list[str]) -> list[dict]:
        """One service per run: the fault injector's seed differs from run to run."""
        a = self.args
        ns = self.netns(variant.replace("+", ""))
        host = USERTCP_NET[0]
        runs = []
        for i in range(a.repeat):
            argv = [sys.executable, "-m", "usertcp", "echo", "--tun", "utcp-loss", "--address",
                    host, "--host-address", USERTCP_NET[1], "--mtu", str(a.mtu), "--port",
                    str(PORT), "--log-level", "warning", *flags,
                    *([] if a.offload else ["--no-offload"])]
            if a.loss:
                argv += ["--fault", f"seed={a.seed + i},loss={a.loss / 100},direction=rx"]
            self._server_log = os.path.join(self.tmp, f"usertcp-{variant}-{i}.log")
            with open(self._server_log, "wb") as logf:
                server = self.popen(argv, ns, stdout=logf, stderr=logf, cwd=bt.REPO)
            try:
                self.wait_ready(ns, host, PORT, server, f"usertcp {variant}")
                nft_loss(ns, "utcp-loss", a.loss)
                runs += self.echo_runs(ns, host, server, f"usertcp {variant}", i, 1)
            finally:
                nft_loss(ns, "utcp-loss", 0)
                self.stop(server, signal.SIGINT)
        return runs

    def run_kernel(self) -> list[dict]:
        a = self.args
        srv, cli = self.netns("ks"), self.netns("kc")
        s_addr, c_addr, prefix = VETH_NET
        self.run(["ip", "-n", srv, "link", "add", "veth0", "mtu", str(a.mtu), "type", "veth",
                  "peer", "name", "veth1", "netns", cli, "mtu", str(a.mtu)])
        self.run(["ip", "-n", srv, "addr", "add", f"{s_addr}/{prefix}", "dev", "veth0"])
        self.run(["ip", "-n", cli, "addr", "add", f"{c_addr}/{prefix}", "dev", "veth1"])
        if not a.offload:  # one MSS per skb, so that a drop is one wire packet
            self.run(["ip", "-n", srv, "link", "set", "veth0", "gso_max_segs", "1"])
            self.run(["ip", "-n", cli, "link", "set", "veth1", "gso_max_segs", "1"])
        self.run(["ip", "-n", srv, "link", "set", "veth0", "up"])
        self.run(["ip", "-n", cli, "link", "set", "veth1", "up"])
        self._server_log = os.path.join(self.tmp, "kernel-server.log")
        with open(self._server_log, "wb") as logf:
            server = self.popen([sys.executable, os.path.abspath(bt.__file__), "_server", s_addr,
                                 self.tmp], srv, stdout=logf, stderr=logf)
        try:
            self.wait_ready(cli, s_addr, PORT, server, "kernel echo server")
            nft_loss(cli, "veth1", a.loss)
            nft_loss(srv, "veth0", a.loss)
            return self.echo_runs(cli, s_addr, server, "kernel")
        finally:
            self.stop(server, signal.SIGTERM)


def summary(runs: list[dict]) -> dict:
    times = [r["seconds"] for r in runs if r.get("ok")]
    out = {"runs": [round(r["seconds"], 3) if r.get("ok") else None for r in runs],
           "failed": sum(1 for r in runs if not r.get("ok"))}
    if times:
        out.update(median=statistics.median(times), min=min(times), max=max(times))
    return out


def render(report: dict) -> str:
    a = report["settings"]
    lines = [(f"echo of {a['size_mb']} MB each way at {a['loss']} % loss each way, "
              f"MTU {a['mtu']}, {'offload' if a['offload'] else 'no offload'}, "
              f"{a['repeat']} runs each"),
             f"{'variant':<10}{'median s':>10}{'min s':>8}{'max s':>8}{'failed':>8}  runs"]
    for name, s in report["results"].items():
        if "median" in s:
            lines.append(f"{name:<10}{s['median']:10.2f}{s['min']:8.2f}{s['max']:8.2f}"
                         f"{s['failed']:8d}  {s['runs']}")
        else:
            lines.append(f"{name:<10}{'-':>10}{'-':>8}{'-':>8}{s['failed']:8d}  {s['runs']}")
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size-mb", type=int, default=1, help="MB each way (default 1)")
    p.add_argument("--loss", type=int, default=5, help="percent dropped each way (default 5)")
    p.add_argument("--repeat", type=int, default=5, help="runs per variant (default 5)")
    p.add_argument("--seconds", type=float, default=120.0, help="bound of one run")
    p.add_argument("--mtu", type=int, default=1500)
    p.add_argument("--seed", type=int, default=1, help="of the payloads (not of the loss)")
    p.add_argument("--offload", action="store_true",
                   help="64 KB segments over TUN and veth (loss hits them whole)")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help=f"comma-separated, of {', '.join(VARIANTS)}")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    args = p.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}")
    return args


def main(argv: list[str]) -> int:
    if argv and argv[0] == "_client":
        return client_main(argv[1:])
    if argv and argv[0] == "_server":  # the kernel-side server lives in bench_tun.py
        return bt.server_main(argv[1:])
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench_loss: needs root (network namespaces, TUN, nftables)", file=sys.stderr)
        return 2
    runner = LossRunner(args)
    results = {}

    def interrupt(*_):
        raise bt.Interrupted

    signal.signal(signal.SIGTERM, interrupt)
    try:
        for variant in args.variants:
            flags = VARIANTS[variant]
            bt.log(f"{variant} ...")
            runs = runner.run_kernel() if flags is None else runner.run_usertcp(variant, flags)
            results[variant] = summary(runs)
    except (bt.BenchError, bt.Interrupted, KeyboardInterrupt) as exc:
        bt.log(f"stopped: {exc or type(exc).__name__}")
        return 1
    finally:
        runner.close()
    settings = {k: getattr(args, k) for k in ("size_mb", "loss", "repeat", "mtu", "offload")}
    report = {"settings": settings, "results": results,
              "command": shlex.join([sys.executable, *sys.argv])}
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
