"""`--trace [FILTER]`: serving commands draw each matching connection live as a ladder (issue 11).

usertcp's side comes from its engine, the peer's is inferred. The kernel in the test's namespace is
the peer (Python sockets); each row of the drawing is checked.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .netns import NetNS
from .stackproc import STACK, StackProcess, start_service

pytestmark = pytest.mark.integration

# A row of a traced ladder: "[N] " before the text drawing's own row.
ROW = re.compile(
    r"^\[(?P<conn>\d+)\]\s+(?P<ms>\d+\.\d)\s+(?P<left>[A-Z0-9-]+) │(?P<arrow>◀──|──|\s*✕──) "
    r"(?P<flags>[A-Z-]+)  seq=(?P<seq>\d+)(?:  ack=(?P<ack>\d+))?(?:  len=(?P<len>\d+))?"
    r"(?:  \[(?P<marks>[a-z, -]+)\])? ─*(?:▶|✕)?\s*│ (?P<right>[A-Z0-9-]+)$")
TITLE = re.compile(r"^\[(?P<conn>\d+)\]\s+(?P<left>\w+) (?P<lhost>\S+)\s+(?P<right>\w+) (?P<rhost>\S+)$")

CLIENT = """\
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
s.sendall(b"traced\\n")
got = b""
while not got.endswith(b"\\n"):
    got += s.recv(100)
time.sleep(0.05)
s.close()
time.sleep(0.2)
print(got.decode().strip())
"""


def rows(text: str, conn: int | None = None) -> list[tuple]:
    out = []
    for line in text.splitlines():
        m = ROW.match(line)
        if m and (conn is None or int(m["conn"]) == conn):
            out.append((int(m["conn"]), "→" if m["arrow"] == "──" else "←", m["flags"],
                        int(m["seq"]), None if m["ack"] is None else int(m["ack"]),
                        int(m["len"] or 0), m["left"], m["right"]))
    return out


def finished(text: str) -> int:
    """How many drawn connections have reached their last row (usertcp CLOSED)."""
    return sum(1 for r in rows(text) if r[7] == "CLOSED" and r[2] == "ACK")


def wait_until_finished(path: Path, count: int, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = path.read_text() if path.exists() else ""
        if finished(text) >= count or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


# One echo exchange, the kernel closing first: the peer's states inferred, usertcp's real.
ECHO_EXCHANGE = [
    ("→", "SYN", 0, None, 0, "SYN-SENT", "SYN-RECEIVED"),
    ("←", "SYN-ACK", 0, 1, 0, "ESTABLISHED", "SYN-RECEIVED"),
    ("→", "ACK", 1, 1, 0, "ESTABLISHED", "ESTABLISHED"),
    ("→", "PSH-ACK", 1, 1, 7, "ESTABLISHED", "ESTABLISHED"),
]


def check_echo_rows(got: list[tuple]) -> None:
    # The echo and the ACKs around it depend on delayed-ACK timing: the handshake, the request,
    # the echo somewhere after it, and the four-way close (the kernel first) are exact.
    assert [r[1:] for r in got[:4]] == ECHO_EXCHANGE, got
    echo = [r for r in got if r[1] == "←" and r[5] == 7]
    assert len(echo) == 1 and echo[0][3:5] == (1, 8), got
    tail = [r[1:] for r in got if "FIN" in r[2]] + [r[1:] for r in got[-1:]]
    assert tail == [
        ("→", "FIN-ACK", 8, 8, 0, "FIN-WAIT-1", "CLOSE-WAIT"),
        ("←", "FIN-ACK", 8, 9, 0, "TIME-WAIT", "LAST-ACK"),
        ("→", "ACK", 9, 9, 0, "TIME-WAIT", "CLOSED"),
    ], got


def test_echo_traces_each_matching_connection(netns: NetNS, tmp_path: Path) -> None:
    trace = tmp_path / "trace.txt"
    stack = start_service(netns, tmp_path, "echo", "--trace", "host 10.7.0.1 and port 7",
                          "--trace-file", str(trace))
    try:
        for _ in range(2):
            res = netns.run([sys.executable, "-c", CLIENT, STACK, "7"], capture_output=True,
                            text=True, timeout=30)
            assert res.returncode == 0 and res.stdout.strip() == "traced", res.stderr
        text = wait_until_finished(trace, 2)
    finally:
        assert stack.stop() == 0
    titles = [TITLE.match(line) for line in text.splitlines() if TITLE.match(line)]
    assert [(t["conn"], t["left"], t["right"], t["rhost"]) for t in titles] == [
        ("1", "peer", "usertcp", f"{STACK}:7"), ("2", "peer", "usertcp", f"{STACK}:7")], text
    for conn in (1, 2):
        check_echo_rows(rows(text, conn))
    # Nothing but the two drawings: every line belongs to one of them.
    assert all(re.match(r"^\[[12]\] |^$", line) for line in text.splitlines()), text


def test_filter_that_matches_nothing_draws_nothing(netns: NetNS, tmp_path: Path) -> None:
    trace = tmp_path / "trace.txt"
    stack = start_service(netns, tmp_path, "echo", "--trace", "port 80 or host 10.7.0.9",
                          "--trace-file", str(trace))
    try:
        res = netns.run([sys.executable, "-c", CLIENT, STACK, "7"], capture_output=True,
                        text=True, timeout=30)
        assert res.returncode == 0, res.stderr
    finally:
        assert stack.stop() == 0
    assert trace.read_text() == ""


def test_trace_to_stderr_and_a_bad_filter(netns: NetNS, tmp_path: Path) -> None:
    log = tmp_path / "stderr.txt"
    stack = StackProcess(netns, ["echo", "--trace", "--log-level", "warning"], log)
    time.sleep(0.3)
    try:
        deadline = time.monotonic() + 15
        while True:
            res = netns.run([sys.executable, "-c", CLIENT, STACK, "7"], capture_output=True,
                            text=True, timeout=30)
            if res.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert res.returncode == 0, res.stderr
        wait_until_finished(log, 1)
    finally:
        stack.stop()
    check_echo_rows(rows(log.read_text(), 1))

    bad = netns.run([sys.executable, "-m", "usertcp", "echo", "--trace", "port eighty"],
                    capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2
    assert bad.stderr.startswith("usertcp: error: ") and "port" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_active_open_is_drawn_with_usertcp_on_the_left(netns: NetNS, tmp_path: Path) -> None:
    """`usertcp connect --trace`: usertcp opens, so it is the left side, SYN-SENT from its engine."""
    trace = tmp_path / "trace.txt"
    server = netns.popen([sys.executable, "-c", """\
