"""Helpers for unit tests of the TCP engine: one Stack, a fully scripted peer.

The peer is not a TCP implementation: it is a segment factory that remembers
the numbers it last used, so a test can write the ladder it expects, segment
by segment, and assert on every flag, sequence number, acknowledgment number
and window the stack sends back.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

import usertcp.stack as stack_module
from usertcp.stack import Stack
from usertcp.tcp import StateChanged, TcpConfig
from usertcp.wire import ACK, FIN, PSH, RST, SYN, addr_to_int, build_options, build_segment
from usertcp.wire.packet import parse_packet
from usertcp.wire.tcp import Segment, flags_str

__all__ = [
    "ACK",
    "FIN",
    "LOCAL",
    "OTHER",
    "OUR_ISS",
    "PEER_ISS",
    "PSH",
    "REMOTE",
    "RST",
    "SYN",
    "IsnControl",
    "Peer",
    "S",
    "drain",
    "events",
    "expect",
    "make_stack",
    "names",
    "open_active",
    "open_passive",
    "our_mss",
    "seq_add",
    "transitions",
]

LOCAL = "10.0.0.1"
REMOTE = "10.0.0.2"
FAMILIES = {4: ("10.0.0.1", "10.0.0.2", "10.0.0.3"), 6: ("fd00::1", "fd00::2", "fd00::3")}
OTHER = "10.0.0.3"  # a third address of the family, for tests that need another peer


def our_mss(config_mss: int = 1460) -> int:
    """The MSS the stack offers for TcpConfig.mss: 20 less over IPv6 (a longer header)."""
    return config_mss - (20 if ":" in LOCAL else 0)


@pytest.fixture(params=[4, 6], ids=["ipv4", "ipv6"])
def family(request, monkeypatch):
    """Run a test's ladder over IPv4 and again over IPv6: LOCAL and REMOTE (read when used,
    so a test module names them through tcp_helpers) become the family's pair."""
    import tcp_helpers

    local, remote, other = FAMILIES[request.param]
    monkeypatch.setattr(tcp_helpers, "LOCAL", local)
    monkeypatch.setattr(tcp_helpers, "REMOTE", remote)
    monkeypatch.setattr(tcp_helpers, "OTHER", other)
    return request.param
MASK = 0xFFFFFFFF
SECRET = b"unit-test-secret"


def seq_add(a: int, n: int) -> int:
    return (a + n) & MASK


def make_stack(**config) -> Stack:
    """A stack for ladders. SACK and timestamps are off unless asked for, so that the
    byte-exact ladders written before them keep their meaning; test_tcp_sack.py and
    test_tcp_timestamps.py turn them on. Congestion control is NewReno, whose arithmetic
    the ladders spell out; test_tcp_congestion.py and test_tcp_recovery.py test CUBIC."""
    config.setdefault("isn_secret", SECRET)
    config.setdefault("congestion", "newreno")
    config.setdefault("sack", False)
    config.setdefault("timestamps", False)
    return Stack(LOCAL, config=TcpConfig(**config))


