#!/usr/bin/env python3
"""Loss recovery, usertcp beside the kernel: a 20 MB echo through a router that drops packets.

Topology (namespaces made here, `bench-<pid>-{c,r,s}`, deleted on exit):

    client  c-r ==veth== r-c  router  r-s ==veth== s-r  server [ TUN utcp-loss -> usertcp ]
    10.9.1.2                  forwards                  10.9.2.2   10.7.0.1 -> 10.7.0.2

The router forwards, and an nftables rule in its forward chain drops L % of the packets it
forwards, both directions, each packet on its own (`numgen random mod 100 < L drop`). Every
veth has MTU 1500 and TSO, GSO and GRO off (ethtool -K), so a drop is one wire packet.

The server namespace holds one of:
  kernel   a Python echo server on a kernel socket (Linux's defaults: RACK-TLP, SACK,
           D-SACK, timestamps, F-RTO; congestion control set per socket, --kernel-cc, cubic
           by default: a namespace other than the host's may not make cubic its default when
           the host restricts it);
  usertcp  `python -m usertcp echo --no-offload` on a TUN device; the server namespace's kernel
           routes between its veth and the TUN.

The client is the same kernel socket for both (same --kernel-cc): it writes N MB of seeded
random bytes while reading the echo, half-closes, waits for EOF and checks the SHA-256; the
clock runs from connect to EOF. A transfer that is not done within --seconds is a failed run.

Cases: each --loss rate (0 is always run: it is the reference of the penalties), and one
reordering case at 0 % loss: usertcp's own FaultInjector (`--fault reorder=...,direction=both`,
seeded per run). The kernel has no such injector; its side of that row uses netem in the router
(delay some packets) where the kernel has sch_netem, and is left out with the reason otherwise.

Counters, per transfer (deltas around it):
  usertcp  SIGUSR1 to the `usertcp echo` process; the `connections` event of its JSON log
           carries the stack's `counters` (a process per run, so counters start at zero);
  kernel   /proc/net/snmp and /proc/net/netstat of the server namespace (as `nstat -az`).

Columns: time (median, min, max), retransmitted segments, RTOs, TLP probes, RACK-detected
losses, spurious retransmissions undone, spurious RTOs, recovery episodes (median per run),
and penalty = median time(case) / median time(0 % loss). Below each case: usertcp's penalty
over the kernel's, against the aim of issue 8 (<= 1.25). "-" means the stack has no such
counter (a usertcp counter name that does not occur in the source under test).

Run as root, with the project's interpreter:

    .venv/bin/python scripts/bench_loss.py                       # the full matrix
    .venv/bin/python scripts/bench_loss.py --loss 0,5 --repeat 1 --only usertcp
    .venv/bin/python scripts/bench_loss.py --usertcp-src /tmp/usertcp-base --json
    .venv/bin/python scripts/bench_loss.py --repeat-at 10=1      # one run at 10 %

Every process is started here and stopped by its PID. The client and the kernel server
(`_client ...`, `_server ...`) use only the standard library.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import random
import selectors
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import bench_tun as bt  # the namespace and process machinery

MB = 1_000_000
PORT = 7
CLIENT_NET = ("10.9.1.2", "10.9.1.1")  # client, router
SERVER_NET = ("10.9.2.2", "10.9.2.1")  # server, router
PREFIX = 24
USERTCP_ADDR, USERTCP_HOST = bt.USERTCP_NET  # the stack's address, the TUN's kernel side
TUN_NAME = "utcp-loss"
AIM = 1.25  # usertcp's penalty over the kernel's, at most (issue 8)
SNAPSHOT_TIMEOUT = 10.0  # for the SIGUSR1 dump to show up in the log

# Shown per stack: (label, usertcp counter, kernel counters summed). usertcp counters are the
# engine's names; the kernel's are nstat names (Tcp* from /proc/net/snmp, TcpExt* from netstat).
METRICS = [
    ("retrans", "retransmits", ["TcpRetransSegs"]),
    ("RTO", "rto_expired", ["TcpExtTCPTimeouts"]),
    ("TLP", "tlp_probes", ["TcpExtTCPLossProbes"]),
    ("RACK", "rack_lost", []),  # Linux counts no RACK-marked losses as such
    ("undo", "spurious_undo", ["TcpExtTCPDSACKUndo", "TcpExtTCPLossUndo"]),
    ("spRTO", "spurious_rto", ["TcpExtTCPSpuriousRTOs"]),
    ("recov", "sack_recoveries", ["TcpExtTCPSackRecovery", "TcpExtTCPSACKRecovery"]),
]
USERTCP_EXTRA = ["fast_retransmits", "dsack_received", "dsack_sent", "dup_acks"]
KERNEL_EXTRA = ["TcpExtTCPLossProbeRecovery", "TcpExtTCPDSACKRecv", "TcpExtTCPFullUndo",
                "TcpExtTCPPartialUndo", "TcpExtTCPLostRetransmit", "TcpExtTCPSACKReorder",
                "TcpExtTCPTSReorder", "TcpExtTCPFastRetrans", "TcpExtTCPSlowStartRetrans"]
SYSCTLS = ["tcp_congestion_control", "tcp_sack", "tcp_dsack", "tcp_timestamps", "tcp_recovery",
           "tcp_early_retrans", "tcp_frto", "tcp_reordering", "tcp_ecn", "tcp_rmem", "tcp_wmem"]


# =========================================================================================
# Inside the namespaces: the client and the kernel echo server (stdlib only)
# =========================================================================================

def client_echo(host: str, port: str, nbytes: str, seconds: str, seed: str, cc: str) -> dict:
    """Send and receive at once (one thread, non-blocking); bounded by `seconds`."""
    size, limit = int(nbytes), float(seconds)
    data = memoryview(random.Random(int(seed)).randbytes(size))
    want = hashlib.sha256(data).hexdigest()
    got = hashlib.sha256()
    sent = received = 0
    s = socket.socket()
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, cc.encode())
    s.settimeout(limit)
    start = time.perf_counter()
    deadline = start + limit
    s.connect((host, int(port)))
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
    try:
        result = {"echo": client_echo}[argv[0]](*argv[1:])
    except Exception as exc:  # noqa: BLE001 -- reported to the parent
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(result), flush=True)
    return 0


def _echo_conn(conn: socket.socket) -> None:
    with conn, contextlib.suppress(OSError):
        conn.settimeout(600.0)
        cc = conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16)
        print(json.dumps({"accepted_cc": cc.split(b"\0", 1)[0].decode()}), flush=True)
        while data := conn.recv(256 * 1024):
            conn.sendall(data)


def server_main(argv: list[str]) -> int:
    """`_server ADDRESS PORT CC`: echo on kernel sockets until SIGTERM/SIGINT."""
    address, port, cc = argv
    listener = socket.create_server((address, int(port)), backlog=128)
    # Accepted sockets inherit the listener's algorithm (set by setsockopt, not the default).
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, cc.encode())

    def accept_loop() -> None:
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=_echo_conn, args=(conn,), daemon=True).start()

    threading.Thread(target=accept_loop, daemon=True).start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    return 0


# =========================================================================================
# The orchestrator
# =========================================================================================

def read_kernel_counters(text: str) -> dict[str, int]:
    """/proc/net/snmp + /proc/net/netstat text -> {"TcpRetransSegs": n, "TcpExt...": n}."""
    out: dict[str, int] = {}
    lines = text.splitlines()
    for names, values in zip(lines[::2], lines[1::2]):
        prefix, _, names = names.partition(":")
        _, _, values = values.partition(":")
        for name, value in zip(names.split(), values.split()):
            with contextlib.suppress(ValueError):
                out[prefix + name] = int(value)
    return out


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items()}


class LossBench(bt.Runner):
    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.src = args.usertcp_src
        self.env = dict(os.environ, PYTHONPATH=self.src)
        self.kernel_cc_seen: set[str] = set()
        self.netem_note: str | None = None

    # -- topology ----------------------------------------------------------------------

    def build(self) -> None:
        a = self.args
        self.cli, self.rtr, self.srv = self.netns("c"), self.netns("r"), self.netns("s")
        for ns, near, far, peer_ns, (addr, gw), rtr_addr in (
                (self.cli, "c-r", "r-c", self.cli, CLIENT_NET, CLIENT_NET[1]),
                (self.srv, "s-r", "r-s", self.srv, SERVER_NET, SERVER_NET[1])):
            self.run(["ip", "-n", self.rtr, "link", "add", "name", far, "mtu", str(a.mtu),
                      "type", "veth", "peer", "name", near, "netns", peer_ns, "mtu",
                      str(a.mtu)])
            self.run(["ip", "-n", self.rtr, "addr", "add", f"{rtr_addr}/{PREFIX}", "dev", far])
            self.run(["ip", "-n", ns, "addr", "add", f"{addr}/{PREFIX}", "dev", near])
            for n, dev in ((self.rtr, far), (ns, near)):
                self.run(["ethtool", "-K", dev, "tso", "off", "gso", "off", "gro", "off"], n)
                self.run(["ip", "-n", n, "link", "set", dev, "up"])
            self.run(["ip", "-n", ns, "route", "add", "default", "via", gw])
        for ns in (self.rtr, self.srv):  # the server namespace routes to the TUN
            self.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"], ns)
        self.run(["ip", "-n", self.rtr, "route", "add", f"{USERTCP_ADDR}/32", "via",
                  SERVER_NET[0]])
        self.set_loss(0)

    def set_loss(self, percent: int) -> None:
        rules = "add table inet bench_loss\ndelete table inet bench_loss\n"
        if percent > 0:
            rules += f"""table inet bench_loss {{
    chain forward {{
        type filter hook forward priority 0; policy accept;
        numgen random mod 100 < {percent} drop
    }}
}}
"""
        self.run(["nft", "-f", "-"], self.rtr, input_text=rules)

    def set_kernel_reorder(self, on: bool) -> str | None:
        """netem on both router veths; None if done, else why not."""
        prob = self.args.reorder_fault.get("reorder", 0.0)
        for dev in ("r-c", "r-s"):
            argv = ["tc", "-n", self.rtr, "qdisc", "replace", "dev", dev, "root", "netem",
                    "delay", f"{self.args.netem_delay_us}us",
                    "reorder", f"{100 - 100 * prob:g}%"]
            if not on:
                argv = ["tc", "-n", self.rtr, "qdisc", "del", "dev", dev, "root"]
            code, _, err = self.run(argv, check=False)
            if code and on:
                return f"{shlex.join(argv)}: {err.strip()}"
        return None

    def run(self, argv: list[str], ns: str | None = None, timeout: float = 30.0,
            check: bool = True, input_text: str | None = None) -> tuple[int, str, str]:
        if input_text is None:
            return super().run(argv, ns, timeout, check)
        if ns is not None:
            argv = ["ip", "netns", "exec", ns, *argv]
        proc = subprocess.run(argv, input=input_text, text=True, capture_output=True,
                              timeout=timeout, check=False)
        if check and proc.returncode:
            raise bt.BenchError(f"{shlex.join(argv)}: exit {proc.returncode}: {proc.stderr}")
        return proc.returncode, proc.stdout, proc.stderr

    # -- facts for the header ----------------------------------------------------------

    def environment(self) -> dict:
        env: dict = {"kernel": platform.release(), "cpus": os.cpu_count(),
                     "loadavg_start": os.getloadavg()[0]}
        _, out, _ = self.run(["sysctl", *(f"net.ipv4.{k}" for k in SYSCTLS)], self.srv,
                             check=False)
        env["sysctl"] = {k.removeprefix("net.ipv4."): " ".join(v.split()) for k, v in
                         (line.split(" = ", 1) for line in out.splitlines() if " = " in line)}
        # The same interpreter, directory and PYTHONPATH as the service: what it will import.
        probe = subprocess.run([sys.executable, "-c", "import usertcp; print(usertcp.__file__)"],
                               capture_output=True, text=True, timeout=30, cwd=self.src,
                               env=self.env, check=False)
        env["usertcp_module"] = (probe.stdout.strip() if probe.returncode == 0
                                 else f"import failed: {probe.stderr.strip()[-300:]}")
        code, out, _ = self.run(["git", "-C", self.src, "log", "-1", "--format=%h %s"],
                                check=False)
        env["usertcp_commit"] = out.strip() if code == 0 else "no git metadata"
        if code == 0:
            _, dirty, _ = self.run(["git", "-C", self.src, "status", "--short", "usertcp"],
                                   check=False)
            env["usertcp_dirty"] = bool(dirty.strip())
        return env

    def engine_counters(self) -> set[str]:
        """Counter names the engine under test knows: quoted in its source."""
        known = set()
        names = {m[1] for m in METRICS} | set(USERTCP_EXTRA)
        for root, _, files in os.walk(os.path.join(self.src, "usertcp")):
            for f in files:
                if f.endswith(".py"):
                    with open(os.path.join(root, f), errors="replace") as fh:
                        text = fh.read()
                    known |= {n for n in names if f'"{n}"' in text or f"'{n}'" in text}
        return known

    # -- one transfer ------------------------------------------------------------------

    def transfer(self, host: str, run: int) -> dict:
        a = self.args
        argv = [sys.executable, os.path.abspath(__file__), "_client", "echo", host, str(PORT),
                str(a.size_mb * MB), str(a.seconds), str(a.seed + run), a.kernel_cc]
        try:
            _, out, err = self.run(argv, self.cli, timeout=a.seconds + bt.CLIENT_GRACE,
                                   check=False)
            lines = out.strip().splitlines()
            return json.loads(lines[-1]) if lines else {
                "ok": False, "error": f"no result: {err.strip()[-300:]}"}
        except bt.BenchError as exc:
            return {"ok": False, "error": str(exc)}

    def kernel_snapshot(self, ns: str) -> dict[str, int]:
        _, out, _ = self.run(["cat", "/proc/net/snmp", "/proc/net/netstat"], ns)
        return read_kernel_counters(out)

    def kernel_runs(self, case: dict) -> list[dict]:
        a = self.args
        runs = []
        self._server_log = os.path.join(self.tmp, "kernel-server.log")
        with open(self._server_log, "ab") as logf:
            server = self.popen([sys.executable, os.path.abspath(__file__), "_server",
                                 SERVER_NET[0], str(PORT), a.kernel_cc], self.srv,
                                stdout=logf, stderr=logf)
        try:
            self.wait_ready(self.cli, SERVER_NET[0], PORT, server, "kernel echo server")
            for i in range(case["repeat"]):
                self.set_loss(case["loss"])
                before = self.kernel_snapshot(self.srv), self.kernel_snapshot(self.cli)
                result = self.transfer(SERVER_NET[0], i)
                after = self.kernel_snapshot(self.srv), self.kernel_snapshot(self.cli)
                self.set_loss(0)
                result["counters"] = delta(after[0], before[0])
                result["client_counters"] = delta(after[1], before[1])
                self.note(f"kernel {case['name']}", i, result)
                runs.append(result)
                if server.poll() is not None:
                    raise bt.BenchError(f"kernel echo server died{self.server_log_tail()}")
        finally:
            self.stop(server, signal.SIGTERM)
        with open(self._server_log, errors="replace") as f:
            for line in f:
                with contextlib.suppress(ValueError, AttributeError):
                    self.kernel_cc_seen.add(json.loads(line)["accepted_cc"])
        return runs

    def usertcp_snapshot(self, server: subprocess.Popen, log_path: str) -> dict[str, int]:
        """SIGUSR1, then the `counters` of the next `connections` event in the JSON log."""
        seen = self._events(log_path)
        os.kill(server.pid, signal.SIGUSR1)
        deadline = time.monotonic() + SNAPSHOT_TIMEOUT
        while time.monotonic() < deadline:
            events = self._events(log_path)
            if len(events) > len(seen):
                return {k: int(v) for k, v in events[-1].get("counters", {}).items()}
            if server.poll() is not None:
                break
            time.sleep(0.05)
        raise bt.BenchError(f"usertcp logged no connection table{self.server_log_tail()}")

    @staticmethod
    def _events(log_path: str) -> list[dict]:
        events = []
        with open(log_path, errors="replace") as f:
            for line in f:
                if '"connections"' not in line:
                    continue
                with contextlib.suppress(ValueError):
                    event = json.loads(line)
                    if event.get("event") == "connections":
                        events.append(event)
        return events

    def usertcp_runs(self, case: dict) -> list[dict]:
        """A service per run: counters from zero, and the fault injector's seed per run."""
        a = self.args
        runs = []
        for i in range(case["repeat"]):
            argv = [sys.executable, "-m", "usertcp", "echo", "--tun", TUN_NAME, "--address",
                    USERTCP_ADDR, "--host-address", USERTCP_HOST, "--mtu", str(a.mtu),
                    "--port", str(PORT), "--no-offload", "--log-level", "info",
                    "--log-format", "json", *shlex.split(a.usertcp_args)]
            if case["reorder"]:
                spec = {**a.reorder_fault, "seed": a.seed + i, "direction": "both"}
                argv += ["--fault", ",".join(f"{k}={v}" for k, v in spec.items())]
            log_path = os.path.join(self.tmp, f"usertcp-{case['key']}-{i}.log")
            self._server_log = log_path
            with open(log_path, "wb") as logf:
                # cwd: not the working tree, or `-m` would import usertcp from there.
                server = self.popen(argv, self.srv, stdout=logf, stderr=logf, cwd=self.src,
                                    env=self.env)
            try:
                self.wait_ready(self.cli, USERTCP_ADDR, PORT, server, "usertcp echo")
                self.set_loss(case["loss"])
                before = self.usertcp_snapshot(server, log_path)
                result = self.transfer(USERTCP_ADDR, i)
                self.set_loss(0)
                if server.poll() is not None:
                    raise bt.BenchError(f"usertcp echo died{self.server_log_tail()}")
                result["counters"] = delta(self.usertcp_snapshot(server, log_path), before)
            except bt.BenchError as exc:  # this run failed; the next starts a fresh service
                result = {"ok": False, "error": str(exc)[-2000:]}
            finally:
                self.set_loss(0)
                self.stop(server, signal.SIGINT)
            self.note(f"usertcp {case['name']}", i, result)
            runs.append(result)
        return runs

    @staticmethod
    def note(what: str, i: int, result: dict) -> None:
        c = result.get("counters", {})
        counts = ", ".join(f"{k} {v}" for k, v in sorted(c.items())
                           if v and k in {m[1] for m in METRICS} | {"TcpRetransSegs",
                                                                   "TcpExtTCPTimeouts"})
        bt.log(f"{what}: run {i + 1}: "
               + (f"{result['seconds']:.2f} s" if result.get("ok") else result["error"])
               + (f" ({counts})" if counts else ""))


