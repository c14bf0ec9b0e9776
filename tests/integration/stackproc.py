"""Run `python -m usertcp ...` inside a test's namespace and watch its JSON log.

The stack's stderr goes to a file (never a pipe a busy test would have to drain), so waiting for an
event is a bounded poll of that file. Helpers to decode a capture written with ``--pcap`` are here too.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from usertcp.phy.pcap import read_pcap
from usertcp.wire.errors import MalformedPacket
from usertcp.wire.ipv4 import addr_to_int
from usertcp.wire.packet import parse_packet
from usertcp.wire.tcp import Segment

from .netns import NetNS

STACK = "10.7.0.2"
HOST = "10.7.0.1"
READY_TIMEOUT = 15.0
POLL = 0.02


class StackProcess:
    """A `usertcp` service (or `connect`) running in a namespace, its log in ``log_path``."""

    def __init__(self, ns: NetNS, args: list[str], log_path: Path, **popen: Any) -> None:
        self.ns = ns
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115  (closed in stop())
        popen.setdefault("stdin", subprocess.DEVNULL)
        popen.setdefault("stdout", subprocess.DEVNULL)
        if "--log-level" not in args:  # the tests read tcp.state events, logged at debug
            args = [*args, "--log-level", "debug"]
        self.proc = ns.popen(
            [sys.executable, "-m", "usertcp", *args, "--log-format", "json"],
            stderr=self._log,
            **popen,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    # -- the log ---------------------------------------------------------------------------------

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self, name: str | None = None) -> list[dict]:
        out = []
        for line in self.text().splitlines():
            try:
                event = json.loads(line)
            except ValueError:  # a partial last line, or a non-JSON line (a traceback)
                continue
            if isinstance(event, dict) and (name is None or event.get("event") == name):
                out.append(event)
        return out

    def wait_for(
        self,
        name: str,
        where: Callable[[dict], bool] = lambda e: True,
        *,
        after: int = 0,
        timeout: float = 10.0,
    ) -> dict:
        """The first event ``name`` (the ``after``-th on) that satisfies ``where``; polls the log."""
        deadline = time.monotonic() + timeout
        while True:
            matches = [e for e in self.events(name)[after:] if where(e)]
            if matches:
                return matches[0]
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"usertcp exited ({self.proc.returncode}) before logging {name!r}:\n{self.text()}"
                )
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no {name!r} event within {timeout} s:\n{self.text()[-4000:]}")
            time.sleep(POLL)

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> dict:
        return self.wait_for("service.ready", timeout=timeout)

    def status(self, timeout: float = 5.0) -> list[dict]:
        """The connection table, asked for with SIGUSR1 (the CLI logs a `connections` event)."""
        seen = len(self.events("connections"))
        os.kill(self.pid, signal.SIGUSR1)
        return self.wait_for("connections", after=seen, timeout=timeout)["table"]

    # -- ending it -------------------------------------------------------------------------------

    def stop(self, sig: int = signal.SIGINT, timeout: float = 10.0) -> int:
        """Send ``sig`` by PID; return the exit status."""
        if self.proc.poll() is None:
            os.kill(self.pid, sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def wait(self, timeout: float = 30.0) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()


def start_service(
    ns: NetNS, tmp_path: Path, service: str, *args: str, name: str | None = None
) -> StackProcess:
    """Start ``usertcp SERVICE ARGS`` in ``ns`` and return once it logged `service.ready`."""
    log_path = tmp_path / f"{name or service}.log"
    stack = StackProcess(ns, [service, *args], log_path)
    stack.wait_ready()
    return stack


def timestamp(event: dict) -> float:
    """An event's wall-clock time (structlog writes ISO 8601 UTC)."""
    return datetime.fromisoformat(event["timestamp"]).timestamp()


# -- captures ------------------------------------------------------------------------------------

_STACK_INT = addr_to_int(STACK)


class Captured:
    """One TCP segment of a capture, with its direction."""

    def __init__(self, ts: float, seg: Segment) -> None:
        self.ts = ts
        self.seg = seg
        self.from_stack = seg.src == _STACK_INT

    @property
    def stack_port(self) -> int:
        return self.seg.sport if self.from_stack else self.seg.dport

    @property
    def peer_port(self) -> int:
        return self.seg.dport if self.from_stack else self.seg.sport

    def __repr__(self) -> str:
        who = "stack " if self.from_stack else "kernel"
        return f"{who} {self.seg!r}"


def tcp_segments(path: str | os.PathLike[str]) -> list[Captured]:
    """The IPv4 TCP segments of a pcap file; other packets (IPv6 chatter, ICMP) are skipped."""
    out = []
    for ts, packet in read_pcap(path):
        if not packet or packet[0] >> 4 != 4:
            continue
        try:
            # With TUN offload (the default) checksums in the capture are partial: don't verify.
            seg = parse_packet(packet, verify_checksum=False)
        except MalformedPacket:
            continue
        if isinstance(seg, Segment):
            out.append(Captured(ts, seg))
    return out


def by_connection(segments: list[Captured]) -> dict[int, list[Captured]]:
    """Segments grouped by the kernel's (ephemeral) port, in capture order."""
    conns: dict[int, list[Captured]] = {}
    for c in segments:
        conns.setdefault(c.peer_port, []).append(c)
    return conns
