"""A namespace that plays "the host" for `usertcp run` tests, with the servers a program talks to.

:class:`HostNS` makes a named namespace (``utcp-<pid>-<n>``, see netns.py) with ``lo`` and a veth
interface holding :data:`HOST_ADDR` and :data:`HOST_ADDR6` (its peer sits in a second namespace, so
the addresses are ordinary non-loopback ones), writes ``/etc/netns/<name>/resolv.conf`` (``ip netns
exec`` bind-mounts it over ``/etc/resolv.conf``) and starts this file as a script inside it, serving
on ``[::]`` for both families (IPv4 as mapped addresses):

  HTTP_PORT      files of ``root`` over HTTP/1.0 (``big.bin``: 20 MiB random; ``small.bin``: 100 kB)
  READALL_PORT   reads to EOF, then answers ``"<bytes> <sha256>\\n"`` and closes
  SENDSHUT_PORT  sends :data:`GREETING`, shuts down its write side, reads to EOF, records what it got
  ECHO_PORT      echoes until EOF, then closes; records how many echo connections were open at once
  PUSH_PORT      reads one line ``"<n>\\n"``, sends n bytes of :func:`push_pattern`, closes
  UDP 53         answers A for :data:`DNS_NAME` with :data:`HOST_ADDR`; AAAA: no data; else NXDOMAIN

Nothing listens on CLOSED_PORT. Each record is a JSON line appended to ``results``
(:meth:`HostNS.records`). Run as a script the file uses only the standard library.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import json
import os
import random
import shutil
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .netns import NetNS

HOST_ADDR = "10.99.0.1"
PEER_ADDR = "10.99.0.2"
HOST_ADDR6 = "fd99::1"
PEER_ADDR6 = "fd99::2"
DNS_NAME = "files.example.test"
HTTP_PORT = 8000
READALL_PORT = 9001
SENDSHUT_PORT = 9002
ECHO_PORT = 9003
PUSH_PORT = 9004
CLOSED_PORT = 9999
BIG_SIZE = 20 * 1024 * 1024
SMALL_SIZE = 100_000
GREETING = b"hello from the host\n" * 50
VETH = "vhost"
_NETNS_ETC = "/etc/netns"
_PATTERN_LEN = (1 << 20) + 7  # not a power of two: a misplaced chunk changes the digest


@functools.cache
def _pattern() -> bytes:
    return random.Random(20261206).randbytes(_PATTERN_LEN)


def push_pattern(total: int) -> bytes:
    """The ``total`` bytes the push service sends."""
    reps = total // _PATTERN_LEN + 1
    return (_pattern() * reps)[:total]


def push_sha256(total: int) -> str:
    """sha256 of :func:`push_pattern` (``total``), without holding it all in memory."""
    h, left, block = hashlib.sha256(), total, _pattern()
    while left > 0:
        h.update(block[: min(left, len(block))])
        left -= len(block)
    return h.hexdigest()


# =================================================================================================
# The servers (run inside the host namespace as `python hostns.py ROOT RESULTS`)
# =================================================================================================

class _Recorder:
    def __init__(self, path: str) -> None:
        self._path = path
        self._lock = threading.Lock()
        self.open_echo = 0
        self.lock = self._lock

    def write(self, **record: Any) -> None:
        with self._lock, open(self._path, "a") as f:
            f.write(json.dumps(record) + "\n")


def _read_to_eof(conn: socket.socket) -> tuple[int, str]:
    h, n = hashlib.sha256(), 0
    for _ in range(100_000_000):  # bounded by the idle timeout set on the socket
        data = conn.recv(1 << 20)
        if not data:
            break
        h.update(data)
        n += len(data)
    return n, h.hexdigest()


def _serve_readall(conn: socket.socket, rec: _Recorder) -> None:
    n, digest = _read_to_eof(conn)
    conn.sendall(f"{n} {digest}\n".encode())
    rec.write(service="readall", bytes=n, sha256=digest)


def _serve_sendshut(conn: socket.socket, rec: _Recorder) -> None:
    conn.sendall(GREETING)
    conn.shutdown(socket.SHUT_WR)
    n, digest = _read_to_eof(conn)
    rec.write(service="sendshut", bytes=n, sha256=digest)


def _serve_echo(conn: socket.socket, rec: _Recorder) -> None:
    with rec.lock:
        rec.open_echo += 1
        concurrent = rec.open_echo
    try:
        n = 0
        for _ in range(100_000_000):
            data = conn.recv(1 << 16)
            if not data:
                break
            conn.sendall(data)
            n += len(data)
        conn.shutdown(socket.SHUT_WR)
    finally:
        with rec.lock:
            rec.open_echo -= 1
    rec.write(service="echo", bytes=n, concurrent=concurrent)


def _serve_push(conn: socket.socket, rec: _Recorder) -> None:
    line = conn.makefile("rb").readline(100)
    total = int(line)
    block = memoryview(_pattern())
    left = total
    while left > 0:
        n = min(left, len(block))
        conn.sendall(block[:n])
        left -= n
    conn.shutdown(socket.SHUT_WR)
    rec.write(service="push", bytes=total)


_SERVICES = {READALL_PORT: _serve_readall, SENDSHUT_PORT: _serve_sendshut,
             ECHO_PORT: _serve_echo, PUSH_PORT: _serve_push}


def _handle(handler: Any, conn: socket.socket, rec: _Recorder) -> None:
    with conn:
        conn.settimeout(120)  # a stuck peer ends its thread, not the server
        try:
            handler(conn, rec)
        except OSError as exc:
            rec.write(service=handler.__name__, error=str(exc))


def _accept_loop(listener: socket.socket, handler: Any, rec: _Recorder) -> None:
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=_handle, args=(handler, conn, rec), daemon=True).start()


def dns_answer(query: bytes, name: str, addr: str) -> bytes | None:
    """The reply to one DNS query: A ``name`` -> ``addr``; AAAA ``name``: no data; else NXDOMAIN."""
    if len(query) < 12:
        return None
    qid, flags, qdcount = struct.unpack_from("!HHH", query)
    if flags & 0x8000 or qdcount != 1:  # a response, or a query we do not understand
        return None
    labels, pos = [], 12
    for _ in range(128):
        if pos >= len(query):
            return None
        length = query[pos]
        pos += 1
        if length == 0:
            break
        if length > 63:  # no compression in a question we sent nothing before
            return None
        labels.append(query[pos:pos + length].decode("ascii", "replace").lower())
        pos += length
    if pos + 4 > len(query):
        return None
    qtype, qclass = struct.unpack_from("!HH", query, pos)
    question = query[12:pos + 4]
    ours = ".".join(labels) == name.lower() and qclass == 1
    answers = b""
    if ours and qtype == 1:
        answers = struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton(addr)
    rcode = 0 if ours else 3
    reply_flags = 0x8000 | (flags & 0x0100) | 0x0080 | rcode  # QR, RD copied, RA
    header = struct.pack("!HHHHHH", qid, reply_flags, 1, 1 if answers else 0, 0, 0)
    return header + question + answers


def _dns_loop(sock: socket.socket, rec: _Recorder) -> None:
    while True:
        query, peer = sock.recvfrom(4096)
        reply = dns_answer(query, DNS_NAME, HOST_ADDR)
        if reply is not None:
            sock.sendto(reply, peer)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class _DualStackHTTPServer(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def serve(root: str, results: str) -> None:
    """Bind every service, then serve forever (until killed)."""
    rec = _Recorder(results)
    dns = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    dns.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    dns.bind(("::", 53))
    listeners = {}
    for port in _SERVICES:
        lst = socket.create_server(("::", port), family=socket.AF_INET6, backlog=512,
                                   reuse_port=False, dualstack_ipv6=True)
        listeners[port] = lst
    httpd = _DualStackHTTPServer(
        ("::", HTTP_PORT), functools.partial(_QuietHandler, directory=root))
    httpd.daemon_threads = True
    threading.Thread(target=_dns_loop, args=(dns, rec), daemon=True).start()
    for port, lst in listeners.items():
        threading.Thread(target=_accept_loop, args=(lst, _SERVICES[port], rec), daemon=True).start()
    httpd.serve_forever()


# =================================================================================================
# The fixture side
# =================================================================================================

class HostNS:
    """The host namespace, its veth peer, resolv.conf and the servers; :meth:`close` removes all."""

    def __init__(self, ns: NetNS, peer: NetNS, root: Path, results: Path) -> None:
        self.ns = ns
        self.peer = peer
        self.root = root
        self.results = results
        self.server: subprocess.Popen[bytes] | None = None
        self.big_sha256 = ""
        self.small_sha256 = ""

    @property
    def name(self) -> str:
        return self.ns.name

    @classmethod
    def create(cls, workdir: Path) -> HostNS:
        from .netns import NetNS

        root = workdir / "www"
        root.mkdir(parents=True, exist_ok=True)
        results = workdir / "results.jsonl"
        results.write_text("")
        ns = NetNS.create()
        try:
            peer = NetNS.create()
        except BaseException:
            ns.close()
            raise
        host = cls(ns, peer, root, results)
        try:
            host._setup()
        except BaseException:
            host.close()
            raise
        return host

    def _setup(self) -> None:
        big, small = os.urandom(BIG_SIZE), os.urandom(SMALL_SIZE)
        (self.root / "big.bin").write_bytes(big)
        (self.root / "small.bin").write_bytes(small)
        self.big_sha256 = hashlib.sha256(big).hexdigest()
        self.small_sha256 = hashlib.sha256(small).hexdigest()
        for args in (
            ["link", "add", VETH, "type", "veth", "peer", "name", "vpeer", "netns", self.peer.name],
            ["addr", "add", f"{HOST_ADDR}/24", "dev", VETH],
            ["addr", "add", f"{HOST_ADDR6}/64", "dev", VETH, "nodad"],
            ["link", "set", VETH, "up"],
        ):
            self.ns.run(["ip", *args], check=True, capture_output=True)
        self.peer.run(["ip", "addr", "add", f"{PEER_ADDR}/24", "dev", "vpeer"], check=True,
                      capture_output=True)
        self.peer.run(["ip", "addr", "add", f"{PEER_ADDR6}/64", "dev", "vpeer", "nodad"],
                      check=True, capture_output=True)
        self.peer.run(["ip", "link", "set", "vpeer", "up"], check=True, capture_output=True)
        etc = Path(_NETNS_ETC, self.name)
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text("nameserver 127.0.0.1\n")
        # Its stderr (a reset peer's traceback from http.server) goes to a file, not the test's.
        with open(self.root.parent / "servers.log", "wb") as log:
            self.server = self.ns.popen(
                [sys.executable, __file__, str(self.root), str(self.results)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        # Everything is bound before the HTTP server starts: once it accepts, all services do.
        self.ns.wait_port("127.0.0.1", HTTP_PORT, timeout=15)
        self.ns.wait_port("::1", HTTP_PORT, timeout=15)

    def records(self, service: str | None = None) -> list[dict[str, Any]]:
        """What the services recorded so far, oldest first (only ``service``'s if given)."""
        out = [json.loads(line) for line in self.results.read_text().splitlines() if line]
        return [r for r in out if service is None or r.get("service") == service]

    def links(self) -> list[str]:
        """Names of the interfaces in the host namespace."""
        res = self.ns.run(["ip", "-o", "link", "show"], capture_output=True, text=True,
                          check=True)
        return [line.split(":")[1].strip().split("@")[0] for line in res.stdout.splitlines()]

    def close(self) -> None:
        try:
            self.ns.close()
        finally:
            try:
                self.peer.close()
            finally:
                shutil.rmtree(Path(_NETNS_ETC, self.name), ignore_errors=True)


def reap_stale_etc(prefix: str = "utcp") -> None:
    """``/etc/netns/PREFIX-<pid>-<n>`` directories of test processes that no longer exist."""
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(_NETNS_ETC):
            parts = name.split("-")
            if len(parts) == 3 and parts[0] == prefix and parts[1].isdigit() \
                    and not os.path.exists(f"/proc/{parts[1]}"):
                shutil.rmtree(os.path.join(_NETNS_ETC, name), ignore_errors=True)


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2])
