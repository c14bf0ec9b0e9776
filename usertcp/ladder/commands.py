"""`usertcp ladder FILE` and `usertcp plot FILE`: any capture, drawn."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

EXIT_OK = 0
EXIT_USAGE = 2

FORMATS = ("text", "svg", "html", "mermaid")
_BY_SUFFIX = {".svg": "svg", ".html": "html", ".htm": "html", ".mmd": "mermaid",
              ".mermaid": "mermaid", ".md": "mermaid", ".txt": "text"}


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {text!r}")
    return value


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}")
    return value


def _names(text: str) -> tuple[str, str]:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2 or not all(parts):
        raise argparse.ArgumentTypeError(f"expected two names, e.g. kernel,usertcp; got {text!r}")
    return parts[0], parts[1]


def _selection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE",
                        help="a pcap or pcapng capture (usertcp's --pcap, tcpdump -w, tshark -w)")
    pick = parser.add_mutually_exclusive_group()
    pick.add_argument("--port", type=_port, help="the connection with this port at either end")
    pick.add_argument("--connection", type=_positive_int, metavar="N",
                      help="the Nth connection of the capture (see --list)")
    parser.add_argument("--filter", metavar="EXPR", default="",
                        help="only connections matching a tcpdump-like filter, e.g. "
                             "'host 10.7.0.1 and port 80'")
    parser.add_argument("--list", action="store_true",
                        help="list the capture's connections and stop")


def add_parsers(sub) -> None:
    """The `ladder` and `plot` subcommands."""
    ladder = sub.add_parser(
        "ladder", help="draw a TCP connection of any capture as a ladder, with both sides' states",
        description="Draw one TCP connection of a capture as a ladder diagram: one arrow per "
                    "packet, relative and absolute seq/ack, options, both sides' RFC 9293 states "
                    "inferred from what each side sent, and anomalies marked (retransmission, "
                    "lost, acked-unseen, previous-not-captured, dup-ack, keep-alive, "
                    "zero-window, reset). Left is the side that opened the connection.")
    _selection(ladder)
    ladder.add_argument("--format", choices=FORMATS,
                        help="text (default; or from -o's suffix: .svg .html .mmd/.md)")
    ladder.add_argument("-o", "--output", metavar="OUT", help="write here instead of stdout")
    ladder.add_argument("--names", type=_names, metavar="LEFT,RIGHT",
                        help="what to call the two sides (default client,server)")
    ladder.add_argument("--color", choices=("auto", "always", "never"), default="auto")
    plot = sub.add_parser(
        "plot", help="the time-sequence graph of one direction of a TCP connection",
        description="The Stevens/tcptrace time-sequence graph of one direction of a connection: "
                    "each data segment as a bar at its time and sequence numbers, the ACK line, "
                    "the advertised window, SACK blocks, retransmissions and losses marked.")
    _selection(plot)
    plot.add_argument("-o", "--output", metavar="OUT.svg|OUT.png", required=False,
                      help="the graph, SVG or PNG by its suffix")
    plot.add_argument("--from", dest="sender", choices=("auto", "client", "server"),
                      default="auto",
                      help="whose data to plot (default: the side that sent more)")


def _error(command: str, message: str) -> int:
    print(f"usertcp {command}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _connections(args):
    from .capture import read_capture, tcp_packets
    from .conversations import split
    from .filter import compile_filter, matches_connection

    capture = read_capture(args.file)
    connections = split(tcp_packets(capture))
    if args.filter:
        flt = compile_filter(args.filter)
        connections = [c for c in connections if matches_connection(flt, *c.endpoints)]
    return capture, connections


def _listing(connections) -> str:
    return "\n".join(c.summary() for c in connections)


def _choose(command: str, args, connections):
    """The connection asked for; when several and none asked, the first (and say so)."""
    from .conversations import select

    if not connections:
        raise ValueError(f"{args.file} holds no TCP connection"
                         + (f" matching {args.filter!r}" if args.filter else ""))
    if args.port is None and args.connection is None:
        if len(connections) > 1:
            print(f"usertcp {command}: {args.file} holds {len(connections)} connections; "
                  f"drawing the first (choose with --connection N or --port P):\n"
                  f"{_listing(connections)}", file=sys.stderr)
        return connections[0]
    return select(connections, port=args.port, number=args.connection)


def _pick(command: str, args):
    """The connection to draw; None when --list printed the capture's connections instead."""
    _capture, connections = _connections(args)
    if args.list:
        print(_listing(connections) if connections else f"{args.file}: no TCP connection")
        return None
    return _choose(command, args, connections)


def _write(path: str | None, content: str | bytes) -> None:
    if path is None or path == "-":
        if isinstance(content, bytes):
            sys.stdout.buffer.write(content)
            sys.stdout.buffer.flush()
        else:
            sys.stdout.write(content)
            sys.stdout.flush()
        return
    mode = "wb" if isinstance(content, bytes) else "w"
    with open(path, mode, **({} if isinstance(content, bytes) else {"encoding": "utf-8"})) as f:
        f.write(content)


def _format(args) -> str:
    if args.format:
        return args.format
    if args.output and args.output != "-":
        return _BY_SUFFIX.get(os.path.splitext(args.output)[1].lower(), "text")
    return "text"


def run_ladder(args) -> int:
    from .capture import CaptureError
    from .observer import observe

    try:
        chosen = _pick("ladder", args)
        if chosen is None:
            return EXIT_OK
        conv = observe(chosen.packets, names=args.names or ("client", "server"))
        fmt = _format(args)
        if fmt == "text":
            from .text import Style, render_text, stream_takes_unicode

            to_tty = (args.output in (None, "-")) and sys.stdout.isatty()
            color = args.color == "always" or (args.color == "auto" and to_tty
                                               and not os.environ.get("NO_COLOR"))
            unicode = args.output not in (None, "-") or stream_takes_unicode(sys.stdout)
            content = render_text(conv, Style(color, unicode))
        elif fmt == "svg":
            from .svg import to_svg

            content = to_svg(conv)
        elif fmt == "html":
            from .html import to_html

            content = to_html(conv, title=f"{os.path.basename(args.file)}: "
                                          f"{conv.label(0)} ⇄ {conv.label(1)}")
        else:
            from .mermaid import to_mermaid

            content = to_mermaid(conv)
        _write(args.output, content)
    except BrokenPipeError:  # `usertcp ladder x.pcap | head`
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except (CaptureError, ValueError, OSError) as exc:
        return _error("ladder", _message(exc))
    return EXIT_OK


def run_plot(args) -> int:
    from .capture import CaptureError
    from .observer import observe
    from .plot import default_direction, plot_png, plot_svg

    try:
        if not args.list:
            if not args.output:
                raise ValueError("give -o OUT.svg or -o OUT.png")
            suffix = os.path.splitext(args.output)[1].lower()
            if suffix not in (".svg", ".png"):
                raise ValueError(f"-o {args.output}: the graph is written as .svg or .png")
        chosen = _pick("plot", args)
        if chosen is None:
            return EXIT_OK
        conv = observe(chosen.packets)
        side = {"client": 0, "server": 1}.get(args.sender)
        if side is None:
            side = default_direction(conv)
        content = plot_png(conv, side) if suffix == ".png" else plot_svg(conv, side)
        _write(args.output, content)
    except (CaptureError, ValueError, OSError) as exc:
        return _error("plot", _message(exc))
    return EXIT_OK


def _message(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror and exc.filename:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc)
