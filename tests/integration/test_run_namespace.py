"""`usertcp run`'s namespace launcher (usertcp.run.namespace), as root and rootless.

A driver script calls `spawn` inside a test namespace (so the sandbox's own namespace is nested
in it) and prints what it saw as one JSON line. The rootless runs go through `setpriv` to nobody
inside `unshare -m`, where a 0666 (or 0600) TUN node is bind-mounted over /dev/net/tun.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import usertcp
from usertcp.phy import vnet
from usertcp.phy.errors import InvalidAddress, InvalidMTU, InvalidName
from usertcp.run import _child
from usertcp.run.namespace import SandboxError, spawn

from .netns import NetNS

NOBODY = "65534"
DRIVER_TIMEOUT = 90

DRIVER = r'''
import asyncio, json, os, select, socket, sys, tempfile, time
from usertcp.run.namespace import ExecFailed, SandboxError, spawn

ICMP_ECHO = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
s.sendto(bytes([8, 0, 0, 0, 0, 0, 0, 1]) + b"usertcp", ("10.0.2.2", 0))
"""


def netns_users(ino):
    """Processes still in the network namespace with inode `ino` (readable ones)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{pid}/ns/net").st_ino == ino:
                found.append(int(pid))
        except OSError:
            pass
    return found


def run(command, *, terminate=False, ping=False):
    out = tempfile.TemporaryFile()
    saved = os.dup(1)
    os.dup2(out.fileno(), 1)  # the program's stdout, apart from ours
    try:
        sandbox = spawn(command)
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    result = {"exec_error": None, "echo_seen": None, "non_ipv4": 0}
    with sandbox:
        result["warnings"] = sandbox.warnings
        ino = os.stat(f"/proc/{sandbox.pid}/ns/net").st_ino
        result["own_netns"] = ino != os.stat("/proc/self/ns/net").st_ino
        try:
            sandbox.start()
        except ExecFailed as exc:
            result["exec_error"] = [str(exc), exc.status]
        if terminate:
            sandbox.send_signal(15)
        if ping:
            result["echo_seen"] = False
            device = sandbox.device
            deadline = time.monotonic() + 5
            while not result["echo_seen"] and time.monotonic() < deadline:
                select.select([device.fileno()], [], [], 0.2)
                for packet in device.receive_batch():
                    if packet[0] >> 4 != 4:
                        result["non_ipv4"] += 1
                    elif packet[9] == 1 and bytes(packet[16:20]) == socket.inet_aton("10.0.2.2"):
                        result["echo_seen"] = packet[20] == 8  # an echo request
        result["status"] = asyncio.run(asyncio.wait_for(sandbox.wait(), 30))
    result["pid_gone"] = not os.path.exists(f"/proc/{sandbox.pid}")
    result["netns_users"] = netns_users(ino)
    out.seek(0)
    result["out"] = out.read().decode()
    return result


def main(scenario):
    with open("/etc/resolv.conf") as f:
        resolv_before = f.read()
    report = {}
    if scenario == "all":
        report["info"] = run(["sh", "-c", "ip -o addr; ip route; ip -6 route; ip -o link; "
                                          "ls /sys/class/net; cat /etc/resolv.conf; "
                                          "cat /proc/sys/net/ipv4/ping_group_range"])
        report["ping"] = run([sys.executable, "-c", ICMP_ECHO], ping=True)
        report["true"] = run(["true"])
        report["exit3"] = run(["sh", "-c", "exit 3"])
        report["missing"] = run(["usertcp-no-such-command"])
        report["not_exec"] = run(["/etc/passwd"])
        report["sigterm"] = run(["sleep", "30"], terminate=True)
    elif scenario == "error":
        options = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
        try:
            spawn(["true"], **options).close()
            report["error"] = None
        except SandboxError as exc:
            report["error"] = str(exc)
    elif scenario == "orphan":
        sandbox = spawn(["sleep", "30"])
        print("RESULT " + json.dumps({"pid": sandbox.pid}), flush=True)
        os._exit(0)  # no close(): the helper must not outlive us
    with open("/etc/resolv.conf") as f:
        report["resolv_unchanged"] = f.read() == resolv_before
    report["tmp_left"] = os.listdir(tempfile.gettempdir())
    print("RESULT " + json.dumps(report), flush=True)


main(sys.argv[1])
'''

# Mounts a tmpfs (not nodev, unlike many /tmp) in the private mount namespace of `unshare -m`,
# makes the TUN node there with mode $1, puts it over /dev/net/tun and runs the rest as nobody.
ROOTLESS = r"""
set -e
mode=$1 dev=$2; shift 2
mount -t tmpfs -o mode=0755 usertcp-test "$dev"
mknod -m "$mode" "$dev/tun" c 10 200
mount --bind "$dev/tun" /dev/net/tun
exec setpriv --reuid NOBODY --regid NOBODY --clear-groups "$@"
""".replace("NOBODY", NOBODY)


def _result(proc: subprocess.CompletedProcess[str]) -> dict:
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"driver failed (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return json.loads(lines[-1][len("RESULT "):])


class Workspace:
    """A world-readable folder: the driver, a copy of the packages it imports, its own TMPDIR."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.lib = root / "lib"
        self.tmp = root / "tmp"
        self.dev = root / "dev"
        self.driver = root / "driver.py"
        for folder in (self.lib, self.tmp, self.dev):
            folder.mkdir()
        self.tmp.chmod(0o1777)
        self.driver.write_text(DRIVER)
        import pyroute2
        import pytun_pmd3
        import structlog

        for module in (usertcp, pyroute2, pytun_pmd3, structlog):
            source = Path(module.__file__).parent
            shutil.copytree(
                source, self.lib / source.name, ignore=shutil.ignore_patterns("__pycache__")
            )
        for path in [root, *root.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o055 if path.is_dir() else 0o644)
        self.tmp.chmod(0o1777)

    def env(self) -> dict[str, str]:
        return {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "PYTHONPATH": str(self.lib),
            "TMPDIR": str(self.tmp),
            "HOME": "/",
        }


