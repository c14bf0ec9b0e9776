"""`usertcp run -- COMMAND`: real programs' connections through usertcp (issue 9, "How it is shown").

One host namespace for the module (hostns.py): veth addresses 10.99.0.1 and fd99::1, kernel servers
on [::] (HTTP with a 20 MiB file, half-close, echo, push, DNS). Each test starts the venv's `usertcp
run` inside it with `ip netns exec`; the program reaches the host as 10.0.2.2 (its 127.0.0.1),
fd00::2 (its ::1), 10.99.0.1 or fd99::1.
After every run: no new named namespace, no interface but lo and the veth in the host namespace, no
process but the servers there, and no process left in the namespace the program ran in.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from usertcp.phy import read_pcap
from usertcp.wire.tcp import SYN

from .hostns import (
    CLOSED_PORT,
    DNS_NAME,
    ECHO_PORT,
    GREETING,
    HOST_ADDR,
    HOST_ADDR6,
    HTTP_PORT,
    PUSH_PORT,
    READALL_PORT,
    SENDSHUT_PORT,
    VETH,
    HostNS,
    push_sha256,
    reap_stale_etc,
)
from .netns import NetNS, reap_stale
from .stackproc import tcp_segments

USERTCP = str(Path(sys.executable).with_name("usertcp"))
PYTHON = sys.executable
GATEWAY = "10.0.2.2"
GATEWAY6 = "fd00::2"
MARK = "usertcp-test-proc"
NOBODY = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
RUN_TIMEOUT = 60.0
_counter = itertools.count()


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostNS]:
    reap_stale()
    reap_stale_etc()
    h = HostNS.create(tmp_path_factory.mktemp("host"))
    try:
        yield h
    finally:
        h.close()


# -- running `usertcp run` and checking that nothing is left --------------------------------------

def tracked(cmd: Sequence[str]) -> list[str]:
    """``cmd`` behind a shell that first prints its PID and network namespace to stderr, then execs."""
    script = f'echo "{MARK} $$ $(readlink /proc/self/ns/net)" >&2; exec "$@"'
    return ["sh", "-c", script, "sh", *cmd]


def netns_names() -> set[str]:
    with contextlib.suppress(FileNotFoundError):
        return set(os.listdir("/run/netns"))
    return set()


def _foreign(name: str) -> bool:
    """A namespace of another live test or benchmark process, made while this one ran."""
    parts = name.split("-")
    return (len(parts) == 3 and parts[1].isdigit() and int(parts[1]) != os.getpid()
            and os.path.exists(f"/proc/{parts[1]}"))


def procs_in_netns(inodes: set[str]) -> list[int]:
    """PIDs of processes whose network namespace is one of ``inodes`` ("net:[...]")."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{entry}/ns/net") in inodes:
                    out.append(int(entry))
    return out


@dataclass
class Result:
    returncode: int
    stdout: bytes
    stderr: str
    seconds: float
    seen: dict[int, str] = field(default_factory=dict)  # pid -> net namespace, from tracked()

    def expect(self, code: int = 0) -> Result:
        assert self.returncode == code, f"exit {self.returncode}, not {code}:\n{self.stderr}"
        return self


