"""`usertcp demo`: one TCP connection between Linux and usertcp, drawn packet by packet.

The command makes a private network namespace, runs itself again inside it
(`ip netns exec NS python -m usertcp.demo --inner ...`) and deletes the
namespace afterwards, also on Ctrl-C. Inside, a TUN device connects the
kernel (10.7.0.1) to a usertcp stack (10.7.0.2) serving a one-line echo on
port 7. A plain kernel socket connects, sends a line and reads the echo;
usertcp hangs up first, so the teardown is the textbook active close on
usertcp's side and usertcp's TIME-WAIT is counted down to its expiry.

Every packet is printed as a row of a ladder diagram (see `usertcp.ladder`)
with both ends' states right after it: the kernel's from /proc/net/tcp,
usertcp's from its engine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys

from .ladder import (
    KERNEL_TO_STACK,
    STACK_TO_KERNEL,
    Ladder,
    PacketRecorder,
    Style,
    fmt_duration,
    kernel_tcp_state,
    payload_text,
    stream_takes_unicode,
)
from .wire.tcp import ACK, SYN

NETNS_PREFIX = "usertcp-demo-"
NETNS_DIR = "/run/netns"
TUN = "utcp0"
MTU = 1500
STACK_ADDRESS = "10.7.0.2"
KERNEL_ADDRESS = "10.7.0.1"
KERNEL_CIDR = f"{KERNEL_ADDRESS}/24"
# --ipv6: the same conversation over IPv6 (the kernel side gets its address without DAD).
STACK_ADDRESS6 = "fd00:7::2"
KERNEL_ADDRESS6 = "fd00:7::1"
KERNEL_CIDR6 = f"{KERNEL_ADDRESS6}/64"
PORT = 7
PAUSE = 0.25  # between the steps of both applications, so that each packet gets its own row
STEP_TIMEOUT = 5.0  # for any one step of the conversation
MAX_MSL = 300.0
MAX_MESSAGE = 1000  # bytes: the demo is about the ladder, not bulk transfer

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _error(message: str) -> int:
    print(f"usertcp demo: error: {message}", file=sys.stderr, flush=True)
    return EXIT_USAGE


# ====================================================================== outside the namespace


def preflight() -> str | None:
    """Why the demo cannot run on this machine, or None."""
    if os.geteuid() != 0:
        return ("needs root: it creates a network namespace and a TUN device "
                "(run it with sudo, e.g. sudo scripts/demo)")
    if not os.path.exists("/dev/net/tun"):
        return ("/dev/net/tun is missing: load the tun module (modprobe tun) or, in a container, "
                "pass the device through (--device /dev/net/tun)")
    if shutil.which("ip") is None:
        return "needs the `ip` command (Debian/Ubuntu: apt-get install iproute2)"
    return None


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)


def _reap_stale_namespaces() -> None:
    """Delete `usertcp-demo-<pid>` names whose demo process no longer exists (killed with -9)."""
    with contextlib.suppress(OSError):
        for name in os.listdir(NETNS_DIR):
            m = re.fullmatch(re.escape(NETNS_PREFIX) + r"(\d+)", name)
            if m and not os.path.exists(f"/proc/{m.group(1)}"):
                _ip("netns", "delete", name)


class _Terminated(Exception):
    """SIGTERM or SIGHUP reached the outer process."""


def _raise_terminated(signum, frame):
    raise _Terminated(signum)


def _stop_child(child: subprocess.Popen, *, ask: bool) -> None:
    """End the one process this command started, by its PID.

    `ask`: send SIGTERM at once (an interrupt); otherwise give it a moment first.
    It gets SIGKILL if it is still there a few seconds after SIGTERM.
    """
    steps = ((signal.SIGTERM, 3.0), (signal.SIGKILL, None)) if ask else \
        ((None, 3.0), (signal.SIGTERM, 3.0), (signal.SIGKILL, None))
    for sig, grace in steps:
        if child.poll() is not None:
            return
        if sig is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(grace)


def run_demo(args) -> int:
    """The `usertcp demo` command (args: msl, message)."""
    msl = float(args.msl)
    if not 0 < msl <= MAX_MSL:
        return _error(f"--msl must be more than 0 and at most {MAX_MSL:g} seconds, not {args.msl}")
    if len(str(args.message).encode()) > MAX_MESSAGE:
        return _error(f"--message is longer than {MAX_MESSAGE} bytes")
    reason = preflight()
    if reason:
        return _error(reason)
    color = (sys.stdout.isatty() and not os.environ.get("NO_COLOR")
             and os.environ.get("TERM") != "dumb")
    _reap_stale_namespaces()
    name = f"{NETNS_PREFIX}{os.getpid()}"
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
    cmd = ["ip", "netns", "exec", name, sys.executable, "-m", "usertcp.demo", "--inner",
           f"--netns={name}", f"--msl={msl!r}", f"--message={args.message}",
           "--color", "on" if color else "off", *(["--ipv6"] if getattr(args, "ipv6", False)
                                                  else [])]

    saved = {sig: signal.signal(sig, _raise_terminated) for sig in (signal.SIGTERM, signal.SIGHUP)}
    child: subprocess.Popen | None = None
    created = False
    interrupted = False
    rc = EXIT_FAILED
    try:
        res = _ip("netns", "add", name)
        if res.returncode != 0:
            return _error(f"cannot create network namespace {name}: {res.stderr.strip()}")
        created = True
        sys.stdout.flush()
        # The child ignores SIGINT (an ignored signal stays ignored across exec): a ^C
        # reaches this process, which asks the child to stop with SIGTERM, by PID.
        # `ip netns exec` execs the command, so that PID is the demo's own Python.
        old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            child = subprocess.Popen(cmd, env=env)
        finally:
            signal.signal(signal.SIGINT, old_int)
        rc = child.wait()
        if rc < 0:
            rc = 128 - rc
    except (KeyboardInterrupt, _Terminated):
        interrupted = True
        rc = EXIT_INTERRUPTED
    finally:
        # A second ^C must not cut the clean-up short.
        old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            if child is not None:
                _stop_child(child, ask=interrupted)
            deleted = created and _delete_namespace(name, color, announce=rc == EXIT_OK)
            if interrupted:
                print("\nusertcp demo: interrupted" + (
                    f"; network namespace {name} deleted" if deleted else ""),
                    file=sys.stderr, flush=True)
        finally:
            signal.signal(signal.SIGINT, old_int)
            for sig, handler in saved.items():
                signal.signal(sig, handler)
    return rc


def _delete_namespace(name: str, color: bool, *, announce: bool) -> bool:
    res = _ip("netns", "delete", name)
    if res.returncode != 0 and os.path.exists(os.path.join(NETNS_DIR, name)):
        print(f"usertcp demo: warning: could not delete network namespace {name}: "
              f"{res.stderr.strip()}", file=sys.stderr, flush=True)
        return False
    if announce:
        style = Style(color, stream_takes_unicode(sys.stdout))
        print(style.dim(f"  cleaned up: network namespace {name} deleted, {TUN} with it"),
              flush=True)
    return True


# ====================================================================== inside the namespace


class _StateTap:
    """Stands in for the driver's structlog logger and keeps usertcp's state changes."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.changes: list[tuple[float, str, str, str]] = []  # (time, old, new, cause)
        self.drops: dict[str, int] = {}
        self.time_wait_over: asyncio.Future = loop.create_future()

    def info(self, event: str, **kw) -> None:
        if event == "tcp.state":
            now = kw.get("at", self.loop.time())  # the engine's own time of the change
            self.changes.append((now, kw["old"], kw["new"], kw["cause"]))
            if kw["old"] == "TIME-WAIT" and kw["new"] == "CLOSED" \
                    and not self.time_wait_over.done():
                self.time_wait_over.set_result(now)

    def warning(self, event: str, **kw) -> None:
        if event == "packet.dropped":
            self.drops[kw["reason"]] = kw["total"]

    def debug(self, *a, **kw) -> None:
        pass

    error = exception = critical = debug

    def bind(self, **kw) -> _StateTap:
        return self


