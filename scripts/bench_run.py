#!/usr/bin/env python3
"""`usertcp run` beside slirp4netns and the kernel: the same client, the same server, alternating.

A host namespace (`bench-<pid>-h`, made here) runs the servers on its 127.0.0.1: `iperf3 -s` and
bench_tun.py's echo server. Each client command runs through one of three paths, each started
afresh for that one command:

  usertcp      `usertcp run [--usertcp-args] -- CLIENT` in the host namespace; the client dials
               10.0.2.2 (the host's 127.0.0.1);
  slirp4netns  an `unshare --net` child in the host namespace and `slirp4netns --configure
               --mtu=65520 PID tap0` beside it (its sockets in the host namespace); the client,
               exec'd by the child once slirp4netns is ready, dials 10.0.2.2;
  kernel       the client in the host namespace itself, dialling 127.0.0.1.

Figures (per path, the median over --rounds; every round's figure is in the JSON):

  program -> host   iperf3 -c for --seconds: MB/s received by the server (1 MB = 10^6 bytes)
  host -> program   iperf3 -c -R: MB/s received by the client
  conn/s            sequential connections per second (connect, 1-byte echo, close), bench_tun's
                    client, at most --connections or --cps-seconds
  RTT p50 / p99     64-byte echo round trips on one connection (TCP_NODELAY), in us

Each round runs every figure through every path before the next figure; the order of the paths
rotates from round to round. The ratios are usertcp / slirp4netns (for RTT lower is better); the
aim of issue 9 is >= 1.2 in both directions.

Run as root, with the project's interpreter:

    .venv/bin/python scripts/bench_run.py                         # 3 rounds, 5 s per iperf3
    .venv/bin/python scripts/bench_run.py --rounds 1 --seconds 2  # a quick look
    .venv/bin/python scripts/bench_run.py --usertcp-args=--no-offload --json-out /tmp/run.json

iperf3 and slirp4netns (Debian packages of those names) are installed with apt-get when missing.
Every namespace and process is made here and removed by name and PID on exit, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import select
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import bench_tun as bt  # the namespace and process machinery, the cps/rtt clients, echo server

PATHS = ("usertcp", "slirp4netns", "kernel")
PATH_LABELS = {"usertcp": "usertcp run", "slirp4netns": "slirp4netns", "kernel": "kernel"}
IPERF_PORT = 5201
ECHO_PORT = bt.PORTS["echo"]
GATEWAY = "10.0.2.2"
LOOPBACK = "127.0.0.1"
SLIRP_MTU = 65520
TOOLS = {"iperf3": "iperf3", "slirp4netns": "slirp4netns"}  # command -> Debian package
READY_TIMEOUT = 15.0
# The first line tells that the child runs in its new namespace: slirp4netns started before that
# joins the old one (and makes tap0 there). Then it waits for the go and execs the client.
SLIRP_CHILD = """\
echo in-netns
read go || exit 111
exec "$@"
"""
AIM = 1.2

METRICS = [  # key, label, format, higher is better
    ("up_mbps", "program -> host, iperf3 (MB/s)", "{:,.1f}", True),
    ("down_mbps", "host -> program, iperf3 -R (MB/s)", "{:,.1f}", True),
    ("cps", "sequential connections/s", "{:,.0f}", True),
    ("rtt_p50_us", "64-byte echo RTT p50 (us)", "{:,.1f}", False),
    ("rtt_p99_us", "64-byte echo RTT p99 (us)", "{:,.1f}", False),
]


def log(msg: str) -> None:
    print(f"bench_run: {msg}", file=sys.stderr, flush=True)


class RunBench(bt.Runner):
    """The host namespace, its servers, and one client command at a time through a path."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.host = ""
        self.usertcp = [args.usertcp, "run", *shlex.split(args.usertcp_args)]

    def popen(self, argv: list[str], ns: str | None = None, **kw) -> subprocess.Popen:
        if ns is not None:
            argv = ["ip", "netns", "exec", ns, *argv]  # execs the command: the PID is the command's
        kw.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(argv, start_new_session=True, **kw)
        self.procs.append(proc)
        return proc

    # -- the host and its servers ----------------------------------------------------------

    def start_servers(self) -> None:
        self.host = self.netns("h")
        self._server_log = os.path.join(self.tmp, "servers.log")
        with open(self._server_log, "wb") as logf:
            iperf = self.popen(["iperf3", "-s", "-B", LOOPBACK, "-p", str(IPERF_PORT)], self.host,
                               stdout=logf, stderr=logf)
            echo = self.popen([sys.executable, os.path.join(HERE, "bench_tun.py"), "_server",
                               LOOPBACK, self.file_dir], self.host, stdout=logf, stderr=logf)
        for proc, port, what in ((iperf, IPERF_PORT, "iperf3 -s"), (echo, ECHO_PORT, "echo")):
            wait_listening(proc, port, what, self.server_log_tail)
        self.servers = {"iperf3": iperf, "echo": echo}

    # -- one command through one path ------------------------------------------------------

    def through(self, path: str, argv: list[str], timeout: float) -> tuple[int, str, str]:
        """Run ``argv`` through ``path``; (exit status, stdout, stderr)."""
        if path == "kernel":
            return self.run(argv, self.host, timeout=timeout, check=False)
        if path == "usertcp":
            return self.run([*self.usertcp, "--", *argv], self.host, timeout=timeout, check=False)
        return self.through_slirp(argv, timeout)

    def through_slirp(self, argv: list[str], timeout: float) -> tuple[int, str, str]:
        child = self.popen(["unshare", "--net", "--", "sh", "-c", SLIRP_CHILD, "sh", *argv],
                           self.host, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
        ready_r, ready_w = os.pipe()
        slirp_log = os.path.join(self.tmp, "slirp4netns.log")
        slirp: subprocess.Popen | None = None
        try:
            if not select.select([child.stdout], [], [], READY_TIMEOUT)[0] \
                    or child.stdout.readline() != "in-netns\n":
                raise bt.BenchError(f"unshare --net child did not start (exit {child.poll()})")
            with open(slirp_log, "wb") as logf:
                slirp = self.popen(["slirp4netns", "--configure", f"--mtu={SLIRP_MTU}",
                                    f"--ready-fd={ready_w}", str(child.pid), "tap0"], self.host,
                                   stdout=logf, stderr=logf, pass_fds=(ready_w,))
            os.close(ready_w)
            ready_w = -1
            if not select.select([ready_r], [], [], READY_TIMEOUT)[0] or not os.read(ready_r, 1):
                raise bt.BenchError(f"slirp4netns not ready within {READY_TIMEOUT} s (exit "
                                    f"{slirp.poll()}): {_tail(slirp_log)}")
            try:
                out, err = child.communicate("go\n", timeout=timeout)
            except subprocess.TimeoutExpired:
                self.stop(child, signal.SIGKILL)
                raise bt.BenchError(f"{shlex.join(argv)} via slirp4netns: no exit within "
                                    f"{timeout} s") from None
            return child.returncode, out, err
        finally:
            if ready_w >= 0:
                os.close(ready_w)
            os.close(ready_r)
            self.stop(child, signal.SIGKILL, timeout=1.0)
            if slirp is not None:
                self.stop(slirp, signal.SIGTERM)

    # -- the figures -----------------------------------------------------------------------

    def iperf(self, path: str, reverse: bool) -> dict:
        a = self.args
        addr = LOOPBACK if path == "kernel" else GATEWAY
        argv = ["iperf3", "-c", addr, "-p", str(IPERF_PORT), "-t", f"{a.seconds:g}", "-J"]
        if reverse:
            argv.append("-R")
        result: dict = {}
        for attempt in range(5):  # the server may still be finishing the previous test
            code, out, err = self.through(path, argv, timeout=a.seconds + 30)
            try:
                result = json.loads(out)
            except ValueError:
                result = {"error": f"exit {code}: {(err or out).strip()[-500:]}"}
            if "busy" not in str(result.get("error", "")):
                break
            time.sleep(0.5 * (attempt + 1))
        if result.get("error"):
            return {"error": f"iperf3 {'-R ' if reverse else ''}via {path}: {result['error']}"}
        received = result["end"]["sum_received"]
        return {"mbps": received["bits_per_second"] / 8 / bt.MB, "bytes": received["bytes"],
                "seconds": received["seconds"]}

    def echo_client(self, path: str, role: str, *args: object, seconds: float) -> dict:
        addr = LOOPBACK if path == "kernel" else GATEWAY
        argv = [sys.executable, os.path.join(HERE, "bench_tun.py"), "_client", role, addr,
                str(ECHO_PORT), *map(str, args)]
        code, out, err = self.through(path, argv, timeout=seconds + bt.CLIENT_GRACE)
        try:
            result = json.loads(out.strip().splitlines()[-1])
        except (IndexError, ValueError):
            result = {"error": f"exit {code}: {err.strip()[-500:]}"}
        if result.get("error"):
            result["error"] = f"{role} via {path}: {result['error']}"
        return result

    def measure(self, path: str, metric: str) -> dict:
        a = self.args
        if metric in ("up", "down"):
            return self.iperf(path, reverse=metric == "down")
        if metric == "cps":
            return self.echo_client(path, "cps", a.connections, a.cps_seconds,
                                    seconds=a.cps_seconds)
        return self.echo_client(path, "rtt", a.round_trips, 64, a.seconds, seconds=a.seconds)


def wait_listening(proc: subprocess.Popen, port: int, what: str, tail) -> None:
    """Until ``proc``'s namespace has a TCP listener on ``port`` (read from /proc/PID/net/tcp)."""
    deadline = time.monotonic() + READY_TIMEOUT
    want = f":{port:04X}"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise bt.BenchError(f"{what} exited with {proc.returncode}{tail()}")
        try:
            with open(f"/proc/{proc.pid}/net/tcp") as f:
                rows = [line.split() for line in f.readlines()[1:]]
        except OSError:
            rows = []
        if any(r[1].endswith(want) and r[3] == "0A" for r in rows):  # 0A: LISTEN
            return
        time.sleep(0.02)
    raise bt.BenchError(f"{what}: nothing listening on port {port} within {READY_TIMEOUT} s")


def _tail(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()[-1000:].strip()
    except OSError:
        return ""


# =========================================================================================
# Tools
# =========================================================================================

def ensure_tools(paths: list[str]) -> None:
    """apt-get install iperf3 / slirp4netns when missing (as root); BenchError when impossible."""
    wanted = ["iperf3"] + (["slirp4netns"] if "slirp4netns" in paths else [])
    missing = [TOOLS[t] for t in wanted if shutil.which(t) is None]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise bt.BenchError(f"missing {', '.join(missing)} (Debian packages of those names) and "
                            f"cannot apt-get install them here")
    log(f"apt-get install {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-qq"],
                 ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]):
        res = subprocess.run(argv, check=False, timeout=600, stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, env=env)
        if res.returncode != 0:
            raise bt.BenchError(f"{shlex.join(argv)} failed: {res.stderr.strip()[-500:]}")
    still = [t for t in wanted if shutil.which(t) is None]
    if still:
        raise bt.BenchError(f"still missing after apt-get: {', '.join(still)}")