class Run:
    """One `usertcp run` in the host namespace; :meth:`finish` waits and checks nothing is left."""

    def __init__(self, host: HostNS, cmd: Sequence[str], *opts: str, track: bool = True,
                 argv: Sequence[str] | None = None, stdin: Any = subprocess.DEVNULL) -> None:
        self.host = host
        self.before = netns_names()
        self.err_path = host.root.parent / f"run-{next(_counter)}.err"
        self._err = open(self.err_path, "wb")  # noqa: SIM115  (closed in finish())
        if argv is None:
            argv = [USERTCP, "run", *opts, "--", *(tracked(cmd) if track else cmd)]
        self.start = time.monotonic()
        self.proc = host.ns.popen(argv, stdin=stdin, stdout=subprocess.PIPE, stderr=self._err)
        self._out = bytearray()

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def seen(self) -> dict[int, str]:
        seen = {}
        for line in self.stderr().splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] == MARK and parts[1].isdigit():
                seen[int(parts[1])] = parts[2]
        return seen

    def send(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def read_line(self, timeout: float = 15.0) -> str:
        """The program's next line on stdout (bounded wait)."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._out:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise AssertionError(f"no line from the program in {timeout} s:\n{self.stderr()}")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError(f"program's stdout closed (exit {self.proc.poll()}):\n"
                                     f"{self.stderr()}")
            self._out += chunk
        line, _, rest = bytes(self._out).partition(b"\n")
        self._out = bytearray(rest)
        return line.decode()

    def finish(self, timeout: float = RUN_TIMEOUT) -> Result:
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            # usertcp first, then the program (it may hold the stdout pipe open), then wait.
            self.proc.kill()
            left = self._kill_leftovers()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.communicate(timeout=10)
            raise AssertionError(f"usertcp run still running after {timeout} s (killed it and "
                                 f"{left or 'no process'} in the program's namespace):\n"
                                 f"{self.stderr()}") from None
        finally:
            self._err.close()
        res = Result(self.proc.returncode, bytes(self._out) + out, self.stderr(),
                     time.monotonic() - self.start, self.seen())
        self.check_nothing_left(res)
        return res

    def _kill_leftovers(self) -> list[int]:
        pids = procs_in_netns(set(self.seen().values()))
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return pids

    def check_nothing_left(self, res: Result) -> None:
        left = self._kill_leftovers()
        assert not left, f"processes left in the program's namespace: {left}\n{res.stderr}"
        for pid, ns in res.seen.items():
            with contextlib.suppress(OSError):
                assert os.readlink(f"/proc/{pid}/ns/net") != ns, f"pid {pid} still runs"
        new = {n for n in netns_names() - self.before if not _foreign(n)}
        assert not new, f"namespaces left: {new}"
        assert sorted(self.host.links()) == sorted(["lo", VETH]), self.host.links()
        server = self.host.server.pid if self.host.server else None
        others = [p for p in self.host.ns.pids() if p != server]
        assert not others, f"processes left in the host namespace: {others}"


def run(host: HostNS, cmd: Sequence[str], *opts: str, timeout: float = RUN_TIMEOUT,
        track: bool = True) -> Result:
    return Run(host, cmd, *opts, track=track).finish(timeout)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def curl(*args: str) -> list[str]:
    return ["curl", "-sS", "--max-time", "30", *args]


# -- 1. downloads -------------------------------------------------------------------------------

@pytest.mark.parametrize("addr", [GATEWAY, HOST_ADDR], ids=["gateway", "veth"])
def test_download_20mb_intact(host: HostNS, tmp_path: Path, addr: str) -> None:
    out = tmp_path / "big.bin"
    run(host, curl("-o", str(out), f"http://{addr}:{HTTP_PORT}/big.bin")).expect(0)
    assert sha256_file(out) == host.big_sha256


# -- 2. refused at once ---------------------------------------------------------------------------

TIMED = """\
import subprocess, sys, time
for url in sys.argv[1:]:
    t0 = time.monotonic()
    rc = subprocess.run(["curl", "-sS", "--max-time", "10", url]).returncode
    print(url, rc, time.monotonic() - t0, flush=True)
"""


def test_closed_port_refused_in_under_a_second(host: HostNS) -> None:
    urls = [f"http://{a}:{CLOSED_PORT}/" for a in (GATEWAY, HOST_ADDR)]
    res = run(host, [PYTHON, "-c", TIMED, *urls]).expect(0)
    lines = res.stdout.decode().splitlines()
    assert len(lines) == 2, res.stderr
    for line in lines:
        url, rc, seconds = line.split()
        assert int(rc) == 7, f"{url}: curl exit {rc}, not 7 (refused):\n{res.stderr}"
        assert float(seconds) < 1.0, f"{url}: refused after {seconds} s"


# -- 3. half-close both ways ----------------------------------------------------------------------

def test_half_close_program_to_host(host: HostNS, tmp_path: Path) -> None:
    data = os.urandom(300_000)
    (tmp_path / "in.bin").write_bytes(data)
    res = run(host, ["sh", "-c", f'nc -N {GATEWAY} {READALL_PORT} < "$1"', "sh",
                     str(tmp_path / "in.bin")]).expect(0)
    # The host answered after the program's FIN, and the answer came through.
    assert res.stdout.decode() == f"{len(data)} {hashlib.sha256(data).hexdigest()}\n"


def test_half_close_host_to_program(host: HostNS, tmp_path: Path) -> None:
    data = os.urandom(300_000)
    (tmp_path / "in.bin").write_bytes(data)
    # The host sends and shuts down its write side at once; the program sends only later.
    script = f'(sleep 0.3; cat "$1") | nc -N {GATEWAY} {SENDSHUT_PORT}'
    res = run(host, ["sh", "-c", script, "sh", str(tmp_path / "in.bin")]).expect(0)
    assert res.stdout == GREETING
    got = host.records("sendshut")[-1]
    assert got == {"service": "sendshut", "bytes": len(data),
                   "sha256": hashlib.sha256(data).hexdigest()}


# -- 4. 100 concurrent connections ----------------------------------------------------------------

CONCURRENT = """\
import asyncio, os, sys
host, port, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])