class IsnControl:
    """Replaces usertcp.stack.initial_sequence_number for one test.

    `set(x)` makes every following connection start at ISN x (`queue` gives a
    list used one per connection); with nothing set the real generator runs.
    Calls are recorded (4-tuple and time), so a test can see what was asked.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.real = stack_module.initial_sequence_number
        self.fixed: int | None = None
        self.pending: list[int] = []
        self.calls: list[tuple] = []
        monkeypatch.setattr(stack_module, "initial_sequence_number", self)

    def set(self, isn: int) -> None:
        self.fixed = isn & MASK

    def queue(self, *isns: int) -> None:
        self.pending.extend(i & MASK for i in isns)

    def __call__(self, secret, local, lport, remote, rport, now):
        self.calls.append((local, lport, remote, rport, now))
        if self.pending:
            return self.pending.pop(0)
        if self.fixed is not None:
            return self.fixed
        return self.real(secret, local, lport, remote, rport, now)


@dataclass
class S:
    """A pattern for one segment the stack sent; fields left None are not checked.

    `flags` is an int (SYN | ACK) or tcpdump letters ("S.", "F.", "P.", "R.").
    `wscale=False` asserts that no window scale option is present.
    `ts` is (TSval, TSecr), True (present) or False (absent); `sack` the SACK blocks as
    a list of (left, right), or False (none); `sack_perm` True or False (SACK-permitted).
    """

    flags: int | str | None = None
    seq: int | None = None
    ack: int | None = None
    win: int | None = None
    data: bytes | None = None
    len: int | None = None
    mss: int | None | bool = None
    wscale: int | None | bool = None
    sport: int | None = None
    dport: int | None = None
    ts: tuple[int, int] | bool | None = None
    sack: list[tuple[int, int]] | bool | None = None
    sack_perm: bool | None = None

    def check(self, seg: Segment, index: int) -> None:
        problems = []
        got_flags = flags_str(seg.flags)
        want_flags = flags_str(self.flags) if isinstance(self.flags, int) else self.flags
        if want_flags is not None and got_flags != want_flags:
            problems.append(f"flags {got_flags!r} != {want_flags!r}")
        for name, got in (("seq", seg.seq), ("ack", seg.ack), ("win", seg.window),
                          ("len", len(seg.payload)), ("sport", seg.sport),
                          ("dport", seg.dport)):
            want = getattr(self, name)
            if want is not None and got != (want & MASK if name in ("seq", "ack") else want):
                problems.append(f"{name} {got} != {want & MASK if name in ('seq', 'ack') else want}")
        if self.data is not None and bytes(seg.payload) != self.data:
            problems.append(f"payload {bytes(seg.payload)[:40]!r}... != {self.data[:40]!r}...")
        for name, got in (("mss", seg.mss), ("wscale", seg.wscale)):
            want = getattr(self, name)
            if want is False:
                if got is not None:
                    problems.append(f"{name} option present ({got}), expected none")
            elif want is not None and got != want:
                problems.append(f"{name} {got} != {want}")
        got_ts = None if seg.ts_val is None else (seg.ts_val, seg.ts_ecr)
        if self.ts is True or self.ts is False:
            if (got_ts is not None) != self.ts:
                problems.append(f"timestamps {got_ts} (expected {'some' if self.ts else 'none'})")
        elif self.ts is not None and got_ts != tuple(x & MASK for x in self.ts):
            problems.append(f"timestamps {got_ts} != {tuple(x & MASK for x in self.ts)}")
        got_sack = [tuple(b) for b in seg.sack_blocks] if seg.sack_blocks else []
        if self.sack is False:
            if got_sack:
                problems.append(f"SACK blocks {got_sack}, expected none")
        elif self.sack is not None:
            want_sack = [(a & MASK, b & MASK) for a, b in self.sack]
            if got_sack != want_sack:
                problems.append(f"SACK blocks {got_sack} != {want_sack}")
        if self.sack_perm is not None and seg.sack_permitted != self.sack_perm:
            problems.append(f"SACK-permitted {seg.sack_permitted} != {self.sack_perm}")
        if problems:
            raise AssertionError(f"segment {index}: {seg!r}: " + "; ".join(problems))


def drain(stack: Stack, now: float) -> list[Segment]:
    """Everything the stack sends at `now`, parsed, with no assertion."""
    out = []
    for packet in stack.packets_to_send(now):
        seg = parse_packet(bytes(packet))
        assert isinstance(seg, Segment), seg
        assert seg.src == addr_to_int(LOCAL)
        seg.payload = bytes(seg.payload)
        out.append(seg)
    return out


def expect(stack: Stack, now: float, *ladder: S) -> list[Segment]:
    """Assert the stack sends exactly `ladder` at `now` (nothing, if empty)."""
    out = drain(stack, now)
    assert len(out) == len(ladder), f"expected {len(ladder)} segments, got {out!r}"
    for i, (seg, pattern) in enumerate(zip(out, ladder)):
        pattern.check(seg, i)
    return out


def events(stack: Stack) -> list:
    out = []
    while (e := stack.next_event()) is not None:
        out.append(e)
    return out


def transitions(evs: list) -> list[tuple[str, str]]:
    return [(e.old.value, e.new.value) for e in evs if isinstance(e, StateChanged)]


def names(evs: list) -> list[str]:
    """Event names, StateChanged written as 'OLD->NEW'."""
    return [f"{e.old.value}->{e.new.value}" if isinstance(e, StateChanged) else type(e).__name__
            for e in evs]


class Peer:
    """The scripted remote end. Tracks `seq` (its SND.NXT) and `ack` (its RCV.NXT).

    `send` builds one segment, hands it to the stack and advances `seq` by the
    sequence space it occupies (unless seq was given explicitly and
    `advance=False`). Defaults: ACK number = self.ack when ACK is set.
    """

    def __init__(self, stack: Stack, *, port: int = 40000, stack_port: int = 80,
                 addr: str | None = None, iss: int = 5000, window: int = 65535):
        self.stack = stack
        self.addr = addr_to_int(REMOTE if addr is None else addr)  # REMOTE as `family` set it
        self.port = port
        self.stack_port = stack_port
        self.iss = iss & MASK
        self.seq = self.iss
        self.ack = 0
        self.window = window
        # When ts_val is set every segment carries TSopt (ts_val, ts_ecr), SYNs included.
        self.ts_val: int | None = None
        self.ts_ecr = 0

    def options(self, sack=None) -> bytes:
        """TSopt (when ts_val is set) and SACK blocks, as a peer sends them on an ACK."""
        ts = None if self.ts_val is None else (self.ts_val & MASK, self.ts_ecr & MASK)
        if ts is None and not sack:
            return b""
        return build_options(timestamp=ts, sack_blocks=[(a & MASK, b & MASK) for a, b in sack]
                             if sack else None)

    def packet(self, flags: int, *, seq: int | None = None, ack: int | None = None,
               window: int | None = None, data: bytes = b"", options: bytes | None = None,
               sport: int | None = None, dport: int | None = None, sack=None) -> bytes:
        seq = self.seq if seq is None else seq & MASK
        if ack is None:
            ack = self.ack if flags & ACK else 0
        if options is None:
            options = self.options(sack)
        return build_segment(self.addr, self.stack.address, sport or self.port,
                             dport or self.stack_port, seq, ack & MASK, flags,
                             self.window if window is None else window, options, data)

    def send(self, flags: int, now: float, *, seq: int | None = None, ack: int | None = None,
             window: int | None = None, data: bytes = b"", options: bytes | None = None,
             advance: bool = True, **kw) -> None:
        start = self.seq if seq is None else seq & MASK
        self.stack.receive(self.packet(flags, seq=start, ack=ack, window=window, data=data,
                                       options=options, **kw), now)
        if advance:
            used = len(data) + (1 if flags & SYN else 0) + (1 if flags & FIN else 0)
            end = (start + used) & MASK
            if ((end - self.seq) & MASK) < (1 << 31):
                self.seq = end

    def syn(self, now: float, *, mss: int | None = 1460, wscale: int | None = None,
            window: int | None = None, sack_permitted: bool = False,
            ts: int | None = None) -> None:
        """The peer's SYN; `ts` makes it (and every segment after) carry TSopt."""
        self.seq = self.iss
        if ts is not None:
            self.ts_val, self.ts_ecr = ts & MASK, 0
        self.send(SYN, now, window=window, options=build_options(
            mss=mss, wscale=wscale, sack_permitted=sack_permitted,
            timestamp=None if ts is None else (ts & MASK, 0)))

    def syn_ack(self, now: float, ack: int, *, mss: int | None = 1460,
                wscale: int | None = None, window: int | None = None,
                sack_permitted: bool = False, ts: int | None = None,
                ts_ecr: int | None = None) -> None:
        self.seq = self.iss
        self.ack = ack & MASK
        if ts is not None:
            self.ts_val = ts & MASK
            self.ts_ecr = self.ts_ecr if ts_ecr is None else ts_ecr & MASK
        self.send(SYN | ACK, now, window=window, options=build_options(
            mss=mss, wscale=wscale, sack_permitted=sack_permitted,
            timestamp=None if ts is None else (self.ts_val, self.ts_ecr)))

    def took(self, seg: Segment) -> None:
        """Advance RCV.NXT past a segment the stack sent (in order)."""
        self.ack = (seg.seq + seg.seg_len) & MASK





