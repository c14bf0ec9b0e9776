"""The Linux kernel's state of one TCP socket, read from /proc/net/tcp and named as in RFC 9293."""

from __future__ import annotations

import socket
import sys

# /proc/net/tcp `st` column (include/net/tcp_states.h) -> RFC 9293 names.
KERNEL_STATES = {
    0x01: "ESTABLISHED",
    0x02: "SYN-SENT",
    0x03: "SYN-RECEIVED",
    0x04: "FIN-WAIT-1",
    0x05: "FIN-WAIT-2",
    0x06: "TIME-WAIT",
    0x07: "CLOSED",  # TCP_CLOSE
    0x08: "CLOSE-WAIT",
    0x09: "LAST-ACK",
    0x0A: "LISTEN",
    0x0B: "CLOSING",
    0x0C: "SYN-RECEIVED",  # TCP_NEW_SYN_RECV: a request socket
}


def _proc_endpoint(address: str, port: int) -> str:
    # The kernel prints the address as the host-order view of each network-order
    # 32-bit word (so 10.7.0.1 is 0100070A on x86; an IPv6 address is four such
    # words), and the port as a plain number.
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    raw = socket.inet_pton(family, address)
    words = "".join(f"{int.from_bytes(raw[i:i + 4], sys.byteorder):08X}"
                    for i in range(0, len(raw), 4))
    return f"{words}:{port:04X}"


def kernel_tcp_state(local: tuple[str, int], remote: tuple[str, int],
                     path: str | None = None) -> str:
    """RFC name of the kernel socket `local` <-> `remote`; CLOSED when there is none.

    /proc/net/tcp (tcp6 for IPv6) shows the sockets of the reader's network namespace.
    """
    if path is None:
        path = "/proc/net/tcp6" if ":" in local[0] else "/proc/net/tcp"
    want_local, want_remote = _proc_endpoint(*local), _proc_endpoint(*remote)
    with open(path) as f:
        next(f, None)  # header
        for line in f:
            fields = line.split()
            if len(fields) > 3 and fields[1] == want_local and fields[2] == want_remote:
                code = int(fields[3], 16)
                return KERNEL_STATES.get(code, f"state {code:#04x}")
    return "CLOSED"