async def first_byte(reader, writer):
    writer.write(b"x")
    return await reader.readexactly(1) == b"x"

async def echo(reader, writer):
    data = os.urandom(size)
    writer.write(data)
    await writer.drain()
    writer.write_eof()
    got = await reader.read()
    writer.close()
    return got == data

async def main():
    conns = await asyncio.gather(*(asyncio.open_connection(host, port) for _ in range(count)))
    # One byte echoed on every connection before any ends: all are open at once, end to end.
    assert all(await asyncio.gather(*(first_byte(r, w) for r, w in conns)))
    ok = await asyncio.gather(*(echo(r, w) for r, w in conns))
    print(sum(ok), flush=True)

asyncio.run(asyncio.wait_for(main(), 40))
"""


def test_hundred_concurrent_connections(host: HostNS) -> None:
    before = len(host.records("echo"))
    res = run(host, [PYTHON, "-c", CONCURRENT, GATEWAY, str(ECHO_PORT), "100", "65536"]).expect(0)
    assert res.stdout.decode().strip() == "100", res.stderr
    records = host.records("echo")[before:]
    assert len(records) == 100 and all(r["bytes"] == 65537 for r in records), records
    assert max(r["concurrent"] for r in records) == 100


# -- 5. a program that stops reading --------------------------------------------------------------

STALLED = """\
import hashlib, os, socket, sys
host, port, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
print(os.getppid(), flush=True)
sys.stdin.readline()
sock = socket.create_connection((host, port))
sock.sendall(b"%d\\n" % total)
print("connected", flush=True)
sys.stdin.readline()
h, n = hashlib.sha256(), 0
while chunk := sock.recv(1 << 20):
    h.update(chunk)
    n += len(chunk)
print(n, h.hexdigest(), flush=True)
"""
PUSH_TOTAL = 200 * 1000 * 1000
RSS_SLACK = 40 * 1024 * 1024


def vm_rss(pid: int) -> int:
    """Resident set size of ``pid`` in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def test_stalled_reader_keeps_memory_bounded(host: HostNS) -> None:
    r = Run(host, [PYTHON, "-c", STALLED, GATEWAY, str(PUSH_PORT), str(PUSH_TOTAL)],
            stdin=subprocess.PIPE)
    try:
        usertcp_pid = int(r.read_line())  # the parent of COMMAND
        cmdline = Path(f"/proc/{usertcp_pid}/cmdline").read_bytes().replace(b"\0", b" ")
        assert b"usertcp" in cmdline, f"the program's parent is not usertcp: {cmdline!r}"
        time.sleep(0.3)
        baseline = vm_rss(usertcp_pid)
        r.send(b"connect\n")
        assert r.read_line() == "connected"
        # The host pushes as fast as it can while the program reads nothing.
        peak = baseline
        for _ in range(40):
            time.sleep(0.05)
            peak = max(peak, vm_rss(usertcp_pid))
        r.send(b"read\n")
        line = r.read_line(timeout=60)
    finally:
        res = r.finish()  # closes the program's stdin
    res.expect(0)
    assert peak < baseline + RSS_SLACK, (
        f"usertcp's RSS grew by {(peak - baseline) / 2**20:.1f} MiB (baseline "
        f"{baseline / 2**20:.1f} MiB) while the program did not read")
    assert line == f"{PUSH_TOTAL} {push_sha256(PUSH_TOTAL)}"


# -- 6. DNS ---------------------------------------------------------------------------------------

