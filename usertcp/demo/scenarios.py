"""The demo's scenarios: what each application does, which packet a fault takes, and why.

A scenario's `steps(story)` plays both applications: the kernel's plain socket and the
usertcp server's handler, through the `Story` helpers (each call is a note in the ladder).
`faults(story)` gives the device middleware it needs, innermost first. `paragraph` says
afterwards what happened, in RFC 9293's terms; `{msl}` and `{tw}` (2 x MSL) are filled in.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..ladder.model import CLOSED, LISTEN, TIME_WAIT
from ..wire.tcp import ACK, FIN, SYN
from .faults import DropFirst, HoldFirst

if TYPE_CHECKING:
    from .story import Story


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str  # one line, for --list
    setup: str  # before the ladder: what is about to happen
    paragraph: str  # after the ladder: what happened and why
    steps: Callable[[Story], Awaitable[None]]
    faults: Callable[[Story], list] = lambda story: []
    usertcp_initial: str = LISTEN  # usertcp's state of the 4-tuple before the first packet
    config: dict = field(default_factory=dict)  # TcpConfig fields for usertcp


# ------------------------------------------------------------------ usertcp's applications


async def echo_then_close(s: Story, reader, writer) -> None:
    """Echo one line, then hang up first."""
    data = await reader.readline()
    await s.pause()
    s.usertcp_note(f"write({len(data)} bytes)")
    writer.write(data)
    await writer.drain()
    await s.pause()
    s.usertcp_note(f"close()  {s.style.back} usertcp closes first")
    writer.close()
    await writer.wait_closed()


async def echo_until_end(s: Story, reader, writer) -> None:
    """Echo one line, read until the kernel's FIN, then close."""
    data = await reader.readline()
    await s.pause()
    s.usertcp_note(f"write({len(data)} bytes)")
    writer.write(data)
    await writer.drain()
    rest = await reader.read()
    s.usertcp_note(f"read() {s.style.to} end of stream" + (f" ({len(rest)} bytes)" if rest else ""))
    await s.pause()
    s.usertcp_note("close()")
    writer.close()
    await writer.wait_closed()


async def echo_then_close_on_cue(s: Story, reader, writer) -> None:
    """Echo one line; close the moment the kernel's FIN is held back (so the FINs cross)."""
    data = await reader.readline()
    await s.pause()
    s.usertcp_note(f"write({len(data)} bytes)")
    writer.write(data)
    await writer.drain()
    await s.step(s.cue, "the kernel's FIN")
    s.usertcp_note("close()  (at the same time)")
    writer.close()
    await writer.wait_closed()


HALF_CLOSE_LINES = 3


async def lines_after_end(s: Story, reader, writer) -> None:
    """Read the request and the end of stream, then send several lines, then close."""
    request = await reader.readline()
    rest = await reader.read()
    s.usertcp_note(f"read() {s.style.to} end of stream" + (f" ({len(rest)} bytes)" if rest else ""))
    text = request.decode(errors="replace").strip()
    for i in range(1, HALF_CLOSE_LINES + 1):
        await s.pause()
        line = f"{i}/{HALF_CLOSE_LINES} {text}\n".encode()
        s.usertcp_note(f"write({len(line)} bytes)")
        writer.write(line)
        await writer.drain()
    await s.pause()
    s.usertcp_note("close()")
    writer.close()
    await writer.wait_closed()


# ------------------------------------------------------------------ the stories


async def usertcp_closes_first(s: Story) -> None:
    served = await s.serve(echo_then_close)
    await s.kernel_connect()
    await s.pause()
    await s.kernel_send(s.line)
    echoed = await s.kernel_recv_to_end()
    await s.pause()
    s.kernel_close()
    await s.served(served)
    s.echo_result(echoed)
    await s.until(kernel=CLOSED, usertcp=TIME_WAIT)


async def kernel_closes_first(s: Story) -> None:
    served = await s.serve(echo_until_end)
    await s.kernel_connect()
    await s.pause()
    await s.kernel_send(s.line)
    echoed = await s.kernel_recv(len(s.line))
    await s.pause()
    s.kernel_close(f"  {s.style.back} the kernel closes first")
    await s.served(served)
    s.echo_result(echoed)
    await s.until(kernel=TIME_WAIT, usertcp=CLOSED)


