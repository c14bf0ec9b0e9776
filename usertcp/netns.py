"""Private, named network namespaces that their creator owns and deletes.

A :class:`NetNS` is made with ``ip netns add`` (loopback up) and named after the creating
process, ``PREFIX-<pid>`` or ``PREFIX-<pid>-<n>``, so that a later run can tell a namespace
left behind by a process that was killed (its PID is gone) from one in use, and reap it.
Commands run inside through ``ip netns exec``; processes started with :meth:`NetNS.popen`
are ended by PID when the namespace is closed, and :meth:`NetNS.enter` moves the calling
thread in for a ``with`` block.

    with NetNS.create("usertcp-demo", numbered=False) as ns:
        ns.run(["ip", "addr"], check=True)
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator, Sequence
from typing import Any, Self

NETNS_DIR = "/run/netns"
RUN_TIMEOUT = 60.0  # default timeout (seconds) of NetNS.run and of the `ip` calls
STOP_TIMEOUT = 5.0  # how long a tracked process gets after SIGTERM before SIGKILL

_CLONE_NEWNET = 0x40000000
_counter = itertools.count()


def ip(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    """``ip ARGS`` in the caller's namespace, output captured, bounded in time."""
    return subprocess.run(["ip", *args], check=False, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT, **kw)


def exists(name: str) -> bool:
    """Whether a named network namespace ``name`` exists."""
    return os.path.exists(os.path.join(NETNS_DIR, name))


def unavailable_reason() -> str | None:
    """Why namespaces and TUN devices cannot be made here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, TUN devices)"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    if shutil.which("ip") is None:
        return "needs the `ip` command (Debian package iproute2)"
    return None


class NetNS:
    """A named network namespace owned by whoever created it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._procs: list[subprocess.Popen[Any]] = []
        self._closed = False

    @property
    def stop_timeout(self) -> float:
        return STOP_TIMEOUT

    @classmethod
    def create(cls, prefix: str = "utcp", *, numbered: bool = True) -> Self:
        """A fresh namespace ``PREFIX-<pid>-<n>`` (``PREFIX-<pid>`` unless `numbered`), lo up."""
        if not numbered:
            name = f"{prefix}-{os.getpid()}"
            res = ip("netns", "add", name)
            if res.returncode != 0:
                raise OSError(f"cannot create network namespace {name}: {res.stderr.strip()}")
        else:
            for _ in range(100):
                name = f"{prefix}-{os.getpid()}-{next(_counter)}"
                if exists(name):  # left by an earlier process that had the same pid
                    continue
                res = ip("netns", "add", name)
                if res.returncode == 0:
                    break
                if not exists(name):
                    raise OSError(f"cannot create network namespace {name}: "
                                  f"{res.stderr.strip()}")
            else:
                raise OSError(f"no free network namespace name for prefix {prefix!r}")
        ns = cls(name)
        try:
            res = ip("-n", name, "link", "set", "lo", "up")
            if res.returncode != 0:
                raise OSError(f"cannot bring lo up in {name}: {res.stderr.strip()}")
        except BaseException:
            ns.close()
            raise
        return ns

    # -- running things inside -------------------------------------------------------------------

    def command(self, args: Sequence[str | os.PathLike[str]]) -> list[str]:
        """``args`` prefixed with ``ip netns exec NAME`` (which execs them: same PID)."""
        if isinstance(args, (str, bytes)):
            raise TypeError("pass the command as a list of arguments, not a string")
        return ["ip", "netns", "exec", self.name, *map(os.fspath, args)]

    def run(self, args: Sequence[str | os.PathLike[str]], *, check: bool = False,
            timeout: float | None = RUN_TIMEOUT, **kw: Any) -> subprocess.CompletedProcess[Any]:
        """:func:`subprocess.run` inside the namespace (default timeout 60 s)."""
        return subprocess.run(self.command(args), check=check, timeout=timeout, **kw)

    def popen(self, args: Sequence[str | os.PathLike[str]], **kw: Any) -> subprocess.Popen[Any]:
        """:class:`subprocess.Popen` inside the namespace; ended by PID when it closes."""
        self._check_open()
        proc = subprocess.Popen(self.command(args), **kw)
        self._procs.append(proc)
        return proc

    @contextlib.contextmanager
    def enter(self) -> Iterator[None]:
        """Move the calling thread into the namespace for the ``with`` block.

        Sockets, TUN devices and netlink sockets opened inside stay in the namespace after.
        """
        self._check_open()
        libc = ctypes.CDLL(None, use_errno=True)
        with (
            open("/proc/thread-self/ns/net", "rb") as home,
            open(os.path.join(NETNS_DIR, self.name), "rb") as target,
        ):
            _setns(libc, target.fileno())
            try:
                yield
            finally:
                _setns(libc, home.fileno())

    # -- teardown --------------------------------------------------------------------------------

    def pids(self) -> list[int]:
        """PIDs of all processes whose network namespace is this one."""
        res = ip("netns", "pids", self.name)
        return [int(p) for p in res.stdout.split()] if res.returncode == 0 else []

    def close(self) -> None:
        """End tracked processes (SIGTERM, then SIGKILL), then any others inside; delete it."""
        if self._closed:
            return
        self._closed = True
        try:
            for proc in self._procs:
                stop_process(proc, self.stop_timeout)
            # Anything still inside was started from here (e.g. a daemonised child).
            for pid in self.pids():
                if pid == os.getpid():  # never this process, should a thread of it be inside
                    continue
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        finally:
            res = ip("netns", "delete", self.name)
        if res.returncode != 0 and exists(self.name):
            raise OSError(f"cannot delete network namespace {self.name}: {res.stderr.strip()}")

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"netns {self.name} is closed")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def _setns(libc: ctypes.CDLL, fd: int) -> None:
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def stop_process(proc: subprocess.Popen[Any], timeout: float = STOP_TIMEOUT) -> None:
    """End one process we started, by its PID: SIGTERM, SIGKILL after `timeout`; close pipes."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def reap_stale(prefix: str = "utcp") -> list[str]:
    """Delete namespaces ``PREFIX-<pid>[-<n>]`` whose creating process no longer exists.

    A run killed before its teardown leaves its namespaces and the processes in them; the
    next run ends those processes by PID and deletes the namespaces. Those of a live process
    (another run going on at the same time) are left alone.
    """
    try:
        names = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return []
    pattern = re.compile(re.escape(prefix) + r"-(\d+)(?:-\d+)?")
    reaped = []
    for name in sorted(names):
        m = pattern.fullmatch(name)
        if m is None or os.path.exists(f"/proc/{m.group(1)}"):
            continue
        NetNS(name).close()
        reaped.append(name)
    return reaped