RESOLVE = """\
import socket, sys
print(sorted({a[4][0] for a in socket.getaddrinfo(sys.argv[1], 80, socket.AF_INET)}))
"""


def test_dns_names_resolve(host: HostNS, tmp_path: Path) -> None:
    out = tmp_path / "small.bin"
    script = (f'set -e; cat /etc/resolv.conf; getent hosts {DNS_NAME}; '
              f'"$1" -c "$2" {DNS_NAME}; '
              f'curl -sS --max-time 30 -o "$3" http://{DNS_NAME}:{HTTP_PORT}/small.bin')
    res = run(host, ["sh", "-c", script, "sh", PYTHON, RESOLVE, str(out)]).expect(0)
    lines = res.stdout.decode().splitlines()
    assert "nameserver 10.0.2.3" in lines, lines
    assert any(line.split()[:2] == [HOST_ADDR, DNS_NAME] for line in lines), lines
    assert f"['{HOST_ADDR}']" in lines, lines
    assert sha256_file(out) == host.small_sha256


# -- 7. ping and exit statuses --------------------------------------------------------------------

def test_ping_gateway(host: HostNS) -> None:
    run(host, ["ping", "-c1", "-W2", GATEWAY]).expect(0)


def test_exit_status_is_the_commands(host: HostNS) -> None:
    run(host, ["sh", "-c", "exit 3"]).expect(3)
    res = run(host, ["/nonexistent/usertcp-test-command"], track=False).expect(127)
    assert "/nonexistent/usertcp-test-command" in res.stderr


# -- 9. fault injection and capture ---------------------------------------------------------------

def test_download_under_five_percent_loss(host: HostNS, tmp_path: Path) -> None:
    out = tmp_path / "big.bin"
    run(host, curl("-o", str(out), f"http://{GATEWAY}:{HTTP_PORT}/big.bin"),
        "--fault", "loss=0.05").expect(0)
    assert sha256_file(out) == host.big_sha256


def test_pcap_is_written(host: HostNS, tmp_path: Path) -> None:
    pcap, out = tmp_path / "run.pcap", tmp_path / "small.bin"
    run(host, curl("-o", str(out), f"http://{HOST_ADDR}:{HTTP_PORT}/small.bin"),
        "--pcap", str(pcap)).expect(0)
    assert sha256_file(out) == host.small_sha256
    assert pcap.stat().st_size > 24 and read_pcap(pcap)
    syns = [c for c in tcp_segments(pcap) if c.seg.flags & SYN and c.seg.dport == HTTP_PORT]
    assert syns, "no SYN to the HTTP port in the capture"


# -- 10. --publish --------------------------------------------------------------------------------

SERVE_ONE = """\
import functools, http.server, sys
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])
server = http.server.HTTPServer(("0.0.0.0", 80), handler)
server.timeout = 20
server.handle_request()
"""
FETCH_PUBLISHED = """\
import hashlib, socket, sys, time
deadline = time.monotonic() + 15
for attempt in range(1000):
    try:
        with socket.create_connection(("127.0.0.1", 8080), timeout=5) as s:
            s.sendall(b"GET /small.bin HTTP/1.0\\r\\n\\r\\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
    except OSError:
        data = b""
    head, sep, body = data.partition(b"\\r\\n\\r\\n")
    if sep and head.startswith(b"HTTP/1.0 200"):
        print(hashlib.sha256(body).hexdigest())
        sys.exit(0)
    if time.monotonic() > deadline:
        sys.exit(f"nothing served on 127.0.0.1:8080 after {attempt + 1} attempts")
    time.sleep(0.1)  # the program's server may not listen yet
"""


def test_publish_reaches_a_server_in_the_program(host: HostNS) -> None:
    r = Run(host, [PYTHON, "-c", SERVE_ONE, str(host.root)], "--publish", "8080:80")
    fetched = host.ns.python(FETCH_PUBLISHED, capture_output=True, text=True, timeout=40)
    res = r.finish()
    assert fetched.returncode == 0, f"{fetched.stderr}\n{res.stderr}"
    assert fetched.stdout.strip() == host.small_sha256
    res.expect(0)


# -- 11. rootless ---------------------------------------------------------------------------------

ROOTLESS = """\
set -e
mknod "$1/tun" c 10 200
chmod "$2" "$1/tun"
mount --bind "$1/tun" /dev/net/tun
shift 2
exec "$@"
"""


