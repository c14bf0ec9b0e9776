"""The namespace fixture itself: isolation, process clean-up, wait_port, enter(), nft_loss, tools."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from . import netns as netns_mod
from .netns import NetNS

ECHO_SERVER = """\
import socket, sys
srv = socket.create_server(("127.0.0.1", int(sys.argv[1])))
while True:
    conn, _ = srv.accept()
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)
"""

ECHO_CLIENT = """\
import socket, sys
with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5) as s:
    s.sendall(sys.argv[2].encode())
    s.shutdown(socket.SHUT_WR)
    print(s.recv(65536).decode(), end="")
"""


IGNORES_SIGTERM = """\
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
time.sleep(600)
"""


def start_echo(ns: NetNS, port: int) -> subprocess.Popen[bytes]:
    proc = ns.popen([sys.executable, "-c", ECHO_SERVER, str(port)])
    ns.wait_port("127.0.0.1", port, timeout=10)
    return proc


def host_ip(*args: str) -> str:
    """Output of ``ip ARGS`` in this process's own namespace."""
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


def wait_inside(ns: NetNS, proc: subprocess.Popen[bytes]) -> None:
    """Until ``ip netns exec`` has entered the namespace (it then execs the command, same PID)."""
    deadline = time.monotonic() + 5
    while proc.pid not in ns.pids():
        assert time.monotonic() < deadline, f"{proc.args} never showed up in {ns.name}"
        time.sleep(0.02)


def test_marked_integration(request: pytest.FixtureRequest) -> None:
    assert request.node.get_closest_marker("integration") is not None


def test_private_namespace_has_only_loopback_up(netns: NetNS) -> None:
    assert netns_mod.exists(netns.name)
    out = netns.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    assert [line.split(":")[1].strip() for line in out.splitlines()] == ["lo"]
    assert "UP" in out.split("<", 1)[1].split(">", 1)[0].split(",")


def test_echo_server_in_namespace(netns: NetNS) -> None:
    start_echo(netns, 7007)
    res = netns.python(ECHO_CLIENT, "7007", "hello, namespace", capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "hello, namespace"


def test_servers_are_not_visible_from_another_namespace(netns: NetNS) -> None:
    start_echo(netns, 7008)
    with NetNS.create() as other:
        res = other.python(ECHO_CLIENT, "7008", "x", capture_output=True, text=True)
    assert res.returncode != 0
    assert "ConnectionRefusedError" in res.stderr


def test_close_deletes_namespace_and_ends_processes() -> None:
    ns = NetNS.create()
    name = ns.name
    sleeper = ns.popen(["sleep", "600"])
    assert netns_mod.exists(name)
    wait_inside(ns, sleeper)
    ns.close()
    assert not netns_mod.exists(name)
    assert name not in host_ip("netns", "list")
    assert sleeper.returncode == -15  # SIGTERM
    ns.close()  # a second close is harmless


def test_close_kills_a_process_that_ignores_sigterm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netns_mod, "STOP_TIMEOUT", 0.3)
    ns = NetNS.create()
    stubborn = ns.popen(
        [sys.executable, "-c", IGNORES_SIGTERM],
        stdout=subprocess.PIPE,
    )
    assert stubborn.stdout is not None and stubborn.stdout.readline() == b"ready\n"
    t0 = time.monotonic()
    ns.close()
    assert stubborn.returncode == -9  # SIGKILL
    assert time.monotonic() - t0 < 5
    assert not netns_mod.exists(ns.name)


INNER_CONFTEST = """\
import sys
sys.path.insert(0, {tests_dir!r})
from integration.conftest import _reap_stale_namespaces, netns  # noqa: F401  (under test)
"""

INNER_TEST = """\
def test_fails_inside_a_namespace(netns):
    open("name.txt", "w").write(netns.name)
    netns.popen(["sleep", "600"])
    assert False, "this test fails on purpose"
"""


def test_fixture_deletes_namespace_of_a_failing_test(tmp_path) -> None:
    tests_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    (tmp_path / "conftest.py").write_text(INNER_CONFTEST.format(tests_dir=tests_dir))
    (tmp_path / "test_inner.py").write_text(INNER_TEST)
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(tmp_path),
            "test_inner.py",
        ],
        check=False,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 1, res.stdout + res.stderr
    assert "this test fails on purpose" in res.stdout
    name = (tmp_path / "name.txt").read_text()
    assert name.startswith("utcp-")
    assert not netns_mod.exists(name)


