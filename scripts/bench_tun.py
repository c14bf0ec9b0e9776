#!/usr/bin/env python3
"""Benchmark usertcp behind a TUN device against the kernel talking to itself over a veth pair.

One connection at a time, four figures per column:

  upload    a kernel socket sends N MB to the server's discard service: sendall, shutdown(SHUT_WR),
            then wait for the server's FIN (recv returns b""), so every byte was received and
            acknowledged before the clock stops (MB/s, 1 MB = 10^6 bytes);
  download  a kernel socket fetches an N MB file by a raw `GET` with `Connection: close` from the http
            service and reads to EOF (MB/s);
  cps       sequential connections per second: connect, 1-byte echo, shutdown(SHUT_WR), wait for the
            server's FIN, close (bounded by a count and by time);
  rtt       64-byte echo round trips on one connection with TCP_NODELAY: p50 and p99 in µs.

Column `usertcp`: `python -m usertcp discard|http|echo` runs in a namespace of its own with its TUN device;
the kernel client runs in that namespace and talks to the stack's address. Column `kernel`: a small Python
server (discard, file over HTTP, echo) in one namespace and the same client in another, joined by a veth
pair with the same MTU. All namespaces are made here (`bench-<role>-<pid>-<n>`, by usertcp.netns) and
deleted on exit (those of an earlier run that was killed are reaped at the start), also on
Ctrl-C or an error; every process is started here and stopped by its PID.

Every figure is taken over IPv4 and over IPv6 (--families 4,6, the default): one usertcp process
per service serves both (`--address 10.7.0.2 --address fd00:7::2`), the veth pair carries both
(10.8.0.0/24 and fd00:8::/64, without duplicate address detection), and the families alternate
within each round (4 then 6, then 6 then 4, ...) so that both see the same machine state. The
table shows an IPv6 row under each IPv4 row and the ratio IPv6/IPv4 per figure; the aim is IPv6
within 10 % of IPv4 (MB/s and conn/s at least 0.90 of IPv4, round trips at most 1.10 times).

Run as root, with the project's interpreter:

    .venv/bin/python scripts/bench_tun.py                      # table
    .venv/bin/python scripts/bench_tun.py --json               # machine-readable
    .venv/bin/python scripts/bench_tun.py --extra-args=--no-offload   # usertcp without TUN offload
    .venv/bin/python scripts/bench_tun.py --only usertcp --profile /tmp/prof   # cProfile the stack
    .venv/bin/python scripts/bench_tun.py --families 4         # IPv4 only

Each measurement runs --repeat times (default 3) against the same server and the median is shown (all
runs are in --json); a run with defaults takes about 15-20 s per family. Figures are sensitive to
other load on the machine: both columns share its cores with the client.

With --pin same|split the servers of both columns and the clients run on one core, or on a core
each (taskset): on a VM, waking a process on the other core can cost more than the round trip's work,
and the scheduler's choice makes unpinned round trips vary from run to run.

With --busy-poll USEC usertcp runs with `--busy-poll USEC` and the kernel column's echo server polls
as long after each event before it sleeps: both columns spin alike.

With --profile DIR each usertcp service runs under cProfile (or pyinstrument: --profiler) and its profile
is written to DIR and summarised after the table; profiled figures are slower than unprofiled ones.

The same file is the client and the kernel-side server that run inside the namespaces (`_client ...`,
`_server ...`); those use only the standard library and print one line of JSON.

--client c|python|auto (default auto: c when `cc` compiles it): the cps and rtt clients are
scripts/bench_client.c, built once per run into the run's temp dir, so that Python's cost per
connection and per round trip does not bound those figures; upload and download always use the
Python client. Both columns use the same client; it is named in the table and in `config.client`.

--json: `results` and `figures` hold the columns `usertcp` and `kernel` for IPv4 (as before IPv6)
and `usertcp_v6` and `kernel_v6` for IPv6; `floors_met` is usertcp over IPv4, `floors_met_v6` over
IPv6; `ratio_v6_v4` holds IPv6/IPv4 per figure and implementation, and `v6_within_tolerance`
whether usertcp's ratio is within `config.v6_tolerance`; `config.families` lists the families.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import selectors
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

MB = 1_000_000
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

FLOORS = {  # what the usertcp column must reach
    "upload_mbps": (">=", 150.0),
    "download_mbps": (">=", 100.0),
    "cps": (">=", 1500.0),
    "rtt_p50_us": ("<=", 300.0),
}

MEDIAN_KEY = {"upload": "mbps", "download": "mbps", "cps": "cps", "rtt": "p50_us"}
PORTS = {"discard": 9, "http": 80, "echo": 7}
FILE_NAME = "bench.bin"
USERTCP_NET = ("10.7.0.2", "10.7.0.1/24")  # the stack's address, the kernel side of the TUN
VETH_NET = ("10.8.0.1", "10.8.0.2", 24)  # server side, client side, prefix
USERTCP_NET6 = ("fd00:7::2", "fd00:7::1/64")
VETH_NET6 = ("fd00:8::1", "fd00:8::2", 64)
FAMILIES = (4, 6)
IPV6_MIN_MTU = 1280  # RFC 8200: a link that carries IPv6 has at least this MTU
V6_TOLERANCE = 0.10  # the aim: IPv6 within 10 % of IPv4 on every figure
STOP_TIMEOUT = 5.0
READY_TIMEOUT = 15.0
CLIENT_GRACE = 30.0  # beyond a client's own time bound before it is killed
C_CLIENT_SRC = os.path.join(HERE, "bench_client.c")
C_CLIENT_ROLES = ("cps", "rtt")  # the roles bench_client.c does; the rest stay in Python
COMPILE_TIMEOUT = 60.0


# =========================================================================================
# Inside the namespaces: the clients (stdlib only; each prints one JSON object)
# =========================================================================================

def _connect(host: str, port: int, timeout: float) -> socket.socket:
    return socket.create_connection((host, port), timeout=timeout)


def _wait_eof(sock: socket.socket, deadline: float) -> int:
    """Read until the peer's FIN; returns stray bytes read. Bounded by `deadline`."""
    stray = 0
    for _ in range(1_000_000):
        sock.settimeout(max(0.05, deadline - time.perf_counter()))
        data = sock.recv(65536)
        if not data:
            return stray
        stray += len(data)
    raise RuntimeError("peer never closed")