# ---------------------------------------------------------------- opened connections

OUR_ISS = 2**32 - 3  # our SYN at 2**32-3: SND.NXT wraps after 2 data bytes
PEER_ISS = 2**32 - 10  # the peer's: wraps after 9 data bytes


def open_passive(isn: IsnControl, *, stack: Stack | None = None, our_iss: int = OUR_ISS,
                 peer_iss: int = PEER_ISS, mss: int | None = 1460, wscale: int | None = None,
                 window: int = 65535, now: float = 0.0, rtt: float = 0.5, port: int = 40000,
                 sack_permitted: bool = False, ts: int | None = None, **config):
    """LISTEN on 80, peer SYN at `now`, its ACK at `now + rtt`. Returns (stack, peer, id).

    The handshake's RTT sample is `rtt`: 0.5 gives SRTT 0.5, RTTVAR 0.25, RTO 1.5.
    `sack_permitted` and `ts` (the peer's first TSval) are what the peer's SYN offers;
    with `ts`, the peer echoes our TSval from then on (peer.ts_ecr).
    """
    from usertcp.tcp import ConnectionAccepted

    if stack is None:
        stack = make_stack(**config)
        stack.listen(80)
    peer = Peer(stack, port=port, iss=peer_iss, window=window)
    isn.set(our_iss)
    peer.syn(now, mss=mss, wscale=wscale, sack_permitted=sack_permitted, ts=ts)
    [synack] = expect(stack, now, S("S.", seq=our_iss, ack=peer_iss + 1))
    peer.took(synack)
    if synack.ts_val is not None:
        peer.ts_ecr = synack.ts_val
    peer.send(ACK, now + rtt)
    expect(stack, now + rtt)
    accepted = [e for e in events(stack) if isinstance(e, ConnectionAccepted)]
    assert len(accepted) == 1
    return stack, peer, accepted[0].conn_id