def tool_version(argv: list[str]) -> str:
    try:
        res = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=10)
    except OSError as exc:
        return f"? ({exc})"
    return (res.stdout or res.stderr).strip().splitlines()[0] if (res.stdout or res.stderr) \
        else "?"


def check_usertcp_run(usertcp: str) -> None:
    try:
        res = subprocess.run([usertcp, "run", "--help"], check=False, capture_output=True,
                             timeout=30)
    except OSError as exc:
        raise bt.BenchError(f"{usertcp}: {exc}") from None
    if res.returncode != 0:
        raise bt.BenchError(f"{usertcp} has no `run` command (usertcp run --help: exit "
                            f"{res.returncode})")


# =========================================================================================
# Output
# =========================================================================================

def figures(rounds: dict) -> dict:
    """Median per metric from the per-round results of one path."""
    out: dict = {}
    for key, *_ in METRICS:
        values = rounds.get(key) or []
        out[key] = statistics.median(values) if values else None
    return out


def ratios(figs: dict) -> dict:
    u, s = figs.get("usertcp") or {}, figs.get("slirp4netns") or {}
    out = {}
    for key, *_ in METRICS:
        out[key] = (u[key] / s[key] if u.get(key) is not None and s.get(key) else None)
    return out


def render(report: dict) -> str:
    paths = [p for p in PATHS if p in report["figures"]]
    figs, rat = report["figures"], report["ratios"]
    header = ["", *(PATH_LABELS[p] for p in paths)]
    both = "usertcp" in paths and "slirp4netns" in paths
    if both:
        header.append("usertcp/slirp4netns")
    rows = [header]
    for key, label, fmt, _ in METRICS:
        row = [label]
        for p in paths:
            v = figs[p].get(key)
            row.append("error" if v is None else fmt.format(v))
        if both:
            r = rat.get(key)
            row.append("-" if r is None else f"{r:.2f}x")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = []
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    if both:
        met = report.get("aim_met")
        lines.append("")
        lines.append("ratio = usertcp / slirp4netns: above 1 is better for MB/s and conn/s, "
                     "worse for RTT")
        lines.append(f"aim (issue 9): usertcp >= {AIM}x slirp4netns both ways: "
                     + ("n/a" if met is None else "met" if met else "NOT met"))
    cfg, env = report["config"], report["environment"]
    lines.append(f"median of {cfg['rounds']} rounds (paths alternate); iperf3 {cfg['seconds']:g} s "
                 f"per direction; cps <= {cfg['connections']} connections / "
                 f"{cfg['cps_seconds']:g} s; {cfg['round_trips']} round trips")
    lines.append(f"usertcp run {cfg['usertcp_args'] or '(default options)'}; "
                 f"{env.get('slirp4netns', '')}; {env.get('iperf3', '')}; Linux "
                 f"{env.get('kernel')}, {env.get('cpus')} CPUs, load {env.get('loadavg_start')}"
                 f" -> {env.get('loadavg_end')}")
    for p in paths:
        for key, values in report["rounds"][p].items():
            if values:
                shown = ", ".join(f"{v:,.1f}" for v in values)
                lines.append(f"  {PATH_LABELS[p]} {key}: {shown}")
    lines += [f"ERROR {e}" for e in report["errors"]]
    return "\n".join(lines)