def client_wait(host: str, port: str, timeout: str) -> dict:
    port_n, limit = int(port), float(timeout)
    start = time.perf_counter()
    deadline = start + limit
    attempts = 0
    last = ""
    while attempts < 10_000:
        attempts += 1
        try:
            _connect(host, port_n, 0.5).close()
            return {"ok": True, "attempts": attempts, "seconds": time.perf_counter() - start}
        except OSError as exc:
            last = str(exc)
        if time.perf_counter() >= deadline:
            break
        time.sleep(0.02)
    return {"ok": False, "attempts": attempts, "error": f"no connect to {host}:{port}: {last}"}


def client_upload(host: str, port: str, nbytes: str, seconds: str) -> dict:
    total, limit = int(nbytes), float(seconds)
    chunk = memoryview(bytes(range(256)) * 4096)  # 1 MiB
    sock = _connect(host, int(port), limit)
    start = time.perf_counter()
    deadline = start + limit
    sent = 0
    while sent < total and time.perf_counter() < deadline:
        n = min(len(chunk), total - sent)
        sock.sendall(chunk[:n])
        sent += n
    sock.shutdown(socket.SHUT_WR)
    stray = _wait_eof(sock, deadline + CLIENT_GRACE / 2)
    elapsed = time.perf_counter() - start
    sock.close()
    return {"bytes": sent, "seconds": elapsed, "mbps": sent / elapsed / MB,
            "truncated": sent < total, "stray": stray}


def client_download(host: str, port: str, path: str, seconds: str) -> dict:
    limit = float(seconds)
    sock = _connect(host, int(port), limit)
    start = time.perf_counter()
    deadline = start + limit
    authority = f"[{host}]" if ":" in host else host  # RFC 3986: an IPv6 literal in brackets
    sock.sendall(f"GET /{path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
                 .encode())
    buf = bytearray(1 << 20)
    head = bytearray()
    body = 0
    length = None
    truncated = False
    for _ in range(100_000_000):  # bounded; ends at EOF or the deadline
        now = time.perf_counter()
        if now >= deadline:
            truncated = True
            break
        sock.settimeout(deadline - now)
        n = sock.recv_into(buf)
        if n == 0:
            break
        if length is None:
            head += buf[:n]
            end = head.find(b"\r\n\r\n")
            if end < 0:
                if len(head) > 65536:
                    raise RuntimeError("no end of the response head")
                continue
            lines = bytes(head[:end]).decode("latin-1").split("\r\n")
            if lines[0].split(" ")[1:2] != ["200"]:
                raise RuntimeError(f"bad response: {lines[0]!r}")
            fields = dict(line.split(":", 1) for line in lines[1:] if ":" in line)
            fields = {k.strip().lower(): v.strip() for k, v in fields.items()}
            length = int(fields.get("content-length", "-1"))
            body = len(head) - end - 4
        else:
            body += n
    elapsed = time.perf_counter() - start
    sock.close()
    if not truncated and length is not None and body != length:
        raise RuntimeError(f"body of {body} bytes, Content-Length {length}")
    return {"bytes": body, "seconds": elapsed, "mbps": body / elapsed / MB, "truncated": truncated}