def open_active(isn: IsnControl, *, stack: Stack | None = None, our_iss: int = OUR_ISS,
                peer_iss: int = PEER_ISS, mss: int | None = 1460, wscale: int | None = None,
                window: int = 65535, now: float = 0.0, rtt: float = 0.5,
                local_port: int = 50000, sack_permitted: bool = False, ts: int | None = None,
                **config):
    """connect() at `now`, the peer's SYN-ACK at `now + rtt`. Returns (stack, peer, id).

    `sack_permitted` and `ts` (the peer's first TSval) are what the SYN-ACK carries; `ts`
    only if our SYN offered timestamps, as a real peer would.
    """
    from usertcp.tcp import Connected

    if stack is None:
        stack = make_stack(**config)
    isn.set(our_iss)
    cid = stack.connect(REMOTE, 80, now, local_port=local_port)
    peer = Peer(stack, port=80, stack_port=local_port, iss=peer_iss, window=window)
    [syn] = expect(stack, now, S("S", seq=our_iss))
    peer.took(syn)
    if syn.ts_val is None:
        ts = None
    peer.syn_ack(now + rtt, ack=our_iss + 1, mss=mss, wscale=wscale,
                 sack_permitted=sack_permitted and syn.sack_permitted, ts=ts,
                 ts_ecr=syn.ts_val)
    expect(stack, now + rtt, S(".", seq=our_iss + 1, ack=peer_iss + 1))
    assert any(isinstance(e, Connected) for e in events(stack))
    return stack, peer, cid


def pump(a: Stack, b: Stack, now: float) -> None:
    """Carry packets between two engines, both ways, until neither has any to send."""
    for _ in range(50):
        moved = False
        for src, dst in ((a, b), (b, a)):
            for packet in src.packets_to_send(now):
                dst.receive(packet, now)
                moved = True
        if not moved:
            return
    raise AssertionError("the two stacks never went quiet")