@pytest.fixture
def workspace() -> Iterator[Workspace]:
    root = Path(tempfile.mkdtemp(prefix="usertcp-run-test-"))
    try:
        root.chmod(0o755)
        yield Workspace(root)
    finally:
        shutil.rmtree(root)


def _python_for_nobody(ws: Workspace) -> str:
    """The first Python >= 3.11 that nobody can run with the copied packages."""
    # The venv's may sit under an unreadable /root: then the system's, with the copied packages.
    candidates = [sys.executable, "/usr/local/bin/python3", "/usr/bin/python3"]
    probe = "import sys, usertcp.run.namespace; assert sys.version_info >= (3, 11)"
    for python in filter(None, candidates):
        res = subprocess.run(
            ["setpriv", "--reuid", NOBODY, "--regid", NOBODY, "--clear-groups", "env", "-i",
             *(f"{k}={v}" for k, v in ws.env().items()), python, "-c", probe],
            check=False, capture_output=True, timeout=60,
        )
        if res.returncode == 0:
            return python
    pytest.skip(f"no Python >= 3.11 usable by uid {NOBODY} among {candidates}")


def _run_root(
    ns: NetNS, ws: Workspace, scenario: str, *args: str
) -> subprocess.CompletedProcess[str]:
    return ns.run(
        [sys.executable, ws.driver, scenario, *args],
        env={**os.environ, "PYTHONPATH": str(ws.lib), "TMPDIR": str(ws.tmp)},
        capture_output=True, text=True, timeout=DRIVER_TIMEOUT,
    )


def _run_rootless(
    ns: NetNS, ws: Workspace, scenario: str, mode: str = "0666"
) -> subprocess.CompletedProcess[str]:
    python = _python_for_nobody(ws)
    return ns.run(
        ["unshare", "-m", "sh", "-c", ROOTLESS, "sh", mode, ws.dev,
         "env", "-i", *(f"{k}={v}" for k, v in ws.env().items()), python, ws.driver, scenario],
        capture_output=True, text=True, timeout=DRIVER_TIMEOUT,
    )


def _check_all(report: dict, gid_range: str) -> None:
    info = report["info"]
    assert info["status"] == 0 and info["own_netns"], info
    out = info["out"]
    links = sorted(line.split(":")[1].strip() for line in out.splitlines() if " link/" in line)
    assert links == ["lo", "tun0"], out
    assert "tun0    inet 10.0.2.100/24 " in out, out
    assert "default via 10.0.2.2 dev tun0" in out, out
    assert "tun0    inet6 fd00::100/64 scope global nodad" in out, out
    assert "default via fd00::2 dev tun0" in out, out
    assert "mtu 65520 " in next(line for line in out.splitlines() if ": tun0: " in line), out
    assert "\nlo\ntun0\n" in out, out  # /sys/class/net of the new namespace
    assert "\nnameserver 10.0.2.3\n" in out, out
    assert out.rstrip().endswith(gid_range), out
    assert report["resolv_unchanged"]

    # IPv6 is on, yet the kernel sends nothing unasked (no router solicitation, no MLD).
    ping = report["ping"]
    assert ping["status"] == 0 and ping["echo_seen"] and ping["non_ipv4"] == 0, ping

    assert report["true"]["status"] == 0
    assert report["exit3"]["status"] == 3
    missing = report["missing"]
    assert missing["status"] == 127, missing
    assert missing["exec_error"] == ["usertcp: run: usertcp-no-such-command: not found", 127]
    not_exec = report["not_exec"]
    assert not_exec["status"] == 126 and not_exec["exec_error"][1] == 126, not_exec
    assert report["sigterm"]["status"] == 128 + 15

    for name in ("info", "ping", "true", "exit3", "missing", "not_exec", "sigterm"):
        case = report[name]
        assert case["pid_gone"] and case["netns_users"] == [], (name, case)
        assert case["warnings"] == [], (name, case)
    assert report["tmp_left"] == []  # the resolv.conf file was removed


