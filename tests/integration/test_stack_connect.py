"""`usertcp connect HOST PORT`: the stack opens, the kernel's nc listens."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from .netns import NetNS
from .stackproc import HOST, StackProcess

PORT = 5001


def listen_with_nc(ns: NetNS, port: int, stdin: Path, stdout: Path) -> subprocess.Popen:
    """`nc -l -N 10.7.0.1 PORT` in ``ns``, returned once it is listening.

    10.7.0.1 appears only when usertcp configures its TUN, so nc binds it in advance
    (net.ipv4.ip_nonlocal_bind, a per-namespace sysctl). The listener is detected with ss, not by
    connecting: nc accepts exactly one connection.
    """
    allow_nonlocal_bind(ns)
    with open(stdin, "rb") as fin, open(stdout, "wb") as fout:
        nc = ns.popen(["nc", "-l", "-N", HOST, str(port)], stdin=fin, stdout=fout,
                      stderr=subprocess.PIPE)
    wait_listening(ns, nc, port)
    return nc


def allow_nonlocal_bind(ns: NetNS) -> None:
    ns.run(["sysctl", "-q", "-w", "net.ipv4.ip_nonlocal_bind=1"], check=True)


def wait_listening(ns: NetNS, proc: subprocess.Popen, port: int, timeout: float = 10) -> None:
    """Poll ss until something listens on HOST:port (bounded); fail early if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while True:
        res = ns.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True)
        if f"{HOST}:{port}" in res.stdout:
            return
        assert proc.poll() is None, f"{proc.args} exited {proc.returncode}"
        assert time.monotonic() < deadline, f"nothing listens on {HOST}:{port}"
        time.sleep(0.02)


def test_connect_moves_data_both_ways(netns: NetNS, tmp_path: Path) -> None:
    to_kernel = os.urandom(300_000)
    to_stack = os.urandom(200_000)
    (tmp_path / "stack_in").write_bytes(to_kernel)
    (tmp_path / "nc_in").write_bytes(to_stack)
    nc = listen_with_nc(netns, PORT, tmp_path / "nc_in", tmp_path / "nc_out")

    with open(tmp_path / "stack_in", "rb") as fin, open(tmp_path / "stack_out", "wb") as fout:
        stack = StackProcess(netns, ["connect", HOST, str(PORT)], tmp_path / "connect.log",
                             stdin=fin, stdout=fout)
    assert stack.wait(timeout=30) == 0, stack.text()
    assert nc.wait(timeout=15) == 0, nc.stderr.read().decode()

    assert (tmp_path / "nc_out").read_bytes() == to_kernel
    assert (tmp_path / "stack_out").read_bytes() == to_stack
    states = [e["new"] for e in stack.events("tcp.state")]
    assert states[:2] == ["SYN-SENT", "ESTABLISHED"], states
    assert "TIME-WAIT" in states or "CLOSED" in states, states


def test_connect_refused_exits_one(netns: NetNS, tmp_path: Path) -> None:
    res = netns.run(
        [sys.executable, "-m", "usertcp", "connect", HOST, str(PORT),
         "--log-level", "error"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30,
    )
    assert res.returncode == 1, (res.stdout, res.stderr)
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("usertcp: ") and "refused" in lines[0], lines
    assert res.stdout == ""


# Accept one connection and reset it at once (SO_LINGER 0).
RESETTER = """\
import socket, struct, sys
srv = socket.socket()
srv.bind((sys.argv[1], int(sys.argv[2])))
srv.listen()
conn, _ = srv.accept()
conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
conn.close()
"""


def test_connect_reset_exits_one_while_stdin_is_open(netns: NetNS, tmp_path: Path) -> None:
    allow_nonlocal_bind(netns)
    server = netns.popen([sys.executable, "-c", RESETTER, HOST, str(PORT)])
    wait_listening(netns, server, PORT)
    # stdin is a pipe that never reaches EOF: the reset alone must end the command.
    stack = StackProcess(netns, ["connect", HOST, str(PORT), "--log-level", "error"],
                         tmp_path / "connect.log", stdin=subprocess.PIPE)
    try:
        assert stack.wait(timeout=15) == 1, stack.text()
    finally:
        stack.proc.stdin.close()
    assert server.wait(timeout=5) == 0
    lines = stack.text().splitlines()
    assert lines == ["usertcp: connection reset by peer"], lines
