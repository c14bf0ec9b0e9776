"""Private network namespaces for integration tests.

Each :class:`NetNS` is a named namespace (``ip netns add``) with its loopback up. Commands run inside it
through ``ip netns exec``; processes started with :meth:`NetNS.popen` are tracked and ended by PID when the
namespace is closed, and the namespace is deleted even if the test failed.

    with NetNS.create() as ns:
        server = ns.popen([sys.executable, "-m", "http.server", "8000", "--bind", "127.0.0.1"])
        ns.wait_port("127.0.0.1", 8000)
        ns.run(["curl", "-sS", "http://127.0.0.1:8000/"], check=True)
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from typing import Any, Self

RUN_TIMEOUT = 60.0
"""Default timeout (seconds) of :meth:`NetNS.run`."""

STOP_TIMEOUT = 5.0
"""How long a tracked process gets after SIGTERM before it is sent SIGKILL."""

_NETNS_DIR = "/run/netns"
_CLONE_NEWNET = 0x40000000
_counter = itertools.count()

# One connect attempt every 50 ms until the deadline; exit 0 once connected, 1 on timeout.
_WAIT_PORT = """\
import socket, sys, time
host, port, deadline = sys.argv[1], int(sys.argv[2]), time.monotonic() + float(sys.argv[3])
while True:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        sys.exit(0)
    except OSError as exc:
        if time.monotonic() >= deadline:
            sys.exit(f"{host}:{port}: {exc}")
    time.sleep(0.05)
