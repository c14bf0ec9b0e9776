"""IPv6 and dual stack with the kernel as the peer (issue 10): the handshake as captured on the TUN,
bulk echo of both families at once through one process, curl -6, nc -6 and a reset for a closed
port, ping -6 and fragmented pings of both families, `usertcp connect` to an IPv6 listener with a
half-close, path MTU discovery through a real kernel router, and the dual-stack CLI errors.
"""

from __future__ import annotations

import hashlib
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .netns import NetNS
from .stackproc import HOST, STACK, StackProcess, start_service
from .test_robust_loss import snapshot
from .test_stack_cli_errors import assert_one_line_error, usertcp
from .test_stack_http import curl
from .v6net import (
    ACK,
    CLIENT4,
    CLIENT6,
    DUAL,
    HOST6,
    RST,
    STACK6,
    SYN,
    Packet,
    TunCapture,
    routed_client,
    tcp_checksum_ok,
)

MB = 1024 * 1024

# Connect to [host]:7, send a line, read the echo to EOF; print the local port.
ECHO_ONCE = """\
import socket, sys
with socket.create_connection((sys.argv[1], 7), timeout=10) as s:
    assert s.family == socket.AF_INET6, s.family
    print(s.getsockname()[1], flush=True)
    s.sendall(b"hello over IPv6")
    s.shutdown(socket.SHUT_WR)
    got = b""
    while chunk := s.recv(100):
        got += chunk
    assert got == b"hello over IPv6", got
"""

# Connect, say so, wait for "go" on stdin; then send N random bytes from one thread while reading
# the echo in another. Prints the digests.
BULK = """\
import hashlib, json, os, socket, sys, threading
host, n = sys.argv[1], int(sys.argv[2])
data = os.urandom(n)
s = socket.create_connection((host, 7), timeout=30)
print(s.family.name, flush=True)
assert sys.stdin.readline() == "go\\n"
def send():
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
sender = threading.Thread(target=send)
sender.start()
h, got = hashlib.sha256(), 0
while chunk := s.recv(1 << 20):
    h.update(chunk)
    got += len(chunk)
sender.join()
s.close()
print(json.dumps({"sent": hashlib.sha256(data).hexdigest(), "received": h.hexdigest(),
                  "bytes": got}))
"""

# An IPv6 listener on [::]:PORT for one connection: read everything the stack sends up to its FIN,
# only then answer (into the half-closed connection), then close. Writes what it got to a file.
HALF_CLOSE_LISTENER = """\
import json, socket, sys
port, reply_path, got_path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
srv = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("::", port))
srv.listen(1)
srv.settimeout(20)
print("listening", flush=True)
conn, peer = srv.accept()
conn.settimeout(20)
got = bytearray()
while chunk := conn.recv(1 << 16):
    got += chunk
with open(reply_path, "rb") as f:
    conn.sendall(f.read())
conn.shutdown(socket.SHUT_WR)
conn.close()
with open(got_path, "wb") as f:
    f.write(got)
print(json.dumps({"peer": peer[0], "bytes": len(got)}), flush=True)
"""


def _read_line(proc: subprocess.Popen, timeout: float) -> str:
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise TimeoutError(f"{proc.args}: no output within {timeout} s")
    return proc.stdout.readline()


def host_addresses(ns: NetNS, family: str) -> list[dict]:
    """`ip -j addr show dev utcp0` of one family ("inet" / "inet6"), link-local left out."""
    res = ns.run(["ip", "-j", "addr", "show", "dev", "utcp0"], capture_output=True, text=True,
                 check=True)
    return [a for link in json.loads(res.stdout) for a in link.get("addr_info", [])
            if a["family"] == family and a.get("scope") != "link"]


# -- 1. the handshake, as the TUN carries it ------------------------------------------------------

