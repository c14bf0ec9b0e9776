#!/usr/bin/env python3
"""Where usertcp's CPU goes, per operation and per layer.

Two operations (workloads), each measured in a network namespace of its own, against
`python -m usertcp echo` behind its TUN device, with bench_tun's client (scripts/bench_client.c
when it builds, else bench_tun's Python client) in the same namespace:

  rtt   one op = one 64-byte echo round trip on one open connection (TCP_NODELAY): the
        client's segment in, the echo out (carrying the ACK); 200 warm-up round trips count
  cps   one op = one whole sequential connection: connect (SYN, SYN-ACK, ACK), 1-byte echo,
        the client's shutdown (FIN), the server's FIN, close

Per workload:
  1. unprofiled: the usertcp process's CPU seconds (user and system apart, /proc/PID/stat)
     over the client's run, divided by the ops: µs of CPU per op; plus the client's figure
     (round trip p50, or conn/s);
  2. under cProfile (`python -m cProfile -o F -m usertcp echo ...`, stopped with SIGINT so that
     the profile is written), minus a baseline profile of a server that did no ops (start-up,
     one readiness probe, shutdown: the same in both), divided by the ops. A function called
     as often in both did no per-op work: its time (start-up, noisy) is left out and shown as
     one figure. Own time (tottime) is grouped by layer:
       engine            usertcp/stack.py, usertcp/tcp/*, usertcp/wire/*, usertcp/fragments.py
       driver+transport  usertcp/aio/*, usertcp/apps/*
       device            usertcp/phy/*
       asyncio loop      asyncio/*, selectors.py, uvloop
       device read       posix.read            (syscall)
       device write      posix.writev, posix.write (syscall)
       epoll wait        select.epoll.poll     (idle: not counted in the shares)
       other             the rest
     A C built-in other than those syscalls (len, struct, bytes methods, ...) counts in the
     layer of the Python function that called it. Shares are of the non-waiting time. cProfile
     inflates Python calls far more than syscalls, so Python layers also get a "calibrated" µs
     per op: their share x the unprofiled user CPU per op (calib), and their share among the
     Python layers only x the same (calib-py: what the user CPU is left to, since syscalls cost
     mostly system CPU). Under uvloop, cProfile cannot see uvloop's C loop (its time, the epoll
     wait included, shows as asyncio.Runner.run's); the wait is estimated as the time the
     server slept (profile wall time minus its time on a CPU and waiting for one, from
     /proc/PID/schedstat) and taken out of that function.

Run as root, with the project's interpreter:

    .venv/bin/python scripts/profile_costs.py                       # rtt and cps, table
    .venv/bin/python scripts/profile_costs.py --workload rtt --count 5000 --loop uvloop
    .venv/bin/python scripts/profile_costs.py --json --keep /tmp/prof   # all figures; .prof kept

Namespaces (`bench-prof-<pid>-<n>`) and processes are made here and removed on exit, also on
Ctrl-C or an error. Figures are sensitive to other load on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import shutil
import signal
import sys
import time
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.dirname(HERE))

import bench_tun  # a sibling script: its namespaces, processes and clients

HOST, HOST_NET = bench_tun.USERTCP_NET  # the stack's address, the kernel side of the TUN
PORT = bench_tun.PORTS["echo"]
CLIENT_SECONDS = 120.0  # a client's own time bound; per-op figures use the ops it did
STOP_TIMEOUT = 30.0  # SIGINT to exit: a profile is written in that time
WARMUP_MAX = 200  # the clients' warm-up round trips (bench_tun.client_rtt, bench_client.c)
TOP_PER_LAYER = 3
TOP_OVERALL = 15

WAITING = "epoll wait"
SYSCALLS = ("device read", "device write")
PYTHON_LAYERS = ("engine", "driver+transport", "device", "asyncio loop", "other")
LAYERS = ("engine", "driver+transport", "device", "asyncio loop", "device read",
          "device write", WAITING, "other")
LAYER_TITLES = {"device read": "device read (posix.read)",
                "device write": "device write (posix.writev/write)",
                WAITING: "epoll wait (idle, not in shares)"}
ENGINE_PATHS = ("stack.py", "tcp/", "wire/", "fragments.py")
DRIVER_PATHS = ("aio/", "apps/")
LOOP_RUNNER = ("asyncio/runners.py:", "(run)")  # Runner.run: uvloop's C loop runs inside it
SYSCALL_NAMES = {"<built-in method posix.read>": "device read",
                 "<built-in method posix.writev>": "device write",
                 "<built-in method posix.write>": "device write"}


@dataclass(frozen=True)
class Workload:
    name: str
    what: str  # what one op is, for the header
    default_count: int

    def client_args(self, count: int) -> tuple:
        if self.name == "rtt":
            return (count, 64, CLIENT_SECONDS)
        return (count, CLIENT_SECONDS)

    def truncated(self, result: dict, count: int) -> bool:
        done = result["round_trips"] if self.name == "rtt" else result["connections"]
        return done < count

    def ops(self, result: dict, count: int) -> int:
        """Operations the server saw during the client's run (the rtt warm-up included)."""
        if self.name == "rtt":
            return result["round_trips"] + min(WARMUP_MAX, count)
        return result["connections"]

    def figure(self, result: dict) -> str:
        if self.name == "rtt":
            return f"p50 {result['p50_us']:,.1f} µs, p99 {result['p99_us']:,.1f} µs"
        return f"{result['cps']:,.0f} conn/s (p50 {result['p50_us']:,.1f} µs each)"


