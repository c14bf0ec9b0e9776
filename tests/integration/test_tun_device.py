"""TunDevice and netlink configuration against the real kernel.

Each test runs this file as a script in a child process under `unshare --net`,
so every TUN device and address lives in a private network namespace that
disappears with the child; nothing touches the machine's own namespace. The
child refuses to run if its namespace is the parent's.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 5.0  # seconds any single wait inside a scenario may take

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create TUN devices and namespaces"),
    pytest.mark.skipif(not os.path.exists("/dev/net/tun"), reason="/dev/net/tun is missing"),
]


def run_scenario(name: str, *wrapper: str) -> dict:
    """Run scenario `name` in a fresh network namespace; return its JSON report."""
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is required to make a private network namespace")
    own_ns = os.readlink("/proc/self/ns/net")
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=pythonpath)
    cmd = ["unshare", "--net", *wrapper, sys.executable, __file__, name, own_ns]
    # On timeout subprocess.run kills the child; its namespace goes with it.
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=env, cwd=ROOT)
    assert proc.returncode == 0, f"scenario {name} failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_kernel_packets_reach_receive_batch():
    report = run_scenario("kernel_to_tun")
    assert report["mtu"] == 1400 and report["up"]
    assert report["addresses"] == [["10.9.0.1", 24]]
    assert report["udp_payload_seen"] and report["icmp_echo_seen"]


def test_send_batch_reaches_kernel_which_replies():
    report = run_scenario("tun_to_kernel")
    assert report["echo_reply_from"] == "10.9.0.1"


def test_error_paths():
    report = run_scenario("errors")
    assert report == {
        "busy": "name-taken",
        "not_tun": "name-taken",
        "no_prefix": "address-invalid",
        "bad_octet": "address-invalid",
        "in_use": "address-in-use",
        "no_such_link": "other",
        "too_long": "name-invalid",
        "bad_mtu": "mtu-invalid",
        "gone_after_close": True,
    }


def test_missing_cap_net_admin_is_a_permission_error():
    drop = ["setpriv", "--bounding-set", "-net_admin", "--inh-caps", "-net_admin"]
    if shutil.which("setpriv") is None:
        pytest.fail("setpriv (util-linux) is required to drop CAP_NET_ADMIN")
    report = run_scenario("permission", *drop)
    assert report["reason"] == "permission"
    assert "CAP_NET_ADMIN" in report["message"]
    assert "\n" not in report["message"]


# --- the child side: runs inside the private namespace -------------------


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _ipv4(src: str, dst: str, proto: int, payload: bytes) -> bytes:
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0, 64, proto, 0,
        socket.inet_aton(src), socket.inet_aton(dst),
    )
    header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
    return header + payload


def _icmp_echo(ident: int, seq: int, data: bytes, kind: int = 8) -> bytes:
    body = struct.pack("!BBHHH", kind, 0, 0, ident, seq) + data
    return body[:2] + struct.pack("!H", _checksum(body)) + body[4:]


def _wait_for(dev, match) -> bytes | None:
    deadline = time.monotonic() + TIMEOUT
    while (left := deadline - time.monotonic()) > 0:
        select.select([dev.fileno()], [], [], left)
        for packet in dev.receive_batch():
            if match(packet):
                return packet
    return None


def _src_dst(packet: bytes) -> tuple[str, str]:
    return socket.inet_ntoa(packet[12:16]), socket.inet_ntoa(packet[16:20])


def scenario_kernel_to_tun() -> dict:
    from pyroute2 import IPRoute

    from usertcp.phy import TunDevice, configure_host_side

    with TunDevice("utcptest0", mtu=1400) as dev:
        configure_host_side(dev.name, "10.9.0.1/24", 1400)
        # Ask netlink, not /sys: sysfs here still shows the parent's namespace.
        index = socket.if_nametoindex(dev.name)
        with IPRoute() as ipr:
            addrs = [
                [m.get_attr("IFA_LOCAL"), m["prefixlen"]]
                for m in ipr.get_addr(family=socket.AF_INET, index=index)
            ]
            link = ipr.get_links(index)[0]
            mtu, up = link.get_attr("IFLA_MTU"), bool(link["flags"] & 1)  # IFF_UP

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.sendto(b"hello tun", ("10.9.0.2", 9999))
        udp_seen = _wait_for(dev, lambda p: p[0] >> 4 == 4 and p[9] == socket.IPPROTO_UDP
                             and _src_dst(p) == ("10.9.0.1", "10.9.0.2")
                             and p.endswith(b"hello tun"))

        with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as raw:
            raw.sendto(_icmp_echo(0x1234, 1, b"ping"), ("10.9.0.2", 0))
        icmp_seen = _wait_for(dev, lambda p: p[9] == socket.IPPROTO_ICMP and p[20] == 8
                              and _src_dst(p) == ("10.9.0.1", "10.9.0.2"))
    return {
        "mtu": mtu,
        "up": up,
        "addresses": addrs,
        "udp_payload_seen": udp_seen is not None,
        "icmp_echo_seen": icmp_seen is not None,
    }


def scenario_tun_to_kernel() -> dict:
    import tempfile

    from usertcp.phy import FaultInjector, PcapWriter, TunDevice, configure_host_side, read_pcap

    tun = TunDevice("utcptest0")
    assert tun.receive_batch() == []  # non-blocking while nothing is queued
    configure_host_side(tun.name, "10.9.0.1/24", tun.mtu)
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/tun.pcap"
        # The composition the CLI uses, with faults that cannot drop anything.
        dev = PcapWriter(FaultInjector(tun, seed=7), path)
        try:
            request = _ipv4("10.9.0.2", "10.9.0.1", socket.IPPROTO_ICMP,
                            _icmp_echo(0x4242, 7, b"abc"))
            dev.send_batch([request])
            reply = _wait_for(dev, lambda p: p[9] == socket.IPPROTO_ICMP and p[20] == 0
                              and _src_dst(p) == ("10.9.0.1", "10.9.0.2"))
            assert reply is not None, "no echo reply from the kernel"
            assert reply[24:28] == struct.pack("!HH", 0x4242, 7) and reply.endswith(b"abc")
            assert tun.tx_dropped == 0
        finally:
            dev.close()
        captured = [p for _, p in read_pcap(path)]
    assert tun.fileno() is None
    assert captured[0] == request and reply in captured[1:]
    return {"echo_reply_from": _src_dst(reply)[0]}


def scenario_errors() -> dict:
    from usertcp.phy import DeviceError, TunDevice, configure_host_side

    def reason(fn) -> str:
        try:
            fn()
        except DeviceError as exc:
            assert "\n" not in str(exc) and str(exc), repr(exc)
            return exc.reason
        raise AssertionError(f"{fn} did not raise")

    out: dict = {}
    with TunDevice("utcptest0") as first:
        configure_host_side(first.name, "10.9.0.1/24", 1500)
        out["busy"] = reason(lambda: TunDevice("utcptest0"))
        out["not_tun"] = reason(lambda: TunDevice("lo"))
        out["no_prefix"] = reason(lambda: configure_host_side(first.name, "10.9.0.1", 1500))
        out["bad_octet"] = reason(lambda: configure_host_side(first.name, "10.9.0.300/24", 1500))
        with TunDevice("utcptest1") as second:
            out["in_use"] = reason(lambda: configure_host_side(second.name, "10.9.0.1/24", 1500))
        out["no_such_link"] = reason(
            lambda: configure_host_side("utcpnosuch0", "10.8.0.1/24", 1500)
        )
        out["too_long"] = reason(lambda: TunDevice("utcp-name-too-long"))
        out["bad_mtu"] = reason(lambda: TunDevice("utcptest2", mtu=67))
        # Configuring the address again on its own interface is fine.
        configure_host_side(first.name, "10.9.0.1/24", 1500)
    try:
        socket.if_nametoindex("utcptest0")
        out["gone_after_close"] = False
    except OSError:
        out["gone_after_close"] = True
    return out


def scenario_permission() -> dict:
    from usertcp.phy import DeviceError, TunDevice

    try:
        TunDevice("utcptest0").close()
    except DeviceError as exc:
        return {"reason": exc.reason, "message": str(exc)}
    raise AssertionError("TunDevice opened without CAP_NET_ADMIN")


def _child_main(name: str, parent_ns: str) -> None:
    if os.readlink("/proc/self/ns/net") == parent_ns:
        sys.exit("refusing to run: not in a private network namespace")
    print(json.dumps(globals()[f"scenario_{name}"]()))


if __name__ == "__main__":
    _child_main(sys.argv[1], sys.argv[2])