# =========================================================================================
# Summaries and output
# =========================================================================================

def metric(stack: str, counters: dict[str, int], label: str, known: set[str]) -> int | None:
    _, utcp_name, kernel_names = next(m for m in METRICS if m[0] == label)
    if stack == "usertcp":
        return counters.get(utcp_name, 0) if utcp_name in known else None
    present = [n for n in kernel_names if n in counters]
    return sum(counters[n] for n in present) if present else None


def summarize(stack: str, runs: list[dict], known: set[str]) -> dict:
    good = [r for r in runs if r.get("ok")]
    times = [r["seconds"] for r in good]
    out: dict = {"runs": len(runs), "ok": len(good),
                 "times": [round(r["seconds"], 3) if r.get("ok") else None for r in runs],
                 "errors": [r["error"] for r in runs if not r.get("ok")]}
    if times:
        out.update(median=statistics.median(times), min=min(times), max=max(times))
    counted = [r for r in runs if "counters" in r] if not good else good
    out["metrics"] = {}
    for label, *_ in METRICS:
        values = [metric(stack, r["counters"], label, known) for r in counted]
        values = [v for v in values if v is not None]
        out["metrics"][label] = statistics.median_low(values) if values else None
    return out


def add_penalties(cases: list[dict]) -> None:
    ref = next((c for c in cases if c["loss"] == 0 and not c["reorder"]), None)
    for case in cases:
        pen = {}
        for stack, s in case["stacks"].items():
            base = ref["stacks"].get(stack, {}).get("median") if ref else None
            if "median" in s and base:
                pen[stack] = s["median"] / base
        case["penalty"] = pen
        if case is not ref and len(pen) == 2:
            case["ratio"] = pen["usertcp"] / pen["kernel"]
            case["aim_met"] = case["ratio"] <= AIM
        else:
            case["ratio"] = case["aim_met"] = None