WORKLOADS = {
    "rtt": Workload("rtt", "one 64-byte echo round trip on an open connection (TCP_NODELAY)",
                    20000),
    "cps": Workload("cps", "one whole sequential connection: connect, 1-byte echo, client "
                    "shutdown (FIN), server FIN, close", 3000),
}


class ProfileError(Exception):
    pass


# =========================================================================================
# Processes
# =========================================================================================

def cpu_times(pid: int) -> tuple[float, float] | None:
    """(user, system) CPU seconds of a process, from /proc (None if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def sched_times(pid: int) -> tuple[float, float] | None:
    """(seconds on a CPU, seconds runnable but waiting for one) of a process's main thread,
    from /proc/PID/schedstat (None if it is gone or the kernel keeps no such figures)."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            on_cpu, waiting = f.read().split()[:2]
    except (OSError, ValueError):
        return None
    return int(on_cpu) / 1e9, int(waiting) / 1e9


class Session:
    """One run: bench_tun's Runner owns the namespaces, processes and temp dir."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.runner = bench_tun.Runner(args)
        self.prof_dir = args.keep or os.path.join(self.runner.tmp, "prof")
        os.makedirs(self.prof_dir, exist_ok=True)
        self._tuns = 0

    def close(self) -> None:
        self.runner.close()

    def start_server(self, ns: str, profile: str | None):
        """`usertcp echo` in `ns` (under cProfile into `profile` if given), ready to serve."""
        self._tuns += 1
        tun = f"utcp-p{self._tuns}"
        argv = [sys.executable]
        if profile:
            argv += ["-m", "cProfile", "-o", profile]
        argv += ["-m", "usertcp", "echo", "--tun", tun, "--address", HOST,
                 "--host-address", HOST_NET, "--port", str(PORT), "--log-level", "warning",
                 "--loop", self.args.loop]
        log_path = os.path.join(self.runner.tmp, f"{tun}.log")
        self.runner._server_log = log_path  # bench_tun shows its tail when the server fails
        with open(log_path, "wb") as logf:
            server = self.runner.popen(argv, ns, stdout=logf, stderr=logf,
                                       cwd=bench_tun.REPO)
        try:
            self.runner.wait_ready(ns, HOST, PORT, server, "usertcp echo")
        except BaseException:
            self.runner.stop(server, signal.SIGKILL)
            raise
        return server

    def stop_server(self, server, profile: str | None) -> None:
        """SIGINT: usertcp's clean stop, after which cProfile writes its file."""
        code = self.runner.stop(server, signal.SIGINT, timeout=STOP_TIMEOUT)
        if code not in (0, 130, -signal.SIGINT):
            raise ProfileError(f"usertcp exited with {code}{self.runner.server_log_tail()}")
        if profile and not os.path.exists(profile):
            raise ProfileError(f"usertcp wrote no profile to {profile}")

    def drive(self, ns: str, server, work: Workload) -> dict:
        """Run the client against `server`; its result with the server's CPU over the run."""
        count = self.args.count or work.default_count
        cpu0 = cpu_times(server.pid)
        result = self.runner.client(ns, work.name, HOST, PORT, *work.client_args(count),
                                    timeout=CLIENT_SECONDS)
        cpu1 = cpu_times(server.pid)
        if "error" in result:
            raise ProfileError(f"client {work.name}: {result['error']}"
                               f"{self.runner.server_log_tail()}")
        if cpu0 is None or cpu1 is None or server.poll() is not None:
            raise ProfileError(f"usertcp died during {work.name}{self.runner.server_log_tail()}")
        ops = work.ops(result, count)
        if ops <= 0 or result.get("p50_us") is None:
            raise ProfileError(f"client {work.name}: no op done within {CLIENT_SECONDS:.0f} s")
        user, system = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
        return {"client": result, "count": count, "ops": ops, "figure": work.figure(result),
                "truncated": work.truncated(result, count),
                "cpu_user_s": user, "cpu_sys_s": system,
                "user_us_per_op": user / ops * 1e6, "sys_us_per_op": system / ops * 1e6,
                "core_share": (user + system) / result["seconds"] if result["seconds"] else None}

    def baseline(self, ns: str) -> dict:
        """A profiled server that does no ops: start-up, the readiness probe, shutdown."""
        path = os.path.join(self.prof_dir, f"baseline-{self.args.loop}.prof")
        server = self.start_server(ns, path)
        sched = sched_times(server.pid)
        self.stop_server(server, path)
        return {"prof": path, "sched": sched}

    def workload(self, work: Workload, base: dict | None) -> tuple[dict, dict]:
        """Both runs of one workload in a namespace of its own; (result, baseline)."""
        ns = self.runner.netns("prof")
        bench_tun.log(f"{work.name}: unprofiled ...")
        server = self.start_server(ns, None)
        plain = self.drive(ns, server, work)
        self.stop_server(server, None)
        if base is None:
            bench_tun.log("baseline profile (no ops) ...")
            base = self.baseline(ns)
        bench_tun.log(f"{work.name}: under cProfile ...")
        path = os.path.join(self.prof_dir, f"{work.name}-{self.args.loop}.prof")
        server = self.start_server(ns, path)
        profiled = self.drive(ns, server, work)
        sched = sched_times(server.pid)
        self.stop_server(server, path)
        profiled["prof"] = path
        profiled["sched"] = sched
        busy = None  # the main thread's (on a CPU, waiting for one) seconds, run minus baseline
        if sched is not None and base["sched"] is not None:
            busy = (sched[0] - base["sched"][0], sched[1] - base["sched"][1])
        layers = analyse(path, base["prof"], profiled["ops"], sched=busy,
                         uvloop=self.args.loop == "uvloop", user_us=plain["user_us_per_op"])
        return {"workload": work.name, "op": work.what, "unprofiled": plain,
                "profiled": profiled, **layers}, base