import socket
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("0.0.0.0", 8007)); l.listen()
print("ready", flush=True)
c, _ = l.accept()
data = b""
while chunk := c.recv(100):
    data += chunk
c.sendall(data.upper()); c.close()
"""], stdout=subprocess.PIPE, text=True)
    assert server.stdout.readline().strip() == "ready"
    proc = netns.run([sys.executable, "-m", "usertcp", "connect", "10.7.0.1", "8007",
                      "--trace", "port 8007", "--trace-file", str(trace), "--log-level",
                      "warning"], input="hello\n", capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "HELLO\n"
    text = trace.read_text()
    title = next(TITLE.match(line) for line in text.splitlines() if TITLE.match(line))
    assert (title["left"], title["right"], title["rhost"]) == ("usertcp", "peer",
                                                               "10.7.0.1:8007"), text
    got = rows(text, 1)
    assert [r[1:] for r in got[:3]] == [
        ("→", "SYN", 0, None, 0, "SYN-SENT", "SYN-RECEIVED"),
        ("←", "SYN-ACK", 0, 1, 0, "ESTABLISHED", "SYN-RECEIVED"),
        ("→", "ACK", 1, 1, 0, "ESTABLISHED", "ESTABLISHED"),
    ], text
    assert ("→", "PSH-ACK", 1, 1, 6) in [r[1:6] for r in got], text
    assert any("FIN" in r[2] for r in got if r[1] == "→"), text


def test_run_traces_the_programs_connections(netns: NetNS, tmp_path: Path) -> None:
    """`usertcp run --trace`: the program's connection to the gateway, drawn from usertcp's side."""
    trace = tmp_path / "trace.txt"
    server = netns.popen([sys.executable, "-c", """\
import socket
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("127.0.0.1", 8008)); l.listen()
print("ready", flush=True)
c, _ = l.accept()
c.sendall(c.recv(100)); c.close()
"""], stdout=subprocess.PIPE, text=True)
    assert server.stdout.readline().strip() == "ready"
    program = ("import socket; s = socket.create_connection(('10.0.2.2', 8008), timeout=10); "
               "s.sendall(b'via run\\n'); print(s.recv(100).decode().strip()); s.close()")
    proc = netns.run([sys.executable, "-m", "usertcp", "run", "--trace", "port 8008",
                      "--trace-file", str(trace), "--", sys.executable, "-c", program],
                     capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "via run"
    text = trace.read_text()
    title = next(TITLE.match(line) for line in text.splitlines() if TITLE.match(line))
    assert (title["left"], title["right"], title["rhost"]) == ("peer", "usertcp",
                                                               "10.0.2.2:8008"), text
    got = rows(text, 1)
    assert [r[1:] for r in got[:3]] == ECHO_EXCHANGE[:3], text
    assert ("→", "PSH-ACK", 1, 1, 8) in [r[1:6] for r in got], text
    assert {r[2] for r in got} >= {"SYN", "SYN-ACK", "PSH-ACK"}, text
    # Only the program's connection on port 8008 is drawn (no DNS, no other flows).
    assert {r[0] for r in rows(text)} == {1}, text