def trim_run(stack: str, run: dict) -> dict:
    """A run for the JSON: the counters that say something about recovery."""
    out = {k: v for k, v in run.items() if k not in ("counters", "client_counters")}
    counters = run.get("counters", {})
    if stack == "usertcp":
        out["counters"] = {k: v for k, v in counters.items() if v}
    else:
        wanted = {n for m in METRICS for n in m[2]} | set(KERNEL_EXTRA)
        out["counters"] = {k: v for k, v in counters.items() if k in wanted}
    if "client_counters" in run:  # the client's own recovery (the same kernel in both rows)
        out["client_counters"] = {k: v for k, v in run["client_counters"].items()
                                  if k in ("TcpRetransSegs", "TcpExtTCPTimeouts",
                                           "TcpExtTCPLossProbes")}
    return out


def ensure_ethtool() -> None:
    if shutil.which("ethtool"):
        return
    bt.log("ethtool missing: apt-get install ethtool")
    for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "ethtool"]):
        subprocess.run(argv, check=True, timeout=300, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL)


def fmt(value, spec: str = "d") -> str:
    return "-" if value is None else format(value, spec)


def render(report: dict) -> str:
    a, env = report["settings"], report["environment"]
    sysctl = env.get("sysctl", {})
    lines = [
        (f"bench_loss: {a['size_mb']} MB echo (client writes while it reads, SHA-256 checked), "
         f"MTU {a['mtu']}, TSO/GSO/GRO off on every veth, loss in the router's forward chain "
         f"(both directions, per packet)"),
        (f"repeats: {a['repeat']} per case (median, min, max)"
         + (f"; except {a['repeat_at']}" if a["repeat_at"] else "")
         + f"; a transfer is failed after {a['seconds']:g} s"),
        (f"host: Linux {env.get('kernel')}, {env.get('cpus')} CPUs, load average (1 min) "
         f"{fmt(env.get('loadavg_start'), '.2f')} at start, {fmt(env.get('loadavg_end'), '.2f')} "
         f"at end (other work on the machine slows both stacks)"),
        ("kernel TCP (server namespace sysctl): "
         + ", ".join(f"{k}={v}" for k, v in sysctl.items())),
        (f"kernel congestion control: {a['kernel_cc']} per socket (TCP_CONGESTION) on client "
         f"and server; accepted server sockets reported: "
         f"{', '.join(sorted(report.get('kernel_cc_seen', []))) or '-'}"),
        (f"usertcp: echo --no-offload from {a['usertcp_src']} ({env.get('usertcp_commit')}"
         + (", with uncommitted changes" if env.get("usertcp_dirty") else "")
         + f"); imports {env.get('usertcp_module')}"),
        (f"reorder case: usertcp --fault {a['reorder_spec']},direction=both (seed per run), "
         f"0 % nft loss; kernel: {report.get('kernel_reorder') or 'n/a'}"
         if a["reorder_spec"] else "reorder case: not run"),
        "",
    ]
    labels = [m[0] for m in METRICS]
    head = (f"{'case':<9}{'stack':<9}{'median s':>9}{'min s':>8}{'max s':>8}{'ok':>5}"
            + "".join(f"{lab:>8}" for lab in labels) + f"{'penalty':>9}")
    lines += [head, "-" * len(head)]
    for case in report["cases"]:
        first = True
        for stack in ("kernel", "usertcp"):
            s = case["stacks"].get(stack)
            if s is None:
                continue
            name = case["name"] if first else ""
            first = False
            if s.get("skipped"):
                lines.append(f"{name:<9}{stack:<9}  not measured: {s['skipped']}")
                continue
            lines.append(
                f"{name:<9}{stack:<9}{fmt(s.get('median'), '.2f'):>9}"
                f"{fmt(s.get('min'), '.2f'):>8}{fmt(s.get('max'), '.2f'):>8}"
                f"{s['ok']:>3}/{s['runs']:<1}"
                + "".join(f"{fmt(s['metrics'][lab]):>8}" for lab in labels)
                + f"{fmt(case['penalty'].get(stack), '.2f'):>9}")
        if case["ratio"] is not None:
            p = case["penalty"]
            lines.append(f"{'':<9}usertcp penalty / kernel penalty = {p['usertcp']:.2f} / "
                         f"{p['kernel']:.2f} = {case['ratio']:.2f}   aim <= {AIM}: "
                         + ("met" if case["aim_met"] else "MISSED"))
        for stack, s in case["stacks"].items():
            for err in s.get("errors", [])[:3]:
                lines.append(f"{'':<9}{stack} failed run: {err[:200]}")
    lines += [
        "",
        ("counters: median per run; retrans = retransmitted segments; RTO = retransmission "
         "timeouts; TLP = tail loss probes; RACK = losses detected by RACK; undo = spurious "
         "retransmission episodes undone (kernel: TCPDSACKUndo + TCPLossUndo); spRTO = "
         "spurious RTOs (kernel: F-RTO, TCPSpuriousRTOs); recov = SACK recovery episodes. "
         "Kernel counters are the server namespace's; '-': the stack has no such counter."),
    ]
    lines += [f"ERROR {e}" for e in report.get("errors", [])]
    return "\n".join(lines)