# =========================================================================================
# Profiles: own time by layer
# =========================================================================================

Func = tuple[str, int, str]  # pstats' key: file, line, function name


def short_path(path: str) -> str:
    """usertcp/tcp/x.py, asyncio/events.py, selectors.py: enough to tell where it lives."""
    cut = path.rfind("/usertcp/")
    if cut >= 0:
        return path[cut + 1:]
    cut = path.rfind("/asyncio/")
    if cut >= 0:
        return path[cut + 1:]
    return os.path.basename(path)


def label(func: Func) -> str:
    file, line, name = func
    return name if file == "~" else f"{short_path(file)}:{line}({name})"


def own_layer(func: Func) -> str | None:
    """The layer of a function by where it lives; None for a C built-in that counts in its
    callers' layers."""
    file, _, name = func
    if file == "~":
        if name in SYSCALL_NAMES:
            return SYSCALL_NAMES[name]
        if "select.epoll" in name and "poll" in name.replace("select.epoll", ""):
            return WAITING
        return "asyncio loop" if "uvloop" in name else None
    cut = file.rfind("/usertcp/")
    if cut >= 0:
        rel = file[cut + len("/usertcp/"):]
        if rel.startswith(ENGINE_PATHS):
            return "engine"
        if rel.startswith(DRIVER_PATHS):
            return "driver+transport"
        if rel.startswith("phy/"):
            return "device"
        return "other"
    if "/asyncio/" in file or file.endswith("/selectors.py") or "uvloop" in file:
        return "asyncio loop"
    return "other"


