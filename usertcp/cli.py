"""The `usertcp` command: run a service on a TUN device, or the demo."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from . import log
from .phy.errors import DeviceError
from .tcp.config import TcpConfig
from .tcp.errors import TcpError

EXIT_USAGE = 2  # bad arguments, device or address problems
EXIT_CONNECTION = 1  # refused, reset or timed out


def _common(parser: argparse.ArgumentParser, port: int | None) -> None:
    parser.add_argument("--tun", default="utcp0", help="TUN device name (default utcp0)")
    parser.add_argument("--address", default="10.7.0.2", help="the stack's IPv4 address")
    parser.add_argument("--host-address", default="10.7.0.1/24",
                        help="kernel side address/prefix of the TUN (default 10.7.0.1/24)")
    if port is not None:
        parser.add_argument("--port", type=int, default=port, help=f"port (default {port})")
    parser.add_argument("--msl", type=float, default=30.0,
                        help="maximum segment lifetime in seconds; TIME-WAIT is 2*MSL")
    parser.add_argument("--mtu", type=int, default=1500)
    parser.add_argument("--pcap", help="write every packet to this pcap file")
    parser.add_argument("--no-offload", dest="offload", action="store_false",
                        help="one packet per MSS and software checksums (no virtio-net offload)")
    parser.add_argument("--log-level", default="info", choices=log.LEVELS)
    parser.add_argument("--log-format", default="console", choices=("console", "json"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="usertcp", description="A userspace TCP/IPv4 stack behind a TUN device.",
        epilog="A running service logs its connection table (event 'connections') on SIGUSR1.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _common(sub.add_parser("echo", help="echo service (RFC 862)"), 7)
    _common(sub.add_parser("discard", help="discard service (RFC 863)"), 9)
    http = sub.add_parser("http", help="HTTP/1.1 static files")
    _common(http, 80)
    http.add_argument("--root", default=".", help="directory to serve (default .)")
    connect = sub.add_parser("connect", help="active open; stdin -> connection -> stdout")
    connect.add_argument("host")
    connect.add_argument("port", type=int)
    _common(connect, None)
    demo = sub.add_parser("demo", help="watch a connection's life, packet by packet")
    demo.add_argument("--msl", type=float, default=2.0,
                      help="MSL for the demo (default 2 s, so TIME-WAIT is 4 s)")
    demo.add_argument("--message", default="hello, usertcp",
                      help="the line the kernel's socket sends")
    return parser


def _config(args) -> TcpConfig:
    # Clamped so an MTU out of range is reported as such (by the device), not as a bad MSS.
    return TcpConfig(msl=args.msl, mss=min(65495, max(88, args.mtu - 40)))


async def _serve(args, make_callback) -> int:
    from .aio import Stack

    callback = make_callback()
    async with Stack.open(args.tun, args.address, args.host_address, mtu=args.mtu,
                          config=_config(args), pcap=args.pcap, offload=args.offload) as stack:
        server = await stack.start_server(callback, args.port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        # Read-only status: `kill -USR1 PID` logs the connection table (TIME-WAIT entries too).
        loop.add_signal_handler(signal.SIGUSR1, lambda: stack.log.info(
            "connections", table=stack.connections()))
        # Only now: a signal sent as soon as this line shows must find its handler in place.
        stack.log.info("service.ready", service=args.command, address=stack.address,
                       port=args.port, tun=args.tun)
        await stop.wait()
        stack.log.info("service.stopping", open_connections=len(stack.connections()) - 1)
        server.close()
    return 0


async def _connect(args) -> int:
    from .aio import Stack
    from .apps.connect import run_connect

    async with Stack.open(args.tun, args.address, args.host_address, mtu=args.mtu,
                          config=_config(args), pcap=args.pcap, offload=args.offload) as stack:
        return await run_connect(stack, args.host, args.port)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from .demo import run_demo

        return run_demo(args)
    log.configure(args.log_level, args.log_format)
    try:
        if args.command == "connect":
            return asyncio.run(_connect(args))
        if args.command == "echo":
            from .apps.services import echo as make
        elif args.command == "discard":
            from .apps.services import discard as make
        else:
            from .apps.http import StaticFiles

            root = args.root
            make = StaticFiles(root)
        return asyncio.run(_serve(args, lambda: make))
    except (DeviceError, ValueError, TcpError) as exc:
        print(f"usertcp: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ConnectionRefusedError as exc:
        print(f"usertcp: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_CONNECTION
    except (ConnectionResetError, TimeoutError) as exc:
        print(f"usertcp: {exc.strerror or exc or type(exc).__name__}", file=sys.stderr)
        return EXIT_CONNECTION
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
