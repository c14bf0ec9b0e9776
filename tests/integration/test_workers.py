"""`--workers 2`: two engines on two queues of one TUN, the kernel steered by usertcp's eBPF program.

Passive opens spread over both workers by the kernel's port; active opens come back to the worker
that made them even after more than 3 s of silence (when the kernel's own flow table would have
forgotten them); signals reach every worker; nothing outlives the supervisor.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from usertcp import cli
from usertcp.phy.steering import queue_for

from .netns import NetNS
from .stackproc import HOST, STACK, StackProcess, start_service, tcp_segments

EPHEMERAL = (32768, 60999)
CLIENTS = 60
KERNEL_ECHO_PORT = 5007
IDLE = 4.0  # longer than the ~3 s after which the kernel's flow table forgets a flow

# CLIENTS threads at once: connect, send a line of their own, half-close, read the echo.
CLIENTS_SCRIPT = """\
import json, socket, sys, threading
host, count = sys.argv[1], int(sys.argv[2])
results = {}
def client(i):
    msg = b"client %d says hello\\n" % i * 50
    try:
        with socket.create_connection((host, 7), timeout=20) as s:
            port = s.getsockname()[1]
            s.sendall(msg)
            s.shutdown(socket.SHUT_WR)
            got = bytearray()
            while chunk := s.recv(65536):
                got += chunk
        results[port] = "ok" if bytes(got) == msg else f"bad echo: {len(got)} bytes"
    except Exception as exc:
        results[f"client {i}"] = repr(exc)
threads = [threading.Thread(target=client, args=(i,)) for i in range(count)]
for t in threads:
    t.start()
for t in threads:
    t.join(60)
print(json.dumps(results))
"""

# The kernel's echo server for the workers' active opens (ended by PID at teardown).
KERNEL_ECHO = """\
import socket, sys, threading
srv = socket.create_server(("0.0.0.0", int(sys.argv[1])), backlog=64, reuse_port=False)
print("listening", flush=True)
def serve(conn):
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)
while True:
    conn, _ = srv.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""

# workers.serve with a worker of the test's own: a few active opens, a silence, talk again.
ACTIVE_SCRIPT = """\
import asyncio, signal, sys
import structlog
from usertcp import log
from usertcp.tcp.config import TcpConfig
from usertcp.workers import WorkerSpec, serve

HOST, PORT, PER_WORKER, IDLE = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
log.configure("info", "json")

async def worker(open_stack, ready):
    async with open_stack(None, None) as stack:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        ready(stack)
        logger = structlog.get_logger("usertcp")
        conns = [await asyncio.wait_for(stack.open_connection(HOST, PORT), 10)
                 for _ in range(PER_WORKER)]
        ports = [w.get_extra_info("sockname")[1] for _, w in conns]
        answers = []
        for round_ in ("before", "after"):
            for port, (reader, writer) in zip(ports, conns):
                msg = f"{round_} silence from port {port}\\n".encode()
                writer.write(msg)
                try:
                    got = await asyncio.wait_for(reader.readexactly(len(msg)), 5)
                    answers.append(got == msg)
                except Exception as exc:
                    answers.append(repr(exc))
            if round_ == "before":
                await asyncio.sleep(IDLE)
        logger.info("active.done", ports=ports, answers=answers)
        for _, writer in conns:
            writer.close()
        await stop.wait()
    return 0

spec = WorkerSpec("utcp0", ["10.7.0.2"], ["10.7.0.1/24"], 1500, True, TcpConfig(), 2)
sys.exit(serve(spec, lambda open_stack, ready: asyncio.run(worker(open_stack, ready))))
"""


class ScriptProcess(StackProcess):
    """A Python script in the namespace, its JSON log watched like a usertcp service's."""

    def __init__(self, ns: NetNS, script: str, args: list[str], log_path: Path) -> None:
        self.ns, self.args, self.log_path = ns, args, log_path
        self._log = open(log_path, "wb")  # noqa: SIM115  (closed in stop())
        self.proc = ns.popen([sys.executable, "-c", script, *args], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=self._log)


def _kernel_port(event: dict) -> int:
    return int(event["remote"].rsplit(":", 1)[1])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _link_exists(ns: NetNS, name: str = "utcp0") -> bool:
    return ns.run(["ip", "link", "show", name], capture_output=True).returncode == 0


def _stop_and_check_nothing_left(ns: NetNS, proc: StackProcess, pids: list[int], *,
                                 service: bool = True) -> None:
    assert proc.stop(signal.SIGINT) == 0, proc.text()[-3000:]
    assert not [pid for pid in pids if _alive(pid)], "a worker outlived the supervisor"
    assert not _link_exists(ns), "the TUN device outlived its queues"
    for index in range(len(pids) if service else 0):
        proc.wait_for("service.stopping", lambda e, i=index: e.get("worker") == i, timeout=1)


