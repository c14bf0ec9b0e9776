"""Which queue of a multi-queue TUN the kernel puts each packet on: an eBPF steering program.

Left to itself the kernel picks the queue a flow was last *written* on (its flow table forgets
a flow after about 3 s of silence) or else one by a hash keyed with a boot-random secret. A
worker that owns a connection must get every packet of it, also after a long silence, so the
device gets a BPF_PROG_TYPE_SOCKET_FILTER program (TUNSETSTEERINGEBPF) that picks the queue
from the ports alone:

  * TCP over IPv4 or IPv6 (no extension headers, not a later fragment): when the destination
    port, usertcp's, is in usertcp's ephemeral range the connection is one of its active opens,
    and the worker that opened it chose a port p with p % N == its queue: queue = dport % N.
    Otherwise usertcp is the listener and the kernel's (address, port) picks the queue through
    a multiplicative hash: the kernel's connect() prefers even ports, so a plain sport % 2
    would send every connection to worker 0.
  * Anything else (ICMP, UDP, a truncated packet) goes to queue 0.

`queue_for` is the same rule in Python, for tests and for reading.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import platform
import struct

from .errors import DeviceError

TUNSETSTEERINGEBPF = 0x800454E0  # _IOR('T', 224, int)
GOLDEN = 0x9E3779B1  # 2^32 / phi: spreads nearby ports over the high bits

# --- eBPF encoding (linux/bpf.h, linux/bpf_common.h) -------------------------------------------
LD, ALU, JMP, ALU64 = 0x00, 0x04, 0x05, 0x07
W, H, B = 0x00, 0x08, 0x10  # sizes
ABS, IND = 0x20, 0x40  # packet loads relative to the network header (legacy, skb context)
K, X = 0x00, 0x08  # operand: immediate or source register
ADD, MUL, OR, AND, LSH, RSH, MOD, XOR, MOV = 0x00, 0x20, 0x40, 0x50, 0x60, 0x70, 0x90, 0xA0, 0xB0
JA, JEQ, JGT, JNE, EXIT, JLT = 0x00, 0x10, 0x20, 0x50, 0x90, 0xA0
INSN = struct.Struct("<BBhi")  # code, dst | src << 4, offset, immediate

BPF_PROG_LOAD = 5
BPF_PROG_TYPE_SOCKET_FILTER = 1
_NR_BPF = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "armv7l": 386, "i686": 357,
           "ppc64le": 361, "s390x": 351}


class SteeringError(DeviceError):
    """The steering program could not be loaded or attached."""


def steering_program(queues: int, ephemeral: tuple[int, int]) -> bytes:
    """The program's bytecode for `queues` queues and usertcp's ephemeral port range."""
    if not 1 <= queues <= 0xFFFF:
        raise ValueError(f"queues must be in 1..65535, not {queues}")
    lo, hi = ephemeral
    other, ipv4, ipv6, ports, passive = "other", "ipv4", "ipv6", "ports", "passive"
    # r6: the packet (LD_ABS/LD_IND read through it); r7: TCP header offset; r8: kernel address
    return _assemble([
        (ALU64 | MOV | X, 6, 1, 0, 0),
        (LD | ABS | B, 0, 0, 0, 0),
        (ALU64 | MOV | X, 7, 0, 0, 0),
        (ALU | RSH | K, 0, 0, 0, 4),
        (JMP | JEQ | K, 0, 0, ipv4, 4),
        (JMP | JEQ | K, 0, 0, ipv6, 6),
        other,
        (ALU64 | MOV | K, 0, 0, 0, 0),
        (JMP | EXIT, 0, 0, 0, 0),
        ipv4,
        (LD | ABS | B, 0, 0, 0, 9),  # protocol
        (JMP | JNE | K, 0, 0, other, 6),
        (LD | ABS | H, 0, 0, 0, 6),
        (ALU | AND | K, 0, 0, 0, 0x1FFF),  # a later fragment carries no ports
        (JMP | JNE | K, 0, 0, other, 0),
        (LD | ABS | W, 0, 0, 0, 12),  # source address: the kernel's
        (ALU64 | MOV | X, 8, 0, 0, 0),
        (ALU | AND | K, 7, 0, 0, 0x0F),
        (ALU | LSH | K, 7, 0, 0, 2),
        (JMP | JA, 0, 0, ports, 0),
        ipv6,
        (LD | ABS | B, 0, 0, 0, 6),  # next header: extension headers are not followed
        (JMP | JNE | K, 0, 0, other, 6),
        (LD | ABS | W, 0, 0, 0, 20),  # the low 32 bits of the kernel's address
        (ALU64 | MOV | X, 8, 0, 0, 0),
        (ALU64 | MOV | K, 7, 0, 0, 40),
        ports,
        (LD | IND | H, 0, 7, 0, 2),  # destination port: usertcp's
        (JMP | JLT | K, 0, 0, passive, lo),
        (JMP | JGT | K, 0, 0, passive, hi),
        (ALU | MOD | K, 0, 0, 0, queues),
        (JMP | EXIT, 0, 0, 0, 0),
        passive,
        (LD | IND | H, 0, 7, 0, 0),  # source port: the kernel's
        (ALU | XOR | X, 0, 8, 0, 0),
        (ALU | MUL | K, 0, 0, 0, _s32(GOLDEN)),
        (ALU | RSH | K, 0, 0, 0, 16),
        (ALU | MOD | K, 0, 0, 0, queues),
        (JMP | EXIT, 0, 0, 0, 0),
    ])


def queue_for(packet: bytes, queues: int, ephemeral: tuple[int, int]) -> int:
    """The queue the program picks for `packet` (an IP packet the kernel sends usertcp)."""
    try:
        version = packet[0] >> 4
        if version == 4:
            if packet[9] != 6 or int.from_bytes(packet[6:8], "big") & 0x1FFF:
                return 0
            tcp, address = (packet[0] & 15) * 4, packet[12:16]
        elif version == 6:
            if packet[6] != 6:
                return 0
            tcp, address = 40, packet[20:24]
        else:
            return 0
        if len(address) < 4 or len(packet) < tcp + 4:
            return 0  # the kernel's loads fail on a short packet: the program returns 0
        sport, dport = struct.unpack_from("!HH", packet, tcp)
    except IndexError:
        return 0
    if ephemeral[0] <= dport <= ephemeral[1]:
        return dport % queues
    mixed = ((int.from_bytes(address, "big") ^ sport) * GOLDEN) & 0xFFFFFFFF
    return (mixed >> 16) % queues


def load(program: bytes, name: str = "usertcp_steer") -> int:
    """Load `program` as a socket filter; returns its fd. Needs CAP_BPF (or root)."""
    nr = _NR_BPF.get(platform.machine())
    if nr is None:
        raise SteeringError(f"the bpf syscall number of {platform.machine()} is not known here")
    insns = ctypes.create_string_buffer(program, len(program))
    license_ = ctypes.create_string_buffer(b"MIT")
    log = ctypes.create_string_buffer(1 << 16)
    # union bpf_attr for BPF_PROG_LOAD: type, count, insns, license, log level/size/buffer,
    # kern_version, flags, name[16]; the rest zero.
    attr = ctypes.create_string_buffer(128)
    struct.pack_into("<IIQQIIQII16s", attr, 0, BPF_PROG_TYPE_SOCKET_FILTER,
                     len(program) // INSN.size, ctypes.addressof(insns),
                     ctypes.addressof(license_), 1, len(log), ctypes.addressof(log), 0, 0,
                     name.encode()[:15])
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    fd = libc.syscall(ctypes.c_long(nr), ctypes.c_int(BPF_PROG_LOAD), attr,
                      ctypes.c_uint(len(attr)))
    if fd < 0:
        code = ctypes.get_errno()
        lines = log.value.decode(errors="replace").strip().splitlines()
        detail = f" (verifier: {lines[-1]})" if lines else ""
        raise SteeringError(f"cannot load the TUN steering program: {os.strerror(code)}{detail}",
                            errno=code)
    return fd


def attach(tun_fd: int, queues: int, ephemeral: tuple[int, int]) -> None:
    """Give the multi-queue TUN behind `tun_fd` (any of its queues) the steering program."""
    prog_fd = load(steering_program(queues, ephemeral))
    try:
        fcntl.ioctl(tun_fd, TUNSETSTEERINGEBPF, struct.pack("i", prog_fd))
    except OSError as exc:
        raise SteeringError(f"cannot attach the TUN steering program: "
                            f"{os.strerror(exc.errno or errno.EINVAL)}", errno=exc.errno) from None
    finally:
        os.close(prog_fd)  # the device holds its own reference


def _s32(value: int) -> int:
    return value - (1 << 32) if value & 0x80000000 else value


def _assemble(items: list) -> bytes:
    """Instructions as (code, dst, src, offset, imm) with label names as jump offsets."""
    where: dict[str, int] = {}
    count = 0
    for item in items:
        if isinstance(item, str):
            where[item] = count
        else:
            count += 1
    out: list[bytes] = []
    for item in items:
        if isinstance(item, str):
            continue
        code, dst, src, off, imm = item
        if isinstance(off, str):
            off = where[off] - (len(out) + 1)
        out.append(INSN.pack(code, dst | src << 4, off, imm))
    return b"".join(out)
