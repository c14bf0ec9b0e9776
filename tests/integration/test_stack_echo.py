"""`usertcp echo` with the kernel's sockets as clients: bulk, many sequential, many concurrent, half-close."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from .netns import NetNS
from .stackproc import STACK, start_service

# Send N random bytes from one thread, read the echo in another; print what came back.
BULK = """\
import hashlib, json, os, socket, sys, threading, time
n = int(sys.argv[2])
data = os.urandom(n)
s = socket.create_connection((sys.argv[1], 7), timeout=20)
def send():
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
t0 = time.monotonic()
sender = threading.Thread(target=send)
sender.start()
h, got = hashlib.sha256(), 0
while chunk := s.recv(1 << 20):
    h.update(chunk)
    got += len(chunk)
sender.join()
s.close()
print(json.dumps({"sent": hashlib.sha256(data).hexdigest(), "received": h.hexdigest(),
                  "bytes": got, "seconds": time.monotonic() - t0}))
"""

SEQUENTIAL = """\
import json, socket, sys
bad, ports = [], set()
for i in range(int(sys.argv[2])):
    msg = b"message %d" % i
    with socket.create_connection((sys.argv[1], 7), timeout=10) as s:
        ports.add(s.getsockname()[1])
        s.sendall(msg)
        s.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := s.recv(100):
            got += chunk
    if got != msg:
        bad.append((i, got.decode("latin-1")))
print(json.dumps({"bad": bad, "ports": len(ports)}))
"""

CONCURRENT = """\
import hashlib, json, os, socket, sys, threading
host, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
results = {}
start = threading.Barrier(count)
def client(i):
    data = os.urandom(size)
    try:
        s = socket.create_connection((host, 7), timeout=30)
        start.wait(30)  # all connections open at once before anyone sends
        sender = threading.Thread(target=lambda: (s.sendall(data), s.shutdown(socket.SHUT_WR)))
        sender.start()
        got = bytearray()
        while chunk := s.recv(65536):
            got += chunk
        sender.join()
        s.close()
        results[i] = "ok" if bytes(got) == data else f"corrupt: {len(got)} of {size} bytes"
    except Exception as exc:
        results[i] = repr(exc)
threads = [threading.Thread(target=client, args=(i,)) for i in range(count)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps(results))
"""

# One thread sends 1 MB then shuts down its sending side; the main thread reads the echo, which must
# arrive whole after the shutdown (the half-closed connection still carries data the other way), then EOF.
HALF_CLOSE = """\
import hashlib, json, os, socket, sys, threading
data = os.urandom(int(sys.argv[2]))
s = socket.create_connection((sys.argv[1], 7), timeout=20)
done = threading.Event()
def send():
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
    done.set()
sender = threading.Thread(target=send)
sender.start()
got = bytearray()
received_before_shutdown = None
while chunk := s.recv(1 << 16):
    if received_before_shutdown is None and done.is_set():
        received_before_shutdown = len(got)
    got += chunk
sender.join()
eof_again = s.recv(10)  # still EOF, no reset
s.close()
print(json.dumps({"equal": bytes(got) == data, "bytes": len(got), "eof_again": eof_again.hex(),
                  "received_before_shutdown": received_before_shutdown}))
"""


def run_json(ns: NetNS, script: str, *args: str, timeout: float = 60) -> dict:
    res = ns.python(script, *args, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


@pytest.mark.parametrize("offload", [True, False], ids=["offload", "no-offload"])
def test_ten_megabytes_echo_intact(netns: NetNS, tmp_path: Path, offload: bool) -> None:
    # Both device paths: super-segments with partial checksums, and one packet per MSS.
    stack = start_service(netns, tmp_path, "echo", *([] if offload else ["--no-offload"]))
    netns.wait_port(STACK, 7)
    out = run_json(netns, BULK, STACK, str(10 * 1024 * 1024))
    assert out["bytes"] == 10 * 1024 * 1024
    assert out["received"] == out["sent"]
    assert stack.stop(signal.SIGINT) == 0, stack.text()


def test_two_hundred_sequential_connections(netns: NetNS, tmp_path: Path) -> None:
    stack = start_service(netns, tmp_path, "echo")
    out = run_json(netns, SEQUENTIAL, STACK, "200")
    assert out["bad"] == []
    assert out["ports"] == 200
    assert stack.stop(signal.SIGINT) == 0, stack.text()


def test_fifty_concurrent_connections(netns: NetNS, tmp_path: Path) -> None:
    stack = start_service(netns, tmp_path, "echo")
    out = run_json(netns, CONCURRENT, STACK, "50", str(64 * 1024), timeout=90)
    assert len(out) == 50
    failed = {i: r for i, r in out.items() if r != "ok"}
    assert not failed, failed
    assert stack.stop(signal.SIGINT) == 0, stack.text()


def test_half_close_still_receives_the_whole_echo(netns: NetNS, tmp_path: Path) -> None:
    stack = start_service(netns, tmp_path, "echo")
    out = run_json(netns, HALF_CLOSE, STACK, str(1024 * 1024))
    assert out["bytes"] == 1024 * 1024
    assert out["equal"]
    assert out["eof_again"] == ""
    # Some of the echo came in after the client's FIN had gone out.
    assert out["received_before_shutdown"] is not None
    assert out["received_before_shutdown"] < out["bytes"]
    # The stack saw our FIN (CLOSE-WAIT) and only then closed its side; it closed last (LAST-ACK).
    states = [(e["old"], e["new"]) for e in stack.events("tcp.state")]
    assert ("ESTABLISHED", "CLOSE-WAIT") in states
    assert ("CLOSE-WAIT", "LAST-ACK") in states
    assert ("LAST-ACK", "CLOSED") in states
    assert stack.stop(signal.SIGINT) == 0, stack.text()
