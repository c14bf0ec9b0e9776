"""The `usertcp` command: run a service on a TUN device, or the demo."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import signal
import sys

import structlog

from . import log
from .phy.errors import DeviceError
from .tcp import congestion
from .tcp.config import TcpConfig
from .tcp.errors import TcpError

EXIT_USAGE = 2  # bad arguments, device or address problems
EXIT_CONNECTION = 1  # refused, reset or timed out
LOOPS = ("asyncio", "uvloop")

# --fault SPEC: key=value pairs for usertcp.phy.FaultInjector, and how to read each value.
_FAULT_KEYS = {"seed": int, "loss": float, "duplicate": float, "reorder": float,
               "reorder_depth": int, "reorder_timeout": float, "corrupt": float,
               "delay": float, "jitter": float, "direction": str}


def parse_fault(spec: str) -> dict:
    """`seed=7,loss=0.05,direction=both` -> FaultInjector keyword arguments.

    Raises ValueError (one line) for anything malformed. Without `seed` one is
    drawn at random; it is in the result (and the service's log) to replay a run.
    """
    kwargs: dict = {}
    for item in spec.split(","):
        key, sep, value = item.strip().partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise ValueError(f"--fault: expected key=value, got {item.strip()!r}")
        if key not in _FAULT_KEYS:
            raise ValueError(f"--fault: unknown key {key!r} (known: {', '.join(_FAULT_KEYS)})")
        if key in kwargs:
            raise ValueError(f"--fault: {key!r} given twice")
        try:
            kwargs[key] = _FAULT_KEYS[key](value)
        except ValueError:
            raise ValueError(f"--fault: {key}={value!r} is not a valid "
                             f"{_FAULT_KEYS[key].__name__}") from None
    kwargs.setdefault("seed", secrets.randbelow(2 ** 31))
    return kwargs


def parse_keepalive(spec: str) -> tuple[float, float, int]:
    """`--keepalive IDLE,INTERVAL,PROBES`, e.g. `60,10,5` -> (60.0, 10.0, 5)."""
    parts = [p.strip() for p in spec.split(",")]
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected IDLE,INTERVAL,PROBES, got {spec!r}")
    try:
        idle, interval, probes = float(parts[0]), float(parts[1]), int(parts[2])
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected IDLE,INTERVAL,PROBES (seconds, seconds, count), got {spec!r}") from None
    if idle <= 0 or interval <= 0 or probes < 1:
        raise argparse.ArgumentTypeError("keepalive IDLE and INTERVAL must be > 0, PROBES >= 1")
    return idle, interval, probes


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def _busy_poll(text: str) -> float:
    """--busy-poll USEC, as seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected microseconds, got {text!r}") from None
    if not 0 <= value <= 10_000:
        raise argparse.ArgumentTypeError(f"must be 0 to 10000 microseconds, got {text!r}")
    return value / 1e6


def _worker_count(text: str) -> int:
    from .workers import MAX_WORKERS

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of workers, got {text!r}") from None
    if not 1 <= value <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"must be from 1 to {MAX_WORKERS}, got {value}")
    return value


def _loop_factory(name: str):
    """The event loop --loop asks for; ValueError (one line) when uvloop is missing."""
    if name != "uvloop":
        return None  # asyncio's default
    try:
        import uvloop
    except ImportError:
        raise ValueError("--loop uvloop: uvloop is not installed; "
                         "pip install usertcp[uvloop]") from None
    return uvloop.new_event_loop


def _run_async(args, make_coro):
    """Run `make_coro()` to its end on the loop --loop names."""
    with asyncio.Runner(loop_factory=_loop_factory(getattr(args, "loop", "asyncio"))) as runner:
        return runner.run(make_coro())