class DemoFailed(Exception):
    pass


def _kernel_srtt(sock: socket.socket) -> float | None:
    """tcpi_rtt (µs) from TCP_INFO: the kernel's smoothed RTT for this socket."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    except (OSError, AttributeError):
        return None
    if len(info) < 72:
        return None
    # 8 one-byte fields, then u32s: rto ato snd_mss rcv_mss unacked sacked lost retrans
    # fackets last_data_sent last_ack_sent last_data_recv last_ack_recv pmtu rcv_ssthresh rtt
    (rtt_us,) = struct.unpack_from("I", info, 68)
    return rtt_us / 1e6


def _ticks(total: float) -> float:
    if total < 3:
        return 0.25
    if total <= 12:
        return 1.0
    for step in (2.0, 5.0, 10.0, 15.0, 30.0, 60.0):
        if total / step <= 12:
            return step
    return 60.0


def _path(states: list[str]) -> list[str]:
    out: list[str] = []
    for state in states:
        if not out or out[-1] != state:
            out.append(state)
    return out


class Demo:
    """The conversation inside the namespace, told as it happens."""

    def __init__(self, opts, style: Style) -> None:
        self.opts = opts
        self.s = style
        self.msl = opts.msl
        self.line = (opts.message.replace("\r", " ").replace("\n", " ") + "\n").encode()
        self.ladder: Ladder | None = None
        self.recorder: PacketRecorder | None = None
        v6 = getattr(opts, "ipv6", False)
        self.stack_address = STACK_ADDRESS6 if v6 else STACK_ADDRESS
        self.kernel_address = KERNEL_ADDRESS6 if v6 else KERNEL_ADDRESS
        self.kernel_cidr = KERNEL_CIDR6 if v6 else KERNEL_CIDR
        self.family = socket.AF_INET6 if v6 else socket.AF_INET

    def _proc(self) -> str:
        return "/proc/net/tcp6" if self.family == socket.AF_INET6 else "/proc/net/tcp"

    def say(self, text: str = "") -> None:
        print(text, flush=True)

    def note(self, side: str, text: str) -> None:
        """An application's call, written inside the ladder next to its side's axis."""
        if self.recorder is not None:
            self.recorder.flush()  # rows of packets already handled come first
        if self.ladder is not None:
            self.ladder.note(text, beside_kernel=side == "kernel")

    # ------------------------------------------------------------------ the whole story

    def _intro(self) -> None:
        s = self.s
        x = s.times
        self.say(s.bold("usertcp demo") + s.dim(f" {s.dot} one TCP connection, packet by packet"))
        self.say()
        self.say(f"  Linux's own TCP (a plain Python socket) talks to usertcp through the TUN "
                 f"device {TUN}")
        self.say(f"  in the private network namespace {self.opts.netns}, deleted on exit.")
        self.say(f"  usertcp serves a one-line echo on port {PORT} and hangs up first, so usertcp "
                 f"makes the")
        self.say(f"  active close and is the side that waits in TIME-WAIT: 2 {x} MSL = "
                 f"2 {x} {self.msl:g} s = {2 * self.msl:g} s.")
        self.say(s.dim("  On the arrows: seq and ack relative to each side's initial sequence "
                       "number (x is the"))
        self.say(s.dim("  kernel's ISN, y is usertcp's), with the absolute numbers below. Beside "
                       "the axes: each"))
        self.say(s.dim(f"  side's state right after the packet, the kernel's from {self._proc()}, "
                       "usertcp's from"))
        self.say(s.dim("  its engine."))
        self.say()

    async def run(self) -> int:
        from .aio import Stack
        from .phy import TunDevice, configure_host_side
        from .tcp.config import TcpConfig

        loop = asyncio.get_running_loop()
        self._intro()
        device = TunDevice(TUN, MTU)
        try:
            # pyroute2 runs an event loop of its own: keep it off this one.
            await loop.run_in_executor(None, configure_host_side, TUN, self.kernel_cidr, MTU)
        except BaseException:
            device.close()
            raise
        recorder = PacketRecorder(device, kernel_address=self.kernel_address,
                                  stack_address=self.stack_address, stack_port=PORT,
                                  on_record=self._on_record, clock=loop.time)
        self.recorder = recorder
        tap = _StateTap(loop)
        try:
            stack = Stack(recorder, self.stack_address, config=TcpConfig(msl=self.msl), logger=tap)
        except BaseException:
            recorder.close()
            raise
        recorder.attach(stack)
        ksock = socket.socket(self.family, socket.SOCK_STREAM)
        try:
            ksock.setblocking(False)
            ksock.bind((self.kernel_address, 0))  # now, so that the ladder's title can name the port
            kport = ksock.getsockname()[1]
            return await self._story(stack, recorder, tap, ksock, kport)
        finally:
            ksock.close()
            await stack.aclose(timeout=0.5)

    def _on_record(self, rec) -> None:
        if self.ladder is not None:
            self.ladder.packet(rec)

    async def _story(self, stack, recorder: PacketRecorder, tap: _StateTap,
                     ksock: socket.socket, kport: int) -> int:
        s = self.s
        loop = asyncio.get_running_loop()
        served: asyncio.Future = loop.create_future()

        async def one_line_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
            try:
                data = await reader.readline()
                await asyncio.sleep(PAUSE)
                self.note("usertcp", f"write({len(data)} bytes)")
                writer.write(data)
                await writer.drain()
                await asyncio.sleep(PAUSE)
                self.note("usertcp", f"close()  {s.back} usertcp closes first")
                writer.close()
                await writer.wait_closed()
            except Exception as exc:  # noqa: BLE001 - the story below reports it
                if not served.done():
                    served.set_exception(exc)
            else:
                if not served.done():
                    served.set_result(data)

        server = await stack.start_server(one_line_echo, PORT)
        self.ladder = Ladder(self.say, s, kernel=(self.kernel_address, kport),
                             stack=(self.stack_address, PORT))
        self.ladder.header()

        # The kernel's side: an ordinary socket, one step at a time.
        self.note("kernel", f"connect({_hostport(self.stack_address, PORT)})")
        await self._step(loop.sock_connect(ksock, (self.stack_address, PORT)), "connect()")
        await asyncio.sleep(PAUSE)
        self.note("kernel", f"send({len(self.line)} bytes)")
        await self._step(loop.sock_sendall(ksock, self.line), "send()")
        echoed = bytearray()
        while chunk := await self._step(loop.sock_recv(ksock, 4096), "recv()"):
            echoed += chunk
        self.note("kernel", f"recv() {s.to} end of stream")
        kernel_srtt = _kernel_srtt(ksock)
        await asyncio.sleep(PAUSE)
        self.note("kernel", "close()")
        ksock.close()

        await self._step(served, "the usertcp side of the echo")
        server.close()  # the listener goes, so that TIME-WAIT is all that is left

        # The last ACK lands: usertcp in TIME-WAIT, the kernel's socket gone.
        deadline = loop.time() + STEP_TIMEOUT
        while True:
            stack_state = recorder.stack_state()
            kernel_state = kernel_tcp_state((self.kernel_address, kport), (self.stack_address, PORT))
            if stack_state == "TIME-WAIT" and kernel_state == "CLOSED":
                break
            if loop.time() > deadline:
                raise DemoFailed(f"after the teardown usertcp is {stack_state} and the kernel "
                                 f"{kernel_state}; expected TIME-WAIT and CLOSED")
            await asyncio.sleep(0.01)
        recorder.flush()

        entered = next((t for t, _, new, _ in reversed(tap.changes) if new == "TIME-WAIT"),
                       loop.time())
        await self._countdown(stack, tap, kport, entered)
        self._summary(recorder, tap, echoed, kernel_srtt)
        if bytes(echoed) != self.line:
            raise DemoFailed(f"the echo came back as {bytes(echoed)!r}, not {self.line!r}")
        return EXIT_OK

    async def _step(self, awaitable, what: str):
        try:
            return await asyncio.wait_for(awaitable, STEP_TIMEOUT)
        except TimeoutError:
            raise DemoFailed(f"{what} did not finish within {STEP_TIMEOUT:g} s") from None

    # ------------------------------------------------------------------ TIME-WAIT

    async def _countdown(self, stack, tap: _StateTap, kport: int, entered: float) -> None:
        s = self.s
        loop = asyncio.get_running_loop()
        total = 2 * self.msl
        deadline = entered + total
        step = _ticks(total)
        bar_w = 24
        self.say()
        self.say(s.bold("TIME-WAIT") + f" {s.dot} usertcp {_hostport(self.stack_address, PORT)} {s.both} "
                 f"{_hostport(self.kernel_address, kport)}, for 2 {s.times} MSL = {total:g} s")
        self.say(s.dim("  usertcp closed first, so it keeps this 4-tuple out of use until old "
                       "duplicates of its"))
        self.say(s.dim("  segments have died out, ready to ACK the kernel's FIN again should "
                       "that last ACK be lost."))
        self.say(s.dim("  The kernel closed second: its socket went from LAST-ACK straight to "
                       "CLOSED."))
        k = 0
        while True:
            at = entered + k * step
            if at >= deadline - 1e-6:
                break
            if at > loop.time():
                await asyncio.sleep(at - loop.time())
            row = next((r for r in stack.connections() if r["state"] == "TIME-WAIT"), None)
            if row is None:
                break
            left = max(row["timers"].get("time_wait", deadline - loop.time()), 0.0)
            filled = round(bar_w * left / total)
            bar = s.yellow(s.full * filled) + s.dim(s.empty * (bar_w - filled))
            self.say(f"  {s.yellow('TIME-WAIT')}  {left:5.2f} s left  {bar}")
            k += 1
        # The engine's TIME-WAIT -> CLOSED event (through the tap) gives the exact time;
        # the connection table is watched too, should that event not come through.
        while not tap.time_wait_over.done():
            if not any(r["state"] == "TIME-WAIT" for r in stack.connections()):
                break
            if loop.time() > deadline + STEP_TIMEOUT:
                raise DemoFailed(f"TIME-WAIT did not expire within {STEP_TIMEOUT:g} s of its "
                                 f"deadline")
            await asyncio.wait([tap.time_wait_over], timeout=0.01)
        expired = tap.time_wait_over.result() if tap.time_wait_over.done() else loop.time()
        rows = stack.connections()
        self.say(f"  {s.bold(s.red('CLOSED'))}     {0.0:5.2f} s left  {s.dim(s.empty * bar_w)}"
                 f"  expired after {expired - entered:.3f} s")
        if rows:
            raise DemoFailed(f"usertcp's connection table still holds {rows}")
        self.say("  usertcp's connection table is empty: the 4-tuple is free again.")

    # ------------------------------------------------------------------ summary

    def _summary(self, recorder: PacketRecorder, tap: _StateTap, echoed: bytearray,
                 kernel_srtt: float | None) -> None:
        s = self.s
        to = s.to
        recs = recorder.records
        k2s = [r for r in recs if r.direction == KERNEL_TO_STACK]
        s2k = [r for r in recs if r.direction == STACK_TO_KERNEL]
        self.say()
        self.say(s.bold("summary"))
        self.say(f"  packets  {len(recs)}: {len(k2s)} kernel {to} usertcp, {len(s2k)} usertcp "
                 f"{to} kernel, {sum(r.size for r in recs)} bytes of "
                 f"{'IPv6' if self.family == socket.AF_INET6 else 'IPv4'} in all")
        ok = bytes(echoed) == self.line
        verdict = s.green(f"{s.check} the same") if ok else s.red("different!")
        self.say(f"  echo     sent {payload_text(self.line, 40)} ({len(self.line)} bytes), "
                 f"got {len(echoed)} bytes back: {verdict}")
        rtts = []
        for i, rec in enumerate(recs):
            if rec.direction == STACK_TO_KERNEL and rec.flags & SYN and rec.flags & ACK:
                reply = next((r for r in recs[i + 1:] if r.direction == KERNEL_TO_STACK), None)
                if reply is not None:
                    rtts.append(f"SYN-ACK {to} ACK "
                                f"{fmt_duration(reply.time - rec.time, s.unicode)}")
                break
        if recorder.srtt is not None:
            rtts.append(f"usertcp's srtt {fmt_duration(recorder.srtt, s.unicode)}")
        if kernel_srtt:
            rtts.append(f"the kernel's srtt {fmt_duration(kernel_srtt, s.unicode)}")
        if rtts:
            self.say(f"  RTT      {f' {s.dot} '.join(rtts)}")
        if recorder.proc_reads:
            each = fmt_duration(recorder.proc_read_time / recorder.proc_reads, s.unicode)
            self.say(s.dim(f"           (times include the demo's own reads of {self._proc()}, "
                           f"{each} each here,"))
            self.say(s.dim("           and both ends' delayed ACKs)"))
        stack_path = _path(["LISTEN"] + [r.stack_state for r in recs]
                           + [new for _, _, new, _ in tap.changes[-1:]])
        kernel_path = _path(["CLOSED"] + [r.kernel_state for r in recs])
        self.say(f"  usertcp  {f' {to} '.join(stack_path)}")
        self.say(f"  kernel   {f' {to} '.join(kernel_path)}")
        if recorder.other_packets:
            self.say(s.dim(f"  ({recorder.other_packets} packets of other flows passed by "
                           f"unrecorded)"))
        if tap.drops:
            drops = ", ".join(f"{k}: {v}" for k, v in sorted(tap.drops.items()))
            self.say(s.dim(f"  usertcp dropped: {drops}"))


def _inner_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m usertcp.demo",
                                     description="the part of `usertcp demo` that runs inside "
                                                 "its network namespace")
    parser.add_argument("--inner", action="store_true", required=True)
    parser.add_argument("--netns", default="?")
    parser.add_argument("--msl", type=float, default=2.0)
    parser.add_argument("--message", default="hello, usertcp")
    parser.add_argument("--color", choices=("on", "off"), default="off")
    parser.add_argument("--ipv6", action="store_true")
    opts = parser.parse_args(argv)
    with contextlib.suppress(AttributeError, ValueError):
        sys.stdout.reconfigure(errors="replace")  # never die on a terminal's encoding
    style = Style(opts.color == "on", stream_takes_unicode(sys.stdout))
    res = subprocess.run(["ip", "link", "set", "lo", "up"], capture_output=True, text=True,
                         check=False)
    if res.returncode != 0:
        return _error(f"cannot bring lo up in {opts.netns}: {res.stderr.strip()}")
    demo = Demo(opts, style)

    async def main() -> int:
        # `usertcp demo` (outside) stops this process with SIGTERM; SIGINT is ignored.
        task = asyncio.current_task()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await demo.run()

    from .phy.errors import DeviceError

    try:
        return asyncio.run(main())
    except (KeyboardInterrupt, asyncio.CancelledError):
        return EXIT_INTERRUPTED  # `usertcp demo` outside says so
    except DeviceError as exc:
        return _error(str(exc))
    except DemoFailed as exc:
        print(f"usertcp demo: failed: {exc}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    except BrokenPipeError:  # e.g. `usertcp demo | head`
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED


if __name__ == "__main__":
    if "--inner" not in sys.argv[1:]:
        sys.exit("usertcp demo: run it as `usertcp demo`; this module's own entry point is for "
                 "the part inside the network namespace")
    sys.exit(_inner_main(sys.argv[1:]))