@pytest.mark.parametrize("offload", [True, False], ids=["offload", "no-offload"])
def test_handshake_over_ipv6_on_the_tun(netns: NetNS, tmp_path: Path, offload: bool) -> None:
    # An IPv6 --address alone: the kernel side defaults to fd00:7::1/64, without DAD.
    stack = start_service(netns, tmp_path, "echo", "--address", STACK6,
                          *([] if offload else ["--no-offload"]))
    [host] = host_addresses(netns, "inet6")
    assert (host["local"], host["prefixlen"]) == (HOST6, 64), host
    assert host.get("nodad"), host

    with TunCapture(netns) as cap:
        res = netns.python(ECHO_ONCE, STACK6, capture_output=True, text=True, timeout=15)
        assert res.returncode == 0, res.stderr
        port = int(res.stdout)
        packets = cap.stop()
    assert stack.stop(signal.SIGINT) == 0, stack.text()

    conn = [p for p in packets if p.tcp and port in (p.tcp.sport, p.tcp.dport)]
    assert all(p.version == 6 for p in conn), conn
    syn, synack, ack = conn[:3]
    assert not syn.from_stack and syn.tcp.flags == SYN, conn[:3]
    assert (syn.src, syn.dst, syn.tcp.dport) == (HOST6, STACK6, 7)
    isn = syn.tcp.seq
    assert syn.tcp.options.get("mss") == 1440  # the kernel's own: MTU 1500 - 60

    assert synack.from_stack and synack.tcp.flags == SYN | ACK, conn[:3]
    assert (synack.src, synack.dst, synack.tcp.sport, synack.tcp.dport) == (STACK6, HOST6, 7, port)
    assert synack.tcp.ack == (isn + 1) % 2**32
    opts = synack.tcp.options
    assert opts.get("mss") is not None and opts["mss"] <= 1500 - 60, opts
    assert opts["mss"] == 1440, opts
    assert "wscale" in opts and opts.get("sack_perm"), opts
    assert "ts" in opts and opts["ts"][1] == syn.tcp.options["ts"][0], opts  # echoes TSval
    assert synack.hop_limit == 64, synack
    if not offload:  # with offload the checksum is left partial for the kernel to finish
        assert tcp_checksum_ok(synack), synack.raw.hex()

    assert not ack.from_stack and ack.tcp.flags & (SYN | ACK) == ACK, conn[:3]
    assert ack.tcp.seq == (isn + 1) % 2**32
    assert ack.tcp.ack == (synack.tcp.seq + 1) % 2**32
    assert sum(1 for p in conn if p.tcp.flags & SYN and not p.from_stack) == 1, conn
    assert not any(p.tcp.flags & RST for p in conn), conn


# -- 2. bulk echo of both families at once, one process ------------------------------------------