def test_as_root(netns: NetNS, workspace: Workspace) -> None:
    _check_all(_result(_run_root(netns, workspace, "all")), "0\t2147483647")


def test_rootless(netns: NetNS, workspace: Workspace) -> None:
    report = _result(_run_rootless(netns, workspace, "all"))
    _check_all(report, f"{NOBODY}\t{NOBODY}")


def test_rootless_tun_not_accessible(netns: NetNS, workspace: Workspace) -> None:
    report = _result(_run_rootless(netns, workspace, "error", mode="0600"))
    error = report["error"]
    assert error and "\n" not in error, report
    assert error.startswith("/dev/net/tun is not accessible to nobody (mode 0600"), error
    assert report["tmp_left"] == [] and report["resolv_unchanged"]


def test_netlink_error_is_one_line(netns: NetNS, workspace: Workspace) -> None:
    report = _result(_run_root(netns, workspace, "error", json.dumps({"gateway": "10.9.9.9"})))
    assert report["error"] == (
        "cannot configure 'tun0' in the new namespace (default route via 10.9.9.9): "
        "Network is unreachable"
    ), report
    assert report["tmp_left"] == []


@pytest.mark.parametrize("rootless", [False, True], ids=["root", "rootless"])
def test_helper_dies_with_its_parent(
    netns: NetNS, workspace: Workspace, rootless: bool
) -> None:
    run = _run_rootless if rootless else _run_root
    pid = _result(run(netns, workspace, "orphan"))["pid"]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            break
        if state == "Z":  # dead; whoever adopted it has not reaped it yet
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"the helper {pid} outlived the process that spawned it")
    assert list(workspace.tmp.iterdir()) == []


def test_arguments_are_checked_before_anything_starts() -> None:
    with pytest.raises(SandboxError, match="no command"):
        spawn([])
    with pytest.raises(InvalidName):
        spawn(["true"], ifname="x" * 20)
    with pytest.raises(InvalidMTU):
        spawn(["true"], mtu=70000)
    with pytest.raises(InvalidAddress):
        spawn(["true"], address="10.0.2.100")
    with pytest.raises(InvalidAddress):
        spawn(["true"], gateway="10.0.2")
    with pytest.raises(InvalidAddress):
        spawn(["true"], address6="fd00::100")  # no prefix length
    with pytest.raises(InvalidAddress):
        spawn(["true"], gateway6="10.0.2.2")


def test_helper_constants_match_the_device() -> None:
    assert (_child.TUNSETOFFLOAD, _child.TUN_F_CSUM, _child.TUN_F_TSO4) == (
        vnet.TUNSETOFFLOAD, vnet.TUN_F_CSUM, vnet.TUN_F_TSO4)
    from usertcp.phy import netlink

    assert _child.TX_QUEUE_LEN == netlink.TX_QUEUE_LEN


@pytest.mark.parametrize(
    ("sysctl", "value"),
    [("kernel/unprivileged_userns_clone", 0), ("user/max_user_namespaces", 0)],
)
def test_disabled_user_namespaces_are_named(
    monkeypatch: pytest.MonkeyPatch, sysctl: str, value: int
) -> None:
    monkeypatch.setattr(_child, "_read_int", lambda path: value if path.endswith(sysctl) else None)
    monkeypatch.setattr(_child, "_libc", None)  # unshare must not even be tried
    with pytest.raises(_child.SetupError) as caught:
        _child._unshare(rootless=True)
    assert str(caught.value).startswith("unprivileged user namespaces are disabled on this "
                                        f"machine ({sysctl.split('/')[0]}.")


@pytest.mark.parametrize(("code", "text"), [
    (1, "unprivileged user namespaces are not allowed here"),
    (28, "the limit user.max_user_namespaces is reached"),
])
def test_refused_user_namespaces_are_named(
    monkeypatch: pytest.MonkeyPatch, code: int, text: str
) -> None:
    import ctypes

    class RefusingLibc:
        def unshare(self, flags: int) -> int:
            ctypes.set_errno(code)
            return -1

    monkeypatch.setattr(_child, "_read_int", lambda path: None)
    monkeypatch.setattr(_child, "_libc", RefusingLibc())
    with pytest.raises(_child.SetupError, match=text):
        _child._unshare(rootless=True)