# =========================================================================================

def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--loss", default="0,1,2,5,10",
                   help="comma-separated percents dropped per packet (default 0,1,2,5,10; "
                        "0 is always run, as the reference)")
    p.add_argument("--repeat", type=int, default=3, help="runs per case and stack (default 3)")
    p.add_argument("--repeat-at", default="",
                   help="other repeats for some loss rates, e.g. 10=1 (LOSS=N,...)")
    p.add_argument("--size-mb", type=int, default=20, help="MB each way (default 20)")
    p.add_argument("--seconds", type=float, default=300.0,
                   help="a transfer not done in this time fails (default 300)")
    p.add_argument("--mtu", type=int, default=1500)
    p.add_argument("--seed", type=int, default=1,
                   help="of the payloads and the fault injector (not of nft's drops)")
    p.add_argument("--reorder", default="reorder=0.05,reorder_depth=3",
                   help="FaultInjector keys of the reordering case (default "
                        "reorder=0.05,reorder_depth=3); 'none' leaves the case out")
    p.add_argument("--netem-delay-us", type=int, default=20,
                   help="kernel side of the reordering case, where netem exists: how long a "
                        "reordered packet is held (default 20)")
    p.add_argument("--kernel-cc", default="cubic",
                   help="congestion control of the kernel sockets (default cubic)")
    p.add_argument("--only", choices=("usertcp", "kernel"), help="run one stack only")
    p.add_argument("--usertcp-args", default="",
                   help="more options for `usertcp echo`, e.g. '--congestion newreno'")
    p.add_argument("--usertcp-src", default=bt.REPO,
                   help="checkout whose usertcp runs (PYTHONPATH); default this repo")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--json-out", metavar="FILE", help="also write the JSON report to FILE")
    args = p.parse_args(argv)
    try:
        losses = sorted({int(x) for x in args.loss.split(",") if x.strip()} | {0})
        args.repeat_at = {int(k): int(v) for k, v in
                          (item.split("=") for item in args.repeat_at.split(",") if item)}
    except ValueError:
        p.error("--loss takes integers, --repeat-at LOSS=N pairs")
    if any(not 0 <= x <= 100 for x in losses) or args.repeat < 1 \
            or any(v < 1 for v in args.repeat_at.values()):
        p.error("loss rates from 0 to 100, repeats at least 1")
    args.losses = losses
    args.reorder_spec = "" if args.reorder == "none" else args.reorder
    args.reorder_fault = {}
    for item in filter(None, args.reorder_spec.split(",")):
        key, _, value = item.partition("=")
        if key in ("seed", "direction") or not value:
            p.error("--reorder: key=value pairs of FaultInjector, without seed and direction")
        args.reorder_fault[key.strip()] = value.strip()
    if args.reorder_fault:
        args.reorder_fault["reorder"] = float(args.reorder_fault.get("reorder", 0))
    args.usertcp_src = os.path.abspath(args.usertcp_src)
    if not os.path.isfile(os.path.join(args.usertcp_src, "usertcp", "__init__.py")):
        p.error(f"--usertcp-src {args.usertcp_src}: no usertcp package there")
    return args