# =========================================================================================

def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="rounds, paths alternating (default 3)")
    p.add_argument("--seconds", type=float, default=5.0,
                   help="iperf3 time per direction, and the RTT run's bound (default 5, max 10)")
    p.add_argument("--connections", type=int, default=2000,
                   help="sequential connections at most (default 2000)")
    p.add_argument("--cps-seconds", type=float, default=3.0,
                   help="time bound of the connection test (default 3)")
    p.add_argument("--round-trips", type=int, default=5000, help="echo round trips (default 5000)")
    p.add_argument("--only", default=",".join(PATHS),
                   help=f"comma-separated paths to run (default {','.join(PATHS)})")
    p.add_argument("--usertcp", default=os.path.join(os.path.dirname(sys.executable), "usertcp"),
                   help="the usertcp command (default: the one beside this interpreter)")
    p.add_argument("--usertcp-args", default="",
                   help="options for `usertcp run`, e.g. --usertcp-args=--no-offload")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--json-out", metavar="FILE", help="also write the JSON report to FILE")
    args = p.parse_args(argv)
    args.paths = [x.strip() for x in args.only.split(",") if x.strip()]
    if not args.paths or any(x not in PATHS for x in args.paths):
        p.error(f"--only takes a comma-separated subset of {', '.join(PATHS)}")
    if args.rounds < 1 or not 0 < args.seconds <= 10 or args.connections < 1 \
            or args.cps_seconds <= 0 or args.round_trips < 1:
        p.error("rounds, counts and time bounds must be positive; --seconds at most 10")
    # bench_tun.Runner wants these
    args.size_mb = 1
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench_run: run as root (network namespaces, TUN devices)", file=sys.stderr)
        return 2
    try:
        ensure_tools(args.paths)
        if "usertcp" in args.paths:
            check_usertcp_run(args.usertcp)
    except bt.BenchError as exc:
        print(f"bench_run: {exc}", file=sys.stderr)
        return 2

    def interrupted(signum, frame):
        raise bt.Interrupted(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    config = {k: getattr(args, k) for k in ("rounds", "seconds", "connections", "cps_seconds",
                                             "round_trips", "paths", "usertcp", "usertcp_args")}
    environment = {
        "kernel": platform.release(), "cpus": os.cpu_count(),
        "loadavg_start": round(os.getloadavg()[0], 2),
        "iperf3": tool_version(["iperf3", "--version"]),
    }
    if "slirp4netns" in args.paths:
        environment["slirp4netns"] = tool_version(["slirp4netns", "--version"])
    report: dict = {"config": config, "environment": environment, "errors": [],
                    "rounds": {p: {k: [] for k, *_ in METRICS} for p in args.paths},
                    "raw": {p: [] for p in args.paths},
                    "command": shlex.join([sys.executable, *sys.argv])}
    runner = RunBench(args)
    code = 0
    try:
        runner.start_servers()
        for n in range(args.rounds):
            order = args.paths[n % len(args.paths):] + args.paths[:n % len(args.paths)]
            for metric in ("up", "down", "cps", "rtt"):
                for path in order:
                    log(f"round {n + 1}/{args.rounds}: {metric} via {path} ...")
                    result = runner.measure(path, metric)
                    report["raw"][path].append({"round": n + 1, "metric": metric, **result})
                    if result.get("error"):
                        report["errors"].append(result["error"])
                        code = 1
                        continue
                    r = report["rounds"][path]
                    if metric in ("up", "down"):
                        r[f"{metric}_mbps"].append(result["mbps"])
                    elif metric == "cps":
                        r["cps"].append(result["cps"])
                    else:
                        r["rtt_p50_us"].append(result["p50_us"])
                        r["rtt_p99_us"].append(result["p99_us"])
    except bt.BenchError as exc:
        report["errors"].append(str(exc))
        log(f"stopped: {exc}")
        code = 1
    except bt.Interrupted as exc:
        log(f"interrupted ({exc}); cleaning up")
        code = 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut cleanup
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        runner.close()
    if code == 130:
        return code
    environment["loadavg_end"] = round(os.getloadavg()[0], 2)
    report["figures"] = {p: figures(report["rounds"][p]) for p in args.paths}
    report["ratios"] = ratios(report["figures"])
    up, down = report["ratios"]["up_mbps"], report["ratios"]["down_mbps"]
    report["aim_met"] = None if up is None or down is None else (up >= AIM and down >= AIM)
    text = json.dumps(report, indent=2)
    if args.json_out:
        with open(args.json_out, "w") as f:
            f.write(text + "\n")
    print(text if args.json else render(report))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
