"""Device and address errors: one line `usertcp: error: ...` on stderr and exit status 2.

Each case runs in its own namespace, so a case that gets further than expected still touches nothing
outside it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .netns import NetNS
from .stackproc import start_service


def usertcp(ns: NetNS, *args: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return ns.run([*prefix, sys.executable, "-m", "usertcp", *args], stdin=subprocess.DEVNULL,
                  capture_output=True, text=True, timeout=30)


def assert_one_line_error(res: subprocess.CompletedProcess, *fragments: str) -> str:
    assert res.returncode == 2, (res.returncode, res.stderr)
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    line = lines[0]
    assert line.startswith("usertcp: error: "), line
    for fragment in fragments:
        assert fragment in line, line
    assert res.stdout == ""
    return line


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--tun", "a-name-far-too-long"], ["too long", "15 characters"]),
        (["--mtu", "20"], ["MTU 20", "68 to 65535"]),
        (["--mtu", "70000"], ["MTU 70000", "68 to 65535"]),
        (["--host-address", "10.7.0.1"], ["malformed address", "10.7.0.1/24"]),
        (["--host-address", "10.7.0.300/24"], ["malformed address"]),
        (["--address", "10.8.0.2"], ["10.8.0.2", "not inside", "10.7.0.0/24"]),
    ],
    ids=["tun-name-too-long", "mtu-too-small", "mtu-too-large", "host-address-no-prefix",
         "host-address-bad-octet", "address-outside-prefix"],
)
def test_bad_arguments(netns: NetNS, args: list[str], fragments: list[str]) -> None:
    assert_one_line_error(usertcp(netns, "echo", *args), *fragments)
    # Nothing was left behind: no TUN device in the namespace.
    links = netns.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True)
    assert [line.split(":")[1].strip() for line in links.stdout.splitlines()] == ["lo"]


def test_host_address_already_in_use(netns: NetNS, tmp_path: Path) -> None:
    first = start_service(netns, tmp_path, "echo", "--tun", "utcp0")
    res = usertcp(netns, "echo", "--tun", "utcp1", "--port", "9")
    assert_one_line_error(res, "10.7.0.1", "already in use", "utcp0")
    # The failed second stack removed its TUN; the first one still serves.
    links = netns.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True)
    assert "utcp1" not in links.stdout
    netns.wait_port("10.7.0.2", 7, timeout=5)
    assert first.stop() == 0, first.text()


@pytest.mark.parametrize(
    "prefix",
    [
        ("setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"),
        ("setpriv", "--inh-caps", "-all", "--bounding-set", "-net_admin"),
    ],
    ids=["nobody", "root-without-cap-net-admin"],
)
def test_not_privileged(netns: NetNS, prefix: tuple[str, ...]) -> None:
    res = usertcp(netns, "echo", prefix=prefix)
    assert_one_line_error(res, "permission denied", "CAP_NET_ADMIN")