def _readable_copy(dest: Path) -> None:
    """usertcp and its dependencies copied where nobody can read them (the repo may sit in /root)."""
    import importlib.util

    import usertcp

    shutil.copytree(Path(usertcp.__file__).parent, dest / "usertcp",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("structlog", "pyroute2", "pytun_pmd3"):
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin, name
        src = Path(spec.origin)
        if spec.submodule_search_locations:
            shutil.copytree(src.parent, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / src.name)
    for path in [dest, *dest.rglob("*")]:
        mode = path.stat().st_mode
        path.chmod(mode | stat.S_IRGRP | stat.S_IROTH
                   | (stat.S_IXGRP | stat.S_IXOTH if path.is_dir() or mode & stat.S_IXUSR else 0))


def _nobody_python(pkgs: Path) -> str:
    """An interpreter that nobody can run and that imports the copied usertcp."""
    tried = []
    for py in dict.fromkeys([PYTHON, sys._base_executable, "/usr/bin/python3"]):
        probe = [*NOBODY, "env", f"PYTHONPATH={pkgs}", py, "-c", "import usertcp.cli"]
        res = subprocess.run(probe, check=False, capture_output=True, text=True, timeout=30,
                             cwd="/")
        if res.returncode == 0:
            return py
        tried.append(f"{py}: {res.stderr.strip().splitlines()[-1:] or res.returncode}")
    raise AssertionError(f"no python that nobody can use with usertcp: {tried}")


def _userns_allowed() -> bool:
    res = subprocess.run([*NOBODY, "unshare", "--user", "--map-root-user", "--net", "true"],
                         check=False, capture_output=True, timeout=30)
    return res.returncode == 0


@pytest.fixture(scope="module")
def readable() -> Iterator[tuple[Path, str]]:
    top = Path(tempfile.mkdtemp(prefix="usertcp-rootless-"))
    try:
        top.chmod(0o755)
        (top / "pkgs").mkdir()
        _readable_copy(top / "pkgs")
        yield top, _nobody_python(top / "pkgs")
    finally:
        shutil.rmtree(top, ignore_errors=True)


@pytest.mark.parametrize("mode", ["0666", "0600"])
def test_rootless(host: HostNS, readable: tuple[Path, str], mode: str) -> None:
    top, py = readable
    devdir = Path(tempfile.mkdtemp(prefix="dev-", dir=top))
    try:
        fetch = f"curl -sS --max-time 30 http://{GATEWAY}:{HTTP_PORT}/big.bin | sha256sum"
        program = tracked(["sh", "-c", fetch])
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", ROOTLESS, "sh",
                str(devdir), mode, *NOBODY, "env", f"PYTHONPATH={top / 'pkgs'}",
                py, "-m", "usertcp", "run", "--", *program]
        res = Run(host, [], argv=argv).finish()
    finally:
        shutil.rmtree(devdir, ignore_errors=True)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip() and not ln.startswith(MARK)]
    if not _userns_allowed():  # the kernel forbids it: one line says why
        res.expect(2)
        assert len(lines) == 1, res.stderr
        return
    if mode == "0666":
        res.expect(0)
        assert res.stdout.decode().split()[:1] == [host.big_sha256]
    else:
        res.expect(2)
        assert len(lines) == 1 and "/dev/net/tun" in lines[0], res.stderr



# -- signals, resets, a server that stops reading --------------------------------------------------

TRAP = "trap 'echo got-term; exit 42' TERM; echo ready; while :; do sleep 0.05; done"


def test_sigterm_goes_to_the_command(host: HostNS) -> None:
    """SIGTERM to usertcp reaches COMMAND (which handles it); its status is run's."""
    r = Run(host, ["sh", "-c", TRAP])
    try:
        assert r.read_line() == "ready"
        r.proc.send_signal(signal.SIGTERM)
        assert r.read_line(timeout=10) == "got-term"
    finally:
        res = r.finish(timeout=20)
    res.expect(42)


