"""Fuzzing the whole pure stack: random, crafted and mutated IPv4/TCP packets.

A `World` is two `Stack`s (10.0.0.1 and 10.0.0.2) joined by a 1 ms wire on a
virtual clock, each with a listener, one live connection in each direction
with data queued both ways, and a TIME-WAIT entry. A fuzzer meddles with it one
operation at a time:

- packets of random bytes;
- crafted segments for a live 4-tuple or TIME-WAIT entry (or a listener, a
  closed port; or an ICMP echo) with random flags, window, options and payload,
  and sequence/acknowledgment numbers near the values the connection expects,
  so they hit the in-window paths and not only the "out of window, ACK and
  drop" one; SYN floods past the SYN backlog (SYN cookies), and ACKs that
  complete those handshakes;
- mutations of packets the stacks really sent (bit flips, truncation,
  extension, insertion, field rewrites), with the checksums fixed up (most of
  the time) so they get past the parser and into the state machine, or handed
  in as "checksum verified by the device";
- replays, losses and delays of real packets on the wire;
- time passing (timers fire), and application calls on the ids the application
  knows, alive or gone, and on ids it never had: send, recv, shutdown, close,
  abort (one end or both), connect (simultaneous open too), listen/unlisten,
  set_nodelay, set_keepalive, set_user_timeout.

The configuration varies too: MSS, buffer sizes, Nagle, an ISN just below
2**32 (the data crosses the wrap), small SYN/accept backlogs, keepalive, a user
timeout, a connection limit.

After every operation `World.check()` asserts the invariants (see there), and
at the end `World.fresh_connection_check()` connects each fuzzed stack to a
clean peer, both as client and as server, and moves data intact.

The same `World` drives three front ends:
- `StackFuzz` below, a hypothesis RuleBasedStateMachine (in CI: a few seconds);
- the property tests below: receive() of random/mutated packets never raises,
  and a dropped packet moves exactly one drop counter;
- `scripts/fuzz.py`, an atheris (coverage-guided) or seeded-random long run,
  which decodes its input bytes into the same operations (`run_ops`).

Hypothesis prints the failing rule sequence and its seed on failure; rerun
with `--hypothesis-seed=N` to reproduce one.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import random
import struct
from collections import Counter, deque

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from usertcp.stack import Stack
from usertcp.tcp import events as ev
from usertcp.tcp.config import TcpConfig
from usertcp.tcp.connection import Connection
from usertcp.tcp.errors import (
    ConnectionNotWritable,
    PortInUse,
    TooManyConnections,
    UnknownConnection,
)
from usertcp.tcp.isn import initial_sequence_number
from usertcp.tcp.seq import HALF, MASK
from usertcp.tcp.state import CAN_SEND, State
from usertcp.tcp.timewait import TimeWait
from usertcp.wire.errors import DropReason, MalformedPacket
from usertcp.wire.packet import parse_packet

from .link import Link, check_invariants

A_ADDR, B_ADDR, CLEAN_ADDR = "10.0.0.1", "10.0.0.2", "10.0.0.3"
A_INT, B_INT = 0x0A000001, 0x0A000002
FAKE_PEERS = (0x0A000009, 0x0A010203, 0xC0A80707)  # sources nobody on the wire owns
LISTEN_PORTS = (81, 80)  # A listens on 81, B on 80


def entry(stack: Stack, cid: int):
    """A connection, a view of a TIME-WAIT entry (stack.time_wait_entry), or None."""
    conn = stack._by_id.get(cid)
    return conn if conn is not None else stack.time_wait_entry(cid)


def entry_ids(stack: Stack) -> list[int]:
    """Ids of the connections and TIME-WAIT entries of a stack, in order."""
    return sorted({*stack._by_id, *stack._tw.ids})
FRESH_PORT = 8080  # for fresh_connection_check when the fuzzer limited LISTEN_PORTS' listener
WIRE_DELAY = 0.001
FIN, SYN, RST, PSH, ACK, URG = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20

_TERMINAL = (ev.ConnectionClosed, ev.ConnectionReset, ev.ConnectionTimedOut)


# ---------------------------------------------------------------------------- packet bytes

def _ones_sum(data) -> int:
    """One's-complement sum of 16-bit words (a reference, independent of usertcp.wire)."""
    if len(data) & 1:
        data = bytes(data) + b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _csum(data) -> bytes:
    return (~_ones_sum(data) & 0xFFFF).to_bytes(2, "big")


def fix_checksums(pkt: bytearray) -> bytearray:
    """Recompute the IP header checksum and the TCP (or ICMP) checksum, where the
    header fields leave enough of a packet to do so; other fields are left alone."""
    n = len(pkt)
    if n < 20 or pkt[0] >> 4 != 4:
        return pkt
    ihl = (pkt[0] & 15) * 4
    if ihl < 20 or ihl > n:
        return pkt
    pkt[10:12] = b"\0\0"
    pkt[10:12] = _csum(pkt[:ihl])
    end = min(int.from_bytes(pkt[2:4], "big"), n)
    proto = pkt[9]
    if proto == 6 and end - ihl >= 18:
        seg = bytearray(pkt[ihl:end])
        seg[16:18] = b"\0\0"
        pseudo = bytes(pkt[12:20]) + struct.pack("!BBH", 0, 6, len(seg))
        pkt[ihl + 16:ihl + 18] = _csum(pseudo + bytes(seg))
    elif proto == 1 and end - ihl >= 4:
        msg = bytearray(pkt[ihl:end])
        msg[2:4] = b"\0\0"
        pkt[ihl + 2:ihl + 4] = _csum(msg)
    return pkt


def tcp_packet(src: int, dst: int, sport: int, dport: int, seq: int, ack: int, flags: int,
               window: int, options: bytes = b"", payload: bytes = b"") -> bytearray:
    """An IPv4+TCP packet built here with struct (not with usertcp.wire), checksums valid."""
    options = options[:40]
    if len(options) % 4:
        options += b"\0" * (4 - len(options) % 4)
    doff = (20 + len(options)) // 4
    tcp = struct.pack("!HHIIBBHHH", sport & 0xFFFF, dport & 0xFFFF, seq & MASK, ack & MASK,
                      doff << 4, flags & 0xFF, window & 0xFFFF, 0, 0)
    total = 20 + len(tcp) + len(options) + len(payload)
    ip = struct.pack("!BBHHHBBHII", 0x45, 0, total, 0, 0x4000, 64, 6, 0, src, dst)
    return fix_checksums(bytearray(ip + tcp + options + payload))


# Options as (kind, value) items: known kinds with right lengths, wrong lengths, unknown kinds.
OPTION_KINDS = 10


