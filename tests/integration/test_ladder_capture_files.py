"""Captures written by the real tcpdump read back by usertcp.ladder.capture.

Two namespaces joined by a veth pair: a kernel client in one sends 3 kB to a kernel server in the
other (over IPv4), and to a server in its own namespace over ::1 (IPv6 on loopback), while
tcpdump writes four files: the veth (Ethernet), `any` in its default link type (LINUX_SLL2 now)
with a small snapshot length and as LINUX_SLL, and `lo` with nanosecond timestamps. Each file must give exactly
the packets of the conversation: flags, sides, payload lengths, sequence numbers.

The conversation is made deterministic on purpose: the client sends 1000 bytes three times and
waits for each to be acknowledged (SIOCOUTQ drops to 0), and the server closes 0.3 s after the
client's FIN, so its delayed ACK of that FIN (at most 200 ms) goes out alone before its own FIN.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

from usertcp.ladder.capture import read_capture, tcp_packets
from usertcp.ladder.conversations import split
from usertcp.wire.tcp import ACK, FIN, PSH, SYN

from .netns import NetNS

V4_PORT, V6_PORT = 5001, 5002
CLIENT4, SERVER4 = "10.77.0.1", "10.77.0.2"

SERVER = """\
import socket, sys, time
host, port = sys.argv[1], int(sys.argv[2])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
with socket.socket(family) as listener:
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(1)
    listener.settimeout(10)
    print("ready", flush=True)
    conn, _ = listener.accept()
    conn.settimeout(10)
    got = 0
    while chunk := conn.recv(65536):
        got += len(chunk)
    time.sleep(0.3)  # the delayed ACK of the client's FIN goes out first, alone
    conn.close()
    print(got, flush=True)
"""

CLIENT = """\
import fcntl, socket, struct, sys, termios, time
conn = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
for letter in b"ABC":
    conn.sendall(bytes([letter]) * 1000)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # until all of it is acknowledged
        if struct.unpack("i", fcntl.ioctl(conn, termios.TIOCOUTQ, bytes(4)))[0] == 0:
            break
        time.sleep(0.002)
    else:
        sys.exit("data not acknowledged within 5 s")
