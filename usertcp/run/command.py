"""`usertcp run [options] -- COMMAND [ARGS...]`: a program whose every connection is usertcp's.

COMMAND runs in a network namespace of its own (namespace.spawn) whose default route is the
TUN device; usertcp, in the caller's namespace, is the gateway 10.0.2.2 (fd00::2) and every
address beyond it: TCP connections are admitted and relayed (relay.py), UDP flows and pings
relayed (datagrams.py). COMMAND's exit status is run's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import signal
import sys
from collections.abc import Callable

from ..aio import Stack
from ..phy import FaultInjector, PcapWriter
from ..phy.errors import DeviceError
from ..tcp.config import TcpConfig
from .datagrams import DatagramRelay, first_nameserver
from .namespace import ExecFailed, spawn
from .relay import Publisher, Relay

PROGRAM = "10.0.2.100"
GATEWAY = "10.0.2.2"
DNS = "10.0.2.3"
NETWORK = "10.0.2.0/24"
# slirp4netns --enable-ipv6's. resolv.conf still names 10.0.2.3 only: it is the same resolver,
# and glibc tries a second server only after the first timed out, so fd00::3 would add nothing
# but a doubled wait when the resolver is down (fd00::3 answers all the same, for who asks it).
PROGRAM6 = "fd00::100"
GATEWAY6 = "fd00::2"
DNS6 = "fd00::3"
NETWORK6 = "fd00::/64"
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR2)
RUN_BUFFER = 1024 * 1024  # per direction and connection: a 64 KB-segment path needs room


def parse_publish(spec: str) -> tuple[str, int, int]:
    """`[ADDR:]HOST_PORT:PORT` -> (listen address, host port, the program's port)."""
    parts = spec.rsplit(":", 2)
    if len(parts) == 2:
        parts.insert(0, "0.0.0.0")
    if len(parts) != 3:
        raise ValueError(f"--publish: expected [ADDR:]HOST_PORT:PORT, got {spec!r}")
    host, *ports = parts
    try:
        host_port, port = (int(p) for p in ports)
    except ValueError:
        raise ValueError(f"--publish: ports must be numbers, got {spec!r}") from None
    for p in (host_port, port):
        if not 0 < p < 65536:
            raise ValueError(f"--publish: port {p} out of range 1..65535")
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        raise ValueError(f"--publish: {host!r} is not an IPv4 address to listen on") from None
    return host, host_port, port


@dataclasses.dataclass
class RunOptions:
    command: list[str]
    mtu: int = 65520
    offload: bool = True
    config: TcpConfig | None = None
    pcap: str | None = None
    fault: dict | None = None
    publish: tuple[tuple[str, int, int], ...] = ()
    wrap: Callable | None = None  # device -> device, outermost (e.g. --trace's recorder)
    attach: Callable | None = None  # called with the Stack once it exists


async def run(opts: RunOptions, log, status_callback=None) -> int:
    """Start COMMAND, carry its traffic until it exits; return its exit status."""
    publish = [parse_publish(p) if isinstance(p, str) else p for p in opts.publish]
    sandbox = spawn(opts.command, mtu=opts.mtu, offload=opts.offload,
                    address=f"{PROGRAM}/24", gateway=GATEWAY, dns=DNS,
                    address6=f"{PROGRAM6}/64", gateway6=GATEWAY6)
    loop = asyncio.get_running_loop()
    stack = relay = datagrams = None
    publishers: list[Publisher] = []
    try:
        device = sandbox.device
        if opts.fault:
            device = FaultInjector(device, **opts.fault)
        if opts.pcap:
            device = PcapWriter(device, opts.pcap)
        if opts.wrap:
            device = opts.wrap(device)
        config = opts.config or TcpConfig(send_buffer=RUN_BUFFER, receive_buffer=RUN_BUFFER)
        stack = Stack(device, [GATEWAY, GATEWAY6], config=config, logger=log.bind(addr=GATEWAY))
        if opts.attach:
            opts.attach(stack)
        resolver = first_nameserver()
        relay = Relay(gateway=GATEWAY, dns=DNS, subnet=NETWORK, resolver=resolver, log=log,
                      gateway6=GATEWAY6, dns6=DNS6, subnet6=NETWORK6)
        await stack.create_server(relay.protocol, None, admit=relay.admit)
        datagrams = DatagramRelay(stack, gateway=GATEWAY, dns=DNS, resolver=resolver or "",
                                  gateway6=GATEWAY6, dns6=DNS6, subnet6=NETWORK6,
                                  unreachable=lambda program, dst, code:
                                  stack.send_unreachable(program, dst, code), logger=log)
        stack.forward_datagrams(datagrams)
        for host, host_port, port in publish:
            pub = Publisher(stack, relay, PROGRAM, port)
            try:
                await pub.start(host, host_port)
            except OSError as exc:
                raise DeviceError(f"--publish {host}:{host_port}:{port}: cannot listen on "
                                  f"{host}:{host_port}: {exc.strerror or exc}") from None
            publishers.append(pub)
        for sig in _FORWARDED:
            loop.add_signal_handler(sig, sandbox.send_signal, sig)
        if status_callback is not None:
            loop.add_signal_handler(signal.SIGUSR1, status_callback, stack, relay, datagrams)
        for warning in sandbox.warnings:
            log.info("run.sandbox", warning=warning)
        log.info("run.ready", pid=sandbox.pid, command=opts.command, resolver=resolver,
                 publish=[f"{h}:{hp}->{PROGRAM}:{p}" for h, hp, p in publish])
        try:
            sandbox.start()
        except ExecFailed as exc:
            print(exc, file=sys.stderr)  # the shell's line: "usertcp: run: CMD: not found"
            return exc.status
        status = await sandbox.wait()
        log.info("run.exited", status=status, connections=relay.counters["connections"],
                 relayed_udp=datagrams.counters.get("udp_flows_opened", 0))
        return status
    finally:
        for sig in (*_FORWARDED, signal.SIGUSR1):
            loop.remove_signal_handler(sig)
        for pub in publishers:
            pub.close()
        # The namespace is gone with COMMAND: what the program sent is delivered, then the
        # relayed sockets close; nothing more can reach the program.
        if relay is not None:
            relay.close(reset=False)
        if datagrams is not None:
            datagrams.close()
        if stack is not None:
            await stack.aclose(timeout=0)
        sandbox.close()
