"""The TUN steering program (usertcp.phy.steering) and the workers' share of ephemeral ports.

The bytecode runs here on a small interpreter of the eBPF instructions it uses, and must agree
with `queue_for`, the same rule in Python; the integration tests run it in the kernel.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from usertcp.phy import steering
from usertcp.phy.steering import INSN, queue_for, steering_program
from usertcp.stack import NoFreePort, Stack
from usertcp.tcp.config import TcpConfig
from usertcp.wire.tcp import SYN

EPHEMERAL = (32768, 60999)
M64, M32 = (1 << 64) - 1, (1 << 32) - 1


class _OutOfBounds(Exception):
    pass


def run_bpf(program: bytes, packet: bytes) -> int:
    """What the kernel computes for `packet` (skb data = the IP header), bounded in steps."""
    insns = [INSN.unpack_from(program, i) for i in range(0, len(program), INSN.size)]
    reg = [0] * 11
    pc = 0

    def load(offset: int, code: int) -> int:
        size = {steering.B: 1, steering.H: 2, steering.W: 4}[code & 0x18]
        if offset < 0 or offset + size > len(packet):
            raise _OutOfBounds
        return int.from_bytes(packet[offset:offset + size], "big")

    for _ in range(10 * len(insns)):  # no loops in the program: each runs at most once
        code, regs, off, imm = insns[pc]
        dst, src = regs & 15, regs >> 4
        pc += 1
        cls, op = code & 7, code & 0xF0
        operand = reg[src] if code & steering.X else imm & M64
        if cls == steering.LD:
            base = 0 if code & 0xE0 == steering.ABS else reg[src]
            try:
                reg[0] = load((base + imm) & M32, code)
            except _OutOfBounds:
                return 0  # a failed packet load ends the program with 0
            reg[1:6] = [0] * 5  # the loads clobber r1-r5
        elif cls in (steering.ALU, steering.ALU64):
            mask = M64 if cls == steering.ALU64 else M32
            a, b = reg[dst] & mask, operand & mask
            result = {steering.MOV: b, steering.ADD: a + b, steering.MUL: a * b,
                      steering.AND: a & b, steering.OR: a | b, steering.XOR: a ^ b,
                      steering.LSH: a << (b & 63), steering.RSH: a >> (b & 63),
                      steering.MOD: a % b if b else a}[op]
            reg[dst] = result & mask
        elif cls == steering.JMP:
            if op == steering.EXIT:
                return reg[0]
            taken = {steering.JA: True, steering.JEQ: reg[dst] == operand,
                     steering.JNE: reg[dst] != operand, steering.JGT: reg[dst] > operand,
                     steering.JLT: reg[dst] < operand}[op]
            if taken:
                pc += off
        else:
            raise AssertionError(f"unexpected instruction class {cls}")
    raise AssertionError("the program did not end")


def ipv4_tcp(src: str, sport: int, dport: int, *, ihl: int = 5, frag: int = 0,
             proto: int = 6) -> bytes:
    header = bytearray(ihl * 4)
    header[0] = 0x40 | ihl
    header[6:8] = frag.to_bytes(2, "big")
    header[9] = proto
    header[12:16] = bytes(int(x) for x in src.split("."))
    header[16:20] = bytes([10, 7, 0, 2])
    return bytes(header) + struct.pack("!HH", sport, dport) + bytes(16)


def ipv6_tcp(src_low: int, sport: int, dport: int, *, next_header: int = 6) -> bytes:
    header = bytearray(40)
    header[0] = 0x60
    header[6] = next_header
    header[20:24] = src_low.to_bytes(4, "big")
    return bytes(header) + struct.pack("!HH", sport, dport) + bytes(16)


PROGRAM2 = steering_program(2, EPHEMERAL)


def test_program_shape() -> None:
    assert len(PROGRAM2) % INSN.size == 0
    insns = [INSN.unpack_from(PROGRAM2, i) for i in range(0, len(PROGRAM2), INSN.size)]
    assert insns[-1][0] == steering.JMP | steering.EXIT
    for index, (code, _regs, off, _imm) in enumerate(insns):
        if code & 7 == steering.JMP and code & 0xF0 != steering.EXIT:
            assert 0 <= index + 1 + off < len(insns), f"jump at {index} leaves the program"
    with pytest.raises(ValueError, match="queues"):
        steering_program(0, EPHEMERAL)


def test_active_open_replies_go_to_the_port_s_queue() -> None:
    # The kernel answers from its port 80 to usertcp's ephemeral port: queue = port % N.
    for queues in (2, 3, 4):
        program = steering_program(queues, EPHEMERAL)
        for port in (32768, 32769, 40001, 60998, 60999):
            packet = ipv4_tcp("10.7.0.1", 80, port)
            assert run_bpf(program, packet) == port % queues
            assert run_bpf(program, ipv6_tcp(1, 443, port)) == port % queues


def test_passive_opens_spread_even_kernel_ports() -> None:
    # Linux's connect() prefers even ports: sport % 2 would put all on queue 0.
    seen = [run_bpf(PROGRAM2, ipv4_tcp("10.7.0.1", sport, 7)) for sport in range(40000, 40400, 2)]
    assert 60 <= seen.count(0) <= 140 and seen.count(0) + seen.count(1) == 200
    # The same flow always hashes alike, whatever the packet's other bytes.
    assert len({run_bpf(PROGRAM2, ipv4_tcp("10.7.0.1", 41234, 7, ihl=i)) for i in (5, 6, 15)}) == 1


def test_what_carries_no_ports_goes_to_queue_0() -> None:
    program = steering_program(4, EPHEMERAL)
    assert run_bpf(program, ipv4_tcp("10.7.0.1", 80, 40001, proto=17)) == 0  # UDP
    assert run_bpf(program, ipv4_tcp("10.7.0.1", 80, 40001, proto=1)) == 0  # ICMP
    assert run_bpf(program, ipv4_tcp("10.7.0.1", 80, 40001, frag=185)) == 0  # later fragment
    assert run_bpf(program, ipv6_tcp(1, 80, 40001, next_header=0)) == 0  # hop-by-hop first
    assert run_bpf(program, ipv4_tcp("10.7.0.1", 80, 40001)[:21]) == 0  # truncated
    assert run_bpf(program, b"\x50" + bytes(40)) == 0  # not IP
    # A first fragment (MF set, offset 0) still has its ports.
    assert run_bpf(program, ipv4_tcp("10.7.0.1", 80, 40001, frag=0x2000)) == 1


@given(version=st.sampled_from([4, 6]), queues=st.integers(1, 8),
       sport=st.integers(0, 65535), dport=st.integers(0, 65535),
       address=st.integers(0, M32), ihl=st.integers(5, 15),
       cut=st.one_of(st.none(), st.integers(0, 80)))
def test_bytecode_agrees_with_queue_for(version, queues, sport, dport, address, ihl, cut) -> None:
    if version == 4:
        packet = ipv4_tcp(".".join(str(b) for b in address.to_bytes(4, "big")), sport, dport,
                          ihl=ihl)
    else:
        packet = ipv6_tcp(address, sport, dport)
    if cut is not None:
        packet = packet[:cut]
    program = steering_program(queues, EPHEMERAL)
    expected = queue_for(packet, queues, EPHEMERAL)
    assert run_bpf(program, packet) == expected
    assert 0 <= expected < queues


def test_each_worker_picks_its_own_ports() -> None:
    for queues in (2, 3):
        for index in range(queues):
            core = Stack("10.7.0.2", config=TcpConfig(port_stride=(queues, index)))
            conns = [core.connect("10.7.0.1", 80, 0.0) for _ in range(20)]
            ports = [core.endpoints(c)[0][1] for c in conns]
            assert len(set(ports)) == 20
            assert all(p % queues == index and 32768 <= p <= 60999 for p in ports)
            # The kernel's SYN-ACK to each of them is steered back to this worker.
            for packet in core.packets_to_send(0.0):
                sport, dport = struct.unpack_from("!HH", packet, 20)
                assert packet[33] & SYN  # our SYN
                reply = ipv4_tcp("10.7.0.1", dport, sport)
                assert queue_for(reply, queues, EPHEMERAL) == index
                assert run_bpf(steering_program(queues, EPHEMERAL), reply) == index


def test_port_stride_is_checked() -> None:
    assert TcpConfig().port_stride == (1, 0)
    for bad in ((0, 0), (2, 2), (2, -1), (70000, 0)):
        with pytest.raises(ValueError, match="port_stride"):
            TcpConfig(port_stride=bad)


def test_a_short_range_still_finds_the_workers_ports() -> None:
    core = Stack("10.7.0.2", config=TcpConfig(ephemeral_ports=(50000, 50005),
                                              port_stride=(3, 1)))
    ports = sorted(core.endpoints(core.connect("10.7.0.1", 80, 0.0))[0][1] for _ in range(2))
    assert ports == [50002, 50005]
    with pytest.raises(NoFreePort):
        core.connect("10.7.0.1", 80, 0.0)
