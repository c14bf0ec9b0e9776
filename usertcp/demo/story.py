"""The part of `usertcp demo` that runs inside the network namespace: one scenario, told.

A TUN device joins the kernel (10.7.0.1) to a usertcp stack (10.7.0.2); the scenario
plays a plain kernel socket against a usertcp server. The device is wrapped, outermost
first, in the recorder (every packet of the connection, as a ladder row), an optional
pcap writer, and the scenario's faults, so a dropped packet is still seen as sent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import struct
import sys

from .. import log
from ..ladder.model import LEFT, RIGHT, TIME_WAIT
from ..ladder.recorder import PacketRecorder
from ..ladder.text import (
    Style,
    flag_words,
    fmt_duration,
    hostport,
    payload_text,
    stream_takes_unicode,
)
from ..wire.tcp import ACK, FIN, SYN
from .pcap import ConversationPcap
from .scenarios import SCENARIOS, Scenario
from .timeline import Timeline

TUN = "utcp0"
MTU = 1500
STACK_ADDRESS, KERNEL_ADDRESS, PREFIX = "10.7.0.2", "10.7.0.1", 24
# --ipv6: the same conversation over IPv6 (the kernel side gets its address without DAD).
STACK_ADDRESS6, KERNEL_ADDRESS6, PREFIX6 = "fd00:7::2", "fd00:7::1", 64
PORT = 7
PAUSE = 0.25  # between the applications' steps, so that each packet gets its own row
STEP_TIMEOUT = 5.0  # for any one step of the conversation
BAR = 24  # cells of the TIME-WAIT bar

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class DemoFailed(Exception):
    """The conversation did not go as the scenario says it must."""


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
    return rtt_us / 1e6 if rtt_us else None


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


class Story:
    """One scenario inside the namespace, told as it happens."""

    def __init__(self, opts, style: Style, scenario: Scenario) -> None:
        self.opts = opts
        self.style = style
        self.scenario = scenario
        self.msl = opts.msl
        self.line = (opts.message.replace("\r", " ").replace("\n", " ") + "\n").encode()
        v6 = opts.ipv6
        self.stack_address = STACK_ADDRESS6 if v6 else STACK_ADDRESS
        self.kernel_address = KERNEL_ADDRESS6 if v6 else KERNEL_ADDRESS
        self.host_cidr = f"{KERNEL_ADDRESS6}/{PREFIX6}" if v6 else f"{KERNEL_ADDRESS}/{PREFIX}"
        self.family = socket.AF_INET6 if v6 else socket.AF_INET
        self.loop = asyncio.get_running_loop()
        self.stack = None
        self.ksock: socket.socket | None = None
        self.kernel_ep: tuple[str, int] = (self.kernel_address, 0)
        self.stack_ep = (self.stack_address, PORT)
        self.timeline: Timeline | None = None
        self.recorder: PacketRecorder | None = None
        self.drops: list = []  # the scenario's DropFirst middlewares
        self._drops_seen = 0
        self.kernel_fin_end: int | None = None  # seq just past the kernel's FIN, once seen
        self.cue: asyncio.Future = self.loop.create_future()  # the held FIN, for the apps
        self.changes: list = []  # usertcp's StateChanged events of this connection
        self.time_wait_over: asyncio.Future = self.loop.create_future()
        self.results: list[tuple[str, str]] = []  # the scenario's lines for the summary
        self.kernel_srtt: float | None = None
        self.stack_srtt: float | None = None
        self._server = None

    # ------------------------------------------------------------------ output

    def say(self, text: str = "") -> None:
        print(text, flush=True)

    def _fill(self, text: str) -> str:
        return text.format(x=self.style.times, msl=f"{self.msl:g}", tw=f"{2 * self.msl:g}")

    def kernel_note(self, text: str) -> None:
        self.timeline.note(text, LEFT)

    def usertcp_note(self, text: str) -> None:
        self.timeline.note(text, RIGHT)

    def result(self, label: str, text: str) -> None:
        self.results.append((label, text))

    def failure(self, message: str) -> DemoFailed:
        return DemoFailed(message)

    # ------------------------------------------------------------------ for the scenarios

    async def pause(self) -> None:
        await asyncio.sleep(PAUSE)

    async def step(self, awaitable, what: str, timeout: float = STEP_TIMEOUT):
        try:
            return await asyncio.wait_for(awaitable, timeout)
        except TimeoutError:
            raise DemoFailed(f"{what} did not happen within {timeout:g} s") from None

    def dropping(self, drop):
        """Register one of the scenario's DropFirst middlewares (so its drops show as lost)."""
        self.drops.append(drop)
        return drop

    def give_cue(self) -> None:
        """The held-back FIN is caught: the applications go on."""
        if not self.cue.done():
            self.kernel_note("(its FIN is held back on the way to usertcp)")
            self.cue.set_result(None)

    async def serve(self, handler) -> asyncio.Future:
        """Serve `handler(story, reader, writer)` on usertcp's port; its outcome, as a future."""
        served: asyncio.Future = self.loop.create_future()

        async def connected(reader, writer):
            try:
                await handler(self, reader, writer)
            except Exception as exc:  # noqa: BLE001 - reported by `served`
                if not served.done():
                    served.set_exception(exc)
            else:
                if not served.done():
                    served.set_result(None)

        self._server = await self.stack.start_server(connected, PORT)
        return served

    async def served(self, served: asyncio.Future) -> None:
        await self.step(served, "the usertcp side of the conversation")

    async def kernel_connect(self) -> None:
        self.kernel_note(f"connect({hostport(*self.stack_ep)})")
        await self.step(self.loop.sock_connect(self.ksock, self.stack_ep), "connect()")

    async def kernel_send(self, data: bytes) -> None:
        self.kernel_note(f"send({len(data)} bytes)")
        await self.step(self.loop.sock_sendall(self.ksock, data), "send()")

    async def kernel_recv(self, n: int) -> bytes:
        got = bytearray()
        while len(got) < n:
            chunk = await self.step(self.loop.sock_recv(self.ksock, n - len(got)), "recv()")
            if not chunk:
                break
            got += chunk
        return bytes(got)

    async def kernel_recv_to_end(self) -> bytes:
        got = bytearray()
        for _ in range(10_000):  # bounded: the demo's messages are short
            chunk = await self.step(self.loop.sock_recv(self.ksock, 4096), "recv()")
            if not chunk:
                break
            got += chunk
        self.kernel_note(f"recv() {self.style.to} end of stream")
        return bytes(got)

    def kernel_shutdown(self) -> None:
        self.ksock.shutdown(socket.SHUT_WR)
        # Noted after the call: its FIN is read from the device only when the loop runs.
        self.kernel_note("shutdown(SHUT_WR)")
        self.timeline.kernel_state()  # FIN-WAIT-1, for the summary, even if no row shows it

    def kernel_close(self, comment: str = "") -> None:
        self.kernel_srtt = _kernel_srtt(self.ksock)
        self.ksock.close()
        self.kernel_note("close()" + comment)
        self.timeline.kernel_state()

    def echo_result(self, echoed: bytes) -> None:
        s = self.style
        ok = echoed == self.line
        verdict = s.green(f"{s.check} the same") if ok else s.red("different!")
        self.result("echo", f"sent {payload_text(self.line, 40)} ({len(self.line)} bytes), "
                            f"got {len(echoed)} bytes back: {verdict}")
        if not ok:
            raise DemoFailed(f"the echo came back as {echoed!r}, not {self.line!r}")

    async def until(self, *, kernel: str, usertcp: str, timeout: float = STEP_TIMEOUT) -> None:
        """Wait (bounded) until both ends are in these states."""
        tl = self.timeline
        deadline = self.loop.time() + timeout
        while True:
            k, u = tl.kernel_state(), tl.stack_state()
            if k == kernel and u == usertcp:
                return
            if self.loop.time() > deadline:
                raise DemoFailed(f"in the end usertcp is {u} and the kernel {k}; expected "
                                 f"{usertcp} and {kernel}")
            await asyncio.sleep(0.005)

    # ------------------------------------------------------------------ wiring

    def _wrap(self, device):
        for fault in self.scenario.faults(self):
            device = fault(device)
        if self.opts.pcap:
            device = ConversationPcap(device, self.opts.pcap, self._match)
        self.recorder = PacketRecorder(device, on_packet=self._on_packet, match=self._match,
                                       clock=self.loop.time, one_at_a_time=True)
        return self.recorder

    def _match(self, src: str, sport: int, dst: str, dport: int) -> bool:
        return {(src, sport), (dst, dport)} == {self.kernel_ep, self.stack_ep}

    def _lost(self) -> bool:
        dropped = sum(len(d.dropped) for d in self.drops)
        lost, self._drops_seen = dropped > self._drops_seen, dropped
        return lost

    def _on_packet(self, packet, outbound: bool) -> None:
        if self.timeline is None:
            return  # (none of the connection's packets comes before the timeline)
        if not outbound and packet.flags & FIN and self.kernel_fin_end is None:
            self.kernel_fin_end = (packet.seq + packet.length + 1) & 0xFFFFFFFF
        self.timeline.on_packet(packet, outbound)

    def _on_state(self, event) -> None:
        if (tuple(event.local[:2]), tuple(event.remote[:2])) != (self.stack_ep, self.kernel_ep):
            return
        self.changes.append(event)
        if str(event.old) == TIME_WAIT and str(event.new) == "CLOSED" \
                and not self.time_wait_over.done():
            self.time_wait_over.set_result(event.time)

    # ------------------------------------------------------------------ the whole story

    def _intro(self) -> None:
        s = self.style
        sc = self.scenario
        self.say(s.bold("usertcp demo") + s.dim(f" {s.dot} one TCP connection, packet by packet "
                                                f"{s.dot} scenario ") + s.bold(sc.name))
        self.say()
        self.say(f"  Linux's own TCP (a plain Python socket) talks to usertcp through the TUN "
                 f"device {TUN}")
        self.say(f"  in the private network namespace {self.opts.netns}, deleted on exit.")
        for line in self._fill(sc.setup).splitlines():
            self.say(f"  {line}")
        proc = "/proc/net/tcp6" if self.family == socket.AF_INET6 else "/proc/net/tcp"
        self.say(s.dim("  On the arrows: seq and ack relative to each side's initial sequence "
                       "number (x is the"))
        self.say(s.dim("  kernel's ISN, y is usertcp's), with the absolute numbers below. Beside "
                       "the axes: each"))
        self.say(s.dim(f"  side's state right after the packet, the kernel's from {proc}, "
                       "usertcp's from"))
        self.say(s.dim("  its engine."))
        self.say()

    async def run(self) -> int:
        from ..aio import Stack
        from ..tcp.config import TcpConfig

        self._intro()
        config = TcpConfig(msl=self.msl, **self.scenario.config)
        self.stack = await Stack.open(TUN, self.stack_address, self.host_cidr, mtu=MTU,
                                      config=config, wrap=self._wrap)
        self.ksock = socket.socket(self.family, socket.SOCK_STREAM)
        try:
            # Bound before it connects, so that the ladder's title can name the port.
            self.ksock.setblocking(False)
            self.ksock.bind((self.kernel_address, 0))
            self.kernel_ep = (self.kernel_address, self.ksock.getsockname()[1])
            self.timeline = Timeline(self.say, self.style, kernel=self.kernel_ep,
                                     stack_endpoint=self.stack_ep,
                                     stack_initial=self.scenario.usertcp_initial)
            self.timeline.lost_check = self._lost
        except BaseException:
            self.ksock.close()
            await self.stack.aclose(timeout=0.5)
            raise
        try:
            self.timeline.stack = self.stack
            self.stack.add_state_listener(self._on_state)
            self.timeline.ladder.header()
            await self.scenario.steps(self)
            self.stack_srtt = self.timeline.stack_srtt
            if self._server is not None:
                self._server.close()  # the listener goes: the 4-tuple is all that is left
            self.timeline.finish()
            self._paragraph()
            if self.timeline.stack_state() == TIME_WAIT:
                await self._time_wait()
            self._summary()
            return EXIT_OK
        finally:
            if self.ksock.fileno() >= 0:
                self.ksock.close()
            await self.stack.aclose(timeout=0.5)

    def _paragraph(self) -> None:
        self.say()
        self.say(self.style.bold("what happened"))
        for line in self._fill(self.scenario.paragraph).splitlines():
            self.say(f"  {line}")

    # ------------------------------------------------------------------ TIME-WAIT

    def _ms(self, t: float) -> str:
        """A loop time as the ladder's time column shows it."""
        return f"{(t - self.timeline.t0) * 1000:.1f} ms"

    def _time_wait_row(self) -> dict | None:
        for row in self.stack.connections():
            if row["state"] == TIME_WAIT and tuple(row["remote"][:2]) == self.kernel_ep:
                return row
        return None

    async def _time_wait(self) -> None:
        s = self.style
        loop = self.loop
        total = 2 * self.msl
        row = self._time_wait_row()
        if row is None:
            raise DemoFailed("usertcp left TIME-WAIT before it could be shown")
        # The engine's own deadline; 2 x MSL before it is when the wait (re)started.
        deadline = loop.time() + row["timers"]["time_wait"]
        started = deadline - total
        entered = next((e.time for e in self.changes if str(e.new) == TIME_WAIT), started)
        self.say()
        self.say(s.bold("TIME-WAIT") + f" {s.dot} usertcp {hostport(*self.stack_ep)} {s.both} "
                 f"{hostport(*self.kernel_ep)}, for 2 {s.times} MSL = {total:g} s")
        restarted = started - entered > 1e-3
        if restarted:
            self._restart_timing(entered, started, total)
        else:
            self.say(s.dim("  usertcp's close was an active one, so it keeps this 4-tuple out "
                           "of use until old"))
            self.say(s.dim("  duplicates of its segments have died out, ready to ACK the "
                           "kernel's FIN again should"))
            self.say(s.dim("  its last ACK be lost."))
        step = _ticks(total)
        for k in range(int(total / step) + 2):
            at = started + k * step
            if at >= deadline - 1e-6:
                break
            if at > loop.time():
                await asyncio.sleep(at - loop.time())
            row = self._time_wait_row()
            if row is None:
                break
            left = max(row["timers"]["time_wait"], 0.0)
            filled = round(BAR * left / total)
            bar = s.yellow(s.full * filled) + s.dim(s.empty * (BAR - filled))
            self.say(f"  {s.yellow('TIME-WAIT')}  {left:5.2f} s left  {bar}")
        # The engine's TIME-WAIT -> CLOSED event gives the exact time.
        try:
            expired = await asyncio.wait_for(asyncio.shield(self.time_wait_over),
                                             max(deadline - loop.time(), 0) + STEP_TIMEOUT)
        except TimeoutError:
            raise DemoFailed(f"TIME-WAIT did not expire within {STEP_TIMEOUT:g} s of its "
                             f"deadline") from None
        ms = self._ms
        self.say(f"  {s.bold(s.red('CLOSED'))}     {0.0:5.2f} s left  {s.dim(s.empty * BAR)}"
                 f"  expired after {expired - started:.3f} s" + (" from the restart" if restarted
                                                                 else ""))
        if restarted:
            self.say(f"  TIME-WAIT lasted {expired - entered:.3f} s in all, from {ms(entered)} to "
                     f"{ms(expired)} on the ladder.")
        rows = self.stack.connections()
        if rows:
            raise DemoFailed(f"usertcp's connection table still holds {rows}")
        self.say("  usertcp's connection table is empty: the 4-tuple is free again.")

    def _restart_timing(self, entered: float, started: float, total: float) -> None:
        s = self.style
        ms = self._ms
        fin = next((e.packet for e in self.timeline.entries
                    if not e.outbound and e.packet.flags & FIN and e.packet.time > entered),
                   None)
        came = fin.time if fin is not None else started
        self.say(f"  entered    at {ms(entered)} on the ladder: to expire at {ms(entered + total)}")
        self.say(f"  FIN again  at {ms(came)}, {fmt_duration(came - entered, s.unicode)} later "
                 f"(the kernel's RTO), with {entered + total - came:.3f} s still to wait")
        self.say(f"  restarted  at {ms(started)}: 2 {s.times} MSL from there, to expire at "
                 f"{ms(started + total)}")
        self.say(s.dim("  The countdown runs from the restart, by the engine's own TIME-WAIT "
                       "timer:"))

    # ------------------------------------------------------------------ summary

    def _summary(self) -> None:
        s = self.style
        to = s.to
        entries = self.timeline.entries
        k2s = [e for e in entries if not e.outbound]
        s2k = [e for e in entries if e.outbound]
        self.say()
        self.say(s.bold("summary"))
        self.say(f"  packets  {len(entries)}: {len(k2s)} kernel {to} usertcp, {len(s2k)} usertcp "
                 f"{to} kernel, {sum(e.packet.size for e in entries)} bytes of "
                 f"{'IPv6' if self.family == socket.AF_INET6 else 'IPv4'} in all")
        lost = [e for e in entries if e.lost]
        if lost:
            t0 = self.timeline.t0
            what = ", ".join(f"usertcp's {flag_words(e.packet.flags)} at "
                             f"{(e.packet.time - t0) * 1000:.1f} ms" for e in lost)
            self.say(f"  lost     {len(lost)}: {what}, dropped by the demo on its way out")
        for label, text in self.results:
            self.say(f"  {label:<8} {text}")
        rtts = []
        for i, e in enumerate(entries):
            p = e.packet
            if e.outbound and not e.lost and p.flags & SYN and p.flags & ACK:
                reply = next((r for r in entries[i + 1:] if not r.outbound), None)
                if reply is not None:
                    rtts.append(f"SYN-ACK {to} ACK "
                                f"{fmt_duration(reply.packet.time - p.time, s.unicode)}")
                break
        if self.timeline.stack_srtt is not None:
            rtts.append(f"usertcp's srtt {fmt_duration(self.timeline.stack_srtt, s.unicode)}")
        if self.kernel_srtt:
            rtts.append(f"the kernel's srtt {fmt_duration(self.kernel_srtt, s.unicode)}")
        if rtts:
            self.say(f"  RTT      {f' {s.dot} '.join(rtts)}")
            tl = self.timeline
            if tl.proc_reads:
                each = fmt_duration(tl.proc_read_time / tl.proc_reads, s.unicode)
                self.say(s.dim(f"           (times include the demo's own reads of /proc, "
                               f"{each} each here,"))
                self.say(s.dim("           and both ends' delayed ACKs)"))
        initial = self.scenario.usertcp_initial
        stack_path = _path([str(self.changes[0].old) if self.changes else initial]
                           + [str(e.new) for e in self.changes])
        kernel_path = self.timeline.kernel_history
        self.say(f"  usertcp  {f' {to} '.join(stack_path)}")
        self.say(f"  kernel   {f' {to} '.join(kernel_path)}")
        drops = dict(self.stack.drops)
        if drops:
            text = ", ".join(f"{k}: {v}" for k, v in sorted(drops.items()))
            self.say(s.dim(f"  usertcp dropped: {text}"))