def test_ten_megabytes_echo_ipv6_and_ipv4_at_once(netns: NetNS, tmp_path: Path) -> None:
    stack = start_service(netns, tmp_path, "echo", *DUAL)
    netns.wait_port(STACK6, 7)
    netns.wait_port(STACK, 7)
    clients = [netns.popen([sys.executable, "-c", BULK, host, str(10 * MB)],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
               for host in (STACK6, STACK)]
    families = [_read_line(proc, 10).strip() for proc in clients]
    assert families == ["AF_INET6", "AF_INET"], families
    # One process holds both connections at once, each answering as the address dialled.
    rows = {(r["local"][0], r["remote"][0], r["state"]) for r in snapshot(stack)["table"]
            if r["conn_id"] is not None}
    assert rows == {(STACK6, HOST6, "ESTABLISHED"), (STACK, HOST, "ESTABLISHED")}, rows
    for proc in clients:  # both transfers go at once
        proc.stdin.write("go\n")
        proc.stdin.flush()
    for proc, family in zip(clients, families, strict=True):
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, (family, err)
        result = json.loads(out)
        assert result["bytes"] == 10 * MB, (family, result)
        assert result["received"] == result["sent"], (family, result)
    assert stack.stop(signal.SIGINT) == 0, stack.text()


# -- 3. curl -6 ----------------------------------------------------------------------------------

def test_curl_ipv6_downloads_twenty_megabytes(netns: NetNS, tmp_path: Path) -> None:
    root = tmp_path / "www"
    root.mkdir()
    data = os.urandom(20 * MB)
    (root / "file").write_bytes(data)
    stack = start_service(netns, tmp_path, "http", "--root", str(root), *DUAL)
    out = tmp_path / "download.bin"
    curl(netns, "-g", "-6", "-o", str(out), f"http://[{STACK6}]/file", timeout=30)
    assert out.stat().st_size == len(data)
    assert hashlib.sha256(out.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
    assert stack.stop(signal.SIGINT) == 0, stack.text()


# -- 4. nc -6, and a closed port -----------------------------------------------------------------

def test_nc_ipv6_echo_and_closed_port_refused(netns: NetNS, tmp_path: Path) -> None:
    stack = start_service(netns, tmp_path, "echo", *DUAL)
    res = netns.run(["nc", "-6", "-N", STACK6, "7"], input="hello via nc -6\n",
                    capture_output=True, text=True, timeout=15)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "hello via nc -6\n"

    before = snapshot(stack)["counters"]
    t0 = time.monotonic()
    res = netns.run(["nc", "-6", "-v", "-N", STACK6, "8"], stdin=subprocess.DEVNULL,
                    capture_output=True, text=True, timeout=15)
    elapsed = time.monotonic() - t0
    assert res.returncode == 1, (res.stdout, res.stderr)
    assert "refused" in res.stderr.lower(), res.stderr
    assert elapsed < 2.0, f"refused after {elapsed:.2f} s: not by a reset"  # no SYN retries
    after = snapshot(stack)["counters"]
    assert after.get("resets_sent", 0) > before.get("resets_sent", 0), (before, after)
    assert stack.stop(signal.SIGINT) == 0, stack.text()


# -- 5. ping -6, and fragmented pings of both families ------------------------------------------

def test_ping_ipv6_and_fragmented_pings(netns: NetNS, tmp_path: Path) -> None:
    stack = start_service(netns, tmp_path, "echo", *DUAL)
    for cmd in (["ping", "-6", "-c2", "-i", "0.2", "-W", "2", STACK6],
                # 4000 bytes over MTU 1500: the kernel sends three fragments, the stack
                # reassembles them and answers.
                ["ping", "-c2", "-i", "0.2", "-W", "2", "-s", "4000", STACK],
                ["ping", "-6", "-c2", "-i", "0.2", "-W", "2", "-s", "4000", STACK6]):
        res = netns.run(cmd, capture_output=True, text=True, timeout=15)
        if res.returncode != 0 or " 0% packet loss" not in res.stdout:
            snap = snapshot(stack)  # what the stack counted and dropped, for the diagnosis
            raise AssertionError(f"{cmd}: exit {res.returncode}\n{res.stdout}{res.stderr}"
                                 f"counters {snap['counters']}\ndrops {snap['drops']}")
    counters = snapshot(stack)["counters"]
    assert counters.get("icmp_echo_replies", 0) >= 6, counters
    assert counters.get("fragments", 0) >= 12, counters  # 4 pings of >= 3 fragments each
    assert stack.stop(signal.SIGINT) == 0, stack.text()


# -- 6. usertcp connect to an IPv6 kernel listener ----------------------------------------------

@pytest.mark.parametrize("extra", [["--address", STACK6], []], ids=["address-given", "bare"])
def test_connect_to_ipv6_listener_both_ways_half_close(netns: NetNS, tmp_path: Path,
                                                       extra: list[str]) -> None:
    # "bare": `usertcp connect fd00:7::1 PORT` as a user types it, the family from the literal.
    port = 5001
    to_kernel, to_stack = os.urandom(300_000), os.urandom(200_000)
    (tmp_path / "stack_in").write_bytes(to_kernel)
    (tmp_path / "reply").write_bytes(to_stack)
    listener = netns.popen([sys.executable, "-c", HALF_CLOSE_LISTENER, str(port),
                            str(tmp_path / "reply"), str(tmp_path / "got")],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert _read_line(listener, 10).strip() == "listening", listener.stderr.read()

    with open(tmp_path / "stack_in", "rb") as fin, open(tmp_path / "stack_out", "wb") as fout:
        stack = StackProcess(netns, ["connect", HOST6, str(port), *extra], tmp_path / "connect.log",
                             stdin=fin, stdout=fout)
    assert stack.wait(timeout=30) == 0, stack.text()
    out, err = listener.communicate(timeout=15)
    assert listener.returncode == 0, err
    result = json.loads(out)

    assert result["peer"] == STACK6, result  # the stack dialled from its IPv6 address
    assert (tmp_path / "got").read_bytes() == to_kernel
    assert (tmp_path / "stack_out").read_bytes() == to_stack
    states = [e["new"] for e in stack.events("tcp.state")]
    assert states[:2] == ["SYN-SENT", "ESTABLISHED"], states
    # The stack's FIN went first, and the reply arrived after it: received while half-closed.
    assert "FIN-WAIT-2" in states, states
    assert states.index("FIN-WAIT-1") < states.index("FIN-WAIT-2"), states
    assert "TIME-WAIT" in states or states[-1] == "CLOSED", states


# -- 7. path MTU through a real kernel router ----------------------------------------------------

def _check_path_mtu(packets: list[Packet], version: int, mtu: int, client: str) -> None:
    hdr = 40 if version == 6 else 20
    errors = [i for i, p in enumerate(packets) if p.version == version and not p.from_stack
              and p.icmp and p.icmp.mtu == mtu]
    assert errors, f"the router sent no ICMP error with MTU {mtu} into the TUN (IPv{version})"
    data = [(i, p) for i, p in enumerate(packets) if p.version == version and p.from_stack
            and p.tcp and p.dst == client and p.payload_len > 0]
    assert data, f"no data from the stack to {client}"
    if version == 4:
        assert all(p.df for _, p in data), [p for _, p in data if not p.df][:3]
    # The first error answered an oversized segment.
    assert any(p.segment_len > mtu for i, p in data if i < errors[0])
    # Once the stack sends segments sized for the new path MTU (full-sized: more than 40 bytes
    # below the largest that fits), it never again sends one too big for the path.
    fits = mtu - hdr - 20
    after = [p for i, p in data if i > errors[0]]
    resized = next((k for k, p in enumerate(after) if fits - 40 < p.segment_payload <= fits), None)
    assert resized is not None, [(p.segment_len, p.gso_size) for p in after[:20]]
    too_big = [p for p in after[resized:] if p.segment_len > mtu]
    assert not too_big, [(p.segment_len, p.gso_size, p.tcp.seq) for p in too_big[:10]]


def test_path_mtu_through_a_kernel_router(netns: NetNS, tmp_path: Path) -> None:
    root = tmp_path / "www"
    root.mkdir()
    data = os.urandom(2 * MB)
    (root / "two.bin").write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    with routed_client(netns) as client:
        # The stack runs in the router's namespace, its TUN at MTU 1500.
        stack = start_service(netns, tmp_path, "http", "--root", str(root), *DUAL)
        lowered = snapshot(stack)["counters"].get("pmtu_lowered", 0)
        with TunCapture(netns) as cap:
            for url, client_address in ((f"http://[{STACK6}]/two.bin", CLIENT6),
                                        (f"http://{STACK}/two.bin", CLIENT4)):
                out = tmp_path / "download.bin"
                t0 = time.monotonic()
                curl(client, "-g", "-o", str(out), url, timeout=20)
                elapsed = time.monotonic() - t0
                assert hashlib.sha256(out.read_bytes()).hexdigest() == digest, url
                out.unlink()
                assert elapsed < 5.0, f"{url}: {elapsed:.1f} s (a black hole until an RTO?)"
                now = snapshot(stack)["counters"].get("pmtu_lowered", 0)
                assert now >= lowered + 1, (url, lowered, now)
                lowered = now
                # The routed client's own address dialled, the stack answered it across the router.
                assert any(client_address in e["remote"] for e in stack.events("tcp.state")
                           if e["new"] == "ESTABLISHED"), client_address
            packets = cap.stop()
        assert stack.stop(signal.SIGINT) == 0, stack.text()
    _check_path_mtu(packets, 6, 1280, CLIENT6)
    _check_path_mtu(packets, 4, 1000, CLIENT4)


# -- 8. dual-stack command-line errors, and IPv6 off when not asked for ------------------------

@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--address", STACK6, "--mtu", "1200"], ["1280"]),
        (["--address", STACK, "--address", "10.7.0.3"], []),
    ],
    ids=["ipv6-mtu-below-1280", "two-ipv4-addresses"],
)
def test_dual_stack_cli_errors(netns: NetNS, args: list[str], fragments: list[str]) -> None:
    assert_one_line_error(usertcp(netns, "echo", *args), *fragments)
    links = netns.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True)
    assert [line.split(":")[1].strip() for line in links.stdout.splitlines()] == ["lo"]


def test_ipv4_only_leaves_ipv6_off_on_the_tun(netns: NetNS, tmp_path: Path) -> None:
    stack = start_service(netns, tmp_path, "echo")
    assert host_addresses(netns, "inet6") == []
    res = netns.run(["ip", "-j", "-6", "addr", "show", "dev", "utcp0"], capture_output=True,
                    text=True, check=True)
    assert not any(link.get("addr_info") for link in json.loads(res.stdout)), res.stdout
    assert [a["local"] for a in host_addresses(netns, "inet")] == ["10.7.0.1"]
    assert stack.stop(signal.SIGINT) == 0, stack.text()
