"""The asyncio driver: one device, one pure engine, one timer handle.

On readability it reads packets until the device is empty (bounded batches),
feeds the engine, turns engine events into protocol callbacks, and writes
everything the engine has to send in one pass. Application writes schedule a
single flush per loop iteration. The only timer is a `loop.call_at` for the
earliest deadline of the engine and the device.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import ipaddress
import logging
import os
import secrets
import time
from collections.abc import Callable

import structlog

from ..stack import Stack as CoreStack
from ..tcp import events as ev
from ..tcp.config import TcpConfig
from ..tcp.state import State
from ..wire.errors import DropReason
from ..wire.ipv4 import int_to_addr
from .server import Server
from .transport import TcpTransport

_BATCH = 64
_BATCHES_PER_WAKE = 8  # then flush and let other callbacks run
_SPIN_LIMIT = 0.001  # busy polling gives the loop back after this long, however busy


class Stack:
    """A running usertcp stack: asyncio's server and client APIs over a device."""

    def __init__(self, device, address, *, config: TcpConfig | None = None, logger=None,
                 busy_poll: float = 0.0):
        cfg = config or TcpConfig()
        changes = {}
        if not cfg.isn_secret:
            changes["isn_secret"] = secrets.token_bytes(16)
        if cfg.mss > device.mtu - 40:
            changes["mss"] = device.mtu - 40  # a segment must fit the device's MTU
        # What the device does for us (TUN with virtio-net offload: checksums, TSO).
        if getattr(device, "tx_checksum_offload", False):
            changes["tx_checksum_offload"] = True
        tso_max = getattr(device, "tso_max", 0)
        if tso_max:
            changes["tso_max"] = tso_max
        if changes:
            cfg = dataclasses.replace(cfg, **changes)
        self.loop = asyncio.get_running_loop()
        self.device = device
        self.core = CoreStack(address, config=cfg)
        self.address = self.core.address_str
        self.addresses = [int_to_addr(a) for a in self.core.addresses]
        self.config = cfg
        self.log = logger or structlog.get_logger("usertcp").bind(addr=self.address)
        # A transition is an event for listeners always, a log line only at debug (a line costs
        # more than the transition); a filtering logger's level is fixed, so nothing is built.
        enabled = getattr(self.log, "is_enabled_for", None)
        self._log_states = enabled is None or enabled(logging.DEBUG)
        self.blocked: set[TcpTransport] = set()  # transports with bytes waiting for buffer space
        self._transports: dict[int, TcpTransport] = {}
        self._connecting: dict[int, tuple[asyncio.Future, Callable, tuple[str, int]]] = {}
        self._servers: dict[int, Server] = {}  # by port; 0 is the server on every address
        self._admitted: dict[int, object] = {}  # conn id -> what admit returned, until accepted
        self._admitting: set[asyncio.Task] = set()
        self._datagram_handler = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when: float | None = None
        self._flush_scheduled = False
        self._drops_logged: dict[str, int] = {}
        self._state_listeners: list[Callable[[ev.StateChanged], None]] = []
        self._closed = False
        self._device_gone = False
        self._rx_verified = bool(getattr(device, "rx_checksum_verified", False))
        # A device that verifies TCP checksums itself (TUN offload) counts the bad ones;
        # they go into the engine's drops under the reason the engine would have used.
        self._csum_device = _innermost_with(device, "rx_bad_checksum")
        self._csum_bad_seen = 0
        # Seconds to keep reading the device after a pass that had input, before the loop
        # sleeps (as Linux's SO_BUSY_POLL): the next packet of a conversation is often that
        # close, and a sleeping process's wake-up costs more than its work, above all in a VM.
        # Costs CPU while it spins (yielding the core at each empty read); 0 (off) by default.
        self.busy_poll = busy_poll
        self._fd = device.fileno()
        if self._fd is not None:
            self.loop.add_reader(self._fd, self._on_readable)

    # ------------------------------------------------------------ opening

    @classmethod
    def open(cls, tun: str = "utcp0", address: str = "10.7.0.2",
             host_address: str = "10.7.0.1/24", *, mtu: int = 1500,
             config: TcpConfig | None = None, pcap: str | None = None,
             fault: dict | None = None, offload: bool = True, routes=(),
             wrap: Callable | None = None) -> _Opener:
        """Create the TUN device, configure its kernel side and start a stack.

        `routes` ("10.8.0.0/16", ...) are routed into the device too: with a server on
        every address (`start_server(cb, port=None)`), the stack answers for them all.
        `wrap(device) -> device` puts middleware of the caller's around the device,
        outermost (after `fault` and `pcap`): what it returns is what the stack drives.

        Use as `async with Stack.open(...) as stack:` (or `await Stack.open(...)`
        and `await stack.aclose()` later).
        """
        return _Opener(cls, tun, address, host_address, mtu, config, pcap, fault, offload,
                       tuple(routes), wrap)

    def now(self) -> float:
        return self.loop.time()

    # ------------------------------------------------------------ public API

    async def start_server(self, client_connected_cb, port: int | None, *,
                           backlog: int | None = None, limit: int = 2 ** 16,
                           start_serving: bool = True, admit=None) -> Server:
        """Like `asyncio.start_server`: the callback gets (StreamReader, StreamWriter).

        `port=None` serves every address and port routed to the stack (see create_server).
        """
        loop = self.loop

        def factory():
            reader = asyncio.StreamReader(limit=limit, loop=loop)
            return asyncio.StreamReaderProtocol(reader, client_connected_cb, loop=loop)

        return await self.create_server(factory, port, backlog=backlog,
                                        start_serving=start_serving, admit=admit)

    async def create_server(self, protocol_factory, port: int | None, *,
                            backlog: int | None = None, start_serving: bool = True,
                            admit=None) -> Server:
        """Like `loop.create_server`, for protocols.

        `port=None`: a server for every address and port routed to the stack (ports that
        have a server of their own on the stack's address excepted). Each transport's
        `get_extra_info('sockname')` is the address and port the peer dialled.

        `admit`, with port=None: `async def admit(sockname, peername)`, awaited before the
        SYN is answered, e.g. to connect to the real destination first. What it returns is
        the transport's `get_extra_info('admitted')` (and is closed, if it has `close()`,
        should the handshake then fail). Raising turns the SYN down as a router would:
        ConnectionRefusedError with a reset, OSError EHOSTUNREACH/ENETUNREACH/EACCES with
        an ICMP unreachable, TimeoutError with silence (the peer's SYN retries run out).
        """
        self._check_open()
        server = Server(self, port, protocol_factory, backlog, admit)
        if start_serving:
            await server.start_serving()
        return server

    async def open_connection(self, host, port: int, *, limit: int = 2 ** 16,
                              local_port: int | None = None):
        """Like `asyncio.open_connection`: returns (StreamReader, StreamWriter)."""
        loop = self.loop
        reader = asyncio.StreamReader(limit=limit, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        transport, _ = await self.create_connection(lambda: protocol, host, port,
                                                    local_port=local_port)
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        return reader, writer

    async def create_connection(self, protocol_factory, host, port: int, *,
                                local_port: int | None = None, local_address: str | None = None):
        """Like `loop.create_connection`: active open; returns (transport, protocol).

        `local_address` (default: the stack's) may be any address the peer routes back to
        the stack, when it serves every address.
        """
        self._check_open()
        try:
            remote = str(ipaddress.ip_address(host))
        except ValueError:
            raise ValueError(f"{host!r} is not an IP address (usertcp does no name lookups)")
        conn_id = self.core.connect(remote, port, self.now(), local_port=local_port,
                                    local_address=local_address)
        fut = self.loop.create_future()
        self._connecting[conn_id] = (fut, protocol_factory, sockaddr(remote, port))
        self.schedule_flush()
        try:
            return await fut
        except asyncio.CancelledError:
            if self._connecting.pop(conn_id, None) is not None:
                self.core.abort(conn_id, self.now())
                self.schedule_flush()
            raise

    # ------------------------------------------------------------ datagrams

    def forward_datagrams(self, handler) -> None:
        """Hand UDP datagrams (to any address, under a server on every address) and pings of
        addresses other than the stack's to `handler`:
        `handler.datagram_received(data, src, dst)` and
        `handler.echo_request(src, dst, ident, seq, data)`. None stops it."""
        self._datagram_handler = handler
        self.core.forward_datagrams(handler is not None)

    def send_datagram(self, data, src: tuple[str, int], dst: tuple[str, int]) -> None:
        """A UDP datagram from `src` (e.g. the address the peer sent to) to `dst`."""
        self.core.send_datagram(data, src, dst)
        self.schedule_flush()

    def send_echo_reply(self, src: str, dst: str, ident: int, seq: int, data) -> None:
        self.core.send_echo_reply(src, dst, ident, seq, data)
        self.schedule_flush()

    def send_unreachable(self, src: tuple[str, int], dst: tuple[str, int], code: int) -> None:
        """ICMP destination unreachable (`code`) about a UDP datagram sent from src to dst."""
        self.core.send_unreachable(src, dst, code)
        self.schedule_flush()

    def add_state_listener(self, callback: Callable[[ev.StateChanged], None]) -> None:
        """Call `callback(event)` with every connection's `StateChanged` event.

        Called synchronously as the driver dispatches the engine's events, before the
        packets that result from the same input are written to the device.
        """
        self._state_listeners.append(callback)

    def remove_state_listener(self, callback: Callable[[ev.StateChanged], None]) -> None:
        """Stop calling `callback`; a callback that was never added is ignored."""
        if callback in self._state_listeners:
            self._state_listeners.remove(callback)

    def connections(self) -> list[dict]:
        """The engine's connection table: 4-tuple, state, queues, timers, RTT."""
        return self.core.connections(self.now())

    @property
    def counters(self):
        return self.core.counters

    @property
    def drops(self):
        return self.core.drops

    async def aclose(self, timeout: float = 2.0) -> None:
        """Stop serving, close connections gracefully (bounded), release the device."""
        if self._closed:
            return
        for server in list(self._servers.values()):
            server.close()
        for transport in list(self._transports.values()):
            transport.close()
        deadline = self.loop.time() + timeout
        while self._transports and self.loop.time() < deadline:
            await asyncio.sleep(0.01)
        for transport in list(self._transports.values()):
            transport.abort()
        for fut, _, _ in self._connecting.values():
            if not fut.done():
                fut.set_exception(ConnectionAbortedError("stack closed"))
        for task in list(self._admitting):
            task.cancel()
        for value in self._admitted.values():
            _close_quietly(value)
        self._admitted.clear()
        self._flush()
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        if self._fd is not None and not self._device_gone:
            self.loop.remove_reader(self._fd)
        self.device.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the stack is closed")

    # ------------------------------------------------------------ the loop's callbacks

    def _on_readable(self) -> None:
        # What protocols write meanwhile goes out in the flush that ends this pass: no
        # call_soon, no extra pass of the loop (the echo of a segment carries its ACK).
        self._flush_scheduled = True
        try:
            self._receive_pending()
            self._after_input()
            if self.busy_poll:
                self._spin()
        except BaseException:
            self._flush_scheduled = False
            self.schedule_flush()
            raise

    def _spin(self) -> None:
        """Busy polling: read on while packets keep coming within `busy_poll` of the last,
        each handled and flushed as in a pass of its own; at most _SPIN_LIMIT in all."""
        clock = time.perf_counter
        start = clock()
        end = start + self.busy_poll
        limit = start + _SPIN_LIMIT
        device = self.device
        receive = self.core.receive
        verified = self._rx_verified
        yield_cpu = os.sched_yield
        while True:
            try:
                packets = device.receive_batch(_BATCH)
            except OSError as exc:
                self._device_lost(exc)
                return
            if packets:
                now = self.loop.time()
                for packet in packets:
                    receive(packet, now, checksum_verified=verified)
                self._flush_scheduled = True
                self._after_input()
                t = clock()
                end = min(t + self.busy_poll, limit)
                if t >= limit:
                    return
            elif clock() >= end:
                return
            else:
                yield_cpu()

    def _receive_pending(self) -> None:
        receive = self.core.receive
        device = self.device
        loop_time = self.loop.time
        verified = self._rx_verified
        for _ in range(_BATCHES_PER_WAKE):
            try:
                packets = device.receive_batch(_BATCH)
            except OSError as exc:
                self._device_lost(exc)
                return
            if not packets:
                break
            now = loop_time()
            for packet in packets:
                receive(packet, now, checksum_verified=verified)
            if len(packets) < _BATCH:
                break
        if self._csum_device is not None:
            bad = self._csum_device.rx_bad_checksum
            if bad != self._csum_bad_seen:
                self.core.drops[DropReason.BAD_TCP_CHECKSUM.value] += bad - self._csum_bad_seen
                self._csum_bad_seen = bad

    def _on_timer(self) -> None:
        when = self._timer_when
        self._timer = None
        self._timer_when = None
        self._flush_scheduled = True  # as in _on_readable: this pass ends with a flush
        try:
            self._timer_pass(when)
        except BaseException:
            self._flush_scheduled = False
            self.schedule_flush()
            raise

    def _timer_pass(self, when: float | None) -> None:
        # What the device already holds goes first: an ACK waiting there is no loss, and a
        # probe or retransmission sent before reading it would be spurious.
        self._receive_pending()
        # call_at may fire a hair early; never let the engine see time before the deadline.
        self.core.handle_timers(max(self.loop.time(), when or 0.0))
        if self.device.next_deadline() is not None:
            self._on_readable()  # the device holds packets that are now due
        else:
            self._after_input()

    def _after_input(self) -> None:
        self._dispatch_events()
        if self.blocked:
            for transport in list(self.blocked):
                transport.send_space_freed()
        if self.core.drops:
            self._log_drops()
        self._flush()

    def _device_lost(self, exc: OSError) -> None:
        """The device died under us (its interface deleted, its namespace gone): stop using it.

        Connections then time out as over a cut cable; the stack itself goes on.
        """
        if self._device_gone:
            return
        self._device_gone = True
        self.log.warning("device.gone", error=exc.strerror or str(exc), errno=exc.errno)
        if self._fd is not None:
            self.loop.remove_reader(self._fd)

    def schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._closed:
            return
        if self._state_listeners:
            # e.g. close() changed the state: listeners hear of it before its FIN goes out.
            self._dispatch_events()
        packets = self.core.packets_to_send(self.loop.time())
        if packets and not self._device_gone:
            try:
                self.device.send_batch(packets)
            except OSError as exc:
                self._device_lost(exc)
        self._dispatch_events()
        self._rearm()

    def _rearm(self) -> None:
        when = self.core.next_deadline()
        device_when = self.device.next_deadline()
        if device_when is not None and (when is None or device_when < when):
            when = device_when
        if when == self._timer_when:
            return
        if self._timer is not None:
            if when is None or when > self._timer_when:
                # Later (or none): the earlier timer stays; it finds nothing due and rearms.
                # A timer handle per connection (each SYN-ACK's RTO) is not worth making.
                return
            self._timer.cancel()
            self._timer = None
        self._timer_when = when
        if when is not None:
            self._timer = self.loop.call_at(when, self._on_timer)

    # ------------------------------------------------------------ engine events

    def _dispatch_events(self) -> None:
        next_event = self.core.next_event
        transports = self._transports
        while (event := next_event()) is not None:
            kind = type(event)
            if kind is ev.DataReceived:
                transport = transports.get(event.conn_id)
                if transport is not None:
                    transport.pull()
            elif kind is ev.StateChanged:
                if self._log_states:
                    self._log_state(event)
                if self._state_listeners:
                    self._notify_state(event)
                if self._admitted and event.new is State.CLOSED:
                    # Reset or timed out before the application saw it: no other event says so.
                    _close_quietly(self._admitted.pop(event.conn_id, None))
                transport = transports.get(event.conn_id)
                if transport is not None:
                    transport.state_changed(event.new)
            elif kind is ev.ConnectionAccepted:
                self._accept(event)
            elif kind is ev.ConnectionRequested:
                self._request(event)
            elif kind is ev.DatagramReceived:
                if self._datagram_handler is not None:
                    self._datagram_handler.datagram_received(event.data, event.src, event.dst)
            elif kind is ev.EchoRequested:
                if self._datagram_handler is not None:
                    self._datagram_handler.echo_request(event.src, event.dst, event.ident,
                                                        event.seq, event.data)
            elif kind is ev.Connected:
                self._connected(event)
            elif kind is ev.PeerClosed:
                transport = transports.get(event.conn_id)
                if transport is not None:
                    transport.peer_closed()
            elif (kind is ev.ConnectionReset or kind is ev.ConnectionTimedOut
                  or kind is ev.ConnectionUnreachable):
                self._failed(event)
            elif kind is ev.ConnectionClosed:
                if self._admitted:
                    _close_quietly(self._admitted.pop(event.conn_id, None))
                transport = transports.get(event.conn_id)
                if transport is not None:
                    transport.finished()

    def _accept(self, event: ev.ConnectionAccepted) -> None:
        server = self._servers.get(event.listener_port)
        admitted = self._admitted.pop(event.conn_id, None)
        if server is None or not server.is_serving():
            self.core.abort(event.conn_id, self.now())
            _close_quietly(admitted)
            return
        protocol = server.protocol_factory()
        transport = TcpTransport(self, event.conn_id, protocol,
                                 sockaddr(event.local_address, event.local_port),
                                 sockaddr(*event.remote), admitted)
        self._transports[event.conn_id] = transport
        server.attach(transport)
        protocol.connection_made(transport)

    def _request(self, event: ev.ConnectionRequested) -> None:
        server = self._servers.get(0)
        if server is None or not server.is_serving() or server.admit is None:
            self.core.refuse(event.conn_id, self.now(), "reset")
            return
        task = self.loop.create_task(self._admit(server, event))
        self._admitting.add(task)
        task.add_done_callback(self._admitting.discard)

    async def _admit(self, server: Server, event: ev.ConnectionRequested) -> None:
        rid = event.conn_id
        try:
            value = await server.admit(sockaddr(*event.local), sockaddr(*event.remote))
        except asyncio.CancelledError:
            if not self._closed:
                self._answer(rid, "reset")
            raise
        except BaseException as exc:  # every failure is an answer to the peer
            self._answer(rid, _refusal_for(exc))
            if not isinstance(exc, Exception):
                raise
            return
        if self._closed or not server.is_serving():
            _close_quietly(value)
            self._answer(rid, "reset")
            return
        self._admitted[rid] = value
        try:
            self.core.admit(rid, self.now())
        except KeyError:  # the request was dropped meanwhile (server closed)
            self._admitted.pop(rid, None)
            _close_quietly(value)
        self.schedule_flush()

    def _answer(self, rid: int, reply: str) -> None:
        if self._closed:
            return
        try:
            self.core.refuse(rid, self.now(), reply)
        except KeyError:
            return
        self.schedule_flush()

    def _connected(self, event: ev.Connected) -> None:
        pending = self._connecting.pop(event.conn_id, None)
        if pending is None:
            return
        fut, factory, remote = pending
        if fut.done():  # cancelled meanwhile
            self.core.abort(event.conn_id, self.now())
            return
        local, _ = self.core.endpoints(event.conn_id)
        protocol = factory()
        transport = TcpTransport(self, event.conn_id, protocol, sockaddr(*local), remote)
        self._transports[event.conn_id] = transport
        protocol.connection_made(transport)
        fut.set_result((transport, protocol))

    def _failed(self, event) -> None:
        _close_quietly(self._admitted.pop(event.conn_id, None))
        timed_out = type(event) is ev.ConnectionTimedOut
        pending = self._connecting.pop(event.conn_id, None)
        if pending is not None:
            fut, _, (host, port, *_) = pending
            if not fut.done():
                if timed_out:
                    fut.set_exception(TimeoutError(f"connect to {host}:{port} timed out"))
                elif type(event) is ev.ConnectionUnreachable:
                    # OSError picks the subclass: ConnectionRefusedError for ECONNREFUSED.
                    fut.set_exception(OSError(event.errno, f"connect to {host}:{port}: "
                                                           f"{os.strerror(event.errno)}"))
                else:
                    fut.set_exception(ConnectionRefusedError(
                        111, f"connection to {host}:{port} refused"))
            return
        transport = self._transports.get(event.conn_id)
        if transport is None:
            return
        if timed_out:
            exc: OSError = TimeoutError(110, "connection timed out")
        else:
            exc = ConnectionResetError(104, "connection reset by peer")
        transport.failed(exc)

    def forget_transport(self, transport: TcpTransport) -> None:
        if self._transports.get(transport.conn_id) is transport:
            del self._transports[transport.conn_id]
        for server in self._servers.values():
            server.detach(transport)

    def register_server(self, server: Server) -> None:
        key = server.port or 0
        if key in self._servers:
            what = "every address" if key == 0 else f"port {key}"
            raise OSError(98, f"{what} is already served")
        if key == 0:
            self.core.listen_any(server.backlog, defer=server.admit is not None)
        else:
            self.core.listen(server.port, server.backlog)
        self._servers[key] = server

    def unregister_server(self, server: Server) -> None:
        key = server.port or 0
        if self._servers.get(key) is server:
            del self._servers[key]
            if key == 0:
                self.core.unlisten_any()
            else:
                self.core.unlisten(server.port)

    def _notify_state(self, event: ev.StateChanged) -> None:
        for callback in tuple(self._state_listeners):  # a callback may remove itself
            try:
                callback(event)
            except Exception:  # one bad listener must not stall the stack
                self.log.exception("state_listener.failed", conn=event.conn_id)

    # ------------------------------------------------------------ logging

    def _log_state(self, event: ev.StateChanged) -> None:
        self.log.debug("tcp.state", conn=event.conn_id,
                      local=hostport(*event.local), remote=hostport(*event.remote),
                      old=str(event.old), new=str(event.new), cause=event.cause,
                      seq=event.seq, ack=event.ack, at=round(event.time, 6))

    def _log_drops(self) -> None:
        seen = self._drops_logged
        for reason, count in self.core.drops.items():
            if seen.get(reason, 0) != count:
                self.log.warning("packet.dropped", reason=reason, count=count - seen.get(reason, 0),
                                 total=count)
                seen[reason] = count


def hostport(host: str, port: int, *_) -> str:
    """10.7.0.2:80, [fd00:7::2]:80: as URLs write them."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def sockaddr(host: str, port: int, *_) -> tuple:
    """As asyncio gives them: (host, port) for IPv4, (host, port, flowinfo, scope_id) for IPv6."""
    return (host, port, 0, 0) if ":" in host else (host, port)


def _refusal_for(exc: BaseException) -> str:
    """How to turn a SYN down when admit raised `exc`: what a router would send."""
    if isinstance(exc, ConnectionRefusedError):
        return "reset"
    if isinstance(exc, TimeoutError):
        return "none"
    code = getattr(exc, "errno", None)
    if code in (errno.EHOSTUNREACH, errno.EHOSTDOWN):
        return "host-unreachable"
    if code == errno.ENETUNREACH:
        return "net-unreachable"
    if code in (errno.EACCES, errno.EPERM):
        return "admin-prohibited"
    return "reset"


def _close_quietly(value) -> None:
    close = getattr(value, "close", None)
    if close is not None:
        with contextlib.suppress(Exception):  # cleanup of the application's own object
            close()


def _innermost_with(device, attribute: str):
    """The first device down the middleware chain (`.inner`) that has `attribute`."""
    for _ in range(16):  # a chain is a few devices deep; never loop on a cycle
        if device is None or hasattr(device, attribute):
            return device
        device = getattr(device, "inner", None)
    return None


class _Opener:
    """`Stack.open(...)`: an async context manager that is also awaitable."""

    def __init__(self, cls, tun, address, host_address, mtu, config, pcap, fault, offload,
                 routes, wrap=None):
        self._args = (cls, tun, address, host_address, mtu, config, pcap, fault, offload,
                      routes, wrap)
        self._stack: Stack | None = None

    async def _open(self) -> Stack:
        from ..phy import FaultInjector, PcapWriter, TunDevice, configure_host_side
        from ..phy.netlink import check_stack_addresses

        cls, tun, address, host_address, mtu, config, pcap, fault, offload, routes, wrap = \
            self._args
        addresses = [address] if isinstance(address, str) else list(address)
        host_addresses = [host_address] if isinstance(host_address, str) else list(host_address)
        stack_addresses = check_stack_addresses(addresses, host_addresses, tun)
        device = TunDevice(tun, mtu, offload=offload)
        try:
            # pyroute2 runs an event loop of its own: keep it off this one.
            await asyncio.get_running_loop().run_in_executor(
                None, configure_host_side, tun, host_address, mtu, routes)
            if fault:
                device = FaultInjector(device, **fault)
            if pcap:
                device = PcapWriter(device, pcap)
            if wrap is not None:
                device = wrap(device)
            self._stack = cls(device, stack_addresses, config=config)
        except BaseException:
            device.close()
            raise
        return self._stack

    def __await__(self):
        return self._open().__await__()

    async def __aenter__(self) -> Stack:
        return await self._open()

    async def __aexit__(self, *exc) -> None:
        if self._stack is not None:
            await self._stack.aclose()