def caller_layer(func: Func, stats: dict, depth: int = 0) -> str:
    layer = own_layer(func)
    if layer is not None and layer not in SYSCALLS and layer != WAITING:
        return layer
    if layer is None and depth < 3 and func in stats:  # a built-in calling: its main caller's
        callers = stats[func][4]
        if callers:
            main = max(callers, key=lambda c: callers[c][2])
            return caller_layer(main, stats, depth + 1)
    return "other"


def costs(path: str) -> tuple[dict[tuple[str, str], list[float]], float]:
    """(layer, function label) -> [calls, own seconds]; and the profile's total own time."""
    stats = pstats.Stats(path).stats
    out: dict[tuple[str, str], list[float]] = {}

    def add(layer: str, name: str, calls: float, seconds: float) -> None:
        entry = out.setdefault((layer, name), [0.0, 0.0])
        entry[0] += calls
        entry[1] += seconds

    total = 0.0
    for func, (_, ncalls, tottime, _, callers) in stats.items():
        total += tottime
        layer = own_layer(func)
        if layer is not None or not callers:
            add(layer or "other", label(func), ncalls, tottime)
            continue
        for caller, (c_ncalls, _, c_tottime, _) in callers.items():
            add(caller_layer(caller, stats), label(func), c_ncalls, c_tottime)
    return out, total


def _holds_loop(name: str) -> bool:
    return "uvloop" in name or (name.startswith(LOOP_RUNNER[0])
                                and name.endswith(LOOP_RUNNER[1]))


def analyse(path: str, base_path: str, ops: int, *, sched: tuple[float, float] | None,
            uvloop: bool, user_us: float) -> dict:
    """Per-op own time by layer: the profile minus the baseline, over `ops`.

    `sched`: the main thread's seconds on a CPU and waiting for one, run minus baseline. The
    profile's wall time minus both is the time it slept: the epoll wait (estimated this way
    under uvloop, whose wait cProfile cannot see)."""
    run, run_total = costs(path)
    base, base_total = costs(base_path)
    per_op: dict[tuple[str, str], list[float]] = {}
    startup_us = 0.0
    for key in run.keys() | base.keys():
        r, b = run.get(key, [0.0, 0.0]), base.get(key, [0.0, 0.0])
        us = (r[1] - b[1]) / ops * 1e6
        # Called as often with no ops as with N: start-up work (imports, ...), whose time
        # varies from run to run by more than per-op figures can bear. Not the loop's runner:
        # one call that, under uvloop, holds the whole C loop (Cython methods are invisible
        # to cProfile, so their time is their Python caller's).
        if r[0] == b[0] and not _holds_loop(key[1]):
            startup_us += us
            continue
        per_op[key] = [(r[0] - b[0]) / ops, us]
    idle_us = runq_us = None
    if sched is not None:
        idle_us = max(0.0, run_total - base_total - sched[0] - sched[1]) / ops * 1e6
        runq_us = sched[1] / ops * 1e6
    if uvloop and idle_us is not None:  # its C loop waits in epoll: take the estimated idle time out of it
        runs = [k for k in per_op if k[0] == "asyncio loop" and _holds_loop(k[1])]
        if runs:
            main = max(runs, key=lambda k: per_op[k][1])
            taken = max(0.0, min(idle_us, per_op[main][1]))
            per_op[main][1] -= taken
            per_op[(WAITING, "uvloop's loop (estimated: asleep)")] = [0.0, taken]
    layer_us = {layer: sum(v[1] for k, v in per_op.items() if k[0] == layer) for layer in LAYERS}
    busy = sum(us for layer, us in layer_us.items() if layer != WAITING)
    python = sum(layer_us[layer] for layer in PYTHON_LAYERS)
    layers = []
    for layer in LAYERS:
        mine = sorted(((k[1], v) for k, v in per_op.items() if k[0] == layer),
                      key=lambda kv: -kv[1][1])
        entry = {"layer": layer, "us_per_op": layer_us[layer],
                 "top": [{"function": name, "calls_per_op": calls, "us_per_op": us}
                         for name, (calls, us) in mine[:TOP_PER_LAYER]]}
        if layer != WAITING:
            entry["share"] = layer_us[layer] / busy if busy > 0 else None
        if layer in PYTHON_LAYERS and busy > 0 and python > 0:
            entry["calib_us_per_op"] = entry["share"] * user_us
            entry["calib_py_us_per_op"] = layer_us[layer] / python * user_us
        layers.append(entry)
    merged: dict[str, dict] = {}
    for (layer, name), (calls, us) in per_op.items():
        if layer == WAITING:
            continue
        m = merged.setdefault(name, {"function": name, "calls_per_op": 0.0, "us_per_op": 0.0,
                                     "layers": {}})
        m["calls_per_op"] += calls
        m["us_per_op"] += us
        m["layers"][layer] = m["layers"].get(layer, 0.0) + us
    top = sorted(merged.values(), key=lambda m: -m["us_per_op"])[:TOP_OVERALL]
    for m in top:
        m["share"] = m["us_per_op"] / busy if busy > 0 else None
        # A built-in split among its callers' layers: the biggest part first.
        m["layers"] = dict(sorted(m["layers"].items(), key=lambda kv: -kv[1]))
    return {"layers": layers, "busy_us_per_op": busy, "python_us_per_op": python,
            "idle_us_per_op": idle_us, "runqueue_us_per_op": runq_us,
            "startup_noise_us_per_op": startup_us,
            "top_functions": top}