def test_reap_stale_deletes_namespaces_of_dead_runs_only() -> None:
    # A namespace named after a process that has exited, with a process still inside it.
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = NetNS(f"utcp-{dead.pid}-0")
    subprocess.run(["ip", "netns", "add", stale.name], check=True)
    orphan = stale.popen(["sleep", "600"])
    wait_inside(stale, orphan)
    stale._procs.clear()  # as if the run that started it had been killed
    with NetNS.create() as live:
        reaped = netns_mod.reap_stale()
        assert stale.name in reaped
        assert live.name not in reaped
        assert netns_mod.exists(live.name)
    assert not netns_mod.exists(stale.name)
    assert orphan.wait(timeout=5) == -9


def test_wait_port_times_out_quickly(netns: NetNS) -> None:
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="127.0.0.1:7009"):
        netns.wait_port("127.0.0.1", 7009, timeout=0.3)
    assert time.monotonic() - t0 < 5


def test_enter_moves_this_thread_only_for_the_block(netns: NetNS) -> None:
    home = os.readlink("/proc/thread-self/ns/net")
    with netns.enter():
        assert os.readlink("/proc/thread-self/ns/net") != home
        srv = socket.create_server(("127.0.0.1", 0))
    assert os.readlink("/proc/thread-self/ns/net") == home
    with srv:
        port = srv.getsockname()[1]
        client = netns.popen(
            [sys.executable, "-c", ECHO_CLIENT, str(port), "ping"], stdout=subprocess.PIPE
        )
        srv.settimeout(10)
        conn, _ = srv.accept()
        with conn:
            assert conn.recv(100) == b"ping"
            conn.sendall(b"pong")
        assert client.communicate(timeout=10)[0] == b"pong"


def test_tun_device_can_be_made_inside(netns: NetNS) -> None:
    netns.run(["ip", "tuntap", "add", "dev", "utun0", "mode", "tun"], check=True)
    netns.run(["ip", "addr", "add", "10.99.0.1/24", "dev", "utun0"], check=True)
    netns.run(["ip", "link", "set", "utun0", "up"], check=True)
    out = netns.run(["ip", "-o", "addr", "show", "dev", "utun0"], capture_output=True, text=True)
    assert "10.99.0.1/24" in out.stdout
    assert "utun0" not in host_ip("-o", "link")


def test_nft_loss_drops_then_restores(netns: NetNS) -> None:
    start_echo(netns, 7010)
    netns.nft_loss("lo", 100)
    with pytest.raises(TimeoutError):
        netns.wait_port("127.0.0.1", 7010, timeout=0.5)
    netns.nft_loss("lo", 0)  # replaces the rules
    netns.wait_port("127.0.0.1", 7010, timeout=5)
    assert " drop" not in nft_ruleset(netns)
    netns.nft_loss("lo", 30)
    ruleset = nft_ruleset(netns)
    assert 'iifname "lo" numgen random mod 100 < 30 drop' in ruleset
    assert 'oifname "lo" numgen random mod 100 < 30 drop' in ruleset
    with pytest.raises(ValueError):
        netns.nft_loss("lo", 101)


UDP_COUNT = """\
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
for i in range(400):
    try:
        s.sendto(b"x", s.getsockname())
    except PermissionError:  # dropped by the output hook
        pass
s.settimeout(0.2)
n = 0
try:
    while True:
        s.recv(10)
        n += 1
except TimeoutError:
    print(n)
"""


def test_nft_loss_drops_about_the_given_share(netns: NetNS) -> None:
    netns.nft_loss("lo", 50)
    res = netns.python(UDP_COUNT, capture_output=True, text=True, check=True)
    # Each datagram crosses the output and the input hook: it survives with p = 0.25, so about
    # 100 of 400 arrive (standard deviation under 9).
    assert 50 <= int(res.stdout) <= 150, res.stdout


def nft_ruleset(ns: NetNS) -> str:
    return ns.run(
        ["nft", "list", "table", "inet", "usertcp_loss"], capture_output=True, text=True, check=True
    ).stdout


def test_command_line_tools_present() -> None:
    for tool in ("ip", "nc", "curl", "nft"):
        assert shutil.which(tool), f"{tool} is missing (scripts/test installs it as root)"


def test_curl_and_openbsd_nc_against_servers_inside(netns: NetNS, tmp_path) -> None:
    (tmp_path / "hello.txt").write_text("hello from http.server\n")
    netns.popen(
        [
            sys.executable,
            "-m",
            "http.server",
            "8000",
            "--bind",
            "127.0.0.1",
            "--directory",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    netns.wait_port("127.0.0.1", 8000)
    res = netns.run(
        ["curl", "-sS", "http://127.0.0.1:8000/hello.txt"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert res.stdout == "hello from http.server\n"

    start_echo(netns, 7011)
    # -N: shut down the sending side at EOF on stdin, so the echo server finishes and nc exits.
    res = netns.run(
        ["nc", "-N", "127.0.0.1", "7011"],
        input="via nc\n",
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout == "via nc\n"
