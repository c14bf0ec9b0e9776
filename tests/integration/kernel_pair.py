"""Two kernels talking TCP over a veth pair, with a capture and single-packet drops.

:class:`KernelPair` makes two private network namespaces, ``a`` (10.9.0.1, fd00:9::1 on ``vetha``)
and ``b`` (10.9.0.2, fd00:9::2 on ``vethb``), joined by a veth pair. The test opens ordinary
Python sockets inside either namespace, records what crosses one side's veth with tcpdump, and can
drop ONE chosen packet with nftables:

- at the receiver's input (``hook="input"``): tcpdump on the receiver's side still sees the
  packet (it taps the device before the IP layer), the receiving socket never gets it;
- at the sender's output (``hook="output"``): the packet never reaches the device, so no capture
  shows it.

    with KernelPair.create() as pair, pair.capture("a", tmp_path / "x.pcap"):
        server = pair.listen("b", socket.AF_INET, 5000)
        pair.drop_first("a", "input", "tcp flags == syn | ack")
        client = pair.connect("a", socket.AF_INET, 5000)

Everything (namespaces, tcpdump) is removed on exit, also when the test failed.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Self

from .netns import NetNS

Side = Literal["a", "b"]
Hook = Literal["input", "output"]

ADDRESSES = {
    "a": {socket.AF_INET: "10.9.0.1", socket.AF_INET6: "fd00:9::1"},
    "b": {socket.AF_INET: "10.9.0.2", socket.AF_INET6: "fd00:9::2"},
}
IFNAMES = {"a": "vetha", "b": "vethb"}
TABLE = "inet kernel_pair"

TCPDUMP_READY_TIMEOUT = 10.0
TCPDUMP_STOP_TIMEOUT = 5.0
SOCKET_TIMEOUT = 10.0
CLOCK_MONOTONIC_COARSE = 6  # Linux's clock id (not in Python's time module)

# nft expressions for drop_first(): the first packet that matches is dropped, later ones pass.
PURE_ACK = "tcp flags == ack"
SYN_ONLY = "tcp flags == syn"
SYN_ACK = "tcp flags == syn | ack"
ANY_FIN = "tcp flags & fin == fin"


@dataclass
class Capture:
    """A running tcpdump; :meth:`stop` ends it (SIGINT, by PID) and returns the file."""

    path: Path
    proc: subprocess.Popen[bytes]

    def stop(self) -> Path:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(TCPDUMP_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(TCPDUMP_STOP_TIMEOUT)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        return self.path


class KernelPair:
    """Namespaces ``a`` and ``b`` joined by a veth pair; see the module docstring."""

    def __init__(self, a: NetNS, b: NetNS) -> None:
        self.ns = {"a": a, "b": b}
        self._sockets: list[socket.socket] = []
        self._captures: list[Capture] = []
        self._rules = {"a": 0, "b": 0}

    @classmethod
    def create(cls) -> KernelPair:
        a = NetNS.create()
        try:
            b = NetNS.create()
        except BaseException:
            a.close()
            raise
        pair = cls(a, b)
        try:
            pair._link()
        except BaseException:
            pair.close()
            raise
        return pair

    def _link(self) -> None:
        a, b = self.ns["a"], self.ns["b"]
        a.run(["ip", "link", "add", IFNAMES["a"], "type", "veth", "peer", "name", IFNAMES["b"],
               "netns", b.name], check=True, capture_output=True)
        for side, ns in self.ns.items():
            ifname = IFNAMES[side]
            for args in (
                ["addr", "add", f"{ADDRESSES[side][socket.AF_INET]}/24", "dev", ifname],
                ["addr", "add", f"{ADDRESSES[side][socket.AF_INET6]}/64", "dev", ifname, "nodad"],
                ["link", "set", ifname, "up"],
            ):
                ns.run(["ip", *args], check=True, capture_output=True)
        # Static neighbours: no ARP or neighbour discovery (whose first solicitation can go
        # unanswered while the link comes up, delaying the first SYN by a second).
        macs = {side: self._mac(side) for side in self.ns}
        for side, ns in self.ns.items():
            peer = _other(side)
            for family in (socket.AF_INET, socket.AF_INET6):
                ns.run(["ip", "neigh", "replace", ADDRESSES[peer][family], "lladdr", macs[peer],
                        "dev", IFNAMES[side], "nud", "permanent"], check=True, capture_output=True)

    def _mac(self, side: Side) -> str:
        res = self.ns[side].run(["cat", f"/sys/class/net/{IFNAMES[side]}/address"],
                                check=True, capture_output=True, text=True)
        return res.stdout.strip()

    # -- addresses and sockets -------------------------------------------------------------------

    @staticmethod
    def address(side: Side, family: int) -> str:
        return ADDRESSES[side][family]

    def socket(self, side: Side, family: int) -> socket.socket:
        """A TCP socket opened inside ``side``'s namespace (closed with the pair)."""
        with self.ns[side].enter():
            sock = socket.socket(family, socket.SOCK_STREAM)
        self._sockets.append(sock)
        sock.settimeout(SOCKET_TIMEOUT)
        # Each write goes out at once as its own segment.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def listen(self, side: Side, family: int, port: int) -> socket.socket:
        sock = self.socket(side, family)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.address(side, family), port))
        sock.listen(8)
        return sock

    def connect(self, side: Side, family: int, port: int) -> socket.socket:
        """A socket of ``side`` connected to the other side's ``port`` (raises what connect does)."""
        sock = self.socket(side, family)
        sock.connect((self.address(_other(side), family), port))
        return sock

    def accept(self, listener: socket.socket) -> socket.socket:
        conn, _ = listener.accept()
        self._sockets.append(conn)
        conn.settimeout(SOCKET_TIMEOUT)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    # -- faults ----------------------------------------------------------------------------------

    def drop_first(self, side: Side, hook: Hook, match: str) -> None:
        """Drop, in ``side``'s namespace, the first packet on its veth that ``match`` (an nft
        expression such as :data:`PURE_ACK`) selects: received (``input``) or sent (``output``).

        Each call adds one rule with its own budget of one packet.
        """
        if hook not in ("input", "output"):
            raise ValueError(f"hook must be 'input' or 'output', not {hook!r}")
        where = f'{"iifname" if hook == "input" else "oifname"} "{IFNAMES[side]}"'
        chains = "" if self._rules[side] else f"""
add table {TABLE}
add chain {TABLE} input {{ type filter hook input priority 0; policy accept; }}
add chain {TABLE} output {{ type filter hook output priority 0; policy accept; }}
"""
        # `limit` holds one token that comes back after an hour: only the first match drops.
        rule = f"add rule {TABLE} {hook} {where} {match} limit rate 1/hour burst 1 packets drop\n"
        self.ns[side].run(["nft", "-f", "-"], input=chains + rule, text=True, check=True,
                          capture_output=True)
        self._rules[side] += 1

    def sysctl(self, side: Side, name: str, value: int) -> None:
        """Set a per-namespace sysctl (``net.ipv4.tcp_*``) in ``side``'s namespace."""
        self.ns[side].run(["sysctl", "-qw", f"{name}={value}"], check=True, capture_output=True)

    # -- capture ---------------------------------------------------------------------------------

    def start_capture(self, side: Side, path: Path) -> Capture:
        """tcpdump on ``side``'s veth writing ``path``; returns once it is listening."""
        proc = self.ns[side].popen(
            ["tcpdump", "-i", IFNAMES[side], "-nn", "-U", "--immediate-mode", "-Z", "root",
             "-w", str(path), "tcp"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        cap = Capture(path, proc)
        self._captures.append(cap)
        _wait_listening(proc)
        return cap

    @contextlib.contextmanager
    def capture(self, side: Side, path: Path) -> Iterator[Capture]:
        cap = self.start_capture(side, path)
        try:
            yield cap
        finally:
            cap.stop()

    # -- teardown --------------------------------------------------------------------------------

    def close(self) -> None:
        for sock in self._sockets:
            sock.close()
        try:
            for cap in self._captures:
                cap.stop()
        finally:
            try:
                self.ns["a"].close()
            finally:
                self.ns["b"].close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_for_tick(limit: float = 0.1) -> None:
    """Return just after the kernel's timer tick (jiffy) advanced.

    Timers that two sockets arm right after this, microseconds apart, then expire in the same
    tick (the coarse clock moves once per tick: 4 ms at HZ=250).
    """
    start = time.clock_gettime(CLOCK_MONOTONIC_COARSE)
    deadline = time.monotonic() + limit
    while time.clock_gettime(CLOCK_MONOTONIC_COARSE) == start:
        if time.monotonic() > deadline:
            raise RuntimeError(f"CLOCK_MONOTONIC_COARSE did not advance in {limit} s")


def _other(side: Side) -> Side:
    return "b" if side == "a" else "a"


def _wait_listening(proc: subprocess.Popen[bytes]) -> None:
    """Read tcpdump's stderr until its "listening on" line, at most TCPDUMP_READY_TIMEOUT s."""
    assert proc.stderr is not None
    deadline = time.monotonic() + TCPDUMP_READY_TIMEOUT
    seen = b""
    while b"listening on" not in seen:
        left = deadline - time.monotonic()
        if left <= 0 or proc.poll() is not None:
            raise RuntimeError(f"tcpdump did not start: {seen.decode(errors='replace').strip()}")
        ready, _, _ = select.select([proc.stderr], [], [], left)
        if ready:
            chunk = os.read(proc.stderr.fileno(), 4096)
            if not chunk:
                raise RuntimeError(f"tcpdump exited: {seen.decode(errors='replace').strip()}")
            seen += chunk