# =========================================================================================
# Output
# =========================================================================================

def _num(value: float | None, fmt: str = "{:,.2f}") -> str:
    return "-" if value is None else fmt.format(value)


def render_workload(r: dict, cfg: dict) -> str:
    plain, prof = r["unprofiled"], r["profiled"]
    core = plain["core_share"]
    lines = [f"=== {r['workload']}: one op = {r['op']} ===",
             f"client {cfg['client']}, usertcp loop {cfg['loop']}"]
    lines.append(f"unprofiled: {plain['ops']:,} ops in {plain['client']['seconds']:.2f} s, "
                 f"{plain['figure']}")
    lines.append(f"  usertcp CPU per op: user {plain['user_us_per_op']:.1f} µs, "
                 f"sys {plain['sys_us_per_op']:.1f} µs, "
                 f"total {plain['user_us_per_op'] + plain['sys_us_per_op']:.1f} µs "
                 f"({_num(core and core * 100, '{:.0f}')}% of a core)")
    lines.append(f"profiled (cProfile): {prof['ops']:,} ops, {prof['figure']}")
    lines.append(f"  usertcp CPU per op: user {prof['user_us_per_op']:.1f} µs, "
                 f"sys {prof['sys_us_per_op']:.1f} µs; own time below: this run minus a "
                 f"baseline run with no ops")
    for run, what in ((plain, "unprofiled"), (prof, "profiled")):
        if run["truncated"]:
            lines.append(f"note: the {what} client hit its {CLIENT_SECONDS:.0f} s bound")
    lines.append("")
    rows = [("layer / its top functions", "calls/op", "own µs/op", "share", "calib µs/op",
             "calib-py µs/op")]
    for entry in r["layers"]:
        rows.append((LAYER_TITLES.get(entry["layer"], entry["layer"]), "",
                     _num(entry["us_per_op"]),
                     _num(entry.get("share") and entry["share"] * 100, "{:.1f}%"),
                     _num(entry.get("calib_us_per_op")), _num(entry.get("calib_py_us_per_op"))))
        for f in entry["top"]:
            rows.append(("    " + f["function"], _num(f["calls_per_op"]), _num(f["us_per_op"]),
                         "", "", ""))
    rows.append(("total, waiting excluded", "", _num(r["busy_us_per_op"]), "100.0%",
                 _num(plain["user_us_per_op"] * (1 - _syscall_share(r))),
                 _num(plain["user_us_per_op"])))
    lines += _table(rows)
    idle = _num(r["idle_us_per_op"], "{:.1f}")
    runq = _num(r["runqueue_us_per_op"], "{:.1f}")
    startup = f"{r['startup_noise_us_per_op']:+.1f}"
    lines += [
        "",
        "own µs/op is profiled own time (cProfile slows Python calls far more than syscalls).",
        "calib = share x unprofiled user CPU per op; calib-py = share among the Python layers",
        "only x the same (the syscall rows cost mostly system CPU). A C built-in counts in its",
        "caller's layer.",
        f"profiled run, per op: asleep (wall - on CPU - runnable) {idle} µs; runnable, waiting",
        f"for a core {runq} µs (spread over the rows above: load inflates them); left out as",
        f"start-up (functions called as often as in the baseline): {startup} µs/op",
    ]
    if cfg["loop"] == "uvloop":
        lines.append("uvloop: cProfile cannot see its C loop, whose time (epoll wait included) "
                     "is asyncio.Runner.run's;")
        lines.append("the wait row is the time asleep, taken out of that function's.")
    lines += ["", f"top {TOP_OVERALL} functions by own time per op (profiled, waiting excluded):"]
    rows = [("own µs/op", "share", "calls/op", "layer", "function")]
    for f in r["top_functions"]:
        rows.append((_num(f["us_per_op"]), _num(f["share"] and f["share"] * 100, "{:.1f}%"),
                     _num(f["calls_per_op"]), _layers_cell(f["layers"]), f["function"]))
    lines += _table(rows, left=(3, 4))
    return "\n".join(lines)