async def simultaneous_close(s: Story) -> None:
    served = await s.serve(echo_then_close_on_cue)
    await s.kernel_connect()
    await s.pause()
    await s.kernel_send(s.line)
    echoed = await s.kernel_recv(len(s.line))
    await s.pause()
    s.kernel_shutdown()
    await s.step(s.cue, "the kernel's FIN")
    rest = await s.kernel_recv_to_end()
    await s.served(served)
    s.kernel_close()
    s.echo_result(echoed + rest)
    await s.until(kernel=TIME_WAIT, usertcp=TIME_WAIT)


async def refused(s: Story) -> None:
    try:
        await s.kernel_connect()
    except ConnectionRefusedError as exc:
        s.kernel_note(f"connect() {s.style.to} ConnectionRefusedError")
        s.result("connect", f"ConnectionRefusedError: {exc.strerror or exc}")
    else:
        raise s.failure("connect() succeeded, though nothing listens")
    await s.until(kernel=CLOSED, usertcp=CLOSED)


async def half_close(s: Story) -> None:
    served = await s.serve(lines_after_end)
    await s.kernel_connect()
    await s.pause()
    await s.kernel_send(s.line)
    await s.pause()
    s.kernel_shutdown()
    got = await s.kernel_recv_to_end()
    await s.served(served)
    await s.pause()
    s.kernel_close()
    lines = got.decode(errors="replace").splitlines()
    want = [f"{i}/{HALF_CLOSE_LINES} {s.line.decode(errors='replace').strip()}"
            for i in range(1, HALF_CLOSE_LINES + 1)]
    verdict = (s.style.green(f"{s.style.check} all of them") if lines == want
               else s.style.red("not what was sent!"))
    s.result("lines", f"{len(lines)} lines received after shutdown(SHUT_WR): {verdict}")
    if lines != want:
        raise s.failure(f"the kernel received {lines!r}, not {want!r}")
    await s.until(kernel=TIME_WAIT, usertcp=CLOSED)


# ------------------------------------------------------------------ the faults


def _drop_final_ack(s: Story) -> list:
    # usertcp's pure ACK of the kernel's FIN: the last packet of the normal teardown.
    def final_ack(p) -> bool:
        return s.kernel_fin_end is not None and p.flags == ACK and p.ack == s.kernel_fin_end

    return [lambda device: s.dropping(DropFirst(device, final_ack))]


def _drop_syn_ack(s: Story) -> list:
    return [lambda device: s.dropping(DropFirst(device, lambda p: p.flags == SYN | ACK))]


def _hold_kernel_fin(s: Story) -> list:
    def hold(device):
        return HoldFirst(device, matches=lambda p: bool(p.flags & FIN),
                         release_after=lambda p: bool(p.flags & FIN),
                         on_hold=lambda p: s.give_cue())
    return [hold]