def _common(parser: argparse.ArgumentParser, port: int | None, *, device: bool = True,
            mtu: int = 1500, log_level: str = "info") -> None:
    if device:
        parser.add_argument("--tun", default="utcp0", help="TUN device name (default utcp0)")
        parser.add_argument("--address", action="append", metavar="ADDRESS",
                            help="the stack's address; once per family for dual stack, e.g. "
                                 "--address 10.7.0.2 --address fd00:7::2 (default 10.7.0.2: "
                                 "IPv4 only)")
        parser.add_argument("--host-address", action="append", metavar="ADDRESS/PREFIX",
                            help="the kernel side's address/prefix on the TUN, once per family "
                                 "(default 10.7.0.1/24, with fd00:7::1/64 when an IPv6 "
                                 "--address is given)")
    if port is not None:
        parser.add_argument("--port", type=int, default=port, help=f"port (default {port})")
    parser.add_argument("--msl", type=float, default=30.0,
                        help="maximum segment lifetime in seconds; TIME-WAIT is 2*MSL")
    parser.add_argument("--mtu", type=int, default=mtu, help=f"MTU of the TUN (default {mtu})")
    parser.add_argument("--pcap", help="write every packet to this pcap file")
    parser.add_argument("--fault", metavar="SPEC",
                        help="inject seeded faults, e.g. seed=7,loss=0.05,duplicate=0.01,"
                             "reorder=0.05,reorder_depth=10,corrupt=0.01,delay=0.002,"
                             "jitter=0.001,direction=both|rx|tx (corrupt needs --no-offload)")
    parser.add_argument("--no-offload", dest="offload", action="store_false",
                        help="one packet per MSS and software checksums (no virtio-net offload)")
    parser.add_argument("--no-sack", dest="sack", action="store_false",
                        help="do not offer SACK (RFC 2018); loss recovery is NewReno")
    parser.add_argument("--no-timestamps", dest="timestamps", action="store_false",
                        help="do not offer timestamps (RFC 7323: RTT measurement, PAWS)")
    parser.add_argument("--congestion", default="cubic", choices=congestion.ALGORITHMS,
                        help="congestion control (default cubic, as Linux)")
    parser.add_argument("--keepalive", metavar="IDLE,INTERVAL,PROBES", type=parse_keepalive,
                        help="keepalive on every connection: probe after IDLE s of silence, "
                             "every INTERVAL s, reset after PROBES unanswered (Linux: "
                             "7200,75,9); off by default")
    parser.add_argument("--user-timeout", metavar="SECONDS", type=_positive_seconds,
                        help="TCP_USER_TIMEOUT: give up on a connection whose data stays "
                             "unacknowledged (or probes unanswered) this long")
    parser.add_argument("--trace", nargs="?", const="", metavar="FILTER",
                        help="draw every connection matching FILTER (e.g. 'port 80', "
                             "'host 10.7.0.1'; all without one) live as a ladder, to stderr")
    parser.add_argument("--trace-file", metavar="FILE",
                        help="write --trace's ladders to FILE instead of stderr")
    if device:
        parser.add_argument("--busy-poll", metavar="USEC", type=_busy_poll, default=0.0,
                            help="after input, keep reading the TUN this many microseconds "
                                 "before sleeping: lower round-trip latency for CPU (default 0: "
                                 "off; e.g. 50)")
    parser.add_argument("--loop", default="asyncio", choices=LOOPS,
                        help="event loop: asyncio's own (default) or uvloop "
                             "(pip install usertcp[uvloop])")
    parser.add_argument("--log-level", default=log_level, choices=log.LEVELS,
                        help=f"default {log_level}")
    parser.add_argument("--log-format", default="console", choices=("console", "json"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="usertcp", description="A userspace TCP/IPv4 stack behind a TUN device.",
        epilog="A running service logs its connection table (event 'connections') on SIGUSR1.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    echo = sub.add_parser("echo", help="echo service (RFC 862)")
    discard = sub.add_parser("discard", help="discard service (RFC 863)")
    http = sub.add_parser("http", help="HTTP/1.1 static files")
    for service, port in ((echo, 7), (discard, 9), (http, 80)):
        _common(service, port)
        service.add_argument("--workers", type=_worker_count, default=1, metavar="N",
                             help="N processes, one engine each, on N queues of the TUN "
                                  "(IFF_MULTI_QUEUE), the kernel steering each connection to "
                                  "one of them (default 1); --pcap FILE then writes FILE.0 ...")
    http.add_argument("--root", default=".", help="directory to serve (default .)")
    connect = sub.add_parser("connect", help="active open; stdin -> connection -> stdout")
    connect.add_argument("host")
    connect.add_argument("port", type=int)
    _common(connect, None)
    run = sub.add_parser(
        "run", help="run COMMAND with every connection it makes carried by usertcp",
        usage="usertcp run [options] -- COMMAND [ARGS...]",
        description="Start COMMAND in a network namespace of its own (10.0.2.100/24, gateway "
                    "10.0.2.2 = this host's 127.0.0.1, DNS 10.0.2.3 = this host's resolver) "
                    "whose every TCP connection, UDP flow and ping usertcp terminates and relays "
                    "through ordinary sockets here. Exits with COMMAND's status. Works as root, "
                    "or rootless where user namespaces and /dev/net/tun allow.")
    _common(run, None, device=False, mtu=65520, log_level="warning")
    run.add_argument("--publish", "-p", action="append", default=[],
                     metavar="[ADDR:]HOST_PORT:PORT",
                     help="listen on HOST_PORT here and relay to the program's PORT (repeatable)")
    run.add_argument("program", nargs=argparse.REMAINDER, metavar="COMMAND [ARGS...]")
    from .ladder.commands import add_parsers as add_ladder_parsers

    add_ladder_parsers(sub)
    demo = sub.add_parser("demo", help="watch a connection's life, packet by packet")
    demo.add_argument("--msl", type=float, default=2.0,
                      help="MSL for the demo (default 2 s, so TIME-WAIT is 4 s)")
    demo.add_argument("--ipv6", action="store_true",
                      help="the same conversation over IPv6 (fd00:7::1 to fd00:7::2)")
    demo.add_argument("--message", default="hello, usertcp",
                      help="the line the kernel's socket sends")
    demo.add_argument("--scenario", default="normal", metavar="NAME",
                      help="which connection's life to show (default normal; see --list)")
    demo.add_argument("--list", action="store_true", help="list the scenarios and stop")
    demo.add_argument("--pcap", metavar="FILE",
                      help="also write the scenario's packets to FILE, as usertcp's device saw "
                           "them (redraw it with `usertcp ladder FILE`)")
    return parser


def _config(args) -> TcpConfig:
    # Clamped so an MTU out of range is reported as such (by the device), not as a bad MSS.
    extra: dict = {}
    keepalive = getattr(args, "keepalive", None)
    if keepalive is not None:
        extra.update(keepalive=True, keepalive_idle=keepalive[0],
                     keepalive_interval=keepalive[1], keepalive_probes=keepalive[2])
    if getattr(args, "user_timeout", None) is not None:
        extra["user_timeout"] = args.user_timeout
    extra["sack"] = getattr(args, "sack", True)
    extra["timestamps"] = getattr(args, "timestamps", True)
    extra["congestion"] = getattr(args, "congestion", "cubic")
    if args.command == "run":
        from .run.command import RUN_BUFFER

        extra.update(send_buffer=RUN_BUFFER, receive_buffer=RUN_BUFFER)
    return TcpConfig(msl=args.msl, mss=min(65495, max(88, args.mtu - 40)), **extra)


def _addresses(args) -> tuple[list[str], list[str]]:
    """--address and --host-address, each once per family; the kernel side's address of a
    family given only for the stack defaults to the documentation pair (10.7.0.1/24,
    fd00:7::1/64)."""
    # `connect` to an IPv6 literal needs an IPv6 address of its own by default.
    default = "fd00:7::2" if ":" in (getattr(args, "host", None) or "") else "10.7.0.2"
    addresses = args.address or [default]
    hosts = list(args.host_address or [])
    have = {":" in h for h in hosts}
    for a in addresses:
        v6 = ":" in a
        if v6 not in have:
            hosts.append("fd00:7::1/64" if v6 else "10.7.0.1/24")
            have.add(v6)
    return addresses, hosts


def _fault(args) -> dict | None:
    if not args.fault:
        return None
    fault = parse_fault(args.fault)
    if fault.get("corrupt") and args.offload:
        # With offload checksums are partial or vouched for by the kernel: a flipped bit
        # would go unnoticed and corrupt data instead of testing recovery.
        raise ValueError("--fault corrupt=... needs --no-offload (with offload, checksums "
                         "are left to the kernel and corruption would go undetected)")
    return fault


def _status(stack) -> None:
    """SIGUSR1: log the connection table, counters, drops and memory."""
    extra = {}
    fault = stack.device
    for _ in range(8):  # find a FaultInjector in the middleware chain, for its stats
        if fault is None or hasattr(fault, "rx_stats"):
            break
        fault = getattr(fault, "inner", None)
    if fault is not None and hasattr(fault, "rx_stats"):
        extra["fault"] = {"rx": fault.rx_stats, "tx": fault.tx_stats}
    stack.log.info("connections", table=stack.connections(), counters=dict(stack.counters),
                   drops=dict(stack.drops), rss_kb=_rss_kb(), **extra)


def _rss_kb() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _tracer(args):
    """The --trace ladder drawer, or None; a bad FILTER is a usage error (ValueError)."""
    if getattr(args, "trace", None) is None:
        if getattr(args, "trace_file", None):
            raise ValueError("--trace-file needs --trace")
        return None
    from .ladder.trace import Tracer

    out = None
    if args.trace_file:
        out = open(args.trace_file, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 (closed by the caller)
    return Tracer(args.trace, out)


@contextlib.asynccontextmanager
async def _open_stack(args, fault=None):
    """Stack.open with the command's options, and the tracer around the device when asked."""
    from .aio import Stack

    tracer = _tracer(args)
    addresses, host_addresses = _addresses(args)
    try:
        async with Stack.open(args.tun, addresses, host_addresses, mtu=args.mtu,
                              config=_config(args), pcap=args.pcap, fault=fault,
                              offload=args.offload,
                              wrap=tracer.wrap if tracer else None) as stack:
            if tracer:
                tracer.attach(stack)
            stack.busy_poll = args.busy_poll
            yield stack
    finally:
        if tracer:
            tracer.close()
            if args.trace_file:
                tracer.stream.close()


async def _serve(args, make_callback, open_stack=None, ready=None) -> int:
    """Serve until SIGINT/SIGTERM; `open_stack(args, fault)` and `ready(stack)` are a
    worker's under --workers (its own queue; the supervisor logs service.ready)."""
    callback = make_callback()
    fault = _fault(args)
    async with (open_stack or _open_stack)(args, fault) as stack:
        stack.busy_poll = args.busy_poll  # a worker's stack too
        if isinstance(callback, type) and issubclass(callback, asyncio.BaseProtocol):
            server = await stack.create_server(callback, args.port)  # a protocol class (echo)
        else:
            server = await stack.start_server(callback, args.port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        # Read-only status: `kill -USR1 PID` logs the connection table (TIME-WAIT entries too).
        loop.add_signal_handler(signal.SIGUSR1, _status, stack)
        # Only now: a signal sent as soon as this line shows must find its handler in place.
        if ready is not None:
            ready(stack)
        else:
            stack.log.info("service.ready", service=args.command, address=stack.address,
                           addresses=stack.addresses, port=args.port, tun=args.tun,
                           **({"fault": fault} if fault else {}))
        await stop.wait()
        stack.log.info("service.stopping", open_connections=len(stack.connections()) - 1)
        server.close()
    return 0


async def _connect(args) -> int:
    from .apps.connect import run_connect

    async with _open_stack(args, _fault(args)) as stack:
        return await run_connect(stack, args.host, args.port)


async def _run(args) -> int:
    from .run.command import RunOptions, parse_publish, run

    command = list(args.program)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise ValueError("run: no command given; usage: usertcp run [options] -- COMMAND [ARGS...]")
    tracer = _tracer(args)
    opts = RunOptions(command=command, mtu=args.mtu, offload=args.offload, config=_config(args),
                      pcap=args.pcap, fault=_fault(args),
                      publish=tuple(parse_publish(p) for p in args.publish),
                      wrap=tracer.wrap if tracer else None,
                      attach=tracer.attach if tracer else None)
    logger = structlog.get_logger("usertcp").bind(part="run")
    try:
        return await run(opts, logger, _run_status)
    finally:
        if tracer:
            tracer.close()
            if args.trace_file:
                tracer.stream.close()


def _run_status(stack, relay, datagrams) -> None:
    """SIGUSR1 under `usertcp run`: the table, and the relays' counters."""
    stack.log.info("relay", tcp=dict(relay.counters), datagrams=dict(datagrams.counters),
                   flows=datagrams.flows())
    _status(stack)


def _serve_workers(args, make) -> int:
    from .workers import WorkerSpec, serve

    if getattr(args, "trace", None) is not None:
        raise ValueError("--trace draws one process's connections: not with --workers; "
                         "use --pcap (one file per worker)")
    addresses, host_addresses = _addresses(args)
    spec = WorkerSpec(args.tun, addresses, host_addresses, args.mtu, args.offload,
                      _config(args), args.workers, args.pcap,
                      {"service": args.command, "address": addresses[0],
                       "addresses": addresses, "port": args.port, "tun": args.tun})
    _fault(args)  # a bad --fault is a usage error here, not in every worker

    def run_worker(open_stack, ready) -> int:
        return _run_async(args, lambda: _serve(args, lambda: make, open_stack, ready))

    return serve(spec, run_worker)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("ladder", "plot"):
        from .ladder.commands import run_ladder, run_plot

        return run_ladder(args) if args.command == "ladder" else run_plot(args)
    if args.command == "demo":
        from .demo import run_demo

        return run_demo(args)
    log.configure(args.log_level, args.log_format)
    try:
        _loop_factory(args.loop)  # a missing uvloop is a usage error, before anything opens
        if args.command == "run":
            return _run_async(args, lambda: _run(args))
        if args.command == "connect":
            return _run_async(args, lambda: _connect(args))
        if args.command == "echo":
            from .apps.services import Echo as make
        elif args.command == "discard":
            from .apps.services import discard as make
        else:
            from .apps.http import StaticFiles

            root = args.root
            make = StaticFiles(root)
        if args.workers > 1:
            return _serve_workers(args, make)
        return _run_async(args, lambda: _serve(args, lambda: make))
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