AUX_SERVER = """\
import socket, struct, sys, time
mode, port = sys.argv[1], int(sys.argv[2])
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port))
srv.listen(1)
srv.settimeout(30)
print("listening", flush=True)
conn, _ = srv.accept()
conn.settimeout(30)
if mode == "reset":                      # the server resets: the program must see it
    conn.recv(100)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()
    print("reset-sent", flush=True)
elif mode == "expect-reset":             # the program resets: the server must see it
    try:
        while conn.recv(65536):
            pass
        print("eof", flush=True)
    except ConnectionResetError:
        print("reset-seen", flush=True)
else:                                    # slow: read nothing for 2 s, then everything
    time.sleep(2.0)
    total = 0
    while chunk := conn.recv(1 << 20):
        total += len(chunk)
    print(total, flush=True)
"""

RESET_CLIENT = """\
import socket, struct, sys, time
mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.create_connection((host, port), timeout=20)
s.sendall(b"hello")
if mode == "reset":
    try:
        while s.recv(100):
            pass
        print("eof")
    except ConnectionResetError:
        print("reset-seen")
else:
    time.sleep(0.3)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    print("reset-sent")
"""


def aux_server(host: HostNS, mode: str, port: int) -> subprocess.Popen:
    proc = host.ns.popen([PYTHON, "-c", AUX_SERVER, mode, str(port)], stdout=subprocess.PIPE,
                         text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "listening"
    return proc


@pytest.mark.parametrize("who", ["server", "program"])
def test_reset_is_carried_both_ways(host: HostNS, who: str) -> None:
    port = 9101 if who == "server" else 9102
    server = aux_server(host, "reset" if who == "server" else "expect-reset", port)
    r = Run(host, [PYTHON, "-c", RESET_CLIENT, "reset" if who == "server" else "abort",
                   GATEWAY, str(port)])
    try:
        server_said, _ = server.communicate(timeout=30)
    finally:
        res = r.finish()
    res.expect(0)
    if who == "server":
        assert server_said.strip() == "reset-sent"
        assert res.stdout.decode().strip() == "reset-seen", res.stderr
    else:
        assert res.stdout.decode().strip() == "reset-sent"
        assert server_said.strip() == "reset-seen"


SENDER = """\
import os, socket, sys
host, port, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
print(os.getppid(), flush=True)
s = socket.create_connection((host, port), timeout=30)
block = b"x" * (1 << 20)
for _ in range(total // len(block)):
    s.sendall(block)
s.shutdown(socket.SHUT_WR)
print("sent", flush=True)
"""


def test_server_that_stops_reading_keeps_memory_bounded(host: HostNS) -> None:
    """The other direction: a program sends 200 MB to a server that reads nothing for 2 s."""
    total = 200 * (1 << 20)
    server = aux_server(host, "slow", 9103)
    r = Run(host, [PYTHON, "-c", SENDER, GATEWAY, "9103", str(total)])
    try:
        usertcp_pid = int(r.read_line())
        baseline = vm_rss(usertcp_pid)
        peak = baseline
        for _ in range(30):  # 1.5 s of the server's 2 s pause
            time.sleep(0.05)
            peak = max(peak, vm_rss(usertcp_pid))
        assert r.read_line(timeout=60) == "sent"
        received, _ = server.communicate(timeout=60)
    finally:
        res = r.finish()
    res.expect(0)
    assert int(received) == total
    assert peak < baseline + RSS_SLACK, (
        f"usertcp's RSS grew by {(peak - baseline) / 2**20:.1f} MiB while the server did not read")


# -- IPv6 -----------------------------------------------------------------------------------------

def url6(addr: str, port: int, path: str = "/") -> str:
    return f"http://[{addr}]:{port}{path}"


@pytest.mark.parametrize("addr", [GATEWAY6, HOST_ADDR6], ids=["gateway", "veth"])
def test_ipv6_download_20mb_intact(host: HostNS, tmp_path: Path, addr: str) -> None:
    """fd00::2 is the host's ::1 (its server listens on [::]); fd99::1 its veth address."""
    out = tmp_path / "big.bin"
    run(host, curl("-6", "-g", "-o", str(out), url6(addr, HTTP_PORT, "/big.bin"))).expect(0)
    assert sha256_file(out) == host.big_sha256


def test_ipv6_refused_or_unreachable_at_once(host: HostNS) -> None:
    # A closed port of ::1 and of the veth address: a reset. Another address of the program's
    # network: ICMPv6 address unreachable. An address the host has no route to: ICMPv6 no route.
    urls = [url6(a, CLOSED_PORT) for a in (GATEWAY6, HOST_ADDR6, "fd00::77", "2001:db8::1")]
    res = run(host, [PYTHON, "-c", TIMED.replace('"-sS"', '"-sS", "-g"'), *urls]).expect(0)
    lines = res.stdout.decode().splitlines()
    assert len(lines) == len(urls), res.stderr
    for line in lines:
        url, rc, seconds = line.split()
        assert int(rc) == 7, f"{url}: curl exit {rc}, not 7 (could not connect):\n{res.stderr}"
        assert float(seconds) < 1.0, f"{url}: failed after {seconds} s"


def test_ipv6_ping(host: HostNS) -> None:
    """fd00::2 is answered by usertcp itself; fd99::1 through its ICMPv6 socket."""
    run(host, ["sh", "-c", f"ping -6 -c1 -W2 {GATEWAY6} && ping -6 -c1 -W2 {HOST_ADDR6}"]
        ).expect(0)


DNS6 = """\
import errno, socket, struct, sys
name = sys.argv[1]
query = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
query += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\\0"
query += struct.pack("!HH", 1, 1)  # A, IN
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.settimeout(5)
s.sendto(query, ("fd00::3", 53))
reply, peer = s.recvfrom(512)
print(peer[0], reply[:2].hex(), socket.inet_ntoa(reply[-4:]))
u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
u.settimeout(5)
# Linux reports an ICMPv6 address unreachable (not a "hard" error) only with IPV6_RECVERR.
u.setsockopt(socket.IPPROTO_IPV6, getattr(socket, "IPV6_RECVERR", 25), 1)
u.connect(("fd00::77", 9))
u.send(b"anyone?")
try:
    u.recv(100)
    print("answered")
except OSError as exc:
    print(errno.errorcode.get(exc.errno, exc))
"""


def test_dns_stays_ipv4_and_answers_over_ipv6(host: HostNS) -> None:
    script = f'set -e; cat /etc/resolv.conf; getent ahosts {DNS_NAME}; "$1" -c "$2" {DNS_NAME}'
    res = run(host, ["sh", "-c", script, "sh", PYTHON, DNS6]).expect(0)
    lines = res.stdout.decode().splitlines()
    assert [ln for ln in lines if ln.startswith("nameserver")] == ["nameserver 10.0.2.3"], lines
    assert any(line.split()[:1] == [HOST_ADDR] for line in lines), lines  # getent ahosts
    assert lines[-2:] == ["fd00::3 1234 " + HOST_ADDR, "EHOSTUNREACH"], lines


FETCH_BOTH = """\
import subprocess, sys, time
for url in sys.argv[1:]:
    t0 = time.monotonic()
    rc = subprocess.run(["curl", "-sS", "-g", "-o", "/dev/null", "--max-time", "10", url]
                        ).returncode
    print(url, rc, time.monotonic() - t0, flush=True)
"""
LOOPBACK4_SERVER = """\
import http.server
http.server.HTTPServer(("127.0.0.1", 8000), http.server.SimpleHTTPRequestHandler).serve_forever()
"""


def test_no_ipv6_loopback_refuses_the_gateway(tmp_path: Path) -> None:
    """usertcp's namespace without ::1 (IPv6 off on lo): fd00::2 refuses, 10.0.2.2 still works."""
    ns = NetNS.create()
    try:
        ns.run(["sysctl", "-qw", "net.ipv6.conf.lo.disable_ipv6=1"], check=True)
        server = ns.popen([PYTHON, "-c", LOOPBACK4_SERVER], cwd=tmp_path,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ns.wait_port("127.0.0.1", 8000, timeout=15)
        res = ns.run([USERTCP, "run", "--", PYTHON, "-c", FETCH_BOTH,
                      url6(GATEWAY6, 8000), f"http://{GATEWAY}:8000/"],
                     capture_output=True, text=True, timeout=RUN_TIMEOUT)
        server.kill()
        server.wait(timeout=10)
    finally:
        ns.close()
    assert res.returncode == 0, res.stderr
    lines = [line.split() for line in res.stdout.splitlines()]
    assert [(u, int(rc)) for u, rc, _ in lines] == [(url6(GATEWAY6, 8000), 7),
                                                    (f"http://{GATEWAY}:8000/", 0)], res
    assert float(lines[0][2]) < 1.0, res