conn.close()
"""

# (sender, flags, payload length): C the client, S the server
EXPECTED = [("C", SYN, 0), ("S", SYN | ACK, 0), ("C", ACK, 0)]
for _ in range(3):
    EXPECTED += [("C", PSH | ACK, 1000), ("S", ACK, 0)]
EXPECTED += [("C", FIN | ACK, 0), ("S", ACK, 0), ("S", FIN | ACK, 0), ("C", ACK, 0)]


def read_until(stream, needle: bytes, timeout: float) -> bytes:
    """What `stream` (a pipe) gave until `needle` appeared; TimeoutError after `timeout` s."""
    seen = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(stream, selectors.EVENT_READ)
        while needle not in seen:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                raise TimeoutError(f"no {needle!r} within {timeout} s; got {seen!r}")
            chunk = os.read(stream.fileno(), 4096)
            if not chunk:
                raise EOFError(f"closed before {needle!r}; got {seen!r}")
            seen += chunk
    return seen


def start_tcpdump(ns: NetNS, path: Path, *args: str) -> subprocess.Popen:
    proc = ns.popen(["tcpdump", "-U", "-n", "-Z", "root", "-w", path, *args],
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    read_until(proc.stderr, b"listening on", timeout=10)
    return proc


def stop_tcpdump(proc: subprocess.Popen) -> str:
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=5)
    assert proc.returncode == 0, err
    return err.decode(errors="replace")


def converse(server_ns: NetNS, client_ns: NetNS, host: str, port: int) -> None:
    server = server_ns.popen([sys.executable, "-c", SERVER, host, str(port)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    read_until(server.stdout, b"ready", timeout=10)
    client_ns.python(CLIENT, host, str(port), check=True, timeout=20)
    out, err = server.communicate(timeout=10)
    assert server.returncode == 0, err
    assert out.split()[-1] == b"3000"


def wait_for_packets(path: Path, count: int, timeout: float = 5.0) -> None:
    """Until the file (being written) holds `count` TCP packets: the last ACK may still be due."""
    deadline = time.monotonic() + timeout
    while len(read_capture(path).packets) < count and time.monotonic() < deadline:
        time.sleep(0.02)


def check_conversation(path: Path, client: tuple[str, int], started: float, *,
                       snapped: int | None = None) -> set[int]:
    capture = read_capture(path)
    assert capture.skipped == {}, capture.skipped_text()
    packets = tcp_packets(capture)
    got = [("C" if p.source == client else "S", p.flags, p.length) for p in packets]
    assert got == EXPECTED
    assert [p.number for p in packets] == list(range(1, len(EXPECTED) + 1))
    times = [p.time for p in packets]
    assert times == sorted(times) and started <= times[0] and times[-1] <= time.time()

    syn, syn_ack = packets[0], packets[1]
    assert syn.sack_permitted and syn.ts_val is not None and syn.wscale is not None
    assert syn_ack.sack_permitted and syn_ack.ts_ecr == syn.ts_val and syn_ack.ack == syn.seq + 1
    header = (20 if syn.ip_version == 4 else 40) + 32  # TCP with timestamps after the SYNs
    data = [p for p in packets if p.length]
    assert [p.seq - syn.seq for p in data] == [1, 1001, 2001]
    assert [p.size for p in data] == [header + 1000] * 3
    assert [p.payload for p in data] == [
        letter * (snapped if snapped is not None else 1000) for letter in (b"A", b"B", b"C")]
    acks = [p.ack - syn.seq for p in packets if p.source != client and p.flags == ACK]
    assert acks == [1001, 2001, 3001, 3002]

    [conn] = split(packets)
    assert (conn.endpoints[0], conn.syn_seen, conn.bytes, conn.state()) == (
        client, True, [3000, 0], "closed")
    return capture.link_types


def test_tcpdump_captures_of_every_kind_read_back(netns: NetNS, tmp_path: Path):
    server_ns = NetNS.create()
    procs: list[subprocess.Popen] = []
    try:
        netns.run(["ip", "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns",
                   server_ns.name], check=True, capture_output=True)
        netns.run(["ip", "addr", "add", f"{CLIENT4}/24", "dev", "va"], check=True)
        netns.run(["ip", "link", "set", "va", "up"], check=True)
        server_ns.run(["ip", "addr", "add", f"{SERVER4}/24", "dev", "vb"], check=True)
        server_ns.run(["ip", "link", "set", "vb", "up"], check=True)

        files = {name: tmp_path / f"{name}.pcap" for name in ("veth", "any", "sll", "lo")}
        v4, v6 = f"tcp port {V4_PORT}", f"tcp port {V6_PORT}"
        procs = [
            start_tcpdump(netns, files["veth"], "-i", "va", v4),
            start_tcpdump(netns, files["any"], "-i", "any", "-s", "100", v4),
            start_tcpdump(netns, files["sll"], "-i", "any", "-y", "LINUX_SLL", v4),
            start_tcpdump(netns, files["lo"], "-i", "lo", "--time-stamp-precision=nano", v6),
        ]
        started = time.time()
        converse(server_ns, netns, SERVER4, V4_PORT)
        converse(netns, netns, "::1", V6_PORT)
        for path in files.values():
            wait_for_packets(path, len(EXPECTED))
        for proc in procs:
            stop_tcpdump(proc)
    finally:
        server_ns.close()

    def client_of(path: Path) -> tuple[str, int]:
        first = tcp_packets(read_capture(path))[0]
        return first.source  # the SYN's sender, whatever port it was given

    veth = check_conversation(files["veth"], client_of(files["veth"]), started)
    assert veth == {1} and client_of(files["veth"])[0] == CLIENT4
    # `any` is LINUX_SLL2 (20-byte header) in tcpdump 4.99 with libpcap 1.10, LINUX_SLL (16)
    # before; 100 bytes of it and of IPv4 (20) and TCP (32) leave the rest of each payload
    [cooked] = read_capture(files["any"]).link_types
    assert cooked in (113, 276)
    check_conversation(files["any"], client_of(files["any"]), started,
                       snapped=100 - (20 if cooked == 276 else 16) - 20 - 32)
    sll = check_conversation(files["sll"], client_of(files["sll"]), started)
    assert sll == {113}
    loopback = check_conversation(files["lo"], client_of(files["lo"]), started)
    assert loopback == {1} and client_of(files["lo"])[0] == "::1"
    assert read_capture(files["lo"]).format == "pcap"
    assert files["lo"].read_bytes()[:4] == bytes.fromhex("4d3cb2a1")  # nanosecond magic