# ====================================================================== entry point


def inner_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m usertcp.demo",
                                     description="the part of `usertcp demo` that runs inside "
                                                 "its network namespace")
    parser.add_argument("--inner", action="store_true", required=True)
    parser.add_argument("--netns", default="?")
    parser.add_argument("--scenario", default="normal", choices=sorted(SCENARIOS))
    parser.add_argument("--msl", type=float, default=2.0)
    parser.add_argument("--message", default="hello, usertcp")
    parser.add_argument("--color", choices=("on", "off"), default="off")
    parser.add_argument("--ipv6", action="store_true")
    parser.add_argument("--pcap", default=None)
    opts = parser.parse_args(argv)
    with contextlib.suppress(AttributeError, ValueError):
        sys.stdout.reconfigure(errors="replace")  # never die on a terminal's encoding
    log.configure("error")  # the story is told on stdout; only errors go to stderr
    style = Style(opts.color == "on", stream_takes_unicode(sys.stdout))

    async def main() -> int:
        # `usertcp demo` (outside) stops this process with SIGTERM; SIGINT is ignored.
        task = asyncio.current_task()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await Story(opts, style, SCENARIOS[opts.scenario]).run()

    from ..phy.errors import DeviceError

    try:
        return asyncio.run(main())
    except (KeyboardInterrupt, asyncio.CancelledError):
        return EXIT_INTERRUPTED  # `usertcp demo` outside says so
    except DeviceError as exc:
        print(f"usertcp demo: error: {exc}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    except DemoFailed as exc:
        print(f"usertcp demo: failed: {exc}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    except BrokenPipeError:  # e.g. `usertcp demo | head`
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except OSError as exc:  # e.g. the --pcap file cannot be written
        print(f"usertcp demo: error: {exc}", file=sys.stderr, flush=True)
        return EXIT_FAILED