def test_two_workers_share_passive_opens(netns: NetNS, tmp_path: Path) -> None:
    pcap = tmp_path / "cap.pcap"
    stack = start_service(netns, tmp_path, "echo", "--workers", "2", "--pcap", str(pcap))
    ready = stack.events("service.ready")
    assert len(ready) == 1 and ready[0]["workers"] == 2 and ready[0]["steering"] == "ebpf", ready
    pids = ready[0]["pids"]
    assert len(pids) == 2 and stack.pid not in pids
    strides = {e["worker"]: e["port_stride"] for e in stack.events("worker.ready")}
    assert strides == {0: [2, 0], 1: [2, 1]}

    res = netns.python(CLIENTS_SCRIPT, STACK, str(CLIENTS), capture_output=True, text=True,
                       timeout=90)
    assert res.returncode == 0, res.stderr
    results = json.loads(res.stdout)
    assert results == {port: "ok" for port in results} and len(results) == CLIENTS, results

    # Each connection was served by exactly one worker: the one the program steers it to.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        established = [e for e in stack.events("tcp.state") if e["new"] == "ESTABLISHED"]
        if len(established) >= CLIENTS:
            break
        time.sleep(0.05)
    served = {0: set(), 1: set()}
    for event in established:
        served[event["worker"]].add(_kernel_port(event))
    assert served[0] | served[1] == {int(p) for p in results} and not served[0] & served[1]
    assert len(served[0]) >= 5 and len(served[1]) >= 5, served
    for worker, ports in served.items():
        for port in ports:
            syn = _ipv4_tcp(HOST, port, 7)
            assert queue_for(syn, 2, EPHEMERAL) == worker, (worker, port)

    # SIGUSR1 reaches every worker: one table each.
    seen = len(stack.events("connections"))
    os.kill(stack.pid, signal.SIGUSR1)
    stack.wait_for("connections", after=seen + 1, timeout=5)
    tables = stack.events("connections")[seen:]
    assert sorted(t["worker"] for t in tables) == [0, 1]
    assert all(t["table"][0]["state"] == "LISTEN" for t in tables)

    _stop_and_check_nothing_left(netns, stack, pids)
    # One capture per worker, each with only its own connections.
    for worker in (0, 1):
        ports = {c.peer_port for c in tcp_segments(tmp_path / f"cap.{worker}.pcap")}
        assert ports == served[worker], worker


def test_active_opens_survive_silence_on_their_worker(netns: NetNS, tmp_path: Path) -> None:
    echo = netns.popen([sys.executable, "-c", KERNEL_ECHO, str(KERNEL_ECHO_PORT)],
                       stdout=subprocess.PIPE, text=True)
    assert echo.stdout.readline().strip() == "listening"
    per_worker = 4
    proc = ScriptProcess(netns, ACTIVE_SCRIPT,
                         [HOST, str(KERNEL_ECHO_PORT), str(per_worker), str(IDLE)],
                         tmp_path / "active.log")
    ready = proc.wait_for("service.ready", timeout=15)
    assert ready["steering"] == "ebpf"
    for worker in (0, 1):
        done = proc.wait_for("active.done", lambda e, w=worker: e.get("worker") == w,
                             timeout=IDLE + 20)
        assert done["answers"] == [True] * (2 * per_worker), done
        assert all(port % 2 == worker for port in done["ports"]), done
    assert not proc.events("worker.died")
    _stop_and_check_nothing_left(netns, proc, ready["pids"], service=False)


def test_a_dying_worker_is_reported_and_the_rest_stop(netns: NetNS, tmp_path: Path) -> None:
    stack = start_service(netns, tmp_path, "discard", "--workers", "2")
    pids = stack.events("service.ready")[0]["pids"]
    os.kill(pids[1], signal.SIGKILL)
    died = stack.wait_for("worker.died", timeout=5)
    assert died["pid"] == pids[1] and died["worker_index"] == 1 and died["exit"] == "signal 9"
    assert stack.wait(timeout=15) == 1
    assert not _alive(pids[0]) and not _link_exists(netns)


def test_uvloop_serves_or_says_how_to_install(netns: NetNS, tmp_path: Path) -> None:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        res = netns.run([sys.executable, "-m", "usertcp", "echo", "--loop", "uvloop"],
                        capture_output=True, text=True, timeout=30)
        assert res.returncode == cli.EXIT_USAGE
        assert res.stderr.strip().splitlines() == [
            "usertcp: error: --loop uvloop: uvloop is not installed; pip install usertcp[uvloop]"]
        assert not _link_exists(netns)
        return
    stack = start_service(netns, tmp_path, "echo", "--loop", "uvloop", "--workers", "2")
    res = netns.python(CLIENTS_SCRIPT, STACK, "8", capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert list(json.loads(res.stdout).values()) == ["ok"] * 8
    _stop_and_check_nothing_left(netns, stack, stack.events("service.ready")[0]["pids"])


# The CLI in a process of its own (its logging set-up stays out of pytest's); `uvloop` may be
# hidden from it, as if not installed.
CLI = """\
import sys
if sys.argv[1] == "hide-uvloop":
    sys.modules["uvloop"] = None  # import uvloop now raises ImportError
from usertcp.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("args, message", [
    (["hide-uvloop", "echo", "--loop", "uvloop"],
     "usertcp: error: --loop uvloop: uvloop is not installed; pip install usertcp[uvloop]"),
    (["-", "echo", "--workers", "0"], "argument --workers: must be from 1 to 64, got 0"),
    (["-", "http", "--workers", "2", "--trace"],
     ("usertcp: error: --trace draws one process's connections: not with --workers; "
     "use --pcap (one file per worker)")),
])
def test_bad_options_are_one_line(netns: NetNS, args: list[str], message: str) -> None:
    res = netns.python(CLI, *args, capture_output=True, text=True, timeout=30)
    assert res.returncode == cli.EXIT_USAGE
    assert res.stderr.strip().splitlines()[-1].endswith(message), res.stderr
    assert "Traceback" not in res.stderr and not _link_exists(netns)


def _ipv4_tcp(src: str, sport: int, dport: int) -> bytes:
    """A minimal IPv4 TCP header from `src`, enough for queue_for."""
    header = bytearray(40)
    header[0], header[9] = 0x45, 6
    header[12:16] = bytes(int(x) for x in src.split("."))
    header[20:24] = sport.to_bytes(2, "big") + dport.to_bytes(2, "big")
    return bytes(header)

