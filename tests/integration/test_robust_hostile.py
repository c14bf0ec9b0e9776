"""Hostile input through the TUN device while a connection is busy: nothing gets in, every drop is named.

Packets are injected from inside the test's namespace with an AF_PACKET socket bound to the TUN
interface: what is sent on a TUN interface's packet socket is handed to the TUN reader, so the
stack sees exactly these bytes. The test process moves into the namespace (`netns.enter()`) to
open its sockets, so the kernel client of the echo transfer, the injector and the checks all run
here, in one process.

- 5,000 bad packets while an echo transfer runs: 2,000 of random bytes (every one dropped, so the
  drops grow by exactly 2,000), then 3,000 made to be wrong in one named way each (the drops grow
  by the exact count for each reason). Both device paths: with offload the TUN device verifies
  TCP checksums of packets that carry no virtio-net flags (the driver counts them under
  `bad-tcp-checksum`, the reason the engine uses), without it the engine verifies them.
- RFC 5961 blind attacks against a live connection, its sequence numbers read from the stack's
  SIGUSR1 table: out-of-window RSTs ignored (nothing sent back), an in-window RST and an in-window
  SYN answered by a challenge ACK (counted, and seen on the wire with SEQ=SND.NXT, ACK=RCV.NXT),
  a flood of in-window RSTs rate limited, data outside the window and data with an ACK of unsent
  data dropped. The connection survives and its data is intact. The kernel client offers no
  timestamps here, so these checks are met without PAWS' help.

In the 5,000, packets carry TCP checksums that are right over their bytes as they are (the way
the device and the engine sum them), unless a bad checksum is the point, so each one is dropped
for the one reason it was made for. A separate test sends fragments and bad header lengths as
they come (a fragment's checksum is right only for the whole segment): they must be named
`fragment` and `bad-ihl` on both device paths, not `bad-tcp-checksum` by a device that
verified a checksum it could not.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import signal
import socket
import struct
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from .netns import NetNS
from .stackproc import HOST, STACK, StackProcess, start_service

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
TUN = "utcp0"
SRC = socket.inet_aton(HOST)
DST = socket.inet_aton(STACK)
CHALLENGE_ACK_LIMIT = 1000  # TcpConfig.challenge_ack_limit: challenge ACKs per second, stack-wide

SYN, RST, ACK, FIN, PSH = 0x02, 0x04, 0x10, 0x01, 0x08
SOL_PACKET, PACKET_STATISTICS, SO_RCVBUFFORCE = 263, 6, 33


# ------------------------------------------------------------------------------------------------
# Packet building (independent of usertcp.wire: plain struct and a word sum)


def _sum16(data: bytes) -> int:
    if len(data) & 1:
        data = data + b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _ip_header(src: bytes, dst: bytes, proto: int, total: int, *, ihl: int = 5, version: int = 4,
               frag: int = 0x4000, ident: int = 0, options: bytes = b"") -> bytearray:
    hdr = bytearray(struct.pack("!BBHHHBBH4s4s", (version << 4) | ihl, 0, total, ident, frag, 64,
                                proto, 0, src, dst) + options)
    hdr[10:12] = struct.pack("!H", 0xFFFF - _sum16(bytes(hdr)))
    return hdr


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _tcp_header(sport: int, dport: int, seq: int, ack: int, flags: int, *, doff: int = 5,
                window: int = 65535, options: bytes = b"") -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, doff << 4,
                       flags, window, 0, 0) + options


def fix_tcp_checksum(packet: bytearray, pos: int | None = None) -> bytearray:
    """Make the TCP checksum over packet[ihl:total] right by setting the 2 bytes at `pos`.

    `pos` defaults to the checksum field, or the last 2 bytes of a TCP part too short to have one.
    The pseudo-header takes the addresses and the length as the packet states them.
    """
    ihl = (packet[0] & 15) * 4
    total = struct.unpack_from("!H", packet, 2)[0]
    if pos is None:
        pos = ihl + 16 if total - ihl >= 18 else ihl + ((total - ihl - 2) & ~1)
    assert ihl <= pos and pos + 2 <= total <= len(packet), (ihl, pos, total, len(packet))
    packet[pos:pos + 2] = b"\0\0"
    pseudo = packet[12:20] + struct.pack("!HH", 6, total - ihl)
    folded = _sum16(bytes(pseudo) + bytes(packet[ihl:total]))
    packet[pos:pos + 2] = struct.pack("!H", 0xFFFF - folded)
    return packet


def tcp_packet(sport: int, dport: int, seq: int, ack: int, flags: int, payload: bytes = b"", *,
               src: bytes = SRC, dst: bytes = DST, window: int = 65535, frag: int = 0x4000,
               doff: int = 5, options: bytes = b"") -> bytearray:
    tcp = _tcp_header(sport, dport, seq, ack, flags, doff=doff, window=window, options=options)
    packet = _ip_header(src, dst, 6, 20 + len(tcp) + len(payload), frag=frag) + tcp + payload
    return fix_tcp_checksum(packet)


def _flip_tcp_checksum(packet: bytearray) -> bytearray:
    ihl = (packet[0] & 15) * 4
    packet[ihl + 16] ^= 0x5A
    return packet


def crafted_packets(rng: random.Random, conn_port: int) -> tuple[list[tuple[int, bytes]], Counter]:
    """3,000 packets, each wrong in one way: [(ethertype, bytes)] and the drops they must cause."""
    out: list[tuple[int, bytes]] = []
    expect: Counter = Counter()

    def add(reason: str, packet, ethertype: int = ETH_P_IP) -> None:
        out.append((ethertype, bytes(packet)))
        expect[reason] += 1

    def port() -> int:
        return rng.randrange(1024, 65536)

    def u32() -> int:
        return rng.getrandbits(32)

    for _ in range(200):  # a single byte
        add("truncated", bytes([rng.randrange(256)]))
    for _ in range(200):  # shorter than an IPv4 header
        add("truncated", b"\x45" + rng.randbytes(rng.randrange(1, 19)))
    for _ in range(150):  # IPv6, on its own ethertype, to an address this IPv4 stack lacks
        src, dst = b"\xfd" + bytes(14) + b"\x01", b"\xfd" + bytes(14) + b"\x02"
        payload = bytearray(_tcp_header(port(), 7, u32(), u32(), SYN))
        pseudo = src + dst + struct.pack("!IxxxB", len(payload), 6)
        payload[16:18] = struct.pack("!H", _checksum(pseudo + bytes(payload)))
        v6 = struct.pack("!IHBB16s16s", 6 << 28, len(payload), 6, 64, src, dst)
        add("not-for-us", v6 + bytes(payload), ETH_P_IPV6)
    for _ in range(100):  # IPv4 layout, another version number
        packet = tcp_packet(port(), 7, u32(), 0, SYN)
        packet[0] = (rng.choice([0, 1, 2, 3, 5, 7, 8, 9, 10, 11, 12, 13, 14, 15]) << 4) | 5
        add("not-ipv4", packet)
    for _ in range(100):  # header length below 20 bytes
        packet = tcp_packet(port(), 7, u32(), 0, SYN)
        packet[0] = 0x40 | rng.randrange(0, 5)
        add("bad-ihl", fix_tcp_checksum(packet, 36))  # right as the device would sum it
    for _ in range(100):  # header length past the end of the packet
        packet = tcp_packet(port(), 7, u32(), 0, SYN)
        packet[0] = 0x40 | rng.randrange(11, 16)  # 44..60 bytes of a 40-byte packet
        add("bad-ihl", packet)
    for _ in range(100):  # total length longer than the packet
        packet = tcp_packet(port(), 7, u32(), 0, ACK, rng.randbytes(rng.randrange(0, 100)))
        packet[2:4] = struct.pack("!H", len(packet) + rng.randrange(1, 1000))
        add("bad-total-length", packet)
    for _ in range(100):  # total length shorter than the IP header
        packet = tcp_packet(port(), 7, u32(), 0, ACK)
        packet[2:4] = struct.pack("!H", rng.randrange(0, 20))
        add("bad-total-length", packet)
    for _ in range(200):  # wrong IP header checksum
        packet = tcp_packet(port(), 7, u32(), 0, SYN)
        packet[10] ^= 0xFF
        add("bad-ip-checksum", packet)
    for _ in range(100):  # fragments reassembly refuses: not a multiple of 8, past 65535
        add("fragment-bad-length", tcp_packet(port(), 7, u32(), 0, ACK, rng.randbytes(61),
                                              frag=0x2000 | rng.randrange(0, 0x100)))
        add("fragment-too-big", tcp_packet(port(), 7, u32(), 0, ACK, rng.randbytes(64),
                                           frag=rng.randrange(0x1FF8, 0x2000)))
    for _ in range(100):  # loopback, multicast, zero source
        src = rng.choice([b"\x7f\0\0\x01", b"\xe0\0\0\x05", b"\0\0\0\0", b"\xef\x01\x02\x03"])
        add("bad-source", tcp_packet(port(), 7, u32(), 0, SYN, src=src))
    for _ in range(100):  # someone else's address
        add("not-for-us", tcp_packet(port(), 7, u32(), 0, SYN, dst=b"\x0a\x07\x00\x63"))
    for _ in range(200):  # TCP part shorter than a TCP header (2..19 bytes)
        n = rng.randrange(2, 20)
        packet = _ip_header(SRC, DST, 6, 20 + n) + rng.randbytes(n)
        add("tcp-truncated", fix_tcp_checksum(packet))
    for _ in range(100):  # data offset below 5 words
        add("bad-data-offset", tcp_packet(port(), 7, u32(), 0, ACK, rng.randbytes(40),
                                          doff=rng.randrange(0, 5)))
    for _ in range(100):  # data offset past the end of the segment
        payload = rng.randbytes(rng.randrange(0, 20))
        doff = rng.randrange(6 + len(payload) // 4, 16)
        add("bad-data-offset", tcp_packet(port(), 7, u32(), 0, ACK, payload, doff=doff))
    overruns = [
        b"\x02\x28\x05\xb4",  # MSS claiming 40 bytes in a 4-byte option space
        b"\x01\x01\x01\x08",  # NOPs, then a kind with no length byte
        b"\x08\x00\x00\x00",  # length 0
        b"\x03\x01\x07\x00",  # length 1
        b"\x02\x03\x05\x00",  # MSS with length 3
        b"\x05\x07\x00\x00",  # SACK with a length that is no whole block
        b"\x03\x02\x00\x00",  # window scale with length 2
    ]
    for i in range(200):  # option lists that overrun or lie
        options = overruns[i % len(overruns)]
        if i % 2:  # the same at the end of a longer list
            options = b"\x01\x01\x04\x02" + b"\x01" * 4 + options
        add("bad-options", tcp_packet(port(), 7, u32(), 0, SYN, doff=5 + len(options) // 4,
                                      options=options))
    for _ in range(100):  # port 0
        sport, dport = rng.choice([(0, 7), (port(), 0), (0, 0)])
        add("bad-port", tcp_packet(sport, dport, u32(), 0, SYN))
    for _ in range(100):  # SYN+FIN, SYN+RST
        add("bad-flags", tcp_packet(port(), 7, u32(), 0, SYN | rng.choice([FIN, RST, FIN | RST])))
    for i in range(300):  # wrong TCP checksum; a third of them aimed at the live connection
        sport = conn_port if i % 3 == 0 else port()
        packet = tcp_packet(sport, 7, u32(), u32(), ACK | PSH, b"EVIL" * rng.randrange(1, 64))
        add("bad-tcp-checksum", _flip_tcp_checksum(packet))
    for _ in range(100):  # UDP
        udp = struct.pack("!HHHH", port(), 7, 12, 0) + b"evil"
        add("unsupported-protocol", _ip_header(SRC, DST, 17, 20 + len(udp)) + udp)
    for _ in range(50):  # ICMP shorter than its header
        n = rng.randrange(0, 8)
        add("icmp-truncated", _ip_header(SRC, DST, 1, 20 + n) + rng.randbytes(n))
    for _ in range(50):  # ICMP echo request with a wrong checksum
        icmp = bytearray(struct.pack("!BBHHH", 8, 0, 0, 1, 1) + b"ping")
        icmp[2:4] = struct.pack("!H", (0xFFFF - _sum16(bytes(icmp))) ^ 0x0101)
        add("bad-icmp-checksum", _ip_header(SRC, DST, 1, 20 + len(icmp)) + icmp)
    for _ in range(50):  # ICMP that is not an echo request (destination unreachable)
        icmp = bytearray(struct.pack("!BBHI", 3, 3, 0, 0) + bytes(28))
        icmp[2:4] = struct.pack("!H", 0xFFFF - _sum16(bytes(icmp)))
        add("icmp-ignored", _ip_header(SRC, DST, 1, 20 + len(icmp)) + icmp)
    rng.shuffle(out)
    return out, expect


# ------------------------------------------------------------------------------------------------
# Helpers


def snapshot(stack: StackProcess, timeout: float = 10.0) -> dict:
    """The whole `connections` event (table, counters, drops, rss_kb) asked for with SIGUSR1."""
    seen = len(stack.events("connections"))
    os.kill(stack.pid, signal.SIGUSR1)
    return stack.wait_for("connections", after=seen, timeout=timeout)


def delta(after: dict, before: dict) -> dict:
    return {k: after.get(k, 0) - before.get(k, 0) for k in set(after) | set(before)
            if after.get(k, 0) != before.get(k, 0)}


def tun_tx_dropped(ns: NetNS) -> int:
    """Packets the kernel dropped on their way to the TUN reader (its queue was full)."""
    res = ns.run(["ip", "-s", "-j", "link", "show", TUN], capture_output=True, text=True,
                 check=True)
    return json.loads(res.stdout)[0]["stats64"]["tx"]["dropped"]


class Injector:
    """Packet sockets on the TUN interface: what they send, the stack reads.

    The kernel queues packets for the TUN reader (the qdisc, then the device's ring, each as
    long as txqueuelen, 500 by default) and drops what does not fit. The queue is made longer
    here, and sending is paced, so that no injected packet is lost on a busy machine and the
    drop counts can be exact; `tun_tx_dropped` tells if one was.
    """

    def __init__(self, ns: NetNS, *, capture: bool = False) -> None:
        ns.run(["ip", "link", "set", TUN, "txqueuelen", "10000"], check=True)
        with ns.enter():
            self.socks = {}
            for ethertype in (ETH_P_IP, ETH_P_IPV6):
                s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ethertype))
                s.bind((TUN, ethertype))
                self.socks[ethertype] = s
            if capture:  # room for what a flood makes the stack send (and the flood itself)
                self.socks[ETH_P_IP].setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 32 << 20)

    def send(self, packets: list[tuple[int, bytes]], batch: int = 50, pause: float = 0.002) -> None:
        """Send all, paced so the TUN queue (500 packets) never overflows; retry on ENOBUFS."""
        deadline = time.monotonic() + 60
        for i, (ethertype, packet) in enumerate(packets):
            while True:
                try:
                    self.socks[ethertype].sendto(packet, (TUN, ethertype))
                    break
                except OSError as exc:
                    if exc.errno != errno.ENOBUFS or time.monotonic() > deadline:
                        raise
                    time.sleep(0.002)
            if i % batch == batch - 1:
                time.sleep(pause)

    def drain(self) -> None:
        """Forget what the IPv4 socket has seen so far."""
        sock = self.socks[ETH_P_IP]
        sock.setblocking(False)
        try:
            while True:
                sock.recv(65536)
        except BlockingIOError:
            pass
        self._dropped()  # reading the statistics resets them

    def _dropped(self) -> int:
        stats = self.socks[ETH_P_IP].getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
        return struct.unpack("II", stats)[1]  # struct tpacket_stats: tp_packets, tp_drops

    def seen_from_stack(self, port: int) -> list[tuple[int, int, int, int]]:
        """(seq, ack, flags, payload length) of the TCP segments the stack sent to `port` since
        the last drain (a packet socket sees what the TUN reader writes, as arriving packets)."""
        sock = self.socks[ETH_P_IP]
        sock.setblocking(False)
        out = []
        try:
            while True:
                packet, addr = sock.recvfrom(65536)
                if addr[2] == socket.PACKET_OUTGOING or len(packet) < 40 or packet[9] != 6:
                    continue
                ihl = (packet[0] & 15) * 4
                sport, dport, seq, ack, doff, flags = struct.unpack_from("!HHIIBB", packet, ihl)
                if packet[12:16] == DST and sport == 7 and dport == port:
                    total = struct.unpack_from("!H", packet, 2)[0]
                    out.append((seq, ack, flags, total - ihl - (doff >> 4) * 4))
        except BlockingIOError:
            pass
        assert self._dropped() == 0, "the capture lost packets: a larger SO_RCVBUF is needed"
        return out

    def close(self) -> None:
        for s in self.socks.values():
            s.close()


class EchoTransfer:
    """A kernel socket (opened in the namespace) echoing seeded random bytes until told to finish."""

    CHUNK = 64 * 1024

    def __init__(self, ns: NetNS, seed: int, minimum: int) -> None:
        with ns.enter():
            self.sock = socket.create_connection((STACK, 7), timeout=30)
        self.port = self.sock.getsockname()[1]
        self.rng = random.Random(seed)
        self.minimum = minimum
        self.finish = threading.Event()
        self.sent_hash, self.got_hash = hashlib.sha256(), hashlib.sha256()
        self.sent = self.got = 0
        self.errors: list[str] = []
        self._threads = [threading.Thread(target=self._send, daemon=True),
                         threading.Thread(target=self._receive, daemon=True)]
        for t in self._threads:
            t.start()

    def _send(self) -> None:
        try:
            deadline = time.monotonic() + 60
            while (self.sent < self.minimum or not self.finish.is_set()) and (
                    time.monotonic() < deadline):
                chunk = self.rng.randbytes(self.CHUNK)
                self.sock.sendall(chunk)
                self.sent_hash.update(chunk)
                self.sent += len(chunk)
            self.sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self.errors.append(f"send: {exc!r}")

    def _receive(self) -> None:
        try:
            while chunk := self.sock.recv(1 << 20):
                self.got_hash.update(chunk)
                self.got += len(chunk)
        except OSError as exc:
            self.errors.append(f"receive: {exc!r}")

    def wait(self, timeout: float = 60) -> dict:
        # One more chunk goes through before the end: so "sent" grows past what was echoed when
        # the caller last looked, even if the sender thread got no GIL meanwhile (the caller
        # busy injecting packets) and the pipeline had drained.
        mark = self.sent
        deadline = time.monotonic() + timeout
        while self.sent <= mark and not self.errors and time.monotonic() < deadline:
            if not any(t.is_alive() for t in self._threads):
                break
            time.sleep(0.01)
        self.finish.set()
        for t in self._threads:
            t.join(timeout)
        alive = any(t.is_alive() for t in self._threads)
        self.sock.close()
        return {"sent": self.sent, "received": self.got, "errors": self.errors, "hung": alive,
                "intact": not alive and not self.errors and self.got == self.sent
                and self.got_hash.digest() == self.sent_hash.digest()}


def wait_drops(stack: StackProcess, before: dict, count: int, timeout: float = 10) -> dict:
    """Poll until the drops grew by `count` (or the time is up); the last snapshot."""
    deadline = time.monotonic() + timeout
    while True:
        snap = snapshot(stack)
        grown = sum(delta(snap["drops"], before).values())
        if grown >= count or time.monotonic() >= deadline:
            return snap
        time.sleep(0.1)


# ------------------------------------------------------------------------------------------------
# 5,000 bad packets during a transfer


@pytest.mark.parametrize("offload", [True, False], ids=["offload", "no-offload"])
def test_five_thousand_bad_packets_during_a_transfer(netns: NetNS, tmp_path: Path,
                                                     offload: bool) -> None:
    seed = int(os.environ.get("USERTCP_ROBUST_SEED", "5961"))
    print(f"\nseed {seed}")
    rng = random.Random(seed)
    stack = start_service(netns, tmp_path, "echo", *([] if offload else ["--no-offload"]))
    netns.wait_port(STACK, 7)
    injector = Injector(netns)
    transfer = EchoTransfer(netns, seed, minimum=16 * 1024 * 1024)
    try:
        # Let the transfer get going: bytes echoed before anything hostile is sent.
        deadline = time.monotonic() + 10
        while transfer.got < 1024 * 1024 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert transfer.got > 0, transfer.errors
        tx_dropped = tun_tx_dropped(netns)
        before = snapshot(stack)
        assert before["drops"] == {}, before["drops"]

        # 2,000 packets of random bytes (1..1500 of them): whatever each is, it is dropped.
        randoms = [(ETH_P_IP, rng.randbytes(rng.randrange(1, 1501))) for _ in range(2000)]
        injector.send(randoms)
        middle = wait_drops(stack, before["drops"], len(randoms))
        random_drops = delta(middle["drops"], before["drops"])
        print(f"random bytes: {random_drops}")

        # 3,000 packets wrong in one named way each.
        crafted, expect = crafted_packets(rng, transfer.port)
        assert len(randoms) + len(crafted) == 5000
        injector.send(crafted)
        after = wait_drops(stack, middle["drops"], len(crafted))
        crafted_drops = delta(after["drops"], middle["drops"])
        print(f"crafted: {crafted_drops}")
        assert tun_tx_dropped(netns) == tx_dropped, "the kernel dropped packets bound for the stack"
        during = transfer.got
    finally:
        result = transfer.wait()
        injector.close()
    print(f"transfer: {result['sent']} bytes sent, {result['received']} echoed")

    # Every injected packet was dropped, once, and counted under its reason.
    assert sum(random_drops.values()) == len(randoms), random_drops
    assert dict(crafted_drops) == dict(expect), {
        "got": crafted_drops, "expected": dict(expect), "seed": seed}
    # The transfer was running throughout, and nothing injected got into it.
    assert during < result["sent"], result
    assert result["intact"], (result, seed)
    final = snapshot(stack)
    assert final["drops"] == after["drops"], (final["drops"], after["drops"])
    counters = final["counters"]
    assert counters.get("resets_received", 0) == 0, counters
    assert counters.get("resets_sent", 0) == 0, counters  # nothing injected got an answer
    assert stack.stop(signal.SIGINT) == 0, stack.text()[-3000:]


# ------------------------------------------------------------------------------------------------
# Fragments and bad header lengths as they come: named the same on both device paths


def _real_fragments(rng: random.Random) -> list[bytearray]:
    """A TCP segment with its checksum right for the whole segment, cut in two IP fragments.

    Neither fragment's bytes make a valid TCP checksum on their own (as with any real fragment):
    a device that verified them would call them bad checksums instead of fragments.
    """
    whole = tcp_packet(rng.randrange(1024, 65536), 7, rng.getrandbits(32), 0, ACK | PSH,
                       rng.randbytes(180))
    tcp = bytes(whole[20:])
    cut = 96  # a multiple of 8
    first = _ip_header(SRC, DST, 6, 20 + cut, frag=0x2000) + tcp[:cut]  # MF, offset 0
    rest = _ip_header(SRC, DST, 6, 20 + len(tcp) - cut, frag=cut // 8) + tcp[cut:]
    return [first, rest]


def wait_counter(stack: StackProcess, name: str, before: int, count: int,
                 timeout: float = 10) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        snap = snapshot(stack)
        if snap["counters"].get(name, 0) - before >= count or time.monotonic() >= deadline:
            return snap
        time.sleep(0.1)


@pytest.mark.parametrize("offload", [True, False], ids=["offload", "no-offload"])
def test_fragments_and_bad_header_lengths_named_on_both_device_paths(
        netns: NetNS, tmp_path: Path, offload: bool) -> None:
    seed = int(os.environ.get("USERTCP_ROBUST_SEED", "5961"))
    rng = random.Random(seed)
    stack = start_service(netns, tmp_path, "echo", *([] if offload else ["--no-offload"]))
    netns.wait_port(STACK, 7)
    injector = Injector(netns)
    try:
        packets = []
        for _ in range(50):
            packets += _real_fragments(rng)
        for _ in range(50):  # a correct TCP/IPv4 packet but for its header length (16 bytes)
            packet = tcp_packet(rng.randrange(1024, 65536), 7, rng.getrandbits(32), 0, SYN)
            packet[0] = 0x44
            packets.append(packet)
        first = snapshot(stack)
        before = first["drops"]
        injector.send([(ETH_P_IP, bytes(p)) for p in packets])
        wait_drops(stack, before, 50)
        after = wait_counter(stack, "reassembled", first["counters"].get("reassembled", 0), 50)
    finally:
        injector.close()
    got = delta(after["drops"], before)
    counted = delta(after["counters"], first["counters"])
    print(f"\noffload={offload}: {got} {counted}")
    # Both paths: every fragment into reassembly (none a bad checksum by a device that summed
    # it alone), every pair reassembled and its checksum verified whole; the bad IHLs named.
    assert got == {"bad-ihl": 50}, got
    assert counted.get("fragments") == 100 and counted.get("reassembled") == 50, counted
    assert stack.stop(signal.SIGINT) == 0, stack.text()[-3000:]


# ------------------------------------------------------------------------------------------------
# RFC 5961 blind attacks


def _row(stack: StackProcess, port: int) -> tuple[dict, dict]:
    snap = snapshot(stack)
    rows = [r for r in snap["table"] if r["conn_id"] is not None and r["remote"][1] == port]
    assert len(rows) == 1, snap["table"]
    return rows[0], snap


def _echo_round(sock: socket.socket, data: bytes) -> bytes:
    """Send `data` on the idle connection and read back as many bytes."""
    got = bytearray()
    sender = threading.Thread(target=sock.sendall, args=(data,), daemon=True)
    sender.start()
    while len(got) < len(data):
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        got += chunk
    sender.join(30)
    return bytes(got)


def test_rfc5961_blind_attacks_on_a_live_connection(netns: NetNS, tmp_path: Path) -> None:
    seed = int(os.environ.get("USERTCP_ROBUST_SEED", "5961"))
    print(f"\nseed {seed}")
    rng = random.Random(seed)
    # The kernel client offers no timestamps, so the attacks meet RFC 5961's checks alone (with
    # timestamps, RFC 7323 lets a stack drop segments that carry none, as these do, earlier).
    netns.run(["sysctl", "-qw", "net.ipv4.tcp_timestamps=0"], check=True)
    stack = start_service(netns, tmp_path, "echo")
    netns.wait_port(STACK, 7)
    injector = Injector(netns, capture=True)
    with netns.enter():
        sock = socket.create_connection((STACK, 7), timeout=30)
    try:
        cport = sock.getsockname()[1]
        first = rng.randbytes(256 * 1024)
        assert _echo_round(sock, first) == first
        time.sleep(0.2)  # let the last ACKs settle: the connection is idle now

        row, snap = _row(stack, cport)
        assert row["state"] == "ESTABLISHED", row
        assert not row.get("timestamps"), row
        rcv_nxt, snd_nxt, wnd = row["rcv_nxt"], row["snd_nxt"], row["rcv_wnd"]
        assert wnd > 1000, row
        print(f"connection {STACK}:7 <- {HOST}:{cport}: rcv_nxt {rcv_nxt} snd_nxt {snd_nxt} "
              f"window {wnd}")
        c0 = Counter(snap["counters"])

        def attack(packets: list[bytearray]) -> Counter:
            before = Counter(snapshot(stack)["counters"])
            injector.drain()
            injector.send([(ETH_P_IP, bytes(p)) for p in packets])
            time.sleep(0.3)
            after = Counter(snapshot(stack)["counters"])
            return Counter(delta(after, before))

        challenge_ack = (snd_nxt, rcv_nxt, ACK, 0)  # <SEQ=SND.NXT><ACK=RCV.NXT><CTL=ACK>

        # 1. RSTs outside the window: ignored, no challenge, nothing sent.
        outside = [(rcv_nxt + wnd + rng.randrange(1, 1 << 30)) & 0xFFFFFFFF for _ in range(50)]
        outside += [(rcv_nxt - rng.randrange(1, 1 << 30)) & 0xFFFFFFFF for _ in range(50)]
        got = attack([tcp_packet(cport, 7, seq, 0, RST) for seq in outside])
        print(f"out-of-window RST: {dict(got)}")
        assert got["rx_out_of_window"] == 100, got
        assert got["challenge_acks"] == 0 and got["resets_received"] == 0, got
        assert injector.seen_from_stack(cport) == []

        # 2. One RST inside the window (not at RCV.NXT): a challenge ACK, the connection stays.
        got = attack([tcp_packet(cport, 7, rcv_nxt + rng.randrange(1, wnd), 0, RST)])
        print(f"in-window RST: {dict(got)}")
        assert got["challenge_acks"] == 1 and got["rst_challenged"] == 1, got
        assert injector.seen_from_stack(cport) == [challenge_ack]

        # 3. A SYN inside the window of a synchronized connection: a challenge ACK.
        got = attack([tcp_packet(cport, 7, rcv_nxt + rng.randrange(0, wnd), 0, SYN)])
        print(f"in-window SYN: {dict(got)}")
        assert got["challenge_acks"] == 1 and got["syn_challenged"] == 1, got
        assert injector.seen_from_stack(cport) == [challenge_ack]

        # 4. A flood of in-window RSTs, all within a second: at most the limit per second.
        # Start early in a second of the stack's clock (asyncio's loop.time() is time.monotonic()).
        time.sleep(1.0 - time.monotonic() % 1.0 + 0.05)
        flood = [tcp_packet(cport, 7, rcv_nxt + rng.randrange(1, wnd), 0, RST) for _ in range(2500)]
        tx_dropped = tun_tx_dropped(netns)
        t0 = time.monotonic()
        got = attack(flood)
        took = time.monotonic() - t0
        print(f"RST flood of {len(flood)} in {took:.2f} s: {dict(got)}")
        answered, suppressed = got["challenge_acks"], got["challenge_acks_suppressed"]
        assert tun_tx_dropped(netns) == tx_dropped, "the kernel dropped packets bound for the stack"
        assert answered + suppressed == len(flood), got
        # Within one second of the stack's clock, or across one boundary: two budgets at most.
        assert 0 < answered <= 2 * CHALLENGE_ACK_LIMIT, got
        assert suppressed >= len(flood) - 2 * CHALLENGE_ACK_LIMIT, got
        assert got["resets_received"] == 0, got
        assert injector.seen_from_stack(cport).count(challenge_ack) == answered

        # 5. Blind data outside the window: dropped, never delivered.
        evil = [tcp_packet(cport, 7, (rcv_nxt + wnd + rng.randrange(1, 1 << 30)) & 0xFFFFFFFF,
                           snd_nxt, ACK | PSH, b"EVIL" * 16) for _ in range(50)]
        evil += [tcp_packet(cport, 7, (rcv_nxt - rng.randrange(70000, 1 << 30)) & 0xFFFFFFFF,
                            snd_nxt, ACK | PSH, b"EVIL" * 16) for _ in range(50)]
        got = attack(evil)
        print(f"out-of-window data: {dict(got)}")
        assert got["rx_out_of_window"] == 100, got

        # 6. Data at RCV.NXT acknowledging bytes the stack never sent (RFC 5961 5.2): dropped.
        got = attack([tcp_packet(cport, 7, rcv_nxt, (snd_nxt + 100000) & 0xFFFFFFFF, ACK | PSH,
                                 b"EVIL" * 16)])
        print(f"data with an ACK of unsent data: {dict(got)}")
        assert got["ack_of_unsent"] == 1, got

        # The connection is where it was, and still carries data intact (no EVIL in the echo).
        row, snap = _row(stack, cport)
        assert row["state"] == "ESTABLISHED", row
        assert (row["rcv_nxt"], row["snd_nxt"]) == (rcv_nxt, snd_nxt), row
        second = rng.randbytes(1024 * 1024)
        assert _echo_round(sock, second) == second
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(10) == b""
        total = Counter(delta(snapshot(stack)["counters"], c0))
        print(f"all attacks: {dict(total)}")
        assert total["resets_received"] == 0, total
        assert snapshot(stack)["drops"] == {}, "the attack packets were well-formed"
    finally:
        sock.close()
        injector.close()
    assert stack.stop(signal.SIGINT) == 0, stack.text()[-3000:]