"""


def _ip(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", *args], check=False, capture_output=True, text=True, timeout=RUN_TIMEOUT, **kw
    )


def exists(name: str) -> bool:
    """Whether a named network namespace ``name`` exists."""
    return os.path.exists(os.path.join(_NETNS_DIR, name))


class NetNS:
    """A named network namespace owned by the test that created it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._procs: list[subprocess.Popen[Any]] = []
        self._closed = False

    @classmethod
    def create(cls, prefix: str = "utcp") -> NetNS:
        """Create a fresh namespace ``PREFIX-<pid>-<n>`` with ``lo`` up."""
        for _ in range(100):
            name = f"{prefix}-{os.getpid()}-{next(_counter)}"
            if exists(name):  # left over by an earlier process that had the same pid
                continue
            res = _ip("netns", "add", name)
            if res.returncode == 0:
                break
            if not exists(name):
                raise RuntimeError(f"ip netns add {name} failed: {res.stderr.strip()}")
        else:
            raise RuntimeError(f"no free namespace name for prefix {prefix!r}")
        ns = cls(name)
        try:
            ns.run(["ip", "link", "set", "lo", "up"], check=True, capture_output=True)
        except BaseException:
            ns.close()
            raise
        return ns

    # -- running things inside -------------------------------------------------------------------

    def command(self, args: Sequence[str | os.PathLike[str]]) -> list[str]:
        """``args`` prefixed with ``ip netns exec NAME``."""
        if isinstance(args, (str, bytes)):
            raise TypeError("pass the command as a list of arguments, not a string")
        return ["ip", "netns", "exec", self.name, *map(os.fspath, args)]

    def run(
        self,
        args: Sequence[str | os.PathLike[str]],
        *,
        check: bool = False,
        timeout: float | None = RUN_TIMEOUT,
        **kw: Any,
    ) -> subprocess.CompletedProcess[Any]:
        """:func:`subprocess.run` inside the namespace (default timeout 60 s)."""
        return subprocess.run(self.command(args), check=check, timeout=timeout, **kw)

    def popen(self, args: Sequence[str | os.PathLike[str]], **kw: Any) -> subprocess.Popen[Any]:
        """:class:`subprocess.Popen` inside the namespace; ended by PID when the namespace closes.

        ``ip netns exec`` execs the command itself, so the returned PID is the command's.
        """
        self._check_open()
        proc = subprocess.Popen(self.command(args), **kw)
        self._procs.append(proc)
        return proc

    def python(self, code: str, *args: str, **kw: Any) -> subprocess.CompletedProcess[Any]:
        """Run ``python -c CODE ARGS...`` (this interpreter) inside the namespace."""
        return self.run([sys.executable, "-c", code, *args], **kw)

    def wait_port(self, host: str, port: int, timeout: float = 10.0) -> None:
        """Return once a TCP connect to ``host:port`` inside the namespace succeeds.

        Polls every 50 ms for at most ``timeout`` seconds; raises :class:`TimeoutError` after that.
        """
        res = self.python(
            _WAIT_PORT,
            host,
            str(port),
            str(timeout),
            capture_output=True,
            text=True,
            timeout=timeout + 30,
        )
        if res.returncode != 0:
            raise TimeoutError(
                f"nothing accepted on {host}:{port} in netns {self.name} within {timeout} s: "
                f"{res.stderr.strip()}"
            )

    @contextlib.contextmanager
    def enter(self) -> Iterator[None]:
        """Move the calling thread into the namespace for the ``with`` block.

        Sockets, TUN devices and netlink sockets opened inside the block stay in the namespace
        after it ends, so the test process itself can run a stack there.
        """
        self._check_open()
        libc = ctypes.CDLL(None, use_errno=True)
        with (
            open("/proc/thread-self/ns/net", "rb") as home,
            open(os.path.join(_NETNS_DIR, self.name), "rb") as target,
        ):
            _setns(libc, target.fileno())
            try:
                yield
            finally:
                _setns(libc, home.fileno())

    # -- faults ----------------------------------------------------------------------------------

    def nft_loss(self, ifname: str, percent: int) -> None:
        """Drop ``percent`` % of packets received or sent on ``ifname`` (nftables, inet table).

        Calling it again replaces the rules; ``percent=0`` drops nothing.
        """
        if not 0 <= percent <= 100:
            raise ValueError(f"percent must be in 0..100, not {percent}")
        table = "inet usertcp_loss"
        # numgen ... mod 100 yields 0..99, so "< 100" is out of range for nft: 100 % is a plain drop.
        match = "" if percent == 100 else f"numgen random mod 100 < {percent} "
        rule_in = f'iifname "{ifname}" {match}drop' if percent else ""
        rule_out = f'oifname "{ifname}" {match}drop' if percent else ""
        rules = f"""
add table {table}
flush table {table}
table {table} {{
    chain input {{
        type filter hook input priority 0; policy accept;
        {rule_in}
    }}
    chain output {{
        type filter hook output priority 0; policy accept;
        {rule_out}
    }}
}}
"""
        self.run(["nft", "-f", "-"], input=rules, text=True, check=True, capture_output=True)

    # -- teardown --------------------------------------------------------------------------------

    def pids(self) -> list[int]:
        """PIDs of all processes whose network namespace is this one."""
        res = _ip("netns", "pids", self.name)
        return [int(p) for p in res.stdout.split()] if res.returncode == 0 else []

    def close(self) -> None:
        """End tracked processes (SIGTERM, then SIGKILL), then any others left inside; delete it."""
        if self._closed:
            return
        self._closed = True
        try:
            for proc in self._procs:
                _stop(proc)
            # Anything still in the namespace was started by this test (e.g. a daemonised child).
            for pid in self.pids():
                if pid == os.getpid():  # never this process, should a thread of it be inside
                    continue
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        finally:
            res = _ip("netns", "delete", self.name)
        if res.returncode != 0 and exists(self.name):
            raise RuntimeError(f"ip netns delete {self.name} failed: {res.stderr.strip()}")

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"netns {self.name} is closed")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"NetNS({self.name!r})"


def _setns(libc: ctypes.CDLL, fd: int) -> None:
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def _stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def reap_stale(prefix: str = "utcp") -> list[str]:
    """Delete namespaces ``PREFIX-<pid>-<n>`` left by test processes that no longer exist.

    A run killed before its teardown (a timeout, ^C twice) leaves its namespaces and the processes
    in them; the next run ends those processes by PID and deletes the namespaces. Namespaces of a
    live process (another test run going on at the same time) are left alone.
    """
    try:
        names = os.listdir(_NETNS_DIR)
    except FileNotFoundError:
        return []
    reaped = []
    for name in names:
        parts = name.split("-")
        if len(parts) != 3 or parts[0] != prefix or not parts[1].isdigit():
            continue
        if os.path.exists(f"/proc/{parts[1]}"):
            continue
        ns = NetNS(name)
        ns.close()
        reaped.append(name)
    return reaped


def unavailable_reason() -> str | None:
    """Why integration tests cannot run here, or None if they can."""
    if os.geteuid() != 0:
        return "integration tests need root (network namespaces, TUN devices)"
    if not os.path.exists("/dev/net/tun"):
        return "integration tests need /dev/net/tun"
    if shutil.which("ip") is None:
        return "integration tests need the `ip` command (Debian package iproute2)"
    return None