def render_options(items, seq_hint: int = 0) -> bytes:
    out = bytearray()
    for kind, value in items:
        kind %= OPTION_KINDS
        value &= MASK
        if kind == 0:
            out += b"\x00"  # EOL: whatever follows is padding
        elif kind == 1:
            out += b"\x01"
        elif kind == 2:
            out += struct.pack("!BBH", 2, 4, value & 0xFFFF)  # MSS, 0 and tiny included
        elif kind == 3:
            out += bytes((3, 3, value & 0xFF))  # window scale, > 14 included
        elif kind == 4:
            out += b"\x04\x02"  # SACK permitted
        elif kind == 5:
            n = 1 + value % 4
            left = (seq_hint + (value >> 8) % 5000) & MASK
            out += bytes((5, 2 + 8 * n))
            for i in range(n):
                out += struct.pack("!II", (left + 1000 * i) & MASK, (left + 1000 * i + 500) & MASK)
        elif kind == 6:
            out += struct.pack("!BBII", 8, 10, value, value ^ 0x5A5A5A5A)  # timestamps
        elif kind == 7:
            length = 2 + value % 6
            out += bytes((200 + value % 50, length)) + bytes(length - 2)  # unknown kind
        elif kind == 8:
            out += bytes((value & 0xFF, (value >> 8) & 0xFF))  # garbage: may be a bad length
        else:
            out += bytes((2, 4 + (value % 3) - 1)) + b"\x05\xb4"  # MSS with a wrong length
    return bytes(out[:40])


# Mutations: (kind, position, value) triples, applied in order.
MUTATION_KINDS = 9
# IP total length, ident, frag, ttl+proto; TCP ports, data offset+flags, window, urgent
_FIELDS16 = (2, 4, 6, 8, 20, 22, 32, 34, 38)
_FIELDS32 = (12, 16, 24, 28)  # IP src, dst; TCP seq, ack


def mutate(packet, mutations) -> bytearray:
    pkt = bytearray(packet)
    for kind, pos, value in mutations:
        kind %= MUTATION_KINDS
        value &= MASK
        n = len(pkt)
        if kind == 0 and n:  # flip one bit
            bit = pos % (n * 8)
            pkt[bit >> 3] ^= 1 << (bit & 7)
        elif kind == 1 and n:  # set one byte
            pkt[pos % n] = value & 0xFF
        elif kind == 2:  # truncate
            del pkt[pos % (n + 1):]
        elif kind == 3:  # extend with bytes; sometimes the IP total length follows
            extra = random.Random(value).randbytes(1 + value % 80)
            pkt += extra
            if pos & 1 and len(pkt) >= 4:
                pkt[2:4] = (len(pkt) & 0xFFFF).to_bytes(2, "big")
        elif kind == 4:  # rewrite a 16-bit header field
            at = _FIELDS16[pos % len(_FIELDS16)]
            if at + 2 <= n:
                pkt[at:at + 2] = (value & 0xFFFF).to_bytes(2, "big")
        elif kind == 5:  # rewrite a 32-bit field: absolute, or nudged by a small delta
            at = _FIELDS32[pos % len(_FIELDS32)]
            if at + 4 <= n:
                old = int.from_bytes(pkt[at:at + 4], "big")
                new = value if pos & 4 else old + ((value & 0xFFFF) - 0x8000) % 0x10000 - 0x8000
                pkt[at:at + 4] = (new & MASK).to_bytes(4, "big")
        elif kind == 6:  # insert bytes in the middle (shifts everything after)
            at = pos % (n + 1)
            pkt[at:at] = value.to_bytes(4, "big")[: 1 + pos % 4]
        elif kind == 7 and n:  # delete a range
            at = pos % n
            del pkt[at:at + 1 + value % 16]
        elif kind == 8 and n >= 34:  # rewrite the TCP flags byte (keeps the data offset)
            pkt[33] = value & 0xFF
    return pkt


def icmp_echo(src: int, dst: int, payload: bytes = b"ping") -> bytearray:
    msg = struct.pack("!BBHHH", 8, 0, 0, 0x1234, 1) + payload
    ip = struct.pack("!BBHHHBBHII", 0x45, 0, 20 + len(msg), 7, 0x4000, 64, 1, 0, src, dst)
    return fix_checksums(bytearray(ip + msg))


def udp_packet(src: int, dst: int) -> bytearray:
    body = struct.pack("!HHHH", 5353, 53, 12, 0) + b"abcd"
    ip = struct.pack("!BBHHHBBHII", 0x45, 0, 20 + len(body), 7, 0x4000, 64, 17, 0, src, dst)
    return fix_checksums(bytearray(ip + body))