SCENARIOS = {sc.name: sc for sc in (
    Scenario(
        "normal", "usertcp closes first; its TIME-WAIT is counted down",
        "usertcp serves a one-line echo on port 7 and hangs up first, so usertcp makes the\n"
        "active close and is the side that waits in TIME-WAIT: 2 {x} MSL = 2 {x} {msl} s = {tw} s.",
        "usertcp closed first, so it made the active close: FIN-WAIT-1 as it sent its FIN,\n"
        "FIN-WAIT-2 once the kernel ACKed it, TIME-WAIT when the kernel's FIN came. The kernel\n"
        "made the passive close: CLOSE-WAIT on usertcp's FIN (its recv() saw end of stream),\n"
        "LAST-ACK once its application closed too, CLOSED on usertcp's last ACK. The side that\n"
        "closes first waits 2 {x} MSL in TIME-WAIT (RFC 9293 3.6): ready to ACK a retransmitted\n"
        "FIN, and keeping old duplicates out of a new connection on the same 4-tuple.",
        usertcp_closes_first),
    Scenario(
        "lost-final-ack", "usertcp's last ACK is lost: the kernel resends its FIN, TIME-WAIT "
        "starts over",
        "As in `normal`, usertcp hangs up first, but the demo drops usertcp's last ACK on its\n"
        "way out. Watch the kernel's FIN come again, and usertcp's 2 {x} MSL = {tw} s start over.",
        "The demo dropped usertcp's last ACK, so the kernel, in LAST-ACK, never saw its FIN\n"
        "acknowledged: its retransmission timer (the RTO, 200 ms and more on Linux) sent the FIN\n"
        "again. usertcp, in TIME-WAIT, ACKed it once more and, as RFC 9293 3.10.7.4 asks, started\n"
        "its 2 {x} MSL over. This is what TIME-WAIT is for: without it the kernel's FIN would\n"
        "have met no connection and been answered with a reset.",
        usertcp_closes_first, faults=_drop_final_ack),
    Scenario(
        "kernel-closes-first", "the kernel closes first: usertcp in CLOSE-WAIT and LAST-ACK",
        "usertcp serves a one-line echo on port 7; this time the kernel's application closes\n"
        "first, and usertcp closes when its read() sees the end of the stream.",
        "The kernel closed first, so it made the active close: FIN-WAIT-1 with its FIN,\n"
        "FIN-WAIT-2 once usertcp ACKed it. usertcp made the passive close: CLOSE-WAIT on the\n"
        "kernel's FIN (its read() returned end of stream), LAST-ACK as its own FIN went out,\n"
        "CLOSED on the kernel's ACK, with nothing to wait for. The kernel is now the side in\n"
        "TIME-WAIT, which Linux holds for 60 s (TCP_TIMEWAIT_LEN) whatever the MSL.",
        kernel_closes_first),
    Scenario(
        "simultaneous-close", "both close at once: the FINs cross and both sides pass CLOSING",
        "Both applications close at the same time: the demo holds the kernel's FIN back on its\n"
        "way in until usertcp has sent its own FIN, so that the two FINs cross.",
        "Both sides sent a FIN while in ESTABLISHED (FIN-WAIT-1), and each then received the\n"
        "other's FIN, which did not acknowledge its own: both went to CLOSING, the state of a\n"
        "simultaneous close (RFC 9293 3.6, figure 13), and ACKed the FIN they got. Each ACK moved\n"
        "its receiver from CLOSING to TIME-WAIT: both sides wait now, usertcp 2 {x} MSL = {tw} s,\n"
        "the kernel its fixed 60 s.",
        simultaneous_close, faults=_hold_kernel_fin),
    Scenario(
        "refused", "the kernel connects to a port nobody listens on: a reset",
        "Nothing listens on usertcp's port 7 this time: the kernel's connect() is answered with\n"
        "a reset.",
        "With no listener, the kernel's SYN arrived for a CLOSED connection. RFC 9293 3.10.7.1:\n"
        "a segment without ACK is answered with a reset of seq 0 and ack = its seq plus its\n"
        "length (the SYN counts one), so RST-ACK seq=0 ack=1. The kernel, in SYN-SENT, takes a\n"
        "reset that acknowledges its SYN: CLOSED, and connect() fails with ECONNREFUSED\n"
        "(ConnectionRefusedError). No connection ever existed on usertcp's side.",
        refused, usertcp_initial=CLOSED),
    Scenario(
        "syn-retry", "usertcp's first SYN-ACK is lost: the kernel sends its SYN again after 1 s",
        "As in `normal`, but the demo drops usertcp's first SYN-ACK on its way out.",
        "The demo dropped usertcp's first SYN-ACK. The kernel, in SYN-SENT, heard nothing and\n"
        "after its initial retransmission timeout (1 s, RFC 6298) sent the same SYN again, same\n"
        "ISN. usertcp, still in SYN-RECEIVED, knew it and sent its SYN-ACK again; the kernel's\n"
        "ACK completed the three-way handshake and the rest went as in `normal`. (usertcp's own\n"
        "SYN-ACK timer was set to 3 s here, so that the retry shown is the kernel's.)",
        usertcp_closes_first, faults=_drop_syn_ack, config={"rto_initial": 3.0}),
    Scenario(
        "half-close", "the kernel shuts down its sending side; usertcp goes on sending",
        "After its request the kernel's application shuts down its sending side only\n"
        "(shutdown(SHUT_WR)); usertcp answers with several lines and then closes.",
        "shutdown(SHUT_WR) sent a FIN that closes only the kernel's direction: the kernel went\n"
        "to FIN-WAIT-1, then FIN-WAIT-2 on usertcp's ACK. usertcp went to CLOSE-WAIT, in which\n"
        "RFC 9293 still lets it send: its lines went out and the kernel, in FIN-WAIT-2, ACKed\n"
        "and read them. usertcp closed last (LAST-ACK, then CLOSED on the kernel's ACK); the\n"
        "kernel, having closed first, is in TIME-WAIT (60 s on Linux).",
        half_close),
)}