def _layers_cell(layers: dict[str, float]) -> str:
    names = list(layers)
    return names[0] + (f" +{len(names) - 1} more" if len(names) > 1 else "")


def _syscall_share(r: dict) -> float:
    return sum(e.get("share") or 0.0 for e in r["layers"] if e["layer"] in SYSCALLS)


def _table(rows: list[tuple], left: tuple[int, ...] = (0,)) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    out = []
    for n, row in enumerate(rows):
        cells = [c.ljust(w) if i in left else c.rjust(w)
                 for i, (c, w) in enumerate(zip(row, widths))]
        out.append("  ".join(cells).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return out


# =========================================================================================

def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", default="rtt,cps",
                   help="comma-separated: rtt, cps (default rtt,cps)")
    p.add_argument("--count", type=int,
                   help="ops per run (default: rtt 20000 round trips, cps 3000 connections)")
    p.add_argument("--client", choices=("auto", "c", "python"), default="auto",
                   help="bench_tun's client: scripts/bench_client.c or Python (default auto: c "
                        "when `cc` builds it)")
    p.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio",
                   help="usertcp's event loop (default asyncio)")
    p.add_argument("--json", action="store_true", help="print one JSON object with everything")
    p.add_argument("--keep", metavar="DIR", help="write the .prof files into DIR and keep them")
    args = p.parse_args(argv)
    names = [w.strip() for w in args.workload.split(",") if w.strip()]
    if not names or any(w not in WORKLOADS for w in names) or len(set(names)) < len(names):
        p.error("--workload takes rtt, cps or rtt,cps")
    args.workloads = names
    if args.count is not None and args.count <= 0:
        p.error("--count must be positive")
    if args.keep:
        args.keep = os.path.abspath(args.keep)
        try:
            os.makedirs(args.keep, exist_ok=True)
        except OSError as exc:
            p.error(f"--keep {args.keep}: {exc.strerror}")
    if args.loop == "uvloop":
        try:
            import uvloop  # noqa: F401 -- only whether usertcp --loop uvloop can run
        except ImportError:
            p.error("--loop uvloop: uvloop is not installed in this interpreter")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("profile_costs: run as root (network namespaces, TUN devices)", file=sys.stderr)
        return 2
    if shutil.which("ip") is None:
        print("profile_costs: needs the `ip` command (iproute2)", file=sys.stderr)
        return 2

    def interrupted(signum, frame):
        raise bench_tun.Interrupted(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    report: dict = {"config": {"workloads": args.workloads, "count": args.count,
                               "loop": args.loop, "client": None, "keep": args.keep},
                    "results": {}, "errors": []}
    session = Session(args)
    code = 0
    try:
        try:
            report["config"]["client"] = session.runner.choose_client(args.client)
        except bench_tun.BenchError as exc:
            print(f"profile_costs: --client c: {exc}", file=sys.stderr)
            return 2
        base = None
        for name in args.workloads:
            try:
                result, base = session.workload(WORKLOADS[name], base)
                report["results"][name] = result
            except (ProfileError, bench_tun.BenchError, OSError) as exc:
                report["errors"].append(f"{name}: {exc}")
                code = 1
    except bench_tun.Interrupted as exc:
        bench_tun.log(f"interrupted ({exc}); cleaning up")
        code = 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut cleanup
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        session.close()
    if code == 130:
        return code
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        blocks = [render_workload(r, report["config"]) for r in report["results"].values()]
        blocks += [f"ERROR {e}" for e in report["errors"]]
        if args.keep:
            blocks.append(f"profiles kept in {args.keep}")
        print("\n\n".join(blocks))
    return code


if __name__ == "__main__":
    started = time.monotonic()
    status = main(sys.argv[1:])
    bench_tun.log(f"done in {time.monotonic() - started:.0f} s")
    sys.exit(status)