def main(argv: list[str]) -> int:
    if argv and argv[0] == "_client":
        return client_main(argv[1:])
    if argv and argv[0] == "_server":
        return server_main(argv[1:])
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench_loss: needs root (network namespaces, TUN, nftables)", file=sys.stderr)
        return 2
    stacks = [s for s in ("kernel", "usertcp") if args.only in (None, s)]
    plan = [{"key": f"loss{x}", "name": f"{x} %", "loss": x, "reorder": False,
             "repeat": args.repeat_at.get(x, args.repeat)} for x in args.losses]
    if args.reorder_fault:
        plan.append({"key": "reorder", "name": "reorder", "loss": 0, "reorder": True,
                     "repeat": args.repeat})

    def interrupted(signum, frame):
        raise bt.Interrupted(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    settings = {k: getattr(args, k) for k in ("size_mb", "repeat", "repeat_at", "seconds",
                                               "mtu", "seed", "kernel_cc", "usertcp_src",
                                               "reorder_spec", "netem_delay_us", "only")}
    settings["losses"] = args.losses
    report: dict = {"settings": settings, "environment": {}, "cases": [], "errors": [],
                    "command": shlex.join([sys.executable, *sys.argv])}
    try:
        ensure_ethtool()
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"bench_loss: no ethtool and could not install it: {exc}", file=sys.stderr)
        return 2
    runner = LossBench(args)
    known = runner.engine_counters()
    code = 0
    try:
        runner.build()
        report["environment"] = runner.environment()
        for case in plan:
            entry = {k: case[k] for k in ("name", "loss", "reorder", "repeat")}
            entry["stacks"] = {}
            report["cases"].append(entry)
            for stack in stacks:
                bt.log(f"{stack}, {case['name']} ...")
                if stack == "kernel" and case["reorder"]:
                    why = runner.set_kernel_reorder(True)
                    report["kernel_reorder"] = (
                        f"netem delay {args.netem_delay_us}us on "
                        f"{args.reorder_fault['reorder']:.0%} of packets in the router"
                        if why is None else f"not measured, no netem here ({why})")
                    if why is not None:
                        entry["stacks"][stack] = {"skipped": "no reordering for the kernel "
                                                  "(netem missing); see the header"}
                        continue
                try:
                    runs = (runner.kernel_runs(case) if stack == "kernel"
                            else runner.usertcp_runs(case))
                finally:
                    if stack == "kernel" and case["reorder"]:
                        runner.set_kernel_reorder(False)
                s = summarize(stack, runs, known)
                s["raw"] = [trim_run(stack, r) for r in runs]
                entry["stacks"][stack] = s
    except bt.BenchError as exc:
        report["errors"].append(str(exc))
        bt.log(f"stopped: {exc}")
        code = 1
    except bt.Interrupted as exc:
        report["errors"].append(f"interrupted ({exc})")
        bt.log(f"interrupted ({exc}); cleaning up")
        code = 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut cleanup
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        report["kernel_cc_seen"] = sorted(runner.kernel_cc_seen)
        runner.close()
    report["environment"]["loadavg_end"] = os.getloadavg()[0]
    add_penalties(report["cases"])
    text = json.dumps(report, indent=2)
    if args.json_out:
        with open(args.json_out, "w") as f:
            f.write(text + "\n")
    print(text if args.json else render(report))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