def client_cps(host: str, port: str, count: str, seconds: str) -> dict:
    port_n, limit = int(port), float(seconds)
    latencies = []
    start = time.perf_counter()
    deadline = start + limit
    for _ in range(int(count)):
        t0 = time.perf_counter()
        if t0 >= deadline:
            break
        sock = _connect(host, port_n, 5.0)
        sock.sendall(b"x")
        if sock.recv(1) != b"x":
            raise RuntimeError("echo returned something else")
        sock.shutdown(socket.SHUT_WR)
        if _wait_eof(sock, time.perf_counter() + 5.0):
            raise RuntimeError("echo returned extra bytes")
        sock.close()
        latencies.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - start
    latencies.sort()
    n = len(latencies)
    return {"connections": n, "seconds": elapsed, "cps": n / elapsed if elapsed else 0.0,
            "p50_us": latencies[n // 2] * 1e6 if n else None,
            "p99_us": latencies[min(n - 1, n * 99 // 100)] * 1e6 if n else None}


def client_rtt(host: str, port: str, count: str, size: str, seconds: str) -> dict:
    limit, size_n, count_n = float(seconds), int(size), int(count)
    sock = _connect(host, int(port), 5.0)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    message = bytes(i & 0xFF for i in range(size_n))
    buf = bytearray(size_n)
    view = memoryview(buf)
    samples = []
    warmup = min(200, count_n)
    start = time.perf_counter()
    deadline = start + limit
    clock = time.perf_counter_ns
    for i in range(warmup + count_n):
        if time.perf_counter() >= deadline:
            break
        t0 = clock()
        sock.sendall(message)
        got = 0
        while got < size_n:
            n = sock.recv_into(view[got:])
            if n == 0:
                raise RuntimeError("echo closed early")
            got += n
        t1 = clock()
        if i >= warmup:
            samples.append(t1 - t0)
    if buf != message:
        raise RuntimeError("echo returned different bytes")
    sock.shutdown(socket.SHUT_WR)
    _wait_eof(sock, time.perf_counter() + 5.0)
    sock.close()
    samples.sort()
    n = len(samples)
    if not n:
        raise RuntimeError("no round trip within the time bound")
    return {"round_trips": n, "size": size_n, "seconds": time.perf_counter() - start,
            "p50_us": samples[n // 2] / 1e3, "p99_us": samples[min(n - 1, n * 99 // 100)] / 1e3,
            "mean_us": sum(samples) / n / 1e3, "min_us": samples[0] / 1e3,
            "truncated": n < count_n}


CLIENTS = {"wait": client_wait, "upload": client_upload, "download": client_download,
           "cps": client_cps, "rtt": client_rtt}


def client_main(argv: list[str]) -> int:
    role, args = argv[0], argv[1:]
    try:
        result = CLIENTS[role](*args)
    except Exception as exc:  # noqa: BLE001 -- reported to the parent, shown in the table
        result = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(result), flush=True)
    return 0


# =========================================================================================
# Inside the namespaces: the kernel-side server (discard, one file over HTTP, echo)
# =========================================================================================

def _serve_discard(conn: socket.socket, root: str) -> None:
    buf = bytearray(256 * 1024)
    while conn.recv_into(buf):
        pass


def _serve_http(conn: socket.socket, root: str) -> None:
    head = b""
    while b"\r\n\r\n" not in head:
        data = conn.recv(16384)
        if not data or len(head) > 65536:
            return
        head += data
    target = head.split(b"\r\n", 1)[0].split(b" ")[1].decode("latin-1")
    path = os.path.join(root, os.path.basename(target))
    if not os.path.isfile(path):
        conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        return
    size = os.path.getsize(path)
    conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                 f"Content-Length: {size}\r\nConnection: close\r\n\r\n".encode())
    with open(path, "rb") as f:  # the same 256 KiB reads and writes as usertcp's http app
        while chunk := f.read(256 * 1024):
            conn.sendall(chunk)


def _handle(handler, conn: socket.socket, root: str) -> None:
    with conn:
        conn.settimeout(60.0)
        with contextlib.suppress(OSError):
            handler(conn, root)


def _accept_loop(listener: socket.socket, handler, root: str) -> None:
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=_handle, args=(handler, conn, root), daemon=True).start()


def _echo_loop(listener: socket.socket, spin: float = 0.0) -> None:
    """The echo service in one thread on a selector: a connection costs no thread start, so the
    kernel's connections per second are the kernel's, not Python's threading. With `spin`
    (seconds; --busy-poll) it polls on that long after the last event before it sleeps, as
    usertcp's --busy-poll does, yielding the core at each empty poll."""
    sel = selectors.DefaultSelector()
    last = 0.0
    listener.setblocking(False)
    sel.register(listener, selectors.EVENT_READ)
    unsent: dict[socket.socket, bytes] = {}

    def drop(conn: socket.socket) -> None:
        sel.unregister(conn)
        unsent.pop(conn, None)
        conn.close()

    while True:
        ready = sel.select(0) if spin else None
        if ready:
            last = time.perf_counter()
        elif spin and time.perf_counter() - last < spin:
            os.sched_yield()
            continue
        else:
            ready = sel.select()
            last = time.perf_counter()
        for key, events in ready:
            sock = key.fileobj
            if sock is listener:
                with contextlib.suppress(BlockingIOError):
                    while True:
                        conn, _ = listener.accept()
                        conn.setblocking(False)
                        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                        sel.register(conn, selectors.EVENT_READ)
                continue
            try:
                if events & selectors.EVENT_WRITE:
                    data = unsent.pop(sock)
                else:
                    data = sock.recv(256 * 1024)
                    if not data:
                        drop(sock)
                        continue
                sent = sock.send(data)
            except BlockingIOError:
                continue
            except OSError:
                drop(sock)
                continue
            if sent < len(data):  # the peer is slow: wait until it can take the rest
                unsent[sock] = data[sent:]
                sel.modify(sock, selectors.EVENT_WRITE)
            elif events & selectors.EVENT_WRITE:
                sel.modify(sock, selectors.EVENT_READ)


def server_main(argv: list[str]) -> int:
    """`_server ADDRESS[,ADDRESS...] ROOT [SPIN_US]`: serve discard, http and echo on each address
    (IPv4 or IPv6) until SIGTERM/SIGINT; the echo busy-polls SPIN_US after each event."""
    addresses, root, *rest = argv
    spin = float(rest[0]) / 1e6 if rest else 0.0
    handlers = {"discard": _serve_discard, "http": _serve_http}
    for address in addresses.split(","):
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        for name, port in PORTS.items():
            listener = socket.create_server((address, port), family=family, backlog=1024,
                                            reuse_port=False)
            if name == "echo":
                threading.Thread(target=_echo_loop, args=(listener, spin), daemon=True).start()
                continue
            threading.Thread(target=_accept_loop, args=(listener, handlers[name], root),
                             daemon=True).start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    return 0


# =========================================================================================
# The orchestrator
# =========================================================================================

def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


class Interrupted(BaseException):
    pass


class Runner:
    """Owns the namespaces, processes and temporary files of one run; `close` undoes them all."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.namespaces: list = []  # usertcp.netns.NetNS
        self.procs: list[subprocess.Popen] = []
        self.tmp = tempfile.mkdtemp(prefix="bench-tun-")
        self.file_dir = os.path.join(self.tmp, "www")
        os.mkdir(self.file_dir)
        self.c_client: str | None = None  # the built bench_client, when cps/rtt use it

    def pinned(self, argv: list[str], side: str) -> list[str]:
        """`argv` under taskset as --pin asks: the server ("server") and the client ("client")
        of both columns on one core (same), on two (split), or where the scheduler likes."""
        pin = getattr(self.args, "pin", "none")  # subclasses (bench_run, ...) have no --pin
        if pin == "none":
            return argv
        cpu = "0" if pin == "same" or side == "server" else "1"
        return ["taskset", "-c", cpu, *argv]

    # -- processes -------------------------------------------------------------------------

    def popen(self, argv: list[str], ns: str | None = None, **kw) -> subprocess.Popen:
        if ns is not None:
            argv = ["ip", "netns", "exec", ns, *argv]  # execs the command: the PID is the command's
        # A session of its own: a Ctrl-C on the terminal reaches only this script, which stops
        # its children itself, in order.
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True, **kw)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen, sig: int = signal.SIGTERM,
             timeout: float = STOP_TIMEOUT) -> int:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(STOP_TIMEOUT)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        return proc.returncode

    def run(self, argv: list[str], ns: str | None = None, timeout: float = 30.0,
            check: bool = True) -> tuple[int, str, str]:
        proc = self.popen(argv, ns, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop(proc, signal.SIGKILL)
            raise BenchError(f"{shlex.join(argv)}: no exit within {timeout} s") from None
        if check and proc.returncode != 0:
            raise BenchError(f"{shlex.join(argv)}: exit {proc.returncode}: {err.strip()}")
        return proc.returncode, out, err

    def build_c_client(self) -> str:
        """Compile bench_client.c into the run's temp dir (the namespaces see the same files);
        its path, or BenchError saying why not."""
        cc = shutil.which("cc")
        if cc is None:
            raise BenchError("no C compiler `cc` on PATH")
        binary = os.path.join(self.tmp, "bench_client")
        code, _, err = self.run([cc, "-std=c99", "-O2", "-Wall", "-Wextra", "-o", binary,
                                 C_CLIENT_SRC], timeout=COMPILE_TIMEOUT, check=False)
        if code != 0 or not os.access(binary, os.X_OK):
            raise BenchError(f"cc {C_CLIENT_SRC} failed: {err.strip()[-500:]}")
        return binary

    def choose_client(self, wanted: str) -> str:
        """'c' or 'python' for the cps/rtt client, as --client asks; 'auto' falls back to
        Python when the C client does not build."""
        if wanted == "python":
            log("cps/rtt client: python (--client python)")
            return "python"
        try:
            self.c_client = self.build_c_client()
        except BenchError as exc:
            if wanted == "c":
                raise
            log(f"cps/rtt client: python ({exc})")
            return "python"
        log(f"cps/rtt client: c ({self.c_client})")
        return "c"

    def client(self, ns: str, role: str, *args: object, timeout: float) -> dict:
        """Run one client role inside `ns`; its JSON result (or {'error': ...})."""
        if self.c_client and role in C_CLIENT_ROLES:
            argv = [self.c_client, role, *map(str, args)]
        else:
            argv = [sys.executable, os.path.abspath(__file__), "_client", role, *map(str, args)]
        argv = self.pinned(argv, "client")
        try:
            _, out, err = self.run(argv, ns, timeout=timeout + CLIENT_GRACE, check=False)
        except BenchError as exc:
            return {"error": str(exc)}
        lines = out.strip().splitlines()
        try:
            return json.loads(lines[-1])
        except (IndexError, ValueError):
            return {"error": f"client {role} printed no result: {err.strip()[-500:]}"}

    def wait_ready(self, ns: str, host: str, port: int, server: subprocess.Popen,
                   what: str) -> None:
        """Poll a connect from inside `ns` (bounded) while watching that the server lives."""
        argv = [sys.executable, os.path.abspath(__file__), "_client", "wait", host, str(port),
                str(READY_TIMEOUT)]
        waiter = self.popen(argv, ns, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + READY_TIMEOUT + 10
        while waiter.poll() is None:
            if server.poll() is not None:
                self.stop(waiter, signal.SIGKILL)
                raise BenchError(f"{what} exited with {server.returncode} before it was ready"
                                 f"{self.server_log_tail()}")
            if time.monotonic() > deadline:
                self.stop(waiter, signal.SIGKILL)
                raise BenchError(f"{what}: readiness probe did not finish")
            time.sleep(0.02)
        out = waiter.stdout.read()
        self.stop(waiter)
        result = json.loads(out.strip().splitlines()[-1]) if out.strip() else {"ok": False}
        if not result.get("ok"):
            raise BenchError(f"{what} not ready within {READY_TIMEOUT} s: "
                             f"{result.get('error')}{self.server_log_tail()}")

    def server_log_tail(self) -> str:
        path = getattr(self, "_server_log", None)
        if not path or not os.path.exists(path):
            return ""
        with open(path, errors="replace") as f:
            tail = f.read()[-2000:].strip()
        return f"\n--- its stderr ---\n{tail}" if tail else ""

    # -- namespaces ------------------------------------------------------------------------

    def netns(self, role: str) -> str:
        # Imported here: the clients and servers inside the namespaces need the stdlib only.
        from usertcp.netns import NetNS, reap_stale

        reap_stale(f"bench-{role}")  # left by a run that was killed
        try:
            ns = NetNS.create(f"bench-{role}")
        except OSError as exc:
            raise BenchError(str(exc)) from None
        self.namespaces.append(ns)
        return ns.name

    def close(self) -> None:
        for proc in reversed(self.procs):
            with contextlib.suppress(Exception):
                self.stop(proc, signal.SIGKILL, timeout=1.0)
        for ns in reversed(self.namespaces):
            try:
                ns.close()
            except (OSError, subprocess.SubprocessError) as exc:
                log(f"could not delete netns {ns.name}: {exc}")
        self.namespaces.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- the benchmark ---------------------------------------------------------------------

    def make_file(self) -> None:
        block = os.urandom(1 << 20)
        remaining = self.args.size_mb * MB
        with open(os.path.join(self.file_dir, FILE_NAME), "wb") as f:
            while remaining > 0:
                remaining -= f.write(block[:min(len(block), remaining)])

    def measure(self, ns: str, host: str, server_pid: int, role: str, port: int) -> dict:
        a = self.args
        args: tuple
        if role == "upload":
            args = (a.size_mb * MB, a.seconds)
        elif role == "download":
            args = (FILE_NAME, a.seconds)
        elif role == "cps":
            args = (a.connections, min(a.seconds, a.cps_seconds))
        else:
            args = (a.round_trips, 64, a.seconds)
        cpu0, t0 = _cpu_seconds(server_pid), time.perf_counter()
        result = self.client(ns, role, host, port, *args, timeout=a.seconds)
        cpu1, t1 = _cpu_seconds(server_pid), time.perf_counter()
        if cpu0 is not None and cpu1 is not None:
            # Share of one core, over the client's timed part (its start-up excluded); coarse:
            # /proc counts in clock ticks (10 ms).
            busy = result.get("seconds") or (t1 - t0)
            result["server_cpu"] = min(1.0, (cpu1 - cpu0) / busy) if busy > 0 else None
        return result

    def measure_repeated(self, ns: str, host: str, server_pid: int, role: str,
                         port: int) -> dict:
        """`--repeat` runs of one measurement; the run with the median figure, plus all figures."""
        return self.measure_families(ns, {0: host}, server_pid, role, port)[0]

    def measure_families(self, ns: str, hosts: dict[int, str], server_pid: int, role: str,
                         port: int) -> dict[int, dict]:
        """`--repeat` rounds of one measurement against each of `hosts` (family -> address), the
        families alternating within a round and their order turning each round, so that no
        family always runs first or alone in a spell of load. Per family: the run with the
        median figure plus all figures, or the first error (that family then stops)."""
        key = MEDIAN_KEY[role]
        runs: dict[int, list[dict]] = {fam: [] for fam in hosts}
        failed: dict[int, dict] = {}
        for i in range(self.args.repeat):
            order = list(hosts) if i % 2 == 0 else list(reversed(hosts))
            for fam in order:
                if fam in failed:
                    continue
                result = self.measure(ns, hosts[fam], server_pid, role, port)
                if "error" in result:
                    failed[fam] = result
                else:
                    runs[fam].append(result)
        out: dict[int, dict] = {}
        for fam in hosts:
            if fam in failed:
                out[fam] = failed[fam]
                continue
            chosen = dict(sorted(runs[fam], key=lambda r: r[key])[len(runs[fam]) // 2])
            chosen["runs"] = [r[key] for r in runs[fam]]  # in the order they ran
            out[fam] = chosen
        return out

    def run_usertcp(self) -> dict[int, dict]:
        """family -> role -> result."""
        a = self.args
        ns = self.netns("u")
        nets = {4: USERTCP_NET, 6: USERTCP_NET6}
        hosts = {fam: nets[fam][0] for fam in a.families}
        results: dict[int, dict] = {fam: {} for fam in a.families}
        plan = [("discard", ["upload"]), ("http", ["download"]), ("echo", ["rtt", "cps"])]
        for service, roles in plan:
            port = PORTS[service]
            argv = [sys.executable]
            if a.profile:
                os.makedirs(a.profile, exist_ok=True)
                if a.profiler == "cprofile":
                    argv += ["-m", "cProfile", "-o",
                             os.path.join(a.profile, f"usertcp-{service}.prof")]
                else:
                    argv += ["-m", "pyinstrument", "--no-color", "-r", "text", "-o",
                             os.path.join(a.profile, f"usertcp-{service}.txt")]
            argv += ["-m", "usertcp", service, "--tun", f"utcp-{service}"]
            for fam in a.families:
                argv += ["--address", nets[fam][0], "--host-address", nets[fam][1]]
            argv += ["--mtu", str(a.mtu), "--log-level", a.log_level, "--port", str(port)]
            if service == "http":
                argv += ["--root", self.file_dir]
            if getattr(a, "busy_poll", 0):
                argv += ["--busy-poll", str(a.busy_poll)]
            argv += shlex.split(a.extra_args)
            self._server_log = os.path.join(self.tmp, f"usertcp-{service}.log")
            with open(self._server_log, "wb") as logf:
                server = self.popen(self.pinned(argv, "server"), ns, stdout=logf, stderr=logf,
                                    cwd=REPO)
            try:
                for fam, host in hosts.items():
                    self.wait_ready(ns, host, port, server, f"usertcp {service} (IPv{fam})")
                for role in roles:
                    log(f"usertcp: {role} ...")
                    for fam, result in self.measure_families(ns, hosts, server.pid, role,
                                                             port).items():
                        results[fam][role] = result
                    if server.poll() is not None:
                        raise BenchError(f"usertcp {service} died during {role}"
                                         f"{self.server_log_tail()}")
            except BaseException:
                self.stop(server, signal.SIGINT)
                raise
            # SIGINT is its clean stop (a profiler writes its output then); give it time.
            code = self.stop(server, signal.SIGINT, timeout=30.0 if a.profile else STOP_TIMEOUT)
            if code not in (0, 130, -signal.SIGINT):
                log(f"usertcp {service} exited with {code}{self.server_log_tail()}")
        return results

    def run_kernel(self) -> dict[int, dict]:
        """family -> role -> result."""
        a = self.args
        srv, cli = self.netns("ks"), self.netns("kc")
        nets = {4: VETH_NET, 6: VETH_NET6}
        self.run(["ip", "-n", srv, "link", "add", "veth0", "mtu", str(a.mtu), "type", "veth",
                  "peer", "name", "veth1", "netns", cli, "mtu", str(a.mtu)])
        for fam in a.families:
            s_addr, c_addr, prefix = nets[fam]
            # nodad: usable at once, as the stack's TUN addresses are (no DAD wait, no race)
            extra = ["nodad"] if fam == 6 else []
            self.run(["ip", "-n", srv, f"-{fam}", "addr", "add", f"{s_addr}/{prefix}",
                      "dev", "veth0", *extra])
            self.run(["ip", "-n", cli, f"-{fam}", "addr", "add", f"{c_addr}/{prefix}",
                      "dev", "veth1", *extra])
        self.run(["ip", "-n", srv, "link", "set", "veth0", "up"])
        self.run(["ip", "-n", cli, "link", "set", "veth1", "up"])
        hosts = {fam: nets[fam][0] for fam in a.families}
        self._server_log = os.path.join(self.tmp, "kernel-server.log")
        with open(self._server_log, "wb") as logf:
            server = self.popen(self.pinned([sys.executable, os.path.abspath(__file__), "_server",
                                             ",".join(hosts.values()), self.file_dir,
                                             str(getattr(a, "busy_poll", 0))], "server"),
                                srv, stdout=logf, stderr=logf)
        results: dict[int, dict] = {fam: {} for fam in a.families}
        try:
            for fam, host in hosts.items():
                for service, port in PORTS.items():
                    self.wait_ready(cli, host, port, server, f"kernel {service} server (IPv{fam})")
            for role, service in (("upload", "discard"), ("download", "http"),
                                  ("rtt", "echo"), ("cps", "echo")):
                log(f"kernel: {role} ...")
                for fam, result in self.measure_families(cli, hosts, server.pid, role,
                                                         PORTS[service]).items():
                    results[fam][role] = result
        finally:
            self.stop(server, signal.SIGTERM)
        return results


def _cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process, from /proc (None if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# =========================================================================================
# Output
# =========================================================================================

ROWS = [  # key, label, (role, field), format
    ("upload_mbps", "kernel -> server: discard N MB (MB/s)", ("upload", "mbps"), "{:,.1f}"),
    ("download_mbps", "server -> kernel: GET N MB file (MB/s)", ("download", "mbps"), "{:,.1f}"),
    ("cps", "sequential connections/s (1-byte echo)", ("cps", "cps"), "{:,.0f}"),
    ("rtt_p50_us", "64-byte echo round trip p50 (us)", ("rtt", "p50_us"), "{:,.1f}"),
    ("rtt_p99_us", "64-byte echo round trip p99 (us)", ("rtt", "p99_us"), "{:,.1f}"),
]


def figures(results: dict) -> dict:
    out = {}
    for key, _, (role, field), _ in ROWS:
        r = results.get(role) or {}
        out[key] = r.get(field) if "error" not in r else None
    return out


def verdicts(fig: dict) -> dict:
    out = {}
    for key, (op, floor) in FLOORS.items():
        value = fig.get(key)
        if value is None:
            out[key] = None
        else:
            out[key] = value >= floor if op == ">=" else value <= floor
    return out


LOWER_IS_BETTER = {"rtt_p50_us", "rtt_p99_us"}
IMPLS = ("usertcp", "kernel")


def column_key(impl: str, family: int) -> str:
    """The key of one column in `results`/`figures`: IPv4 keeps the names it had before IPv6."""
    return impl if family == 4 else f"{impl}_v6"


def ratios(v4: dict, v6: dict) -> dict:
    """IPv6/IPv4 per figure (None where either is missing)."""
    return {key: v6[key] / v4[key] if v4.get(key) and v6.get(key) is not None else None
            for key, *_ in ROWS}


def within_tolerance(ratio: dict, tolerance: float = V6_TOLERANCE) -> dict:
    """Whether IPv6 is within `tolerance` of IPv4: not slower, in the figure's own sense."""
    out = {}
    for key, r in ratio.items():
        if r is None:
            out[key] = None
        elif key in LOWER_IS_BETTER:
            out[key] = r <= 1.0 + tolerance
        else:
            out[key] = r >= 1.0 - tolerance
    return out


def render(report: dict) -> str:
    cfg = report["config"]
    families = [f for f in cfg.get("families", [4])]
    impls = [i for i in IMPLS if any(column_key(i, f) in report["results"] for f in families)]
    figs = {column_key(i, f): figures(report["results"].get(column_key(i, f), {}))
            for i in impls for f in families}
    both = len(families) == 2
    tol = cfg.get("v6_tolerance", V6_TOLERANCE)
    ratio = {i: ratios(figs[column_key(i, 4)], figs[column_key(i, 6)]) for i in impls} \
        if both else {}
    header = ["", "IP", *("usertcp (TUN)" if i == "usertcp" else "kernel (veth)" for i in impls),
              "floor (usertcp)", "met"]
    if both:
        header += [f"{i} v6/v4" for i in impls]
        if "usertcp" in impls:
            header.insert(header.index("usertcp v6/v4") + 1, f"within {tol:.0%}")
    rows = [header]
    for key, label, _, fmt in ROWS:
        for n, fam in enumerate(families):
            row = [label if n == 0 else "", f"IPv{fam}"]
            for i in impls:
                v = figs[column_key(i, fam)][key]
                row.append("error" if v is None else fmt.format(v))
            if key in FLOORS:
                op, floor = FLOORS[key]
                row.append(f"{op} {floor:,.0f}")
                met = verdicts(figs[column_key("usertcp", fam)]).get(key) \
                    if "usertcp" in impls else None
                row.append("-" if "usertcp" not in impls else
                           "n/a" if met is None else "yes" if met else "NO")
            else:
                row += ["", ""]
            if both:
                for i in impls:
                    r = ratio[i][key]
                    row.append("" if fam == 4 else "n/a" if r is None else f"{r:.2f}")
                    if i == "usertcp":
                        ok = within_tolerance(ratio[i], tol)[key]
                        row.append("" if fam == 4 else
                                   "n/a" if ok is None else "yes" if ok else "NO")
            rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = []
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(row[1:], widths[1:])]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    # Secondary figures: how busy the server process was, and anything that went wrong.
    cols = [c for c in figs if c in report["results"]]
    cpu = []
    for role in ("upload", "download", "cps", "rtt"):
        parts = []
        for c in cols:
            v = (report["results"][c].get(role) or {}).get("server_cpu")
            parts.append(f"{c} {v * 100:.0f}%" if v is not None else f"{c} ?")
        cpu.append(f"{role}: " + ", ".join(parts))
    lines.append("")
    lines.append("server process CPU (of one core) -- " + "; ".join(cpu))
    lines.append(f"MTU {cfg['mtu']}, {cfg['size_mb']} MB per transfer (1 MB = 10^6 bytes), "
                 f"median of {cfg['repeat']} runs each, "
                 f"cps over <= {cfg['connections']} connections / {cfg['cps_seconds']} s, "
                 f"{cfg['round_trips']} round trips, cps/rtt client {cfg.get('client', 'python')}"
                 + (f", both servers busy-poll {cfg['busy_poll']:g} us" if cfg.get("busy_poll")
                    else "")
                 + {"same": ", server and client pinned to one core",
                    "split": ", server and client pinned to a core each"}.get(cfg.get("pin"), "")
                 + (", IPv4 and IPv6 alternating within each round" if both else "")
                 + (f", usertcp extra args: {cfg['extra_args']}" if cfg["extra_args"] else ""))
    if both:
        lines.append(f"v6/v4: IPv6 figure / IPv4 figure; within {tol:.0%}: MB/s and conn/s "
                     f">= {1 - tol:.2f}, round trips <= {1 + tol:.2f}")
    for c in cols:
        for role, r in report["results"][c].items():
            if r.get("error"):
                lines.append(f"ERROR {c} {role}: {r['error']}")
            elif r.get("truncated"):
                lines.append(f"note: {c} {role} hit the {cfg['seconds']} s bound; figure is over "
                             f"what was done")
    if report.get("errors"):
        lines += [f"ERROR {e}" for e in report["errors"]]
    if cfg.get("profile"):
        lines.append(f"(profiled under {cfg['profiler']}: usertcp figures are slowed down)")
    return "\n".join(lines)


def summarize_profiles(directory: str, profiler: str, top: int) -> str:
    out = []
    for service in ("discard", "http", "echo"):
        if profiler == "cprofile":
            path = os.path.join(directory, f"usertcp-{service}.prof")
            if not os.path.exists(path):
                continue
            import pstats

            buf = io.StringIO()
            stats = pstats.Stats(path, stream=buf)
            stats.strip_dirs().sort_stats("tottime").print_stats(top)
            out.append(f"===== usertcp {service}: top {top} by own time ({path}) =====")
            text = buf.getvalue()
            start = text.find("   ncalls")
            out.append(text[start:].rstrip() if start >= 0 else text.rstrip())
        else:
            path = os.path.join(directory, f"usertcp-{service}.txt")
            if os.path.exists(path):
                out.append(f"===== usertcp {service}: pyinstrument report in {path} =====")
    return "\n".join(out)


# =========================================================================================

def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-mb", type=int, default=200, help="MB per transfer (default 200)")
    p.add_argument("--seconds", type=float, default=15.0,
                   help="time bound of each measurement (default 15)")
    p.add_argument("--connections", type=int, default=2000,
                   help="sequential connections at most (default 2000)")
    p.add_argument("--cps-seconds", type=float, default=3.0,
                   help="time bound of the connection test (default 3)")
    p.add_argument("--round-trips", type=int, default=5000, help="echo round trips (default 5000)")
    p.add_argument("--repeat", type=int, default=3,
                   help="runs of each measurement; the median is shown (default 3)")
    p.add_argument("--only", choices=("usertcp", "kernel"), help="run one column only")
    p.add_argument("--families", default="4,6",
                   help="IP versions to measure, comma-separated: 4, 6 or 4,6 (default 4,6; "
                        "both alternate within each round)")
    p.add_argument("--mtu", type=int, default=1500, help="MTU of the TUN and the veth (default 1500)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--log-level", default="warning",
                   help="passed to usertcp --log-level (default warning)")
    p.add_argument("--extra-args", default="", help="more arguments for the usertcp command, "
                   "e.g. --extra-args=--no-offload")
    p.add_argument("--profile", metavar="DIR", help="profile each usertcp service into DIR")
    p.add_argument("--profiler", choices=("cprofile", "pyinstrument"), default="cprofile")
    p.add_argument("--profile-top", type=int, default=25, help="rows per profile summary")
    p.add_argument("--client", choices=("auto", "c", "python"), default="auto",
                   help="the cps/rtt client: scripts/bench_client.c or Python (default auto: c "
                        "when `cc` builds it)")
    p.add_argument("--busy-poll", type=float, default=0.0, metavar="USEC",
                   help="usertcp's --busy-poll USEC, and the kernel column's echo server polls "
                        "as long after each event before it sleeps (default 0: off)")
    p.add_argument("--pin", choices=("none", "same", "split"), default="none",
                   help="servers (usertcp's and the kernel's) and clients on one core (same), on "
                        "cores 0 and 1 (split), or unpinned (default). In a VM a wake-up across "
                        "cores can cost more than the work: compare the round trips both ways")
    args = p.parse_args(argv)
    if args.pin == "split" and (os.cpu_count() or 1) < 2:
        p.error("--pin split needs two cores")
    if args.size_mb <= 0 or args.seconds <= 0 or args.connections <= 0 or args.round_trips <= 0 \
            or args.repeat <= 0:
        p.error("sizes, counts and time bounds must be positive")
    try:
        families = [int(x) for x in args.families.split(",") if x.strip()]
    except ValueError:
        families = []
    if not families or any(f not in FAMILIES for f in families) \
            or len(set(families)) < len(families):
        p.error("--families takes 4, 6 or 4,6")
    args.families = sorted(families)  # IPv4 first: the ratio's denominator
    if 6 in args.families and args.mtu < IPV6_MIN_MTU:
        p.error(f"IPv6 needs an MTU of at least {IPV6_MIN_MTU} (--families 4 for a smaller one)")
    if args.profile:
        args.profile = os.path.abspath(args.profile)
    return args


def main(argv: list[str]) -> int:
    if argv and argv[0] == "_client":
        return client_main(argv[1:])
    if argv and argv[0] == "_server":
        return server_main(argv[1:])
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench_tun: run as root (network namespaces, TUN devices)", file=sys.stderr)
        return 2

    def interrupted(signum, frame):
        raise Interrupted(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    report: dict = {
        "config": {k: getattr(args, k) for k in ("size_mb", "repeat", "seconds", "connections",
                                                  "cps_seconds", "round_trips", "mtu",
                                                  "log_level", "extra_args", "profile",
                                                  "profiler", "families", "pin", "busy_poll")},
        "floors": {k: {"op": op, "value": v} for k, (op, v) in FLOORS.items()},
        "results": {},
        "errors": [],
    }
    report["config"]["v6_tolerance"] = V6_TOLERANCE
    runner = Runner(args)
    code = 0
    try:
        try:
            report["config"]["client"] = runner.choose_client(args.client)
        except BenchError as exc:
            print(f"bench_tun: --client c: {exc}", file=sys.stderr)
            return 2  # the finally below still cleans up
        runner.make_file()
        for impl in IMPLS:
            if args.only and args.only != impl:
                continue
            try:
                by_family = runner.run_usertcp() if impl == "usertcp" else runner.run_kernel()
                for fam, results in by_family.items():
                    report["results"][column_key(impl, fam)] = results
            except BenchError as exc:
                report["errors"].append(f"{impl}: {exc}")
                for fam in args.families:
                    report["results"].setdefault(column_key(impl, fam), {})
                code = 1
    except Interrupted as exc:
        log(f"interrupted ({exc}); cleaning up")
        code = 130
    finally:
        # A second Ctrl-C must not cut the cleanup short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        runner.close()
    if code == 130:
        return code
    for column, results in report["results"].items():
        report.setdefault("figures", {})[column] = figures(results)
    if "usertcp" in report["results"]:
        report["floors_met"] = verdicts(report["figures"]["usertcp"])
    if "usertcp_v6" in report["results"]:
        report["floors_met_v6"] = verdicts(report["figures"]["usertcp_v6"])
    if len(args.families) == 2:
        report["ratio_v6_v4"] = {
            impl: ratios(report["figures"][impl], report["figures"][column_key(impl, 6)])
            for impl in IMPLS if impl in report["figures"]}
        if "usertcp" in report["ratio_v6_v4"]:
            report["v6_within_tolerance"] = {
                "usertcp": within_tolerance(report["ratio_v6_v4"]["usertcp"])}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(render(report))
        if args.profile:
            print()
            print(summarize_profiles(args.profile, args.profiler, args.profile_top))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