def payload_bytes(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


# ---------------------------------------------------------------------------- the world

class World:
    """Two stacks on a virtual-clock wire, with the operations a fuzzer may apply."""

    def __init__(self, *, mss: int = 1460, send_buffer: int = 64 * 1024,
                 receive_buffer: int = 64 * 1024, nagle: bool = True, delayed_ack: bool = True,
                 wrap: int | None = None, initial_data: int = 20_000, secret: bytes = b"fuzz",
                 max_steps: int = 200_000, **extra):
        """`extra`: more TcpConfig fields (syn_backlog, keepalive, ...)."""
        self.config = TcpConfig(mss=mss, send_buffer=send_buffer, receive_buffer=receive_buffer,
                                nagle=nagle, delayed_ack=delayed_ack, isn_secret=secret, **extra)
        self.now = 0.0
        if wrap is not None:
            # Start the clock where A's ISN for its connection to B:80 sits `wrap` bytes
            # before 2**32, so the data it sends crosses the wrap of the sequence space.
            h = initial_sequence_number(secret, A_INT, 40000, B_INT, 80, 0.0)
            self.now = ((2**32 - (wrap % 60_000) - 1 - h) % 2**32 + 0.5) / 250_000
        self.stacks = (Stack(A_ADDR, config=self.config), Stack(B_ADDR, config=self.config))
        self.addrs = (A_INT, B_INT)
        self.max_steps = max_steps
        self.wire: list = []  # heap of (arrival, n, destination index, packet)
        self._n = 0
        self.recent: deque = deque(maxlen=64)  # (destination index, packet) really sent
        self.synacks: dict = {}  # (side, peer, peer port) -> (seq, ack) of its last SYN-ACK
        self.fed = Counter()  # packets handed to Stack.receive, by origin
        self.ops = Counter()
        self.events = Counter()
        # The ids the application knows (connect() returned it, or ConnectionAccepted named
        # it): the only ones an application can pass to the API, alive or not.
        self.ids: list[dict[int, None]] = [{}, {}]
        self.ended: list[set[int]] = [set(), set()]  # ids that had their terminal event
        a, b = self.stacks
        a.listen(LISTEN_PORTS[0])
        b.listen(LISTEN_PORTS[1])
        c1 = a.connect(B_ADDR, 80, self.now, local_port=40000)
        c2 = b.connect(A_ADDR, 81, self.now, local_port=50000)
        c3 = a.connect(B_ADDR, 80, self.now, local_port=40002)  # ends in TIME-WAIT, below
        self._remember(0, c1)
        self._remember(1, c2)
        self._remember(0, c3)
        a.send(c1, payload_bytes(1, initial_data), self.now)
        b.send(c2, payload_bytes(2, initial_data), self.now)
        self.flush()
        self.advance(0.01)
        for side, stack in enumerate(self.stacks):  # the accepted ends answer with data too
            for cid in list(stack._by_id):
                conn = stack._by_id[cid]
                if type(conn) is Connection and conn.listener is not None and conn.rport != 40002:
                    stack.send(cid, payload_bytes(3 + side, initial_data // 2), self.now)
        short = a._by_id[c3]
        a.send(c3, b"bye", self.now)
        a.shutdown(c3, self.now)
        b.shutdown(self.peer_of(0, short).id, self.now)
        self.flush()
        self.advance(0.005)
        assert type(entry(a, c3)) is TimeWait, entry(a, c3)
        self.check()

    # -- plumbing
    def _remember(self, side: int, cid: int) -> None:
        self.ids[side][cid] = None

    def _put(self, packet: bytes, delay: float = WIRE_DELAY) -> None:
        """A packet some stack sent: onto the wire if it is addressed to A or B."""
        if len(packet) < 20:
            return
        dst = int.from_bytes(packet[16:20], "big")
        if len(packet) >= 40 and packet[9] == 6 and packet[33] & (SYN | ACK) == SYN | ACK:
            # Kept so that a crafted ACK can complete the handshake (a SYN cookie's too).
            src = int.from_bytes(packet[12:16], "big")
            if src in self.addrs:
                key = (self.addrs.index(src), dst, int.from_bytes(packet[22:24], "big"))
                self.synacks[key] = struct.unpack_from("!II", packet, 24)
        if dst not in self.addrs:
            return  # to a fake peer: into the void
        to = self.addrs.index(dst)
        self.recent.append((to, bytes(packet)))
        self._n += 1
        heapq.heappush(self.wire, (self.now + delay, self._n, to, packet))

    def feed(self, side: int, packet, origin: str, verified: bool = False) -> None:
        self.fed[origin] += 1
        self.stacks[side].receive(packet, self.now, checksum_verified=verified)

    def drain_events(self) -> None:
        for side, stack in enumerate(self.stacks):
            while (event := stack.next_event()) is not None:
                assert isinstance(event, ev.Event), event
                cid = event.conn_id
                assert type(cid) is int, event
                self.events[type(event).__name__] += 1
                t = type(event)
                if t is ev.ConnectionAccepted:
                    self._remember(side, cid)
                if t is ev.StateChanged:
                    assert isinstance(event.old, State) and isinstance(event.new, State), event
                    assert event.old is not event.new, event
                    continue
                # After its one terminal event a connection says nothing more to the app.
                assert cid not in self.ended[side], (
                    f"{stack.address_str}: {event!r} after the end of connection {cid}")
                if t in _TERMINAL:
                    self.ended[side].add(cid)

    def flush(self) -> None:
        self.drain_events()
        for stack in self.stacks:
            for packet in stack.packets_to_send(self.now):
                self._put(packet)
        self.drain_events()

    def advance(self, dt: float) -> None:
        """Let `dt` seconds pass: the wire delivers, timers fire."""
        end = self.now + max(dt, 0.0)
        wire = self.wire
        stacks = self.stacks
        for _ in range(self.max_steps):
            t = wire[0][0] if wire else None
            for stack in stacks:
                d = stack.next_deadline()
                if d is not None and (t is None or d < t):
                    t = d
            if t is None or t > end:
                break
            self.now = max(self.now, t)
            for stack in stacks:
                stack.handle_timers(self.now)
            while wire and wire[0][0] <= self.now:
                _, _, to, packet = heapq.heappop(wire)
                self.feed(to, packet, "wire")
            self.flush()
        else:
            raise AssertionError(f"livelock: more than {self.max_steps} steps within {dt} s "
                                 f"at t={self.now:.6f}")
        self.now = end

    # -- choosing targets
    def live(self, side: int) -> list:
        """Connections and TIME-WAIT entries of one stack, in id order."""
        stack = self.stacks[side]
        return [entry(stack, cid) for cid in entry_ids(stack)]

    def pick_id(self, side: int, pick: int) -> int:
        """Mostly a live connection id the application knows; sometimes one that is gone,
        or never was."""
        known = self.ids[side]
        live = [cid for cid in entry_ids(self.stacks[side]) if cid in known]
        choices = live + live + list(known) + [10_000 + pick % 3]
        return choices[pick % len(choices)]

    # -- fuzz operations (each ends with a flush; check() is the caller's)
    def inject_raw(self, side: int, data: bytes, verified: bool = False) -> None:
        self.ops["raw"] += 1
        self.feed(side, bytes(data), "raw", verified)
        self.flush()

    def crafted(self, side: int, pick: int, flags: int, seq_base: int, seq_delta: int,
                ack_base: int, ack_delta: int, window: int, options=(), payload_len: int = 0,
                verified: bool = False) -> bytes:
        """A well-formed segment: for a live 4-tuple, a listener or a closed port."""
        self.ops["crafted"] += 1
        stack = self.stacks[side]
        live = self.live(side)
        target = pick % (len(live) + 3)
        snd = 0
        if target == len(live) + 2:
            # An ICMP echo request, `payload_len` bytes (the stack answers it).
            peers = FAKE_PEERS + (self.addrs[1 - side],)
            pkt = icmp_echo(peers[(pick >> 4) % len(peers)], self.addrs[side],
                            payload_bytes(pick, payload_len % 1500))
            self.feed(side, bytes(pkt), "crafted", verified)
            self.flush()
            return bytes(pkt)
        if target < len(live):
            conn = live[target]
            src, sport, dport = conn.remote, conn.rport, conn.lport
            if type(conn) is TimeWait:  # (a SYN above RCV.NXT may reuse the 4-tuple)
                seqs = (conn.rcv_nxt, conn.rcv_nxt + conn.window, conn.rcv_nxt + 10**6, 0)
                acks = (conn.snd_nxt, conn.snd_nxt, conn.snd_nxt, 0)
            else:
                seqs = (conn.rcv_nxt, conn.rcv_adv, conn.irs, 0)
                acks = (conn.snd_una, conn.snd_nxt, conn.snd_max, conn.iss)
            snd = acks[0]
        else:
            # A new peer: a listener's port (SYN floods, ACKs out of nowhere) or a closed one.
            peers = FAKE_PEERS + (self.addrs[1 - side],)
            src = peers[(pick >> 4) % len(peers)]
            sport = 40000 + (pick >> 8) % 4
            ports = sorted(stack._listeners) or [LISTEN_PORTS[side]]
            dport = (ports[(pick >> 10) % len(ports)] if target == len(live)
                     else 7 + (pick >> 10) % 3)
            synack_seq, synack_ack = self.synacks.get((side, src, sport), (0, 0))
            seqs = (1000, 2**32 - 100, synack_ack, 0)
            acks = (1, 2**32 - 1, synack_seq + 1, 0)
        seq = (seqs[seq_base % 4] + seq_delta) & MASK
        ack = (acks[ack_base % 4] + ack_delta) & MASK
        payload = payload_bytes(seq ^ payload_len, payload_len) if payload_len else b""
        opts = render_options(options, snd)
        pkt = tcp_packet(src, self.addrs[side], sport, dport, seq, ack, flags, window, opts,
                         payload)
        self.feed(side, bytes(pkt), "crafted", verified)
        self.flush()
        return bytes(pkt)

    def syn_flood(self, side: int, pick: int, n: int) -> None:
        """`n` SYNs to a listening port from distinct new peers (the 4-tuples crafted()
        uses), to fill the SYN backlog: past it, the SYN-ACKs carry SYN cookies, and a
        crafted ACK (seq_base=2, ack_base=2) may complete one."""
        self.ops["syn-flood"] += 1
        stack = self.stacks[side]
        ports = sorted(stack._listeners) or [LISTEN_PORTS[side]]
        dport = ports[pick % len(ports)]
        peers = FAKE_PEERS + (self.addrs[1 - side],)
        for i in range(n):
            k = (pick >> 4) + i
            src, sport = peers[k % len(peers)], 40000 + (k // len(peers)) % 4
            options = render_options([(2, 1460 - 16 * i), (3, i)][: 1 + (pick >> 2) % 2])
            pkt = tcp_packet(src, self.addrs[side], sport, dport, 1000 + i, 0, SYN, 65535,
                             options)
            self.feed(side, bytes(pkt), "syn-flood")
        self.flush()

    def mutant(self, pick: int, mutations, fix: bool = True, verified: bool = False,
               as_bytearray: bool = False) -> None:
        """A mutation of a packet one stack really sent, to the stack it was sent to."""
        self.ops["mutant"] += 1
        if not self.recent:
            return
        to, original = self.recent[pick % len(self.recent)]
        pkt = mutate(original, mutations)
        if fix:
            fix_checksums(pkt)
        if as_bytearray:
            # As a driver that reuses its buffers would hand it: the stack must keep no view
            # into it once receive() returns.
            self.fed["mutant"] += 1
            self.stacks[to].receive(pkt, self.now, checksum_verified=verified)
            self.flush()
            try:
                pkt[:] = b"\xAA" * len(pkt)
                pkt.extend(b"\0" * 8)
                del pkt[:]
            except BufferError as exc:  # pragma: no cover - a failure
                raise AssertionError("the stack kept a view into a received packet") from exc
            return
        self.feed(to, bytes(pkt), "mutant", verified)
        self.flush()

    def replay(self, pick: int) -> None:
        """A duplicate of a real packet, delivered now (an old segment arriving late)."""
        self.ops["replay"] += 1
        if not self.recent:
            return
        to, packet = self.recent[pick % len(self.recent)]
        self.feed(to, packet, "replay")
        self.flush()

    def lose(self, pick: int) -> None:
        """A packet in flight is lost."""
        self.ops["lose"] += 1
        if self.wire:
            self.wire.pop(pick % len(self.wire))
            heapq.heapify(self.wire)

    def delay(self, pick: int, extra: float) -> None:
        """A packet in flight is held back (reordering)."""
        self.ops["delay"] += 1
        if self.wire:
            i = pick % len(self.wire)
            t, n, to, packet = self.wire[i]
            self.wire[i] = (t + abs(extra), n, to, packet)
            heapq.heapify(self.wire)

    def tick(self, dt: float) -> None:
        self.ops["advance"] += 1
        self.advance(dt)

    # -- application calls, with the errors the API documents and no others
    def app_send(self, side: int, pick: int, n: int) -> None:
        self.ops["send"] += 1
        stack = self.stacks[side]
        cid = self.pick_id(side, pick)
        conn = entry(stack, cid)
        data = payload_bytes(cid * 7919 + n, n)
        if conn is None or type(conn) is TimeWait:
            expected = UnknownConnection if conn is None else ConnectionNotWritable
            try:
                stack.send(cid, data, self.now)
            except expected:
                pass
            else:
                raise AssertionError(f"send() on {cid} ({conn}) did not raise {expected}")
        elif conn.state not in CAN_SEND or conn.fin_queued:
            try:
                stack.send(cid, data, self.now)
            except ConnectionNotWritable:
                pass
            else:
                raise AssertionError(f"send() on a {conn.state} connection did not raise")
        else:
            space = stack.send_space(cid)
            took = stack.send(cid, data, self.now)
            assert 0 <= took <= min(n, space), (took, n, space)
            assert took == min(n, space), f"send() took {took} of {n} with {space} free"
        self.flush()

    def app_recv(self, side: int, pick: int, max_bytes: int) -> None:
        self.ops["recv"] += 1
        stack = self.stacks[side]
        cid = self.pick_id(side, pick)
        pending = stack.recv_pending(cid)
        data = stack.recv(cid, max_bytes)
        assert type(data) is bytes
        want = pending if max_bytes < 0 else min(pending, max_bytes)
        assert len(data) == want, f"recv({cid}, {max_bytes}) gave {len(data)} of {pending}"
        self.flush()

    def peer_of(self, side: int, conn):
        """The other stack's end of a connection between A and B, if it has one."""
        if conn is None or conn.remote != self.addrs[1 - side]:
            return None
        return self.stacks[1 - side]._conns.get(
            (self.addrs[side], conn.lport, self.addrs[1 - side], conn.rport))

    def app_call(self, side: int, pick: int, what: int) -> None:
        """shutdown, close, abort, set_nodelay, set_keepalive or set_user_timeout; or
        shutdown/close at both ends at once (a graceful close, simultaneous or not)."""
        stack = self.stacks[side]
        cid = self.pick_id(side, pick)
        conn = entry(stack, cid)
        what %= 8
        name = ("shutdown", "close", "abort", "nodelay", "shutdown-both", "close-both",
                "keepalive", "user-timeout")[what]
        self.ops[name] += 1
        if what in (4, 5):
            peer = self.peer_of(side, conn)
            for s, c in ((side, conn), (1 - side, peer)):
                if type(c) is Connection and c.id in self.ids[s]:
                    if what == 4:
                        self.stacks[s].shutdown(c.id, self.now)
                    else:
                        self.stacks[s].close(c.id, self.now)
                    if pick & 1:
                        self.flush()  # one after the other: not simultaneous
        elif what in (0, 3, 6, 7):
            k = pick >> 1
            if what == 0:
                def call():
                    stack.shutdown(cid, self.now)
            elif what == 3:
                def call():
                    stack.set_nodelay(cid, bool(pick & 1))
            elif what == 6:
                def call():
                    stack.set_keepalive(cid, bool(pick & 1), (None, 0.5, 4.0)[k % 3],
                                        (None, 0.3, 2.0)[(k >> 2) % 3],
                                        (None, 1, 3)[(k >> 4) % 3], now=self.now)
            else:
                def call():
                    stack.set_user_timeout(cid, (None, 0.5, 5.0, 30.0)[k % 4])
            if conn is None or type(conn) is TimeWait:
                try:
                    call()
                except UnknownConnection:
                    pass
                else:
                    raise AssertionError(f"{name}() of unknown {cid} did not raise")
            else:
                call()
                if what >= 6:
                    # Either may pull a deadline to now or before (a user timeout shorter than
                    # a stall already under way): run it, as the asyncio driver does (its
                    # timer, re-armed to that deadline, fires at once).
                    stack.handle_timers(self.now)
        elif what == 1:
            stack.close(cid, self.now)
        else:
            stack.abort(cid, self.now)
        self.flush()

    def app_connect(self, side: int, pick: int) -> None:
        self.ops["connect"] += 1
        stack = self.stacks[side]
        other = self.addrs[1 - side]
        if pick & 0x200:
            # Simultaneous open: each end connects to the other's port at the same moment.
            p, q = 7000 + pick % 5, 7100 + (pick >> 3) % 5
            for s, (lport, rport) in ((side, (p, q)), (1 - side, (q, p))):
                try:
                    cid = self.stacks[s].connect(self.addrs[1 - s], rport, self.now,
                                                 local_port=lport)
                except (PortInUse, TooManyConnections):
                    continue
                self._remember(s, cid)
            self.flush()
            return
        remote = (other, other, FAKE_PEERS[0])[pick % 3]
        port = (LISTEN_PORTS[1 - side], LISTEN_PORTS[1 - side], 9)[(pick >> 2) % 3]
        local = (None, None, 40000 + (pick >> 4) % 3)[(pick >> 6) % 3]
        try:
            cid = stack.connect(remote, port, self.now, local_port=local)
        except PortInUse:
            assert local is not None and stack._in_use(remote, port, stack.address, local)
        except TooManyConnections:
            assert stack.connection_count() >= stack.config.max_connections
        else:
            self._remember(side, cid)
            if pick & 0x100:
                stack.send(cid, payload_bytes(cid, 3000), self.now)  # queued before the handshake
        self.flush()

    def app_listen(self, side: int, pick: int) -> None:
        self.ops["listen"] += 1
        stack = self.stacks[side]
        port = (LISTEN_PORTS[side], 90 + side)[pick % 2]
        if port in stack._listeners:
            if pick & 2:
                try:
                    stack.listen(port)
                except PortInUse:
                    pass
                else:
                    raise AssertionError("listen() twice on one port did not raise")
            else:
                stack.unlisten(port)
        else:
            stack.listen(port, backlog=(None, 1, 4)[(pick >> 2) % 3],
                         max_connections=(None, 1, 3)[(pick >> 4) % 3])
        self.flush()

    # -- invariants
    def check(self) -> None:
        """Every structural invariant of both stacks; AssertionError on the first broken."""
        now = self.now
        for stack in self.stacks:
            where = stack.address_str
            check_invariants(stack)  # SND.UNA <= SND.NXT <= SND.MAX, buffer bounds, ooo
            for table in (stack.counters, stack.drops):
                for key, value in table.items():
                    assert type(value) is int and value >= 0, f"{where}: {key} = {value!r}"
            for key in stack.drops:
                DropReason(key)  # every drop is counted under a named reason
            deadline = stack.next_deadline()
            assert deadline is None or (type(deadline) is float and math.isfinite(deadline)), (
                f"{where}: next_deadline() = {deadline!r}")
            assert deadline is None or deadline >= now, (
                f"{where}: a timer due at {deadline} was not run by t={now}")
            heap = set(stack._timers)  # (deadline, connection id)
            for cid, obj in stack._by_id.items():
                w = f"{where} conn {cid} {obj.state}"
                assert isinstance(obj.state, State), w
                assert obj.id == cid, w
                assert stack._conns.get(obj.key) is obj, f"{w}: not in the 4-tuple table"
                assert type(obj) is Connection, w
                assert obj.state not in (State.CLOSED, State.LISTEN, State.TIME_WAIT), w
                self._check_connection(obj, w)
                d = obj.next_deadline()
                if d is not None:
                    assert obj.armed is not None and obj.armed <= d, (
                        f"{w}: deadline {d} but armed at {obj.armed}")
                    assert (obj.armed, cid) in heap, f"{w}: armed at {obj.armed}, not in heap"
            for obj in stack._conns.values():
                assert stack._by_id.get(obj.id) is obj, f"{where}: {obj.key} not in the id table"
            table = stack._tw
            assert len(table.ids) == len(table.entries), f"{where}: TIME-WAIT tables differ"
            for cid, key in table.ids.items():
                tw = table.get(key)
                w = f"{where} TIME-WAIT {cid}"
                assert tw is not None and tw.id == cid and tw.state is State.TIME_WAIT, w
                assert (tw.remote, tw.rport, tw.local, tw.lport) not in stack._conns, (
                    f"{w}: its 4-tuple is also a connection's")
                assert tw.deadline >= now, f"{w}: due at {tw.deadline}, not expired by t={now}"
                assert key in table.fifo, f"{w}: not in the expiry FIFO"
            conns = [c for c in stack._by_id.values() if type(c) is Connection]
            assert stack.connection_count() == len(conns), (
                f"{where}: connection_count() {stack.connection_count()}, {len(conns)} live")
            assert len(conns) <= stack.config.max_connections, where
            for port, listener in stack._listeners.items():
                half = sum(1 for c in conns if c.listener is listener and not c.accepted)
                assert listener.half_open == half, (
                    f"{where}:{port}: half_open {listener.half_open}, {half} in SYN-RECEIVED")
                mine = sum(1 for c in conns if c.listener is listener)
                assert listener.connections == mine, (
                    f"{where}:{port}: connections {listener.connections}, {mine} live")
                assert listener.max_connections is None or mine <= listener.max_connections
                assert 0 <= listener.half_open <= listener.syn_backlog, (where, port)
                assert 0 <= listener.accept_queue <= listener.backlog, (where, port)
            assert not stack._awaiting_accept, f"{where}: accepted but the event was taken"

    @staticmethod
    def _check_connection(conn: Connection, w: str) -> None:
        state = conn.state
        flight = (conn.snd_max - conn.snd_una) & MASK
        if flight and state is not State.SYN_SENT and state is not State.SYN_RECEIVED:
            # Something is in flight: a retransmission timer must be running, or it hangs.
            assert conn.rto_at is not None or conn.persist_at is not None, (
                f"{w}: {flight} bytes in flight and no retransmission timer")
        if state in (State.SYN_SENT, State.SYN_RECEIVED):
            assert conn.rto_at is not None, f"{w}: handshake without a retransmission timer"
        assert conn.snd_wnd >= 0 and conn.cwnd >= 0, w
        assert 0 <= conn.snd_wscale <= 14 and 0 <= conn.rcv_wscale <= 14, w
        assert conn.snd_mss > 0, w
        sent = (conn.snd_nxt - conn.buf_seq) & MASK
        assert sent < HALF or sent == MASK, f"{w}: SND.NXT before the send buffer"

    # -- the end: can the fuzzed stacks still talk?
    def _make_room(self, need: int = 4) -> None:
        """Under TcpConfig.max_connections, leave room for the fresh connections: the
        application aborts the connections it knows; half-open ones time out."""
        limit = self.config.max_connections - need
        for side, stack in enumerate(self.stacks):
            for cid in list(self.ids[side]):
                if stack.connection_count() <= limit:
                    break
                stack.abort(cid, self.now)
        self.flush()
        for _ in range(20):
            if all(s.connection_count() <= limit for s in self.stacks):
                return
            self.advance(10.0)
        raise AssertionError(f"connections never drop below {limit}: "
                             f"{[s.connection_count() for s in self.stacks]}")

    def fresh_connection_check(self, size: int = 20_000, max_time: float = 400.0) -> None:
        """Each fuzzed stack against a clean one (10.0.0.3): a connection each way
        completes its handshake, moves `size` bytes each way intact, and closes."""
        self.drain_events()
        self._make_room()
        for side in (0, 1):
            self._fresh_connections(side, size, max_time)
            # The other fuzzed stack sat out this run: its timers catch up now.
            self.stacks[1 - side].handle_timers(self.now)
            self.flush()
        self.check()

    def _fresh_connections(self, side: int, size: int, max_time: float) -> None:
        stack = self.stacks[side]
        clean = Stack(CLEAN_ADDR, config=TcpConfig(isn_secret=b"clean", mss=self.config.mss))
        link = Link(stack, clean, seed=side, now=self.now)
        port = LISTEN_PORTS[side]
        listener = stack._listeners.get(port)
        if listener is not None and (listener.max_connections is not None or listener.backlog < 4):
            # The fuzzer made this listener again with limits of its own, which its half-open
            # and live connections may fill: the fresh client would find no room.
            port = FRESH_PORT
        if port not in stack._listeners:
            stack.listen(port)
        clean.listen(9000)
        data = [payload_bytes(100 + side * 4 + i, size) for i in range(4)]
        link.app_b.accept_with(lambda cid, remote: {"source": data[1]})
        link.app_a.accept_with(lambda cid, remote: {"source": data[3]})
        out = link.app_a.open(CLEAN_ADDR, 9000, link.now, source=data[0])
        into = link.app_b.open(stack.address_str, port, link.now, source=data[2])

        def streams():
            # the fuzzed stack's client, the clean one's server for it; the clean stack's
            # client, the fuzzed stack's server for it
            return [out] + link.app_b.all_streams[1:2] + [into] + link.app_a.all_streams[1:2]

        def done():
            s = streams()
            return len(s) == 4 and all(x.finished for x in s)

        ok = link.run_until(done, max_time)
        self.now = link.now
        where = f"{stack.address_str} after fuzzing ({dict(stack.counters)})"
        states = [(x.conn_id, x.state(), x.received, type(x.end).__name__) for x in streams()]
        assert ok, f"{where}: fresh connections did not finish: {states}"
        for x, want in zip(streams(), (data[1], data[0], data[3], data[2])):
            assert x.received == len(want), f"{where}: {x.received} of {len(want)} bytes"
            assert x.digest() == hashlib.sha256(want).hexdigest(), f"{where}: data corrupted"
            assert type(x.end) is ev.ConnectionClosed and x.peer_closed, (
                f"{where}: conn {x.conn_id} ended with {x.end!r}")


# ---------------------------------------------------------------------------- bytes -> operations

class ByteSource:
    """Reads a fuzzer's input as a stream of small integers; zeros once exhausted."""

    def __init__(self, data: bytes):
        self.data = data
        self.i = 0

    def __bool__(self) -> bool:
        return self.i < len(self.data)

    def take(self, n: int) -> bytes:
        chunk = self.data[self.i:self.i + n]
        self.i += n
        return chunk

    def uint(self, nbytes: int) -> int:
        return int.from_bytes(self.take(nbytes), "big")

    def signed16(self) -> int:
        return self.uint(2) - 0x8000 if self else 0

    def small(self, limit: int) -> int:
        return self.uint(1) % limit


_DT = (0.0, 0.0005, 0.001, 0.002, 0.01, 0.04, 0.2, 1.0, 3.0, 30.0, 61.0, 130.0)
# Operation codes by weight: packet operations dominate.
_OPS = ("raw", "crafted", "crafted", "crafted", "crafted", "mutant", "mutant", "mutant",
        "replay", "advance", "advance", "lose", "delay", "send", "recv", "call", "connect",
        "listen", "flood")


def run_op(world: World, src: ByteSource) -> str:
    """Decode one operation from `src` and apply it to `world`; returns its name."""
    op = _OPS[src.uint(1) % len(_OPS)]
    side = src.small(2)
    if op == "raw":
        n = src.uint(2) % 1600
        world.inject_raw(side, src.take(n), verified=bool(n & 1))
    elif op == "crafted":
        pick, flags = src.uint(2), src.uint(1)
        bases = src.uint(1)
        if flags & SYN and not bases & 0x20:
            flags &= ~(FIN | RST)  # SYN+FIN and SYN+RST are dropped by the parser: less often
        seq_delta, ack_delta = src.signed16(), src.signed16()
        window = src.uint(2)
        options = [(src.uint(1), src.uint(4)) for _ in range(src.small(5))]
        plen = src.uint(2) % 3000
        world.crafted(side, pick, flags, bases & 3, seq_delta, (bases >> 2) & 3, ack_delta,
                      window, options, plen if plen < 2000 else plen % 40,
                      verified=bool(bases & 0x10))
    elif op == "mutant":
        pick, how = src.uint(1), src.uint(1)
        muts = [(src.uint(1), src.uint(2), src.uint(4)) for _ in range(1 + how % 3)]
        world.mutant(pick, muts, fix=how % 8 != 7, verified=bool(how & 0x20),
                     as_bytearray=bool(how & 0x40))
    elif op == "replay":
        world.replay(src.uint(1))
    elif op == "advance":
        k = src.uint(1)
        world.tick(_DT[k % len(_DT)] if k < 200 else (k - 200) * 0.01)
    elif op == "lose":
        world.lose(src.uint(1))
    elif op == "delay":
        world.delay(src.uint(1), src.uint(1) * 0.0005)
    elif op == "send":
        world.app_send(side, src.uint(1), src.uint(2) * (1 + src.small(4)))
    elif op == "recv":
        k = src.uint(2)
        world.app_recv(side, src.uint(1), -1 if k < 8192 else k % 5000)
    elif op == "call":
        world.app_call(side, src.uint(1), src.uint(1))
    elif op == "connect":
        world.app_connect(side, src.uint(2))
    elif op == "flood":
        world.syn_flood(side, src.uint(1), 1 + src.small(8))
    else:
        world.app_listen(side, src.uint(1))
    return op


def world_from(src: ByteSource) -> World:
    """A World whose configuration is the first bytes of the input."""
    k, k2 = src.uint(1), src.uint(1)
    wrap = src.uint(2) if k & 1 else None
    extra = {"syn_backlog": (256, 2, 5)[k2 % 3], "backlog": (128, 1, 3)[(k2 >> 2) % 3],
             "syn_cookies": not k2 & 0x80}
    if k2 & 0x10:
        extra.update(keepalive=True, keepalive_idle=3.0, keepalive_interval=1.0,
                     keepalive_probes=3)
    if k2 & 0x20:
        extra.update(user_timeout=20.0)
    if k2 & 0x40:
        extra.update(max_connections=10)
    return World(mss=(536, 1460, 100)[(k >> 1) % 3],
                 send_buffer=(64 * 1024, 5000, 256 * 1024)[(k >> 3) % 3],
                 receive_buffer=(64 * 1024, 3000, 256 * 1024)[(k >> 5) % 3],
                 nagle=not k & 0x80, wrap=wrap, **extra)


def run_ops(data: bytes, *, check: bool = True, max_ops: int = 400) -> World:
    """The fuzz target: a World from the input's first bytes, then its operations."""
    src = ByteSource(data)
    world = world_from(src)
    for _ in range(max_ops):
        if not src:
            break
        run_op(world, src)
        if check:
            world.check()
    return world


# ---------------------------------------------------------------------------- hypothesis: stateful

sides = st.integers(0, 1)
picks = st.integers(0, 2**16 - 1)
options_st = st.lists(st.tuples(st.integers(0, OPTION_KINDS - 1), st.integers(0, MASK)),
                      max_size=5)
mutations_st = st.lists(st.tuples(st.integers(0, MUTATION_KINDS - 1), st.integers(0, 2**16 - 1),
                                  st.integers(0, MASK)), min_size=1, max_size=4)
# Deltas: mostly near the expected value (in-window paths), sometimes anywhere.
deltas = st.one_of(st.integers(-3, 3), st.integers(-70_000, 70_000), st.integers(0, MASK))
flags_st = st.one_of(st.sampled_from([ACK, ACK | PSH, ACK | FIN, FIN, RST, RST | ACK, SYN,
                                      SYN | ACK, 0, ACK | URG]), st.integers(0, 255))
windows = st.one_of(st.sampled_from([0, 1, 100, 65535]), st.integers(0, 65535))


class StackFuzz(RuleBasedStateMachine):
    """Random packets, time and application calls against two live stacks."""

    def __init__(self):
        super().__init__()
        self.world: World | None = None  # made by setup(), which runs first

    @initialize(k=st.integers(0, 255), k2=st.integers(0, 255), wrap=st.integers(0, 5000))
    def setup(self, k, k2, wrap):
        self.world = world_from(ByteSource(bytes([k, k2]) + wrap.to_bytes(2, "big")))
        note(f"{self.world.config}, wrap={wrap if k & 1 else None}")

    @rule(side=sides, data=st.binary(max_size=120), verified=st.booleans())
    def random_bytes(self, side, data, verified):
        self.world.inject_raw(side, data, verified)

    @rule(side=sides, data=st.binary(min_size=20, max_size=80))
    def random_bytes_ipv4_tcp_prefix(self, side, data):
        """Random bytes behind a plausible first byte and protocol, so the parser goes deep."""
        pkt = bytearray(data)
        pkt[0], pkt[9] = 0x45, 6
        pkt[16:20] = self.world.addrs[side].to_bytes(4, "big")
        pkt[2:4] = len(pkt).to_bytes(2, "big")
        self.world.inject_raw(side, bytes(fix_checksums(pkt)))

    @rule(side=sides, pick=picks, flags=flags_st, seq_base=st.integers(0, 3), seq_delta=deltas,
          ack_base=st.integers(0, 3), ack_delta=deltas, window=windows, options=options_st,
          payload_len=st.one_of(st.just(0), st.integers(1, 40), st.integers(0, 3000)),
          verified=st.booleans())
    def crafted_segment(self, side, pick, flags, seq_base, seq_delta, ack_base, ack_delta,
                        window, options, payload_len, verified):
        self.world.crafted(side, pick, flags, seq_base, seq_delta, ack_base, ack_delta, window,
                           options, payload_len, verified)

    @rule(pick=picks, mutations=mutations_st, fix=st.booleans(), verified=st.booleans(),
          as_bytearray=st.booleans())
    def mutated_packet(self, pick, mutations, fix, verified, as_bytearray):
        self.world.mutant(pick, mutations, fix, verified, as_bytearray)

    @rule(side=sides, pick=picks, n=st.integers(1, 8))
    def syn_flood(self, side, pick, n):
        self.world.syn_flood(side, pick, n)

    @rule(pick=picks)
    def replay(self, pick):
        self.world.replay(pick)

    @rule(pick=picks)
    def lose(self, pick):
        self.world.lose(pick)

    @rule(pick=picks, extra=st.floats(0, 0.5))
    def delay(self, pick, extra):
        self.world.delay(pick, extra)

    @rule(dt=st.one_of(st.sampled_from(_DT), st.floats(0, 5)))
    def advance(self, dt):
        self.world.tick(dt)

    @rule(side=sides, pick=picks, n=st.one_of(st.integers(0, 2000), st.integers(0, 300_000)))
    def send(self, side, pick, n):
        self.world.app_send(side, pick, n)

    @rule(side=sides, pick=picks, max_bytes=st.one_of(st.just(-1), st.integers(0, 5000)))
    def recv(self, side, pick, max_bytes):
        self.world.app_recv(side, pick, max_bytes)

    @rule(side=sides, pick=picks, what=st.integers(0, 7))
    def call(self, side, pick, what):
        self.world.app_call(side, pick, what)

    @rule(side=sides, pick=picks)
    def connect(self, side, pick):
        self.world.app_connect(side, pick)

    @rule(side=sides, pick=picks)
    def listen(self, side, pick):
        self.world.app_listen(side, pick)

    @invariant()  # checked only once setup() has run (hypothesis: check_during_init=False)
    def invariants(self):
        self.world.check()

    def teardown(self):
        if self.world is not None:  # None only if setup() itself failed
            self.world.fresh_connection_check()


StackFuzz.TestCase.settings = settings(
    stateful_step_count=50, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
TestStackFuzz = StackFuzz.TestCase


# ---------------------------------------------------------------------------- hypothesis: receive()

def _fresh_world() -> World:
    return World(initial_data=5000)


def _templates(world: World) -> list[bytes]:
    """Valid packets of every kind the stack handles, addressed to B."""
    b = world.stacks[1]
    out = [bytes(p) for to, p in world.recent if to == 1]
    conns = [c for c in world.live(1) if type(c) is Connection]
    for conn in conns:
        out.append(bytes(tcp_packet(conn.remote, B_INT, conn.rport, conn.lport, conn.rcv_nxt,
                                    conn.snd_una, ACK | PSH, 5000, payload=b"x" * 100)))
        out.append(bytes(tcp_packet(conn.remote, B_INT, conn.rport, conn.lport, conn.rcv_nxt,
                                    0, RST, 0)))
    out.append(bytes(tcp_packet(A_INT, B_INT, 41000, 80, 7, 0, SYN, 65535,
                                render_options([(2, 1460), (3, 7), (4, 0), (6, 1)]))))
    out.append(bytes(tcp_packet(A_INT, B_INT, 41000, 9, 7, 0, SYN, 65535)))
    out.append(bytes(icmp_echo(A_INT, B_INT)))
    out.append(bytes(udp_packet(A_INT, B_INT)))
    assert b.address == B_INT
    return out


def _receive_one(world: World, packet: bytes, verified: bool) -> None:
    """receive() one packet into B: no exception; a drop moves exactly one drop counter,
    by the parser's reason when the parser refuses it, and a dropped packet is not answered."""
    b = world.stacks[1]
    world.flush()
    assert b.packets_to_send(world.now) == []
    drops = Counter(b.drops)
    counters = Counter(b.counters)
    try:
        parse_packet(packet, not verified)
        reason = None
    except MalformedPacket as exc:
        reason = exc.reason.value
    b.receive(packet, world.now, checksum_verified=verified)
    delta = {k: v - drops.get(k, 0) for k, v in b.drops.items() if v != drops.get(k, 0)}
    if reason == "fragment":
        # Into reassembly (counted) or refused by it (one drop, by a fragment-* reason); a
        # datagram it completes is received anew and may be answered.
        if delta:
            assert len(delta) == 1 and next(iter(delta)).startswith("fragment"), delta
        else:
            assert b.counters["fragments"] == counters["fragments"] + 1
        world.flush()
        world.check()
        return
    if reason is not None:
        assert delta == {reason: 1}, f"parser says {reason}, drops moved by {delta}"
    else:
        assert not delta or (len(delta) == 1 and list(delta.values()) == [1]), delta
    if delta:
        assert b.packets_to_send(world.now) == [], f"a dropped packet ({delta}) was answered"
        assert Counter(b.counters) == counters, "a dropped packet moved a counter"
        assert b.next_event() is None, "a dropped packet made an event"
    world.flush()
    world.check()


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=200), verified=st.booleans(), ipv4=st.booleans())
def test_random_bytes_never_raise(data, verified, ipv4):
    world = _fresh_world()
    pkt = bytearray(data)
    if ipv4 and len(pkt) >= 20:  # get past the first checks often enough to reach deeper ones
        pkt[0] = 0x45
        pkt[16:20] = B_INT.to_bytes(4, "big")
        fix_checksums(pkt)
    _receive_one(world, bytes(pkt), verified)
    world.fresh_connection_check(size=2000)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pick=st.integers(0, 1000), mutations=mutations_st, fix=st.booleans(),
       verified=st.booleans())
def test_mutated_packets_never_raise(pick, mutations, fix, verified):
    world = _fresh_world()
    templates = _templates(world)
    pkt = mutate(templates[pick % len(templates)], mutations)
    if fix:
        fix_checksums(pkt)
    note(f"packet: {bytes(pkt).hex()}")
    _receive_one(world, bytes(pkt), verified)
    world.advance(1.0)
    world.check()


def test_bytes_front_end_runs_and_checks():
    """The decoder scripts/fuzz.py uses: random inputs run, and the world still works."""
    rng = random.Random(1)
    fed = 0
    for i in range(8):
        world = run_ops(rng.randbytes(rng.randrange(50, 1500)))
        fed += sum(world.fed.values())
        if i % 4 == 0:
            world.fresh_connection_check(size=3000)
    assert fed > 100


@pytest.mark.timeout(360)  # past the subprocess's own 300 s
def test_fuzz_script_random_engine_runs():
    """scripts/fuzz.py (random engine, a few thousand packets) runs and reports."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "scripts" / "fuzz.py"
    proc = subprocess.run([sys.executable, str(script), "--engine", "random", "--packets",
                           "3000", "--seconds", "60", "--seed", "5", "--check-every", "5"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "packets fed to Stack.receive" in proc.stdout, proc.stdout
    assert "fresh-connection checks passed: 0" not in proc.stdout, proc.stdout


def test_wrap_places_the_isn_near_the_top():
    world = World(wrap=1000)
    a = world.stacks[0]
    conn = next(c for c in a._by_id.values() if type(c) is Connection and c.lport == 40000)
    assert (2**32 - conn.iss) % 2**32 <= 1100, conn.iss
    world.tick(5.0)
    world.check()
    world.fresh_connection_check(size=5000)


# ---------------------------------------------------------------------------- regressions

def _conn_of(world: World, side: int, lport: int) -> Connection:
    return next(c for c in world.live(side) if type(c) is Connection and c.lport == lport)


def test_desynchronized_peers_do_not_ack_storm():
    """Found by scripts/fuzz.py. B took 21 bytes "from" A that A never sent (an injected
    segment at RCV.NXT): B's ACK now acknowledges data A never sent, A answers it with an
    ACK, which is behind B's RCV.NXT, so B answers that with an ACK, and so on at wire
    speed forever. Both answers stay (RFC 9293, RFC 5961 5.2), but for segments without
    data they are rate-limited per connection, as Linux does (tcp_invalid_ratelimit)."""
    world = World(initial_data=0)
    world.tick(1.0)
    b_conn = _conn_of(world, 1, 80)
    pick = world.live(1).index(b_conn)
    world.crafted(1, pick, ACK | PSH, 0, 0, 0, 0, 65535, (), payload_len=21)
    assert b_conn.rcv_nxt == (_conn_of(world, 0, 40000).snd_max + 21) & MASK
    before = world.fed["wire"]
    world.tick(10.0)
    world.check()
    assert world.fed["wire"] - before <= 2 * (10 / 0.5) + 4, (
        f"{world.fed['wire'] - before} packets in 10 s between two idle stacks")
    world.fresh_connection_check(size=3000)


def test_fin_just_past_a_full_window_keeps_rcv_adv_at_rcv_nxt():
    """Found by scripts/fuzz.py. Data that fills the receive window exactly, with a FIN:
    the FIN sits one past the right edge. It is taken (as Linux takes it), and then
    RCV.NXT was one beyond RCV.ADV, the edge the engine assumes never falls behind."""
    world = World(receive_buffer=3000, initial_data=0)
    world.tick(1.0)
    b_conn = _conn_of(world, 1, 80)
    assert (b_conn.rcv_adv - b_conn.rcv_nxt) & MASK == 3000
    pick = world.live(1).index(b_conn)
    world.crafted(1, pick, ACK | PSH | FIN, 0, 0, 0, 0, 65535, (), payload_len=3000)
    assert b_conn.state is State.CLOSE_WAIT and len(b_conn.rcvbuf) == 3000
    world.check()
    assert len(world.stacks[1].recv(b_conn.id)) == 3000
    world.flush()
    world.tick(1.0)
    world.check()


def test_fresh_check_avoids_a_listener_the_fuzzer_limited():
    """Found by StackFuzz. B's listener on 80 made again with max_connections=1, which A's
    new connection then fills: the fresh check's client found no room and timed out."""
    world = World()
    world.app_connect(0, 0)  # A connects to B:80 (SYN-SENT)
    world.app_listen(1, 0)  # B unlistens 80
    world.app_listen(1, 1120)  # and listens again: backlog 1, max_connections 1
    assert world.stacks[1]._listeners[80].max_connections == 1
    world.tick(0.01)
    assert not world.stacks[1]._listeners[80].has_room()
    world.fresh_connection_check()


def test_fresh_check_avoids_a_listener_a_half_open_connection_fills():
    """A spoofed SYN's half-open entry fills A's re-made listener (max_connections=1), and
    no abort by the application can remove it: the fresh check must not wait for room."""
    world = World()
    world.app_listen(0, 0)  # A unlistens 81
    world.app_connect(1, 0)
    world.app_listen(0, 160)  # and listens again: backlog 1, max_connections 1
    world.syn_flood(0, 0, 1)
    assert not world.stacks[0]._listeners[81].has_room()
    world.fresh_connection_check()


def test_app_calls_reach_their_api():
    """app_call's keepalive and user-timeout call set_keepalive and set_user_timeout (they
    were once taken for close-both, and a missing call silently became set_nodelay)."""
    world = World()
    conn = _conn_of(world, 0, 40000)
    pick = next(p for p in range(1000)
                if world.pick_id(0, p) == conn.id and p & 1 and (p >> 1) % 4 == 1)
    world.app_call(0, pick, 6)  # on
    assert conn.keepalive and conn.state is State.ESTABLISHED
    world.app_call(0, pick, 7)  # 0.5 s
    assert conn.user_timeout == 0.5 and conn.state is State.ESTABLISHED
    assert world.ops["keepalive"] == world.ops["user-timeout"] == 1
    world.check()
